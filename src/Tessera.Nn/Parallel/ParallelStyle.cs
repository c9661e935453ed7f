namespace Tessera.Nn.Parallel;

/// <summary>How a <see cref="ParallelPlan"/> realises one layer on the ranks of the tensor-parallel axis (torchtitan's styles).</summary>
public enum ParallelStyle
{
    /// <summary>Every rank holds the whole layer and computes it whole (the default).</summary>
    Replicate,

    /// <summary>The output features (rows of the weight, and the bias) are split: each rank computes its columns of the output. No communication of its own.</summary>
    ColumnParallel,

    /// <summary>The input features (columns of the weight) are split: each rank's product is a partial sum, reduced over the ranks (all-reduce, or reduce-scatter into sequence-parallel rows).</summary>
    RowParallel,

    /// <summary>
    /// The input features are split as in <see cref="RowParallel"/>, but the layer leaves its product a partial sum, unreduced
    /// (vLLM's <c>reduce_results=False</c>): the layer around it sums the partials once. A mixture of experts' expert output
    /// projections: each rank's weighted sum of its slices of every expert is reduced once after the combine, not per expert.
    /// </summary>
    RowParallelUnreduced,

    /// <summary>An embedding whose rows (the vocabulary) are split: each rank looks up the ids in its rows, and the partial lookups are reduced.</summary>
    VocabParallel,

    /// <summary>A norm (or a learned position table) applied to the rows of the residual stream each rank holds under sequence parallelism: replicated values, gradients summed over the ranks.</summary>
    SequenceParallel,

    /// <summary>The input of a sub-layer whose first products are column-parallel: replicated rows (identity forward, all-reduce backward) or, under sequence parallelism, gathered rows (all-gather forward, reduce-scatter backward).</summary>
    PrepareInput,
}
