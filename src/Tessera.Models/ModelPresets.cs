namespace Tessera.Models;

/// <summary>
/// Named configurations: the GPT-2 sizes, Llama-shape 1B, 3B and 8B, and a tiny debug model per family (the shapes of
/// the golden files that scripts/golden/make_golden.py writes: gpt2, llama, llama3 with rope_type llama3, qwen2, mistral;
/// llama-headsize-debug, qwen3-debug, mixtral-debug, qwen3-moe-debug, qwen2-moe-debug, gemma2-debug, gemma3-debug, phi3-debug and
/// phi4-mini-debug have no golden files).
/// </summary>
public static class ModelPresets
{
    private static TransformerConfig Gpt2(int layers, int embedding, int heads) => new()
    {
        Family = ModelFamily.Gpt2, VocabSize = 50257, PaddedVocabSize = 50304, MaxSequenceLength = 1024,
        Layers = layers, Embedding = embedding, Heads = heads, Bias = true, TiedEmbeddings = true,
    };

    private static TransformerConfig Llama(int layers, int embedding, int heads, int kvHeads, int hidden, int vocab, double theta, bool tied) => new()
    {
        Family = ModelFamily.Llama, VocabSize = vocab, MaxSequenceLength = 8192, Layers = layers, Embedding = embedding,
        Heads = heads, KvHeads = kvHeads, Hidden = hidden, Bias = false, TiedEmbeddings = tied, RopeTheta = theta,
    };

    /// <summary>Preset names accepted by <see cref="Get"/>.</summary>
    public static IReadOnlyList<string> Names { get; } =
        ["gpt2-debug", "gpt2-tiny", "gpt2-mini", "gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1.5b", "llama-debug", "llama-headsize-debug", "llama3-debug", "qwen2-debug",
         "qwen3-debug", "mixtral-debug", "qwen3-moe-debug", "qwen2-moe-debug", "mistral-debug", "gemma2-debug", "gemma3-debug", "phi3-debug", "phi4-mini-debug", "llama-1b", "llama-3b", "llama-8b", "gemma2-2b", "gemma3-1b", "qwen3-0.6b"];

    /// <summary>The configuration for <paramref name="name"/> (case-insensitive).</summary>
    public static TransformerConfig Get(string name) => name.ToLowerInvariant() switch
    {
        // A few thousand parameters: gradient checks and golden files.
        "gpt2-debug" => new TransformerConfig
        {
            Family = ModelFamily.Gpt2, VocabSize = 96, MaxSequenceLength = 32, Layers = 2, Embedding = 32, Heads = 4,
        },
        // The embedded default: byte-level vocabulary, trains in minutes on two cores.
        "gpt2-tiny" => new TransformerConfig
        {
            Family = ModelFamily.Gpt2, VocabSize = 256, MaxSequenceLength = 128, Layers = 4, Embedding = 128, Heads = 4,
        },
        // Byte-level too, about 6x gpt2-tiny's compute a token: a model that gpt2-tiny, trained on the same text, can draft
        // for (speculative decoding), and a step up from the default that still trains on two cores.
        "gpt2-mini" => new TransformerConfig
        {
            Family = ModelFamily.Gpt2, VocabSize = 256, MaxSequenceLength = 128, Layers = 6, Embedding = 256, Heads = 8,
        },
        "gpt2-124m" => Gpt2(12, 768, 12),
        "gpt2-350m" => Gpt2(24, 1024, 16),
        "gpt2-774m" => Gpt2(36, 1280, 20),
        "gpt2-1.5b" => Gpt2(48, 1600, 25),
        "llama-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 32, Heads = 4,
            KvHeads = 2, Hidden = 64, Bias = false, TiedEmbeddings = false, RopeTheta = 10000,
        },
        // llama-debug with heads wider than Embedding / Heads (48 / 4 = 12; head size 16), as Qwen3 and Mistral Nemo have:
        // the QKV product is (4 + 2·2)·16 x 48 and the output projection 48 x 64.
        "llama-headsize-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 48, Heads = 4,
            ExplicitHeadSize = 16, KvHeads = 2, Hidden = 64, Bias = false, TiedEmbeddings = false, RopeTheta = 10000,
        },
        // Llama 3.2 in small: theta 500000, rope_type llama3 (factor 8, bands 1 and 4, original context 64), tied head.
        "llama3-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, VocabSize = 96, MaxSequenceLength = 512, Layers = 2, Embedding = 32, Heads = 2,
            KvHeads = 1, Hidden = 64, Bias = false, TiedEmbeddings = true, RopeTheta = 500000,
            RopeScaling = new RopeScaling { Type = RopeScalingType.Llama3, Factor = 8, LowFrequencyFactor = 1, HighFrequencyFactor = 4, OriginalMaxPositions = 64 },
        },
        // Qwen2 in small: q/k/v biases, theta 1e6, untied head.
        "qwen2-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "qwen2", VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 32, Heads = 4,
            KvHeads = 2, Hidden = 64, Bias = false, AttentionBias = true, TiedEmbeddings = false, RopeTheta = 1000000, NormEpsilon = 1e-6,
        },
        // Qwen3 in small: per-head q/k RMSNorms, heads of 16 over a width of 32 (4 heads: 64 query channels), no q/k/v
        // biases, theta 1e6, untied head.
        "qwen3-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "qwen3", VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 32, Heads = 4,
            ExplicitHeadSize = 16, KvHeads = 2, Hidden = 64, Bias = false, QkNorm = true, TiedEmbeddings = false, RopeTheta = 1000000,
            NormEpsilon = 1e-6,
        },
        // Mixtral in small: 4 SwiGLU experts of width 48, two a token, their weights renormalized (Mixtral always is), theta 1e6.
        "mixtral-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "mixtral", VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 32, Heads = 4,
            KvHeads = 2, Hidden = 48, Experts = 4, ExpertsPerToken = 2, NormalizeExpertWeights = true, Bias = false, TiedEmbeddings = false,
            RopeTheta = 1000000,
        },
        // Qwen3-MoE in small: qwen3-debug's attention (q/k head norms, heads of 16), 4 experts of width 48, two a token, the
        // weights left as the router's probabilities (norm_topk_prob false, Qwen3MoeConfig's default).
        "qwen3-moe-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "qwen3_moe", VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 32, Heads = 4,
            ExplicitHeadSize = 16, KvHeads = 2, Hidden = 64, ExpertHidden = 48, Experts = 4, ExpertsPerToken = 2, Bias = false, QkNorm = true,
            TiedEmbeddings = false, RopeTheta = 1000000, NormEpsilon = 1e-6,
        },
        // Phi-3 in small: Llama's decoder saved as model_type phi3 (q, k, v fused in qkv_proj, gate and up in gate_up_proj),
        // plain RoPE over whole heads, untied head, no sliding window.
        "phi3-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "phi3", VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 32, Heads = 4,
            KvHeads = 2, Hidden = 64, Bias = false, TiedEmbeddings = false, RopeTheta = 10000, NormEpsilon = 1e-5,
        },
        // Phi-4-mini in small: phi3 with heads of 8 of which RoPE turns the first 6 (partial_rotary_factor 0.75), LongRoPE
        // (3 short and 3 long factors, original context 16 of the 64: the long factors past position 15, attention factor
        // sqrt(1 + ln 4 / ln 16)), tied head. The head size is hidden / heads, as Phi3Config's factor-length check assumes.
        "phi4-mini-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "phi3", VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 32, Heads = 4,
            KvHeads = 2, Hidden = 64, Bias = false, TiedEmbeddings = true, RopeTheta = 10000, NormEpsilon = 1e-5,
            PartialRotaryFactor = 0.75,
            RopeScaling = new RopeScaling
            {
                Type = RopeScalingType.LongRope, OriginalMaxPositions = 16,
                ShortFactor = [1.0, 1.4, 2.5], LongFactor = [1.0, 3.0, 12.0],
            },
        },
        // Qwen2-MoE in small: qwen2-debug's attention (q/k/v biases), 4 experts of width 24, two a token, the weights left as
        // the router's probabilities (norm_topk_prob false, as released), and a sigmoid-gated shared expert of width 40.
        "qwen2-moe-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "qwen2_moe", VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 32, Heads = 4,
            KvHeads = 2, Hidden = 64, ExpertHidden = 24, Experts = 4, ExpertsPerToken = 2, SharedExpertHidden = 40, SharedExpertGated = true,
            Bias = false, AttentionBias = true, TiedEmbeddings = false, RopeTheta = 1000000, NormEpsilon = 1e-6,
        },
        // Mistral in small: a sliding window of 5 positions, theta 1e6.
        "mistral-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "mistral", VocabSize = 96, MaxSequenceLength = 64, Layers = 2, Embedding = 32, Heads = 4,
            KvHeads = 2, Hidden = 64, Bias = false, TiedEmbeddings = false, RopeTheta = 1000000, SlidingWindow = 5,
        },
        // Gemma 2 in small: GeGLU, four norms a block, embeddings scaled by sqrt(32), scores by 1/sqrt(32) (query_pre_attn_scalar,
        // not the head size 16) and capped at 5, logits capped at 3 (low enough to bite with O(1) weights), even layers local with a
        // window of 8, tied head.
        "gemma2-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "gemma2", VocabSize = 96, MaxSequenceLength = 64, Layers = 4, Embedding = 32, Heads = 4,
            ExplicitHeadSize = 16, KvHeads = 2, Hidden = 64, Bias = false, TiedEmbeddings = true, RopeTheta = 10000, NormEpsilon = 1e-6,
            ScaleEmbeddings = true, GeluGate = true, PostNorms = true, UnitOffsetNorms = true, QueryPreAttentionScalar = 32,
            LocalWindow = 8, LocalPeriod = 2, AttentionSoftCap = 5, FinalSoftCap = 3,
        },
        // Gemma 3 in small: Gemma 2's block with q/k norms, five local layers (window 8, RoPE base 10000) then a global one
        // (base 1e6, linear scaling 8 as in 4B and up), scores by 1/sqrt(16), tied head.
        "gemma3-debug" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "gemma3_text", VocabSize = 96, MaxSequenceLength = 64, Layers = 6, Embedding = 32, Heads = 4,
            ExplicitHeadSize = 16, KvHeads = 2, Hidden = 64, Bias = false, TiedEmbeddings = true, RopeTheta = 1000000, NormEpsilon = 1e-6,
            RopeScaling = new RopeScaling { Type = RopeScalingType.Linear, Factor = 8 },
            ScaleEmbeddings = true, GeluGate = true, PostNorms = true, UnitOffsetNorms = true, QkNorm = true, QueryPreAttentionScalar = 16,
            LocalWindow = 8, LocalPeriod = 6, LocalRopeTheta = 10000,
        },
        // Llama 3.2 1B shape.
        "llama-1b" => Llama(16, 2048, 32, 8, 8192, 128256, 500000, tied: true),
        // Llama 3.2 3B shape.
        "llama-3b" => Llama(28, 3072, 24, 8, 8192, 128256, 500000, tied: true),
        // Llama 3 8B shape.
        "llama-8b" => Llama(32, 4096, 32, 8, 14336, 128256, 500000, tied: false),
        // Gemma 2 2B shape: 26 layers of 2304, 8 query and 4 kv heads of 256, GeGLU 9216, vocabulary 256000, scores by
        // 1/sqrt(256) capped at 50, logits capped at 30, even layers local with a window of 4096, tied head.
        "gemma2-2b" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "gemma2", VocabSize = 256000, MaxSequenceLength = 8192, Layers = 26, Embedding = 2304,
            Heads = 8, ExplicitHeadSize = 256, KvHeads = 4, Hidden = 9216, Bias = false, TiedEmbeddings = true, RopeTheta = 10000,
            NormEpsilon = 1e-6, ScaleEmbeddings = true, GeluGate = true, PostNorms = true, UnitOffsetNorms = true,
            QueryPreAttentionScalar = 256, LocalWindow = 4096, LocalPeriod = 2, AttentionSoftCap = 50, FinalSoftCap = 30,
        },
        // Gemma 3 1B shape: 26 layers of 1152, 4 query heads and 1 kv head of 256, GeGLU 6912, vocabulary 262144, q/k norms, five
        // local layers in six (window 512, RoPE base 10000) and a global one (base 1e6, no scaling at 1B), tied head.
        "gemma3-1b" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "gemma3_text", VocabSize = 262144, MaxSequenceLength = 32768, Layers = 26, Embedding = 1152,
            Heads = 4, ExplicitHeadSize = 256, KvHeads = 1, Hidden = 6912, Bias = false, TiedEmbeddings = true, RopeTheta = 1000000,
            NormEpsilon = 1e-6, ScaleEmbeddings = true, GeluGate = true, PostNorms = true, UnitOffsetNorms = true, QkNorm = true,
            QueryPreAttentionScalar = 256, LocalWindow = 512, LocalPeriod = 6, LocalRopeTheta = 10000,
        },
        // Qwen3 0.6B shape: 28 layers of 1024, 16 query and 8 kv heads of 128 with q/k norms, SwiGLU 3072, vocabulary 151936,
        // theta 1e6, tied head.
        "qwen3-0.6b" => new TransformerConfig
        {
            Family = ModelFamily.Llama, ModelType = "qwen3", VocabSize = 151936, MaxSequenceLength = 40960, Layers = 28, Embedding = 1024,
            Heads = 16, ExplicitHeadSize = 128, KvHeads = 8, Hidden = 3072, Bias = false, QkNorm = true, TiedEmbeddings = true,
            RopeTheta = 1000000, NormEpsilon = 1e-6,
        },
        _ => throw new ArgumentException($"unknown model preset '{name}'; known: {string.Join(", ", Names)}"),
    };
}
