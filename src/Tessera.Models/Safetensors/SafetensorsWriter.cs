using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.Json;
using Tessera.Tensors;

namespace Tessera.Models.Safetensors;

/// <summary>
/// Collects named host tensors and writes them as one safetensors file, atomically: the bytes go to
/// "&lt;path&gt;.tmp-&lt;random&gt;" in the same directory, are flushed to the disk (fsync), and the temporary
/// file is then renamed over <c>path</c>; on any failure the target is left untouched and the temporary removed.
/// Layout follows the reference implementation: tensors sorted by descending dtype alignment, then by name
/// (ordinal), "__metadata__" first in the header, header padded with spaces to a multiple of 8 bytes.
/// </summary>
public sealed class SafetensorsWriter
{
    /// <summary>A tensor to write: its length in bytes and how to write them.</summary>
    private readonly record struct Entry(string Name, DType DType, Shape Shape, long Length, Action<Stream> WriteTo);

    /// <summary>Values written a slice at a time, so that a tensor of 2 GiB or more (more bytes than a span counts) can be.</summary>
    private const int WriteChunkBytes = 64 << 20;

    private readonly Dictionary<string, Entry> _tensors = new(StringComparer.Ordinal);

    /// <summary>The "__metadata__" string map written into the header (written only when non-empty).</summary>
    public Dictionary<string, string> Metadata { get; } = new(StringComparer.Ordinal);

    /// <summary>Number of tensors added so far.</summary>
    public int Count => _tensors.Count;

    /// <summary>Adds a tensor from raw little-endian bytes; their length must be product(shape) * dtype size.</summary>
    public SafetensorsWriter Add(string name, DType dtype, Shape shape, ReadOnlyMemory<byte> data) =>
        AddEntry(name, dtype, shape, data.Length, stream => stream.Write(data.Span));

    /// <summary>Adds an F32 tensor (row-major <paramref name="data"/>, length product(shape)); the array is kept, not copied,
    /// until <see cref="Write"/>.</summary>
    public SafetensorsWriter Add(string name, Shape shape, float[] data) => Add(name, DType.F32, shape, data);

    /// <summary>Adds an F64 tensor (row-major <paramref name="data"/>, length product(shape)); the array is kept, not copied,
    /// until <see cref="Write"/>.</summary>
    public SafetensorsWriter Add(string name, Shape shape, double[] data) => Add(name, DType.F64, shape, data);

    /// <summary>
    /// Adds a tensor of <paramref name="dtype"/> from values whose in-memory form is that dtype's (float for F32, BFloat16
    /// for BF16, Half for F16, ...; row-major, length product(shape)), or from its raw little-endian bytes (a byte array, any
    /// dtype). The writer keeps the array, not a copy, until <see cref="Write"/>: do not change it before then. Any size an
    /// array holds, 2 GiB and more included.
    /// </summary>
    public SafetensorsWriter Add<T>(string name, DType dtype, Shape shape, T[] data) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(data);
        // Bytes are any dtype's raw form, and 16-bit words any 16-bit dtype's; other element types must be the dtype's own.
        bool raw = typeof(T) == typeof(byte) || (typeof(T) == typeof(ushort) && dtype.SizeInBytes() == 2);
        if (!raw && (DTypeInfo.TryOf<T>() is not { } stored || stored != dtype))
            throw new ArgumentException($"tensor '{name}': {typeof(T).Name} values cannot be written as {dtype}");
        return AddEntry(name, dtype, shape, (long)data.Length * Unsafe.SizeOf<T>(), stream =>
        {
            int perChunk = WriteChunkBytes / Unsafe.SizeOf<T>();
            for (int at = 0; at < data.Length;)
            {
                int count = Math.Min(perChunk, data.Length - at);    // at + count never passes the length: no overflow near Array.MaxLength
                stream.Write(MemoryMarshal.AsBytes(data.AsSpan(at, count)));
                at += count;
            }
        });
    }

    private SafetensorsWriter AddEntry(string name, DType dtype, Shape shape, long length, Action<Stream> writeTo)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name == SafetensorsHeaderParser.MetadataKey)
            throw new ArgumentException($"'{name}' is reserved for the metadata map and cannot name a tensor");
        long bytes = checked(shape.NumElements * dtype.SizeInBytes());
        if (length != bytes)
            throw new ArgumentException($"tensor '{name}': {length} bytes given but {dtype} {shape} needs {bytes}");
        if (!_tensors.TryAdd(name, new Entry(name, dtype, shape, length, writeTo)))
            throw new ArgumentException($"tensor '{name}' is added twice");
        return this;
    }

    /// <summary>The order the reference implementation lays tensors out: larger dtype alignment first, then name.</summary>
    internal static int DTypeRank(DType dtype) => dtype switch
    {
        // Position in the reference Dtype enum (BOOL, ..., U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, C64, F64, ...).
        DType.I8 => 0, DType.F8E4M3 => 1, DType.U16 => 2, DType.F16 => 3, DType.BF16 => 4, DType.I32 => 5, DType.F32 => 6, DType.F64 => 7,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    /// <summary>Writes every added tensor to <paramref name="path"/> atomically (see the class summary).</summary>
    public void Write(string path)
    {
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("safetensors data is little-endian; this host is not");
        var ordered = _tensors.Values
            .OrderByDescending(e => DTypeRank(e.DType))
            .ThenBy(e => e.Name, StringComparer.Ordinal)
            .ToList();
        byte[] header = BuildHeader(ordered);

        string full = System.IO.Path.GetFullPath(path);
        string tmp = $"{full}.tmp-{Guid.NewGuid():N}";
        try
        {
            using (var stream = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
            {
                Span<byte> prefix = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
                stream.Write(prefix);
                stream.Write(header);
                foreach (var e in ordered) e.WriteTo(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(tmp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(tmp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    private byte[] BuildHeader(List<Entry> ordered)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            if (Metadata.Count > 0)
            {
                json.WriteStartObject(SafetensorsHeaderParser.MetadataKey);
                foreach (var (k, v) in Metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) json.WriteString(k, v);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var e in ordered)
            {
                json.WriteStartObject(e.Name);
                json.WriteString("dtype", e.DType.SafetensorsName());
                json.WriteStartArray("shape");
                foreach (var d in e.Shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                offset = checked(offset + e.Length);
                json.WriteNumberValue(offset);
                json.WriteEndArray();
                json.WriteEndObject();
            }
            json.WriteEndObject();
        }
        long padded = (buffer.Length + 7) / 8 * 8;
        while (buffer.Length < padded) buffer.WriteByte((byte)' ');
        return buffer.ToArray();
    }
}
