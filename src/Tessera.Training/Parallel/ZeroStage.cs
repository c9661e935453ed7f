namespace Tessera.Training.Parallel;

/// <summary>How much of the training state data-parallel ranks shard (ZeRO, Rajbhandari et al. 2020).</summary>
public enum ZeroStage
{
    /// <summary>Plain data parallelism: every rank holds everything; gradients are all-reduced.</summary>
    None = 0,

    /// <summary>ZeRO-1: each rank keeps the AdamW moments of its shard only; gradients all-reduced; updated shards all-gathered.</summary>
    OptimizerStates = 1,

    /// <summary>ZeRO-2: as ZeRO-1, but gradients are reduce-scattered and each rank keeps only its gradient shard.</summary>
    Gradients = 2,

    /// <summary>
    /// ZeRO-3: parameters sharded too: each rank keeps only its shards of values, gradients and masters; a segment is
    /// gathered into a pooled buffer just before its forward and backward and its gradient reduce-scattered after it.
    /// </summary>
    Parameters = 3,
}
