using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;
using Tessera.Tensors;

namespace Tessera.Models.Safetensors;

/// <summary>
/// A safetensors file opened for reading: the header is parsed and validated strictly when opened
/// (header size limit, UTF-8, JSON object, duplicate keys, dtypes, shapes, byte sizes, offsets that tile
/// the data region exactly); tensor data is read on demand with positioned reads.
/// Every violation throws <see cref="SafetensorsFormatException"/> naming the file and the problem.
/// </summary>
public sealed class SafetensorsFile : IDisposable
{
    /// <summary>Largest header accepted, in bytes (the reference implementation's limit).</summary>
    public const long MaxHeaderLength = 100_000_000;

    private const int ChunkBytes = 1 << 20;

    private readonly SafeFileHandle _handle;
    private readonly Dictionary<string, SafetensorsTensorInfo> _byName;
    private readonly long _dataStart;

    private SafetensorsFile(string path, SafeFileHandle handle, List<SafetensorsTensorInfo> tensors,
        Dictionary<string, string> metadata, long dataStart)
    {
        Path = path;
        _handle = handle;
        _dataStart = dataStart;
        Tensors = tensors.OrderBy(t => t.Begin).ThenBy(t => t.Name, StringComparer.Ordinal).ToList();
        _byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        Metadata = metadata;
    }

    /// <summary>Path the file was opened from.</summary>
    public string Path { get; }

    /// <summary>All tensors, in data-offset order.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }

    /// <summary>The "__metadata__" map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Opens and validates <paramref name="path"/>.</summary>
    /// <exception cref="SafetensorsFormatException">The file breaks the format.</exception>
    public static SafetensorsFile Open(string path)
    {
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        try
        {
            long fileLength = RandomAccess.GetLength(handle);
            if (fileLength < 8)
                throw new SafetensorsFormatException(path, $"file has {fileLength} bytes, fewer than the 8-byte header length");
            Span<byte> prefix = stackalloc byte[8];
            ReadExactly(handle, prefix, 0, path);
            ulong n = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (n > MaxHeaderLength)
                throw new SafetensorsFormatException(path, $"header length {n} exceeds the limit of {MaxHeaderLength} bytes");
            if (8 + (long)n > fileLength)
                throw new SafetensorsFormatException(path, $"header length {n} runs past the end of the file ({fileLength} bytes)");
            var header = new byte[n];
            ReadExactly(handle, header, 8, path);
            long dataStart = 8 + (long)n;
            var (tensors, metadata) = SafetensorsHeaderParser.Parse(path, header, fileLength - dataStart);
            return new SafetensorsFile(path, handle, tensors, metadata, dataStart);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Whether a tensor called <paramref name="name"/> exists.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The header entry of <paramref name="name"/>.</summary>
    public SafetensorsTensorInfo this[string name] => _byName.TryGetValue(name, out var t)
        ? t : throw new KeyNotFoundException($"{Path}: no tensor named '{name}'");

    /// <summary>The raw little-endian bytes of tensor <paramref name="name"/>.</summary>
    public byte[] ReadBytes(string name)
    {
        var t = this[name];
        if (t.ByteLength > Array.MaxLength)
            throw new NotSupportedException($"{Path}: tensor '{name}' has {t.ByteLength} bytes, more than one array holds; read it with ReadAsSingle into a span");
        var bytes = new byte[t.ByteLength];
        ReadExactly(_handle, bytes, _dataStart + t.Begin, Path);
        return bytes;
    }

    /// <summary>Reads tensor <paramref name="name"/> (F32, F64, BF16 or F16) into <paramref name="destination"/> as floats.</summary>
    public void ReadAsSingle(string name, Span<float> destination) =>
        ReadConverted(name, destination, static (d, s, o) => HostConversion.ToSingle(d, s, o));

    /// <summary>Reads tensor <paramref name="name"/> (F32, F64, BF16 or F16) into <paramref name="destination"/> as doubles.</summary>
    public void ReadAsDouble(string name, Span<double> destination) =>
        ReadConverted(name, destination, static (d, s, o) => HostConversion.ToDouble(d, s, o));

    /// <summary>Tensor <paramref name="name"/> as a new float array (row-major).</summary>
    public float[] ReadAsSingle(string name)
    {
        var result = new float[this[name].NumElements];
        ReadAsSingle(name, result);
        return result;
    }

    /// <summary>Tensor <paramref name="name"/> as a new double array (row-major).</summary>
    public double[] ReadAsDouble(string name)
    {
        var result = new double[this[name].NumElements];
        ReadAsDouble(name, result);
        return result;
    }

    private delegate void Converter<T>(DType dtype, ReadOnlySpan<byte> source, Span<T> destination);

    private void ReadConverted<T>(string name, Span<T> destination, Converter<T> convert)
    {
        var t = this[name];
        if (!t.DType.IsFloatingPoint())
            throw new NotSupportedException($"{Path}: tensor '{name}' is {t.DType}, not a floating-point type");
        if (destination.Length != t.NumElements)
            throw new ArgumentException($"{Path}: tensor '{name}' has {t.NumElements} elements but the destination holds {destination.Length}");
        int size = t.DType.SizeInBytes();
        var buffer = new byte[(int)Math.Min(ChunkBytes, Math.Max(t.ByteLength, 1))];
        long done = 0;
        while (done < t.NumElements)
        {
            int count = (int)Math.Min(buffer.Length / size, t.NumElements - done);
            var chunk = buffer.AsSpan(0, count * size);
            ReadExactly(_handle, chunk, _dataStart + t.Begin + done * size, Path);
            convert(t.DType, chunk, destination.Slice((int)done, count));
            done += count;
        }
    }

    private static void ReadExactly(SafeFileHandle handle, Span<byte> buffer, long offset, string path)
    {
        while (buffer.Length > 0)
        {
            int read = RandomAccess.Read(handle, buffer, offset);
            if (read == 0) throw new SafetensorsFormatException(path, $"unexpected end of file at byte {offset}");
            buffer = buffer[read..];
            offset += read;
        }
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => _handle.Dispose();
}
