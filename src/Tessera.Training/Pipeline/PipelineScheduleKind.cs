namespace Tessera.Training.Pipeline;

/// <summary>The pipeline schedules Tessera generates.</summary>
public enum PipelineScheduleKind
{
    /// <summary>GPipe: every forward, then every backward (m micro-batches in flight; pair it with re-materialization).</summary>
    GPipe,

    /// <summary>1F1B (PipeDream-Flush): after a warmup of p - s - 1 forwards, one forward and one backward in turn; at most p in flight.</summary>
    OneForwardOneBackward,

    /// <summary>Interleaved 1F1B (Megatron-LM's PTD-P): v model chunks per rank, the bubble shrunk v times; m a multiple of p.</summary>
    Interleaved,
}
