using System.Text.Json;
using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>How a pre-quantized FP8 weight's scales are laid out.</summary>
internal enum Fp8ScaleLayout
{
    /// <summary>One scale for the whole tensor (shape [], [1] or (1, 1)).</summary>
    PerTensor,

    /// <summary>One scale an output row (shape (N) or (N, 1)): per-channel.</summary>
    PerRow,

    /// <summary>One scale a block of rows and columns (shape (ceil(N / bn), ceil(K / bk))): DeepSeek-V3's weight_block_size.</summary>
    Block,
}

/// <summary>One F8_E4M3 weight of a checkpoint with its scale tensor.</summary>
internal sealed record Fp8CheckpointWeight(string Name, string ScaleName, Fp8ScaleLayout Layout, int Rows, int Columns,
    int BlockRows, int BlockColumns, string? InputScaleName);

/// <summary>
/// The tensors of a model directory with pre-quantized FP8 weights seen as float tensors: an F8_E4M3 tensor <c>x.weight</c>
/// (N, K) stands for value[n, k] = e4m3(code[n, k]) x scale(n, k), its scale in <c>x.weight_scale</c> (compressed-tensors,
/// fbgemm: per tensor or per output row) or <c>x.weight_scale_inv</c> (transformers' "fp8" quant_method: per block of
/// config.json's <c>quantization_config.weight_block_size</c>, 128 x 128 when absent; despite its name it multiplies).
/// Reading it gives those values in F32 (each the F32 product of the code's value and its scale); the scale tensors and any
/// <c>x.input_scale</c> (a static activation scale, which Tessera ignores: it quantizes activations dynamically, row by row)
/// are hidden from <see cref="Names"/>, so the name map does not see them as unexpected. Every other tensor passes through.
/// </summary>
internal sealed class Fp8CheckpointSource : ITensorSource
{
    private readonly SafetensorsShardSource _inner;
    private readonly Dictionary<string, Fp8CheckpointWeight> _fp8 = new(StringComparer.Ordinal);
    private readonly HashSet<string> _hidden = new(StringComparer.Ordinal);
    private readonly Dictionary<string, float[]> _scales = new(StringComparer.Ordinal);

    /// <summary>Wraps <paramref name="inner"/>; <paramref name="configPath"/> is read for the block size.</summary>
    /// <exception cref="HuggingFaceFormatException">An FP8 weight has no scale, two, or one of an unexpected shape or dtype.</exception>
    public Fp8CheckpointSource(SafetensorsShardSource inner, string configPath)
    {
        _inner = inner;
        (int Rows, int Columns)? block = null;
        foreach (var name in inner.Names.OrderBy(n => n, StringComparer.Ordinal))
        {
            var info = inner.InfoOf(name);
            if (info.DType != DType.F8E4M3) continue;
            block ??= BlockSize(configPath);
            var shape = info.Shape;
            if (shape.Rank != 2)
                throw new HuggingFaceFormatException(inner.FileOf(name),
                    $"F8_E4M3 tensor '{name}' has shape {shape}; only (N, K) linear weights can be pre-quantized FP8");
            int n = shape[0], k = shape[1];
            string direct = name + "_scale", inverse = name + "_scale_inv";
            bool hasDirect = inner.ShapeOf(direct) is not null, hasInverse = inner.ShapeOf(inverse) is not null;
            if (!hasDirect && !hasInverse)
                throw new HuggingFaceFormatException(inner.FileOf(name),
                    $"F8_E4M3 tensor '{name}' {shape} has no scale tensor ('{direct}' or '{inverse}'): its codes cannot be turned into weights");
            if (hasDirect && hasInverse)
                throw new HuggingFaceFormatException(inner.FileOf(name),
                    $"F8_E4M3 tensor '{name}' has two scale tensors, '{direct}' and '{inverse}'; expected one");
            string scaleName = hasDirect ? direct : inverse;
            var scaleInfo = inner.InfoOf(scaleName);
            if (scaleInfo.DType is not (DType.F32 or DType.BF16 or DType.F16 or DType.F64))
                throw new HuggingFaceFormatException(inner.FileOf(scaleName),
                    $"scale tensor '{scaleName}' of F8_E4M3 tensor '{name}' is {scaleInfo.DType}; expected F32, BF16 or F16");
            var s = scaleInfo.Shape;
            int bn = block.Value.Rows, bk = block.Value.Columns;
            int blockRows = (n + bn - 1) / bn, blockColumns = (k + bk - 1) / bk;
            Fp8ScaleLayout layout;
            if (s.NumElements == 1 && s.Rank <= 2) layout = Fp8ScaleLayout.PerTensor;
            else if ((s.Rank == 1 && s[0] == n) || (s.Rank == 2 && s[0] == n && s[1] == 1)) layout = Fp8ScaleLayout.PerRow;
            else if (s.Rank == 2 && s[0] == blockRows && s[1] == blockColumns) layout = Fp8ScaleLayout.Block;
            else
                throw new HuggingFaceFormatException(inner.FileOf(scaleName),
                    $"scale tensor '{scaleName}' has shape {s}, which fits neither per-tensor ([] or [1]), per-channel ([{n}] or [{n}, 1]) " +
                    $"nor {bn} x {bk} blocks ([{blockRows}, {blockColumns}]) of F8_E4M3 tensor '{name}' {shape}");
            string? input = name.EndsWith(".weight", StringComparison.Ordinal) ? name[..^".weight".Length] + ".input_scale" : null;
            if (input is not null && inner.ShapeOf(input) is null) input = null;
            _fp8.Add(name, new Fp8CheckpointWeight(name, scaleName, layout, n, k, bn, bk, input));
            _hidden.Add(scaleName);
            if (input is not null) _hidden.Add(input);
        }
    }

    /// <summary>The FP8 weights found, by tensor name.</summary>
    public IReadOnlyDictionary<string, Fp8CheckpointWeight> Fp8Weights => _fp8;

    /// <summary>A line for the load log describing the FP8 weights, or null when there are none.</summary>
    public string? Summary
    {
        get
        {
            if (_fp8.Count == 0) return null;
            var byLayout = _fp8.Values.GroupBy(w => w.Layout).OrderBy(g => g.Key)
                .Select(g => $"{g.Count()} {(g.Key switch { Fp8ScaleLayout.PerTensor => "per-tensor", Fp8ScaleLayout.PerRow => "per-channel", _ => $"{g.First().BlockRows}x{g.First().BlockColumns}-block" })}");
            int inputs = _fp8.Values.Count(w => w.InputScaleName is not null);
            return $"pre-quantized FP8 checkpoint: {_fp8.Count} F8_E4M3 weights ({string.Join(", ", byLayout)} scales)" +
                (inputs > 0 ? $"; {inputs} input_scale tensors read and ignored (Tessera quantizes activations dynamically, per row)" : "");
        }
    }

    public string Description => _inner.Description;

    public IEnumerable<string> Names => _inner.Names.Where(n => !_hidden.Contains(n));

    public Shape? ShapeOf(string name) => _hidden.Contains(name) ? null : _inner.ShapeOf(name);

    public string FileOf(string name) => _inner.FileOf(name);

    public float[] Read(string name) => _fp8.ContainsKey(name) ? Read(name, [(0, _inner.InfoOf(name).NumElements)]) : _inner.Read(name);

    public float[] Read(string name, IReadOnlyList<(long Start, long Length)> runs)
    {
        if (!_fp8.TryGetValue(name, out var w)) return _inner.Read(name, runs);
        var codes = _inner.ReadFp8Codes(name, runs);
        var scales = Scales(w);
        var result = new float[codes.Length];
        int at = 0;
        foreach (var (start, length) in runs)
            for (long i = start; i < start + length; i++, at++)
                result[at] = Float8E4M3.ToSingle(codes[at]) * ScaleAt(w, scales, (int)(i / w.Columns), (int)(i % w.Columns));
        return result;
    }

    /// <summary>
    /// The codes of <paramref name="name"/> (whole, row-major) and one scale a row, when its scales are per tensor or per row
    /// (broadcast to rows); null for block scales or a tensor that is not FP8.
    /// </summary>
    public (byte[] Codes, float[] RowScales)? ReadRowQuantized(string name)
    {
        if (!_fp8.TryGetValue(name, out var w) || w.Layout == Fp8ScaleLayout.Block) return null;
        var scales = Scales(w);
        var rows = new float[w.Rows];
        for (int r = 0; r < rows.Length; r++) rows[r] = ScaleAt(w, scales, r, 0);
        return (_inner.ReadFp8Codes(name, [(0, (long)w.Rows * w.Columns)]), rows);
    }

    private static float ScaleAt(Fp8CheckpointWeight w, float[] scales, int row, int column) => w.Layout switch
    {
        Fp8ScaleLayout.PerTensor => scales[0],
        Fp8ScaleLayout.PerRow => scales[row],
        _ => scales[row / w.BlockRows * ((w.Columns + w.BlockColumns - 1) / w.BlockColumns) + column / w.BlockColumns],
    };

    private float[] Scales(Fp8CheckpointWeight w)
    {
        if (_scales.TryGetValue(w.ScaleName, out var cached)) return cached;
        var scales = _inner.Read(w.ScaleName);
        for (int i = 0; i < scales.Length; i++)
            if (!float.IsFinite(scales[i]))
                throw new HuggingFaceFormatException(_inner.FileOf(w.ScaleName),
                    $"scale tensor '{w.ScaleName}' of F8_E4M3 tensor '{w.Name}' holds {scales[i]} at element {i}; scales must be finite");
        _scales[w.ScaleName] = scales;
        return scales;
    }

    /// <summary>config.json's quantization_config.weight_block_size, or 128 x 128.</summary>
    private static (int Rows, int Columns) BlockSize(string configPath)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(configPath));
            if (doc.RootElement.ValueKind == JsonValueKind.Object
                && doc.RootElement.TryGetProperty("quantization_config", out var q) && q.ValueKind == JsonValueKind.Object
                && q.TryGetProperty("weight_block_size", out var b) && b.ValueKind != JsonValueKind.Null)
            {
                if (b.ValueKind != JsonValueKind.Array || b.GetArrayLength() != 2 || b.EnumerateArray().Any(x => x.ValueKind != JsonValueKind.Number || !x.TryGetInt32(out int v) || v <= 0))
                    throw new HuggingFaceFormatException(configPath, $"quantization_config.weight_block_size must be two positive integers, got {b.GetRawText()}");
                return (b[0].GetInt32(), b[1].GetInt32());
            }
        }
        catch (JsonException e)
        {
            throw new HuggingFaceFormatException(configPath, $"not valid JSON ({e.Message})", e);
        }
        catch (IOException) { }
        return (128, 128);
    }
}
