using System.Runtime.InteropServices;
using System.Text.Json;
using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>
/// The tensors of a model directory with 4-bit GPTQ or AWQ weights (config.json's <c>quantization_config.quant_method</c>
/// "gptq" or "awq") seen as float tensors: each linear layer's <c>x.qweight</c>, <c>x.qzeros</c>, <c>x.scales</c> (and GPTQ's
/// <c>x.g_idx</c>) stand for a tensor <c>x.weight</c> (N, K) of value[n, k] = scale[g, n] (q[k, n] - z[g, n]), g = k / group_size,
/// which reading gives in F32 (exact: an F16 scale times an integer of at most 5 bits); the four tensors are hidden from
/// <see cref="Names"/>. <see cref="ReadPacked"/> gives the nibbles, scales and zeros in <see cref="QuantizedWeight.Int4"/>'s
/// layout, so that an int4 model keeps them exactly. Every other tensor passes through.
/// <para>The layouts (learned from AutoGPTQ's and AutoAWQ's packers; K inputs, N outputs, G groups):</para>
/// <list type="bullet">
/// <item>GPTQ: qweight (K / 8, N) int32, input 8r + j of column n in bits 4j of [r, n]; qzeros (G, N / 8) int32, output 8c + j
/// in bits 4j of [g, c], stored as z - 1 by the classic <c>checkpoint_format</c> "gptq" (so z = (stored + 1) mod 16), as z by
/// "gptq_v2"; scales (G, N); g_idx (K) int32, input k's group: k / group_size, or in an act-order checkpoint (desc_act) a
/// permutation of those groups over the inputs. An act-order weight is value[n, k] = scale[g_idx[k], n] (q[k, n] -
/// z[g_idx[k], n]): it loads dequantized (exactly), or kept 4-bit with its inputs reordered (<see cref="ReadPacked"/>: the
/// inputs sorted by group, so that each group is a contiguous run of stored columns, and the order kept beside the weight,
/// <see cref="QuantizedWeight.InputOrder"/>).</item>
/// <item>AWQ (version "gemm"): qweight (K, N / 8) int32, output 8c + j of row k in nibble [0, 4, 1, 5, 2, 6, 3, 7][j] of [k, c]
/// (AWQ packs the columns in the order 0, 2, 4, 6, 1, 3, 5, 7); qzeros (G, N / 8) in the same order, no offset; scales (G, N).</item>
/// </list>
/// Anything else (bits other than 4, another format or version, a missing tensor, a shape or dtype that does not fit) is refused
/// naming the tensor and the reason.
/// </summary>
internal sealed class Int4CheckpointSource : ITensorSource
{
    /// <summary>The nibble that holds output column 8c + j of an AWQ word (the inverse of AWQ's packing order).</summary>
    internal static readonly int[] AwqNibbleOfColumn = [0, 4, 1, 5, 2, 6, 3, 7];

    private readonly ITensorSource _inner;
    private readonly SafetensorsShardSource _files;
    private readonly Dictionary<string, Int4CheckpointWeight> _weights = new(StringComparer.Ordinal);
    private readonly HashSet<string> _hidden = new(StringComparer.Ordinal);

    /// <summary>Wraps <paramref name="inner"/> (reading raw tensors from <paramref name="files"/>); <paramref name="configPath"/> says the format.</summary>
    /// <exception cref="HuggingFaceFormatException">The quantization config or a quantized layer's tensors are not a supported 4-bit form.</exception>
    public Int4CheckpointSource(ITensorSource inner, SafetensorsShardSource files, string configPath)
    {
        _inner = inner;
        _files = files;
        var packed = files.Names.Where(n => n.EndsWith(".qweight", StringComparison.Ordinal)).OrderBy(n => n, StringComparer.Ordinal).ToList();
        Format = ReadFormat(configPath, packed.FirstOrDefault());
        if (Format is null) return;
        foreach (var qweight in packed)
        {
            var w = Describe(qweight[..^".qweight".Length]);
            if (_inner.ShapeOf(w.Name) is not null)
                throw new HuggingFaceFormatException(files.FileOf(w.Name),
                    $"tensor '{w.Name}' and the {Format.Method} tensors '{qweight}' both give one weight; expected one of them");
            _weights.Add(w.Name, w);
            _hidden.Add(qweight);
            _hidden.Add(w.Prefix + ".qzeros");
            _hidden.Add(w.Prefix + ".scales");
            if (w.HasGroupIndex) _hidden.Add(w.Prefix + ".g_idx");
        }
    }

    /// <summary>The checkpoint's 4-bit format, or null when config.json declares none.</summary>
    public Int4CheckpointFormat? Format { get; }

    /// <summary>The 4-bit weights found, by the name of the weight they stand for (<c>x.weight</c>).</summary>
    public IReadOnlyDictionary<string, Int4CheckpointWeight> Weights => _weights;

    /// <summary>A line for the load log, or null when the checkpoint is not 4-bit.</summary>
    public string? Summary => Format is not { } f ? null
        : $"pre-quantized {f.Method.ToUpperInvariant()} checkpoint: {_weights.Count} 4-bit weights, groups of " +
          $"{(f.GroupSize == -1 ? "a whole row (per channel)" : f.GroupSize.ToString(System.Globalization.CultureInfo.InvariantCulture))}, " +
          $"{(f.Symmetric ? "symmetric" : "asymmetric")}" +
          (_weights.Values.Count(w => w.GroupIndex is not null) is var ordered and > 0
              ? $", {ordered} in act order (kept 4-bit, their inputs are gathered by group before each product)" : "") +
          "; kept 4-bit with --quantize int4, else dequantized as they load";

    public string Description => _inner.Description;

    public IEnumerable<string> Names => _inner.Names.Where(n => !_hidden.Contains(n)).Concat(_weights.Keys);

    public Shape? ShapeOf(string name) => _weights.TryGetValue(name, out var w) ? new Shape(w.Rows, w.Columns)
        : _hidden.Contains(name) ? null : _inner.ShapeOf(name);

    public string FileOf(string name) => _weights.TryGetValue(name, out var w) ? _files.FileOf(w.Prefix + ".qweight") : _inner.FileOf(name);

    public float[] Read(string name) => _weights.TryGetValue(name, out var w) ? Dequantized(w) : _inner.Read(name);

    public float[] Read(string name, IReadOnlyList<(long Start, long Length)> runs)
    {
        if (!_weights.TryGetValue(name, out var w)) return _inner.Read(name, runs);
        var whole = Dequantized(w);
        var result = new float[runs.Sum(r => r.Length)];
        int at = 0;
        foreach (var (start, length) in runs)
        {
            Array.Copy(whole, start, result, at, length);
            at += (int)length;
        }
        return result;
    }

    /// <summary>
    /// The weight <paramref name="name"/> (<c>x.weight</c>) in <see cref="QuantizedWeight.Int4"/>'s layout: packed (N, K / 8),
    /// scales and zeros (N, G); null when it is not a 4-bit weight of this checkpoint. An act-order weight (its g_idx permutes the
    /// groups) comes with its inputs sorted by group, stored column j holding input <c>InputOrder[j]</c> (inputs of one group in
    /// ascending order), so that each group is a contiguous run of stored columns; InputOrder is null for any other weight.
    /// </summary>
    /// <exception cref="HuggingFaceFormatException">An act-order g_idx gives a group other than the group size's count of inputs
    /// (then no contiguous layout of groups of that size holds it).</exception>
    public (int[] Packed, float[] Scales, sbyte[] Zeros, int GroupSize, int[]? InputOrder)? ReadPacked(string name)
    {
        if (!_weights.TryGetValue(name, out var w)) return null;
        var order = w.GroupIndex is { } index ? ActOrder(w, index) : null;
        int n = w.Rows, k = w.Columns, groups = w.Groups;
        var qweight = ReadInt32(w.Prefix + ".qweight");
        var qzeros = ReadInt32(w.Prefix + ".qzeros");
        var scales = _files.Read(w.Prefix + ".scales");          // (G, N)
        var packed = new int[n * (k / 8)];
        var rowScales = new float[n * groups];
        var zeros = new sbyte[n * groups];
        bool awq = Format!.Method == "awq";
        for (int r = 0; r < n; r++)
        {
            for (int j = 0; j < k; j++)
            {
                int c = order is null ? j : order[j];                                               // stored column j is input c
                int q = awq
                    ? (qweight[c * (n / 8) + r / 8] >> (4 * AwqNibbleOfColumn[r % 8])) & 0xF          // (K, N / 8)
                    : (qweight[c / 8 * n + r] >> (4 * (c % 8))) & 0xF;                               // (K / 8, N)
                packed[r * (k / 8) + j / 8] |= q << (4 * (j % 8));
            }
            for (int g = 0; g < groups; g++)
            {
                int stored = (qzeros[g * (n / 8) + r / 8] >> (4 * (awq ? AwqNibbleOfColumn[r % 8] : r % 8))) & 0xF;
                zeros[r * groups + g] = (sbyte)((stored + Format.ZeroOffset) & 0xF);
                float s = scales[g * n + r];
                if (!float.IsFinite(s))
                    throw new HuggingFaceFormatException(_files.FileOf(w.Prefix + ".scales"),
                        $"tensor '{w.Prefix}.scales' holds {s} at [{g}, {r}]; scales must be finite");
                rowScales[r * groups + g] = s;
            }
        }
        return (packed, rowScales, zeros, w.GroupSize, order);
    }

    /// <summary>
    /// The inputs of an act-order weight sorted by their group (<paramref name="index"/>, g_idx), ascending within a group: stored
    /// column j is input order[j], and stored columns j of group j / group size hold exactly that group's inputs.
    /// </summary>
    private int[] ActOrder(Int4CheckpointWeight w, int[] index)
    {
        var order = Enumerable.Range(0, w.Columns).ToArray();
        var keys = (int[])index.Clone();
        Array.Sort(keys, order);                         // not stable: the inputs of a group are put back in order below
        for (int j = 0; j < w.Columns; j++)
        {
            int expected = j / w.GroupSize;
            if (keys[j] != expected)
            {
                int count = index.Count(g => g == keys[j]);
                throw new HuggingFaceFormatException(_files.FileOf(w.Prefix + ".g_idx"),
                    $"tensor '{w.Prefix}.g_idx' puts {count} inputs in group {keys[j]}; kept 4-bit, its groups of {w.GroupSize} must each hold " +
                    $"{w.GroupSize} inputs (the last one the rest); load it without --quantize int4 to dequantize it exactly to the model's dtype");
            }
        }
        for (int g = 0; g * w.GroupSize < w.Columns; g++)
            Array.Sort(order, g * w.GroupSize, Math.Min(w.GroupSize, w.Columns - g * w.GroupSize));
        return order;
    }

    private float[] Dequantized(Int4CheckpointWeight w)
    {
        if (w.GroupIndex is { } index) return DequantizedActOrder(w, index);
        var (packed, scales, zeros, groupSize, _) = ReadPacked(w.Name)!.Value;
        var values = Int4Quantization.Dequantize(packed, scales, zeros, w.Rows, w.Columns, groupSize);
        return Array.ConvertAll(values, v => (float)v);
    }

    /// <summary>An act-order GPTQ weight, (N, K): value[n, k] = scale[g, n] (q[k, n] - z[g, n]) with g = g_idx[k], in F32 (exact: a
    /// 16-bit scale times an integer of at most 5 bits).</summary>
    private float[] DequantizedActOrder(Int4CheckpointWeight w, int[] index)
    {
        int n = w.Rows, k = w.Columns;
        var qweight = ReadInt32(w.Prefix + ".qweight");          // (K / 8, N)
        var qzeros = ReadInt32(w.Prefix + ".qzeros");            // (G, N / 8)
        var scales = _files.Read(w.Prefix + ".scales");          // (G, N)
        foreach (float v in scales)
            if (!float.IsFinite(v))
                throw new HuggingFaceFormatException(_files.FileOf(w.Prefix + ".scales"), $"tensor '{w.Prefix}.scales' holds {v}; scales must be finite");
        var values = new float[(long)n * k];
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++)
            {
                int g = index[c];
                int q = (qweight[c / 8 * n + r] >> (4 * (c % 8))) & 0xF;
                int z = (((qzeros[g * (n / 8) + r / 8] >> (4 * (r % 8))) & 0xF) + Format!.ZeroOffset) & 0xF;
                values[(long)r * k + c] = (float)((double)scales[g * n + r] * (q - z));
            }
        return values;
    }

    private int[] ReadInt32(string name) => MemoryMarshal.Cast<byte, int>(_files.ReadBytes(name)).ToArray();

    /// <summary>Checks the tensors of the quantized layer <paramref name="prefix"/> against the format; throws naming the first that does not fit.</summary>
    private Int4CheckpointWeight Describe(string prefix)
    {
        var f = Format!;
        bool awq = f.Method == "awq";
        string qweight = prefix + ".qweight", qzeros = prefix + ".qzeros", scales = prefix + ".scales", gIdx = prefix + ".g_idx";
        foreach (var needed in new[] { qzeros, scales })
            if (_files.ShapeOf(needed) is null)
                throw new HuggingFaceFormatException(_files.FileOf(qweight),
                    $"{f.Method} tensor '{qweight}' has no '{needed}': a 4-bit layer needs its qweight, qzeros and scales");
        Require(qweight, DType.I32, "int32");
        Require(qzeros, DType.I32, "int32");
        var scaleInfo = _files.InfoOf(scales);
        if (scaleInfo.DType is not (DType.F16 or DType.BF16 or DType.F32))
            throw new HuggingFaceFormatException(_files.FileOf(scales), $"tensor '{scales}' is {scaleInfo.DType}; expected F16, BF16 or F32 scales");
        var qs = _files.ShapeOf(qweight)!;
        if (qs.Rank != 2)
            throw new HuggingFaceFormatException(_files.FileOf(qweight), $"tensor '{qweight}' has shape {qs}; expected rank 2");
        // GPTQ packs the inputs (K / 8, N), AWQ the outputs (K, N / 8).
        int k = awq ? qs[0] : qs[0] * 8, n = awq ? qs[1] * 8 : qs[1];
        int groupSize = f.GroupSize == -1 ? k : f.GroupSize;
        int groups = Int4Quantization.Groups(k, groupSize);
        if (_files.ShapeOf(qzeros) != new Shape(groups, n / 8))
            throw new HuggingFaceFormatException(_files.FileOf(qzeros),
                $"tensor '{qzeros}' has shape {_files.ShapeOf(qzeros)}; {qweight} {qs} in groups of {groupSize} needs ({groups}, {n / 8})");
        if (_files.ShapeOf(scales) != new Shape(groups, n))
            throw new HuggingFaceFormatException(_files.FileOf(scales),
                $"tensor '{scales}' has shape {_files.ShapeOf(scales)}; {qweight} {qs} in groups of {groupSize} needs ({groups}, {n})");
        bool hasGroupIndex = _files.ShapeOf(gIdx) is not null;
        int[]? actOrderIndex = null;
        if (hasGroupIndex)
        {
            if (awq)
                throw new HuggingFaceFormatException(_files.FileOf(gIdx), $"tensor '{gIdx}' in an AWQ checkpoint; AWQ has no group index");
            Require(gIdx, DType.I32, "int32");
            if (_files.ShapeOf(gIdx) != new Shape(k))
                throw new HuggingFaceFormatException(_files.FileOf(gIdx), $"tensor '{gIdx}' has shape {_files.ShapeOf(gIdx)}; expected ({k}), one a input");
            var index = ReadInt32(gIdx);
            for (int i = 0; i < k; i++)
                if ((uint)index[i] >= (uint)groups)
                    throw new HuggingFaceFormatException(_files.FileOf(gIdx),
                        $"tensor '{gIdx}' gives input {i} group {index[i]}; {qweight} {qs} in groups of {groupSize} has groups 0 to {groups - 1}");
            bool contiguous = true;
            for (int i = 0; i < k && contiguous; i++) contiguous = index[i] == i / groupSize;
            if (!contiguous) actOrderIndex = index;                 // act order: the groups permuted over the inputs
        }
        else if (!awq && f.ActOrder)
            throw new HuggingFaceFormatException(_files.FileOf(qweight),
                $"{f.Method} tensor '{qweight}' has no '{gIdx}' but config.json says desc_act true: its inputs' groups are unknown");
        return new Int4CheckpointWeight(prefix + ".weight", prefix, n, k, groupSize, groups, hasGroupIndex, actOrderIndex);
    }

    private void Require(string name, DType dtype, string what)
    {
        var info = _files.InfoOf(name);
        if (info.DType != dtype)
            throw new HuggingFaceFormatException(_files.FileOf(name), $"tensor '{name}' is {info.DType}; expected {what}");
    }

    /// <summary>
    /// config.json's quantization_config when it declares GPTQ or AWQ (checked), else null. Older checkpoints keep it beside
    /// config.json instead: AutoGPTQ's quantize_config.json (GPTQ unless it names another quant_method) and AutoAWQ's
    /// quant_config.json (AWQ), read when config.json has none.
    /// </summary>
    private static Int4CheckpointFormat? ReadFormat(string configPath, string? firstPacked)
    {
        var (q, found) = ReadObject(configPath, "quantization_config");
        string? fallback = null;
        if (!found && firstPacked is not null)
        {
            string folder = Path.GetDirectoryName(configPath) ?? ".";
            foreach (var (file, implied) in new[] { ("quantize_config.json", "gptq"), ("quant_config.json", "awq") })
            {
                string path = Path.Combine(folder, file);
                if (!File.Exists(path)) continue;
                (q, found) = ReadObject(path, null);
                fallback = implied;
                configPath = path;
                break;
            }
        }
        string? method = found && q.TryGetProperty("quant_method", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString()!.ToLowerInvariant() : fallback;
        if (method is not ("gptq" or "awq"))
        {
            if (firstPacked is not null)
                throw new HuggingFaceFormatException(configPath,
                    $"tensor '{firstPacked}' is a packed quantized weight, but quantization_config.quant_method is {(method is null ? "absent" : $"'{method}'")} " +
                    "(and there is no quantize_config.json or quant_config.json); Tessera reads 4-bit GPTQ and AWQ checkpoints (quant_method gptq or awq)");
            return null;
        }
        int bits = Int(q, "bits", configPath) ?? Int(q, "w_bit", configPath) ?? 4;
        if (bits != 4)
            throw new HuggingFaceFormatException(configPath, $"quantization_config.bits is {bits}; Tessera reads {method} checkpoints of 4 bits only");
        int groupSize = Int(q, "group_size", configPath) ?? Int(q, "q_group_size", configPath) ?? 128;
        if (groupSize != -1 && (groupSize <= 0 || groupSize % Int4Quantization.PerWord != 0))
            throw new HuggingFaceFormatException(configPath,
                $"quantization_config.group_size is {groupSize}; expected -1 (per channel) or a positive multiple of {Int4Quantization.PerWord}");
        if (method == "awq")
        {
            string version = Str(q, "version") ?? "gemm";
            if (version.ToLowerInvariant() != "gemm")
                throw new HuggingFaceFormatException(configPath,
                    $"quantization_config.version is '{version}'; Tessera reads AWQ's GEMM packing only (not GEMV, Marlin, ExLlama or IPEX): re-save it with version gemm");
            if (q.TryGetProperty("zero_point", out var zp) && zp.ValueKind == JsonValueKind.False)
                throw new HuggingFaceFormatException(configPath, "quantization_config.zero_point is false; Tessera reads AWQ checkpoints with zero points only");
            return new Int4CheckpointFormat("awq", groupSize, Symmetric: false, ActOrder: false, ZeroOffset: 0);
        }
        string format = Str(q, "checkpoint_format") ?? "gptq";
        if (format is not ("gptq" or "gptq_v2"))
            throw new HuggingFaceFormatException(configPath,
                $"quantization_config.checkpoint_format is '{format}'; Tessera reads GPTQ's 'gptq' and 'gptq_v2' packing (not Marlin, BitBLAS or others)");
        bool sym = !q.TryGetProperty("sym", out var s) || s.ValueKind != JsonValueKind.False;
        bool actOrder = q.TryGetProperty("desc_act", out var d) && d.ValueKind == JsonValueKind.True;
        return new Int4CheckpointFormat("gptq", groupSize, sym, actOrder, ZeroOffset: format == "gptq" ? 1 : 0);
    }

    /// <summary>The object <paramref name="property"/> of the JSON file (or the whole file when null), and whether there was one.</summary>
    private static (JsonElement Value, bool Found) ReadObject(string path, string? property)
    {
        string text;
        try { text = File.ReadAllText(path); }
        catch (IOException) { return (default, false); }
        try
        {
            using var doc = JsonDocument.Parse(text);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) return (default, false);
            if (property is null) return (root.Clone(), true);
            return root.TryGetProperty(property, out var v) && v.ValueKind == JsonValueKind.Object ? (v.Clone(), true) : (default, false);
        }
        catch (JsonException e)
        {
            throw new HuggingFaceFormatException(path, $"not valid JSON ({e.Message})", e);
        }
    }

    private static int? Int(JsonElement q, string name, string configPath)
    {
        if (!q.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt32(out int i))
            throw new HuggingFaceFormatException(configPath, $"quantization_config.{name} must be an integer, got {v.GetRawText()}");
        return i;
    }

    private static string? Str(JsonElement q, string name) =>
        q.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
}

/// <summary>A 4-bit checkpoint's quantization_config: method "gptq" or "awq", group size (-1 per channel), and what the loader needs.</summary>
internal sealed record Int4CheckpointFormat(string Method, int GroupSize, bool Symmetric, bool ActOrder, int ZeroOffset);

/// <summary>One 4-bit layer of a checkpoint: the weight it stands for (N rows, K columns), where its tensors are, and its act-order
/// group index (g_idx, K) when that permutes the groups (null when input k is in group k / group size).</summary>
internal sealed record Int4CheckpointWeight(string Name, string Prefix, int Rows, int Columns, int GroupSize, int Groups, bool HasGroupIndex, int[]? GroupIndex);
