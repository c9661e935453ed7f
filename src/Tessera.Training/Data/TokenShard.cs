using System.Buffers.Binary;

namespace Tessera.Training.Data;

/// <summary>
/// llm.c's token shard format: a header of 256 little-endian int32 (magic 20240520, version 1,
/// token count, the rest zero) followed by that many uint16 tokens.
/// </summary>
public static class TokenShard
{
    /// <summary>Header magic number.</summary>
    public const int Magic = 20240520;

    /// <summary>Supported format version.</summary>
    public const int Version = 1;

    /// <summary>Header size in bytes (256 x int32).</summary>
    public const int HeaderBytes = 256 * 4;

    /// <summary>Reads and validates a shard's header; returns its token count.</summary>
    /// <exception cref="InvalidDataException">The header or the file length is wrong; the message names the file.</exception>
    public static long ReadTokenCount(string path)
    {
        using var stream = File.OpenRead(path);
        Span<byte> header = stackalloc byte[HeaderBytes];
        if (stream.Length < HeaderBytes || stream.ReadAtLeast(header, HeaderBytes, throwOnEndOfStream: false) != HeaderBytes)
            throw new InvalidDataException($"{path}: token shard is {stream.Length} bytes, shorter than its {HeaderBytes}-byte header");
        int magic = BinaryPrimitives.ReadInt32LittleEndian(header);
        int version = BinaryPrimitives.ReadInt32LittleEndian(header[4..]);
        int count = BinaryPrimitives.ReadInt32LittleEndian(header[8..]);
        if (magic != Magic)
            throw new InvalidDataException($"{path}: bad token shard magic {magic} (expected {Magic}); is this an llm.c .bin shard?");
        if (version != Version)
            throw new InvalidDataException($"{path}: unsupported token shard version {version} (expected {Version})");
        if (count < 0)
            throw new InvalidDataException($"{path}: negative token count {count} in the header");
        long expected = HeaderBytes + 2L * count;
        if (stream.Length != expected)
            throw new InvalidDataException($"{path}: header says {count} tokens ({expected} bytes) but the file has {stream.Length} bytes");
        return count;
    }

    /// <summary>Reads all tokens of a shard (validated).</summary>
    public static ushort[] ReadTokens(string path)
    {
        long count = ReadTokenCount(path);
        var tokens = new ushort[count];
        using var stream = File.OpenRead(path);
        stream.Seek(HeaderBytes, SeekOrigin.Begin);
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(tokens.AsSpan());
        stream.ReadExactly(bytes);
        if (!BitConverter.IsLittleEndian)
            for (int i = 0; i < tokens.Length; i++) tokens[i] = BinaryPrimitives.ReverseEndianness(tokens[i]);
        return tokens;
    }

    /// <summary>Writes a shard atomically (temporary file, flush to disk, rename).</summary>
    public static void Write(string path, ReadOnlySpan<int> tokens)
    {
        var header = new byte[HeaderBytes];
        BinaryPrimitives.WriteInt32LittleEndian(header, Magic);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(4), Version);
        BinaryPrimitives.WriteInt32LittleEndian(header.AsSpan(8), tokens.Length);
        var body = new byte[2L * tokens.Length];
        for (int i = 0; i < tokens.Length; i++)
        {
            int t = tokens[i];
            if ((uint)t > ushort.MaxValue)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token {t} at index {i} does not fit the shard's uint16 format");
            BinaryPrimitives.WriteUInt16LittleEndian(body.AsSpan(2 * i), (ushort)t);
        }
        AtomicFile.Write(path, stream => { stream.Write(header); stream.Write(body); });
    }
}
