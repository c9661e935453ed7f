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
/// Qwen2-MoE (model_type "qwen2_moe": Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): a tiny random checkpoint written here as transformers
/// saves it (hand-written config.json with Qwen2MoeConfig's field names; mlp.gate, mlp.experts.{j}.*_proj,
/// mlp.shared_expert.*_proj, mlp.shared_expert_gate; q/k/v biases), loaded by Tessera and checked against a reference forward
/// written here with <see cref="PlainLoopReference"/> (modeling_qwen2_moe: softmax in float, top-k, renormalized iff
/// norm_topk_prob, plus sigmoid(shared_expert_gate(x)) · shared_expert(x)); the export round trip; and the refusals.
/// </summary>
public sealed class Qwen2MoeCheckpointTests : IDisposable
{
    // hidden 24, 4 query heads of 6, 2 kv heads, 4 experts of 20, 2 a token, a shared expert of 36.
    private const int Vocab = 50, Hidden = 24, Heads = 4, KvHeads = 2, D = Hidden / Heads, Layers = 2, Positions = 32;
    private const int Experts = 4, TopK = 2, DenseFfn = 56, ExpertFfn = 20, SharedFfn = 36;
    private const double Eps = 1e-6, Theta = 1000000;

    private readonly CpuBackend _cpu = new(1);
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "tessera-qwen2moe-" + Guid.NewGuid().ToString("N"));

    public Qwen2MoeCheckpointTests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>config.json as transformers writes Qwen2MoeConfig (the fields Tessera reads, and some it ignores).</summary>
    private static JsonObject ConfigJson(bool normTopK = false) => new()
    {
        ["architectures"] = new JsonArray("Qwen2MoeForCausalLM"),
        ["model_type"] = "qwen2_moe",
        ["vocab_size"] = Vocab,
        ["max_position_embeddings"] = Positions,
        ["hidden_size"] = Hidden,
        ["intermediate_size"] = DenseFfn,
        ["num_hidden_layers"] = Layers,
        ["num_attention_heads"] = Heads,
        ["num_key_value_heads"] = KvHeads,
        ["hidden_act"] = "silu",
        ["rms_norm_eps"] = Eps,
        ["rope_theta"] = Theta,
        ["tie_word_embeddings"] = false,
        ["use_sliding_window"] = false,
        ["sliding_window"] = Positions,
        ["max_window_layers"] = Layers,
        ["attention_dropout"] = 0.0,
        ["decoder_sparse_step"] = 1,
        ["moe_intermediate_size"] = ExpertFfn,
        ["shared_expert_intermediate_size"] = SharedFfn,
        ["num_experts_per_tok"] = TopK,
        ["num_experts"] = Experts,
        ["norm_topk_prob"] = normTopK,
        ["output_router_logits"] = false,
        ["router_aux_loss_coef"] = 0.001,
        ["mlp_only_layers"] = new JsonArray(),
        ["torch_dtype"] = "float32",
    };

    /// <summary>Hugging Face's tensors of a random model (F32 values; norm weights around 1, the rest O(0.3)).</summary>
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
            Add(p + "self_attn.q_proj.weight", false, Heads * D, Hidden);
            Add(p + "self_attn.q_proj.bias", false, Heads * D);
            Add(p + "self_attn.k_proj.weight", false, KvHeads * D, Hidden);
            Add(p + "self_attn.k_proj.bias", false, KvHeads * D);
            Add(p + "self_attn.v_proj.weight", false, KvHeads * D, Hidden);
            Add(p + "self_attn.v_proj.bias", false, KvHeads * D);
            Add(p + "self_attn.o_proj.weight", false, Hidden, Heads * D);
            Add(p + "post_attention_layernorm.weight", true, Hidden);
            Add(p + "mlp.gate.weight", false, Experts, Hidden);
            for (int j = 0; j < Experts; j++)
            {
                Add(p + $"mlp.experts.{j}.gate_proj.weight", false, ExpertFfn, Hidden);
                Add(p + $"mlp.experts.{j}.up_proj.weight", false, ExpertFfn, Hidden);
                Add(p + $"mlp.experts.{j}.down_proj.weight", false, Hidden, ExpertFfn);
            }
            Add(p + "mlp.shared_expert.gate_proj.weight", false, SharedFfn, Hidden);
            Add(p + "mlp.shared_expert.up_proj.weight", false, SharedFfn, Hidden);
            Add(p + "mlp.shared_expert.down_proj.weight", false, Hidden, SharedFfn);
            Add(p + "mlp.shared_expert_gate.weight", false, 1, Hidden);
        }
        Add("model.norm.weight", true, Hidden);
        Add("lm_head.weight", false, Vocab, Hidden);
        return w;
    }

    private string WriteCheckpoint(string name, JsonObject config, Dictionary<string, (int[] Shape, float[] Data)> weights) =>
        TinyHuggingFaceCheckpoint.Write(Path.Combine(_dir, name), config.ToJsonString(), weights);

    // ---- The reference: Qwen2-MoE's forward as transformers computes it, in double, with plain loops. ----

    /// <summary>The SwiGLU MLP of one token whose gate_proj, up_proj and down_proj follow <paramref name="prefix"/>.</summary>
    private static double[] SwiGlu(Func<string, float[]> w, string prefix, double[] h, int f) =>
        PlainLoopReference.SwiGlu(w(prefix + "gate_proj.weight"), w(prefix + "up_proj.weight"), w(prefix + "down_proj.weight"), h, f, Hidden);

    /// <summary>Logits (T, V) of one sequence; <paramref name="shared"/> false leaves the shared expert out (to show it matters).</summary>
    private static double[][] ReferenceForward(bool normalize, Dictionary<string, (int[] Shape, float[] Data)> w, int[] tokens, bool shared = true)
    {
        int t = tokens.Length;
        var x = Embed(w["model.embed_tokens.weight"].Data, tokens, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            float[] W(string n) => w[$"model.layers.{l}.{n}"].Data;
            var q = new double[t][]; var k = new double[t][]; var v = new double[t][];
            for (int p = 0; p < t; p++)
            {
                var h = RmsNorm(x[p], W("input_layernorm.weight"), Eps);
                q[p] = MatVec(W("self_attn.q_proj.weight"), h, Heads * D, W("self_attn.q_proj.bias"));
                k[p] = MatVec(W("self_attn.k_proj.weight"), h, KvHeads * D, W("self_attn.k_proj.bias"));
                v[p] = MatVec(W("self_attn.v_proj.weight"), h, KvHeads * D, W("self_attn.v_proj.bias"));
                for (int hd = 0; hd < Heads; hd++) Rope(q[p], hd * D, D, p, Theta);
                for (int hd = 0; hd < KvHeads; hd++) Rope(k[p], hd * D, D, p, Theta);
            }
            for (int p = 0; p < t; p++)
            {
                var o = MatVec(W("self_attn.o_proj.weight"), CausalAttention(q[p], k, v, p, Heads, KvHeads, D), Hidden);
                for (int i = 0; i < Hidden; i++) x[p][i] += o[i];
            }
            for (int p = 0; p < t; p++)
            {
                // The sparse block: softmax over the router's logits, the top k (no ties at random weights), renormalized iff
                // norm_topk_prob; then the shared expert, scaled by the sigmoid of its gate's logit, added for every token.
                var h = RmsNorm(x[p], W("post_attention_layernorm.weight"), Eps);
                var z = MatVec(W("mlp.gate.weight"), h, Experts);
                double zmax = z.Max();
                var prob = z.Select(s => Math.Exp(s - zmax)).ToArray();
                double total = prob.Sum();
                for (int e = 0; e < Experts; e++) prob[e] /= total;
                var top = Enumerable.Range(0, Experts).OrderByDescending(e => prob[e]).Take(TopK).ToArray();
                double norm = normalize ? top.Sum(e => prob[e]) : 1;
                var y = new double[Hidden];
                foreach (int e in top)
                {
                    var down = SwiGlu(W, $"mlp.experts.{e}.", h, ExpertFfn);
                    for (int i = 0; i < Hidden; i++) y[i] += prob[e] / norm * down[i];
                }
                if (shared)
                {
                    double gate = 1 / (1 + Math.Exp(-MatVec(W("mlp.shared_expert_gate.weight"), h, 1)[0]));
                    var s = SwiGlu(W, "mlp.shared_expert.", h, SharedFfn);
                    for (int i = 0; i < Hidden; i++) y[i] += gate * s[i];
                }
                for (int i = 0; i < Hidden; i++) x[p][i] += y[i];
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
    [InlineData(false)]   // norm_topk_prob false, as Qwen1.5-MoE-A2.7B and Qwen2-57B-A14B ship
    [InlineData(true)]
    public void CpuF64ForwardOfALoadedCheckpointMatchesAPlainLoopReference(bool normTopK)
    {
        const int seed = 6501;   // weights and tokens
        var weights = RandomWeights(seed);
        var model = PretrainedModel.Load(WriteCheckpoint($"qwen2moe-{normTopK}", ConfigJson(normTopK), weights), _cpu, DType.F64);
        Assert.True(model.Config is { Experts: Experts, ExpertsPerToken: TopK, ExpertHidden: ExpertFfn, SharedExpertHidden: SharedFfn,
            SharedExpertGated: true, AttentionBias: true, QkNorm: false, RouterAuxLossCoefficient: 0, Hidden: DenseFfn });
        Assert.Equal(normTopK, model.Config.NormalizeExpertWeights);
        var rng = new Random(seed + 1);
        var tokens = Enumerable.Range(0, 11).Select(_ => rng.Next(Vocab)).ToArray();
        var expected = ReferenceForward(normTopK, weights, tokens).SelectMany(r => r).ToArray();
        var actual = TesseraLogits(model, tokens);
        // Both sides compute in double from the same F32 weights; they differ in summation order and exp/sqrt/cos rounding,
        // ~1e-15 relative per operation through two layers: 1e-10 leaves a wide margin, while a wrong expert, a missing
        // bias, gate or name mapping moves the logits by O(1e-2) or more.
        double error = NumericAssert.MaxRelativeError(expected, actual);
        Assert.True(error <= 1e-10, $"max relative difference {error:E2} (seed {seed})");
        // The shared expert is part of the model: leaving it out of the reference is another model.
        var withoutShared = ReferenceForward(normTopK, weights, tokens, shared: false).SelectMany(r => r).ToArray();
        Assert.True(NumericAssert.MaxRelativeError(withoutShared, actual) > 1e-3, $"the shared expert made no difference (seed {seed})");
    }

    [Fact]
    public void ExportThenImportGivesTheSameWeightsBitForBitAndTheSameLogits()
    {
        const int seed = 6601;
        var weights = RandomWeights(seed);
        var model = PretrainedModel.Load(WriteCheckpoint("source", ConfigJson(), weights), _cpu, DType.F32);
        var dir = Path.Combine(_dir, "exported");
        HuggingFaceExport.Write(dir, model);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal("qwen2_moe", json["model_type"]!.GetValue<string>());
        Assert.Equal("Qwen2MoeForCausalLM", json["architectures"]![0]!.GetValue<string>());
        Assert.Equal(Experts, json["num_experts"]!.GetValue<int>());
        Assert.Equal(ExpertFfn, json["moe_intermediate_size"]!.GetValue<int>());
        Assert.Equal(SharedFfn, json["shared_expert_intermediate_size"]!.GetValue<int>());
        Assert.Equal(DenseFfn, json["intermediate_size"]!.GetValue<int>());
        Assert.False(json["norm_topk_prob"]!.GetValue<bool>());
        Assert.Equal(1, json["decoder_sparse_step"]!.GetValue<int>());
        Assert.Empty(json["mlp_only_layers"]!.AsArray());
        var back = PretrainedModel.Load(dir, _cpu, DType.F32);
        Assert.Equal(model.Config with { PaddedVocabSize = 0 }, back.Config with { PaddedVocabSize = 0 });
        foreach (var p in model.Parameters.Parameters)
            Assert.Equal(_cpu.ToArray<float>(p.Value), _cpu.ToArray<float>(back.Parameters.Parameters.Single(x => x.Name == p.Name).Value));
        var tokens = new[] { 3, 14, 15, 9, 26, 5, 35 };
        Assert.Equal(TesseraLogits(model, tokens), TesseraLogits(back, tokens));   // the same weights: the same logits, bit for bit
        using var file = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors"));
        foreach (var name in new[] { "model.layers.1.mlp.shared_expert.down_proj.weight", "model.layers.0.mlp.shared_expert_gate.weight",
                     "model.layers.1.mlp.experts.3.up_proj.weight", "model.layers.0.self_attn.k_proj.bias" })
            Assert.Equal(weights[name].Data, file.ReadAsSingle(name));
    }

    [Fact]
    public void TheLoadBalancingLossIsOnOnlyWithOutputRouterLogits()
    {
        Assert.Equal(0, HuggingFaceConfig.Parse(ConfigJson().ToJsonString(), "config.json").RouterAuxLossCoefficient);
        var on = ConfigJson();
        on["output_router_logits"] = true;
        on["router_aux_loss_coef"] = 0.02;
        var config = HuggingFaceConfig.Parse(on.ToJsonString(), "config.json");
        Assert.Equal(0.02, config.RouterAuxLossCoefficient);
        var written = JsonNode.Parse(HuggingFaceConfig.ToJson(config))!;
        Assert.True(written["output_router_logits"]!.GetValue<bool>());
        Assert.Equal(0.02, written["router_aux_loss_coef"]!.GetValue<double>());
    }

    [Theory]
    [InlineData("shared_expert_intermediate_size", "null", "field 'shared_expert_intermediate_size': is missing")]
    [InlineData("shared_expert_intermediate_size", "0", "field 'shared_expert_intermediate_size': must be positive, got 0")]
    [InlineData("decoder_sparse_step", "2", "field 'decoder_sparse_step': 2 is not supported")]
    [InlineData("mlp_only_layers", "[0]", "field 'mlp_only_layers': [0] is not supported")]
    [InlineData("mlp_only_layers", "3", "field 'mlp_only_layers': must be a list of layer indices")]
    [InlineData("use_sliding_window", "true", "field 'use_sliding_window': true is not supported")]
    [InlineData("num_experts_per_tok", "5", "ExpertsPerToken (5) must be in [1, Experts = 4]")]
    [InlineData("moe_intermediate_size", "null", "field 'moe_intermediate_size': is missing")]
    [InlineData("num_experts", "null", "field 'num_experts': is missing")]
    public void UnsupportedOrInconsistentFieldsAreRefusedByName(string field, string value, string expected)
    {
        var o = ConfigJson();
        o[field] = JsonNode.Parse(value);
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(o.ToJsonString(), "config.json"));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void AMissingSharedExpertTensorIsNamed()
    {
        var weights = RandomWeights(6701);
        weights.Remove("model.layers.1.mlp.shared_expert_gate.weight");
        var dir = WriteCheckpoint("missing", ConfigJson(), weights);
        var e = Assert.Throws<HuggingFaceFormatException>(() => PretrainedModel.Load(dir, _cpu, DType.F32));
        Assert.Contains("tensor 'model.layers.1.mlp.shared_expert_gate.weight' (for Tessera parameter 'blocks.1.mlp.shared_expert_gate.weight') is missing", e.Message);
    }

    [Fact]
    public void ASharedExpertExportsOnlyAsQwen2Moe()
    {
        var qwen3 = ModelPresets.Get("qwen3-moe-debug") with { SharedExpertHidden = 40, SharedExpertGated = true };
        var e = Assert.Throws<ArgumentException>(() => HuggingFaceConfig.ToJson(qwen3));
        Assert.Contains("cannot be exported as model_type 'qwen3_moe' (only qwen2_moe has a shared expert", e.Message);
        var without = ModelPresets.Get("qwen2-moe-debug") with { SharedExpertHidden = 0, SharedExpertGated = false };
        var w = Assert.Throws<ArgumentException>(() => HuggingFaceConfig.ToJson(without));
        Assert.Contains("SharedExpertHidden = 0 cannot be exported as model_type 'qwen2_moe'", w.Message);
    }
}
