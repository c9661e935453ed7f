using System.Text.Json.Nodes;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;
using Model = Tessera.Models.Transformer;
using static Tessera.Tests.Models.HuggingFace.PlainLoopReference;

namespace Tessera.Tests.Models.HuggingFace;

/// <summary>
/// Qwen3 (model_type "qwen3"): a tiny random checkpoint written here as Hugging Face would save it (config.json with
/// head_dim != hidden_size / num_attention_heads, an untied head, q_norm and k_norm), loaded by Tessera and checked against a
/// reference forward written in this file from the plain loops of <see cref="PlainLoopReference"/>; the export round trip;
/// the head norms' effect.
/// </summary>
public sealed class Qwen3Tests : IDisposable
{
    // hidden 24, 4 query heads of 8 (32 query channels: head_dim is not 24 / 4 = 6), 2 key/value heads, MLP 40, 2 layers.
    private const int Vocab = 50, Hidden = 24, Heads = 4, KvHeads = 2, HeadDim = 8, Mlp = 40, Layers = 2, Positions = 32;
    private const double Eps = 1e-6, Theta = 1000000;

    private readonly CpuBackend _cpu = new(1);
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "tessera-qwen3-" + Guid.NewGuid().ToString("N"));

    public Qwen3Tests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static string ConfigJson(bool tied = false) => new JsonObject
    {
        ["architectures"] = new JsonArray("Qwen3ForCausalLM"),
        ["model_type"] = "qwen3",
        ["vocab_size"] = Vocab,
        ["max_position_embeddings"] = Positions,
        ["hidden_size"] = Hidden,
        ["intermediate_size"] = Mlp,
        ["num_hidden_layers"] = Layers,
        ["num_attention_heads"] = Heads,
        ["num_key_value_heads"] = KvHeads,
        ["head_dim"] = HeadDim,
        ["hidden_act"] = "silu",
        ["rms_norm_eps"] = Eps,
        ["rope_theta"] = Theta,
        ["rope_scaling"] = null,
        ["attention_bias"] = false,
        ["use_sliding_window"] = false,
        ["sliding_window"] = null,
        ["max_window_layers"] = Layers,
        ["tie_word_embeddings"] = tied,
        ["torch_dtype"] = "float32",
    }.ToJsonString();

    /// <summary>Hugging Face's tensors of a random untied Qwen3 (F32 values; norm weights around 1, the rest O(0.3)).</summary>
    private static Dictionary<string, (int[] Shape, float[] Data)> RandomWeights(int seed)
    {
        var rng = new Random(seed);
        var w = new Dictionary<string, (int[] Shape, float[] Data)>(StringComparer.Ordinal);
        void Add(string name, bool norm, params int[] shape) => TinyHuggingFaceCheckpoint.AddRandom(w, rng, name, norm, shape);
        Add("model.embed_tokens.weight", false, Vocab, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", true, Hidden);
            Add(p + "self_attn.q_proj.weight", false, Heads * HeadDim, Hidden);
            Add(p + "self_attn.k_proj.weight", false, KvHeads * HeadDim, Hidden);
            Add(p + "self_attn.v_proj.weight", false, KvHeads * HeadDim, Hidden);
            Add(p + "self_attn.q_norm.weight", true, HeadDim);
            Add(p + "self_attn.k_norm.weight", true, HeadDim);
            Add(p + "self_attn.o_proj.weight", false, Hidden, Heads * HeadDim);
            Add(p + "post_attention_layernorm.weight", true, Hidden);
            Add(p + "mlp.gate_proj.weight", false, Mlp, Hidden);
            Add(p + "mlp.up_proj.weight", false, Mlp, Hidden);
            Add(p + "mlp.down_proj.weight", false, Hidden, Mlp);
        }
        Add("model.norm.weight", true, Hidden);
        Add("lm_head.weight", false, Vocab, Hidden);
        return w;
    }

    private string WriteCheckpoint(string name, Dictionary<string, (int[] Shape, float[] Data)> weights) =>
        TinyHuggingFaceCheckpoint.Write(Path.Combine(_dir, name), ConfigJson(), weights);

    // ---- The reference: Qwen3's forward as transformers' modeling_qwen3 computes it, in double, with plain loops. ----

    /// <summary>Logits (T, V) of one sequence.</summary>
    private static double[][] ReferenceForward(Dictionary<string, (int[] Shape, float[] Data)> w, int[] tokens)
    {
        int t = tokens.Length;
        var x = Embed(w["model.embed_tokens.weight"].Data, tokens, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            float[] W(string n) => w[$"model.layers.{l}.{n}.weight"].Data;
            var q = new double[t][]; var k = new double[t][]; var v = new double[t][];
            for (int p = 0; p < t; p++)
            {
                var h = RmsNorm(x[p], W("input_layernorm"), Eps);
                q[p] = MatVec(W("self_attn.q_proj"), h, Heads * HeadDim);
                k[p] = MatVec(W("self_attn.k_proj"), h, KvHeads * HeadDim);
                v[p] = MatVec(W("self_attn.v_proj"), h, KvHeads * HeadDim);
                // Qwen3: each head RMS-normalized over its D channels, then rotated.
                for (int hd = 0; hd < Heads; hd++)
                {
                    RmsNorm(q[p], W("self_attn.q_norm"), Eps, hd * HeadDim, HeadDim).CopyTo(q[p], hd * HeadDim);
                    Rope(q[p], hd * HeadDim, HeadDim, p, Theta);
                }
                for (int hd = 0; hd < KvHeads; hd++)
                {
                    RmsNorm(k[p], W("self_attn.k_norm"), Eps, hd * HeadDim, HeadDim).CopyTo(k[p], hd * HeadDim);
                    Rope(k[p], hd * HeadDim, HeadDim, p, Theta);
                }
            }
            for (int p = 0; p < t; p++)
            {
                var att = CausalAttention(q[p], k, v, p, Heads, KvHeads, HeadDim);   // grouped-query: head hd reads kv head hd / 2
                var o = MatVec(W("self_attn.o_proj"), att, Hidden);
                for (int i = 0; i < Hidden; i++) x[p][i] += o[i];
            }
            for (int p = 0; p < t; p++)
            {
                var d = SwiGlu(W("mlp.gate_proj"), W("mlp.up_proj"), W("mlp.down_proj"), RmsNorm(x[p], W("post_attention_layernorm"), Eps), Mlp, Hidden);
                for (int i = 0; i < Hidden; i++) x[p][i] += d[i];
            }
        }
        return x.Select(row => MatVec(w["lm_head.weight"].Data, RmsNorm(row, w["model.norm.weight"].Data, Eps), Vocab)).ToArray();
    }

    private double[] TesseraLogits(Model model, int[] tokens)
    {
        var logits = model.Forward(_cpu.FromArray(tokens, 1, tokens.Length), 0);
        model.ReleaseActivations(0);
        return TestTensors.ToDoubles(_cpu, _cpu.Contiguous(logits.Slice(2, 0, Vocab)));
    }

    [Fact]
    public void CpuF64ForwardOfALoadedCheckpointMatchesAPlainLoopReference()
    {
        const int seed = 3101;   // weights and tokens
        var weights = RandomWeights(seed);
        var model = PretrainedModel.Load(WriteCheckpoint("reference", weights), _cpu, DType.F64);
        Assert.True(model.Config is { QkNorm: true, HeadSize: HeadDim, TiedEmbeddings: false, AttentionBias: false, ModelType: "qwen3" });
        var rng = new Random(seed + 1);
        var tokens = Enumerable.Range(0, 11).Select(_ => rng.Next(Vocab)).ToArray();
        var expected = ReferenceForward(weights, tokens).SelectMany(r => r).ToArray();
        var actual = TesseraLogits(model, tokens);
        // Both sides compute in double from the same F32 weights (exact in F64); they differ only in summation order and
        // in exp/sqrt/cos rounding, ~1e-15 relative per operation through two layers: 1e-10 leaves a wide margin and still
        // catches any wrong formula (a missing norm, a wrong RoPE pairing or head grouping moves the logits by O(1e-2) or more).
        double error = NumericAssert.MaxRelativeError(expected, actual);
        Assert.True(error <= 1e-10, $"max relative difference {error:E2} (seed {seed})");
    }

    [Fact]
    public void TheHeadNormWeightsChangeTheLogits()
    {
        const int seed = 3201;
        var weights = RandomWeights(seed);
        var tokens = new[] { 3, 14, 15, 9, 26, 5 };
        var before = TesseraLogits(PretrainedModel.Load(WriteCheckpoint("norms-a", weights), _cpu, DType.F64), tokens);
        string[] names = ["model.layers.1.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"];
        for (int n = 0; n < names.Length; n++)
        {
            string name = names[n];
            var changed = weights.ToDictionary(e => e.Key, e => e.Key == name ? (e.Value.Shape, e.Value.Data.Select((x, i) => i % 2 == 0 ? 2 * x : x).ToArray()) : e.Value);
            var after = TesseraLogits(PretrainedModel.Load(WriteCheckpoint("norms-" + n, changed), _cpu, DType.F64), tokens);
            // Doubling half of one norm's weights moves the attention scores of that layer: the logits move by O(1e-2) at least.
            Assert.True(NumericAssert.MaxRelativeError(before, after) > 1e-3, $"{name} does not change the logits (seed {seed})");
        }
    }

    [Fact]
    public void ExportThenImportGivesTheSameWeightsBitForBit()
    {
        const int seed = 3301;
        var weights = RandomWeights(seed);
        var model = PretrainedModel.Load(WriteCheckpoint("source", weights), _cpu, DType.F32);
        var dir = Path.Combine(_dir, "exported");
        HuggingFaceExport.Write(dir, model);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal("qwen3", json["model_type"]!.GetValue<string>());
        Assert.Equal("Qwen3ForCausalLM", json["architectures"]![0]!.GetValue<string>());
        Assert.Equal(HeadDim, json["head_dim"]!.GetValue<int>());
        var back = PretrainedModel.Load(dir, _cpu, DType.F32);
        Assert.Equal(model.Config with { PaddedVocabSize = 0 }, back.Config with { PaddedVocabSize = 0 });
        foreach (var p in model.Parameters.Parameters)
        {
            var q = back.Parameters.Parameters.Single(x => x.Name == p.Name);
            Assert.Equal(_cpu.ToArray<float>(p.Value), _cpu.ToArray<float>(q.Value));
        }
        // And the exported file holds Hugging Face's own tensors, unchanged (q_norm among them).
        using var file = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors"));
        Assert.Equal(weights["model.layers.1.self_attn.q_norm.weight"].Data, file.ReadAsSingle("model.layers.1.self_attn.q_norm.weight"));
    }

    [Theory]
    [InlineData("\"use_sliding_window\":false", "\"use_sliding_window\":true", "'use_sliding_window': true is not supported")]
    [InlineData("\"attention_bias\":false", "\"attention_bias\":true", "'attention_bias': true is not supported")]
    public void UnsupportedQwen3FieldsAreRefusedByName(string from, string to, string expected)
    {
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(ConfigJson().Replace(from, to), "config.json"));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void ATiedQwen3ConfigReadsAsTied()
    {
        var c = HuggingFaceConfig.Parse(ConfigJson(tied: true), "config.json");
        Assert.True(c is { TiedEmbeddings: true, QkNorm: true, ExplicitHeadSize: HeadDim, NormEpsilon: Eps, RopeTheta: Theta });
    }
}
