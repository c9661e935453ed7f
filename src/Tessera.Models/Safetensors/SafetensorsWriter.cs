using System.Buffers.Binary;
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
    private readonly record struct Entry(string Name, DType DType, Shape Shape, ReadOnlyMemory<byte> Data);

    private readonly Dictionary<string, Entry> _tensors = new(StringComparer.Ordinal);

    /// <summary>The "__metadata__" string map written into the header (written only when non-empty).</summary>
    public Dictionary<string, string> Metadata { get; } = new(StringComparer.Ordinal);

    /// <summary>Number of tensors added so far.</summary>
    public int Count => _tensors.Count;

    /// <summary>Adds a tensor from raw little-endian bytes; their length must be product(shape) * dtype size.</summary>
    public SafetensorsWriter Add(string name, DType dtype, Shape shape, ReadOnlyMemory<byte> data)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name == SafetensorsHeaderParser.MetadataKey)
            throw new ArgumentException($"'{name}' is reserved for the metadata map and cannot name a tensor");
        long bytes = checked(shape.NumElements * dtype.SizeInBytes());
        if (data.Length != bytes)
            throw new ArgumentException($"tensor '{name}': {data.Length} bytes given but {dtype} {shape} needs {bytes}");
        if (!_tensors.TryAdd(name, new Entry(name, dtype, shape, data)))
            throw new ArgumentException($"tensor '{name}' is added twice");
        return this;
    }

    /// <summary>Adds an F32 tensor (row-major <paramref name="data"/>, length product(shape)).</summary>
    public SafetensorsWriter Add(string name, Shape shape, float[] data) =>
        Add(name, DType.F32, shape, MemoryMarshal.AsBytes(data.AsSpan()).ToArray());

    /// <summary>Adds an F64 tensor (row-major <paramref name="data"/>, length product(shape)).</summary>
    public SafetensorsWriter Add(string name, Shape shape, double[] data) =>
        Add(name, DType.F64, shape, MemoryMarshal.AsBytes(data.AsSpan()).ToArray());

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
                foreach (var e in ordered) stream.Write(e.Data.Span);
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
                offset = checked(offset + e.Data.Length);
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
