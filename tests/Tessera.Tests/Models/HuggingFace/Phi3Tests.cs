using System.Text.Json.Nodes;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.HuggingFace;

/// <summary>
/// Phi-3 / Phi-4 (model_type "phi3"): tiny random checkpoints written here as transformers saves them (config.json with
/// Phi3Config's field names; q, k, v fused in self_attn.qkv_proj and gate, up in mlp.gate_up_proj), loaded by Tessera and
/// checked against a reference forward written in this file with plain loops from modeling_phi3's formulas; the export
/// round trip (fused names written back); refusals of what Tessera does not implement, naming the field.
/// </summary>
public sealed class Phi3Tests : IDisposable
{
    // hidden 32, 4 query heads of 8, 2 key/value heads, MLP 48, 2 layers.
    private const int Vocab = 60, Hidden = 32, Heads = 4, KvHeads = 2, HeadDim = 8, Mlp = 48, Layers = 2, Positions = 32;
    private const double Eps = 1e-5, Theta = 10000;

    private readonly CpuBackend _cpu = new(1);
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "tessera-phi3-" + Guid.NewGuid().ToString("N"));

    public Phi3Tests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>What a test varies: the window (0: none) and a tied head.</summary>
    private sealed record Variant(int Window = 0, bool Tied = false);

    private static JsonObject ConfigJson(Variant v) => new()
    {
        ["architectures"] = new JsonArray("Phi3ForCausalLM"),
        ["model_type"] = "phi3",
        ["vocab_size"] = Vocab,
        ["max_position_embeddings"] = Positions,
        ["original_max_position_embeddings"] = Positions,
        ["hidden_size"] = Hidden,
        ["intermediate_size"] = Mlp,
        ["num_hidden_layers"] = Layers,
        ["num_attention_heads"] = Heads,
        ["num_key_value_heads"] = KvHeads,
        ["hidden_act"] = "silu",
        ["rms_norm_eps"] = Eps,
        ["rope_theta"] = Theta,
        ["rope_scaling"] = null,
        ["partial_rotary_factor"] = 1.0,
        ["sliding_window"] = v.Window > 0 ? v.Window : null,
        ["resid_pdrop"] = 0.0,
        ["embd_pdrop"] = 0.0,
        ["attention_dropout"] = 0.0,
        ["attention_bias"] = false,
        ["tie_word_embeddings"] = v.Tied,
        ["pad_token_id"] = 59,
        ["bos_token_id"] = 1,
        ["eos_token_id"] = 2,
        ["initializer_range"] = 0.02,
        ["torch_dtype"] = "float32",
    };

    /// <summary>Hugging Face's tensors of a random Phi-3 in its fused layout (norm weights around 1, the rest O(0.3)).</summary>
    private static Dictionary<string, (int[] Shape, float[] Data)> RandomWeights(int seed, bool tied = false)
    {
        var rng = new Random(seed);
        var w = new Dictionary<string, (int[] Shape, float[] Data)>(StringComparer.Ordinal);
        void Add(string name, bool norm, params int[] shape)
        {
            int n = shape.Aggregate(1, (a, b) => a * b);
            w[name] = (shape, Enumerable.Range(0, n).Select(_ => (float)(norm ? 1 + 0.3 * (rng.NextDouble() * 2 - 1) : 0.3 * (rng.NextDouble() * 2 - 1))).ToArray());
        }
        Add("model.embed_tokens.weight", false, Vocab, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", true, Hidden);
            Add(p + "self_attn.qkv_proj.weight", false, (Heads + 2 * KvHeads) * HeadDim, Hidden);
            Add(p + "self_attn.o_proj.weight", false, Hidden, Heads * HeadDim);
            Add(p + "post_attention_layernorm.weight", true, Hidden);
            Add(p + "mlp.gate_up_proj.weight", false, 2 * Mlp, Hidden);
            Add(p + "mlp.down_proj.weight", false, Hidden, Mlp);
        }
        Add("model.norm.weight", true, Hidden);
        if (!tied) Add("lm_head.weight", false, Vocab, Hidden);
        return w;
    }

    private string WriteCheckpoint(string name, Dictionary<string, (int[] Shape, float[] Data)> weights, JsonObject config)
    {
        var dir = Path.Combine(_dir, name);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString());
        var writer = new SafetensorsWriter();
        foreach (var (n, (shape, data)) in weights) writer.Add(n, new Shape(shape), data);
        writer.Write(Path.Combine(dir, "model.safetensors"));
        return dir;
    }

    // ---- The reference: Phi-3's forward as transformers' modeling_phi3 computes it, in double, with plain loops. ----

    private static double[] RmsNorm(double[] x, float[] w)
    {
        double ms = 0;
        for (int i = 0; i < x.Length; i++) ms += x[i] * x[i];
        double r = 1 / Math.Sqrt(ms / x.Length + Eps);
        var y = new double[x.Length];
        for (int i = 0; i < x.Length; i++) y[i] = x[i] * r * w[i];
        return y;
    }

    /// <summary>Rows [from, from + rows) of W (.., cols) times x.</summary>
    private static double[] MatVec(float[] w, double[] x, int rows, int from = 0)
    {
        int cols = x.Length;
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double s = 0;
            for (int c = 0; c < cols; c++) s += w[(from + r) * cols + c] * x[c];
            y[r] = s;
        }
        return y;
    }

    /// <summary>apply_rotary_pos_emb on head <paramref name="h"/> at position <paramref name="pos"/>: pairs (i, i + D/2), rotate_half.</summary>
    private static void Rope(double[] heads, int h, int pos)
    {
        int half = HeadDim / 2, o = h * HeadDim;
        for (int i = 0; i < half; i++)
        {
            double angle = pos * Math.Pow(Theta, -2.0 * i / HeadDim);
            double cos = Math.Cos(angle), sin = Math.Sin(angle);
            double a = heads[o + i], b = heads[o + i + half];
            heads[o + i] = a * cos - b * sin;
            heads[o + i + half] = b * cos + a * sin;
        }
    }

    /// <summary>Logits (T, V) of one sequence.</summary>
    private static double[][] ReferenceForward(Dictionary<string, (int[] Shape, float[] Data)> w, int[] tokens, Variant variant)
    {
        int t = tokens.Length, qRows = Heads * HeadDim, kvRows = KvHeads * HeadDim;
        var x = tokens.Select(id => w["model.embed_tokens.weight"].Data.Skip(id * Hidden).Take(Hidden).Select(v => (double)v).ToArray()).ToArray();
        for (int l = 0; l < Layers; l++)
        {
            float[] W(string n) => w[$"model.layers.{l}.{n}.weight"].Data;
            var q = new double[t][]; var k = new double[t][]; var v = new double[t][];
            for (int p = 0; p < t; p++)
            {
                var h = RmsNorm(x[p], W("input_layernorm"));
                // qkv_proj's rows: the query heads, then the key heads, then the value heads (modeling_phi3's query_pos split).
                q[p] = MatVec(W("self_attn.qkv_proj"), h, qRows);
                k[p] = MatVec(W("self_attn.qkv_proj"), h, kvRows, qRows);
                v[p] = MatVec(W("self_attn.qkv_proj"), h, kvRows, qRows + kvRows);
                for (int hd = 0; hd < Heads; hd++) Rope(q[p], hd, p);
                for (int hd = 0; hd < KvHeads; hd++) Rope(k[p], hd, p);
            }
            for (int p = 0; p < t; p++)
            {
                // Causal, and with sliding_window W the keys j with p - j < W (transformers' sliding-window mask).
                int first = variant.Window > 0 ? Math.Max(0, p - variant.Window + 1) : 0;
                var att = new double[qRows];
                for (int hd = 0; hd < Heads; hd++)
                {
                    int g = hd / (Heads / KvHeads);
                    var scores = new double[p + 1];
                    for (int j = first; j <= p; j++)
                    {
                        double s = 0;
                        for (int i = 0; i < HeadDim; i++) s += q[p][hd * HeadDim + i] * k[j][g * HeadDim + i];
                        scores[j] = s / Math.Sqrt(HeadDim);
                    }
                    double max = scores.Skip(first).Max(), sum = 0;
                    for (int j = first; j <= p; j++) { scores[j] = Math.Exp(scores[j] - max); sum += scores[j]; }
                    for (int j = first; j <= p; j++)
                        for (int i = 0; i < HeadDim; i++) att[hd * HeadDim + i] += scores[j] / sum * v[j][g * HeadDim + i];
                }
                var o = MatVec(W("self_attn.o_proj"), att, Hidden);
                for (int i = 0; i < Hidden; i++) x[p][i] += o[i];
            }
            for (int p = 0; p < t; p++)
            {
                var h = RmsNorm(x[p], W("post_attention_layernorm"));
                // gate_up_proj's product chunked in two along the features: gate first, then up.
                var gate = MatVec(W("mlp.gate_up_proj"), h, Mlp);
                var up = MatVec(W("mlp.gate_up_proj"), h, Mlp, Mlp);
                var act = new double[Mlp];
                for (int i = 0; i < Mlp; i++) act[i] = up[i] * (gate[i] / (1 + Math.Exp(-gate[i])));
                var d = MatVec(W("mlp.down_proj"), act, Hidden);
                for (int i = 0; i < Hidden; i++) x[p][i] += d[i];
            }
        }
        var head = variant.Tied ? w["model.embed_tokens.weight"].Data : w["lm_head.weight"].Data;
        return x.Select(row => MatVec(head, RmsNorm(row, w["model.norm.weight"].Data), Vocab)).ToArray();
    }

    private double[] TesseraLogits(Model model, int[] tokens)
    {
        var logits = model.Forward(_cpu.FromArray(tokens, 1, tokens.Length), 0);
        model.ReleaseActivations(0);
        return TestTensors.ToDoubles(_cpu, _cpu.Contiguous(logits.Slice(2, 0, Vocab)));
    }

    public static TheoryData<int, bool> Variants => new() { { 0, false }, { 4, false }, { 0, true } };

    [Theory]
    [MemberData(nameof(Variants))]
    public void CpuF64ForwardOfALoadedCheckpointMatchesAPlainLoopReference(int window, bool tied)
    {
        var variant = new Variant(window, tied);
        int seed = 4101 + window + (tied ? 10 : 0);   // weights and tokens
        var weights = RandomWeights(seed, tied);
        var model = PretrainedModel.Load(WriteCheckpoint($"reference-{window}-{tied}", weights, ConfigJson(variant)), _cpu, DType.F64);
        Assert.True(model.Config is { ModelType: "phi3", QkNorm: false, AttentionBias: false, Bias: false });
        Assert.Equal(window, model.Config.SlidingWindow);
        Assert.Equal(tied, model.Config.TiedEmbeddings);
        var rng = new Random(seed + 1);
        var tokens = Enumerable.Range(0, 11).Select(_ => rng.Next(Vocab)).ToArray();
        var expected = ReferenceForward(weights, tokens, variant).SelectMany(r => r).ToArray();
        var actual = TesseraLogits(model, tokens);
        // Both sides compute in double from the same F32 weights (exact in F64); they differ only in summation order and in
        // exp/sqrt/cos rounding, ~1e-15 relative per operation through two layers: 1e-10 leaves a wide margin and still catches
        // any wrong split of the fused tensors (gate and up swapped, k and v swapped move the logits by O(1e-2) or more).
        double error = NumericAssert.MaxRelativeError(expected, actual);
        Assert.True(error <= 1e-10, $"max relative difference {error:E2} (seed {seed})");
    }

    [Fact]
    public void TheWindowChangesTheLogits()
    {
        const int seed = 4201;
        var weights = RandomWeights(seed);
        var tokens = new[] { 3, 14, 15, 9, 26, 5, 35, 8, 9, 7 };
        var full = TesseraLogits(PretrainedModel.Load(WriteCheckpoint("nowindow", weights, ConfigJson(new Variant())), _cpu, DType.F64), tokens);
        var windowed = TesseraLogits(PretrainedModel.Load(WriteCheckpoint("window", weights, ConfigJson(new Variant(Window: 4))), _cpu, DType.F64), tokens);
        Assert.True(NumericAssert.MaxRelativeError(full, windowed) > 1e-3, $"sliding_window 4 does not change the logits of 10 tokens (seed {seed})");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ExportThenImportGivesTheSameWeightsBitForBitAndWritesTheFusedTensors(bool tied)
    {
        int seed = 4301 + (tied ? 1 : 0);
        var weights = RandomWeights(seed, tied);
        var model = PretrainedModel.Load(WriteCheckpoint("source", weights, ConfigJson(new Variant(Window: 6, Tied: tied))), _cpu, DType.F32);
        var dir = Path.Combine(_dir, "exported");
        HuggingFaceExport.Write(dir, model);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal("phi3", json["model_type"]!.GetValue<string>());
        Assert.Equal("Phi3ForCausalLM", json["architectures"]![0]!.GetValue<string>());
        Assert.Equal(6, json["sliding_window"]!.GetValue<int>());
        Assert.Equal(tied, json["tie_word_embeddings"]!.GetValue<bool>());
        var back = PretrainedModel.Load(dir, _cpu, DType.F32);
        Assert.Equal(model.Config with { PaddedVocabSize = 0 }, back.Config with { PaddedVocabSize = 0 });
        foreach (var p in model.Parameters.Parameters)
        {
            var q = back.Parameters.Parameters.Single(x => x.Name == p.Name);
            Assert.Equal(_cpu.ToArray<float>(p.Value), _cpu.ToArray<float>(q.Value));
        }
        // The exported file holds Phi-3's own fused tensors, unchanged, and no unfused names.
        using var file = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors"));
        foreach (var name in new[] { "model.layers.1.self_attn.qkv_proj.weight", "model.layers.0.mlp.gate_up_proj.weight", "model.layers.1.mlp.gate_up_proj.weight" })
            Assert.Equal(weights[name].Data, file.ReadAsSingle(name));
        Assert.DoesNotContain(file.Tensors, t => t.Name.Contains("q_proj", StringComparison.Ordinal) || t.Name.Contains("gate_proj", StringComparison.Ordinal));
        Assert.Equal(!tied, file.Contains("lm_head.weight"));

        // Sharded (a gate_up_proj is 96 x 32 x 4 = 12288 bytes): each shared tensor is assembled from its two parameters once,
        // in one shard, and the directory loads back to the same weights.
        var sharded = Path.Combine(_dir, "sharded");
        HuggingFaceExport.Write(sharded, model, new HuggingFaceExportOptions { MaxShardBytes = 16000 });
        Assert.True(Directory.GetFiles(sharded, "model-*.safetensors").Length > 2);
        var again = PretrainedModel.Load(sharded, _cpu, DType.F32);
        foreach (var p in model.Parameters.Parameters)
            Assert.Equal(_cpu.ToArray<float>(p.Value), _cpu.ToArray<float>(again.Parameters.Parameters.Single(x => x.Name == p.Name).Value));
    }

    [Fact]
    public void TheFusedTensorsSplitIntoTesseraParametersRowForRow()
    {
        const int seed = 4401;
        var weights = RandomWeights(seed);
        var model = PretrainedModel.Load(WriteCheckpoint("split", weights, ConfigJson(new Variant())), _cpu, DType.F32);
        float[] Param(string n) => _cpu.ToArray<float>(model.Parameters.Parameters.Single(p => p.Name == n).Value);
        var gateUp = weights["model.layers.0.mlp.gate_up_proj.weight"].Data;
        Assert.Equal(gateUp.Take(Mlp * Hidden), Param("blocks.0.mlp.gate.weight"));
        Assert.Equal(gateUp.Skip(Mlp * Hidden), Param("blocks.0.mlp.up.weight"));
        Assert.Equal(weights["model.layers.1.self_attn.qkv_proj.weight"].Data, Param("blocks.1.attn.qkv.weight"));
    }

    [Theory]
    [InlineData("partial_rotary_factor", "0.75", "'partial_rotary_factor': 0.75 is not supported")]
    [InlineData("rope_scaling", "{\"type\":\"longrope\",\"short_factor\":[1,1,1,1],\"long_factor\":[2,2,2,2]}", "'rope_scaling.rope_type': 'longrope'")]
    [InlineData("rope_scaling", "{\"type\":\"su\",\"short_factor\":[1,1,1,1],\"long_factor\":[2,2,2,2]}", "'rope_scaling.rope_type': 'su'")]
    [InlineData("rope_scaling", "{\"rope_type\":\"fancy\"}", "'rope_scaling.rope_type': 'fancy' is not supported")]
    [InlineData("hidden_act", "\"gelu\"", "'hidden_act': 'gelu' is not supported")]
    [InlineData("sliding_window", "-3", "'sliding_window': must be positive or null")]
    public void UnsupportedPhi3FieldsAreRefusedByName(string field, string value, string expected)
    {
        var config = ConfigJson(new Variant());
        config[field] = JsonNode.Parse(value);
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(config.ToJsonString(), "config.json"));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void LoraIsRefusedForPhi3ByName()
    {
        var e = Assert.Throws<ArgumentException>(() => Tessera.Models.Adapters.LoraTargets.Parse(ModelPresets.Get("phi3-debug"), ["q", "v"]));
        Assert.Contains("phi3", e.Message);
        Assert.Contains("qkv_proj", e.Message);
    }

    [Fact]
    public void AMissingFusedTensorIsNamed()
    {
        var weights = RandomWeights(4501);
        weights.Remove("model.layers.1.mlp.gate_up_proj.weight");
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(WriteCheckpoint("missing", weights, ConfigJson(new Variant())), _cpu, DType.F32));
        Assert.Contains("'model.layers.1.mlp.gate_up_proj.weight'", e.Message);
    }
}
