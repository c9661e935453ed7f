using System.Text.Json;
using Tessera.Models.Safetensors;
using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>
/// The tensors of a model directory: one model.safetensors, or the shards listed by model.safetensors.index.json
/// (every listed shard must exist, every listed tensor must be in its shard, and every shard tensor must be listed).
/// </summary>
internal sealed class SafetensorsShardSource : ITensorSource, IDisposable
{
    /// <summary>Single-file weights name.</summary>
    public const string SingleFile = "model.safetensors";

    /// <summary>Sharded weights index name.</summary>
    public const string IndexFile = "model.safetensors.index.json";

    private readonly List<SafetensorsFile> _files = [];
    private readonly Dictionary<string, SafetensorsFile> _byTensor = new(StringComparer.Ordinal);

    private SafetensorsShardSource(string description) => Description = description;

    public string Description { get; }

    public IEnumerable<string> Names => _byTensor.Keys;

    public Shape? ShapeOf(string name) => _byTensor.TryGetValue(name, out var f) ? f[name].Shape : null;

    public string FileOf(string name) => _byTensor.TryGetValue(name, out var f) ? f.Path : Description;

    public float[] Read(string name) => _byTensor[name].ReadAsSingle(name);

    public float[] Read(string name, IReadOnlyList<(long Start, long Length)> runs)
    {
        var result = new float[runs.Sum(r => r.Length)];
        _byTensor[name].ReadAsSingle(name, runs, result);
        return result;
    }

    /// <summary>The header entry of <paramref name="name"/> (dtype, shape).</summary>
    public SafetensorsTensorInfo InfoOf(string name) => _byTensor[name][name];

    /// <summary>The raw little-endian bytes of tensor <paramref name="name"/> (a packed int32 tensor of a 4-bit checkpoint).</summary>
    public byte[] ReadBytes(string name) => _byTensor[name].ReadBytes(name);

    /// <summary>The raw E4M3 codes of the runs <paramref name="runs"/> of F8_E4M3 tensor <paramref name="name"/>.</summary>
    public byte[] ReadFp8Codes(string name, IReadOnlyList<(long Start, long Length)> runs) => _byTensor[name].ReadFp8Codes(name, runs);

    /// <summary>Bytes of tensor data read from every file so far (headers excluded).</summary>
    public long BytesRead => _files.Sum(f => f.BytesRead);

    /// <summary>Opens the weights of <paramref name="directory"/>.</summary>
    public static SafetensorsShardSource Open(string directory)
    {
        string single = Path.Combine(directory, SingleFile);
        string index = Path.Combine(directory, IndexFile);
        if (File.Exists(single))
        {
            var source = new SafetensorsShardSource(single);
            try
            {
                source.Add(SafetensorsFile.Open(single), listed: null);
                return source;
            }
            catch { source.Dispose(); throw; }
        }
        if (File.Exists(index)) return OpenIndex(directory, index);
        throw new HuggingFaceFormatException(directory, $"no {SingleFile} or {IndexFile}: only safetensors weights can be loaded (convert pytorch_model.bin first)");
    }

    private static SafetensorsShardSource OpenIndex(string directory, string index)
    {
        var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(index));
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new HuggingFaceFormatException(index, "missing object field 'weight_map'");
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String)
                    throw new HuggingFaceFormatException(index, $"weight_map entry '{p.Name}' must be a shard file name");
                if (!weightMap.TryAdd(p.Name, p.Value.GetString()!))
                    throw new HuggingFaceFormatException(index, $"weight_map lists '{p.Name}' twice");
            }
        }
        catch (JsonException e)
        {
            throw new HuggingFaceFormatException(index, $"not valid JSON ({e.Message})", e);
        }
        var source = new SafetensorsShardSource(index);
        try
        {
            foreach (var shard in weightMap.Values.Distinct(StringComparer.Ordinal).OrderBy(s => s, StringComparer.Ordinal))
            {
                if (shard.Contains('/') || shard.Contains('\\') || shard.Contains(".."))
                    throw new HuggingFaceFormatException(index, $"shard '{shard}' must be a file name inside the model directory");
                string path = Path.Combine(directory, shard);
                if (!File.Exists(path))
                    throw new HuggingFaceFormatException(index, $"shard '{shard}' is listed but does not exist");
                var listed = weightMap.Where(kv => kv.Value == shard).Select(kv => kv.Key).ToHashSet(StringComparer.Ordinal);
                source.Add(SafetensorsFile.Open(path), listed);
            }
            return source;
        }
        catch { source.Dispose(); throw; }
    }

    private void Add(SafetensorsFile file, HashSet<string>? listed)
    {
        _files.Add(file);
        foreach (var t in file.Tensors)
        {
            if (listed is not null && !listed.Contains(t.Name))
                throw new HuggingFaceFormatException(file.Path, $"tensor '{t.Name}' is not listed for this shard in {IndexFile}");
            if (!_byTensor.TryAdd(t.Name, file))
                throw new HuggingFaceFormatException(file.Path, $"tensor '{t.Name}' also appears in {_byTensor[t.Name].Path}");
        }
        if (listed is not null)
            foreach (var name in listed)
                if (!file.Contains(name))
                    throw new HuggingFaceFormatException(file.Path, $"tensor '{name}' is listed in {IndexFile} for this shard but is not in it");
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
    }
}
