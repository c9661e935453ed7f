namespace Tessera.Training.Pipeline;

/// <summary>
/// Durations for <see cref="PipelineSimulator.Simulate"/>: each virtual stage's forward and backward of one micro-batch, and
/// the time a message takes once both ends are ready (any one unit: milliseconds when measured, 1 and 2 for a drawing).
/// </summary>
public sealed class PipelineCosts
{
    private readonly double[] _forward, _backward;

    /// <summary>Per virtual stage <paramref name="forward"/> and <paramref name="backward"/> times, and <paramref name="transfer"/> per message (default 0).</summary>
    public PipelineCosts(IReadOnlyList<double> forward, IReadOnlyList<double> backward, double transfer = 0)
    {
        ArgumentNullException.ThrowIfNull(forward);
        ArgumentNullException.ThrowIfNull(backward);
        if (forward.Count == 0 || forward.Count != backward.Count)
            throw new ArgumentException($"pipeline costs: {forward.Count} forward and {backward.Count} backward times; give one of each per virtual stage");
        for (int s = 0; s < forward.Count; s++)
            if (!(forward[s] >= 0) || !(backward[s] >= 0) || !double.IsFinite(forward[s] + backward[s]))
                throw new ArgumentException($"pipeline costs: virtual stage {s}: forward {forward[s]} and backward {backward[s]} must be non-negative and finite");
        if (!(transfer >= 0) || !double.IsFinite(transfer)) throw new ArgumentException($"pipeline costs: transfer ({transfer}) must be non-negative and finite");
        _forward = [.. forward];
        _backward = [.. backward];
        Transfer = transfer;
    }

    /// <summary>
    /// The same forward and backward time on each of <paramref name="virtualStages"/> virtual stages; the timelines drawn for a
    /// schedule use 1 and 2 (a backward costs about twice a forward).
    /// </summary>
    public static PipelineCosts Uniform(int virtualStages, double forward = 1, double backward = 2, double transfer = 0) =>
        new(Enumerable.Repeat(forward, virtualStages).ToArray(), Enumerable.Repeat(backward, virtualStages).ToArray(), transfer);

    /// <summary>Virtual stages covered.</summary>
    public int VirtualStages => _forward.Length;

    /// <summary>A message's time once both ends are ready.</summary>
    public double Transfer { get; }

    /// <summary>The forward time of <paramref name="virtualStage"/>.</summary>
    public double Forward(int virtualStage) => _forward[virtualStage];

    /// <summary>The backward time of <paramref name="virtualStage"/>.</summary>
    public double Backward(int virtualStage) => _backward[virtualStage];
}
