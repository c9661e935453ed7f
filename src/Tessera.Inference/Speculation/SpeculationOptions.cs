namespace Tessera.Inference.Speculation;

/// <summary>
/// Speculative decoding, by prompt lookup (<see cref="NgramDrafter"/>) or with a draft model (<see cref="ModelDrafter"/>): how
/// many tokens a decoding sequence may guess ahead each step, and the n-gram lengths prompt lookup looks them up by. Off by default.
/// </summary>
public sealed record SpeculationOptions
{
    /// <summary>The largest <see cref="DraftTokens"/> allowed.</summary>
    public const int MaxDraftTokens = 16;

    /// <summary>Most draft tokens a sequence verifies in one step, at most <see cref="MaxDraftTokens"/>; 0 (the default)
    /// turns speculation off.</summary>
    public int DraftTokens { get; init; }

    /// <summary>Longest suffix of a sequence looked up among its earlier tokens; default 4.</summary>
    public int MaxNgram { get; init; } = 4;

    /// <summary>
    /// Shortest suffix that may give drafts; default 2. A single repeated token proposes drafts at nearly every step, and
    /// each wrong draft costs a row of the step's products for nothing.
    /// </summary>
    public int MinNgram { get; init; } = 2;

    /// <summary>
    /// Whether every sequence that decodes verifies exactly <see cref="DraftTokens"/> guesses, the drafter's or, where it has
    /// none, its last token repeated (any token is a valid guess: a wrong one is rejected like any other). A step in which
    /// every sequence decodes then has a fixed shape per batch-size bucket, 1 + DraftTokens rows a sequence, and is recorded
    /// and replayed as decode steps are (CUDA graphs), at the cost of the padded rows' compute. Default false: not yet
    /// measured on a GPU (on the CPU, which records nothing, it only adds rows).
    /// </summary>
    public bool UniformDrafts { get; init; }

    /// <summary>Whether speculation is on.</summary>
    public bool Enabled => DraftTokens > 0;

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid field.</summary>
    public SpeculationOptions Validate()
    {
        if (DraftTokens is < 0 or > MaxDraftTokens) throw new ArgumentException($"SpeculationOptions.DraftTokens ({DraftTokens}) must lie in [0, {MaxDraftTokens}]");
        if (MinNgram < 1) throw new ArgumentException($"SpeculationOptions.MinNgram ({MinNgram}) must be at least 1");
        if (MaxNgram < MinNgram || MaxNgram > 64) throw new ArgumentException($"SpeculationOptions.MaxNgram ({MaxNgram}) must lie in [MinNgram = {MinNgram}, 64]");
        return this;
    }
}
