namespace Tessera.Inference.Scheduling;

/// <summary>
/// Speculative decoding with a draft model (<see cref="Speculation.ModelDrafter"/>): the draft model keeps its keys and
/// values in a pool of its own addressed through the <see cref="Scheduler"/>'s block tables, so the scheduler keeps a
/// sequence's blocks for as long as either model may still read them, and bounds what a sequence holds with the guesses
/// the draft model writes ahead of the step.
/// </summary>
public sealed record DraftModelPool
{
    /// <summary>Positions each of the draft model's queries sees (its config's sliding window), or 0 for all of them; default 0.
    /// With 0, or with a served model without a window, no block is released before the sequence ends.</summary>
    public int SlidingWindow { get; init; }

    /// <summary>Most guesses the draft model writes past a sequence's pending token before a step
    /// (<see cref="Speculation.SpeculationOptions.DraftTokens"/>), in tokens; default 0.</summary>
    public int LookaheadTokens { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid field.</summary>
    public DraftModelPool Validate()
    {
        if (SlidingWindow < 0) throw new ArgumentException($"DraftModelPool.SlidingWindow ({SlidingWindow}) must be 0 (none) or positive");
        if (LookaheadTokens < 0) throw new ArgumentException($"DraftModelPool.LookaheadTokens ({LookaheadTokens}) must not be negative");
        return this;
    }
}
