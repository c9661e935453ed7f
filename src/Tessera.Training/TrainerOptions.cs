namespace Tessera.Training;

/// <summary>Settings of a training run. Validated by <see cref="Validate"/> with messages naming the field.</summary>
public sealed record TrainerOptions
{
    /// <summary>Rows per micro-batch (B); default 8.</summary>
    public int BatchSize { get; init; } = 8;

    /// <summary>Tokens per row (T); default 128.</summary>
    public int SequenceLength { get; init; } = 128;

    /// <summary>Micro-batches whose gradients are summed before each update; default 1.</summary>
    public int GradientAccumulationSteps { get; init; } = 1;

    /// <summary>Number of optimizer updates in the run; default 100.</summary>
    public int Steps { get; init; } = 100;

    /// <summary>Peak learning rate; default 1e-3.</summary>
    public double LearningRate { get; init; } = 1e-3;

    /// <summary>Learning rate at the last step, as a fraction of the peak; default 0.1.</summary>
    public double MinLearningRateFraction { get; init; } = 0.1;

    /// <summary>Steps of linear warmup; default 10.</summary>
    public int WarmupSteps { get; init; } = 10;

    /// <summary>Seed for weight initialization and any sampling; default 1337.</summary>
    public int Seed { get; init; } = 1337;

    /// <summary>Evaluate validation loss every this many steps (0: never); default 0.</summary>
    public int EvalEvery { get; init; }

    /// <summary>Validation batches per evaluation; default 4.</summary>
    public int EvalBatches { get; init; } = 4;

    /// <summary>Save a checkpoint every this many steps (0: only at the end); default 0.</summary>
    public int CheckpointEvery { get; init; }

    /// <summary>Print and log metrics every this many steps; default 1.</summary>
    public int LogEvery { get; init; } = 1;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field.</summary>
    public TrainerOptions Validate()
    {
        void Positive(long v, string name) { if (v <= 0) throw new ArgumentException($"training options: {name} ({v}) must be positive"); }
        Positive(BatchSize, nameof(BatchSize));
        Positive(SequenceLength, nameof(SequenceLength));
        Positive(GradientAccumulationSteps, nameof(GradientAccumulationSteps));
        Positive(Steps, nameof(Steps));
        Positive(LogEvery, nameof(LogEvery));
        if (!(LearningRate > 0)) throw new ArgumentException($"training options: LearningRate ({LearningRate}) must be positive");
        if (MinLearningRateFraction is < 0 or > 1) throw new ArgumentException($"training options: MinLearningRateFraction ({MinLearningRateFraction}) must lie in [0, 1]");
        if (WarmupSteps < 0) throw new ArgumentException($"training options: WarmupSteps ({WarmupSteps}) must not be negative");
        if (EvalEvery < 0 || CheckpointEvery < 0) throw new ArgumentException("training options: EvalEvery and CheckpointEvery must not be negative");
        return this;
    }
}
