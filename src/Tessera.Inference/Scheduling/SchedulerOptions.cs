namespace Tessera.Inference.Scheduling;

/// <summary>Limits of the iteration-level scheduler.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Most sequences in one step (the running batch); default 64.</summary>
    public int MaxBatch { get; init; } = 64;

    /// <summary>Most tokens one step computes over all sequences (decode tokens plus prefill chunks); default 2048. A
    /// longer prompt is prefilled in chunks over several steps while the running sequences keep decoding.</summary>
    public int TokenBudget { get; init; } = 2048;

    /// <summary>Most requests waiting to start; a request past it is refused (HTTP 429); default 256.</summary>
    public int MaxQueue { get; init; } = 256;

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid field.</summary>
    public SchedulerOptions Validate()
    {
        if (MaxBatch <= 0) throw new ArgumentException($"SchedulerOptions.MaxBatch ({MaxBatch}) must be positive");
        if (TokenBudget < MaxBatch) throw new ArgumentException($"SchedulerOptions.TokenBudget ({TokenBudget}) must be at least MaxBatch ({MaxBatch}) so that every running sequence can decode in one step");
        if (MaxQueue < 0) throw new ArgumentException($"SchedulerOptions.MaxQueue ({MaxQueue}) must not be negative");
        return this;
    }
}
