using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tessera.Models.HuggingFace;

/// <summary>
/// Reads a Hugging Face config.json (model_type "gpt2", "llama", "qwen2", "qwen3", "mistral", the sparse mixtures of
/// experts "mixtral", "qwen3_moe" and "qwen2_moe", "gemma2" or "gemma3_text", and "phi3": Phi-3 and Phi-4, with
/// partial_rotary_factor and rope_type longrope) into a <see cref="TransformerConfig"/>
/// and writes one back for export. RoPE scaling (rope_scaling of transformers 4, rope_parameters of 5; rope_type linear,
/// dynamic, llama3, yarn; longrope for phi3) is read into <see cref="RopeScaling"/>. Fields Tessera cannot honour (other activations, biases
/// on Llama's output projection or MLP, other rope types, Qwen2's and Qwen3's per-layer sliding windows) are rejected with a message
/// naming the file and the field rather than silently ignored.
/// </summary>
public static class HuggingFaceConfig
{
    /// <summary>The model_type values Tessera reads and writes.</summary>
    public static IReadOnlyList<string> ModelTypes { get; } = ["gpt2", "llama", "qwen2", "qwen3", "mistral", "mixtral", "qwen3_moe", "qwen2_moe", "gemma2", "gemma3_text", "phi3"];

    /// <summary>GPT-2 activations that are the tanh approximation of GELU Tessera implements.</summary>
    private static readonly string[] TanhGelu = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast"];

    /// <summary>Reads <paramref name="path"/>; the vocabulary is padded up to a multiple of <paramref name="paddedVocabMultiple"/> rows.</summary>
    /// <exception cref="HuggingFaceFormatException">A field is missing, of the wrong type, unsupported or inconsistent.</exception>
    public static TransformerConfig Load(string path, int paddedVocabMultiple = 1)
    {
        if (!File.Exists(path)) throw new HuggingFaceFormatException(path, "file not found");
        return Parse(File.ReadAllText(path), path, paddedVocabMultiple);
    }

    /// <summary>Parses config.json text; <paramref name="path"/> is used in error messages only.</summary>
    public static TransformerConfig Parse(string json, string path, int paddedVocabMultiple = 1)
    {
        if (paddedVocabMultiple < 1) throw new ArgumentOutOfRangeException(nameof(paddedVocabMultiple), "must be at least 1");
        JsonObject root;
        try
        {
            root = JsonNode.Parse(json) as JsonObject ?? throw new HuggingFaceFormatException(path, "not a JSON object");
        }
        catch (JsonException e)
        {
            throw new HuggingFaceFormatException(path, $"not valid JSON ({e.Message})", e);
        }
        var fields = new Fields(root, path);
        string modelType = fields.String("model_type") ?? throw new HuggingFaceFormatException(path, "missing field 'model_type'");
        TransformerConfig config = modelType switch
        {
            "gpt2" => ParseGpt2(fields),
            "llama" => ParseLlama(fields),
            "qwen2" => ParseQwen2(fields),
            "qwen3" => ParseQwen3(fields),
            "mistral" => ParseMistral(fields),
            "mixtral" => ParseMixtral(fields),
            "qwen3_moe" => ParseQwen3Moe(fields),
            "qwen2_moe" => ParseQwen2Moe(fields),
            "gemma2" or "gemma3_text" => ParseGemma(fields, modelType),
            "phi3" => ParsePhi3(fields),
            "gemma3" => throw new HuggingFaceFormatException(path, "field 'model_type': 'gemma3' is the multimodal Gemma 3 (a vision tower around a text model); Tessera reads the text-only model_type 'gemma3_text' (Gemma 3 1B and 270M, or a text model saved on its own)"),
            _ => throw new HuggingFaceFormatException(path, $"field 'model_type': '{modelType}' is not supported (supported: {string.Join(", ", ModelTypes)})"),
        };
        int padded = (config.VocabSize + paddedVocabMultiple - 1) / paddedVocabMultiple * paddedVocabMultiple;
        config = config with { PaddedVocabSize = padded };
        try
        {
            return config.Validate();
        }
        catch (ArgumentException e)
        {
            throw new HuggingFaceFormatException(path, $"inconsistent configuration: {e.Message}", e);
        }
    }

    private static TransformerConfig ParseGpt2(Fields f)
    {
        int embedding = f.RequiredInt("n_embd");
        string activation = f.String("activation_function") ?? "gelu_new";
        if (!TanhGelu.Contains(activation))
            throw f.Error("activation_function", $"'{activation}' is not supported; Tessera's GPT-2 uses the tanh GELU ({string.Join(", ", TanhGelu)})");
        if (f.Bool("scale_attn_by_inverse_layer_idx") == true)
            throw f.Error("scale_attn_by_inverse_layer_idx", "true is not supported");
        if (f.Bool("reorder_and_upcast_attn") == true)
            throw f.Error("reorder_and_upcast_attn", "true is not supported");
        return new TransformerConfig
        {
            Family = ModelFamily.Gpt2,
            VocabSize = f.RequiredInt("vocab_size"),
            MaxSequenceLength = f.RequiredInt("n_positions"),
            Layers = f.RequiredInt("n_layer"),
            Embedding = embedding,
            Heads = f.RequiredInt("n_head"),
            Hidden = f.Int("n_inner") ?? 4 * embedding,
            NormEpsilon = f.Double("layer_norm_epsilon") ?? 1e-5,
            TiedEmbeddings = f.Bool("tie_word_embeddings") ?? true,
            InitStd = f.Double("initializer_range") ?? 0.02,
            Bias = true,
        };
    }

    private static TransformerConfig ParseLlama(Fields f)
    {
        if (f.Bool("attention_bias") == true)
            throw f.Error("attention_bias", "true is not supported: Llama's attention_bias also puts a bias on o_proj, which Tessera's Llama has not (Qwen2's q/k/v biases are supported)");
        if (f.Bool("mlp_bias") == true) throw f.Error("mlp_bias", "true is not supported: Tessera's Llama has no MLP biases");
        return ParseLlamaLike(f, "llama");
    }

    private static TransformerConfig ParseQwen2(Fields f)
    {
        // Qwen2's q, k and v projections always carry biases (o_proj and the MLP none); sliding windows apply per layer
        // (layers from max_window_layers on) only when use_sliding_window is true.
        if (f.Bool("use_sliding_window") == true)
            throw f.Error("use_sliding_window", "true is not supported: Qwen2's per-layer sliding windows (max_window_layers) are not implemented; Qwen2/2.5 checkpoints ship false");
        if (f.Node("layer_types") is JsonArray types && types.Any(t => t?.GetValue<string>() != "full_attention"))
            throw f.Error("layer_types", "only \"full_attention\" layers are supported for Qwen2");
        return ParseLlamaLike(f, "qwen2") with { AttentionBias = true };
    }

    private static TransformerConfig ParseQwen3(Fields f)
    {
        // Qwen3: Qwen2's layout without the q/k/v biases (attention_bias, false in every release, would bias o_proj too), an
        // explicit head_dim, and an RMSNorm of each query and key head (q_norm, k_norm) before RoPE.
        if (f.Bool("attention_bias") == true)
            throw f.Error("attention_bias", "true is not supported: Qwen3's attention_bias puts biases on q, k, v and o_proj; Qwen3 checkpoints ship false");
        if (f.Bool("use_sliding_window") == true)
            throw f.Error("use_sliding_window", "true is not supported: Qwen3's per-layer sliding windows (max_window_layers) are not implemented; Qwen3 checkpoints ship false");
        if (f.Node("layer_types") is JsonArray types && types.Any(t => t?.GetValue<string>() != "full_attention"))
            throw f.Error("layer_types", "only \"full_attention\" layers are supported for Qwen3");
        return ParseLlamaLike(f, "qwen3") with { QkNorm = true };
    }

    private static TransformerConfig ParseMistral(Fields f)
    {
        var config = ParseLlamaLike(f, "mistral");
        int window = f.Int("sliding_window") ?? 0;
        if (window < 0) throw f.Error("sliding_window", $"must be positive or null, got {window}");
        return config with { SlidingWindow = window };
    }

    private static TransformerConfig ParsePhi3(Fields f)
    {
        // Phi-3 / Phi-4: Llama's decoder whose checkpoint fuses q, k, v (qkv_proj) and gate, up (gate_up_proj), which the
        // weight map splits and fuses; sliding_window windows every layer as Mistral's does (transformers passes it to the
        // attention and builds the sliding-window mask when it is set). resid_pdrop, embd_pdrop and attention_dropout act
        // only in training in transformers; Tessera trains every family without dropout and ignores them.
        // partial_rotary_factor (Phi-4-mini's 0.75) and rope_scaling longrope/su (Phi-3-mini-128k, Phi-3.5, Phi-4-mini) are
        // read here only (ParseLlamaLike and ReadRope): Phi3Config's original_max_position_embeddings sits at the top level
        // and defaults to 4096.
        var config = ParseLlamaLike(f, "phi3");
        int window = f.Int("sliding_window") ?? 0;
        if (window < 0) throw f.Error("sliding_window", $"must be positive or null, got {window}");
        if (config.RopeScaling is { Type: RopeScalingType.LongRope, OriginalMaxPositions: 0 } longRope)
            config = config with { RopeScaling = longRope with { OriginalMaxPositions = 4096 } };
        return config with { SlidingWindow = window };
    }

    private static TransformerConfig ParseMixtral(Fields f)
    {
        // Mixtral: Mistral's attention, and in place of the MLP num_local_experts SwiGLU experts of intermediate_size, each
        // token's num_experts_per_tok chosen by softmax then top-k, their weights renormalized (always).
        var config = ParseMistral(f) with { ModelType = "mixtral" };
        if (f.Double("router_jitter_noise") is double jitter && jitter != 0)
            throw f.Error("router_jitter_noise", $"{jitter} is not supported: Tessera's router has no training noise (Mixtral checkpoints ship 0.0)");
        return config with
        {
            Experts = f.RequiredInt("num_local_experts"),
            ExpertsPerToken = f.RequiredInt("num_experts_per_tok"),
            NormalizeExpertWeights = true,
            RouterAuxLossCoefficient = RouterAuxLoss(f),
        };
    }

    private static TransformerConfig ParseQwen3Moe(Fields f)
    {
        // Qwen3-MoE: Qwen3's attention (q/k head norms, head_dim), and in place of the MLP num_experts SwiGLU experts of
        // moe_intermediate_size, num_experts_per_tok a token, renormalized when norm_topk_prob. Every layer must be sparse.
        return QwenExperts(f, ParseQwen3(f) with { ModelType = "qwen3_moe" });
    }

    /// <summary>
    /// The expert fields Qwen2-MoE and Qwen3-MoE share, on <paramref name="config"/> (their attention): num_experts SwiGLU experts
    /// of moe_intermediate_size, num_experts_per_tok a token, renormalized when norm_topk_prob; every layer sparse.
    /// </summary>
    private static TransformerConfig QwenExperts(Fields f, TransformerConfig config)
    {
        CheckEveryLayerSparse(f);
        return config with
        {
            Experts = f.RequiredInt("num_experts"),
            ExpertsPerToken = f.RequiredInt("num_experts_per_tok"),
            ExpertHidden = f.RequiredInt("moe_intermediate_size"),
            NormalizeExpertWeights = f.Bool("norm_topk_prob") ?? false,
            RouterAuxLossCoefficient = RouterAuxLoss(f),
        };
    }

    private static TransformerConfig ParseQwen2Moe(Fields f)
    {
        // Qwen2-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): Qwen2's attention (q/k/v biases), num_experts SwiGLU experts of
        // moe_intermediate_size, num_experts_per_tok a token from the softmax (renormalized when norm_topk_prob, false in the
        // releases), and a shared expert of shared_expert_intermediate_size that every token runs, scaled by
        // sigmoid(shared_expert_gate(x)). intermediate_size is the width of mlp_only_layers' dense MLPs, which must be none.
        return QwenExperts(f, ParseQwen2(f) with { ModelType = "qwen2_moe" }) with
        {
            SharedExpertHidden = f.RequiredInt("shared_expert_intermediate_size"),
            SharedExpertGated = true,
        };
    }

    /// <summary>Qwen2-MoE's and Qwen3-MoE's layer pattern: Tessera reads only stacks whose every layer is sparse
    /// (decoder_sparse_step 1, mlp_only_layers empty or absent).</summary>
    private static void CheckEveryLayerSparse(Fields f)
    {
        if (f.Int("decoder_sparse_step") is int step && step != 1)
            throw f.Error("decoder_sparse_step", $"{step} is not supported: Tessera makes every layer sparse (decoder_sparse_step 1); interleaved dense layers are not implemented");
        if (f.Node("mlp_only_layers") is JsonArray dense && dense.Count > 0)
            throw f.Error("mlp_only_layers", $"[{string.Join(", ", dense.Select(d => d?.ToJsonString()))}] is not supported: Tessera makes every layer sparse (an empty list); dense layers among sparse ones are not implemented");
        if (f.Node("mlp_only_layers") is { } node && node is not JsonArray)
            throw f.Error("mlp_only_layers", $"must be a list of layer indices, got {node.GetValueKind()}");
    }

    /// <summary>
    /// Gemma 2 and Gemma 3 text: Llama's projections with a GELU-gated MLP, four norms per block whose weights apply as 1 + w,
    /// embeddings scaled by sqrt(hidden_size), scores scaled by 1/sqrt(query_pre_attn_scalar), and an interleaved stack of
    /// sliding-window (local) and global layers: layer_types where given (transformers 4.53+), else Gemma 2's even layers
    /// local, Gemma 3's sliding_window_pattern (every sixth layer global). Gemma 3 adds q_norm and k_norm and its local layers'
    /// RoPE base rope_local_base_freq (unscaled). attn_logit_softcapping and final_logit_softcapping (Gemma 2's; null in
    /// Gemma 3) are read for either.
    /// </summary>
    private static TransformerConfig ParseGemma(Fields f, string modelType)
    {
        string activationField = f.Has("hidden_activation") ? "hidden_activation" : "hidden_act";
        string act = f.String(activationField) ?? "gelu_pytorch_tanh";
        if (!TanhGelu.Contains(act))
            throw f.Error(activationField, $"'{act}' is not supported; Tessera's {modelType} gates its MLP with the tanh GELU ({string.Join(", ", TanhGelu)})");
        if (f.Bool("attention_bias") == true) throw f.Error("attention_bias", $"true is not supported: {modelType} checkpoints ship false");
        double SoftCap(string field) => f.Double(field) is not double cap ? 0
            : cap > 0 && !double.IsInfinity(cap) ? cap : throw f.Error(field, $"must be a positive number or null, got {cap}");
        // Gemma 2 caps its scores and logits (50 and 30 in every release); Gemma 3 ships both null.
        double attentionCap = SoftCap("attn_logit_softcapping"), finalCap = SoftCap("final_logit_softcapping");
        if (f.Object("rope_parameters") is { } parameters && (parameters.ContainsKey("full_attention") || parameters.ContainsKey("sliding_attention")))
            throw f.Error("rope_parameters", "per-layer-type RoPE parameters (transformers 5) are not read; write rope_theta, rope_scaling and rope_local_base_freq as transformers 4 does");
        int hidden = f.RequiredInt("hidden_size");
        int heads = f.RequiredInt("num_attention_heads");
        int headDim = f.Int("head_dim") ?? 256;
        if (headDim <= 0) throw f.Error("head_dim", $"{headDim} must be positive");
        var (theta, scaling) = ReadRope(f);
        int layers = f.RequiredInt("num_hidden_layers");
        int window = f.Int("sliding_window") ?? 0;
        if (window < 0) throw f.Error("sliding_window", $"must be positive or null, got {window}");
        int period = window == 0 ? 0 : LocalPeriod(f, modelType, layers);
        bool gemma3 = modelType == "gemma3_text";
        double scalar = f.Double("query_pre_attn_scalar") ?? 256;
        if (!(scalar > 0)) throw f.Error("query_pre_attn_scalar", $"must be positive, got {scalar}");
        double localTheta = gemma3 ? f.Double("rope_local_base_freq") ?? 10000 : 0;
        if (gemma3) CheckTheta(f, "rope_local_base_freq", localTheta);
        return new TransformerConfig
        {
            Family = ModelFamily.Llama,
            ModelType = modelType,
            VocabSize = f.RequiredInt("vocab_size"),
            MaxSequenceLength = f.RequiredInt("max_position_embeddings"),
            Layers = layers,
            Embedding = hidden,
            Heads = heads,
            ExplicitHeadSize = headDim * heads == hidden ? 0 : headDim,
            KvHeads = f.Int("num_key_value_heads") ?? heads,
            Hidden = f.RequiredInt("intermediate_size"),
            NormEpsilon = f.Double("rms_norm_eps") ?? 1e-6,
            RopeTheta = theta,
            RopeScaling = scaling,
            TiedEmbeddings = f.Bool("tie_word_embeddings") ?? true,
            InitStd = f.Double("initializer_range") ?? 0.02,
            Bias = false,
            QkNorm = gemma3,
            ScaleEmbeddings = true,
            GeluGate = true,
            PostNorms = true,
            UnitOffsetNorms = true,
            QueryPreAttentionScalar = scalar,
            LocalWindow = period > 0 ? window : 0,
            LocalPeriod = period,
            LocalRopeTheta = localTheta,
            AttentionSoftCap = attentionCap,
            FinalSoftCap = finalCap,
        };
    }

    /// <summary>
    /// The load-balancing loss's coefficient: router_aux_loss_coef (transformers' default 0.001) when output_router_logits is
    /// true, which is when transformers adds it to the loss; 0 (off) otherwise, as the released configs ship it.
    /// </summary>
    private static double RouterAuxLoss(Fields f)
    {
        if (f.Bool("output_router_logits") != true) return 0;
        double coefficient = f.Double("router_aux_loss_coef") ?? 0.001;
        return coefficient >= 0 && !double.IsInfinity(coefficient) ? coefficient
            : throw f.Error("router_aux_loss_coef", $"must be a finite number, 0 or more, got {coefficient}");
    }

    /// <summary>
    /// Every how-many-th layer is global: from layer_types (which must be that pattern: "sliding_attention" except at layers
    /// P - 1, 2P - 1, ...), else Gemma 2's 2, else Gemma 3's sliding_window_pattern (default 6). 0 when no layer is local.
    /// </summary>
    private static int LocalPeriod(Fields f, string modelType, int layers)
    {
        if (f.Node("layer_types") is JsonArray types)
        {
            if (types.Count != layers) throw f.Error("layer_types", $"has {types.Count} entries for {layers} layers");
            var names = types.Select(t => t?.GetValueKind() == JsonValueKind.String ? t.GetValue<string>() : "").ToArray();
            foreach (var name in names)
                if (name is not ("sliding_attention" or "full_attention"))
                    throw f.Error("layer_types", $"'{name}' is not a layer type Tessera reads (sliding_attention, full_attention)");
            if (!names.Contains("sliding_attention")) return 0;
            int firstGlobal = Array.IndexOf(names, "full_attention");
            if (firstGlobal < 0)
                throw f.Error("layer_types", "every layer is sliding_attention: Tessera's interleaved stacks have global layers");
            int period = firstGlobal + 1;
            for (int i = 0; i < layers; i++)
                if (((i + 1) % period != 0) != (names[i] == "sliding_attention"))
                    throw f.Error("layer_types", $"layer {i} is '{names[i]}', but Tessera's interleaved stacks make every {period}-th layer global and the others local");
            return period;
        }
        if (modelType == "gemma2") return 2;
        int pattern = f.Int("sliding_window_pattern") ?? 6;
        return pattern > 0 ? pattern : throw f.Error("sliding_window_pattern", $"must be positive, got {pattern}");
    }

    /// <summary>The fields Llama, Qwen2 and Mistral share (RMSNorm, RoPE, SwiGLU, grouped-query attention).</summary>
    private static TransformerConfig ParseLlamaLike(Fields f, string modelType)
    {
        int hidden = f.RequiredInt("hidden_size");
        int heads = f.RequiredInt("num_attention_heads");
        string act = f.String("hidden_act") ?? "silu";
        if (act != "silu") throw f.Error("hidden_act", $"'{act}' is not supported; {modelType} in Tessera uses silu (SwiGLU)");
        // head_dim need not be hidden_size / num_attention_heads (Qwen3, Mistral Nemo); when it is, the config keeps the
        // derived head size (ExplicitHeadSize 0), as one without head_dim does.
        int explicitHeadSize = 0;
        if (f.Int("head_dim") is int headDim)
        {
            if (headDim <= 0) throw f.Error("head_dim", $"{headDim} must be positive");
            if (heads <= 0 || headDim * heads != hidden) explicitHeadSize = headDim;
        }
        bool phi3 = modelType == "phi3";
        double partialRotary = 0;
        if (f.Double("partial_rotary_factor") is double partial && partial != 1.0)
        {
            if (!phi3) throw f.Error("partial_rotary_factor", $"{partial} is not supported for model_type '{modelType}': Tessera rotates part of each head for phi3 only");
            if (!(partial > 0 && partial < 1)) throw f.Error("partial_rotary_factor", $"must be in (0, 1], got {partial}");
            partialRotary = partial;
        }
        var (theta, scaling) = ReadRope(f, longRope: phi3);
        int maxPositions = f.RequiredInt("max_position_embeddings");
        var config = new TransformerConfig
        {
            Family = ModelFamily.Llama,
            ModelType = modelType,
            VocabSize = f.RequiredInt("vocab_size"),
            MaxSequenceLength = maxPositions,
            Layers = f.RequiredInt("num_hidden_layers"),
            Embedding = hidden,
            Heads = heads,
            ExplicitHeadSize = explicitHeadSize,
            KvHeads = f.Int("num_key_value_heads") ?? heads,
            Hidden = f.RequiredInt("intermediate_size"),
            NormEpsilon = f.Double("rms_norm_eps") ?? 1e-6,
            RopeTheta = theta,
            RopeScaling = scaling,
            PartialRotaryFactor = partialRotary,
            TiedEmbeddings = f.Bool("tie_word_embeddings") ?? false,
            InitStd = f.Double("initializer_range") ?? 0.02,
            Bias = false,
        };
        if (scaling?.Type == RopeScalingType.Dynamic)
        {
            // Dynamic NTK exists to run past max_position_embeddings: Tessera admits factor times as many positions.
            long extended = (long)Math.Floor(maxPositions * scaling.Factor);
            config = config with { OriginalMaxSequenceLength = maxPositions, MaxSequenceLength = (int)Math.Min(extended, int.MaxValue) };
        }
        return config;
    }

    /// <summary>
    /// A config.json that transformers' AutoConfig / AutoModelForCausalLM loads (unpadded vocabulary), for weights saved as
    /// <paramref name="torchDtype"/> ("float32", "bfloat16", "float16"), with the special token ids of
    /// <paramref name="generation"/> when given. RoPE is written as transformers 4 spells it (rope_theta and rope_scaling),
    /// which transformers 5 also reads.
    /// </summary>
    public static string ToJson(TransformerConfig config, string torchDtype = "float32", GenerationDefaults? generation = null)
    {
        config.Validate();
        JsonObject o = config.Family switch
        {
            ModelFamily.Gpt2 => ToGpt2(config),
            ModelFamily.Llama when config.EffectiveModelType is "gemma2" or "gemma3_text" => ToGemma(config),
            ModelFamily.Llama => ToLlamaLike(config),
            _ => throw new ArgumentOutOfRangeException(nameof(config), config.Family, "unknown family"),
        };
        o["torch_dtype"] = torchDtype;     // transformers 4 reads this name
        o["dtype"] = torchDtype;           // transformers 5 writes and reads this one
        if (generation is not null)
        {
            if (generation.BosTokenId is int bos) o["bos_token_id"] = bos;
            if (generation.EosTokenIds.Count > 0)
                o["eos_token_id"] = generation.EosTokenIds.Count == 1 ? generation.EosTokenIds[0] : new JsonArray(generation.EosTokenIds.Select(i => (JsonNode)i).ToArray());
            if (generation.PadTokenId is int pad) o["pad_token_id"] = pad;
        }
        WriteFloatsWithAPoint(o);
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>
    /// Gives every floating-point value of <paramref name="node"/> that is a whole number a decimal point (0.0, not 0), in
    /// place. transformers 5 checks its configs' typed fields, and a float field given 0 (router_jitter_noise, a soft cap of
    /// 30, a LongRoPE factor of 1) is refused as an int; System.Text.Json writes a whole double without the point. Integer
    /// fields are written from ints and stay as they are.
    /// </summary>
    private static void WriteFloatsWithAPoint(JsonNode? node)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var key in o.Select(p => p.Key).ToList())
                    if (WithAPoint(o[key]) is { } value) o[key] = value; else WriteFloatsWithAPoint(o[key]);
                break;
            case JsonArray a:
                for (int i = 0; i < a.Count; i++)
                    if (WithAPoint(a[i]) is { } value) a[i] = value; else WriteFloatsWithAPoint(a[i]);
                break;
        }

        static JsonNode? WithAPoint(JsonNode? n) =>
            n is JsonValue v && !v.TryGetValue<JsonElement>(out _) && v.TryGetValue<double>(out double d) && double.IsFinite(d) && d == Math.Floor(d) && Math.Abs(d) < 1e15
                ? JsonValue.Create(JsonDocument.Parse(d.ToString("F1", System.Globalization.CultureInfo.InvariantCulture)).RootElement)
                : null;
    }

    /// <summary>Writes <see cref="ToJson"/> to <paramref name="path"/>.</summary>
    public static void Save(TransformerConfig config, string path) => File.WriteAllText(path, ToJson(config) + "\n");

    private static JsonObject ToGpt2(TransformerConfig c)
    {
        if (!c.Bias) throw new ArgumentException("TransformerConfig: a GPT-2 export needs Bias = true (Hugging Face GPT-2 always has biases)");
        if (c.Heads * c.HeadSize != c.Embedding)
            throw new ArgumentException($"TransformerConfig: a GPT-2 export needs the head size to be Embedding / Heads (HF GPT-2 has no head_dim); ExplicitHeadSize is {c.ExplicitHeadSize}");
        if (c.EffectiveKvHeads != c.Heads) throw new ArgumentException("TransformerConfig: a GPT-2 export needs KvHeads = Heads (no grouped-query attention in Hugging Face GPT-2)");
        return new JsonObject
        {
            ["architectures"] = new JsonArray("GPT2LMHeadModel"),
            ["model_type"] = "gpt2",
            ["vocab_size"] = c.VocabSize,
            ["n_positions"] = c.MaxSequenceLength,
            ["n_ctx"] = c.MaxSequenceLength,
            ["n_embd"] = c.Embedding,
            ["n_layer"] = c.Layers,
            ["n_head"] = c.Heads,
            ["n_inner"] = c.EffectiveHidden,
            ["activation_function"] = "gelu_new",
            ["layer_norm_epsilon"] = c.NormEpsilon,
            ["initializer_range"] = c.InitStd,
            ["resid_pdrop"] = 0.0,
            ["embd_pdrop"] = 0.0,
            ["attn_pdrop"] = 0.0,
            ["tie_word_embeddings"] = c.TiedEmbeddings,
        };
    }

    private static JsonObject ToLlamaLike(TransformerConfig c)
    {
        if (c.Bias) throw new ArgumentException("TransformerConfig: a Llama-family export needs Bias = false");
        string type = c.EffectiveModelType;
        if (type is not ("llama" or "qwen2" or "qwen3" or "mistral" or "mixtral" or "qwen3_moe" or "qwen2_moe" or "phi3"))
            throw new ArgumentException($"TransformerConfig: ModelType '{type}' is not a Llama-family model_type (llama, qwen2, qwen3, mistral, mixtral, qwen3_moe, qwen2_moe, phi3)");
        if (c.QkNorm != (type is "qwen3" or "qwen3_moe"))
            throw new ArgumentException($"TransformerConfig: QkNorm = {c.QkNorm} cannot be exported as model_type '{type}' (only qwen3 and qwen3_moe have q/k head norms, and always)");
        if (c.IsMixtureOfExperts != (type is "mixtral" or "qwen3_moe" or "qwen2_moe"))
            throw new ArgumentException($"TransformerConfig: Experts = {c.Experts} cannot be exported as model_type '{type}' (mixtral, qwen3_moe and qwen2_moe are the mixtures of experts, and always have experts)");
        if (c.HasSharedExpert != (type == "qwen2_moe"))
            throw new ArgumentException($"TransformerConfig: SharedExpertHidden = {c.SharedExpertHidden} cannot be exported as model_type '{type}' (only qwen2_moe has a shared expert, and always)");
        if (type == "mixtral" && (!c.NormalizeExpertWeights || c.EffectiveExpertHidden != c.EffectiveHidden))
            throw new ArgumentException("TransformerConfig: a mixtral export needs NormalizeExpertWeights = true and ExpertHidden = Hidden (Mixtral always renormalizes, and its experts are intermediate_size wide)");
        if (c.AttentionBias != (type is "qwen2" or "qwen2_moe"))
            throw new ArgumentException($"TransformerConfig: AttentionBias = {c.AttentionBias} cannot be exported as model_type '{type}' (only qwen2 and qwen2_moe have q/k/v biases, and always)");
        if (c.SlidingWindow > 0 && type is not ("mistral" or "mixtral" or "phi3"))
            throw new ArgumentException($"TransformerConfig: SlidingWindow = {c.SlidingWindow} can only be exported as model_type 'mistral', 'mixtral' or 'phi3'");
        if (c.ScaleEmbeddings || c.GeluGate || c.PostNorms || c.UnitOffsetNorms || c.LocalWindow > 0 || c.LocalRopeTheta > 0 || c.QueryPreAttentionScalar > 0
            || c.AttentionSoftCap > 0 || c.FinalSoftCap > 0)
            throw new ArgumentException($"TransformerConfig: Gemma's settings (ScaleEmbeddings, GeluGate, PostNorms, UnitOffsetNorms, LocalWindow, LocalRopeTheta, QueryPreAttentionScalar, the soft caps) cannot be exported as model_type '{type}'; use gemma2 or gemma3_text");
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(type switch
            {
                "qwen2" => "Qwen2ForCausalLM", "qwen3" => "Qwen3ForCausalLM", "mistral" => "MistralForCausalLM", "mixtral" => "MixtralForCausalLM",
                "qwen3_moe" => "Qwen3MoeForCausalLM", "qwen2_moe" => "Qwen2MoeForCausalLM", "phi3" => "Phi3ForCausalLM", _ => "LlamaForCausalLM",
            }),
            ["model_type"] = type,
        };
        AddDecoderShape(o, c, c.OriginalMaxSequenceLength > 0 ? c.OriginalMaxSequenceLength : c.MaxSequenceLength);
        o["hidden_act"] = "silu";
        if (type != "phi3" && (c.PartialRotaryFactor is not (0 or 1) || c.RopeScaling?.Type == RopeScalingType.LongRope))
            throw new ArgumentException($"TransformerConfig: PartialRotaryFactor and LongRoPE can only be exported as model_type 'phi3', not '{type}'");
        switch (type)
        {
            case "llama":
                o["attention_bias"] = false;
                o["mlp_bias"] = false;
                break;
            case "qwen2":
                o["use_sliding_window"] = false;
                o["sliding_window"] = null;
                o["max_window_layers"] = c.Layers;
                break;
            case "qwen3":
                o["attention_bias"] = false;
                o["use_sliding_window"] = false;
                o["sliding_window"] = null;
                o["max_window_layers"] = c.Layers;
                break;
            case "mistral":
                o["sliding_window"] = c.SlidingWindow > 0 ? c.SlidingWindow : null;
                break;
            case "mixtral":
                o["sliding_window"] = c.SlidingWindow > 0 ? c.SlidingWindow : null;
                o["num_local_experts"] = c.Experts;
                o["num_experts_per_tok"] = c.ExpertsPerToken;
                o["router_jitter_noise"] = 0.0;
                break;
            case "phi3":
                o["sliding_window"] = c.SlidingWindow > 0 ? c.SlidingWindow : null;
                // Phi3Config reads original_max_position_embeddings (default 4096) to switch longrope's factors and to drop the
                // cache in generation past it: longrope's own, else the context itself.
                o["original_max_position_embeddings"] = c.RopeScaling is { Type: RopeScalingType.LongRope } lr ? lr.OriginalMaxPositions : o["max_position_embeddings"]!.GetValue<int>();
                o["partial_rotary_factor"] = c.PartialRotaryFactor is > 0 and < 1 ? c.PartialRotaryFactor : 1.0;
                o["resid_pdrop"] = 0.0;
                o["embd_pdrop"] = 0.0;
                // Phi3Config's defaults (pad 32000, bos 1, eos 32000) name Phi-3's vocabulary; a padding id past a smaller
                // vocabulary fails nn.Embedding. Null unless the generation defaults below give them.
                o["pad_token_id"] = null;
                o["bos_token_id"] = null;
                o["eos_token_id"] = null;
                break;
            case "qwen3_moe" or "qwen2_moe":
                // Qwen3-MoE's attention has no biases (Qwen2-MoE's has, always, and no field for it); every layer sparse.
                if (type == "qwen3_moe") o["attention_bias"] = false;
                o["use_sliding_window"] = false;
                o["sliding_window"] = null;
                o["max_window_layers"] = c.Layers;
                o["num_experts"] = c.Experts;
                o["num_experts_per_tok"] = c.ExpertsPerToken;
                o["moe_intermediate_size"] = c.EffectiveExpertHidden;
                if (type == "qwen2_moe") o["shared_expert_intermediate_size"] = c.SharedExpertHidden;
                o["norm_topk_prob"] = c.NormalizeExpertWeights;
                o["decoder_sparse_step"] = 1;
                o["mlp_only_layers"] = new JsonArray();
                break;
        }
        if (c.IsMixtureOfExperts)
        {
            // transformers adds the load-balancing loss only with output_router_logits; off, its coefficient is left at the default.
            o["output_router_logits"] = c.RouterAuxLossCoefficient > 0;
            if (c.RouterAuxLossCoefficient > 0) o["router_aux_loss_coef"] = c.RouterAuxLossCoefficient;
        }
        return o;
    }

    private static JsonObject ToGemma(TransformerConfig c)
    {
        string type = c.EffectiveModelType;
        bool gemma3 = type == "gemma3_text";
        if (c.Bias || c.AttentionBias || c.SlidingWindow > 0)
            throw new ArgumentException($"TransformerConfig: a {type} export has no biases and no all-layer SlidingWindow (local layers use LocalWindow)");
        if (!(c.ScaleEmbeddings && c.GeluGate && c.PostNorms && c.UnitOffsetNorms))
            throw new ArgumentException($"TransformerConfig: a {type} export needs ScaleEmbeddings, GeluGate, PostNorms and UnitOffsetNorms (Hugging Face's Gemma always has them)");
        if (c.QkNorm != gemma3)
            throw new ArgumentException($"TransformerConfig: QkNorm = {c.QkNorm} cannot be exported as model_type '{type}' (gemma3_text has q/k norms, gemma2 none)");
        if (!gemma3 && (c.LocalRopeTheta > 0 || (c.LocalPeriod is not (0 or 2))))
            throw new ArgumentException($"TransformerConfig: a gemma2 export has its even layers local (LocalPeriod 2) and one RoPE base (LocalRopeTheta 0); got LocalPeriod {c.LocalPeriod}, LocalRopeTheta {c.LocalRopeTheta}");
        var layerTypes = new JsonArray(Enumerable.Range(0, c.Layers).Select(i => (JsonNode)(c.IsLocalLayer(i) ? "sliding_attention" : "full_attention")).ToArray());
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(gemma3 ? "Gemma3ForCausalLM" : "Gemma2ForCausalLM"),
            ["model_type"] = type,
        };
        AddDecoderShape(o, c, c.MaxSequenceLength);
        o["hidden_activation"] = "gelu_pytorch_tanh";
        o["query_pre_attn_scalar"] = c.QueryPreAttentionScalar is > 0 and var q && q != Math.Floor(q) ? (JsonNode)q   // an int in transformers' Gemma configs
            : (JsonNode)(int)(c.QueryPreAttentionScalar > 0 ? c.QueryPreAttentionScalar : c.HeadSize);
        // Without local layers the window is as wide as the context: every layer then sees every position.
        o["sliding_window"] = c.LocalWindow > 0 ? c.LocalWindow : c.MaxSequenceLength;
        o["layer_types"] = layerTypes;
        o["attn_logit_softcapping"] = c.AttentionSoftCap > 0 ? c.AttentionSoftCap : null;
        o["final_logit_softcapping"] = c.FinalSoftCap > 0 ? c.FinalSoftCap : null;
        o["attention_bias"] = false;
        if (gemma3)
        {
            o["rope_local_base_freq"] = c.LocalRopeTheta > 0 ? c.LocalRopeTheta : c.RopeTheta;
            o["sliding_window_pattern"] = c.LocalPeriod > 0 ? c.LocalPeriod : c.Layers + 1;   // transformers before layer_types
        }
        return o;
    }

    /// <summary>
    /// Adds the keys every Llama-shaped decoder's config.json has (Llama, Mistral, Qwen, Phi-3, the mixtures of experts,
    /// Gemma): the vocabulary, <paramref name="maxPositions"/>, the widths, layers and heads, the norm's epsilon, RoPE's base
    /// and scaling, the initializer's spread, the tied head and no attention dropout.
    /// </summary>
    private static void AddDecoderShape(JsonObject o, TransformerConfig c, int maxPositions)
    {
        o["vocab_size"] = c.VocabSize;
        o["max_position_embeddings"] = maxPositions;
        o["hidden_size"] = c.Embedding;
        o["intermediate_size"] = c.EffectiveHidden;
        o["num_hidden_layers"] = c.Layers;
        o["num_attention_heads"] = c.Heads;
        o["num_key_value_heads"] = c.EffectiveKvHeads;
        o["head_dim"] = c.HeadSize;
        o["rms_norm_eps"] = c.NormEpsilon;
        o["rope_theta"] = c.RopeTheta;
        o["rope_scaling"] = c.RopeScaling is { } r ? RopeScalingJson(r) : null;
        o["initializer_range"] = c.InitStd;
        o["tie_word_embeddings"] = c.TiedEmbeddings;
        o["attention_dropout"] = 0.0;
    }

    private static JsonObject RopeScalingJson(RopeScaling r)
    {
        if (r.Type == RopeScalingType.LongRope)
        {
            // Phi3Config (transformers 4.4x) accepts exactly type, short_factor and long_factor (original_max_position_embeddings
            // at the top level); later versions read "type" as rope_type.
            var lr = new JsonObject
            {
                ["type"] = "longrope",
                ["short_factor"] = new JsonArray(r.ShortFactor!.Select(x => (JsonNode)x).ToArray()),
                ["long_factor"] = new JsonArray(r.LongFactor!.Select(x => (JsonNode)x).ToArray()),
            };
            if (r.AttentionFactor is double af) lr["attention_factor"] = af;
            return lr;
        }
        var o = new JsonObject
        {
            ["rope_type"] = r.Type switch
            {
                RopeScalingType.Linear => "linear",
                RopeScalingType.Dynamic => "dynamic",
                RopeScalingType.Llama3 => "llama3",
                RopeScalingType.Yarn => "yarn",
                _ => throw new ArgumentOutOfRangeException(nameof(r), r.Type, "unknown RoPE scaling type"),
            },
            ["factor"] = r.Factor,
        };
        if (r.OriginalMaxPositions > 0 && r.Type is RopeScalingType.Llama3 or RopeScalingType.Yarn)
            o["original_max_position_embeddings"] = r.OriginalMaxPositions;
        if (r.Type == RopeScalingType.Llama3)
        {
            o["low_freq_factor"] = r.LowFrequencyFactor;
            o["high_freq_factor"] = r.HighFrequencyFactor;
        }
        if (r.Type == RopeScalingType.Yarn)
        {
            if (r.AttentionFactor is double a) o["attention_factor"] = a;
            o["beta_fast"] = r.BetaFast;
            o["beta_slow"] = r.BetaSlow;
            if (r.Mscale is double m) o["mscale"] = m;
            if (r.MscaleAllDim is double ma) o["mscale_all_dim"] = ma;
            if (!r.Truncate) o["truncate"] = false;
        }
        return o;
    }

    /// <summary>
    /// RoPE theta and scaling from transformers 4's top-level rope_theta + rope_scaling, or transformers 5's rope_parameters
    /// (theta inside). rope_type "default" (or none) is plain RoPE.
    /// </summary>
    private static (double Theta, RopeScaling? Scaling) ReadRope(Fields f, bool longRope = false)
    {
        string field = f.Has("rope_parameters") ? "rope_parameters" : "rope_scaling";
        var rope = f.Object(field);
        double theta = f.Double("rope_theta") ?? 10000;
        if (rope is null) return (CheckTheta(f, "rope_theta", theta), null);
        var r = new Fields(rope, f.Path, field + ".");
        theta = r.Double("rope_theta") ?? theta;
        CheckTheta(r, "rope_theta", theta);
        string type = r.String("rope_type") ?? r.String("type") ?? "default";
        if (longRope && type == "yarn")
            throw r.Error("rope_type", "'yarn' on phi3 is not read: transformers' Phi3Config renames it to longrope (older releases called LongRoPE su or yarn); write rope_type longrope with short_factor and long_factor");
        RopeScalingType kind = type switch
        {
            "default" => default,
            "linear" => RopeScalingType.Linear,
            "dynamic" => RopeScalingType.Dynamic,
            "llama3" => RopeScalingType.Llama3,
            "yarn" => RopeScalingType.Yarn,
            "longrope" or "su" when longRope => RopeScalingType.LongRope,
            "longrope" or "su" => throw r.Error("rope_type", $"'{type}' is not supported for this model_type: Tessera reads LongRoPE for model_type 'phi3' only (supported here: default, linear, dynamic, llama3, yarn)"),
            _ => throw r.Error("rope_type", $"'{type}' is not supported (supported: default, linear, dynamic, llama3, yarn)"),
        };
        if (type == "default") return (theta, null);
        // longrope's factor is optional: transformers takes max_position_embeddings / original_max_position_embeddings.
        double factor = r.Double("factor") ?? (kind == RopeScalingType.LongRope ? 1.0 : throw r.Error("factor", $"is missing (rope_type '{type}' needs it)"));
        var scaling = new RopeScaling
        {
            Type = kind,
            Factor = factor,
            LowFrequencyFactor = kind == RopeScalingType.Llama3 ? r.Double("low_freq_factor") ?? throw r.Error("low_freq_factor", "is missing (rope_type 'llama3' needs it)") : 1.0,
            HighFrequencyFactor = kind == RopeScalingType.Llama3 ? r.Double("high_freq_factor") ?? throw r.Error("high_freq_factor", "is missing (rope_type 'llama3' needs it)") : 4.0,
            OriginalMaxPositions = r.Int("original_max_position_embeddings") ?? f.Int("original_max_position_embeddings") ?? (kind == RopeScalingType.LongRope ? 4096 : 0),   // Phi3Config's default
            AttentionFactor = r.Double("attention_factor"),
            BetaFast = r.Double("beta_fast") ?? 32,
            BetaSlow = r.Double("beta_slow") ?? 1,
            Mscale = r.Double("mscale"),
            MscaleAllDim = r.Double("mscale_all_dim"),
            Truncate = r.Bool("truncate") ?? true,
            ShortFactor = kind == RopeScalingType.LongRope ? r.Doubles("short_factor") ?? throw r.Error("short_factor", "is missing (rope_type 'longrope' needs it)") : null,
            LongFactor = kind == RopeScalingType.LongRope ? r.Doubles("long_factor") ?? throw r.Error("long_factor", "is missing (rope_type 'longrope' needs it)") : null,
        };
        try
        {
            scaling.Validate();
        }
        catch (ArgumentException e)
        {
            throw new HuggingFaceFormatException(f.Path, $"field '{field}': {e.Message.Replace("rope_scaling.", "", StringComparison.Ordinal)}", e);
        }
        return (theta, scaling);
    }

    private static double CheckTheta(Fields f, string field, double theta) =>
        theta > 0 && !double.IsInfinity(theta) ? theta : throw f.Error(field, $"must be a positive number, got {theta}");

    /// <summary>Typed access to config.json fields with errors naming the file and the field.</summary>
    private sealed class Fields(JsonObject root, string path, string prefix = "")
    {
        public HuggingFaceFormatException Error(string field, string problem) => new(path, $"field '{prefix}{field}': {problem}");

        /// <summary>The raw node of a field, or null when absent.</summary>
        public JsonNode? Node(string field) => root.TryGetPropertyValue(field, out var node) ? node : null;

        /// <summary>The config.json path, for messages.</summary>
        public string Path => path;

        /// <summary>A nested object, or null when absent.</summary>
        public JsonObject? Object(string field)
        {
            if (!root.TryGetPropertyValue(field, out var node) || node is null) return null;
            return node as JsonObject ?? throw Error(field, $"must be an object, got {node.GetValueKind()}");
        }

        /// <summary>Present and not null.</summary>
        public bool Has(string field) => root.TryGetPropertyValue(field, out var n) && n is not null;

        private JsonValue? Value(string field, string expected)
        {
            if (!root.TryGetPropertyValue(field, out var node) || node is null) return null;
            return node as JsonValue ?? throw Error(field, $"must be {expected}, got {node.GetValueKind()}");
        }

        public string? String(string field)
        {
            var v = Value(field, "a string");
            if (v is null) return null;
            return v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : throw Error(field, $"must be a string, got {v.ToJsonString()}");
        }

        public bool? Bool(string field)
        {
            var v = Value(field, "true or false");
            if (v is null) return null;
            return v.GetValueKind() switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Error(field, $"must be true or false, got {v.ToJsonString()}"),
            };
        }

        public double? Double(string field)
        {
            var v = Value(field, "a number");
            if (v is null) return null;
            return v.GetValueKind() == JsonValueKind.Number ? v.GetValue<double>() : throw Error(field, $"must be a number, got {v.ToJsonString()}");
        }

        /// <summary>An array of numbers, or null when absent.</summary>
        public double[]? Doubles(string field)
        {
            if (!root.TryGetPropertyValue(field, out var node) || node is null) return null;
            if (node is not JsonArray array) throw Error(field, $"must be an array of numbers, got {node.GetValueKind()}");
            var result = new double[array.Count];
            for (int i = 0; i < array.Count; i++)
                result[i] = array[i] is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? v.GetValue<double>()
                    : throw Error(field, $"element {i} must be a number, got {array[i]?.ToJsonString() ?? "null"}");
            return result;
        }

        public int? Int(string field)
        {
            var v = Value(field, "an integer");
            if (v is null) return null;
            if (v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out JsonElement e) && e.TryGetInt32(out int i)) return i;
            if (v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out int j)) return j;
            throw Error(field, $"must be an integer, got {v.ToJsonString()}");
        }

        public int RequiredInt(string field)
        {
            int value = Int(field) ?? throw Error(field, "is missing");
            return value > 0 ? value : throw Error(field, $"must be positive, got {value}");
        }
    }
}
