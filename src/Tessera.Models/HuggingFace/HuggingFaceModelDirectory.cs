using Tessera.Models.Adapters;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>
/// A Hugging Face model directory (config.json plus model.safetensors, or model.safetensors.index.json and its
/// shards) opened for loading into Tessera parameters; and the export of Tessera parameters to such a directory.
/// The whole directory is checked (config, shard index, every tensor's presence and shape) when opened,
/// before any weight is read.
/// </summary>
public sealed class HuggingFaceModelDirectory : IDisposable
{
    /// <summary>Configuration file name.</summary>
    public const string ConfigFile = "config.json";

    private readonly SafetensorsShardSource _files;
    private readonly Fp8CheckpointSource _fp8;
    private readonly Int4CheckpointSource _source;
    private readonly Dictionary<string, string> _resolved;
    private LoraWeightMerge? _adapter;

    private HuggingFaceModelDirectory(string path, TransformerConfig config, SafetensorsShardSource source)
    {
        Path = path;
        Config = config;
        _files = source;
        _fp8 = new Fp8CheckpointSource(source, System.IO.Path.Combine(path, ConfigFile));
        _source = new Int4CheckpointSource(_fp8, source, System.IO.Path.Combine(path, ConfigFile));
        Map = HuggingFaceWeightMap.For(config);
        _resolved = Map.Check(_source);
    }

    /// <summary>The directory.</summary>
    public string Path { get; }

    /// <summary>The configuration read from config.json (vocabulary padded as asked when opened).</summary>
    public TransformerConfig Config { get; }

    /// <summary>
    /// What the load log should say about the weights' form, or null: for a pre-quantized FP8 checkpoint, how many F8_E4M3
    /// weights with which scales, and that input_scale tensors are ignored.
    /// </summary>
    public string? WeightsNote => _fp8.Summary ?? _source.Summary;

    /// <summary>
    /// The group size of a 4-bit GPTQ or AWQ checkpoint's weights (-1: a group a row), or null when the checkpoint is not one:
    /// what an int4 model of it takes, so that its weights load exactly (<see cref="IsInt4Exact"/>).
    /// </summary>
    public int? Int4GroupSize => _source.Format?.GroupSize;

    /// <summary>
    /// Whether the 4-bit checkpoint gives <paramref name="parameterName"/> exactly as int4: every source of it is a 4-bit
    /// weight, stacked by rows (not transposed), with no adapter merged into it. The parameters an int4 model of a 4-bit
    /// checkpoint quantizes; the others (embeddings, head, norms, any layer the checkpoint left in 16 bits) stay in its dtype.
    /// </summary>
    public bool IsInt4Exact(string parameterName)
    {
        if (_source.Format is null || _adapter?.Adapts(parameterName) == true) return false;
        var entry = Map.Entries.FirstOrDefault(e => e.Canonical == parameterName);
        return entry is not null && entry.Transform is (WeightTransform.Identity or WeightTransform.ConcatRows)
            && entry.Sources.All(s => _resolved.TryGetValue(s.Name, out var file) && _source.Weights.ContainsKey(file));
    }

    /// <summary>The name map expanded for <see cref="Config"/>.</summary>
    public HuggingFaceWeightMap Map { get; }

    /// <summary>
    /// Opens <paramref name="directory"/>; the embedding rows are padded to a multiple of <paramref name="paddedVocabMultiple"/>.
    /// </summary>
    /// <exception cref="HuggingFaceFormatException">config.json, the index or a tensor is missing, unexpected or malformed.</exception>
    /// <exception cref="SafetensorsFormatException">A weights file breaks the safetensors format.</exception>
    public static HuggingFaceModelDirectory Open(string directory, int paddedVocabMultiple = 1)
    {
        if (!Directory.Exists(directory)) throw new HuggingFaceFormatException(directory, "model directory not found");
        var config = HuggingFaceConfig.Load(System.IO.Path.Combine(directory, ConfigFile), paddedVocabMultiple);
        var source = SafetensorsShardSource.Open(directory);
        try
        {
            return new HuggingFaceModelDirectory(directory, config, source);
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Opens <paramref name="directory"/> for a model of configuration <paramref name="expected"/> (e.g. a checkpoint
    /// of a run whose embedding is padded): config.json must describe the same architecture.
    /// </summary>
    /// <exception cref="HuggingFaceFormatException">config.json describes another architecture, or the files are malformed.</exception>
    public static HuggingFaceModelDirectory Open(string directory, TransformerConfig expected)
    {
        if (!Directory.Exists(directory)) throw new HuggingFaceFormatException(directory, "model directory not found");
        var configPath = System.IO.Path.Combine(directory, ConfigFile);
        var found = HuggingFaceConfig.Load(configPath);
        var mismatch = ArchitectureMismatch(found, expected);
        if (mismatch is not null) throw new HuggingFaceFormatException(configPath, $"{mismatch}; the weights belong to another model");
        var source = SafetensorsShardSource.Open(directory);
        try
        {
            return new HuggingFaceModelDirectory(directory, expected, source);
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    /// <summary>The first architectural field in which two configurations differ, or null.</summary>
    public static string? ArchitectureMismatch(TransformerConfig found, TransformerConfig expected)
    {
        (string Name, object Found, object Expected)[] fields =
        [
            ("family", found.Family, expected.Family), ("vocab_size", found.VocabSize, expected.VocabSize),
            ("layers", found.Layers, expected.Layers), ("hidden size", found.Embedding, expected.Embedding),
            ("heads", found.Heads, expected.Heads), ("kv heads", found.EffectiveKvHeads, expected.EffectiveKvHeads),
            ("head size", found.HeadSize, expected.HeadSize),
            ("MLP width", found.EffectiveHidden, expected.EffectiveHidden), ("context", found.MaxSequenceLength, expected.MaxSequenceLength),
            ("tied embeddings", found.TiedEmbeddings, expected.TiedEmbeddings), ("biases", found.Bias, expected.Bias),
            ("q/k/v biases", found.AttentionBias, expected.AttentionBias), ("sliding window", found.SlidingWindow, expected.SlidingWindow),
            ("q/k head norms", found.QkNorm, expected.QkNorm), ("post-norms", found.PostNorms, expected.PostNorms),
            ("GELU gate", found.GeluGate, expected.GeluGate), ("scaled embeddings", found.ScaleEmbeddings, expected.ScaleEmbeddings),
            ("local window", found.LocalWindow, expected.LocalWindow), ("local period", found.LocalPeriod, expected.LocalPeriod),
            ("local rope theta", found.LocalRopeTheta, expected.LocalRopeTheta),
            ("query_pre_attn_scalar", found.QueryPreAttentionScalar, expected.QueryPreAttentionScalar),
            ("attention soft cap", found.AttentionSoftCap, expected.AttentionSoftCap), ("final soft cap", found.FinalSoftCap, expected.FinalSoftCap),
            ("rope theta", found.RopeTheta, expected.RopeTheta), ("partial rotary factor", found.RotaryDimensions, expected.RotaryDimensions),
            ("rope scaling", found.RopeScaling?.ToString() ?? "none", expected.RopeScaling?.ToString() ?? "none"),
        ];
        foreach (var (name, f, e) in fields)
            if (!Equals(f, e)) return $"{name} is {f} but {e} was expected";
        return null;
    }

    /// <summary>The LoRA adapter merged into the weights as they are read (<see cref="MergeAdapter"/>), or null.</summary>
    public LoraWeightMerge? Adapter => _adapter;

    /// <summary>
    /// Reads the PEFT LoRA adapter in <paramref name="adapterDirectory"/> (checked whole against <see cref="Config"/> first:
    /// <see cref="LoraWeightMerge.Open"/>), after which every weight it targets is read with it merged (W += alpha / r · B A,
    /// <c>tessera export</c>'s merge bit for bit) by <see cref="ReadCanonical"/>, <see cref="ReadLocal"/>,
    /// <see cref="ReadAllCanonical"/> and <see cref="LoadInto"/>: before any dtype conversion, quantization or tensor-parallel
    /// slicing, one weight at a time. Call before any weight is read; once.
    /// </summary>
    public LoraWeightMerge MergeAdapter(string adapterDirectory)
    {
        if (_adapter is not null) throw new InvalidOperationException($"{Path}: the adapter {_adapter.Directory} is merged already; merge one adapter");
        if (BytesRead > 0) throw new InvalidOperationException($"{Path}: weights were read before the adapter {adapterDirectory} was given; give it first");
        _adapter = LoraWeightMerge.Open(adapterDirectory, Config);
        return _adapter;
    }

    /// <summary>Reads one Tessera parameter (canonical name) from the files, converted to Tessera's layout (the adapter merged, if any).</summary>
    public HostTensor ReadCanonical(string canonicalName)
    {
        var entry = Map.Entries.FirstOrDefault(e => e.Canonical == canonicalName)
            ?? throw new KeyNotFoundException($"{Path}: no Tessera parameter '{canonicalName}' in a {Config.Family} model");
        return ReadMerged(entry);
    }

    private HostTensor ReadMerged(WeightMapEntry entry)
    {
        var tensor = Map.ReadCanonical(entry, _source, _resolved);
        return _adapter is null ? tensor : _adapter.Apply(entry.Canonical, tensor);
    }

    /// <summary>
    /// This rank's part of <paramref name="parameter"/> (its placement's slice of the global tensor, row-major over
    /// <see cref="Parameter.Shape"/>; <see cref="Parameter.LocalValues{T}"/> of the whole, bit for bit), converted to Tessera's
    /// layout, reading only the elements the part is made of: a row slice is one read, a column slice one read per row, a
    /// fused q/k/v slice a read from each of q, k and v, a padded vocabulary's zero rows none (<see cref="BytesRead"/> counts).
    /// A weight the <see cref="Adapter"/> targets is read whole, merged, then sliced: the merge needs every row of B A.
    /// </summary>
    public float[] ReadLocal(Parameter parameter)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        var entry = Map.Entries.FirstOrDefault(e => e.Canonical == parameter.Name)
            ?? throw new KeyNotFoundException($"{Path}: no Tessera parameter '{parameter.Name}' in a {Config.Family} model");
        if (entry.Shape != parameter.GlobalShape)
            throw new ArgumentException($"{Path}: parameter '{parameter.Name}' has shape {parameter.GlobalShape} but config.json implies {entry.Shape}");
        if (_adapter is not null && _adapter.Adapts(parameter.Name)) return parameter.LocalValues(ReadMerged(entry).Data);
        return Map.ReadSlice(entry, _source, _resolved, TensorSlice.Of(parameter));
    }

    /// <summary>Bytes of tensor data read from the weight files so far (headers excluded): what a rank's loading cost.</summary>
    public long BytesRead => _files.BytesRead;

    /// <summary>Every Tessera parameter, read and converted, the adapter merged if any (holds the whole model in host memory as F32).</summary>
    public Dictionary<string, HostTensor> ReadAllCanonical() =>
        Map.Entries.ToDictionary(e => e.Canonical, ReadMerged, StringComparer.Ordinal);

    /// <summary>
    /// Copies the weights into <paramref name="parameters"/> (values of dtype F32, F64, BF16 or F16), one tensor at
    /// a time, each rank reading only its slice of a tensor-parallel parameter (<see cref="ReadLocal"/>). The parameter set must be exactly the map's (names and shapes), or, for a pipeline stage that holds only some of
    /// the model, <paramref name="wholeModel"/> must (the model's <c>WholeLayout</c>); this is checked before any copy.
    /// </summary>
    public void LoadInto(IReadOnlyList<Parameter> parameters, IBackend backend, IReadOnlyList<Parameter>? wholeModel = null)
    {
        CheckParameters(wholeModel ?? parameters);
        foreach (var p in parameters)
        {
            // Mixed precision: the weights go to the F32 master, and the BF16 value is cast (or split) from it. A
            // tensor-parallel rank reads only its part of each split parameter.
            if (TryLoadFp8Exactly(p, backend) || TryLoadInt4Exactly(p, backend)) continue;
            var local = ReadLocal(p);
            p.WriteMasterOrValue(target => CopyToParameter(local, target, backend));
        }
    }

    /// <summary>
    /// Checks that <paramref name="parameters"/> are exactly the map's (every name once, with its shape), as
    /// <see cref="LoadInto"/> does before any copy: for a loader that reads the weights one parameter at a time itself
    /// (<see cref="ReadCanonical"/>, e.g. into ZeRO-3 shards).
    /// </summary>
    public void CheckParameters(IReadOnlyList<Parameter> parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        var expected = Map.Entries.ToDictionary(e => e.Canonical, StringComparer.Ordinal);
        foreach (var p in parameters)
        {
            if (!expected.TryGetValue(p.Name, out var e))
                throw new ArgumentException($"{Path}: parameter '{p.Name}' has no counterpart in a {Config.Family} Hugging Face model with this config.json");
            if (p.GlobalShape != e.Shape)
                throw new ArgumentException($"{Path}: parameter '{p.Name}' has shape {p.GlobalShape} but config.json implies {e.Shape}");
        }
        var given = parameters.Select(p => p.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var e in Map.Entries)
            if (!given.Contains(e.Canonical))
                throw new ArgumentException($"{Path}: the model declares no parameter '{e.Canonical}', which the weights provide");
    }

    /// <summary>
    /// Writes a pre-quantized FP8 weight's codes bit for bit, with its per-tensor or per-row scales broadcast to rows, into
    /// <paramref name="p"/>'s FP8 <see cref="QuantizedWeight"/>, when the parameter is one, is not split across ranks, and its
    /// sources are all such FP8 tensors stacked by rows (not transposed), and no adapter is merged into it. False otherwise: the caller then loads the
    /// dequantized values, which an FP8 parameter re-quantizes per row (block scales, tensor-parallel slices).
    /// </summary>
    private bool TryLoadFp8Exactly(Parameter p, IBackend backend)
    {
        if (p.Quantized is not { IsFp8: true } q || p.Shape != p.GlobalShape || _adapter?.Adapts(p.Name) == true) return false;
        var entry = Map.Entries.FirstOrDefault(e => e.Canonical == p.Name);
        if (entry is null || entry.Transform is not (WeightTransform.Identity or WeightTransform.ConcatRows)) return false;
        var parts = new List<(byte[] Codes, float[] RowScales)>();
        foreach (var (name, _) in entry.Sources)
        {
            if (_fp8.ReadRowQuantized(_resolved[name]) is not { } part) return false;
            parts.Add(part);
        }
        var codes = parts.SelectMany(x => x.Codes).ToArray();
        var scales = parts.SelectMany(x => x.RowScales).ToArray();
        if (codes.Length != q.Values.NumElements || scales.Length != q.Rows)
            throw new InvalidOperationException($"{Path}: parameter '{p.Name}' assembled {codes.Length} codes and {scales.Length} scales for {p.Shape}");
        backend.CopyFromHost<byte>(codes, q.Values);
        backend.CopyFromHost<float>(scales, q.Scales);
        return true;
    }

    /// <summary>
    /// Writes a 4-bit checkpoint's nibbles, scales and zero points as they are into <paramref name="p"/>'s int4
    /// <see cref="QuantizedWeight"/>, when <see cref="IsInt4Exact"/> and the parameter holds the checkpoint's group size; a
    /// tensor-parallel rank takes its slice of them (<see cref="Int4Slice"/>). An act-order weight keeps its stored columns and
    /// their input order (<see cref="Parameter.SetQuantizedInputOrder"/>); the sources stacked into one parameter (q, k and v;
    /// gate and up) must then share one order, as GPTQ gives layers that read one input. False otherwise: the caller then loads
    /// the dequantized values (which an int4 parameter re-quantizes, round to nearest).
    /// </summary>
    private bool TryLoadInt4Exactly(Parameter p, IBackend backend)
    {
        if (p.Quantized is not { IsInt4: true } q || !IsInt4Exact(p.Name)) return false;
        var entry = Map.Entries.First(e => e.Canonical == p.Name);
        var parts = new List<(int[] Packed, float[] Scales, sbyte[] Zeros, int GroupSize, int[]? InputOrder)>();
        foreach (var (name, _) in entry.Sources)
        {
            var part = _source.ReadPacked(_resolved[name])!.Value;
            // A per-channel checkpoint's group is its whole row; a rank's part of a row is then one group too.
            if (part.GroupSize != q.GroupSize && !(part.GroupSize == p.GlobalShape[1] && q.GroupSize == q.Columns)) return false;
            parts.Add(part);
        }
        var order = parts[0].InputOrder;
        if (parts.Any(x => !(x.InputOrder is null && order is null || x.InputOrder is { } o && order is not null && o.AsSpan().SequenceEqual(order))))
            throw new NotSupportedException($"{Path}: parameter '{p.Name}' stacks act-order 4-bit weights ({string.Join(", ", entry.Sources.Select(x => x.Name))}) " +
                "whose inputs are in different orders, which one int4 weight cannot hold; load the model without --quantize int4 to dequantize them exactly");
        if (order is not null && q.Columns != p.GlobalShape[1])
            throw new NotSupportedException($"{Path}: parameter '{p.Name}' ({p.Placement}) splits an act-order 4-bit weight's inputs across tensor-parallel " +
                "ranks, whose groups are scattered over the inputs; serve it with fewer ranks or none, or without --quantize int4");
        var packed = parts.SelectMany(x => x.Packed).ToArray();
        var scales = parts.SelectMany(x => x.Scales).ToArray();
        var zeros = parts.SelectMany(x => x.Zeros).ToArray();
        if (p.Shape != p.GlobalShape) (packed, scales, zeros) = Int4Slice(p, q, packed, scales, zeros, parts[0].GroupSize);
        p.SetQuantizedInputOrder(order);
        Int4Quantization.Write(backend, p.Quantized!, packed, scales, zeros);
        return true;
    }

    /// <summary>
    /// A tensor-parallel rank's part of a whole int4 weight (packed (N, K / 8), scales and zeros (N, G) in groups of
    /// <paramref name="group"/>): the parameter's placement picks the nibbles (<see cref="Parameter.LocalValues{T}"/> over one
    /// value a weight, as for floats), and each of the part's groups must lie inside one of the checkpoint's, whose scale and
    /// zero it takes; a part whose groups would straddle two of the checkpoint's (a column split off a group boundary) is refused.
    /// </summary>
    private (int[] Packed, float[] Scales, sbyte[] Zeros) Int4Slice(Parameter p, QuantizedWeight q, int[] packed, float[] scales, sbyte[] zeros, int group)
    {
        int n = p.GlobalShape[0], k = p.GlobalShape[1], groups = Int4Quantization.Groups(k, group);
        var nibbles = new byte[(long)n * k];
        var groupOf = new int[(long)n * k];
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++)
            {
                nibbles[(long)r * k + c] = (byte)((packed[(long)r * (k / 8) + c / 8] >> (4 * (c % 8))) & 0xF);
                groupOf[(long)r * k + c] = r * groups + c / group;
            }
        var localNibbles = p.LocalValues(nibbles);
        var localGroups = p.LocalValues(groupOf);
        int rows = q.Rows, columns = q.Columns, localGroupCount = q.Groups;
        var localPacked = new int[rows * (columns / 8)];
        var localScales = new float[rows * localGroupCount];
        var localZeros = new sbyte[rows * localGroupCount];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < columns; c++)
            {
                long at = (long)r * columns + c;
                localPacked[at / 8] |= localNibbles[at] << (int)(4 * (at % 8));
                int first = localGroups[(long)r * columns + c / q.GroupSize * q.GroupSize];
                if (localGroups[at] != first)
                    throw new NotSupportedException($"{Path}: parameter '{p.Name}' ({p.Placement}) splits the 4-bit checkpoint's groups of {group} " +
                        $"columns across tensor-parallel ranks (this rank's {columns} columns do not start on a group boundary); serve it with fewer ranks or none");
                localScales[r * localGroupCount + c / q.GroupSize] = scales[first];
                localZeros[r * localGroupCount + c / q.GroupSize] = zeros[first];
            }
        return (localPacked, localScales, localZeros);
    }

    private static void CopyToParameter(float[] data, Tensor value, IBackend backend)
    {
        switch (value.DType)
        {
            case DType.F32: backend.CopyFromHost<float>(data, value); break;
            case DType.F64: backend.CopyFromHost<double>(Array.ConvertAll(data, x => (double)x), value); break;
            case DType.BF16: backend.CopyFromHost<BFloat16>(Array.ConvertAll(data, BFloat16.FromSingle), value); break;
            case DType.F16: backend.CopyFromHost<Half>(Array.ConvertAll(data, x => (Half)x), value); break;
            default: throw new NotSupportedException($"parameter dtype {value.DType} cannot hold weights");
        }
    }

    /// <summary>A parameter's values on the host as F32 (the F32 master under mixed precision when the caller passes it).</summary>
    internal static float[] CopyFromParameter(Tensor value, IBackend backend)
    {
        int n = checked((int)value.Shape.NumElements);
        switch (value.DType)
        {
            case DType.F32: { var f = new float[n]; backend.CopyToHost<float>(value, f); return f; }
            case DType.F64: { var d = new double[n]; backend.CopyToHost<double>(value, d); return Array.ConvertAll(d, x => (float)x); }
            case DType.BF16: { var b = new BFloat16[n]; backend.CopyToHost<BFloat16>(value, b); return Array.ConvertAll(b, x => x.ToSingle()); }
            case DType.F16: { var h = new Half[n]; backend.CopyToHost<Half>(value, h); return Array.ConvertAll(h, x => (float)x); }
            default: throw new NotSupportedException($"parameter dtype {value.DType} cannot be exported");
        }
    }

    /// <summary>
    /// Writes <paramref name="parameters"/> as a Hugging Face model directory: config.json and model.safetensors (F32,
    /// metadata format=pt, unpadded vocabulary, tied head omitted) that transformers' from_pretrained loads.
    /// </summary>
    public static void Export(string directory, TransformerConfig config, IReadOnlyList<Parameter> parameters, IBackend backend)
    {
        var canonical = parameters.ToDictionary(p => p.Name, p => new HostTensor(p.Shape, p.ReadMasterOrValue(w => CopyFromParameter(w, backend))), StringComparer.Ordinal);
        Export(directory, config, canonical);
    }

    /// <summary>Writes canonical host tensors as a Hugging Face model directory (see the other overload).</summary>
    public static void Export(string directory, TransformerConfig config, IReadOnlyDictionary<string, HostTensor> canonical)
    {
        var map = HuggingFaceWeightMap.For(config);
        var hf = map.ToHuggingFace(canonical);
        string configJson = HuggingFaceConfig.ToJson(config);
        Directory.CreateDirectory(directory);
        var writer = new SafetensorsWriter();
        writer.Metadata["format"] = "pt";
        foreach (var (name, t) in hf)
            writer.Add(name, t.Shape, t.Data);
        writer.Write(System.IO.Path.Combine(directory, SafetensorsShardSource.SingleFile));
        File.WriteAllText(System.IO.Path.Combine(directory, ConfigFile), configJson + "\n");
    }

    /// <summary>Closes the weight files.</summary>
    public void Dispose() => _files.Dispose();
}
