using System.Text.Json.Serialization;
using Tessera.Tensors;

namespace Tessera.Models;

/// <summary>
/// Shape and wiring of a decoder-only transformer: GPT-2 and Llama are points in this space.
/// Validated at construction (<see cref="Validate"/>) with messages that name the field.
/// </summary>
public sealed record TransformerConfig
{
    /// <summary>Architectural family; default GPT-2.</summary>
    public ModelFamily Family { get; init; } = ModelFamily.Gpt2;

    /// <summary>Vocabulary size actually used by the tokenizer (tokens). GPT-2: 50257.</summary>
    public int VocabSize { get; init; } = 50257;

    /// <summary>Rows of the embedding and LM-head matrices (tokens); at least <see cref="VocabSize"/>,
    /// rounded up (e.g. to 50304) for faster matrix products. Default: equal to VocabSize.</summary>
    public int PaddedVocabSize { get; init; }

    /// <summary>Longest sequence the model accepts (tokens); learned position table size for GPT-2.</summary>
    public int MaxSequenceLength { get; init; } = 1024;

    /// <summary>Number of transformer blocks.</summary>
    public int Layers { get; init; } = 12;

    /// <summary>Residual stream width C (channels).</summary>
    public int Embedding { get; init; } = 768;

    /// <summary>Number of query heads H; must divide <see cref="Embedding"/> unless <see cref="ExplicitHeadSize"/> is set.</summary>
    public int Heads { get; init; } = 12;

    /// <summary>Number of key/value heads K (grouped-query attention); must divide Heads. Default: Heads.</summary>
    public int KvHeads { get; init; }

    /// <summary>MLP hidden width F (channels). Default: 4 * Embedding.</summary>
    public int Hidden { get; init; }

    /// <summary>Normalization epsilon. GPT-2: 1e-5; Llama: 1e-5 (HF rms_norm_eps).</summary>
    public double NormEpsilon { get; init; } = 1e-5;

    /// <summary>RoPE base theta (Llama only). Default 10000; Llama 3: 500000; Qwen2 and Mistral v0.2+: 1000000.</summary>
    public double RopeTheta { get; init; } = 10000;

    /// <summary>RoPE scaling (Llama only: linear, dynamic NTK, llama3, YaRN), or null (the default) for plain RoPE.</summary>
    public RopeScaling? RopeScaling { get; init; }

    /// <summary>Whether the q, k and v projections carry biases while the rest of a Llama-family block does not (Qwen2).
    /// Default false; GPT-2's biases are <see cref="Bias"/>.</summary>
    public bool AttentionBias { get; init; }

    /// <summary>Sliding-window attention (Mistral): a query at position p sees keys p - window + 1 .. p. 0 (the default)
    /// means full causal attention. Positions.</summary>
    public int SlidingWindow { get; init; }

    /// <summary>The Hugging Face model_type this configuration came from and exports as ("llama", "qwen2", "qwen3", "mistral",
    /// "gpt2"), or null (the default) for the family's own.</summary>
    public string? ModelType { get; init; }

    /// <summary>Whether the LM head shares the token embedding matrix. GPT-2: true.</summary>
    public bool TiedEmbeddings { get; init; } = true;

    /// <summary>Whether linear layers and norms carry biases. GPT-2: true; Llama: false.</summary>
    public bool Bias { get; init; } = true;

    /// <summary>Standard deviation of the normal weight initialization. Default 0.02.</summary>
    public double InitStd { get; init; } = 0.02;

    /// <summary>
    /// Head size D (channels of one query, key or value head) when it is not Embedding / Heads (Hugging Face's head_dim:
    /// Qwen3, Mistral Nemo), or 0 (the default, left out of the JSON) for Embedding / Heads. The QKV product is then
    /// (H + 2K) D x C and the output projection C x H D.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int ExplicitHeadSize { get; init; }

    /// <summary>
    /// The fraction of each head's channels that RoPE rotates (Hugging Face's partial_rotary_factor: Phi-4-mini's 0.75): the
    /// first R = floor(D x factor) channels rotate as a head of size R, the rest pass through. 0 (the default, left out of the
    /// JSON) or 1 for whole heads.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public double PartialRotaryFactor { get; init; }

    /// <summary>Channels of each head that RoPE rotates: floor(D x <see cref="PartialRotaryFactor"/>), or D.</summary>
    [JsonIgnore] public int RotaryDimensions => PartialRotaryFactor > 0 && PartialRotaryFactor < 1 ? (int)(HeadSize * PartialRotaryFactor) : HeadSize;

    /// <summary>Whether each query and key head is RMS-normalized (weights q_norm and k_norm of size D, epsilon
    /// <see cref="NormEpsilon"/>) after the QKV product and before RoPE: Qwen3. Default false (left out of the JSON).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool QkNorm { get; init; }

    /// <summary>
    /// Number of experts E of each block's sparse mixture-of-experts feed-forward (Mixtral's num_local_experts, Qwen3-MoE's
    /// num_experts), or 0 (the default, left out of the JSON) for a dense MLP. Llama family only.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int Experts { get; init; }

    /// <summary>Experts each token is routed to, k (num_experts_per_tok); 1 to <see cref="Experts"/>. Default 0, left out
    /// of the JSON; required when Experts is set.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int ExpertsPerToken { get; init; }

    /// <summary>Hidden width of one expert's SwiGLU (channels; Qwen3-MoE's moe_intermediate_size, Mixtral's
    /// intermediate_size), or 0 (the default, left out of the JSON) for <see cref="EffectiveHidden"/>.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int ExpertHidden { get; init; }

    /// <summary>
    /// Whether a token's k routing weights are divided by their sum (Mixtral always: its softmax over the top-k logits is
    /// that; Qwen3-MoE when norm_topk_prob), rather than left as the router's softmax probabilities over all E experts.
    /// Default false (left out of the JSON).
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool NormalizeExpertWeights { get; init; }

    /// <summary>
    /// Coefficient of the router's load-balancing loss (Switch Transformer / Mixtral: coef · E · Σ_i f_i P_i per MoE block,
    /// f_i the fraction of tokens routed to expert i among their k, P_i its mean router probability), added to the training
    /// loss; 0 (the default, left out of the JSON) turns it off. Dimensionless.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public double RouterAuxLossCoefficient { get; init; }

    /// <summary>
    /// Hidden width F_s of each mixture-of-experts block's shared expert (Qwen2-MoE's shared_expert_intermediate_size): a
    /// SwiGLU C to F_s to C that every token runs, its output added to the routed experts' sum; 0 (the default, left out of
    /// the JSON) for none (Mixtral, Qwen3-MoE). Channels.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int SharedExpertHidden { get; init; }

    /// <summary>
    /// Whether the shared expert's output is multiplied by sigmoid(shared_expert_gate(x)), a C to 1 linear without bias
    /// (Qwen2-MoE, always). Default false (left out of the JSON). Required with <see cref="SharedExpertHidden"/> &gt; 0:
    /// an ungated shared expert (DeepSeek-MoE's) is not built yet.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool SharedExpertGated { get; init; }

    /// <summary>Whether the mixture-of-experts blocks have a shared expert (<see cref="SharedExpertHidden"/> &gt; 0).</summary>
    [JsonIgnore] public bool HasSharedExpert => SharedExpertHidden > 0;

    /// <summary>Whether the blocks' feed-forward is a sparse mixture of experts (<see cref="Experts"/> &gt; 0).</summary>
    [JsonIgnore] public bool IsMixtureOfExperts => Experts > 0;

    /// <summary>Hidden width of one expert actually used: <see cref="ExpertHidden"/>, or <see cref="EffectiveHidden"/>.</summary>
    [JsonIgnore] public int EffectiveExpertHidden => ExpertHidden > 0 ? ExpertHidden : EffectiveHidden;

    /// <summary>Whether the token embeddings are multiplied by sqrt(<see cref="Embedding"/>) (rounded to the model's dtype) before
    /// the first block: Gemma. The tied head reads the table unscaled. Default false (left out of the JSON).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool ScaleEmbeddings { get; init; }

    /// <summary>Whether the gated MLP's gate goes through the tanh-approximated GELU instead of SiLU (GeGLU: Gemma's
    /// hidden_activation gelu_pytorch_tanh). Llama family only. Default false (left out of the JSON).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool GeluGate { get; init; }

    /// <summary>Whether each block also RMS-normalizes its attention output and its MLP output before the residual adds
    /// (Gemma's post_attention_layernorm and post_feedforward_layernorm; its pre-norms are norm1 and norm2). Llama family only.
    /// Default false (left out of the JSON).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool PostNorms { get; init; }

    /// <summary>Whether every RMSNorm weight w (the blocks', the final one, the q/k head norms) is applied as 1 + w (Gemma), so
    /// that w = 0, its initialization, is the identity scale; the weights are stored as w, as Hugging Face's are. Llama family
    /// only. Default false (left out of the JSON).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public bool UnitOffsetNorms { get; init; }

    /// <summary>Attention scores are scaled by 1/sqrt of this (Gemma's query_pre_attn_scalar) instead of 1/sqrt(<see cref="HeadSize"/>),
    /// or 0 (the default, left out of the JSON) for the head size.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public double QueryPreAttentionScalar { get; init; }

    /// <summary>Sliding window (positions) of the local layers of an interleaved local/global stack (Gemma), or 0 (the default,
    /// left out of the JSON) for none. Unlike <see cref="SlidingWindow"/>, which windows every layer and lets serving drop
    /// blocks left of it, global layers here read every position, so caches keep all of them.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int LocalWindow { get; init; }

    /// <summary>With <see cref="LocalWindow"/>: every this-many-th layer is global, the others local (layer i is local when
    /// (i + 1) % period != 0; Hugging Face's sliding_window_pattern: 2 for Gemma 2, whose even layers are local; 6 for Gemma 3).
    /// Default 0 (left out of the JSON).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public int LocalPeriod { get; init; }

    /// <summary>RoPE base of the local layers, without scaling (Gemma 3's rope_local_base_freq), or 0 (the default, left out of
    /// the JSON) for the global layers' rotation (<see cref="RopeTheta"/> and <see cref="RopeScaling"/>).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public double LocalRopeTheta { get; init; }

    /// <summary>Soft cap c of the attention scores, s = c tanh(s / c) after the scale and before the mask (Gemma 2's
    /// attn_logit_softcapping), or 0 (the default, left out of the JSON) for none. On CUDA, capped attention takes the kernels
    /// that cap (the tensor-core forward, the split decode, the simple kernels for the backward, the generic paged kernel).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public double AttentionSoftCap { get; init; }

    /// <summary>Soft cap c of the final logits, z = c tanh(z / c) (Gemma 2's final_logit_softcapping), or 0 (the default,
    /// left out of the JSON) for none. Training then runs the unfused head (the whole micro-batch's logits).</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public double FinalSoftCap { get; init; }

    /// <summary>Whether layer <paramref name="layer"/> is a local (sliding-window) layer of an interleaved stack.</summary>
    public bool IsLocalLayer(int layer) => LocalWindow > 0 && LocalPeriod > 0 && (layer + 1) % LocalPeriod != 0;

    /// <summary>
    /// The attention of layer <paramref name="layer"/>: its window (<see cref="SlidingWindow"/>, or <see cref="LocalWindow"/>
    /// on a local layer of an interleaved stack), its rotary frequencies (<see cref="Rope"/>, or plain RoPE at
    /// <see cref="LocalRopeTheta"/> on a local layer when that is set), its score scale and soft cap.
    /// </summary>
    public LayerAttention LayerAttention(int layer)
    {
        if (layer < 0 || layer >= Layers) throw new ArgumentOutOfRangeException(nameof(layer), layer, $"layer must be in [0, {Layers})");
        double scale = 1.0 / Math.Sqrt(QueryPreAttentionScalar > 0 ? QueryPreAttentionScalar : HeadSize);
        if (!IsLocalLayer(layer)) return new LayerAttention(SlidingWindow, Rope, scale, AttentionSoftCap);
        var rope = Family == ModelFamily.Llama && LocalRopeTheta > 0 ? new RopeFrequencies(LocalRopeTheta) : Rope;
        return new LayerAttention(LocalWindow, rope, scale, AttentionSoftCap);
    }

    /// <summary>Head size D actually used: <see cref="ExplicitHeadSize"/>, or Embedding / Heads.</summary>
    [JsonIgnore] public int HeadSize => ExplicitHeadSize > 0 ? ExplicitHeadSize : Embedding / Heads;

    /// <summary>Rows of the embedding table actually allocated.</summary>
    [JsonIgnore] public int EffectivePaddedVocab => PaddedVocabSize > 0 ? PaddedVocabSize : VocabSize;

    /// <summary>Key/value heads actually used.</summary>
    [JsonIgnore] public int EffectiveKvHeads => KvHeads > 0 ? KvHeads : Heads;

    /// <summary>MLP width actually used.</summary>
    [JsonIgnore] public int EffectiveHidden => Hidden > 0 ? Hidden : 4 * Embedding;

    /// <summary>Hugging Face model_type actually used.</summary>
    [JsonIgnore] public string EffectiveModelType => ModelType ?? (Family == ModelFamily.Gpt2 ? "gpt2" : "llama");

    /// <summary>The rotary frequencies of a Llama-family model (theta and scaling); null for GPT-2.</summary>
    [JsonIgnore]
    public RopeFrequencies? Rope => Family != ModelFamily.Llama ? null
        : (RopeScaling is { } scaling ? scaling.Frequencies(RopeTheta, RotaryDimensions, MaxSequenceLengthBeforeScaling) : new RopeFrequencies(RopeTheta))
            with { RotaryDimensions = RotaryDimensions < HeadSize ? RotaryDimensions : 0 };

    /// <summary>The max_position_embeddings of config.json: dynamic NTK scaling starts there (and
    /// <see cref="MaxSequenceLength"/> is that times the factor).</summary>
    public int OriginalMaxSequenceLength { get; init; }

    private int MaxSequenceLengthBeforeScaling => OriginalMaxSequenceLength > 0 ? OriginalMaxSequenceLength : MaxSequenceLength;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first inconsistent field.</summary>
    public TransformerConfig Validate()
    {
        void Positive(int value, string name)
        {
            if (value <= 0) throw new ArgumentException($"TransformerConfig: {name} ({value}) must be positive");
        }
        Positive(VocabSize, nameof(VocabSize));
        Positive(MaxSequenceLength, nameof(MaxSequenceLength));
        Positive(Layers, nameof(Layers));
        Positive(Embedding, nameof(Embedding));
        Positive(Heads, nameof(Heads));
        if (PaddedVocabSize != 0 && PaddedVocabSize < VocabSize)
            throw new ArgumentException($"TransformerConfig: PaddedVocabSize ({PaddedVocabSize}) must be at least VocabSize ({VocabSize})");
        if (ExplicitHeadSize < 0)
            throw new ArgumentException($"TransformerConfig: ExplicitHeadSize ({ExplicitHeadSize}) must be 0 (Embedding / Heads) or positive");
        if (ExplicitHeadSize == 0 && Embedding % Heads != 0)
            throw new ArgumentException($"TransformerConfig: Heads ({Heads}) must divide Embedding ({Embedding})");
        if (KvHeads < 0 || EffectiveKvHeads > Heads || Heads % EffectiveKvHeads != 0)
            throw new ArgumentException($"TransformerConfig: KvHeads ({KvHeads}) must divide Heads ({Heads})");
        if (Hidden < 0) throw new ArgumentException($"TransformerConfig: Hidden ({Hidden}) must not be negative");
        if (!(NormEpsilon > 0)) throw new ArgumentException($"TransformerConfig: NormEpsilon ({NormEpsilon}) must be positive");
        if (Family == ModelFamily.Llama && HeadSize % 2 != 0)
            throw new ArgumentException($"TransformerConfig: RoPE needs an even head size, got {HeadSize}");
        if (Family == ModelFamily.Llama && !(RopeTheta > 0))
            throw new ArgumentException($"TransformerConfig: RopeTheta ({RopeTheta}) must be positive");
        if (!(InitStd > 0)) throw new ArgumentException($"TransformerConfig: InitStd ({InitStd}) must be positive");
        if (SlidingWindow < 0) throw new ArgumentException($"TransformerConfig: SlidingWindow ({SlidingWindow}) must be 0 (none) or positive");
        if (OriginalMaxSequenceLength < 0 || OriginalMaxSequenceLength > MaxSequenceLength)
            throw new ArgumentException($"TransformerConfig: OriginalMaxSequenceLength ({OriginalMaxSequenceLength}) must be in [0, MaxSequenceLength = {MaxSequenceLength}]");
        if (Family == ModelFamily.Gpt2 && (RopeScaling is not null || AttentionBias || SlidingWindow > 0 || QkNorm))
            throw new ArgumentException("TransformerConfig: RopeScaling, AttentionBias, SlidingWindow and QkNorm are Llama-family settings; GPT-2 has none of them");
        if (Experts < 0) throw new ArgumentException($"TransformerConfig: Experts ({Experts}) must be 0 (a dense MLP) or positive");
        if (Experts == 0 && (ExpertsPerToken != 0 || ExpertHidden != 0 || NormalizeExpertWeights || RouterAuxLossCoefficient != 0
            || SharedExpertHidden != 0 || SharedExpertGated))
            throw new ArgumentException("TransformerConfig: ExpertsPerToken, ExpertHidden, NormalizeExpertWeights, RouterAuxLossCoefficient, SharedExpertHidden and SharedExpertGated are mixture-of-experts settings; set Experts (> 0) or leave them at their defaults");
        if (Experts > 0)
        {
            if (Family != ModelFamily.Llama)
                throw new ArgumentException("TransformerConfig: Experts is a Llama-family setting (Mixtral, Qwen3-MoE); GPT-2 has a dense MLP");
            if (ExpertsPerToken < 1 || ExpertsPerToken > Experts)
                throw new ArgumentException($"TransformerConfig: ExpertsPerToken ({ExpertsPerToken}) must be in [1, Experts = {Experts}]");
            if (ExpertHidden < 0)
                throw new ArgumentException($"TransformerConfig: ExpertHidden ({ExpertHidden}) must be 0 (Hidden) or positive");
            if (!(RouterAuxLossCoefficient >= 0) || double.IsInfinity(RouterAuxLossCoefficient))
                throw new ArgumentException($"TransformerConfig: RouterAuxLossCoefficient ({RouterAuxLossCoefficient}) must be a finite number, 0 or more");
            if (SharedExpertHidden < 0)
                throw new ArgumentException($"TransformerConfig: SharedExpertHidden ({SharedExpertHidden}) must be 0 (no shared expert) or positive");
            if (SharedExpertHidden > 0 && !SharedExpertGated)
                throw new ArgumentException($"TransformerConfig: SharedExpertHidden ({SharedExpertHidden}) needs SharedExpertGated = true: only Qwen2-MoE's sigmoid-gated shared expert is built (an ungated one, DeepSeek-MoE's, is not yet)");
            if (SharedExpertGated && SharedExpertHidden == 0)
                throw new ArgumentException("TransformerConfig: SharedExpertGated gates a shared expert; set SharedExpertHidden (> 0) or leave SharedExpertGated false");
        }
        if (Family == ModelFamily.Gpt2 && (ScaleEmbeddings || GeluGate || PostNorms || UnitOffsetNorms || LocalWindow > 0 || LocalRopeTheta > 0 || AttentionSoftCap > 0 || FinalSoftCap > 0))
            throw new ArgumentException("TransformerConfig: ScaleEmbeddings, GeluGate, PostNorms, UnitOffsetNorms, LocalWindow, LocalRopeTheta and the soft caps are Gemma (Llama-family) settings; GPT-2 has none of them");
        if (QueryPreAttentionScalar < 0 || double.IsNaN(QueryPreAttentionScalar) || double.IsInfinity(QueryPreAttentionScalar))
            throw new ArgumentException($"TransformerConfig: QueryPreAttentionScalar ({QueryPreAttentionScalar}) must be 0 (the head size) or positive");
        if (LocalWindow < 0 || LocalPeriod < 0)
            throw new ArgumentException($"TransformerConfig: LocalWindow ({LocalWindow}) and LocalPeriod ({LocalPeriod}) must be 0 (none) or positive");
        if ((LocalWindow > 0) != (LocalPeriod > 0))
            throw new ArgumentException($"TransformerConfig: LocalWindow ({LocalWindow}) and LocalPeriod ({LocalPeriod}) go together: set both for an interleaved local/global stack, or neither");
        if (LocalWindow > 0 && SlidingWindow > 0)
            throw new ArgumentException($"TransformerConfig: SlidingWindow ({SlidingWindow}) windows every layer; it cannot be combined with LocalWindow ({LocalWindow}) of an interleaved stack");
        if (LocalRopeTheta < 0 || double.IsNaN(LocalRopeTheta) || double.IsInfinity(LocalRopeTheta))
            throw new ArgumentException($"TransformerConfig: LocalRopeTheta ({LocalRopeTheta}) must be 0 (the global rotation) or positive and finite");
        if (!(AttentionSoftCap >= 0) || !(FinalSoftCap >= 0) || double.IsInfinity(AttentionSoftCap) || double.IsInfinity(FinalSoftCap))
            throw new ArgumentException($"TransformerConfig: AttentionSoftCap ({AttentionSoftCap}) and FinalSoftCap ({FinalSoftCap}) must be 0 (none) or positive and finite");
        if (PartialRotaryFactor != 0)
        {
            if (!(PartialRotaryFactor > 0 && PartialRotaryFactor <= 1))
                throw new ArgumentException($"TransformerConfig: PartialRotaryFactor ({PartialRotaryFactor}) must be 0 (whole heads) or in (0, 1]");
            if (Family != ModelFamily.Llama) throw new ArgumentException("TransformerConfig: PartialRotaryFactor is a RoPE (Llama-family) setting; GPT-2 has learned positions");
            if (RotaryDimensions < 2 || RotaryDimensions % 2 != 0)
                throw new ArgumentException($"TransformerConfig: PartialRotaryFactor ({PartialRotaryFactor}) rotates {RotaryDimensions} of the {HeadSize} channels of a head; that must be even and at least 2");
            if (LocalRopeTheta > 0) throw new ArgumentException("TransformerConfig: PartialRotaryFactor does not combine with LocalRopeTheta (the local layers' plain RoPE)");
        }
        RopeScaling?.Validate();
        if (Family == ModelFamily.Llama && RopeScaling is { Type: RopeScalingType.LongRope } longRope && longRope.ShortFactor!.Count * 2 != RotaryDimensions)
            throw new ArgumentException($"TransformerConfig: rope_scaling.short_factor and long_factor have {longRope.ShortFactor.Count} values; the {RotaryDimensions} rotated channels of a head need {RotaryDimensions / 2}");
        if (RopeScaling?.Type == RopeScalingType.LongRope && LocalRopeTheta > 0)
            throw new ArgumentException("TransformerConfig: LongRoPE does not combine with LocalRopeTheta");
        if (Family == ModelFamily.Llama && RopeScaling?.Type == RopeScalingType.Dynamic && RotaryDimensions <= 2)
            throw new ArgumentException($"TransformerConfig: dynamic RoPE scaling needs more than 2 rotated channels a head, got {RotaryDimensions}");
        if (RopeScaling?.Type == RopeScalingType.Dynamic && OriginalMaxSequenceLength == 0)
            throw new ArgumentException("TransformerConfig: dynamic RoPE scaling needs OriginalMaxSequenceLength (config.json's max_position_embeddings, where the rescaling starts; MaxSequenceLength is then factor times it)");
        return this;
    }
}
