namespace Tessera.Nn.Parallel;

/// <summary>
/// Which layers of a model are split how over the tensor-parallel axis, by layer name (torchtitan's <c>parallelize_module</c>
/// plan, applied while the model declares its layers): a list of name patterns ("blocks.*.attn.qkv", "*" standing for one
/// name segment, a block index) and their <see cref="ParallelStyle"/>, plus whether the norm and residual regions are
/// sequence-parallel. The model code is written for one device and asks the plan (through a <see cref="LayerFactory"/>) how to
/// build each layer; a name no pattern matches is replicated.
/// </summary>
public sealed class ParallelPlan
{
    private readonly (string[] Pattern, ParallelStyle Style)[] _rules;

    /// <summary>A plan of <paramref name="rules"/> (first match wins); <paramref name="sequenceParallel"/> turns the SequenceParallel styles on.</summary>
    public ParallelPlan(IEnumerable<(string Pattern, ParallelStyle Style)> rules, bool sequenceParallel)
    {
        ArgumentNullException.ThrowIfNull(rules);
        _rules = rules.Select(r => (r.Pattern.Split('.'), r.Style)).ToArray();
        Rules = rules.ToArray();
        SequenceParallel = sequenceParallel;
    }

    /// <summary>Everything replicated: one device, or pure data parallelism.</summary>
    public static ParallelPlan Replicated { get; } = new([], sequenceParallel: false);

    /// <summary>
    /// Megatron-LM's tensor parallelism for a decoder (GPT-2 and Llama): the vocabulary-parallel token embedding, the
    /// fused QKV and the MLP's first products column-parallel, the attention and MLP output projections row-parallel, the
    /// LM head column-parallel over the vocabulary (with a vocabulary-parallel loss), a mixture of experts' experts and shared
    /// expert split as the dense MLP but with their output projections left unreduced (the MoE block reduces its combined
    /// output once; its router and shared-expert gate stay replicated), and, when
    /// <paramref name="sequenceParallel"/>, the norms and residual stream split along the sequence (Megatron-SP).
    /// </summary>
    public static ParallelPlan Megatron(bool sequenceParallel) => new(
    [
        ("tok_emb", ParallelStyle.VocabParallel),
        ("pos_emb", ParallelStyle.SequenceParallel),
        ("blocks.*.norm1", ParallelStyle.SequenceParallel),
        ("blocks.*.attn", ParallelStyle.PrepareInput),
        ("blocks.*.attn.qkv", ParallelStyle.ColumnParallel),
        ("blocks.*.attn.proj", ParallelStyle.RowParallel),
        ("blocks.*.post_attn_norm", ParallelStyle.SequenceParallel),
        ("blocks.*.norm2", ParallelStyle.SequenceParallel),
        ("blocks.*.mlp", ParallelStyle.PrepareInput),
        ("blocks.*.mlp.fc", ParallelStyle.ColumnParallel),
        ("blocks.*.mlp.gate", ParallelStyle.ColumnParallel),
        ("blocks.*.mlp.up", ParallelStyle.ColumnParallel),
        ("blocks.*.mlp.proj", ParallelStyle.RowParallel),
        ("blocks.*.mlp.experts.*.gate", ParallelStyle.ColumnParallel),
        ("blocks.*.mlp.experts.*.up", ParallelStyle.ColumnParallel),
        ("blocks.*.mlp.experts.*.proj", ParallelStyle.RowParallelUnreduced),
        ("blocks.*.mlp.shared_expert.gate", ParallelStyle.ColumnParallel),
        ("blocks.*.mlp.shared_expert.up", ParallelStyle.ColumnParallel),
        ("blocks.*.mlp.shared_expert.proj", ParallelStyle.RowParallelUnreduced),
        ("blocks.*.post_mlp_norm", ParallelStyle.SequenceParallel),
        ("final_norm", ParallelStyle.SequenceParallel),
        ("head", ParallelStyle.PrepareInput),
        ("lm_head", ParallelStyle.ColumnParallel),
    ], sequenceParallel);

    /// <summary>The rules, in order.</summary>
    public IReadOnlyList<(string Pattern, ParallelStyle Style)> Rules { get; }

    /// <summary>Whether norms and the residual stream are split along the sequence (Megatron-SP).</summary>
    public bool SequenceParallel { get; }

    /// <summary>The style of layer <paramref name="name"/>: the first matching rule's, else <see cref="ParallelStyle.Replicate"/>.</summary>
    public ParallelStyle StyleOf(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var parts = name.Split('.');
        foreach (var (pattern, style) in _rules)
            if (Matches(pattern, parts)) return style;
        return ParallelStyle.Replicate;
    }

    private static bool Matches(string[] pattern, string[] name)
    {
        if (pattern.Length != name.Length) return false;
        for (int i = 0; i < pattern.Length; i++)
            if (pattern[i] != "*" && !string.Equals(pattern[i], name[i], StringComparison.Ordinal)) return false;
        return true;
    }

    /// <inheritdoc/>
    public override string ToString() => Rules.Count == 0 ? "replicated" : $"{Rules.Count} rules{(SequenceParallel ? ", sequence-parallel" : "")}";
}
