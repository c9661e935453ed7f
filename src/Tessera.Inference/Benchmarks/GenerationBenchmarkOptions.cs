using Tessera.Models;

namespace Tessera.Inference.Benchmarks;

/// <summary>
/// What <see cref="GenerationBenchmark"/> runs: a random prompt of <see cref="PromptLength"/> tokens continued by
/// <see cref="NewTokens"/> tokens, <see cref="Rounds"/> times. Validated by <see cref="Validate"/> with messages naming the field.
/// </summary>
public sealed record GenerationBenchmarkOptions
{
    /// <summary>Tokens of the random prompt, prefilled in one forward pass; default 512.</summary>
    public int PromptLength { get; init; } = 512;

    /// <summary>
    /// Tokens generated per round, the first from the prefill's logits and each later one by a decode step, so at least
    /// 2 (one decode step); PromptLength + NewTokens must fit the model's context. Default 256.
    /// </summary>
    public int NewTokens { get; init; } = 256;

    /// <summary>
    /// Generations run. With more than one, the first is a warm-up (it compiles kernels, grows the allocator's pool and
    /// lets the JIT optimize) and the result is the median of the others. Default 2.
    /// </summary>
    public int Rounds { get; init; } = 2;

    /// <summary>Seed of the random prompt; default 3.</summary>
    public int Seed { get; init; } = 3;

    /// <summary>
    /// How each round generates (sampling, and any decoding switch of <see cref="GenerationOptions"/>). Its
    /// MaxNewTokens and StopTokens are replaced by <see cref="NewTokens"/> and none, so every round produces the same
    /// count. Default greedy.
    /// </summary>
    public GenerationOptions Generation { get; init; } = new();

    /// <summary>
    /// Throws <see cref="ArgumentException"/> naming the first invalid field; with <paramref name="model"/>, also when
    /// the prompt and the new tokens do not fit its context. Returns this.
    /// </summary>
    public GenerationBenchmarkOptions Validate(TransformerConfig? model = null)
    {
        if (PromptLength <= 0) throw new ArgumentException($"generation benchmark: {nameof(PromptLength)} ({PromptLength}) must be positive");
        if (NewTokens < 2) throw new ArgumentException($"generation benchmark: {nameof(NewTokens)} ({NewTokens}) must be at least 2: the first token comes from the prefill, decoding starts with the second");
        if (Rounds <= 0) throw new ArgumentException($"generation benchmark: {nameof(Rounds)} ({Rounds}) must be positive");
        ArgumentNullException.ThrowIfNull(Generation, nameof(Generation));
        Generation.Sampling.Validate();
        if (model is not null && (long)PromptLength + NewTokens > model.MaxSequenceLength)
            throw new ArgumentException($"generation benchmark: {nameof(PromptLength)} ({PromptLength}) + {nameof(NewTokens)} ({NewTokens}) exceed the model's context of {model.MaxSequenceLength} positions");
        return this;
    }
}
