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
/// Mixtral (model_type "mixtral") and Qwen3-MoE ("qwen3_moe"): tiny random checkpoints written here as transformers saves them
/// (hand-written config.json with transformers' field names, block_sparse_moe.experts.{j}.w1/w2/w3 or mlp.experts.{j}.*_proj),
/// loaded by Tessera and checked against a reference forward written here from the plain loops of
/// <see cref="PlainLoopReference"/> (modeling_mixtral's and modeling_qwen3_moe's routing: softmax in float, top-k,
/// renormalized always for Mixtral and iff norm_topk_prob for Qwen3-MoE); the export round trip; and the refusals.
/// </summary>
public sealed class MixtureOfExpertsCheckpointTests : IDisposable
{
    // hidden 24, 4 query heads of 8 (Qwen3-MoE: head_dim 8 with q/k norms; Mixtral: 24 / 4 = 6), 2 kv heads, 4 experts, 2 a token.
    private const int Vocab = 50, Hidden = 24, Heads = 4, KvHeads = 2, Layers = 2, Positions = 32, Experts = 4, TopK = 2;
    private const int MixtralFfn = 40, QwenDenseFfn = 56, QwenExpertFfn = 20;
    private const double Eps = 1e-6, Theta = 1000000;

    private readonly CpuBackend _cpu = new(1);
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "tessera-moe-" + Guid.NewGuid().ToString("N"));

    public MixtureOfExpertsCheckpointTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static bool IsQwen(string type) => type == "qwen3_moe";

    private static int HeadDim(string type) => IsQwen(type) ? 8 : Hidden / Heads;

    private static int ExpertFfn(string type) => IsQwen(type) ? QwenExpertFfn : MixtralFfn;

    /// <summary>config.json as transformers writes MixtralConfig / Qwen3MoeConfig (the fields Tessera reads, and some it ignores).</summary>
    private static JsonObject ConfigJson(string type, bool normTopK = false)
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(IsQwen(type) ? "Qwen3MoeForCausalLM" : "MixtralForCausalLM"),
            ["model_type"] = type,
            ["vocab_size"] = Vocab,
            ["max_position_embeddings"] = Positions,
            ["hidden_size"] = Hidden,
            ["intermediate_size"] = IsQwen(type) ? QwenDenseFfn : MixtralFfn,
            ["num_hidden_layers"] = Layers,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KvHeads,
            ["hidden_act"] = "silu",
            ["rms_norm_eps"] = Eps,
            ["rope_theta"] = Theta,
            ["tie_word_embeddings"] = false,
            ["num_experts_per_tok"] = TopK,
            ["output_router_logits"] = false,
            ["router_aux_loss_coef"] = 0.001,
            ["torch_dtype"] = "float32",
        };
        if (IsQwen(type))
        {
            o["head_dim"] = HeadDim(type);
            o["num_experts"] = Experts;
            o["moe_intermediate_size"] = QwenExpertFfn;
            o["norm_topk_prob"] = normTopK;
            o["decoder_sparse_step"] = 1;
            o["mlp_only_layers"] = new JsonArray();
            o["attention_bias"] = false;
            o["use_sliding_window"] = false;
            o["sliding_window"] = null;
            o["max_window_layers"] = Layers;
        }
        else
        {
            o["num_local_experts"] = Experts;
            o["sliding_window"] = null;
            o["router_jitter_noise"] = 0.0;
        }
        return o;
    }

    /// <summary>Hugging Face's tensors of a random model (F32 values; norm weights around 1, the rest O(0.3)).</summary>
    private static Dictionary<string, (int[] Shape, float[] Data)> RandomWeights(string type, int seed)
    {
        var rng = new Random(seed);
        var w = new Dictionary<string, (int[] Shape, float[] Data)>(StringComparer.Ordinal);
        void Add(string name, bool norm, params int[] shape) => TinyHuggingFaceCheckpoint.AddRandom(w, rng, name, norm, shape);
        int d = HeadDim(type), f = ExpertFfn(type);
        Add("model.embed_tokens.weight", false, Vocab, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", true, Hidden);
            Add(p + "self_attn.q_proj.weight", false, Heads * d, Hidden);
            Add(p + "self_attn.k_proj.weight", false, KvHeads * d, Hidden);
            Add(p + "self_attn.v_proj.weight", false, KvHeads * d, Hidden);
            if (IsQwen(type))
            {
                Add(p + "self_attn.q_norm.weight", true, d);
                Add(p + "self_attn.k_norm.weight", true, d);
            }
            Add(p + "self_attn.o_proj.weight", false, Hidden, Heads * d);
            Add(p + "post_attention_layernorm.weight", true, Hidden);
            string moe = IsQwen(type) ? p + "mlp." : p + "block_sparse_moe.";
            Add(moe + "gate.weight", false, Experts, Hidden);
            for (int j = 0; j < Experts; j++)
            {
                var (g, u, down) = Names(type, j);
                Add(p + g, false, f, Hidden);
                Add(p + u, false, f, Hidden);
                Add(p + down, false, Hidden, f);
            }
        }
        Add("model.norm.weight", true, Hidden);
        Add("lm_head.weight", false, Vocab, Hidden);
        return w;
    }

    /// <summary>Expert j's gate, up and down tensor names after "model.layers.{l}.".</summary>
    private static (string Gate, string Up, string Down) Names(string type, int j) => IsQwen(type)
        ? ($"mlp.experts.{j}.gate_proj.weight", $"mlp.experts.{j}.up_proj.weight", $"mlp.experts.{j}.down_proj.weight")
        : ($"block_sparse_moe.experts.{j}.w1.weight", $"block_sparse_moe.experts.{j}.w3.weight", $"block_sparse_moe.experts.{j}.w2.weight");

    private string WriteCheckpoint(string name, JsonObject config, Dictionary<string, (int[] Shape, float[] Data)> weights) =>
        TinyHuggingFaceCheckpoint.Write(Path.Combine(_dir, name), config.ToJsonString(), weights);

    // ---- The reference: the models' forward as transformers computes it, in double, with plain loops. ----

    /// <summary>Logits (T, V) of one sequence.</summary>
    private static double[][] ReferenceForward(string type, bool normalize, Dictionary<string, (int[] Shape, float[] Data)> w, int[] tokens)
    {
        int t = tokens.Length, d = HeadDim(type), ffn = ExpertFfn(type);
        var x = Embed(w["model.embed_tokens.weight"].Data, tokens, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            float[] W(string n) => w[$"model.layers.{l}.{n}"].Data;
            var q = new double[t][]; var k = new double[t][]; var v = new double[t][];
            for (int p = 0; p < t; p++)
            {
                var h = RmsNorm(x[p], W("input_layernorm.weight"), Eps);
                q[p] = MatVec(W("self_attn.q_proj.weight"), h, Heads * d);
                k[p] = MatVec(W("self_attn.k_proj.weight"), h, KvHeads * d);
                v[p] = MatVec(W("self_attn.v_proj.weight"), h, KvHeads * d);
                for (int hd = 0; hd < Heads; hd++)
                {
                    if (IsQwen(type)) RmsNorm(q[p], W("self_attn.q_norm.weight"), Eps, hd * d, d).CopyTo(q[p], hd * d);
                    Rope(q[p], hd * d, d, p, Theta);
                }
                for (int hd = 0; hd < KvHeads; hd++)
                {
                    if (IsQwen(type)) RmsNorm(k[p], W("self_attn.k_norm.weight"), Eps, hd * d, d).CopyTo(k[p], hd * d);
                    Rope(k[p], hd * d, d, p, Theta);
                }
            }
            for (int p = 0; p < t; p++)
            {
                var o = MatVec(W("self_attn.o_proj.weight"), CausalAttention(q[p], k, v, p, Heads, KvHeads, d), Hidden);
                for (int i = 0; i < Hidden; i++) x[p][i] += o[i];
            }
            for (int p = 0; p < t; p++)
            {
                // The sparse block: softmax over the router's logits, the top k (ties cannot occur at random weights), their
                // weights renormalized (Mixtral; Qwen3-MoE with norm_topk_prob), the weighted sum of the experts' SwiGLUs.
                var h = RmsNorm(x[p], W("post_attention_layernorm.weight"), Eps);
                var z = MatVec(W(IsQwen(type) ? "mlp.gate.weight" : "block_sparse_moe.gate.weight"), h, Experts);
                double zmax = z.Max();
                var prob = z.Select(s => Math.Exp(s - zmax)).ToArray();
                double total = prob.Sum();
                for (int e = 0; e < Experts; e++) prob[e] /= total;
                var top = Enumerable.Range(0, Experts).OrderByDescending(e => prob[e]).Take(TopK).ToArray();
                double norm = normalize ? top.Sum(e => prob[e]) : 1;
                foreach (int e in top)
                {
                    var (gn, un, dn) = Names(type, e);
                    var down = SwiGlu(W(gn), W(un), W(dn), h, ffn, Hidden);
                    for (int i = 0; i < Hidden; i++) x[p][i] += prob[e] / norm * down[i];
                }
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

    [Theory]
    [InlineData("mixtral", false)]
    [InlineData("qwen3_moe", false)]   // norm_topk_prob false: the weights are the router's probabilities
    [InlineData("qwen3_moe", true)]
    public void CpuF64ForwardOfALoadedCheckpointMatchesAPlainLoopReference(string type, bool normTopK)
    {
        const int seed = 5101;   // weights and tokens
        var weights = RandomWeights(type, seed);
        var model = PretrainedModel.Load(WriteCheckpoint($"{type}-{normTopK}", ConfigJson(type, normTopK), weights), _cpu, DType.F64);
        bool normalize = !IsQwen(type) || normTopK;
        Assert.True(model.Config is { Experts: Experts, ExpertsPerToken: TopK, RouterAuxLossCoefficient: 0 });
        Assert.Equal(normalize, model.Config.NormalizeExpertWeights);
        Assert.Equal(ExpertFfn(type), model.Config.EffectiveExpertHidden);
        Assert.Equal(IsQwen(type), model.Config.QkNorm);
        var rng = new Random(seed + 1);
        var tokens = Enumerable.Range(0, 11).Select(_ => rng.Next(Vocab)).ToArray();
        var expected = ReferenceForward(type, normalize, weights, tokens).SelectMany(r => r).ToArray();
        var actual = TesseraLogits(model, tokens);
        // Both sides compute in double from the same F32 weights; they differ in summation order and exp/sqrt/cos rounding,
        // ~1e-15 relative per operation through two layers: 1e-10 leaves a wide margin, while a wrong expert, weight or
        // name mapping moves the logits by O(1e-2) or more.
        double error = NumericAssert.MaxRelativeError(expected, actual);
        Assert.True(error <= 1e-10, $"{type}: max relative difference {error:E2} (seed {seed})");
        if (IsQwen(type))
        {
            // And the other setting of norm_topk_prob is another model: the flag is read.
            var other = ReferenceForward(type, !normalize, weights, tokens).SelectMany(r => r).ToArray();
            Assert.True(NumericAssert.MaxRelativeError(other, actual) > 1e-3, $"norm_topk_prob made no difference (seed {seed})");
        }
    }

    [Theory]
    [InlineData("mixtral")]
    [InlineData("qwen3_moe")]
    public void ExportThenImportGivesTheSameWeightsBitForBitAndTheSameLogits(string type)
    {
        const int seed = 5201;
        var weights = RandomWeights(type, seed);
        var model = PretrainedModel.Load(WriteCheckpoint("source-" + type, ConfigJson(type, normTopK: true), weights), _cpu, DType.F32);
        var dir = Path.Combine(_dir, "exported-" + type);
        HuggingFaceExport.Write(dir, model);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal(type, json["model_type"]!.GetValue<string>());
        Assert.Equal(Experts, json[IsQwen(type) ? "num_experts" : "num_local_experts"]!.GetValue<int>());
        Assert.Equal(TopK, json["num_experts_per_tok"]!.GetValue<int>());
        var back = PretrainedModel.Load(dir, _cpu, DType.F32);
        Assert.Equal(model.Config with { PaddedVocabSize = 0 }, back.Config with { PaddedVocabSize = 0 });
        foreach (var p in model.Parameters.Parameters)
            Assert.Equal(_cpu.ToArray<float>(p.Value), _cpu.ToArray<float>(back.Parameters.Parameters.Single(x => x.Name == p.Name).Value));
        var tokens = new[] { 3, 14, 15, 9, 26, 5, 35 };
        Assert.Equal(TesseraLogits(model, tokens), TesseraLogits(back, tokens));   // the same weights: the same logits, bit for bit
        using var file = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors"));
        var (_, _, down) = Names(type, 3);
        Assert.Equal(weights["model.layers.1." + down].Data, file.ReadAsSingle("model.layers.1." + down));
    }

    [Fact]
    public void TheLoadBalancingLossIsOnOnlyWithOutputRouterLogits()
    {
        foreach (var type in new[] { "mixtral", "qwen3_moe" })
        {
            Assert.Equal(0, HuggingFaceConfig.Parse(ConfigJson(type).ToJsonString(), "config.json").RouterAuxLossCoefficient);
            var on = ConfigJson(type);
            on["output_router_logits"] = true;
            on["router_aux_loss_coef"] = 0.02;
            var config = HuggingFaceConfig.Parse(on.ToJsonString(), "config.json");
            Assert.Equal(0.02, config.RouterAuxLossCoefficient);
            // And it is written back as transformers reads it.
            var written = JsonNode.Parse(HuggingFaceConfig.ToJson(config))!;
            Assert.True(written["output_router_logits"]!.GetValue<bool>());
            Assert.Equal(0.02, written["router_aux_loss_coef"]!.GetValue<double>());
        }
    }

    [Theory]
    [InlineData("qwen3_moe", "decoder_sparse_step", "2", "field 'decoder_sparse_step': 2 is not supported")]
    [InlineData("qwen3_moe", "mlp_only_layers", "[1]", "field 'mlp_only_layers': [1] is not supported")]
    [InlineData("qwen3_moe", "num_experts_per_tok", "5", "ExpertsPerToken (5) must be in [1, Experts = 4]")]
    [InlineData("qwen3_moe", "moe_intermediate_size", "null", "field 'moe_intermediate_size': is missing")]
    [InlineData("mixtral", "num_experts_per_tok", "5", "ExpertsPerToken (5) must be in [1, Experts = 4]")]
    [InlineData("mixtral", "router_jitter_noise", "0.1", "field 'router_jitter_noise': 0.1 is not supported")]
    [InlineData("mixtral", "num_local_experts", "null", "field 'num_local_experts': is missing")]
    public void UnsupportedOrInconsistentFieldsAreRefusedByName(string type, string field, string value, string expected)
    {
        var o = ConfigJson(type);
        o[field] = JsonNode.Parse(value);
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(o.ToJsonString(), "config.json"));
        Assert.Contains(expected, e.Message);
    }

    [Theory]
    [InlineData("mixtral")]
    [InlineData("qwen3_moe")]
    public void AMissingExpertTensorIsNamed(string type)
    {
        var weights = RandomWeights(type, 5301);
        var (_, up, _) = Names(type, 2);
        weights.Remove("model.layers.1." + up);
        var dir = WriteCheckpoint("missing-" + type, ConfigJson(type), weights);
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(dir, _cpu, DType.F32));
        Assert.Contains($"tensor 'model.layers.1.{up}' (for Tessera parameter 'blocks.1.mlp.experts.2.up.weight') is missing", e.Message);
    }
}
