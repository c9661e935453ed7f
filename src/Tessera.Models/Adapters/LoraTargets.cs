using Tessera.Nn.Adapters;

namespace Tessera.Models.Adapters;

/// <summary>
/// The LoRA targets of the Llama layer set (Llama, Qwen2, Mistral) as data: each target's short name, its Hugging Face module
/// (what PEFT's target_modules and tensor names say) and the canonical layer (and part of the fused QKV) it adapts.
/// </summary>
public static class LoraTargets
{
    /// <summary>Short name, PEFT module under model.layers.N, canonical layer pattern, part of a fused QKV (or null).</summary>
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

    /// <summary>The default targets: the attention projections q, k, v, o.</summary>
    public static IReadOnlyList<string> Default { get; } = ["q", "k", "v", "o"];

    /// <summary>
    /// The targets named by <paramref name="names"/>: short names (q, k, v, o, gate, up, down) or PEFT module names (q_proj, ...,
    /// down_proj), each once. Throws, naming it, for a name that is no layer of <paramref name="config"/>'s family.
    /// </summary>
    public static IReadOnlyList<LoraTarget> Parse(TransformerConfig config, IEnumerable<string> names)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(names);
        if (config.Family != ModelFamily.Llama)
            throw new NotSupportedException($"LoRA: the {config.Family} family is not supported (its fused GELU MLP and Conv1D layout); use a Llama, Qwen2 or Mistral model");
        var targets = new List<LoraTarget>();
        foreach (var raw in names)
        {
            var name = raw.Trim();
            var row = Llama.FirstOrDefault(r => r.Short == name || r.Module.EndsWith("." + name, StringComparison.Ordinal) || r.Module == name);
            if (row.Short is null)
                throw new ArgumentException($"LoRA target '{name}' names no layer; expected some of {string.Join(", ", Llama.Select(r => r.Short))} " +
                    $"(or {string.Join(", ", Llama.Select(r => r.Module[(r.Module.IndexOf('.') + 1)..]))})");
            if (targets.Any(t => t.Name == row.Short)) throw new ArgumentException($"LoRA target '{name}' is given twice");
            targets.Add(new LoraTarget(row.Layer, row.Part, row.Short));
        }
        if (targets.Count == 0) throw new ArgumentException("LoRA: no target given; name at least one of " + string.Join(", ", Llama.Select(r => r.Short)));
        return targets;
    }

    /// <summary>PEFT's module name of target <paramref name="target"/> ("q_proj").</summary>
    public static string ModuleOf(LoraTarget target) => RowOf(target).Module[(RowOf(target).Module.IndexOf('.') + 1)..];

    /// <summary>
    /// PEFT's tensor name of an adapter parameter: "blocks.3.attn.qkv.q.lora_A" -> "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight".
    /// </summary>
    public static string PeftName(LoraPart part, int block, bool isA) =>
        $"base_model.model.model.layers.{block}.{RowOf(part.Target).Module}.lora_{(isA ? "A" : "B")}.weight";

    private static (string Short, string Module, string Layer, int? Part) RowOf(LoraTarget target) =>
        Llama.FirstOrDefault(r => r.Short == target.Name && r.Layer == target.LayerPattern && r.Part == target.Part) is { Short: not null } row
            ? row : throw new ArgumentException($"LoRA target '{target.Name}' ({target.LayerPattern}) has no Hugging Face module name");
}
