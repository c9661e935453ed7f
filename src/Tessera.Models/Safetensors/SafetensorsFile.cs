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
    private long _bytesRead;

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

    /// <summary>Bytes of tensor data read so far (the header excluded), from any thread.</summary>
    public long BytesRead => Interlocked.Read(ref _bytesRead);

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
        ReadData(bytes, t.Begin);
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

    /// <summary>
    /// The raw E4M3 codes (one byte an element) of the element runs <paramref name="runs"/> (start, length) of F8_E4M3 tensor
    /// <paramref name="name"/>, one run after another; what they stand for depends on the checkpoint's scale tensors, which
    /// the caller applies.
    /// </summary>
    public byte[] ReadFp8Codes(string name, IReadOnlyList<(long Start, long Length)> runs)
    {
        ArgumentNullException.ThrowIfNull(runs);
        var t = this[name];
        if (t.DType != DType.F8E4M3)
            throw new NotSupportedException($"{Path}: tensor '{name}' is {t.DType}, not F8_E4M3");
        long total = 0;
        foreach (var (start, length) in runs)
        {
            if (start < 0 || length < 0 || start + length > t.NumElements)
                throw new ArgumentOutOfRangeException(nameof(runs), $"{Path}: run ({start}, {length}) is outside tensor '{name}' of {t.NumElements} elements");
            total += length;
        }
        var result = new byte[checked((int)total)];
        int at = 0;
        foreach (var (start, length) in runs)
        {
            ReadData(result.AsSpan(at, (int)length), t.Begin + start);
            at += (int)length;
        }
        return result;
    }

    private delegate void Converter<T>(DType dtype, ReadOnlySpan<byte> source, Span<T> destination);

    /// <summary>
    /// Reads the element runs <paramref name="runs"/> (start, length; in elements of the row-major tensor) of tensor
    /// <paramref name="name"/> (F32, F64, BF16 or F16) into <paramref name="destination"/> as floats, one run after another:
    /// only those elements' bytes are read from the file (adjacent runs in one read).
    /// </summary>
    public void ReadAsSingle(string name, IReadOnlyList<(long Start, long Length)> runs, Span<float> destination) =>
        ReadConverted(name, runs, destination, static (d, s, o) => HostConversion.ToSingle(d, s, o));

    private void ReadConverted<T>(string name, Span<T> destination, Converter<T> convert) =>
        ReadConverted(name, [(0, this[name].NumElements)], destination, convert);

    private void ReadConverted<T>(string name, IReadOnlyList<(long Start, long Length)> runs, Span<T> destination, Converter<T> convert)
    {
        ArgumentNullException.ThrowIfNull(runs);
        var t = this[name];
        if (t.DType == DType.F8E4M3)
            throw new NotSupportedException($"{Path}: tensor '{name}' is F8_E4M3, whose values are codes that stand for weights only with " +
                "their scale tensor; read the codes with ReadFp8Codes (a model directory applies the scales as it loads)");
        if (!t.DType.IsFloatingPoint())
            throw new NotSupportedException($"{Path}: tensor '{name}' is {t.DType}, not a floating-point type");
        long total = 0;
        foreach (var (start, length) in runs)
        {
            if (start < 0 || length < 0 || start + length > t.NumElements)
                throw new ArgumentOutOfRangeException(nameof(runs), $"{Path}: run ({start}, {length}) is outside tensor '{name}' of {t.NumElements} elements");
            total += length;
        }
        if (destination.Length != total)
            throw new ArgumentException($"{Path}: the runs of tensor '{name}' hold {total} elements but the destination holds {destination.Length}");
        int size = t.DType.SizeInBytes();
        var buffer = new byte[(int)Math.Min(ChunkBytes, Math.Max(total * size, 1))];
        int at = 0;
        for (int i = 0; i < runs.Count; i++)
        {
            var (start, length) = runs[i];
            while (i + 1 < runs.Count && runs[i + 1].Start == start + length) length += runs[++i].Length;   // one read for adjacent runs
            long done = 0;
            while (done < length)
            {
                int count = (int)Math.Min(buffer.Length / size, length - done);
                var chunk = buffer.AsSpan(0, count * size);
                ReadData(chunk, t.Begin + (start + done) * size);
                convert(t.DType, chunk, destination.Slice(at, count));
                done += count;
                at += count;
            }
        }
    }

    /// <summary>Reads <paramref name="buffer"/> from byte <paramref name="offset"/> of the data region, counting the bytes.</summary>
    private void ReadData(Span<byte> buffer, long offset)
    {
        ReadExactly(_handle, buffer, _dataStart + offset, Path);
        Interlocked.Add(ref _bytesRead, buffer.Length);
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
