using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tessera.Models.HuggingFace;

/// <summary>
/// Reads a Hugging Face config.json (model_type "gpt2" or "llama") into a <see cref="TransformerConfig"/>
/// and writes one back for export. Fields Tessera cannot honour (other activations, biases on Llama,
/// RoPE scaling) are rejected with a message naming the file and the field rather than silently ignored.
/// </summary>
public static class HuggingFaceConfig
{
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
            _ => throw new HuggingFaceFormatException(path, $"model_type '{modelType}' is not supported (supported: gpt2, llama)"),
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
        int hidden = f.RequiredInt("hidden_size");
        int heads = f.RequiredInt("num_attention_heads");
        string act = f.String("hidden_act") ?? "silu";
        if (act != "silu") throw f.Error("hidden_act", $"'{act}' is not supported; Llama in Tessera uses silu (SwiGLU)");
        if (f.Bool("attention_bias") == true) throw f.Error("attention_bias", "true is not supported: Tessera's Llama has no attention biases");
        if (f.Bool("mlp_bias") == true) throw f.Error("mlp_bias", "true is not supported: Tessera's Llama has no MLP biases");
        if (f.Has("rope_scaling"))
            throw f.Error("rope_scaling", "RoPE scaling is not supported (only plain RoPE); convert a model without rope_scaling");
        if (f.Int("head_dim") is int headDim && heads > 0 && headDim * heads != hidden)
            throw f.Error("head_dim", $"{headDim} must equal hidden_size / num_attention_heads ({hidden} / {heads})");
        return new TransformerConfig
        {
            Family = ModelFamily.Llama,
            VocabSize = f.RequiredInt("vocab_size"),
            MaxSequenceLength = f.RequiredInt("max_position_embeddings"),
            Layers = f.RequiredInt("num_hidden_layers"),
            Embedding = hidden,
            Heads = heads,
            KvHeads = f.Int("num_key_value_heads") ?? heads,
            Hidden = f.RequiredInt("intermediate_size"),
            NormEpsilon = f.Double("rms_norm_eps") ?? 1e-6,
            RopeTheta = f.Double("rope_theta") ?? RopeParametersTheta(f) ?? 10000,
            TiedEmbeddings = f.Bool("tie_word_embeddings") ?? false,
            InitStd = f.Double("initializer_range") ?? 0.02,
            Bias = false,
        };
    }

    /// <summary>A config.json that transformers' AutoConfig / AutoModelForCausalLM loads (unpadded vocab, F32 weights).</summary>
    public static string ToJson(TransformerConfig config)
    {
        config.Validate();
        JsonObject o = config.Family switch
        {
            ModelFamily.Gpt2 => ToGpt2(config),
            ModelFamily.Llama => ToLlama(config),
            _ => throw new ArgumentOutOfRangeException(nameof(config), config.Family, "unknown family"),
        };
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Writes <see cref="ToJson"/> to <paramref name="path"/>.</summary>
    public static void Save(TransformerConfig config, string path) => File.WriteAllText(path, ToJson(config) + "\n");

    private static JsonObject ToGpt2(TransformerConfig c)
    {
        if (!c.Bias) throw new ArgumentException("TransformerConfig: a GPT-2 export needs Bias = true (Hugging Face GPT-2 always has biases)");
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
            ["torch_dtype"] = "float32",
        };
    }

    private static JsonObject ToLlama(TransformerConfig c)
    {
        if (c.Bias) throw new ArgumentException("TransformerConfig: a Llama export needs Bias = false");
        return new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["vocab_size"] = c.VocabSize,
            ["max_position_embeddings"] = c.MaxSequenceLength,
            ["hidden_size"] = c.Embedding,
            ["intermediate_size"] = c.EffectiveHidden,
            ["num_hidden_layers"] = c.Layers,
            ["num_attention_heads"] = c.Heads,
            ["num_key_value_heads"] = c.EffectiveKvHeads,
            ["head_dim"] = c.HeadSize,
            ["hidden_act"] = "silu",
            ["rms_norm_eps"] = c.NormEpsilon,
            ["rope_theta"] = c.RopeTheta,
            ["rope_scaling"] = null,
            ["attention_bias"] = false,
            ["mlp_bias"] = false,
            ["initializer_range"] = c.InitStd,
            ["tie_word_embeddings"] = c.TiedEmbeddings,
            ["torch_dtype"] = "float32",
        };
    }

    // transformers 5 writes "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}.
    private static double? RopeParametersTheta(Fields f)
    {
        var rope = f.Object("rope_parameters");
        if (rope is null) return null;
        var sub = new Fields(rope, f.Path);
        string type = sub.String("rope_type") ?? "default";
        if (type != "default")
            throw f.Error("rope_parameters", $"rope_type '{type}' is not supported (only plain RoPE, rope_type 'default')");
        return sub.Double("rope_theta");
    }

    /// <summary>Typed access to config.json fields with errors naming the file and the field.</summary>
    private sealed class Fields(JsonObject root, string path)
    {
        public HuggingFaceFormatException Error(string field, string problem) => new(path, $"field '{field}': {problem}");

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
