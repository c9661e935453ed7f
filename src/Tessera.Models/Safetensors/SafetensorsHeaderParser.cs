using System.Text;
using System.Text.Json;
using Tessera.Tensors;

namespace Tessera.Models.Safetensors;

/// <summary>
/// Parses and validates a safetensors JSON header with <see cref="Utf8JsonReader"/> (not a DOM) so that
/// duplicate keys, which System.Text.Json's DOM would silently collapse, are detected.
/// </summary>
internal static class SafetensorsHeaderParser
{
    /// <summary>The key of the optional string-to-string metadata map.</summary>
    public const string MetadataKey = "__metadata__";

    /// <summary>Parses <paramref name="header"/> and checks it against a data region of <paramref name="dataLength"/> bytes.</summary>
    public static (List<SafetensorsTensorInfo> Tensors, Dictionary<string, string> Metadata) Parse(
        string path, ReadOnlySpan<byte> header, long dataLength)
    {
        if (!System.Text.Unicode.Utf8.IsValid(header))
            throw new SafetensorsFormatException(path, "header is not valid UTF-8");
        var tensors = new List<SafetensorsTensorInfo>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            var reader = new Utf8JsonReader(header, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 8 });
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
                throw new SafetensorsFormatException(path, "header is not a JSON object");
            while (true)
            {
                Next(ref reader, path);
                if (reader.TokenType == JsonTokenType.EndObject) break;
                string key = reader.GetString()!;
                if (!seen.Add(key))
                    throw new SafetensorsFormatException(path, $"header has the key '{key}' twice");
                Next(ref reader, path);
                if (key == MetadataKey)
                {
                    ReadMetadata(ref reader, path, metadata);
                }
                else
                {
                    tensors.Add(ReadTensor(ref reader, path, key));
                }
            }
            // Anything after the root object other than whitespace (the writer's padding) is an error.
            if (reader.Read())
                throw new SafetensorsFormatException(path, "header has content after the JSON object");
        }
        catch (JsonException e)
        {
            throw new SafetensorsFormatException(path, $"header is not valid JSON ({e.Message})", e);
        }
        ValidateLayout(path, tensors, dataLength);
        return (tensors, metadata);
    }

    private static void Next(ref Utf8JsonReader reader, string path)
    {
        if (!reader.Read()) throw new SafetensorsFormatException(path, "header JSON ends early");
    }

    private static void ReadMetadata(ref Utf8JsonReader reader, string path, Dictionary<string, string> metadata)
    {
        if (reader.TokenType == JsonTokenType.Null) return;
        if (reader.TokenType != JsonTokenType.StartObject)
            throw new SafetensorsFormatException(path, $"'{MetadataKey}' must be an object of strings");
        while (true)
        {
            Next(ref reader, path);
            if (reader.TokenType == JsonTokenType.EndObject) return;
            string key = reader.GetString()!;
            Next(ref reader, path);
            if (reader.TokenType != JsonTokenType.String)
                throw new SafetensorsFormatException(path, $"'{MetadataKey}' entry '{key}' must be a string, got {reader.TokenType}");
            if (!metadata.TryAdd(key, reader.GetString()!))
                throw new SafetensorsFormatException(path, $"'{MetadataKey}' has the key '{key}' twice");
        }
    }

    private static SafetensorsTensorInfo ReadTensor(ref Utf8JsonReader reader, string path, string name)
    {
        if (reader.TokenType != JsonTokenType.StartObject)
            throw new SafetensorsFormatException(path, $"tensor '{name}': entry must be an object with dtype, shape and data_offsets");
        DType? dtype = null;
        int[]? shape = null;
        long[]? offsets = null;
        var fields = new HashSet<string>(StringComparer.Ordinal);
        while (true)
        {
            Next(ref reader, path);
            if (reader.TokenType == JsonTokenType.EndObject) break;
            string field = reader.GetString()!;
            if (!fields.Add(field))
                throw new SafetensorsFormatException(path, $"tensor '{name}': field '{field}' appears twice");
            Next(ref reader, path);
            switch (field)
            {
                case "dtype":
                    if (reader.TokenType != JsonTokenType.String)
                        throw new SafetensorsFormatException(path, $"tensor '{name}': dtype must be a string");
                    string text = reader.GetString()!;
                    if (text == "F8_E5M2")
                        throw new SafetensorsFormatException(path, $"tensor '{name}': dtype F8_E5M2 (FP8 E5M2) is not supported; Tessera reads " +
                            "FP8 checkpoints in F8_E4M3 only (with their weight_scale or weight_scale_inv tensors), or BF16, F16 and F32 weights");
                    dtype = DTypeInfo.FromSafetensorsName(text)
                        ?? throw new SafetensorsFormatException(path, $"tensor '{name}': unknown or unsupported dtype '{text}' (supported: F64, F32, BF16, F16, I32, U16, I8, F8_E4M3)");
                    break;
                case "shape":
                    shape = ReadIntegers(ref reader, path, name, "shape").Select(d => d > int.MaxValue
                        ? throw new SafetensorsFormatException(path, $"tensor '{name}': shape dimension {d} is larger than {int.MaxValue}")
                        : (int)d).ToArray();
                    break;
                case "data_offsets":
                    offsets = ReadIntegers(ref reader, path, name, "data_offsets");
                    if (offsets.Length != 2)
                        throw new SafetensorsFormatException(path, $"tensor '{name}': data_offsets must be [begin, end], got {offsets.Length} numbers");
                    break;
                default:
                    // Unknown fields are tolerated, as the reference implementation does.
                    reader.Skip();
                    break;
            }
        }
        if (dtype is null) throw new SafetensorsFormatException(path, $"tensor '{name}': missing dtype");
        if (shape is null) throw new SafetensorsFormatException(path, $"tensor '{name}': missing shape");
        if (offsets is null) throw new SafetensorsFormatException(path, $"tensor '{name}': missing data_offsets");
        if (offsets[1] < offsets[0])
            throw new SafetensorsFormatException(path, $"tensor '{name}': data_offsets [{offsets[0]}, {offsets[1]}) end before they begin");
        long elements = 1;
        long bytes;
        try
        {
            foreach (var d in shape) elements = checked(elements * d);
            bytes = checked(elements * dtype.Value.SizeInBytes());
        }
        catch (OverflowException)
        {
            throw new SafetensorsFormatException(path, $"tensor '{name}': shape ({string.Join(", ", shape)}) overflows a 64-bit byte count");
        }
        if (bytes != offsets[1] - offsets[0])
            throw new SafetensorsFormatException(path,
                $"tensor '{name}': data_offsets [{offsets[0]}, {offsets[1]}) hold {offsets[1] - offsets[0]} bytes but {dtype} ({string.Join(", ", shape)}) needs {bytes}");
        return new SafetensorsTensorInfo(name, dtype.Value, new Shape(shape), offsets[0], offsets[1]);
    }

    private static long[] ReadIntegers(ref Utf8JsonReader reader, string path, string name, string field)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
            throw new SafetensorsFormatException(path, $"tensor '{name}': {field} must be an array of non-negative integers");
        var values = new List<long>();
        while (true)
        {
            Next(ref reader, path);
            if (reader.TokenType == JsonTokenType.EndArray) return values.ToArray();
            if (reader.TokenType != JsonTokenType.Number || !reader.TryGetInt64(out long v) || v < 0)
            {
                string raw = reader.TokenType == JsonTokenType.Number ? Encoding.UTF8.GetString(reader.ValueSpan) : reader.TokenType.ToString();
                throw new SafetensorsFormatException(path, $"tensor '{name}': {field} entry {raw} is not a non-negative integer");
            }
            values.Add(v);
        }
    }

    /// <summary>Tensors, taken in offset order, must tile [0, dataLength) exactly: no hole, no overlap, no trailing bytes.</summary>
    private static void ValidateLayout(string path, List<SafetensorsTensorInfo> tensors, long dataLength)
    {
        var byOffset = tensors.OrderBy(t => t.Begin).ThenBy(t => t.End).ToList();
        long expected = 0;
        foreach (var t in byOffset)
        {
            if (t.Begin > expected)
                throw new SafetensorsFormatException(path, $"tensor '{t.Name}' data [{t.Begin}, {t.End}) leaves a hole: the previous tensor ends at {expected}");
            if (t.Begin < expected)
                throw new SafetensorsFormatException(path, $"tensor '{t.Name}' data [{t.Begin}, {t.End}) overlaps the previous tensor, which ends at {expected}");
            expected = t.End;
        }
        if (expected < dataLength)
            throw new SafetensorsFormatException(path, $"data region has {dataLength} bytes but the tensors end at {expected}: {dataLength - expected} trailing bytes");
        if (expected > dataLength)
            throw new SafetensorsFormatException(path, $"file is truncated: the tensors end at {expected} but the data region has only {dataLength} bytes");
    }
}
