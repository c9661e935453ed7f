using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Distributed.Mesh;
using Tessera.Models.Safetensors;
using Tessera.Nn.Parallel;
using Tessera.Training.Parallel;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Quantization;

/// <summary>
/// Pre-quantized FP8 checkpoints (F8_E4M3 weights with their scale tensors) written from debug models with random weights
/// (seed logged) and loaded: per-channel and per-tensor scales (compressed-tensors' form, with input_scale tensors that are
/// ignored) keep their codes bit for bit under <see cref="WeightQuantization.Fp8"/>; block scales (transformers' "fp8" with
/// weight_block_size) are dequantized and re-quantized per row; without quantization every weight is code x scale in F32.
/// </summary>
public sealed class PreQuantizedFp8CheckpointTests : IDisposable
{
    public enum Scheme { PerChannel, PerTensor, Block }

    private readonly CpuBackend _cpu;
    private readonly SavedDebugModels _models;

    public PreQuantizedFp8CheckpointTests()
    {
        _cpu = new CpuBackend(2);
        _models = new SavedDebugModels(_cpu, "tessera-fp8ckpt-");
    }

    public void Dispose() => _models.Dispose();

    // Block sizes that make partial blocks on the debug models' (16 | 32 | 64, 32 | 64) weights: rows 12, 12, 8 and columns 24, 8.
    private static readonly int[] Block = [12, 24];

    /// <summary>What was written: each FP8 tensor's codes and its scale a row (block: null), and every tensor's F32 values.</summary>
    private sealed record Written(string Directory, TransformerConfig Config, Dictionary<string, (byte[] Codes, float[]? RowScales)> Fp8,
        Dictionary<string, HostTensor> Values);

    private static bool IsLinear(string name) =>
        name.EndsWith("proj.weight", StringComparison.Ordinal) || name.EndsWith("c_attn.weight", StringComparison.Ordinal)
        || name.EndsWith("c_fc.weight", StringComparison.Ordinal);

    /// <summary>
    /// Saves <paramref name="preset"/> in F32, then rewrites its linear weights as E4M3 codes with scales of <paramref name="scheme"/>
    /// (per channel and per tensor: max|w| / 300, so that the codes are not what re-quantizing per row, max / 448, would give).
    /// <paramref name="edit"/> may change the tensors written (name, dtype, shape, bytes) for the error cases.
    /// </summary>
    private Written WriteFp8(string preset, Scheme scheme, bool inputScales = false,
        Func<List<(string Name, DType DType, Shape Shape, byte[] Data)>, List<(string, DType, Shape, byte[])>>? edit = null)
    {
        var (source, original) = _models.Save(preset, DType.F32);
        string dir = source + "-fp8-" + scheme + (edit is null ? "" : "-edited");
        Directory.CreateDirectory(dir);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!.AsObject();
        config["quantization_config"] = scheme == Scheme.Block
            ? new JsonObject { ["quant_method"] = "fp8", ["activation_scheme"] = "dynamic", ["weight_block_size"] = new JsonArray(Block[0], Block[1]) }
            : new JsonObject { ["quant_method"] = "compressed-tensors" };
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        var fp8 = new Dictionary<string, (byte[], float[]?)>(StringComparer.Ordinal);
        var values = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        var tensors = new List<(string Name, DType DType, Shape Shape, byte[] Data)>();
        using (var file = SafetensorsFile.Open(Path.Combine(source, "model.safetensors")))
        {
            foreach (var t in file.Tensors)
            {
                var w = file.ReadAsSingle(t.Name);
                if (!IsLinear(t.Name))
                {
                    tensors.Add((t.Name, DType.F32, t.Shape, MemoryMarshal.AsBytes(w.AsSpan()).ToArray()));
                    values[t.Name] = new HostTensor(t.Shape, w);
                    continue;
                }
                int n = t.Shape[0], k = t.Shape[1];
                int br = (n + Block[0] - 1) / Block[0], bc = (k + Block[1] - 1) / Block[1];
                float[] scales;
                Shape scaleShape;
                Func<int, int, float> scaleAt;
                switch (scheme)
                {
                    case Scheme.PerChannel:
                        scales = Enumerable.Range(0, n).Select(r => MaxAbs(w, r * k, 1, k, k) / 300f).ToArray();
                        scaleShape = new Shape(n, 1);
                        scaleAt = (r, _) => scales[r];
                        break;
                    case Scheme.PerTensor:
                        scales = [MaxAbs(w, 0, n, k, k) / 300f];
                        scaleShape = new Shape();
                        scaleAt = (_, _) => scales[0];
                        break;
                    default:
                        scales = new float[br * bc];
                        for (int i = 0; i < br; i++)
                            for (int j = 0; j < bc; j++)
                                scales[i * bc + j] = MaxAbs(w, i * Block[0] * k + j * Block[1], Math.Min(Block[0], n - i * Block[0]), Math.Min(Block[1], k - j * Block[1]), k) / 448f;
                        scaleShape = new Shape(br, bc);
                        scaleAt = (r, c) => scales[r / Block[0] * bc + c / Block[1]];
                        break;
                }
                var codes = new byte[w.Length];
                var dequantized = new float[w.Length];
                for (int r = 0; r < n; r++)
                    for (int c = 0; c < k; c++)
                    {
                        int i = r * k + c;
                        codes[i] = Float8E4M3.FromSingle(w[i] / scaleAt(r, c));
                        dequantized[i] = Float8E4M3.ToSingle(codes[i]) * scaleAt(r, c);
                    }
                tensors.Add((t.Name, DType.F8E4M3, t.Shape, codes));
                tensors.Add((t.Name + (scheme == Scheme.Block ? "_scale_inv" : "_scale"), DType.F32, scaleShape, MemoryMarshal.AsBytes(scales.AsSpan()).ToArray()));
                if (inputScales)
                    tensors.Add((t.Name[..^".weight".Length] + ".input_scale", DType.F32, new Shape(), BitConverter.GetBytes(0.02f)));
                fp8[t.Name] = (codes, scheme == Scheme.Block ? null : Enumerable.Range(0, n).Select(r => scaleAt(r, 0)).ToArray());
                values[t.Name] = new HostTensor(t.Shape, dequantized);
            }
        }
        var writer = new SafetensorsWriter();
        writer.Metadata["format"] = "pt";
        foreach (var (name, dtype, shape, data) in edit is null ? tensors : edit(tensors).Select(x => (x.Item1, x.Item2, x.Item3, x.Item4)).ToList())
            writer.Add(name, dtype, shape, data);
        writer.Write(Path.Combine(dir, "model.safetensors"));
        return new Written(dir, original.Config, fp8, values);
    }

    private static float MaxAbs(float[] w, int start, int rows, int columns, int stride)
    {
        float max = 0;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < columns; c++) max = Math.Max(max, Math.Abs(w[start + r * stride + c]));
        return max;
    }

    private static float[] Values(CpuBackend cpu, Tessera.Nn.Parameter p) =>
        p.ReadMasterOrValue(t => Array.ConvertAll(TestTensors.ToDoubles(cpu, t), v => (float)v));

    [Theory]
    [InlineData("llama-debug", Scheme.PerChannel)]
    [InlineData("llama-debug", Scheme.PerTensor)]
    [InlineData("llama-debug", Scheme.Block)]
    [InlineData("gpt2-debug", Scheme.PerChannel)]
    [InlineData("gpt2-debug", Scheme.Block)]
    public void WithoutQuantizationEveryWeightIsCodeTimesScale(string preset, Scheme scheme)
    {
        var written = WriteFp8(preset, scheme, inputScales: scheme == Scheme.PerChannel);
        var model = PretrainedModel.Load(written.Directory, _cpu, DType.F32);
        var expected = HuggingFaceWeightMap.For(model.Config).ToCanonical(written.Values);
        // Exact: the loader's F32 product of the code's value and its scale is the one computed here.
        foreach (var p in model.Parameters.Parameters)
            Assert.True(expected[p.Name].Data.AsSpan().SequenceEqual(Values(_cpu, p)), $"{p.Name} differs from code x scale");
    }

    [Theory]
    [InlineData(Scheme.PerChannel)]
    [InlineData(Scheme.PerTensor)]
    public void Fp8KeepsTheCodesBitForBitAndBroadcastsTheScalesToRows(Scheme scheme)
    {
        var written = WriteFp8("llama-debug", scheme, inputScales: true);
        var model = PretrainedModel.Load(written.Directory, _cpu, DType.F32, quantization: WeightQuantization.Fp8);
        int count = 0;
        foreach (var entry in HuggingFaceWeightMap.For(model.Config).Entries)
        {
            if (!entry.Sources.All(s => written.Fp8.ContainsKey(s.Name))) continue;
            var q = model.Layout[entry.Canonical].Quantized!;
            Assert.True(q.IsFp8, entry.Canonical);
            var codes = entry.Sources.SelectMany(s => written.Fp8[s.Name].Codes).ToArray();
            var scales = entry.Sources.SelectMany(s => written.Fp8[s.Name].RowScales!).ToArray();
            Assert.Equal(codes, _cpu.ToArray<byte>(q.Values));
            Assert.Equal(scales, _cpu.ToArray<float>(q.Scales));
            count++;
        }
        Assert.Equal(2 * 5, count);   // a layer's q/k/v (stacked into one), o, gate, up and down
        // The load log's line: seven F8_E4M3 weights a layer, and the input scales ignored.
        string note = PretrainedModel.WeightsNote(written.Directory)!;
        Assert.Contains("14 F8_E4M3 weights (14 " + (scheme == Scheme.PerChannel ? "per-channel" : "per-tensor"), note);
        Assert.Contains("14 input_scale tensors read and ignored", note);
    }

    [Fact]
    public void BlockScalesAreRequantizedPerRowAsTheirDequantizedValuesWouldBe()
    {
        var written = WriteFp8("llama-debug", Scheme.Block);
        var fp8 = PretrainedModel.Load(written.Directory, _cpu, DType.F32, quantization: WeightQuantization.Fp8);
        // The same values as a float checkpoint, quantized as they load: the block checkpoint must give the same model exactly.
        string floatDir = written.Directory + "-dequantized";
        var map = HuggingFaceWeightMap.For(written.Config);
        HuggingFaceModelDirectory.Export(floatDir, written.Config, map.ToCanonical(written.Values));
        var reference = PretrainedModel.Load(floatDir, _cpu, DType.F32, quantization: WeightQuantization.Fp8);
        foreach (var p in fp8.Layout.Parameters)
        {
            var r = reference.Layout[p.Name];
            if (p.Quantized is { } q)
            {
                Assert.Equal(_cpu.ToArray<byte>(r.Quantized!.Values), _cpu.ToArray<byte>(q.Values));
                Assert.Equal(_cpu.ToArray<float>(r.Quantized!.Scales), _cpu.ToArray<float>(q.Scales));
            }
            else Assert.Equal(Values(_cpu, r), Values(_cpu, p));
        }
        var tokens = _models.Tokens(written.Config, 2, 7);
        Assert.Equal(_models.Logits(reference, tokens), _models.Logits(fp8, tokens));
        // How far FP8 moves a model's logits is Fp8QuantizedModelTests' to bound; here the block checkpoint must only be the
        // model its dequantized values make, which the two equalities above establish (a misplaced block scale would change
        // both sides alike: WithoutQuantizationEveryWeightIsCodeTimesScale checks the values themselves).
    }

    [Fact]
    public void Int8QuantizesTheDequantizedValuesAsAFloatCheckpointOfThem()
    {
        var written = WriteFp8("llama-debug", Scheme.Block);
        string floatDir = written.Directory + "-dequantized";
        HuggingFaceModelDirectory.Export(floatDir, written.Config, HuggingFaceWeightMap.For(written.Config).ToCanonical(written.Values));
        var int8 = PretrainedModel.Load(written.Directory, _cpu, DType.F32, quantization: WeightQuantization.Int8);
        var reference = PretrainedModel.Load(floatDir, _cpu, DType.F32, quantization: WeightQuantization.Int8);
        foreach (var p in int8.Layout.Parameters)
            if (p.Quantized is { } q)
            {
                Assert.False(q.IsFp8);
                Assert.Equal(_cpu.ToArray<sbyte>(reference.Layout[p.Name].Quantized!.Values), _cpu.ToArray<sbyte>(q.Values));
                Assert.Equal(_cpu.ToArray<float>(reference.Layout[p.Name].Quantized!.Scales), _cpu.ToArray<float>(q.Scales));
            }
    }

    [Theory]
    [InlineData(Scheme.PerChannel)]
    [InlineData(Scheme.Block)]
    public void ATensorParallelRankReadsTheSliceOfTheDequantizedWeights(Scheme scheme)
    {
        var written = WriteFp8("llama-debug", scheme, inputScales: true);
        var config = written.Config;
        ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var model = new Model(config, ctx.Backend, DType.F32,
                tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory));
            using var hf = HuggingFaceModelDirectory.Open(written.Directory, config);
            hf.LoadInto(model.Layout.Parameters, ctx.Backend);
            var whole = HuggingFaceWeightMap.For(config).ToCanonical(written.Values);
            foreach (var p in model.Layout.Parameters)
                Assert.True(p.LocalValues(whole[p.Name].Data).AsSpan().SequenceEqual(ctx.Backend.ToArray<float>(p.Value)),
                    $"rank {ctx.Rank}: '{p.Name}' ({p.Placement}) is not the slice of code x scale");
            return 0;
        }, TimeSpan.FromSeconds(60));
    }

    [Fact]
    public void AnFp8WeightWithoutAScaleIsRefusedNamingIt()
    {
        var written = WriteFp8("llama-debug", Scheme.PerChannel, edit: ts => ts.Where(t => t.Name != "model.layers.1.mlp.up_proj.weight_scale").Select(t => (t.Name, t.DType, t.Shape, t.Data)).ToList());
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(written.Directory, _cpu, DType.F32));
        Assert.Contains("'model.layers.1.mlp.up_proj.weight'", e.Message);
        Assert.Contains("no scale tensor", e.Message);
    }

    [Fact]
    public void AScaleOfAnUnexpectedShapeIsRefusedNamingBothTensors()
    {
        var written = WriteFp8("llama-debug", Scheme.PerChannel, edit: ts => ts.Select(t => t.Name == "model.layers.0.self_attn.o_proj.weight_scale"
            ? (t.Name, t.DType, new Shape(2, t.Shape[0] / 2 + 1), new byte[(t.Shape[0] / 2 + 1) * 2 * 4]) : (t.Name, t.DType, t.Shape, t.Data)).ToList());
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(written.Directory, _cpu, DType.F32, quantization: WeightQuantization.Fp8));
        Assert.Contains("'model.layers.0.self_attn.o_proj.weight_scale'", e.Message);
        Assert.Contains("'model.layers.0.self_attn.o_proj.weight'", e.Message);
        Assert.Contains("(2, 17)", e.Message);
        Assert.Contains("(32, 32)", e.Message);
    }

    [Fact]
    public void F8E5M2IsRefusedSayingSo()
    {
        string path = Path.Combine(_models.Folder, "e5m2.safetensors");
        var header = System.Text.Encoding.UTF8.GetBytes("{\"w\":{\"dtype\":\"F8_E5M2\",\"shape\":[2],\"data_offsets\":[0,2]}}");
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((ulong)header.Length), .. header, 0, 0]);
        var e = Assert.Throws<SafetensorsFormatException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains("'w'", e.Message);
        Assert.Contains("F8_E5M2", e.Message);
        Assert.Contains("not supported", e.Message);
    }
}
