namespace Tessera.Inference.Scheduling;

/// <summary>Limits of the iteration-level scheduler.</summary>
public sealed record SchedulerOptions
{
    /// <summary>Most sequences in one step (the running batch); default 64.</summary>
    public int MaxBatch { get; init; } = 64;

    /// <summary>Most tokens one step computes over all sequences (decode tokens plus prefill chunks); default 2048. A
    /// longer prompt is prefilled in chunks over several steps while the running sequences keep decoding.</summary>
    public int TokenBudget { get; init; } = 2048;

    /// <summary>
    /// Most tokens of a step in which some sequence decodes, its decode tokens included; default 2,048 (on an H200 with llama-1b, 512-token
    /// prompts and 64 concurrent streams, 2,048 gave 10,587 generated tokens/s against 7,682 at 512, with a lower p99 inter-token
    /// latency: the prefill chunks run at a better GEMM size and the decodes wait behind fewer steps; docs/benchmarks.md). Decode tokens are
    /// scheduled first and prefill chunks (of running and newly admitted sequences) get what is left, so a decoding
    /// sequence never waits behind more than this many tokens of others' prompts: steps without a decode prefill at
    /// <see cref="TokenBudget"/>, steps with one stay short. Larger gives new requests their first token sooner at the
    /// cost of inter-token latency. Taken within [<see cref="MaxBatch"/>, <see cref="TokenBudget"/>], so that a full
    /// batch always decodes and no step exceeds the budget.
    /// </summary>
    public int DecodingStepTokens { get; init; } = 2048;

    /// <summary>The token limit of a step in which some sequence decodes: <see cref="DecodingStepTokens"/> within [MaxBatch, TokenBudget].</summary>
    public int EffectiveDecodingStepTokens => Math.Clamp(DecodingStepTokens, MaxBatch, Math.Max(TokenBudget, MaxBatch));

    /// <summary>Most requests waiting to start; a request past it is refused (HTTP 429); default 256.</summary>
    public int MaxQueue { get; init; } = 256;

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid field.</summary>
    public SchedulerOptions Validate()
    {
        if (MaxBatch <= 0) throw new ArgumentException($"SchedulerOptions.MaxBatch ({MaxBatch}) must be positive");
        if (TokenBudget < MaxBatch) throw new ArgumentException($"SchedulerOptions.TokenBudget ({TokenBudget}) must be at least MaxBatch ({MaxBatch}) so that every running sequence can decode in one step");
        if (DecodingStepTokens <= 0) throw new ArgumentException($"SchedulerOptions.DecodingStepTokens ({DecodingStepTokens}) must be positive");
        if (MaxQueue < 0) throw new ArgumentException($"SchedulerOptions.MaxQueue ({MaxQueue}) must not be negative");
        return this;
    }
}
