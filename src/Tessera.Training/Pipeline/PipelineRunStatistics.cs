namespace Tessera.Training.Pipeline;

/// <summary>
/// What one run of a rank's schedule measured: wall time, the time spent in forward and backward calls (on a CPU backend, whose
/// ops are synchronous, its compute; on a GPU only the time to enqueue it), the time spent waiting for messages, and the most
/// (chunk, micro-batch) slots held at once, per chunk and in all.
/// </summary>
/// <param name="WallMilliseconds">From the first action to the last (pending sends waited for).</param>
/// <param name="ComputeMilliseconds">Inside forward and backward calls.</param>
/// <param name="WaitMilliseconds">Waiting for receives (and for sends before a slot is reused).</param>
/// <param name="PeakSlots">The most activation slots in use at once over all chunks: micro-batches whose activations the rank held together.</param>
/// <param name="PeakSlotsPerChunk">The same per model chunk.</param>
/// <param name="PeakMessageSlots">The most message slots (a received input and a gradient, two residual-stream rows each) in use at once.</param>
public sealed record PipelineRunStatistics(double WallMilliseconds, double ComputeMilliseconds, double WaitMilliseconds, int PeakSlots, IReadOnlyList<int> PeakSlotsPerChunk,
    int PeakMessageSlots)
{
    /// <summary>1 - compute / wall: the share of the run this rank did not compute.</summary>
    public double IdleFraction => WallMilliseconds <= 0 ? 0 : Math.Max(0, 1 - ComputeMilliseconds / WallMilliseconds);
}
