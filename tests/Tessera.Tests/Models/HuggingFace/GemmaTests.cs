using System.Text.Json.Nodes;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Safetensors;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;
using Model = Tessera.Models.Transformer;
using static Tessera.Tests.Models.HuggingFace.PlainLoopReference;

namespace Tessera.Tests.Models.HuggingFace;

/// <summary>
/// Gemma 2 (model_type "gemma2") and Gemma 3 text ("gemma3_text"): tiny random checkpoints written here as Hugging Face saves
/// them (config.json with the real field names, four norms a block, a tied head), loaded by Tessera and checked against a
/// reference forward written in this file with <see cref="PlainLoopReference"/> after transformers' modeling_gemma2 /
/// modeling_gemma3; each Gemma setting shown to change the logits; the export writing Hugging Face's own norm weights w; bad
/// configs refused.
/// </summary>
public sealed class GemmaTests : IDisposable
{
    // hidden 24, 4 query heads of 8 (32 query channels), 2 key/value heads, MLP 40, window 4 over sequences of 13.
    private const int Vocab = 50, Hidden = 24, Heads = 4, KvHeads = 2, HeadDim = 8, Mlp = 40, Positions = 32, Window = 4;
    private const double Eps = 1e-6;

    private readonly CpuBackend _cpu = new(1);
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "tessera-gemma-" + Guid.NewGuid().ToString("N"));

    public GemmaTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>What differs between the two: Gemma 2 caps scores and logits and has one RoPE; Gemma 3 has q/k norms,
    /// a local RoPE base and linear scaling on the global layers, and every third layer global here (pattern 3).</summary>
    private sealed record Variant(string ModelType, int Layers, double Scalar, double AttentionCap, double FinalCap, bool QkNorm,
        double Theta, double LocalTheta, double LinearFactor, int Period);

    private static readonly Variant Gemma2 = new("gemma2", 4, 20, 5.0, 3.0, false, 10000, 10000, 1, 2);
    private static readonly Variant Gemma3 = new("gemma3_text", 6, HeadDim, 0, 0, true, 1000000, 10000, 8, 3);

    private static Variant Of(string modelType) => modelType == "gemma2" ? Gemma2 : Gemma3;

    private static JsonObject Config(Variant g, bool layerTypes = false)
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(g.ModelType == "gemma2" ? "Gemma2ForCausalLM" : "Gemma3ForCausalLM"),
            ["model_type"] = g.ModelType,
            ["vocab_size"] = Vocab,
            ["max_position_embeddings"] = Positions,
            ["hidden_size"] = Hidden,
            ["intermediate_size"] = Mlp,
            ["num_hidden_layers"] = g.Layers,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KvHeads,
            ["head_dim"] = HeadDim,
            ["hidden_activation"] = "gelu_pytorch_tanh",
            ["hidden_act"] = "gelu_pytorch_tanh",
            ["rms_norm_eps"] = Eps,
            ["rope_theta"] = g.Theta,
            ["attention_bias"] = false,
            ["attention_dropout"] = 0.0,
            ["query_pre_attn_scalar"] = g.Scalar,
            ["sliding_window"] = Window,
            ["attn_logit_softcapping"] = g.AttentionCap > 0 ? g.AttentionCap : null,
            ["final_logit_softcapping"] = g.FinalCap > 0 ? g.FinalCap : null,
            ["cache_implementation"] = "hybrid",
            ["initializer_range"] = 0.02,
            ["tie_word_embeddings"] = true,
            ["bos_token_id"] = 2,
            ["eos_token_id"] = 1,
            ["pad_token_id"] = 0,
            ["torch_dtype"] = "float32",
        };
        if (g.ModelType == "gemma3_text")
        {
            o["rope_local_base_freq"] = g.LocalTheta;
            o["rope_scaling"] = new JsonObject { ["rope_type"] = "linear", ["factor"] = g.LinearFactor };
            if (!layerTypes) o["sliding_window_pattern"] = g.Period;
        }
        if (layerTypes)
            o["layer_types"] = new JsonArray(Enumerable.Range(0, g.Layers)
                .Select(i => (JsonNode)((i + 1) % g.Period != 0 ? "sliding_attention" : "full_attention")).ToArray());
        return o;
    }

    /// <summary>
    /// Hugging Face's tensors of a random Gemma (F32), all O(0.3): the norms' scales 1 + w lie in [0.7, 1.3]. (Norm weights are
    /// multiples of 2^-12, which nothing needs now that Tessera stores w as transformers does; kept so the seeds' draws stay.)
    /// </summary>
    private static Dictionary<string, (int[] Shape, float[] Data)> RandomWeights(Variant g, int seed)
    {
        var rng = new Random(seed);
        var w = new Dictionary<string, (int[] Shape, float[] Data)>(StringComparer.Ordinal);
        void Add(string name, bool norm, params int[] shape)
        {
            int n = shape.Aggregate(1, (a, b) => a * b);
            w[name] = (shape, Enumerable.Range(0, n).Select(_ =>
            {
                double u = 0.3 * (rng.NextDouble() * 2 - 1);
                return (float)(norm ? Math.Round(u * 4096) / 4096 : u);
            }).ToArray());
        }
        Add("model.embed_tokens.weight", false, Vocab, Hidden);
        for (int l = 0; l < g.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", true, Hidden);
            Add(p + "self_attn.q_proj.weight", false, Heads * HeadDim, Hidden);
            Add(p + "self_attn.k_proj.weight", false, KvHeads * HeadDim, Hidden);
            Add(p + "self_attn.v_proj.weight", false, KvHeads * HeadDim, Hidden);
            if (g.QkNorm)
            {
                Add(p + "self_attn.q_norm.weight", true, HeadDim);
                Add(p + "self_attn.k_norm.weight", true, HeadDim);
            }
            Add(p + "self_attn.o_proj.weight", false, Hidden, Heads * HeadDim);
            Add(p + "post_attention_layernorm.weight", true, Hidden);
            Add(p + "pre_feedforward_layernorm.weight", true, Hidden);
            Add(p + "mlp.gate_proj.weight", false, Mlp, Hidden);
            Add(p + "mlp.up_proj.weight", false, Mlp, Hidden);
            Add(p + "mlp.down_proj.weight", false, Hidden, Mlp);
            Add(p + "post_feedforward_layernorm.weight", true, Hidden);
        }
        Add("model.norm.weight", true, Hidden);
        return w;
    }

    private string WriteCheckpoint(string name, string configJson, Dictionary<string, (int[] Shape, float[] Data)> weights) =>
        TinyHuggingFaceCheckpoint.Write(Path.Combine(_dir, name), configJson, weights);

    // ---- The reference: Gemma's forward as transformers computes it, in double, with plain loops. ----

    /// <summary>Gemma's RMSNorm: x / sqrt(mean(x^2) + eps) * (1 + w).</summary>
    private static double[] RmsNorm(double[] x, float[] w, int offset = 0, int length = -1) =>
        PlainLoopReference.RmsNorm(x, w, Eps, offset, length, unitOffset: true);

    /// <summary>Logits (T, V) of one sequence.</summary>
    private static double[][] ReferenceForward(Variant g, Dictionary<string, (int[] Shape, float[] Data)> w, int[] tokens)
    {
        int t = tokens.Length;
        var embed = w["model.embed_tokens.weight"].Data;
        double normalizer = Math.Sqrt(Hidden);                       // in the model's dtype: exact in double
        var x = tokens.Select(id => Enumerable.Range(0, Hidden).Select(i => embed[id * Hidden + i] * normalizer).ToArray()).ToArray();
        for (int l = 0; l < g.Layers; l++)
        {
            float[] W(string n) => w[$"model.layers.{l}.{n}.weight"].Data;
            bool local = (l + 1) % g.Period != 0;                     // Gemma 2: even layers; Gemma 3: all but every Period-th
            // Gemma 3's local layers rotate at rope_local_base_freq unscaled; its global ones at rope_theta, scaled.
            double theta = g.ModelType == "gemma3_text" && local ? g.LocalTheta : g.Theta;
            double factor = g.ModelType == "gemma3_text" && !local ? g.LinearFactor : 1;
            var q = new double[t][]; var k = new double[t][]; var v = new double[t][];
            for (int p = 0; p < t; p++)
            {
                var h = RmsNorm(x[p], W("input_layernorm"));
                q[p] = MatVec(W("self_attn.q_proj"), h, Heads * HeadDim);
                k[p] = MatVec(W("self_attn.k_proj"), h, KvHeads * HeadDim);
                v[p] = MatVec(W("self_attn.v_proj"), h, KvHeads * HeadDim);
                for (int hd = 0; hd < Heads; hd++)
                {
                    if (g.QkNorm) RmsNorm(q[p], W("self_attn.q_norm"), hd * HeadDim, HeadDim).CopyTo(q[p], hd * HeadDim);
                    Rope(q[p], hd * HeadDim, HeadDim, p, theta, factor);
                }
                for (int hd = 0; hd < KvHeads; hd++)
                {
                    if (g.QkNorm) RmsNorm(k[p], W("self_attn.k_norm"), hd * HeadDim, HeadDim).CopyTo(k[p], hd * HeadDim);
                    Rope(k[p], hd * HeadDim, HeadDim, p, theta, factor);
                }
            }
            for (int p = 0; p < t; p++)
            {
                // Local layers see key j when p - window < j <= p; scores scaled by query_pre_attn_scalar^-1/2, then capped.
                var att = CausalAttention(q[p], k, v, p, Heads, KvHeads, HeadDim, local ? Window : 0, s =>
                {
                    s *= Math.Pow(g.Scalar, -0.5);
                    if (g.AttentionCap > 0) s = g.AttentionCap * Math.Tanh(s / g.AttentionCap);
                    return s;
                });
                // The attention output is normalized (post_attention_layernorm) before the residual add.
                var o = RmsNorm(MatVec(W("self_attn.o_proj"), att, Hidden), W("post_attention_layernorm"));
                for (int i = 0; i < Hidden; i++) x[p][i] += o[i];
            }
            for (int p = 0; p < t; p++)
            {
                var h = RmsNorm(x[p], W("pre_feedforward_layernorm"));
                var gate = MatVec(W("mlp.gate_proj"), h, Mlp);
                var up = MatVec(W("mlp.up_proj"), h, Mlp);
                var d = RmsNorm(MatVec(W("mlp.down_proj"), GeGlu(gate, up), Hidden), W("post_feedforward_layernorm"));
                for (int i = 0; i < Hidden; i++) x[p][i] += d[i];
            }
        }
        return x.Select(row =>
        {
            var logits = MatVec(embed, RmsNorm(row, w["model.norm.weight"].Data), Vocab);   // tied head
            return g.FinalCap > 0 ? logits.Select(z => g.FinalCap * Math.Tanh(z / g.FinalCap)).ToArray() : logits;
        }).ToArray();
    }

    private double[] TesseraLogits(Model model, int[] tokens)
    {
        var logits = model.Forward(_cpu.FromArray(tokens, 1, tokens.Length), 0);
        model.ReleaseActivations(0);
        return TestTensors.ToDoubles(_cpu, _cpu.Contiguous(logits.Slice(2, 0, model.Config.VocabSize)));
    }

    private static int[] Tokens(int seed, int count)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => rng.Next(Vocab)).ToArray();
    }

    [Theory]
    [InlineData("gemma2", false)]
    [InlineData("gemma2", true)]         // layer_types (transformers 4.53+) instead of the even-layers rule
    [InlineData("gemma3_text", false)]   // sliding_window_pattern 3
    [InlineData("gemma3_text", true)]
    public void CpuF64ForwardOfALoadedCheckpointMatchesAPlainLoopReference(string modelType, bool layerTypes)
    {
        const int seed = 4101;
        var g = Of(modelType);
        var weights = RandomWeights(g, seed);
        var model = PretrainedModel.Load(WriteCheckpoint("reference", Config(g, layerTypes).ToJsonString(), weights), _cpu, DType.F64);
        Assert.True(model.Config is { PostNorms: true, GeluGate: true, ScaleEmbeddings: true, UnitOffsetNorms: true, TiedEmbeddings: true, LocalWindow: Window });
        Assert.Equal(g.Period, model.Config.LocalPeriod);
        Assert.Equal(g.QkNorm, model.Config.QkNorm);
        var tokens = Tokens(seed + 1, 13);                            // 13 positions: the local layers' window of 4 bites
        var expected = ReferenceForward(g, weights, tokens).SelectMany(r => r).ToArray();
        var actual = TesseraLogits(model, tokens);
        // Both sides compute in double from the same F32 weights (1 + w formed in double on both); they differ in summation
        // order and in exp/tanh/sqrt/cos rounding, ~1e-15 relative per operation through 4 or 6 layers: 1e-10 leaves a wide
        // margin and still catches any wrong formula (a norm applied as w, a missing post-norm, a window on the wrong layers, a
        // cap left out or a wrong RoPE base moves the logits by 1e-3 or more).
        double error = NumericAssert.MaxRelativeError(expected, actual);
        Assert.True(error <= 1e-10, $"{modelType}: max relative difference {error:E2} (seed {seed})");
    }

    [Theory]
    [InlineData("gemma2-debug")]
    [InlineData("gemma3-debug")]
    public void FreshGemmaNormWeightsAreZeroAndActAsTheIdentityScale(string preset)
    {
        var config = ModelPresets.Get(preset);
        var model = new Model(config, _cpu, DType.F64);
        model.InitializeWeights(seed: 3);
        var norms = model.Parameters.Parameters.Where(p => p.Name.Contains("norm", StringComparison.Ordinal)).ToList();
        Assert.Equal(config.Layers * (config.QkNorm ? 6 : 4) + 1, norms.Count);
        Assert.All(norms, p => Assert.All(_cpu.ToArray<double>(p.Value), v => Assert.Equal(0.0, v)));
        // The same model with Llama's norms initialized to ones (w applied as w) computes the same logits, bit for bit.
        var llamaNorms = new Model(config with { UnitOffsetNorms = false }, _cpu, DType.F64);
        llamaNorms.InitializeWeights(seed: 3);
        var tokens = Tokens(5, 12);
        Assert.Equal(TesseraLogits(model, tokens), TesseraLogits(llamaNorms, tokens));
    }

    [Fact]
    public void LayerTypesAndTheOlderPatternFieldsReadAsOneConfiguration()
    {
        foreach (var g in new[] { Gemma2, Gemma3 })
            Assert.Equal(HuggingFaceConfig.Parse(Config(g).ToJsonString(), "config.json"),
                HuggingFaceConfig.Parse(Config(g, layerTypes: true).ToJsonString(), "config.json"));
    }

    [Theory]
    [InlineData("gemma2-debug", "embedding scale")]
    [InlineData("gemma2-debug", "GeGLU")]
    [InlineData("gemma2-debug", "query_pre_attn_scalar")]
    [InlineData("gemma2-debug", "local window")]
    [InlineData("gemma2-debug", "attention soft cap")]
    [InlineData("gemma2-debug", "final soft cap")]
    [InlineData("gemma3-debug", "local window")]
    [InlineData("gemma3-debug", "local RoPE base")]
    [InlineData("gemma3-debug", "1 + w norms")]
    public void EachGemmaSettingChangesTheLogits(string preset, string setting)
    {
        var config = ModelPresets.Get(preset);
        var off = setting switch
        {
            "embedding scale" => config with { ScaleEmbeddings = false },
            "GeGLU" => config with { GeluGate = false },
            "query_pre_attn_scalar" => config with { QueryPreAttentionScalar = 0 },
            "local window" => config with { LocalWindow = 0, LocalPeriod = 0 },
            "local RoPE base" => config with { LocalRopeTheta = 0 },
            "attention soft cap" => config with { AttentionSoftCap = 0 },
            "final soft cap" => config with { FinalSoftCap = 0 },
            "1 + w norms" => config with { UnitOffsetNorms = false },
            _ => throw new ArgumentOutOfRangeException(nameof(setting)),
        };
        // The same parameters (each setting leaves the parameter set alone), O(0.3) weights, 20 positions (past the window of 8).
        double[] Logits(TransformerConfig c)
        {
            var model = new Model(c, _cpu, DType.F64);
            LayerCheck.Randomize(_cpu, model.Parameters, new Random(17));
            return TesseraLogits(model, Tokens(18, 20));
        }
        double change = NumericAssert.MaxRelativeError(Logits(config), Logits(off));
        Assert.True(change > 1e-4, $"{preset}: turning off the {setting} moves the logits by only {change:E2}");
    }

    [Theory]
    [InlineData("model.layers.1.post_attention_layernorm.weight")]
    [InlineData("model.layers.0.post_feedforward_layernorm.weight")]
    [InlineData("model.layers.2.self_attn.q_norm.weight")]
    public void ThePostNormAndHeadNormWeightsChangeTheLogits(string name)
    {
        const int seed = 4201;
        var weights = RandomWeights(Gemma3, seed);
        var tokens = Tokens(seed, 9);
        string json = Config(Gemma3).ToJsonString();
        var before = TesseraLogits(PretrainedModel.Load(WriteCheckpoint("norms-a", json, weights), _cpu, DType.F64), tokens);
        var changed = weights.ToDictionary(e => e.Key, e => e.Key == name ? (e.Value.Shape, e.Value.Data.Select(x => x + 0.5f).ToArray()) : e.Value);
        var after = TesseraLogits(PretrainedModel.Load(WriteCheckpoint("norms-b", json, changed), _cpu, DType.F64), tokens);
        Assert.True(NumericAssert.MaxRelativeError(before, after) > 1e-3, $"{name} does not change the logits (seed {seed})");
    }

    [Theory]
    [InlineData("gemma2")]
    [InlineData("gemma3_text")]
    public void ExportWritesHuggingFacesOwnNormWeightsAndFieldsAndReloadsBitForBit(string modelType)
    {
        const int seed = 4301;
        var g = Of(modelType);
        var weights = RandomWeights(g, seed);
        var model = PretrainedModel.Load(WriteCheckpoint("source", Config(g).ToJsonString(), weights), _cpu, DType.F32);
        var dir = Path.Combine(_dir, "exported");
        HuggingFaceExport.Write(dir, model);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal(modelType, json["model_type"]!.GetValue<string>());
        Assert.Equal("gelu_pytorch_tanh", json["hidden_activation"]!.GetValue<string>());
        Assert.Equal(g.Scalar, json["query_pre_attn_scalar"]!.GetValue<double>());
        Assert.Equal(Window, json["sliding_window"]!.GetValue<int>());
        Assert.Equal(g.AttentionCap > 0 ? g.AttentionCap : null, json["attn_logit_softcapping"]?.GetValue<double>());
        Assert.Equal(g.FinalCap > 0 ? g.FinalCap : null, json["final_logit_softcapping"]?.GetValue<double>());
        var types = json["layer_types"]!.AsArray().Select(n => n!.GetValue<string>()).ToArray();
        Assert.Equal(Enumerable.Range(0, g.Layers).Select(i => (i + 1) % g.Period != 0 ? "sliding_attention" : "full_attention"), types);
        var back = PretrainedModel.Load(dir, _cpu, DType.F32);
        Assert.Equal(model.Config with { PaddedVocabSize = 0 }, back.Config with { PaddedVocabSize = 0 });
        foreach (var p in model.Parameters.Parameters)
            Assert.Equal(_cpu.ToArray<float>(p.Value), _cpu.ToArray<float>(back.Parameters.Parameters.Single(x => x.Name == p.Name).Value));
        // The file holds every norm weight w as it was written: Tessera stores w and applies 1 + w, as transformers does.
        using var file = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors"));
        foreach (var name in weights.Keys.Where(n => n.EndsWith("norm.weight", StringComparison.Ordinal)))
            Assert.Equal(weights[name].Data, file.ReadAsSingle(name));
        Assert.False(file.Contains("lm_head.weight"));   // tied
    }

    [Theory]
    [InlineData("\"hidden_activation\":\"gelu_pytorch_tanh\"", "\"hidden_activation\":\"silu\"", "'hidden_activation': 'silu' is not supported")]
    [InlineData("\"attn_logit_softcapping\":5", "\"attn_logit_softcapping\":-5", "'attn_logit_softcapping': must be a positive number or null")]
    [InlineData("\"model_type\":\"gemma2\"", "\"model_type\":\"gemma3\"", "'gemma3' is the multimodal Gemma 3")]
    [InlineData("\"attention_bias\":false", "\"attention_bias\":true", "'attention_bias': true is not supported")]
    [InlineData("\"rope_theta\":10000", "\"rope_parameters\":{\"full_attention\":{\"rope_theta\":10000}}", "'rope_parameters': per-layer-type RoPE parameters")]
    public void BadGemmaFieldsAreRefusedByName(string from, string to, string expected)
    {
        string json = Config(Gemma2).ToJsonString();
        Assert.Contains(from, json);
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(json.Replace(from, to), "config.json"));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void LayerTypesOutsideTheInterleavedPatternAreRefused()
    {
        var o = Config(Gemma3, layerTypes: true);
        o["layer_types"] = new JsonArray("sliding_attention", "full_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention");
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(o.ToJsonString(), "config.json"));
        Assert.Contains("'layer_types': layer 3 is 'sliding_attention'", e.Message);
    }
}
