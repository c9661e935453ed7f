using System.Security.Cryptography;
using System.Text;

namespace Tessera.Cuda.Compilation;

/// <summary>
/// Compiled kernels on disk, keyed by SHA-256 of (source, architecture, options, NVRTC version).
/// Each entry is a header (magic, format version, key, payload length, payload SHA-256) and the
/// cubin. An entry whose header, length or checksum does not match is treated as absent (the
/// caller rebuilds and overwrites it); entries are written to a temporary file and renamed, so a
/// reader never sees half an entry.
/// Folder: <c>$TESSERA_KERNEL_CACHE</c>, else <c>$XDG_CACHE_HOME/tessera/kernels</c>, else
/// <c>~/.cache/tessera/kernels</c>.
/// </summary>
public sealed class KernelCache
{
    /// <summary>Environment variable that overrides the cache folder.</summary>
    public const string FolderVariable = "TESSERA_KERNEL_CACHE";

    private static ReadOnlySpan<byte> Magic => "TSRKCUBN"u8;
    private const int FormatVersion = 1;
    private const int HeaderBytes = 8 + 4 + 32 + 8 + 32;

    /// <summary>A cache in <paramref name="folder"/>, or the default folder when null.</summary>
    public KernelCache(string? folder = null)
    {
        Folder = folder ?? DefaultFolder();
    }

    /// <summary>Where entries are stored.</summary>
    public string Folder { get; }

    /// <summary>The default folder from the environment.</summary>
    public static string DefaultFolder()
    {
        var custom = Environment.GetEnvironmentVariable(FolderVariable);
        if (!string.IsNullOrWhiteSpace(custom)) return custom;
        var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        var root = !string.IsNullOrWhiteSpace(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "tessera", "kernels");
    }

    /// <summary>The cache key for one compilation.</summary>
    public static byte[] Key(string source, string architecture, IReadOnlyList<string> options, string nvrtcVersion)
    {
        var text = new StringBuilder();
        text.Append("source\0").Append(source).Append("\0arch\0").Append(architecture).Append("\0nvrtc\0").Append(nvrtcVersion);
        foreach (var o in options) text.Append("\0opt\0").Append(o);
        return SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString()));
    }

    /// <summary>The file that holds the entry for <paramref name="key"/>.</summary>
    public string PathFor(byte[] key, string fileName) =>
        System.IO.Path.Combine(Folder, $"{System.IO.Path.GetFileNameWithoutExtension(fileName)}-{Convert.ToHexString(key).ToLowerInvariant()[..32]}.cubin");

    /// <summary>The cached cubin for <paramref name="key"/>, or null when absent or invalid.</summary>
    public byte[]? TryRead(byte[] key, string fileName)
    {
        var path = PathFor(key, fileName);
        byte[] data;
        try { data = File.ReadAllBytes(path); }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
        if (data.Length < HeaderBytes) return null;
        var span = data.AsSpan();
        if (!span[..8].SequenceEqual(Magic)) return null;
        if (BitConverter.ToInt32(span[8..12]) != FormatVersion) return null;
        if (!span[12..44].SequenceEqual(key)) return null;
        long length = BitConverter.ToInt64(span[44..52]);
        if (length != data.Length - HeaderBytes) return null;
        var payload = span[HeaderBytes..];
        if (!SHA256.HashData(payload).AsSpan().SequenceEqual(span[52..84])) return null;
        return payload.ToArray();
    }

    /// <summary>Stores a cubin; failures to write (read-only folder, full disk) are ignored: the cache is an optimization.</summary>
    public void Write(byte[] key, string fileName, byte[] cubin)
    {
        try
        {
            Directory.CreateDirectory(Folder);
            var path = PathFor(key, fileName);
            var tmp = path + "." + Environment.ProcessId + "." + Guid.NewGuid().ToString("N")[..8] + ".tmp";
            using (var f = File.Create(tmp))
            {
                f.Write(Magic);
                f.Write(BitConverter.GetBytes(FormatVersion));
                f.Write(key);
                f.Write(BitConverter.GetBytes((long)cubin.Length));
                f.Write(SHA256.HashData(cubin));
                f.Write(cubin);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
