using Tessera.Tensors;

namespace Tessera.Models.HuggingFace;

/// <summary>
/// The Hugging Face name map of a model family, kept as data (torchtitan's state-dict adapter): one
/// <see cref="WeightMapRow"/> per Tessera parameter pattern, expanded for a configuration into
/// <see cref="Entries"/>. Converts host tensors between Hugging Face names/layouts and Tessera's canonical
/// ones, checking that nothing is missing, nothing unexpected is present (known buffers aside) and every
/// shape matches the configuration.
/// </summary>
public sealed class HuggingFaceWeightMap
{
    private static HuggingFaceTensorPattern Hf(string name, Func<TransformerConfig, int[]> shape) => new(name, shape);

    private static WeightMapRow Row(string canonical, Func<TransformerConfig, int[]> shape, WeightTransform transform,
        params HuggingFaceTensorPattern[] sources) => new(canonical, shape, transform, sources);

    // Shapes: V vocab, Vp padded vocab, T positions, C width, F MLP width, H/K query/kv heads, D head size.
    private static int[] VpC(TransformerConfig c) => [c.EffectivePaddedVocab, c.Embedding];
    private static int[] VC(TransformerConfig c) => [c.VocabSize, c.Embedding];
    private static int[] C(TransformerConfig c) => [c.Embedding];
    private static int[] CC(TransformerConfig c) => [c.Embedding, c.Embedding];
    private static int[] FC(TransformerConfig c) => [c.EffectiveHidden, c.Embedding];
    private static int[] CF(TransformerConfig c) => [c.Embedding, c.EffectiveHidden];
    private static int[] F(TransformerConfig c) => [c.EffectiveHidden];
    private static int[] D(TransformerConfig c) => [c.HeadSize];
    private static int[] CHd(TransformerConfig c) => [c.Embedding, c.Heads * c.HeadSize];
    private static int[] Qkv(TransformerConfig c) => [(c.Heads + 2 * c.EffectiveKvHeads) * c.HeadSize, c.Embedding];

    /// <summary>GPT-2 (GPT2LMHeadModel.save_pretrained): Conv1D weights are stored (in, out), hence the transposes.</summary>
    public static IReadOnlyList<WeightMapRow> Gpt2Rows { get; } =
    [
        Row("tok_emb.weight", VpC, WeightTransform.PadRows, Hf("transformer.wte.weight", VC)),
        Row("pos_emb.weight", c => [c.MaxSequenceLength, c.Embedding], WeightTransform.Identity, Hf("transformer.wpe.weight", c => [c.MaxSequenceLength, c.Embedding])),
        Row("blocks.{i}.norm1.weight", C, WeightTransform.Identity, Hf("transformer.h.{i}.ln_1.weight", C)),
        Row("blocks.{i}.norm1.bias", C, WeightTransform.Identity, Hf("transformer.h.{i}.ln_1.bias", C)),
        Row("blocks.{i}.attn.qkv.weight", Qkv, WeightTransform.Transpose, Hf("transformer.h.{i}.attn.c_attn.weight", c => [c.Embedding, 3 * c.Embedding])),
        Row("blocks.{i}.attn.qkv.bias", c => [3 * c.Embedding], WeightTransform.Identity, Hf("transformer.h.{i}.attn.c_attn.bias", c => [3 * c.Embedding])),
        Row("blocks.{i}.attn.proj.weight", CC, WeightTransform.Transpose, Hf("transformer.h.{i}.attn.c_proj.weight", CC)),
        Row("blocks.{i}.attn.proj.bias", C, WeightTransform.Identity, Hf("transformer.h.{i}.attn.c_proj.bias", C)),
        Row("blocks.{i}.norm2.weight", C, WeightTransform.Identity, Hf("transformer.h.{i}.ln_2.weight", C)),
        Row("blocks.{i}.norm2.bias", C, WeightTransform.Identity, Hf("transformer.h.{i}.ln_2.bias", C)),
        Row("blocks.{i}.mlp.fc.weight", FC, WeightTransform.Transpose, Hf("transformer.h.{i}.mlp.c_fc.weight", CF)),
        Row("blocks.{i}.mlp.fc.bias", F, WeightTransform.Identity, Hf("transformer.h.{i}.mlp.c_fc.bias", F)),
        Row("blocks.{i}.mlp.proj.weight", CF, WeightTransform.Transpose, Hf("transformer.h.{i}.mlp.c_proj.weight", FC)),
        Row("blocks.{i}.mlp.proj.bias", C, WeightTransform.Identity, Hf("transformer.h.{i}.mlp.c_proj.bias", C)),
        Row("final_norm.weight", C, WeightTransform.Identity, Hf("transformer.ln_f.weight", C)),
        Row("final_norm.bias", C, WeightTransform.Identity, Hf("transformer.ln_f.bias", C)),
        Row("lm_head.weight", VpC, WeightTransform.PadRows, Hf("lm_head.weight", VC)) with { UntiedOnly = true },
    ];

    /// <summary>Llama (LlamaForCausalLM): q, k, v projections are stacked by rows into Tessera's fused qkv.</summary>
    public static IReadOnlyList<WeightMapRow> LlamaRows { get; } =
    [
        Row("tok_emb.weight", VpC, WeightTransform.PadRows, Hf("model.embed_tokens.weight", VC)),
        Row("blocks.{i}.norm1.weight", C, WeightTransform.Identity, Hf("model.layers.{i}.input_layernorm.weight", C)),
        Row("blocks.{i}.attn.qkv.weight", Qkv, WeightTransform.ConcatRows,
            Hf("model.layers.{i}.self_attn.q_proj.weight", c => [c.Heads * c.HeadSize, c.Embedding]),
            Hf("model.layers.{i}.self_attn.k_proj.weight", c => [c.EffectiveKvHeads * c.HeadSize, c.Embedding]),
            Hf("model.layers.{i}.self_attn.v_proj.weight", c => [c.EffectiveKvHeads * c.HeadSize, c.Embedding])),
        Row("blocks.{i}.attn.proj.weight", CHd, WeightTransform.Identity, Hf("model.layers.{i}.self_attn.o_proj.weight", CHd)),
        Row("blocks.{i}.norm2.weight", C, WeightTransform.Identity, Hf("model.layers.{i}.post_attention_layernorm.weight", C)),
        Row("blocks.{i}.mlp.gate.weight", FC, WeightTransform.Identity, Hf("model.layers.{i}.mlp.gate_proj.weight", FC)),
        Row("blocks.{i}.mlp.up.weight", FC, WeightTransform.Identity, Hf("model.layers.{i}.mlp.up_proj.weight", FC)),
        Row("blocks.{i}.mlp.proj.weight", CF, WeightTransform.Identity, Hf("model.layers.{i}.mlp.down_proj.weight", CF)),
        Row("final_norm.weight", C, WeightTransform.Identity, Hf("model.norm.weight", C)),
        Row("lm_head.weight", VpC, WeightTransform.PadRows, Hf("lm_head.weight", VC)) with { UntiedOnly = true },
    ];

    /// <summary>
    /// Qwen2 (Qwen2ForCausalLM): Llama's names, plus the q, k and v biases stacked like their weights into Tessera's fused
    /// qkv bias. Mistral (MistralForCausalLM) uses <see cref="LlamaRows"/> as they are.
    /// </summary>
    public static IReadOnlyList<WeightMapRow> Qwen2Rows { get; } =
    [
        .. LlamaRows.Take(2),
        Row("blocks.{i}.attn.qkv.bias", c => [(c.Heads + 2 * c.EffectiveKvHeads) * c.HeadSize], WeightTransform.ConcatRows,
            Hf("model.layers.{i}.self_attn.q_proj.bias", c => [c.Heads * c.HeadSize]),
            Hf("model.layers.{i}.self_attn.k_proj.bias", c => [c.EffectiveKvHeads * c.HeadSize]),
            Hf("model.layers.{i}.self_attn.v_proj.bias", c => [c.EffectiveKvHeads * c.HeadSize])),
        .. LlamaRows.Skip(2),
    ];

    /// <summary>
    /// Qwen3 (Qwen3ForCausalLM): Llama's names (no q/k/v biases), plus each layer's per-head RMSNorm weights of q and k (D),
    /// after the fused qkv as Tessera declares them.
    /// </summary>
    public static IReadOnlyList<WeightMapRow> Qwen3Rows { get; } =
    [
        .. LlamaRows.Take(3),
        Row("blocks.{i}.attn.q_norm.weight", D, WeightTransform.Identity, Hf("model.layers.{i}.self_attn.q_norm.weight", D)),
        Row("blocks.{i}.attn.k_norm.weight", D, WeightTransform.Identity, Hf("model.layers.{i}.self_attn.k_norm.weight", D)),
        .. LlamaRows.Skip(3),
    ];

    /// <summary>
    /// Phi-3 and Phi-4 (Phi3ForCausalLM): Llama's names, but q, k and v saved fused as self_attn.qkv_proj ((H + 2K)·D x C:
    /// the query rows, then the key rows, then the value rows), Tessera's qkv layout as it is, and the MLP's gate and up
    /// saved fused as mlp.gate_up_proj (2F x C, the gate's F rows first: transformers chunks the product in two, gate then
    /// up), each of Tessera's gate and up one half of it.
    /// </summary>
    public static IReadOnlyList<WeightMapRow> Phi3Rows { get; } =
    [
        LlamaRows[0],
        LlamaRows[1],
        Row("blocks.{i}.attn.qkv.weight", Qkv, WeightTransform.Identity, Hf("model.layers.{i}.self_attn.qkv_proj.weight", Qkv)),
        LlamaRows[3],
        LlamaRows[4],
        new WeightMapRow("blocks.{i}.mlp.gate.weight", FC, WeightTransform.RowBlock, [Hf("model.layers.{i}.mlp.gate_up_proj.weight", GateUp)], SourceRowOffset: _ => 0),
        new WeightMapRow("blocks.{i}.mlp.up.weight", FC, WeightTransform.RowBlock, [Hf("model.layers.{i}.mlp.gate_up_proj.weight", GateUp)], SourceRowOffset: c => c.EffectiveHidden),
        LlamaRows[7],
        LlamaRows[8],
        LlamaRows[9],
    ];

    private static int[] GateUp(TransformerConfig c) => [2 * c.EffectiveHidden, c.Embedding];

    /// <summary>
    /// A sparse mixture-of-experts model's rows: <paramref name="dense"/>'s without the MLP, and in its place the router
    /// ("blocks.{i}.mlp.router", E x C) and each expert j's gate, up (F' x C) and proj (C x F'), in Tessera's declaration
    /// order. Mixtral (MixtralForCausalLM) names them block_sparse_moe.gate and block_sparse_moe.experts.{j}.w1 (gate), w3
    /// (up) and w2 (down); Qwen3-MoE (Qwen3MoeForCausalLM) mlp.gate and mlp.experts.{j}.gate_proj, up_proj and down_proj.
    /// A shared expert (Qwen2-MoE, Qwen2MoeForCausalLM, with Qwen3-MoE's names for the rest) follows the experts: its gate, up
    /// (F_s x C) and proj (C x F_s) from mlp.shared_expert.gate_proj, up_proj and down_proj, and its gate (1 x C) from
    /// mlp.shared_expert_gate.
    /// </summary>
    public static IReadOnlyList<WeightMapRow> MixtureOfExpertsRows(IReadOnlyList<WeightMapRow> dense, TransformerConfig config, bool mixtral)
    {
        ArgumentNullException.ThrowIfNull(dense);
        ArgumentNullException.ThrowIfNull(config);
        string prefix = mixtral ? "model.layers.{i}.block_sparse_moe" : "model.layers.{i}.mlp";
        var (gate, up, down) = mixtral ? ("w1", "w3", "w2") : ("gate_proj", "up_proj", "down_proj");
        static int[] EC(TransformerConfig c) => [c.Experts, c.Embedding];
        static int[] FeC(TransformerConfig c) => [c.EffectiveExpertHidden, c.Embedding];
        static int[] CFe(TransformerConfig c) => [c.Embedding, c.EffectiveExpertHidden];
        static int[] FsC(TransformerConfig c) => [c.SharedExpertHidden, c.Embedding];
        static int[] CFs(TransformerConfig c) => [c.Embedding, c.SharedExpertHidden];
        static int[] OneC(TransformerConfig c) => [1, c.Embedding];
        var rows = new List<WeightMapRow>();
        foreach (var row in dense)
        {
            if (row.Canonical.StartsWith("blocks.{i}.mlp.", StringComparison.Ordinal)) continue;
            rows.Add(row);
            if (row.Canonical != "blocks.{i}.norm2.weight") continue;
            rows.Add(Row("blocks.{i}.mlp.router.weight", EC, WeightTransform.Identity, Hf(prefix + ".gate.weight", EC)));
            for (int j = 0; j < config.Experts; j++)
            {
                string expert = $"{prefix}.experts.{j}.";
                rows.Add(Row($"blocks.{{i}}.mlp.experts.{j}.gate.weight", FeC, WeightTransform.Identity, Hf(expert + gate + ".weight", FeC)));
                rows.Add(Row($"blocks.{{i}}.mlp.experts.{j}.up.weight", FeC, WeightTransform.Identity, Hf(expert + up + ".weight", FeC)));
                rows.Add(Row($"blocks.{{i}}.mlp.experts.{j}.proj.weight", CFe, WeightTransform.Identity, Hf(expert + down + ".weight", CFe)));
            }
            if (!config.HasSharedExpert) continue;
            if (mixtral) throw new ArgumentException("TransformerConfig: Mixtral has no shared expert (SharedExpertHidden must be 0)");
            rows.Add(Row("blocks.{i}.mlp.shared_expert.gate.weight", FsC, WeightTransform.Identity, Hf(prefix + ".shared_expert.gate_proj.weight", FsC)));
            rows.Add(Row("blocks.{i}.mlp.shared_expert.up.weight", FsC, WeightTransform.Identity, Hf(prefix + ".shared_expert.up_proj.weight", FsC)));
            rows.Add(Row("blocks.{i}.mlp.shared_expert.proj.weight", CFs, WeightTransform.Identity, Hf(prefix + ".shared_expert.down_proj.weight", CFs)));
            rows.Add(Row("blocks.{i}.mlp.shared_expert_gate.weight", OneC, WeightTransform.Identity, Hf(prefix + ".shared_expert_gate.weight", OneC)));
        }
        return rows;
    }

    /// <summary>
    /// Gemma 2 (Gemma2ForCausalLM) and, with <paramref name="qkNorm"/>, Gemma 3 text (Gemma3ForCausalLM): Llama's projections,
    /// four norms per block (input_layernorm and pre_feedforward_layernorm are norm1 and norm2; post_attention_layernorm and
    /// post_feedforward_layernorm normalize the branches' outputs) and Gemma 3's q_norm and k_norm; the norm weights w as they
    /// are (Tessera's Gemma norms apply them as 1 + w, as transformers' do).
    /// </summary>
    private static IReadOnlyList<WeightMapRow> GemmaRows(bool qkNorm) =>
    [
        LlamaRows[0],
        Row("blocks.{i}.norm1.weight", C, WeightTransform.Identity, Hf("model.layers.{i}.input_layernorm.weight", C)),
        LlamaRows[2],
        .. qkNorm
            ? new[]
            {
                Row("blocks.{i}.attn.q_norm.weight", D, WeightTransform.Identity, Hf("model.layers.{i}.self_attn.q_norm.weight", D)),
                Row("blocks.{i}.attn.k_norm.weight", D, WeightTransform.Identity, Hf("model.layers.{i}.self_attn.k_norm.weight", D)),
            }
            : [],
        LlamaRows[3],
        Row("blocks.{i}.post_attn_norm.weight", C, WeightTransform.Identity, Hf("model.layers.{i}.post_attention_layernorm.weight", C)),
        Row("blocks.{i}.norm2.weight", C, WeightTransform.Identity, Hf("model.layers.{i}.pre_feedforward_layernorm.weight", C)),
        LlamaRows[5],
        LlamaRows[6],
        LlamaRows[7],
        Row("blocks.{i}.post_mlp_norm.weight", C, WeightTransform.Identity, Hf("model.layers.{i}.post_feedforward_layernorm.weight", C)),
        Row("final_norm.weight", C, WeightTransform.Identity, Hf("model.norm.weight", C)),
        LlamaRows[9],
    ];

    /// <summary>Gemma 2's rows (<see cref="GemmaRows"/>).</summary>
    public static IReadOnlyList<WeightMapRow> Gemma2Rows { get; } = GemmaRows(qkNorm: false);

    /// <summary>Gemma 3 text's rows (<see cref="GemmaRows"/> with q_norm and k_norm).</summary>
    public static IReadOnlyList<WeightMapRow> Gemma3Rows { get; } = GemmaRows(qkNorm: true);

    /// <summary>Non-parameter buffers some GPT-2 checkpoints carry (causal masks); ignored on load.</summary>
    public static IReadOnlyList<string> Gpt2IgnoredBuffers { get; } =
        ["transformer.h.{i}.attn.bias", "transformer.h.{i}.attn.masked_bias"];

    /// <summary>Non-parameter buffers some Llama checkpoints carry (RoPE frequencies); ignored on load.</summary>
    public static IReadOnlyList<string> LlamaIgnoredBuffers { get; } = ["model.layers.{i}.self_attn.rotary_emb.inv_freq"];

    /// <summary>GPT-2 files saved from GPT2Model (not the LM-head model) lack this prefix; both spellings load.</summary>
    private const string Gpt2OptionalPrefix = "transformer.";

    private readonly string? _optionalPrefix;
    private readonly HashSet<string> _ignored = new(StringComparer.Ordinal);

    private HuggingFaceWeightMap(TransformerConfig config, IReadOnlyList<WeightMapRow> rows, IReadOnlyList<string> ignored, string? optionalPrefix)
    {
        Config = config;
        _optionalPrefix = optionalPrefix;
        var entries = new List<WeightMapEntry>();
        foreach (var row in rows)
        {
            if (row.UntiedOnly && config.TiedEmbeddings) continue;
            int count = row.PerLayer ? config.Layers : 1;
            for (int i = 0; i < count; i++)
            {
                string Expand(string pattern) => pattern.Replace("{i}", i.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
                entries.Add(new WeightMapEntry(Expand(row.Canonical), new Shape(row.Shape(config)), row.Transform,
                    row.Sources.Select(s => (Expand(s.Name), new Shape(s.Shape(config)))).ToList(), row.SourceRowOffset?.Invoke(config) ?? 0));
            }
        }
        Entries = entries;
        foreach (var pattern in ignored)
            for (int i = 0; i < config.Layers; i++)
                _ignored.Add(pattern.Replace("{i}", i.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal));
        // A tied head is sometimes saved anyway; it duplicates the embedding and is ignored.
        if (config.TiedEmbeddings) _ignored.Add("lm_head.weight");
    }

    /// <summary>The configuration the map was expanded for.</summary>
    public TransformerConfig Config { get; }

    /// <summary>Every Tessera parameter of the configuration with its Hugging Face sources, in table order.</summary>
    public IReadOnlyList<WeightMapEntry> Entries { get; }

    /// <summary>The map for <paramref name="config"/>'s family, expanded over its layers.</summary>
    public static HuggingFaceWeightMap For(TransformerConfig config)
    {
        config.Validate();
        if (config.Family == ModelFamily.Gpt2 && (!config.Bias || config.EffectiveKvHeads != config.Heads || config.Heads * config.HeadSize != config.Embedding))
            throw new ArgumentException("TransformerConfig: Hugging Face GPT-2 needs Bias = true, KvHeads = Heads and the head size Embedding / Heads");
        if (config.Family == ModelFamily.Llama && config.Bias)
            throw new ArgumentException("TransformerConfig: Hugging Face Llama (as mapped here) needs Bias = false");
        if (config.QkNorm && config.AttentionBias)
            throw new ArgumentException("TransformerConfig: no Hugging Face model_type has both q/k head norms and q/k/v biases (Qwen3 has the norms, Qwen2 the biases)");
        if (config.IsMixtureOfExperts)
        {
            string type = config.EffectiveModelType;
            if (type is not ("mixtral" or "qwen3_moe" or "qwen2_moe"))
                throw new ArgumentException($"TransformerConfig: a mixture-of-experts model maps to Hugging Face as model_type 'mixtral', 'qwen3_moe' or 'qwen2_moe', not '{type}'");
            if (config.HasSharedExpert != (type == "qwen2_moe"))
                throw new ArgumentException($"TransformerConfig: a shared expert (SharedExpertHidden = {config.SharedExpertHidden}) maps to Hugging Face as model_type 'qwen2_moe' only, which always has one; got '{type}'");
            var dense = config.QkNorm ? Qwen3Rows : config.AttentionBias ? Qwen2Rows : LlamaRows;
            return new HuggingFaceWeightMap(config, MixtureOfExpertsRows(dense, config, type == "mixtral"), LlamaIgnoredBuffers, null);
        }
        return config.Family switch
        {
            ModelFamily.Gpt2 => new HuggingFaceWeightMap(config, Gpt2Rows, Gpt2IgnoredBuffers, Gpt2OptionalPrefix),
            ModelFamily.Llama when config.PostNorms != config.UnitOffsetNorms => throw new ArgumentException(
                "TransformerConfig: Hugging Face's Gemma has both post-norms and 1 + w norm weights (PostNorms and UnitOffsetNorms), other model types neither"),
            ModelFamily.Llama when config.EffectiveModelType == "phi3" && (config.QkNorm || config.AttentionBias || config.PostNorms) => throw new ArgumentException(
                "TransformerConfig: Hugging Face's phi3 has no q/k head norms, q/k/v biases or post-norms (QkNorm, AttentionBias, PostNorms)"),
            ModelFamily.Llama when config.EffectiveModelType == "phi3" => new HuggingFaceWeightMap(config, Phi3Rows, LlamaIgnoredBuffers, null),
            ModelFamily.Llama when config.PostNorms => new HuggingFaceWeightMap(config, config.QkNorm ? Gemma3Rows : Gemma2Rows, LlamaIgnoredBuffers, null),
            ModelFamily.Llama => new HuggingFaceWeightMap(config, config.QkNorm ? Qwen3Rows : config.AttentionBias ? Qwen2Rows : LlamaRows, LlamaIgnoredBuffers, null),
            _ => throw new ArgumentOutOfRangeException(nameof(config), config.Family, "no Hugging Face map for this family"),
        };
    }

    /// <summary>Converts Hugging Face tensors (names as saved) to Tessera's canonical names and layouts.</summary>
    /// <exception cref="HuggingFaceFormatException">A tensor is missing, unexpected, or of the wrong shape.</exception>
    public Dictionary<string, HostTensor> ToCanonical(IReadOnlyDictionary<string, HostTensor> huggingFace, string description = "tensors")
    {
        var source = new DictionaryTensorSource(huggingFace, description);
        var resolved = Check(source);
        return Entries.ToDictionary(e => e.Canonical, e => ReadCanonical(e, source, resolved), StringComparer.Ordinal);
    }

    /// <summary>Converts canonical tensors to Hugging Face names and layouts (unpadded vocabulary), ready to save.</summary>
    public Dictionary<string, HostTensor> ToHuggingFace(IReadOnlyDictionary<string, HostTensor> canonical)
    {
        var result = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        var known = Entries.Select(e => e.Canonical).ToHashSet(StringComparer.Ordinal);
        foreach (var name in canonical.Keys)
            if (!known.Contains(name))
                throw new ArgumentException($"parameter '{name}' has no Hugging Face name for a {Config.Family} model with this configuration");
        foreach (var e in Entries)
        {
            if (!canonical.TryGetValue(e.Canonical, out var t))
                throw new ArgumentException($"parameter '{e.Canonical}' is missing; a {Config.Family} export needs all of: {string.Join(", ", Entries.Select(x => x.Canonical))}");
            t.Validate();
            if (t.Shape != e.Shape)
                throw new ArgumentException($"parameter '{e.Canonical}' has shape {t.Shape}, the configuration implies {e.Shape}");
            if (e.Transform == WeightTransform.RowBlock)
            {
                var (name, shape) = e.Sources[0];
                if (!result.TryGetValue(name, out var shared)) result.Add(name, shared = new HostTensor(shape, new float[shape.NumElements]));
                PlaceRowBlock(e, t.Data, shared.Data);
                continue;
            }
            var parts = FromCanonical(e, t.Data);
            for (int j = 0; j < parts.Length; j++) result.Add(e.Sources[j].Name, new HostTensor(e.Sources[j].Shape, parts[j]));
        }
        return result;
    }

    /// <summary>Copies a <see cref="WeightTransform.RowBlock"/> parameter's rows into its place in the shared tensor.</summary>
    private static void PlaceRowBlock(WeightMapEntry e, float[] data, float[] shared)
    {
        long inner = e.Shape.NumElements / e.Shape[0];
        data.CopyTo(shared, e.SourceRowOffset * inner);
    }

    /// <summary>
    /// The Hugging Face tensors (names, shapes, data) of <paramref name="entries"/>, each entry's sources in order, a tensor that
    /// several <see cref="WeightTransform.RowBlock"/> entries share assembled from all of them (they must all be among
    /// <paramref name="entries"/>) and listed once, where its first part is.
    /// </summary>
    internal IReadOnlyList<(string Name, HostTensor Tensor)> ToHuggingFace(IEnumerable<WeightMapEntry> entries, Func<string, HostTensor> canonical)
    {
        var result = new List<(string Name, HostTensor Tensor)>();
        var shared = new Dictionary<string, HostTensor>(StringComparer.Ordinal);
        foreach (var e in entries)
        {
            if (e.Transform != WeightTransform.RowBlock)
            {
                result.AddRange(ToHuggingFace(e, canonical(e.Canonical)));
                continue;
            }
            var t = canonical(e.Canonical);
            t.Validate();
            if (t.Shape != e.Shape)
                throw new ArgumentException($"parameter '{e.Canonical}' has shape {t.Shape}, the configuration implies {e.Shape}");
            var (name, shape) = e.Sources[0];
            if (!shared.TryGetValue(name, out var whole))
            {
                shared.Add(name, whole = new HostTensor(shape, new float[shape.NumElements]));
                result.Add((name, whole));
            }
            PlaceRowBlock(e, t.Data, whole.Data);
        }
        return result;
    }

    /// <summary>One entry's canonical tensor as its Hugging Face tensors (names, shapes, data), in the entry's source order.</summary>
    internal IReadOnlyList<(string Name, HostTensor Tensor)> ToHuggingFace(WeightMapEntry entry, HostTensor canonical)
    {
        if (entry.Transform == WeightTransform.RowBlock)
            throw new ArgumentException($"parameter '{entry.Canonical}' is part of '{entry.Sources[0].Name}'; export the entries that share it together");
        canonical.Validate();
        if (canonical.Shape != entry.Shape)
            throw new ArgumentException($"parameter '{entry.Canonical}' has shape {canonical.Shape}, the configuration implies {entry.Shape}");
        var parts = FromCanonical(entry, canonical.Data);
        return entry.Sources.Select((s, j) => (s.Name, new HostTensor(s.Shape, parts[j]))).ToList();
    }

    /// <summary>
    /// Checks <paramref name="source"/> against the map before any data is read: every source tensor present with
    /// the expected shape, nothing else but known buffers. Returns each expected name's spelling in the source.
    /// </summary>
    internal Dictionary<string, string> Check(ITensorSource source)
    {
        var resolved = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var e in Entries)
        {
            foreach (var (name, shape) in e.Sources)
            {
                string actual = Resolve(name, source)
                    ?? throw new HuggingFaceFormatException(source.Description, $"tensor '{name}' (for Tessera parameter '{e.Canonical}') is missing");
                var got = source.ShapeOf(actual)!;
                if (got != shape)
                    throw new HuggingFaceFormatException(source.FileOf(actual),
                        $"tensor '{actual}' has shape {got}, but the configuration implies {shape} (Tessera parameter '{e.Canonical}')");
                resolved[name] = actual;
            }
        }
        var used = resolved.Values.ToHashSet(StringComparer.Ordinal);
        foreach (var name in source.Names.OrderBy(n => n, StringComparer.Ordinal))
        {
            if (used.Contains(name) || _ignored.Contains(name)) continue;
            if (_optionalPrefix is not null && _ignored.Contains(_optionalPrefix + name)) continue;
            throw new HuggingFaceFormatException(source.FileOf(name),
                $"unexpected tensor '{name}': it is not a {Config.Family} parameter of this configuration (check n_layer/num_hidden_layers and tie_word_embeddings)");
        }
        return resolved;
    }

    private string? Resolve(string name, ITensorSource source)
    {
        if (source.ShapeOf(name) is not null) return name;
        if (_optionalPrefix is not null && name.StartsWith(_optionalPrefix, StringComparison.Ordinal))
        {
            string bare = name[_optionalPrefix.Length..];
            if (source.ShapeOf(bare) is not null) return bare;
        }
        return null;
    }

    /// <summary>Reads one entry's sources and builds the canonical tensor (after <see cref="Check"/>).</summary>
    internal HostTensor ReadCanonical(WeightMapEntry e, ITensorSource source, IReadOnlyDictionary<string, string> resolved)
    {
        if (e.Transform == WeightTransform.RowBlock) return new HostTensor(e.Shape, ReadSlice(e, source, resolved, TensorSlice.Whole(e.Shape)));
        var parts = e.Sources.Select(s => source.Read(resolved[s.Name])).ToArray();
        return new HostTensor(e.Shape, ToCanonicalData(e, parts));
    }

    /// <summary>
    /// The part <paramref name="slice"/> of entry <paramref name="e"/>'s canonical tensor (row-major over the slice's local
    /// shape), reading from <paramref name="source"/> only the elements that part is made of: an identity tensor's runs; a
    /// transposed (Conv1D) tensor's slice along the other dimension, transposed after reading; a padded table's rows below the
    /// vocabulary (the padding rows are zeros, never read); for stacked tensors (Llama's q, k and v) each range split at the
    /// sources' boundaries, so a rank's query, key and value heads come from the three tensors.
    /// </summary>
    internal float[] ReadSlice(WeightMapEntry e, ITensorSource source, IReadOnlyDictionary<string, string> resolved, TensorSlice slice)
    {
        ArgumentNullException.ThrowIfNull(slice);
        var local = slice.LocalShape(e.Shape);
        switch (e.Transform)
        {
            case WeightTransform.Identity:
                return ReadPart(0, slice);
            case WeightTransform.Transpose:
            {
                // Canonical (R, K) is source (K, R) transposed: the canonical slice along dim d is the source's along 1 - d.
                var part = ReadPart(0, slice.Along(1 - slice.Dim));
                return Transpose(part, local[1], local[0]);
            }
            case WeightTransform.PadRows when slice.Dim == 0:
            {
                int rows = e.Sources[0].Shape[0];
                long inner = e.Shape.NumElements / e.Shape[0];
                var result = new float[local.NumElements];   // padding rows stay zero
                long at = 0;
                foreach (var (start, length) in slice.Ranges)
                {
                    int real = Math.Clamp(rows - start, 0, length);
                    if (real > 0) ReadPart(0, new TensorSlice(0, [(start, real)])).CopyTo(result, at);
                    at += length * inner;
                }
                return result;
            }
            case WeightTransform.PadRows:
            {
                var result = new float[local.NumElements];
                ReadPart(0, slice).CopyTo(result, 0);        // the source's rows, then zero rows up to the padded vocabulary
                return result;
            }
            case WeightTransform.ConcatRows when slice.Dim == 0:
            {
                var pieces = new List<float[]>();
                foreach (var (start, length) in slice.Ranges)
                {
                    int offset = 0;
                    for (int j = 0; j < e.Sources.Count; j++)
                    {
                        int rows = e.Sources[j].Shape[0];
                        int from = Math.Max(start, offset), to = Math.Min(start + length, offset + rows);
                        if (from < to) pieces.Add(ReadPart(j, new TensorSlice(0, [(from - offset, to - from)])));
                        offset += rows;
                    }
                }
                return Concat(pieces, local.NumElements);
            }
            case WeightTransform.ConcatRows:
                return Concat(e.Sources.Select((_, j) => ReadPart(j, slice)).ToList(), local.NumElements);
            case WeightTransform.RowBlock:
            {
                // The parameter's elements are one contiguous block of the shared tensor from row SourceRowOffset on: the
                // slice's runs over the parameter's shape, moved by that many rows.
                long shift = e.SourceRowOffset * (e.Shape.NumElements / e.Shape[0]);
                var runs = slice.Runs(e.Shape).Select(r => (r.Start + shift, r.Length)).ToList();
                return source.Read(resolved[e.Sources[0].Name], runs);
            }
            default: throw new ArgumentOutOfRangeException(nameof(e), e.Transform, "unknown transform");
        }

        float[] ReadPart(int j, TensorSlice part)
        {
            var (name, shape) = e.Sources[j];
            return part.IsWhole(shape) ? source.Read(resolved[name]) : source.Read(resolved[name], part.Runs(shape));
        }
    }

    private static float[] Concat(List<float[]> pieces, long total)
    {
        var result = new float[total];
        long at = 0;
        foreach (var p in pieces) { p.CopyTo(result, at); at += p.Length; }
        if (at != total) throw new InvalidOperationException($"slice assembled {at} elements, expected {total}");
        return result;
    }

    private static float[] ToCanonicalData(WeightMapEntry e, float[][] parts)
    {
        switch (e.Transform)
        {
            case WeightTransform.Identity:
                return (float[])parts[0].Clone();
            case WeightTransform.Transpose:
                return Transpose(parts[0], e.Sources[0].Shape[0], e.Sources[0].Shape[1]);
            case WeightTransform.ConcatRows:
            {
                var result = new float[e.Shape.NumElements];
                long at = 0;
                foreach (var p in parts) { p.CopyTo(result, at); at += p.Length; }
                return result;
            }
            case WeightTransform.PadRows:
            {
                var result = new float[e.Shape.NumElements];
                parts[0].CopyTo(result, 0);
                return result;
            }
            default: throw new ArgumentOutOfRangeException(nameof(e), e.Transform, "unknown transform");
        }
    }

    private static float[][] FromCanonical(WeightMapEntry e, float[] data)
    {
        switch (e.Transform)
        {
            case WeightTransform.Identity:
                return [(float[])data.Clone()];
            case WeightTransform.Transpose:
                return [Transpose(data, e.Shape[0], e.Shape[1])];
            case WeightTransform.ConcatRows:
            {
                var parts = new float[e.Sources.Count][];
                long at = 0;
                for (int j = 0; j < parts.Length; j++)
                {
                    parts[j] = data.AsSpan((int)at, (int)e.Sources[j].Shape.NumElements).ToArray();
                    at += parts[j].Length;
                }
                return parts;
            }
            case WeightTransform.PadRows:
                return [data.AsSpan(0, (int)e.Sources[0].Shape.NumElements).ToArray()];
            default: throw new ArgumentOutOfRangeException(nameof(e), e.Transform, "unknown transform");
        }
    }

    /// <summary>(rows, cols) row-major to (cols, rows) row-major.</summary>
    private static float[] Transpose(float[] a, int rows, int cols)
    {
        var t = new float[a.Length];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                t[(long)c * rows + r] = a[(long)r * cols + c];
        return t;
    }
}
