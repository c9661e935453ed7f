namespace Tessera.Training.Benchmarks;

/// <summary>The timings of a <see cref="TrainingStepBenchmark"/>: medians over its timed steps, and what follows from them.</summary>
public sealed record TrainingStepBenchmarkResult
{
    /// <summary>Parameters of the model (N), padded vocabulary rows included, as counted in <see cref="FlopsPerToken"/>.</summary>
    public required long ParameterCount { get; init; }

    /// <summary>Parameters the optimizer updates: <see cref="ParameterCount"/>, or the LoRA adapters' count under a frozen base.</summary>
    public long TrainableParameterCount { get; init; }

    /// <summary>Sequences per optimizer step (B).</summary>
    public required int BatchSize { get; init; }

    /// <summary>Sequences per forward and backward pass (equal to <see cref="BatchSize"/> without gradient accumulation).</summary>
    public required int MicroBatchSize { get; init; }

    /// <summary>Tokens per sequence (T).</summary>
    public required int SequenceLength { get; init; }

    /// <summary>Steps the medians are taken over.</summary>
    public required int TimedSteps { get; init; }

    /// <summary>
    /// Median milliseconds per step: device time from the timeline when one was given, otherwise
    /// <see cref="WallMilliseconds"/>.
    /// </summary>
    public required double StepMilliseconds { get; init; }

    /// <summary>Median host wall-clock milliseconds per step, from the first op enqueued to the loss read back (the step's one host read).</summary>
    public required double WallMilliseconds { get; init; }

    /// <summary>Median milliseconds of forward + loss, summed over the step's micro-batches; null without a timeline.</summary>
    public double? ForwardMilliseconds { get; init; }

    /// <summary>Median milliseconds of backward, summed over the step's micro-batches; null without a timeline.</summary>
    public double? BackwardMilliseconds { get; init; }

    /// <summary>Median milliseconds of the AdamW update (gradient norm and clipping included); null without a timeline.</summary>
    public double? OptimizerMilliseconds { get; init; }

    /// <summary>Mean cross-entropy of the last timed step, in nats per token (finite: the benchmark throws otherwise).</summary>
    public required double FinalLoss { get; init; }

    /// <summary>Model FLOPs per trained token: 6N + 12·L·T·C (PaLM's and llm.c's convention; attention counted, recomputation not); under LoRA 4N + 6·N_A + 12·L·T·C.</summary>
    public required double FlopsPerToken { get; init; }

    /// <summary>Peak bytes the device allocator had in use (weights, optimizer state, activations); null where the caller gave no way to read it.</summary>
    public long? PeakDeviceBytes { get; init; }

    /// <summary>Tokens per optimizer step: B x T.</summary>
    public long TokensPerStep => (long)BatchSize * SequenceLength;

    /// <summary>Trained tokens per second at the median step time.</summary>
    public double TokensPerSecond => TokensPerStep / (StepMilliseconds / 1000);

    /// <summary>Achieved model FLOP/s: <see cref="FlopsPerToken"/> x <see cref="TokensPerSecond"/>.</summary>
    public double AchievedFlopsPerSecond => FlopsPerToken * TokensPerSecond;

    /// <summary>Model FLOPs utilization (0..1) against a device peak of <paramref name="peakFlopsPerSecond"/> FLOP/s.</summary>
    public double ModelFlopsUtilization(double peakFlopsPerSecond)
    {
        if (!(peakFlopsPerSecond > 0)) throw new ArgumentOutOfRangeException(nameof(peakFlopsPerSecond), peakFlopsPerSecond, "a peak of FLOP/s must be positive");
        return AchievedFlopsPerSecond / peakFlopsPerSecond;
    }
}
