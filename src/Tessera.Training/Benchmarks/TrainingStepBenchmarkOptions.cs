using Tessera.Models;
using Tessera.Training.Optim;

namespace Tessera.Training.Benchmarks;

/// <summary>
/// What <see cref="TrainingStepBenchmark"/> runs: the batch shape, how many steps are timed after how many untimed
/// ones, and the optimizer. Validated by <see cref="Validate"/> with messages naming the field.
/// </summary>
public sealed record TrainingStepBenchmarkOptions
{
    /// <summary>Sequences per optimizer step (B); default 16.</summary>
    public int BatchSize { get; init; } = 16;

    /// <summary>
    /// Sequences per forward and backward pass; a step runs BatchSize / MicroBatchSize of them with gradient
    /// accumulation, so it must divide <see cref="BatchSize"/>. Default null: one pass of BatchSize sequences.
    /// </summary>
    public int? MicroBatchSize { get; init; }

    /// <summary>Tokens per sequence (T), at most the model's context; default 128.</summary>
    public int SequenceLength { get; init; } = 128;

    /// <summary>Timed steps; the result reports their median. Default 10.</summary>
    public int Steps { get; init; } = 10;

    /// <summary>
    /// Untimed steps before the timed ones: they let tiered JIT compilation reach optimized code, compile GPU kernels
    /// and grow the device allocator's pool. Default 10; 0 is allowed.
    /// </summary>
    public int WarmupSteps { get; init; } = 10;

    /// <summary>Learning rate of every AdamW update (constant: the schedule does not change the cost); default 1e-4.</summary>
    public double LearningRate { get; init; } = 1e-4;

    /// <summary>
    /// Steps over which the learning rate rises linearly to <see cref="LearningRate"/> (step i of the run, warm-up steps
    /// counted, uses (i + 1) / this of it); default 0, a constant rate. A loss curve that compares kernels needs it: without
    /// it, AdamW's first steps at the full rate make llama-1b's loss spike (12.2 to 15.6 at step 3 on the H200), and two runs
    /// that differ only in rounding leave the spike on different paths.
    /// </summary>
    public int LearningRateWarmupSteps { get; init; }

    /// <summary>Seed of the random input and target tokens; default 5 (what Tessera's benchmarks have always drawn).</summary>
    public int Seed { get; init; } = 5;

    /// <summary>AdamW hyper-parameters (clipping included, since it costs a reduction); default <see cref="AdamWOptions"/>'s defaults.</summary>
    public AdamWOptions Optimizer { get; init; } = new();

    /// <summary>Rows of one forward and backward pass: <see cref="MicroBatchSize"/>, or <see cref="BatchSize"/> when that is null.</summary>
    public int EffectiveMicroBatchSize => MicroBatchSize ?? BatchSize;

    /// <summary>
    /// Throws <see cref="ArgumentException"/> naming the first invalid field; with <paramref name="model"/>, also when
    /// <see cref="SequenceLength"/> exceeds its context. Returns this.
    /// </summary>
    public TrainingStepBenchmarkOptions Validate(TransformerConfig? model = null)
    {
        static void Positive(long value, string name)
        {
            if (value <= 0) throw new ArgumentException($"training benchmark: {name} ({value}) must be positive");
        }
        Positive(BatchSize, nameof(BatchSize));
        Positive(SequenceLength, nameof(SequenceLength));
        Positive(Steps, nameof(Steps));
        if (WarmupSteps < 0) throw new ArgumentException($"training benchmark: {nameof(WarmupSteps)} ({WarmupSteps}) must not be negative");
        if (MicroBatchSize is int micro && (micro <= 0 || BatchSize % micro != 0))
            throw new ArgumentException($"training benchmark: {nameof(MicroBatchSize)} ({micro}) must be positive and divide {nameof(BatchSize)} ({BatchSize})");
        if (LearningRateWarmupSteps < 0) throw new ArgumentException($"training benchmark: {nameof(LearningRateWarmupSteps)} ({LearningRateWarmupSteps}) must not be negative");
        if (!(LearningRate > 0)) throw new ArgumentException($"training benchmark: {nameof(LearningRate)} ({LearningRate}) must be positive");
        ArgumentNullException.ThrowIfNull(Optimizer, nameof(Optimizer));
        if (model is not null && SequenceLength > model.MaxSequenceLength)
            throw new ArgumentException($"training benchmark: {nameof(SequenceLength)} ({SequenceLength}) exceeds the model's context of {model.MaxSequenceLength} positions");
        return this;
    }
}
