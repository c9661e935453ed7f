using Tessera.Nn.Adapters;

namespace Tessera.Models.Adapters;

/// <summary>
/// The LoRA targets of each model family as data: each target's short name, its Hugging Face module under a block (what PEFT's
/// target_modules and tensor names say) and the canonical layer (and part of the fused QKV) it adapts. The Llama layer set
/// (Llama, Qwen2, Qwen3, Mistral) has separate q/k/v projections in Hugging Face's layout, which Tessera fuses: each is a part of
/// "blocks.N.attn.qkv". GPT-2's c_attn is fused in both, so it is one whole-layer adapter, as PEFT makes it (its Conv1D layers
/// are why PEFT's config says fan_in_fan_out; lora_A (r, in) and lora_B (out, r) are laid out as for nn.Linear either way).
/// Phi-3 (model_type phi3) fuses q, k, v into self_attn.qkv_proj, Tessera's qkv as it is (one whole-layer adapter, as GPT-2's
/// c_attn), and gate, up into mlp.gate_up_proj, which Tessera keeps as the two layers gate and up: its row names both
/// ("blocks.*.mlp.gate+blocks.*.mlp.up"), one adapter whose A both layers share and whose B (2F, r) is split by rows, the gate's
/// F rows first (<see cref="LoraTarget.FusedWith"/>). PEFT cannot express an adapter on q, k, v, gate or up alone for such a
/// checkpoint, so those names are refused for phi3.
/// </summary>
public static class LoraTargets
{
    /// <summary>Short name, PEFT module under a block (model.layers.N), canonical layer pattern, part of a fused QKV (or null).</summary>
    public static IReadOnlyList<(string Short, string Module, string Layer, int? Part)> Llama { get; } =
    [
        ("q", "self_attn.q_proj", "blocks.*.attn.qkv", 0),
        ("k", "self_attn.k_proj", "blocks.*.attn.qkv", 1),
        ("v", "self_attn.v_proj", "blocks.*.attn.qkv", 2),
        ("o", "self_attn.o_proj", "blocks.*.attn.proj", null),
        ("gate", "mlp.gate_proj", "blocks.*.mlp.gate", null),
        ("up", "mlp.up_proj", "blocks.*.mlp.up", null),
        ("down", "mlp.down_proj", "blocks.*.mlp.proj", null),
    ];

    /// <summary>GPT-2's targets (modules under transformer.h.N): the fused QKV, the attention output, the MLP's two products.</summary>
    public static IReadOnlyList<(string Short, string Module, string Layer, int? Part)> Gpt2 { get; } =
    [
        ("c_attn", "attn.c_attn", "blocks.*.attn.qkv", null),
        ("attn.c_proj", "attn.c_proj", "blocks.*.attn.proj", null),
        ("c_fc", "mlp.c_fc", "blocks.*.mlp.fc", null),
        ("mlp.c_proj", "mlp.c_proj", "blocks.*.mlp.proj", null),
    ];

    /// <summary>
    /// Mixtral's targets (modules under model.layers.N): the attention's q, k, v, o; each expert's w1 (gate), w3 (up) and w2
    /// (down), one adapter per expert and block (PEFT's "w1" matches block_sparse_moe.experts.{j}.w1 for every j); and the router
    /// block_sparse_moe.gate (PEFT's "gate"), which PEFT adapts when named: its low-rank term changes the routing logits.
    /// Tessera's short names gate, up, down mean the experts' products here too, and router the router (<see cref="Aliases"/>).
    /// </summary>
    public static IReadOnlyList<(string Short, string Module, string Layer, int? Part)> Mixtral { get; } =
    [
        .. Llama.Take(4),
        ("w1", "block_sparse_moe.experts.*.w1", "blocks.*.mlp.experts.*.gate", null),
        ("w3", "block_sparse_moe.experts.*.w3", "blocks.*.mlp.experts.*.up", null),
        ("w2", "block_sparse_moe.experts.*.w2", "blocks.*.mlp.experts.*.proj", null),
        ("block_sparse_moe.gate", "block_sparse_moe.gate", "blocks.*.mlp.router", null),
    ];

    /// <summary>Qwen3-MoE's targets: attention, each expert's gate_proj, up_proj, down_proj under mlp.experts.{j}, the router mlp.gate.</summary>
    public static IReadOnlyList<(string Short, string Module, string Layer, int? Part)> Qwen3Moe { get; } =
    [
        .. Llama.Take(4),
        ("gate", "mlp.experts.*.gate_proj", "blocks.*.mlp.experts.*.gate", null),
        ("up", "mlp.experts.*.up_proj", "blocks.*.mlp.experts.*.up", null),
        ("down", "mlp.experts.*.down_proj", "blocks.*.mlp.experts.*.proj", null),
        ("router", "mlp.gate", "blocks.*.mlp.router", null),
    ];

    /// <summary>
    /// Qwen2-MoE's targets: Qwen3-MoE's and the shared expert's gate_proj, up_proj, down_proj (mlp.shared_expert). PEFT's
    /// "gate_proj" matches the experts' and the shared expert's, and adapts both; so do Tessera's gate, up and down here. The
    /// shared expert's gate mlp.shared_expert_gate (C to 1) is no target.
    /// </summary>
    public static IReadOnlyList<(string Short, string Module, string Layer, int? Part)> Qwen2Moe { get; } =
    [
        .. Qwen3Moe,
        ("shared_expert.gate", "mlp.shared_expert.gate_proj", "blocks.*.mlp.shared_expert.gate", null),
        ("shared_expert.up", "mlp.shared_expert.up_proj", "blocks.*.mlp.shared_expert.up", null),
        ("shared_expert.down", "mlp.shared_expert.down_proj", "blocks.*.mlp.shared_expert.proj", null),
    ];

    /// <summary>
    /// Tessera's names that stand for other short names in a mixture-of-experts table, read only where a name is given to
    /// Tessera (--lora-targets; not PEFT's target_modules, whose "gate" is the router as PEFT matches it): Mixtral's gate, up,
    /// down are w1, w3, w2; router is the router; Qwen2-MoE's gate, up, down are the experts' and the shared expert's.
    /// </summary>
    public static IReadOnlyDictionary<string, string[]> Aliases(IReadOnlyList<(string Short, string Module, string Layer, int? Part)> table) =>
        ReferenceEquals(table, Mixtral) ? new Dictionary<string, string[]>
        {
            ["gate"] = ["w1"], ["up"] = ["w3"], ["down"] = ["w2"], ["router"] = ["block_sparse_moe.gate"],
        }
        : ReferenceEquals(table, Qwen2Moe) ? new Dictionary<string, string[]>
        {
            ["gate"] = ["gate", "shared_expert.gate"], ["up"] = ["up", "shared_expert.up"], ["down"] = ["down", "shared_expert.down"],
        }
        : new Dictionary<string, string[]>();

    /// <summary>Whether <paramref name="target"/> adapts a layer of a mixture of experts' block (an expert, the shared expert, the router).</summary>
    public static bool IsMixtureOfExperts(LoraTarget target)
    {
        ArgumentNullException.ThrowIfNull(target);
        return target.LayerPattern.StartsWith("blocks.*.mlp.experts.", StringComparison.Ordinal)
            || target.LayerPattern.StartsWith("blocks.*.mlp.shared_expert.", StringComparison.Ordinal)
            || target.LayerPattern == "blocks.*.mlp.router";
    }

    /// <summary>
    /// Phi-3's targets (modules under model.layers.N, PEFT's target_modules for Phi-3): the fused QKV, the attention output, the
    /// fused gate and up (two Tessera layers, "+" joining their patterns: one A, B split by rows), the down projection.
    /// </summary>
    public static IReadOnlyList<(string Short, string Module, string Layer, int? Part)> Phi3 { get; } =
    [
        ("qkv", "self_attn.qkv_proj", "blocks.*.attn.qkv", null),
        ("o", "self_attn.o_proj", "blocks.*.attn.proj", null),
        ("gate_up", "mlp.gate_up_proj", "blocks.*.mlp.gate+blocks.*.mlp.up", null),
        ("down", "mlp.down_proj", "blocks.*.mlp.proj", null),
    ];

    /// <summary>The default targets of the Llama layer set: the attention projections q, k, v, o.</summary>
    public static IReadOnlyList<string> Default { get; } = ["q", "k", "v", "o"];

    /// <summary>The default targets of <paramref name="family"/>: its attention projections (GPT-2: c_attn and attn.c_proj).</summary>
    public static IReadOnlyList<string> DefaultOf(ModelFamily family) => family == ModelFamily.Gpt2 ? ["c_attn", "attn.c_proj"] : Default;

    /// <summary>The default targets of a model of <paramref name="config"/>: its attention projections (Phi-3: qkv and o).</summary>
    public static IReadOnlyList<string> DefaultOf(TransformerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return IsPhi3(config) ? ["qkv", "o"] : DefaultOf(config.Family);
    }

    /// <summary>
    /// The target table of a model of <paramref name="config"/>: its family's, Phi-3's fused modules for model_type phi3, or a
    /// mixture of experts' (by model_type).
    /// </summary>
    public static IReadOnlyList<(string Short, string Module, string Layer, int? Part)> Of(TransformerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (IsPhi3(config)) return Phi3;
        if (!config.IsMixtureOfExperts) return Of(config.Family);
        return config.EffectiveModelType == "mixtral" ? Mixtral : config.HasSharedExpert ? Qwen2Moe : Qwen3Moe;
    }

    private static bool IsPhi3(TransformerConfig config) => config.Family == ModelFamily.Llama && config.EffectiveModelType == "phi3";

    /// <summary>The target table of <paramref name="family"/>.</summary>
    public static IReadOnlyList<(string Short, string Module, string Layer, int? Part)> Of(ModelFamily family) => family switch
    {
        ModelFamily.Llama => Llama,
        ModelFamily.Gpt2 => Gpt2,
        _ => throw new NotSupportedException($"LoRA: the {family} family has no LoRA targets"),
    };

    /// <summary>
    /// The targets named by <paramref name="names"/>: short names (Llama: q, k, v, o, gate, up, down; GPT-2: c_attn, attn.c_proj,
    /// c_fc, mlp.c_proj; a mixture of experts: q, k, v, o, gate, up, down of the experts (and the shared expert), router; Phi-3:
    /// qkv, o, gate_up, down) or PEFT module names (q_proj, ..., down_proj, w1, w2, w3; for GPT-2 "c_proj" is both c_proj modules,
    /// as in PEFT; Phi-3: qkv_proj, o_proj, gate_up_proj, down_proj), each once.
    /// With <paramref name="peftModules"/> (PEFT's target_modules) a name is first matched as PEFT matches it, against the module
    /// path or a suffix of it after a dot (so a mixture of experts' "gate" is its router), then as a short name; otherwise a short
    /// name (or <see cref="Aliases"/>) first. Throws, naming it, for a name that is no layer of <paramref name="config"/>'s model
    /// (for phi3, q, k, v, gate and up: PEFT cannot save them for a fused checkpoint).
    /// </summary>
    public static IReadOnlyList<LoraTarget> Parse(TransformerConfig config, IEnumerable<string> names, bool peftModules = false)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(names);
        var table = Of(config);
        var aliases = Aliases(table);
        var targets = new List<LoraTarget>();
        var viaAlias = new HashSet<LoraTarget>();   // added by an alias's expansion: naming one of them again is no repetition
        foreach (var raw in names)
        {
            var name = raw.Trim();
            // A PEFT module name matches as PEFT matches it: the whole module path or a suffix of it after a dot.
            var byModule = table.Where(r => r.Module == name || r.Module.EndsWith("." + name, StringComparison.Ordinal)).ToList();
            bool alias = aliases.TryGetValue(name, out var shorts);
            var byShort = table.Where(r => alias ? shorts!.Contains(r.Short) : r.Short == name).ToList();
            var rows = peftModules ? (byModule.Count > 0 ? byModule : byShort) : (byShort.Count > 0 ? byShort : byModule);
            bool soft = alias && ReferenceEquals(rows, byShort);
            if (rows.Count == 0 && ReferenceEquals(table, Phi3) && Llama.Any(r => r.Short == name || r.Module == name || r.Module.EndsWith("." + name, StringComparison.Ordinal)))
                throw new ArgumentException($"LoRA target '{name}': model_type 'phi3' keeps q, k, v fused in self_attn.qkv_proj and gate, up in mlp.gate_up_proj, " +
                    "and a PEFT adapter of a Phi-3 checkpoint adapts a fused module whole (one A, one B over all its rows), so q, k, v, gate and up " +
                    "cannot be adapted alone; name qkv (qkv_proj) or gate_up (gate_up_proj)");
            if (rows.Count == 0)
                throw new ArgumentException($"LoRA target '{name}' names no layer of a {(ReferenceEquals(table, Phi3) ? "phi3" : config.IsMixtureOfExperts ? config.EffectiveModelType : config.Family)} model; expected some of {string.Join(", ", table.Select(r => r.Short).Concat(aliases.Keys).Distinct())} " +
                    $"(or {string.Join(", ", table.Select(r => r.Module[(r.Module.LastIndexOf('.') + 1)..]).Distinct())})");
            foreach (var row in rows)
            {
                var layers = row.Layer.Split('+');   // Phi-3's gate_up: two layers, one adapter
                var target = new LoraTarget(layers[0], row.Part, row.Short) { FusedWith = layers.Length > 1 ? layers[1] : null };
                if (targets.Contains(target))
                {
                    if (soft) continue;
                    if (viaAlias.Remove(target)) continue;
                    throw new ArgumentException($"LoRA target '{name}' is given twice ({row.Short})");
                }
                targets.Add(target);
                if (soft) viaAlias.Add(target);
            }
        }
        if (targets.Count == 0) throw new ArgumentException("LoRA: no target given; name at least one of " + string.Join(", ", table.Select(r => r.Short)));
        return targets;
    }

    /// <summary>
    /// PEFT's target_modules entry of target <paramref name="target"/>: the module's last name ("q_proj", "c_attn") where that
    /// names one kind of layer, else its path under the block ("attn.c_proj": GPT-2's MLP has a c_proj too).
    /// </summary>
    public static string ModuleOf(LoraTarget target)
    {
        var (table, row) = RowOf(target);
        string last = row.Module[(row.Module.LastIndexOf('.') + 1)..];
        // A mixture of experts' module names are PEFT's own: "w1" is every expert's, "gate_proj" the experts' and the shared
        // expert's (both adapted together), "gate" the router.
        if (IsMixtureOfExpertsTable(table)) return last;
        return table.Count(r => r.Module.EndsWith("." + last, StringComparison.Ordinal) || r.Module == last) == 1 ? last : row.Module;
    }

    /// <summary>
    /// PEFT's tensor name of an adapter parameter: "blocks.3.attn.qkv.q.lora_A" -> "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
    /// (GPT-2: "base_model.model.transformer.h.3.attn.c_attn.lora_A.weight").
    /// </summary>
    public static string PeftName(LoraPart part, int block, bool isA)
    {
        var (table, row) = RowOf(part.Target);
        string blocks = ReferenceEquals(table, Gpt2) ? "transformer.h" : "model.layers";
        return $"base_model.model.{blocks}.{block}.{row.Module}.lora_{(isA ? "A" : "B")}.weight";
    }

    /// <summary>
    /// PEFT's tensor name of an adapter parameter of layer <paramref name="layer"/> (a canonical name such as
    /// "blocks.3.mlp.experts.5.gate"): "base_model.model.model.layers.3.block_sparse_moe.experts.5.w1.lora_A.weight"; the
    /// module's "*" (the expert) is the layer name's segment at the pattern's second "*".
    /// </summary>
    public static string PeftName(LoraPart part, string layer, bool isA)
    {
        ArgumentNullException.ThrowIfNull(part);
        ArgumentNullException.ThrowIfNull(layer);
        var (table, row) = RowOf(part.Target);
        // The pattern of the layer itself: a fused target's second layer (Phi-3's up) matches FusedWith, not LayerPattern.
        var pattern = (part.Target.OwnerOf(layer) is null ? part.Target.LayerPattern : part.Target.FusedWith!).Split('.');
        var segments = layer.Split('.');
        if (pattern.Length != segments.Length || !part.Target.Matches(layer))
            throw new ArgumentException($"LoRA: layer '{layer}' is not one of target '{part.Target.Name}' ({row.Layer})");
        var wildcards = new Queue<string>(Enumerable.Range(0, pattern.Length).Where(i => pattern[i] == "*").Select(i => segments[i]));
        if (!int.TryParse(wildcards.Dequeue(), out int block))
            throw new InvalidOperationException($"LoRA: layer '{layer}' is not in a block; PEFT names exist for block layers only");
        string module = string.Join('.', row.Module.Split('.').Select(s => s == "*" ? wildcards.Dequeue() : s));
        string blocks = ReferenceEquals(table, Gpt2) ? "transformer.h" : "model.layers";
        return $"base_model.model.{blocks}.{block}.{module}.lora_{(isA ? "A" : "B")}.weight";
    }

    /// <summary>Whether PEFT sees target <paramref name="target"/>'s layers as Conv1D (GPT-2), so its config says fan_in_fan_out.</summary>
    public static bool IsConv1D(LoraTarget target) => ReferenceEquals(RowOf(target).Table, Gpt2);

    private static bool IsMixtureOfExpertsTable(IReadOnlyList<(string Short, string Module, string Layer, int? Part)> table) =>
        ReferenceEquals(table, Mixtral) || ReferenceEquals(table, Qwen2Moe) || ReferenceEquals(table, Qwen3Moe);

    private static (IReadOnlyList<(string Short, string Module, string Layer, int? Part)> Table, (string Short, string Module, string Layer, int? Part) Row) RowOf(LoraTarget target)
    {
        string layer = target.FusedWith is null ? target.LayerPattern : target.LayerPattern + "+" + target.FusedWith;
        foreach (var table in new[] { Llama, Gpt2, Mixtral, Qwen2Moe, Phi3 })
            foreach (var r in table)
                if (r.Short == target.Name && r.Layer == layer && r.Part == target.Part) return (table, r);
        throw new ArgumentException($"LoRA target '{target.Name}' ({target.LayerPattern}) has no Hugging Face module name");
    }
}
