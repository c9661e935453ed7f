using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Models.Quantization;

/// <summary>
/// 4-bit GPTQ and AWQ checkpoints written by the test from a llama-debug model with random weights (seed logged): each linear
/// weight is quantized here (round to nearest, F16 scales) and its integers packed by plain loops written from the formats'
/// public descriptions, independent of the loader: GPTQ's qweight (K / 8, N) with input 8r + j in bits 4j, qzeros (G, N / 8)
/// stored as z - 1 (classic "gptq" checkpoint_format) or z ("gptq_v2"), g_idx = k / group; AWQ's qweight (K, N / 8) and
/// qzeros with output 8c + i' in nibble i where [0, 2, 4, 6, 1, 3, 5, 7][i] = i'. The oracle is the same model holding the
/// dequantized weights scale (q - z) in F64 (a float checkpoint of them): loaded with --quantize int4 the checkpoint keeps its
/// integers exactly and gives that model's logits (F64, 1e-12: only the sums' order differs); loaded without quantization
/// every weight is exactly scale (q - z).
/// </summary>
public sealed class Int4CheckpointTests : IDisposable
{
    public enum Method { Gptq, GptqV2, Awq }

    private static readonly int[] AwqOrder = [0, 2, 4, 6, 1, 3, 5, 7];

    private readonly CpuBackend _cpu;
    private readonly SavedDebugModels _models;

    public Int4CheckpointTests()
    {
        _cpu = new CpuBackend(2);
        _models = new SavedDebugModels(_cpu, "tessera-int4ckpt-");
    }

    public void Dispose() => _models.Dispose();

    /// <summary>What was written: the directory, the config and every tensor's value (the 4-bit ones dequantized) by Hugging Face name.</summary>
    private sealed record Written(string Directory, TransformerConfig Config, Dictionary<string, HostTensor> Values);

    /// <summary>
    /// Saves llama-debug in F32 and rewrites its seven linear weights a layer in <paramref name="method"/>'s packing, groups of
    /// <paramref name="group"/> (-1: a row). <paramref name="nibble"/> (tensor index, n, k) gives q instead of rounding to nearest
    /// (then scales and zeros are drawn); <paramref name="edit"/> changes the tensors written, for the refusals.
    /// </summary>
    private Written Write(Method method, int group, bool sym = false, Func<int, int, int, int>? nibble = null,
        Func<List<(string Name, DType DType, Shape Shape, byte[] Data)>, List<(string Name, DType DType, Shape Shape, byte[] Data)>>? edit = null,
        Action<JsonObject>? config = null, Func<TransformerConfig, TransformerConfig>? change = null, Func<int, int, int>? groupOf = null)
    {
        var (source, original) = _models.Save("llama-debug", DType.F32, change);
        string dir = $"{source}-{method}-{group}-{(sym ? "sym" : "asym")}-{(nibble is null ? "rtn" : "pattern")}-{Guid.NewGuid():N}";
        Directory.CreateDirectory(dir);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "config.json")))!.AsObject();
        json["quantization_config"] = method == Method.Awq
            ? new JsonObject { ["quant_method"] = "awq", ["bits"] = 4, ["group_size"] = group, ["version"] = "gemm", ["zero_point"] = true }
            : new JsonObject
            {
                ["quant_method"] = "gptq", ["bits"] = 4, ["group_size"] = group, ["sym"] = sym, ["desc_act"] = false,
                ["checkpoint_format"] = method == Method.Gptq ? "gptq" : "gptq_v2",
            };
        config?.Invoke(json);
        File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
        var rng = new Random(17);
        var values = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        var tensors = new List<(string Name, DType DType, Shape Shape, byte[] Data)>();
        int index = 0;
        using (var file = SafetensorsFile.Open(Path.Combine(source, "model.safetensors")))
        {
            foreach (var t in file.Tensors)
            {
                var w = file.ReadAsSingle(t.Name);
                if (!t.Name.EndsWith("proj.weight", StringComparison.Ordinal))
                {
                    tensors.Add((t.Name, DType.F32, t.Shape, Bytes(w)));
                    values[t.Name] = new HostTensor(t.Shape, w);
                    continue;
                }
                int n = t.Shape[0], k = t.Shape[1], g = group == -1 ? k : group, groups = (k + g - 1) / g;
                // Each input's group: k / g, or (act order) groupOf(k, groups), GPTQ's g_idx.
                var gi = Enumerable.Range(0, k).Select(c => groupOf?.Invoke(c, groups) ?? c / g).ToArray();
                var q = new int[n, k];
                var z = new int[groups, n];
                var s = new Half[groups, n];
                for (int r = 0; r < n; r++)
                    for (int j = 0; j < groups; j++)
                    {
                        // Round to nearest over the group's range stretched to hold 0 (symmetric: zero 8, scale max|w| / 7.5).
                        float lo = 0, hi = 0;
                        for (int c = 0; c < k; c++) if (gi[c] == j) { lo = Math.Min(lo, w[r * k + c]); hi = Math.Max(hi, w[r * k + c]); }
                        float scale = sym ? Math.Max(-lo, hi) / 7.5f : (hi - lo) / 15f;
                        if (nibble is not null) scale = 0.01f + 0.001f * rng.Next(20);
                        s[j, r] = (Half)Math.Max(scale, 1e-3f);
                        z[j, r] = sym ? 8 : nibble is not null ? rng.Next(16) : Math.Clamp((int)Math.Round(-lo / (float)s[j, r]), 0, 15);
                        for (int c = 0; c < k; c++)
                            if (gi[c] == j) q[r, c] = nibble?.Invoke(index, r, c) ?? Math.Clamp((int)Math.Round(w[r * k + c] / (float)s[j, r]) + z[j, r], 0, 15);
                    }
                var dequantized = new float[n * k];
                for (int r = 0; r < n; r++)
                    for (int c = 0; c < k; c++) dequantized[r * k + c] = (float)((double)(float)s[gi[c], r] * (q[r, c] - z[gi[c], r]));
                values[t.Name] = new HostTensor(t.Shape, dequantized);
                string prefix = t.Name[..^".weight".Length];
                int[] qweight, qzeros = new int[groups * (n / 8)];
                if (method == Method.Awq)
                {
                    qweight = new int[k * (n / 8)];                                  // (K, N / 8)
                    for (int c = 0; c < k; c++)
                        for (int col = 0; col < n / 8; col++)
                            for (int i = 0; i < 8; i++) qweight[c * (n / 8) + col] |= q[col * 8 + AwqOrder[i], c] << (4 * i);
                    for (int j = 0; j < groups; j++)
                        for (int col = 0; col < n / 8; col++)
                            for (int i = 0; i < 8; i++) qzeros[j * (n / 8) + col] |= z[j, col * 8 + AwqOrder[i]] << (4 * i);
                    tensors.Add((prefix + ".qweight", DType.I32, new Shape(k, n / 8), Bytes(qweight)));
                }
                else
                {
                    qweight = new int[k / 8 * n];                                    // (K / 8, N)
                    for (int row = 0; row < k / 8; row++)
                        for (int c = 0; c < n; c++)
                            for (int i = 0; i < 8; i++) qweight[row * n + c] |= q[c, row * 8 + i] << (4 * i);
                    int offset = method == Method.Gptq ? 1 : 0;                      // the classic format stores z - 1
                    for (int j = 0; j < groups; j++)
                        for (int col = 0; col < n / 8; col++)
                            for (int i = 0; i < 8; i++) qzeros[j * (n / 8) + col] |= ((z[j, col * 8 + i] - offset) & 0xF) << (4 * i);
                    tensors.Add((prefix + ".qweight", DType.I32, new Shape(k / 8, n), Bytes(qweight)));
                    tensors.Add((prefix + ".g_idx", DType.I32, new Shape(k), Bytes(gi)));
                }
                tensors.Add((prefix + ".qzeros", DType.I32, new Shape(groups, n / 8), Bytes(qzeros)));
                var scales = new Half[groups * n];
                for (int j = 0; j < groups; j++) for (int r = 0; r < n; r++) scales[j * n + r] = s[j, r];
                tensors.Add((prefix + ".scales", DType.F16, new Shape(groups, n), MemoryMarshal.AsBytes(scales.AsSpan()).ToArray()));
                index++;
            }
        }
        var writer = new SafetensorsWriter();
        writer.Metadata["format"] = "pt";
        foreach (var (name, dtype, shape, data) in edit is null ? tensors : edit(tensors)) writer.Add(name, dtype, shape, data);
        writer.Write(Path.Combine(dir, "model.safetensors"));
        return new Written(dir, original.Config, values);
    }

    private static byte[] Bytes<T>(T[] data) where T : unmanaged => MemoryMarshal.AsBytes(data.AsSpan()).ToArray();

    /// <summary>The float checkpoint of the written values: the oracle model's weights.</summary>
    private string Dequantized(Written written)
    {
        string dir = written.Directory + "-dequantized";
        HuggingFaceModelDirectory.Export(dir, written.Config, HuggingFaceWeightMap.For(written.Config).ToCanonical(written.Values));
        return dir;
    }

    [Theory]
    [InlineData(Method.Gptq, 16, false)]
    [InlineData(Method.Gptq, 32, true)]      // symmetric: stored zeros 7, which the offset makes 8
    [InlineData(Method.GptqV2, 16, false)]
    [InlineData(Method.Gptq, -1, false)]     // per channel
    [InlineData(Method.Awq, 16, false)]
    [InlineData(Method.Awq, 32, false)]
    [InlineData(Method.Awq, -1, false)]
    public void Int4KeepsTheCheckpointsIntegersAndGivesTheLogitsOfItsDequantizedWeights(Method method, int group, bool sym)
    {
        var written = Write(method, group, sym);
        var int4 = PretrainedModel.Load(written.Directory, _cpu, DType.F64, quantization: WeightQuantization.Int4);
        var reference = PretrainedModel.Load(Dequantized(written), _cpu, DType.F64);
        // Exactly the parameters made of 4-bit tensors are int4; the embeddings, the head and the norms stay in F64.
        var fourBit = HuggingFaceWeightMap.For(written.Config).Entries
            .Where(e => e.Sources.All(s => s.Name.EndsWith("proj.weight", StringComparison.Ordinal))).Select(e => e.Canonical).ToHashSet();
        int quantized = 0;
        foreach (var p in int4.Layout.Parameters)
        {
            Assert.Equal(fourBit.Contains(p.Name), p.Quantized is not null);
            if (p.Quantized is not { } q) continue;
            Assert.True(q.IsInt4, p.Name);
            Assert.Equal(group == -1 ? p.Shape[1] : group, q.GroupSize);
            // What the int4 weight stands for, dequantized by the test's own loop over the packed layout, is the oracle's weight.
            var expected = reference.Parameters[p.Name].ReadMasterOrValue(t => TestTensors.ToDoubles(_cpu, t));
            var standsFor = Int4Reference.StandsFor(q, _cpu);
            for (int i = 0; i < standsFor.Length; i++)
                Assert.True(expected[i] == standsFor[i], $"{method} {p.Name} [{i / q.Columns}, {i % q.Columns}]: {standsFor[i]} against {expected[i]}");
            quantized++;
        }
        Assert.Equal(fourBit.Count, quantized);
        Assert.True(quantized >= 2 * 4, $"{quantized} int4 parameters");
        var tokens = _models.Tokens(written.Config, 2, 9);
        // The same weights in F64; the dequantized tiles' GEMM against the reference's: only the sums' order differs.
        NumericAssert.Close(_models.Logits(reference, tokens), _models.Logits(int4, tokens), 1e-12, $"{method} group {group} int4 logits");
        Assert.Contains($"pre-quantized {(method == Method.Awq ? "AWQ" : "GPTQ")} checkpoint: 14 4-bit weights", PretrainedModel.WeightsNote(written.Directory));
    }

    [Theory]
    [InlineData(Method.Gptq)]
    [InlineData(Method.Awq)]
    public void WithoutQuantizationEveryWeightIsScaleTimesNibbleMinusZero(Method method)
    {
        var written = Write(method, 16);
        var model = PretrainedModel.Load(written.Directory, _cpu, DType.F32);
        var expected = HuggingFaceWeightMap.For(model.Config).ToCanonical(written.Values);
        foreach (var p in model.Parameters.Parameters)
            Assert.True(expected[p.Name].Data.AsSpan().SequenceEqual(model.Parameters[p.Name].ReadMasterOrValue(t => _cpu.ToArray<float>(t))),
                $"{method}: {p.Name} differs from scale (q - z)");
    }

    /// <summary>
    /// The nibble orders pinned: q depends on the position inside its word (GPTQ: the input's k mod 8; AWQ: the output's n mod 8)
    /// and on the tensor, so a loader that reads AWQ in GPTQ's order, or the reverse, or drops GPTQ's zero offset, gets other
    /// weights than scale (q - z) (the zeros drawn, so every zero nibble position differs too).
    /// </summary>
    [Theory]
    [InlineData(Method.Gptq)]
    [InlineData(Method.GptqV2)]
    [InlineData(Method.Awq)]
    public void TheNibbleOrdersArePinnedByWeightsThatDifferPerPosition(Method method)
    {
        var written = Write(method, 16, nibble: (t, n, k) => method == Method.Awq ? (n % 8 * 2 + t + k) % 16 : (k % 8 * 2 + t + n) % 16);
        var model = PretrainedModel.Load(written.Directory, _cpu, DType.F64, quantization: WeightQuantization.Int4);
        var expected = HuggingFaceWeightMap.For(model.Config).ToCanonical(written.Values);
        foreach (var p in model.Layout.Parameters)
            if (p.Quantized is not null)
                Assert.True(expected[p.Name].Data.Select(v => (double)v).SequenceEqual(p.ReadMasterOrValue(t => TestTensors.ToDoubles(_cpu, t))),
                    $"{method}: {p.Name} is not scale (q - z) of the pattern");
    }

    /// <summary>
    /// An act-order checkpoint (desc_act true: g_idx puts input k in group k mod G, a permutation of the contiguous groups, as
    /// GPTQ's activation order does) loads dequantized: every weight is exactly scale[g_idx[k]] (q - z[g_idx[k]]) (the test's
    /// own packer and F64 dequantization), and the model gives the logits of those float weights (F64, 1e-12: the same weights,
    /// only the sums' order differs). Kept 4-bit (--quantize int4) each 4-bit weight holds its inputs sorted by group with the
    /// order beside it: what it stands for (the test's own loop over the packed words and the order) is the same weights bit for
    /// bit, the backend's dequantization gives them in the inputs' order, the logits are the dequantized model's (F64, 1e-12),
    /// and the layers that read one input (q, k, v stacked; gate and up) share one order on the backend.
    /// </summary>
    [Theory]
    [InlineData(Method.Gptq)]
    [InlineData(Method.GptqV2)]
    public void ActOrderCheckpointsLoadDequantizedOrKeptAsInt4WithTheirInputsReordered(Method method)
    {
        var written = Write(method, 16, config: j => j["quantization_config"]!["desc_act"] = true, groupOf: (k, groups) => k % groups);
        var model = PretrainedModel.Load(written.Directory, _cpu, DType.F64);
        var expected = HuggingFaceWeightMap.For(model.Config).ToCanonical(written.Values);
        foreach (var p in model.Parameters.Parameters)
            Assert.True(expected[p.Name].Data.Select(v => (double)v).SequenceEqual(model.Parameters[p.Name].ReadMasterOrValue(t => TestTensors.ToDoubles(_cpu, t))),
                $"{method} act order: {p.Name} differs from scale[g_idx] (q - z[g_idx])");
        var tokens = _models.Tokens(written.Config, 2, 9);
        var reference = _models.Logits(PretrainedModel.Load(Dequantized(written), _cpu, DType.F64), tokens);
        NumericAssert.Close(reference, _models.Logits(model, tokens), 1e-12, $"{method} act-order logits");

        var int4 = PretrainedModel.Load(written.Directory, _cpu, DType.F64, quantization: WeightQuantization.Int4);
        int ordered = 0;
        foreach (var p in int4.Layout.Parameters)
        {
            if (p.Quantized is not { } q) continue;
            Assert.NotNull(q.InputOrder);
            var order = _cpu.ToArray<int>(q.InputOrder!);
            Assert.False(order.SequenceEqual(Enumerable.Range(0, q.Columns)), $"{p.Name}: the act-order inputs kept their order");
            var want = expected[p.Name].Data.Select(v => (double)v).ToArray();
            Assert.True(want.SequenceEqual(Int4Reference.StandsFor(q, _cpu)), $"{method} {p.Name}: the reordered int4 weight is not scale[g_idx] (q - z[g_idx])");
            Assert.True(want.SequenceEqual(p.ReadMasterOrValue(t => TestTensors.ToDoubles(_cpu, t))), $"{method} {p.Name}: Dequantize is not in the inputs' order");
            ordered++;
        }
        Assert.Equal(5 * written.Config.Layers, ordered);         // qkv (q, k, v stacked), the attention output, gate, up, down
        QuantizedWeight Held(string name) => int4.Layout.Parameters.First(p => p.Name == name).Quantized!;
        Assert.Same(Held("blocks.0.mlp.gate.weight").InputOrder, Held("blocks.0.mlp.up.weight").InputOrder);
        Assert.Same(Held("blocks.0.attn.qkv.weight").InputOrder, Held("blocks.0.mlp.gate.weight").InputOrder);   // one order: both read C = 32 inputs, k mod 2
        NumericAssert.Close(reference, _models.Logits(int4, tokens), 1e-12, $"{method} act-order int4 logits");
        Assert.Contains("14 4-bit weights", PretrainedModel.WeightsNote(written.Directory));
        Assert.Contains("14 in act order", PretrainedModel.WeightsNote(written.Directory));
    }

    /// <summary>
    /// A float weight written whole into an act-order int4 parameter (<see cref="Tessera.Nn.Parameter.WriteMasterOrValue"/>, as a
    /// merge or a loader does) is quantized in the inputs' order and the order is dropped: reading it back gives the host
    /// quantizer's round to nearest of the written values in groups of the parameter's size, bit for bit (had the order stayed,
    /// the read-back columns would be permuted).
    /// </summary>
    [Fact]
    public void AWeightWrittenWholeIntoAnActOrderParameterDropsItsOrder()
    {
        var written = Write(Method.Gptq, 16, config: j => j["quantization_config"]!["desc_act"] = true, groupOf: (k, groups) => k % groups);
        var int4 = PretrainedModel.Load(written.Directory, _cpu, DType.F32, quantization: WeightQuantization.Int4);
        var p = int4.Layout.Parameters.First(x => x.Name == "blocks.0.mlp.proj.weight");
        var q = p.Quantized!;
        Assert.NotNull(q.InputOrder);
        int n = q.Rows, k = q.Columns;
        var rng = TestRandom.Create();
        var values = Enumerable.Range(0, n * k).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        p.WriteMasterOrValue(t => _cpu.CopyFromHost<float>(values, t));
        Assert.Null(p.Quantized!.InputOrder);
        var packed = new int[n * k / 8];
        var scales = new float[n * (k / q.GroupSize)];
        var zeros = new sbyte[scales.Length];
        Int4Quantization.QuantizeRows(values, n, k, q.GroupSize, packed, scales, zeros);
        var expected = Int4Quantization.Dequantize(packed, scales, zeros, n, k, q.GroupSize).Select(v => (float)v).ToArray();
        Assert.True(expected.AsSpan().SequenceEqual(p.ReadMasterOrValue(t => _cpu.ToArray<float>(t))), "the written weight does not read back as its round to nearest in the inputs' order");
    }

    /// <summary>
    /// Kept 4-bit, an act-order weight whose g_idx gives a group more inputs than the group size (no layout of contiguous groups
    /// holds it) is refused, naming it and saying why; it still loads dequantized.
    /// </summary>
    [Fact]
    public void AnActOrderWeightWithUnevenGroupsIsRefusedAsInt4NamingIt()
    {
        // Group 0 holds inputs 0 .. 16 (17 of them) of the down projection, group 1 one fewer.
        var uneven = Write(Method.Gptq, 16, config: j => j["quantization_config"]!["desc_act"] = true,
            edit: ts => ts.Select(t => t.Name == "model.layers.1.mlp.down_proj.g_idx"
                ? (t.Name, t.DType, t.Shape, Bytes(Enumerable.Range(0, t.Shape[0]).Select(k => k == 16 ? 0 : k / 16).ToArray())) : t).ToList());
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(uneven.Directory, _cpu, DType.F32, quantization: WeightQuantization.Int4));
        Assert.Contains("'model.layers.1.mlp.down_proj.g_idx'", e.Message);
        Assert.Contains("17 inputs in group 0", e.Message);
        Assert.Contains("without --quantize int4", e.Message);
        _ = PretrainedModel.Load(uneven.Directory, _cpu, DType.F32);
    }

    /// <summary>
    /// Kept 4-bit, act-order weights stacked into one parameter (q, k and v) with different orders are refused, naming the
    /// parameter: one int4 weight holds one order. They still load dequantized.
    /// </summary>
    [Fact]
    public void StackedActOrderWeightsInDifferentOrdersAreRefusedAsInt4NamingTheParameter()
    {
        // k_proj's groups in another permutation than q_proj's and v_proj's.
        var different = Write(Method.Gptq, 16, config: j => j["quantization_config"]!["desc_act"] = true, groupOf: (k, groups) => k % groups,
            edit: ts => ts.Select(t => t.Name == "model.layers.0.self_attn.k_proj.g_idx"
                ? (t.Name, t.DType, t.Shape, Bytes(Enumerable.Range(0, t.Shape[0]).Select(k => k / 16).ToArray())) : t).ToList());
        var n = Assert.Throws<NotSupportedException>(() => PretrainedModel.Load(different.Directory, _cpu, DType.F32, quantization: WeightQuantization.Int4));
        Assert.Contains("'blocks.0.attn.qkv.weight'", n.Message);
        Assert.Contains("different orders", n.Message);
        _ = PretrainedModel.Load(different.Directory, _cpu, DType.F32);
    }

    [Fact]
    public void AGroupIndexOutsideTheGroupsIsRefusedNamingTheTensor()
    {
        var written = Write(Method.Gptq, 16, config: j => j["quantization_config"]!["desc_act"] = true,
            edit: ts => ts.Select(t => t.Name == "model.layers.1.mlp.down_proj.g_idx"
                ? (t.Name, t.DType, t.Shape, Bytes(Enumerable.Range(0, t.Shape[0]).Select(k => k == 5 ? 99 : k / 16).ToArray())) : t).ToList());
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(written.Directory, _cpu, DType.F32));
        Assert.Contains("'model.layers.1.mlp.down_proj.g_idx'", e.Message);
        Assert.Contains("99", e.Message);
    }

    /// <summary>
    /// Tensor-parallel ranks take their slices of the checkpoint's integers, scales and zeros exactly: what the two ranks' int4
    /// weights stand for (the test's own loop), put together, is every weight scale (q - z) bit for bit, and the ranks generate
    /// the greedy tokens of one device's int4 model (F64). Groups of 16 (the attention output's 32 columns split 16 and 16, on
    /// a group boundary; with groups of 32 a rank's half of a group would take the group's scale as exactly) and per channel
    /// (each rank's part of a row keeps the row's scale).
    /// </summary>
    [Theory]
    [InlineData(Method.Gptq, 16)]
    [InlineData(Method.Awq, -1)]
    public void TensorParallelRanksHoldTheirSlicesOfTheCheckpointsIntegers(Method method, int group)
    {
        var written = Write(method, group);
        int[] prompt = [5, 17, 3, 42, 8];
        var options = new Tessera.Inference.GenerationOptions { MaxNewTokens = 12 };
        var one = PretrainedModel.Load(written.Directory, _cpu, DType.F64, quantization: WeightQuantization.Int4);
        var expectedTokens = new Tessera.Inference.TextGenerator(one).Generate(prompt, options).ToList();
        var whole = HuggingFaceWeightMap.For(written.Config).ToCanonical(written.Values);
        var ranks = Tessera.Training.Parallel.ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new Tessera.Distributed.Mesh.DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var tensor = new Tessera.Nn.Parallel.TensorParallelism(groups.Tp, Tessera.Nn.Parallel.ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var model = PretrainedModel.Load(written.Directory, ctx.Backend, DType.F64, tensorParallelism: tensor, quantization: WeightQuantization.Int4);
            var held = new Dictionary<string, double[]>();
            foreach (var p in model.Layout.Parameters)
            {
                if (p.Quantized is not { } q) continue;
                var global = new double[p.GlobalShape.NumElements];
                p.ScatterToGlobal<double>(Int4Reference.StandsFor(q, ctx.Backend), global);
                held[p.Name] = global;
            }
            return (Held: held, Tokens: new Tessera.Inference.TextGenerator(model).Generate(prompt, options).ToList());
        }, TimeSpan.FromSeconds(60));
        Assert.NotEmpty(ranks[0].Held);
        foreach (var name in ranks[0].Held.Keys)
        {
            var sum = new double[ranks[0].Held[name].Length];
            foreach (var r in ranks) for (int i = 0; i < sum.Length; i++) sum[i] += r.Held[name][i];   // disjoint slices
            Assert.True(whole[name].Data.Select(v => (double)v).SequenceEqual(sum), $"{method} {name}: the ranks' int4 slices are not scale (q - z)");
        }
        Assert.Equal(expectedTokens, ranks[0].Tokens);
        Assert.Equal(expectedTokens, ranks[1].Tokens);
    }

    /// <summary>Loads <paramref name="directory"/> with --quantize int4 (F32) on two thread ranks of tensor parallelism: each rank's
    /// NotSupportedException message, or null where it loaded.</summary>
    private static string?[] Int4OnTwoTensorParallelRanks(string directory) =>
        Tessera.Training.Parallel.ParallelTraining.RunThreadRanks<string?>(2, ctx =>
        {
            using var groups = new Tessera.Distributed.Mesh.DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var tensor = new Tessera.Nn.Parallel.TensorParallelism(groups.Tp, Tessera.Nn.Parallel.ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            try
            {
                PretrainedModel.Load(directory, ctx.Backend, DType.F32, tensorParallelism: tensor, quantization: WeightQuantization.Int4);
                return null;
            }
            catch (NotSupportedException e) { return e.Message; }
        }, TimeSpan.FromSeconds(60));

    [Fact]
    public void ASliceOffTheCheckpointsGroupBoundariesIsRefusedNamingTheParameter()
    {
        // An MLP 48 wide in groups of 16: the down projection's rank 1 starts at column 24, inside the checkpoint's second group.
        var written = Write(Method.Gptq, 16, change: c => c with { Hidden = 48 });
        var errors = Int4OnTwoTensorParallelRanks(written.Directory);
        Assert.Null(errors[0]);                 // rank 0's columns 0 .. 23: groups 0 .. 15 and 16 .. 23 lie inside the checkpoint's
        Assert.NotNull(errors[1]);
        Assert.Contains("'blocks.0.mlp.proj.weight'", errors[1]);
        Assert.Contains("groups of 16", errors[1]);
    }

    /// <summary>
    /// An act-order checkpoint kept 4-bit on tensor-parallel ranks: a row-parallel layer (the attention output) would split its
    /// inputs, whose groups are scattered over them, so the load is refused naming the parameter; the column-parallel layers
    /// before it (qkv) split only their rows, which keep the order.
    /// </summary>
    [Fact]
    public void ActOrderWeightsSplitByInputsAcrossTensorParallelRanksAreRefusedNamingTheParameter()
    {
        var written = Write(Method.Gptq, 16, config: j => j["quantization_config"]!["desc_act"] = true, groupOf: (k, groups) => k % groups);
        var errors = Int4OnTwoTensorParallelRanks(written.Directory);
        foreach (var e in errors)
        {
            Assert.NotNull(e);
            Assert.Contains("'blocks.0.attn.proj.weight'", e);
            Assert.Contains("splits an act-order 4-bit weight's inputs", e);
        }
    }

    [Fact]
    public void AMissingTensorIsRefusedNamingIt()
    {
        var written = Write(Method.Awq, 16, edit: ts => ts.Where(t => t.Name != "model.layers.0.self_attn.o_proj.qzeros").ToList());
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(written.Directory, _cpu, DType.F32));
        Assert.Contains("'model.layers.0.self_attn.o_proj.qzeros'", e.Message);
    }

    [Fact]
    public void AScaleTensorOfTheWrongShapeIsRefusedNamingIt()
    {
        var written = Write(Method.Gptq, 16, edit: ts => ts.Select(t => t.Name == "model.layers.0.mlp.up_proj.scales"
            ? (t.Name, t.DType, new Shape(t.Shape[0] + 1, t.Shape[1]), new byte[(t.Shape[0] + 1) * t.Shape[1] * 2]) : t).ToList());
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(written.Directory, _cpu, DType.F32));
        Assert.Contains("'model.layers.0.mlp.up_proj.scales'", e.Message);
        Assert.Contains("(3, 64)", e.Message);
    }

    [Theory]
    [InlineData("bits", "8", "4 bits only")]
    [InlineData("version", "\"gemv\"", "GEMM packing only")]
    [InlineData("checkpoint_format", "\"marlin\"", "'marlin'")]
    public void UnsupportedFormatsAreRefusedSayingWhy(string field, string value, string message)
    {
        var written = Write(field == "version" ? Method.Awq : Method.Gptq, 16,
            config: j => j["quantization_config"]![field] = JsonNode.Parse(value));
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(written.Directory, _cpu, DType.F32));
        Assert.Contains(field, e.Message);
        Assert.Contains(message, e.Message);
    }

    /// <summary>AutoGPTQ's older checkpoints keep their settings in quantize_config.json beside a config.json without quantization_config.</summary>
    [Fact]
    public void AnAutoGptqQuantizeConfigBesideConfigJsonIsRead()
    {
        var written = Write(Method.Gptq, 16, config: j => j.Remove("quantization_config"));
        File.WriteAllText(Path.Combine(written.Directory, "quantize_config.json"),
            """{"bits": 4, "group_size": 16, "desc_act": false, "sym": false, "true_sequential": true, "model_file_base_name": "model"}""");
        var int4 = PretrainedModel.Load(written.Directory, _cpu, DType.F64, quantization: WeightQuantization.Int4);
        var reference = PretrainedModel.Load(Dequantized(written), _cpu, DType.F64);
        var tokens = _models.Tokens(written.Config, 1, 6);
        NumericAssert.Close(_models.Logits(reference, tokens), _models.Logits(int4, tokens), 1e-12, "quantize_config.json");
    }

    /// <summary>Without quantization, a tensor-parallel rank reads its slice of the dequantized weights (int8 or none over a 4-bit checkpoint with --tp).</summary>
    [Fact]
    public void ATensorParallelRankReadsTheSliceOfTheDequantizedWeights()
    {
        var written = Write(Method.Gptq, 16);
        var config = written.Config;
        Tessera.Training.Parallel.ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new Tessera.Distributed.Mesh.DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var model = new Tessera.Models.Transformer(config, ctx.Backend, DType.F32, tensorParallelism:
                new Tessera.Nn.Parallel.TensorParallelism(groups.Tp, Tessera.Nn.Parallel.ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory));
            using var hf = HuggingFaceModelDirectory.Open(written.Directory, config);
            hf.LoadInto(model.Layout.Parameters, ctx.Backend);
            var whole = HuggingFaceWeightMap.For(config).ToCanonical(written.Values);
            foreach (var p in model.Layout.Parameters)
                Assert.True(p.LocalValues(whole[p.Name].Data).AsSpan().SequenceEqual(ctx.Backend.ToArray<float>(p.Value)),
                    $"rank {ctx.Rank}: '{p.Name}' ({p.Placement}) is not the slice of scale (q - z)");
            return 0;
        }, TimeSpan.FromSeconds(60));
    }

    [Fact]
    public void PackedWeightsWithoutAQuantizationConfigAreRefused()
    {
        var written = Write(Method.Gptq, 16, config: j => j.Remove("quantization_config"));
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(written.Directory, _cpu, DType.F32));
        Assert.Contains(".qweight'", e.Message);
        Assert.Contains("quant_method is absent", e.Message);
    }
}
