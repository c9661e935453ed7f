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
/// Phi-3 / Phi-4 (model_type "phi3"): tiny random checkpoints written here as transformers saves them (config.json with
/// Phi3Config's field names; q, k, v fused in self_attn.qkv_proj and gate, up in mlp.gate_up_proj), loaded by Tessera and
/// checked against a reference forward written in this file from modeling_phi3's formulas with
/// <see cref="PlainLoopReference"/>; the export round trip (fused names written back); refusals of what Tessera does not
/// implement, naming the field.
/// </summary>
public sealed class Phi3Tests : IDisposable
{
    // hidden 32, 4 query heads of 8, 2 key/value heads, MLP 48, 2 layers.
    private const int Vocab = 60, Hidden = 32, Heads = 4, KvHeads = 2, Mlp = 48, Layers = 2, Positions = 32;
    private const double Eps = 1e-5, Theta = 10000;

    private readonly CpuBackend _cpu = new(1);
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "tessera-phi3-" + Guid.NewGuid().ToString("N"));

    public Phi3Tests() => Directory.CreateDirectory(_dir);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// What a test varies: the window (0: none), a tied head, the head size, partial_rotary_factor, and LongRoPE's factors with
    /// its original context (null: no rope_scaling).
    /// </summary>
    private sealed record Variant(int Window = 0, bool Tied = false, int HeadDim = 8, double Partial = 1.0,
        double[]? ShortFactor = null, double[]? LongFactor = null, int Original = 8)
    {
        public int Rotary => (int)(HeadDim * Partial);
    }

    // Phi-4-mini in small: heads of 8 of which 6 rotate, LongRoPE (3 factors each: Phi3Config checks the lists against
    // hidden_size / num_attention_heads x partial_rotary_factor / 2) from an original context of 8 of the 32.
    private static readonly double[] Short = [1.0, 1.3, 2.2], Long = [1.0, 2.9, 13.0];
    private static readonly Variant Phi4Mini = new(Tied: true, Partial: 0.75, ShortFactor: Short, LongFactor: Long);

    private static JsonObject ConfigJson(Variant v) => new()
    {
        ["architectures"] = new JsonArray("Phi3ForCausalLM"),
        ["model_type"] = "phi3",
        ["vocab_size"] = Vocab,
        ["max_position_embeddings"] = Positions,
        ["original_max_position_embeddings"] = v.ShortFactor is null ? Positions : v.Original,
        ["head_dim"] = v.HeadDim,
        ["hidden_size"] = Hidden,
        ["intermediate_size"] = Mlp,
        ["num_hidden_layers"] = Layers,
        ["num_attention_heads"] = Heads,
        ["num_key_value_heads"] = KvHeads,
        ["hidden_act"] = "silu",
        ["rms_norm_eps"] = Eps,
        ["rope_theta"] = Theta,
        ["rope_scaling"] = v.ShortFactor is null ? null : new JsonObject
        {
            ["type"] = "longrope",
            ["short_factor"] = new JsonArray(v.ShortFactor.Select(x => (JsonNode)x).ToArray()),
            ["long_factor"] = new JsonArray(v.LongFactor!.Select(x => (JsonNode)x).ToArray()),
        },
        ["partial_rotary_factor"] = v.Partial,
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
    private static Dictionary<string, (int[] Shape, float[] Data)> RandomWeights(int seed, bool tied = false, int headDim = 8)
    {
        var rng = new Random(seed);
        var w = new Dictionary<string, (int[] Shape, float[] Data)>(StringComparer.Ordinal);
        void Add(string name, bool norm, params int[] shape) => TinyHuggingFaceCheckpoint.AddRandom(w, rng, name, norm, shape);
        Add("model.embed_tokens.weight", false, Vocab, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", true, Hidden);
            Add(p + "self_attn.qkv_proj.weight", false, (Heads + 2 * KvHeads) * headDim, Hidden);
            Add(p + "self_attn.o_proj.weight", false, Hidden, Heads * headDim);
            Add(p + "post_attention_layernorm.weight", true, Hidden);
            Add(p + "mlp.gate_up_proj.weight", false, 2 * Mlp, Hidden);
            Add(p + "mlp.down_proj.weight", false, Hidden, Mlp);
        }
        Add("model.norm.weight", true, Hidden);
        if (!tied) Add("lm_head.weight", false, Vocab, Hidden);
        return w;
    }

    private string WriteCheckpoint(string name, Dictionary<string, (int[] Shape, float[] Data)> weights, JsonObject config) =>
        TinyHuggingFaceCheckpoint.Write(Path.Combine(_dir, name), config.ToJsonString(), weights);

    // ---- The reference: Phi-3's forward as transformers' modeling_phi3 computes it, in double, with plain loops. ----

    /// <summary>
    /// apply_rotary_pos_emb on head <paramref name="h"/> at position <paramref name="pos"/> of a forward over
    /// <paramref name="length"/> positions: the first R channels rotate in pairs (i, i + R/2) (rotate_half over q_rot), the rest
    /// pass through (q_pass); LongRoPE's frequencies 1 / (factor_i theta^(2i/R)) with the long factors when the forward reaches
    /// past the original context (longrope_frequency_update: max position + 1 > original), and cos and sin times
    /// sqrt(1 + ln(max / original) / ln(original)).
    /// </summary>
    private static void Rope(double[] heads, int h, int pos, int length, Variant v)
    {
        int r = v.Rotary;
        double scale = 1;
        double[]? factors = null;
        if (v.ShortFactor is not null)
        {
            factors = length > v.Original ? v.LongFactor! : v.ShortFactor;
            double s = (double)Positions / v.Original;
            scale = s <= 1 ? 1 : Math.Sqrt(1 + Math.Log(s) / Math.Log(v.Original));
        }
        PlainLoopReference.Rope(heads, h * v.HeadDim, r, i => pos * (1.0 / ((factors?[i] ?? 1.0) * Math.Pow(Theta, 2.0 * i / r))), scale);
    }

    /// <summary>Logits (T, V) of one sequence.</summary>
    private static double[][] ReferenceForward(Dictionary<string, (int[] Shape, float[] Data)> w, int[] tokens, Variant variant)
    {
        int t = tokens.Length, headDim = variant.HeadDim, qRows = Heads * headDim, kvRows = KvHeads * headDim;
        var x = Embed(w["model.embed_tokens.weight"].Data, tokens, Hidden);
        for (int l = 0; l < Layers; l++)
        {
            float[] W(string n) => w[$"model.layers.{l}.{n}.weight"].Data;
            var q = new double[t][]; var k = new double[t][]; var v = new double[t][];
            for (int p = 0; p < t; p++)
            {
                var h = RmsNorm(x[p], W("input_layernorm"), Eps);
                // qkv_proj's rows: the query heads, then the key heads, then the value heads (modeling_phi3's query_pos split).
                q[p] = MatVec(W("self_attn.qkv_proj"), h, qRows);
                k[p] = MatVec(W("self_attn.qkv_proj"), h, kvRows, from: qRows);
                v[p] = MatVec(W("self_attn.qkv_proj"), h, kvRows, from: qRows + kvRows);
                for (int hd = 0; hd < Heads; hd++) Rope(q[p], hd, p, t, variant);
                for (int hd = 0; hd < KvHeads; hd++) Rope(k[p], hd, p, t, variant);
            }
            for (int p = 0; p < t; p++)
            {
                // Causal, and with sliding_window W the keys j with p - j < W (transformers' sliding-window mask).
                var att = CausalAttention(q[p], k, v, p, Heads, KvHeads, headDim, variant.Window);
                var o = MatVec(W("self_attn.o_proj"), att, Hidden);
                for (int i = 0; i < Hidden; i++) x[p][i] += o[i];
            }
            for (int p = 0; p < t; p++)
            {
                var h = RmsNorm(x[p], W("post_attention_layernorm"), Eps);
                // gate_up_proj's product chunked in two along the features: gate first, then up.
                var gate = MatVec(W("mlp.gate_up_proj"), h, Mlp);
                var up = MatVec(W("mlp.gate_up_proj"), h, Mlp, from: Mlp);
                var d = MatVec(W("mlp.down_proj"), SwiGlu(gate, up), Hidden);
                for (int i = 0; i < Hidden; i++) x[p][i] += d[i];
            }
        }
        var head = variant.Tied ? w["model.embed_tokens.weight"].Data : w["lm_head.weight"].Data;
        return x.Select(row => MatVec(head, RmsNorm(row, w["model.norm.weight"].Data, Eps), Vocab)).ToArray();
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
    [InlineData("rope_scaling", "{\"rope_type\":\"fancy\"}", "'rope_scaling.rope_type': 'fancy' is not supported")]
    [InlineData("hidden_act", "\"gelu\"", "'hidden_act': 'gelu' is not supported")]
    [InlineData("sliding_window", "-3", "'sliding_window': must be positive or null")]
    [InlineData("rope_scaling", "{\"type\":\"su\",\"short_factor\":[1,1,1,1],\"long_factor\":[2,2]}", "long_factor has 2 values and short_factor 4")]
    public void UnsupportedPhi3FieldsAreRefusedByName(string field, string value, string expected)
    {
        var config = ConfigJson(new Variant());
        config[field] = JsonNode.Parse(value);
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(config.ToJsonString(), "config.json"));
        Assert.Contains(expected, e.Message);
    }

    // ---- Phi-4-mini: partial rotary embedding and LongRoPE ----

    private Model LoadVariant(string name, Variant v, Dictionary<string, (int[] Shape, float[] Data)> weights, DType dtype = DType.F64) =>
        PretrainedModel.Load(WriteCheckpoint(name, weights, ConfigJson(v)), _cpu, dtype);

    private static int[] RandomTokens(int seed, int count)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => rng.Next(Vocab)).ToArray();
    }

    [Theory]
    [InlineData(8)]    // = original_max_position_embeddings: the short factors
    [InlineData(9)]    // one past it: every position of the forward on the long factors
    [InlineData(5)]
    [InlineData(20)]
    public void Phi4MiniForwardMatchesThePlainLoopReferenceOnBothSidesOfTheOriginalContext(int length)
    {
        int seed = 4600 + length;   // weights and tokens
        var weights = RandomWeights(seed, tied: true);
        var model = LoadVariant($"phi4-{length}", Phi4Mini, weights);
        Assert.True(model.Config is { PartialRotaryFactor: 0.75, RotaryDimensions: 6, HeadSize: 8, TiedEmbeddings: true });
        Assert.Equal(RopeScalingType.LongRope, model.Config.RopeScaling!.Type);
        Assert.Equal(8, model.Config.RopeScaling.OriginalMaxPositions);
        var tokens = RandomTokens(seed + 1, length);
        var expected = ReferenceForward(weights, tokens, Phi4Mini).SelectMany(r => r).ToArray();
        double error = NumericAssert.MaxRelativeError(expected, TesseraLogits(model, tokens));
        Assert.True(error <= 1e-10, $"max relative difference {error:E2} at length {length} (seed {seed})");
    }

    [Fact]
    public void TheLongFactorsTakeOverForTheWholeForwardPastTheOriginalContext()
    {
        const int seed = 4701;
        var weights = RandomWeights(seed, tied: true);
        var model = LoadVariant("switch", Phi4Mini, weights);
        var tokens = RandomTokens(seed + 1, 9);
        // The first 8 positions' logits of a forward of 8 (short factors) and of 9 (long factors) differ, as transformers'
        // per-forward switch makes them (position 0 alone is the same: angle 0 under either table).
        var eight = TesseraLogits(model, tokens[..8]);
        var nine = TesseraLogits(model, tokens).Take(8 * Vocab).ToArray();
        Assert.True(NumericAssert.MaxRelativeError(eight, nine) > 1e-3, $"the long factors do not change the first 8 positions' logits (seed {seed})");
        var reference = ReferenceForward(weights, tokens, Phi4Mini).Take(8).SelectMany(r => r).ToArray();
        Assert.True(NumericAssert.MaxRelativeError(reference, nine) <= 1e-10, $"seed {seed}");
    }

    [Fact]
    public void PartialRotaryAndLongRopeEachChangeTheLogits()
    {
        const int seed = 4801;
        var weights = RandomWeights(seed, tied: true);
        var tokens = RandomTokens(seed + 1, 12);
        var plain = new Variant(Tied: true);
        var partial = plain with { Partial = 0.75 };
        var baseline = TesseraLogits(LoadVariant("plain", plain, weights), tokens);
        var partialLogits = TesseraLogits(LoadVariant("partial", partial, weights), tokens);
        var longRope = TesseraLogits(LoadVariant("longrope", Phi4Mini, weights), tokens);
        Assert.True(NumericAssert.MaxRelativeError(baseline, partialLogits) > 1e-3, $"partial_rotary_factor 0.75 does not change the logits (seed {seed})");
        Assert.True(NumericAssert.MaxRelativeError(partialLogits, longRope) > 1e-3, $"longrope does not change the logits (seed {seed})");
        Assert.True(NumericAssert.MaxRelativeError(ReferenceForward(weights, tokens, partial).SelectMany(r => r).ToArray(), partialLogits) <= 1e-10, $"seed {seed}");
    }

    [Fact]
    public void GreedyGenerationAcrossTheOriginalContextRecomputesAsTransformersDoes()
    {
        // transformers' Phi3ForCausalLM: the cache holds rotated keys; when generation first passes original_max_position_embeddings
        // (input length >= original + 1 with a past of at most original) it drops the cache and recomputes the whole sequence,
        // so every step's logits are those of a full forward over the sequence so far (short factors up to 8 positions, long
        // past). The expected tokens are the argmax of the reference's last row at every step.
        const int seed = 4901;
        var weights = RandomWeights(seed, tied: true);
        var model = LoadVariant("generate", Phi4Mini, weights);
        var prompt = RandomTokens(seed + 1, 5);
        var expected = new List<int>();
        var history = new List<int>(prompt);
        for (int step = 0; step < 9; step++)
        {
            var last = ReferenceForward(weights, history.ToArray(), Phi4Mini)[^1];
            int next = Array.IndexOf(last, last.Max());
            expected.Add(next);
            history.Add(next);
        }
        var actual = new Tessera.Inference.TextGenerator(model).Generate(prompt, new Tessera.Inference.GenerationOptions { MaxNewTokens = 9 }).ToArray();
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void CachedDecodingThatCrossesTheOriginalContextWithoutRecomputingIsRefused()
    {
        var model = LoadVariant("crossing", Phi4Mini, RandomWeights(5001, tied: true));
        var cache = model.CreateKvCache(batch: 1);
        model.ForwardWithCache(_cpu.FromArray(RandomTokens(5002, 8), 1, 8), cache);
        var e = Assert.Throws<InvalidOperationException>(() => model.ForwardWithCache(_cpu.FromArray(new[] { 3 }, 1, 1), cache));
        Assert.Contains("LongRoPE", e.Message);
        Assert.Contains("original_max_position_embeddings", e.Message);
    }

    [Fact]
    public void PagedServingRefusesLongRopePastTheOriginalContextByName()
    {
        var model = new Model(ModelPresets.Get("phi4-mini-debug"), _cpu, DType.F64);
        var c = model.Config;
        using var cache = new Tessera.Inference.Paging.PagedKvCache(_cpu, DType.F64, c.Layers, c.EffectiveKvHeads, c.HeadSize,
            new Tessera.Inference.Paging.PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 16 * Tessera.Inference.Paging.PagedKvCache.BlockBytes(DType.F64, c.Layers, c.EffectiveKvHeads, c.HeadSize, 4) });
        var e = Assert.Throws<NotSupportedException>(() => new Tessera.Inference.Paging.PagedModelRunner(model, cache, 8, 4, c.MaxSequenceLength, recordGraphs: false));
        Assert.Contains("LongRoPE", e.Message);
        Assert.Contains("original_max_position_embeddings (16)", e.Message);
        using var runner = new Tessera.Inference.Paging.PagedModelRunner(model, cache, 8, 4, 16, recordGraphs: false);   // within it: served
    }

    [Fact]
    public void Phi4MiniExportThenImportKeepsTheRopeSettingsAndWeightsBitForBit()
    {
        const int seed = 5101;
        var model = LoadVariant("phi4-source", Phi4Mini, RandomWeights(seed, tied: true), DType.F32);
        var dir = Path.Combine(_dir, "phi4-exported");
        HuggingFaceExport.Write(dir, model);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal(0.75, json["partial_rotary_factor"]!.GetValue<double>());
        Assert.Equal(8, json["original_max_position_embeddings"]!.GetValue<int>());
        Assert.Equal("longrope", json["rope_scaling"]!["type"]!.GetValue<string>());
        Assert.Equal(Long, json["rope_scaling"]!["long_factor"]!.AsArray().Select(n => n!.GetValue<double>()));
        var back = PretrainedModel.Load(dir, _cpu, DType.F32);
        Assert.Equal(model.Config with { PaddedVocabSize = 0 }, back.Config with { PaddedVocabSize = 0 });
        foreach (var p in model.Parameters.Parameters)
            Assert.Equal(_cpu.ToArray<float>(p.Value), _cpu.ToArray<float>(back.Parameters.Parameters.Single(x => x.Name == p.Name).Value));
    }

    [Theory]
    [InlineData("{\"type\":\"longrope\",\"short_factor\":[1,1,1,1],\"long_factor\":[2,2,2,2]}", "short_factor and long_factor have 4 values; the 6 rotated channels of a head need 3")]
    [InlineData("{\"type\":\"longrope\",\"short_factor\":[1,1,1],\"long_factor\":[2,2]}", "long_factor has 2 values and short_factor 3")]
    [InlineData("{\"type\":\"longrope\",\"short_factor\":[1,1,1]}", "'rope_scaling.long_factor': is missing")]
    [InlineData("{\"type\":\"longrope\",\"short_factor\":[1,1,0],\"long_factor\":[2,2,2]}", "short_factor[2] (0) must be positive")]
    [InlineData("{\"type\":\"longrope\",\"short_factor\":\"wide\",\"long_factor\":[2,2,2]}", "'rope_scaling.short_factor': must be an array of numbers")]
    [InlineData("{\"rope_type\":\"yarn\",\"factor\":2.0}", "'rope_scaling.rope_type': 'yarn' on phi3")]
    [InlineData("{\"rope_type\":\"stretchy\"}", "'rope_scaling.rope_type': 'stretchy' is not supported")]
    public void BadLongRopeConfigsAreRefusedNamingTheField(string ropeScaling, string expected)
    {
        var config = ConfigJson(Phi4Mini);
        config["rope_scaling"] = JsonNode.Parse(ropeScaling);
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(config.ToJsonString(), "config.json"));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void PartialRotaryAndLongRopeAreRefusedForOtherModelTypes()
    {
        var llama = ConfigJson(Phi4Mini);
        llama["model_type"] = "llama";
        var e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(llama.ToJsonString(), "config.json"));
        Assert.Contains("'partial_rotary_factor': 0.75 is not supported for model_type 'llama'", e.Message);
        llama["partial_rotary_factor"] = 1.0;
        e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(llama.ToJsonString(), "config.json"));
        Assert.Contains("'rope_scaling.rope_type': 'longrope' is not supported", e.Message);
        var bad = ConfigJson(Phi4Mini);
        bad["partial_rotary_factor"] = 1.5;
        e = Assert.Throws<HuggingFaceFormatException>(() => HuggingFaceConfig.Parse(bad.ToJsonString(), "config.json"));
        Assert.Contains("'partial_rotary_factor': must be in (0, 1]", e.Message);
    }

    [Fact]
    public void LoraOnUnfusedProjectionsIsRefusedForPhi3ByName()
    {
        // Phi-3's adapters target the fused modules (Phi3LoraTests); q, k, v, gate or up alone cannot be saved for its checkpoint.
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
