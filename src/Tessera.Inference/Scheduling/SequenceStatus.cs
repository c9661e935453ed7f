namespace Tessera.Inference.Scheduling;

/// <summary>Where a <see cref="Sequence"/> is in the scheduler.</summary>
public enum SequenceStatus
{
    /// <summary>Queued (new, or preempted and waiting to recompute its keys and values).</summary>
    Waiting,

    /// <summary>In the running batch, holding blocks.</summary>
    Running,

    /// <summary>Done or cancelled; its blocks are released.</summary>
    Finished,
}
