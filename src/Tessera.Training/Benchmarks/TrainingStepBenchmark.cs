using System.Diagnostics;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Optim;

namespace Tessera.Training.Benchmarks;

/// <summary>
/// Times whole training steps of a model on its own backend: zeroed gradients, forward + cross-entropy and backward
/// per micro-batch (gradients accumulate), one AdamW update with global-norm clipping, and one host read of the
/// step's mean loss, as <see cref="Trainer.TrainStep"/> does, but on fixed random tokens uploaded once, so no data
/// loading or host-to-device copy is in the timed step. The median over the timed steps is reported, with the
/// FLOPs per token of PaLM's and llm.c's MFU convention. The command line's "tessera bench train" and the benchmark
/// project's train-cpu and gpu-train tables are all measured here.
/// <para>
/// A model with a frozen base and LoRA adapters (<see cref="ArenaStorage.Frozen"/>, <see cref="Transformer.Adapters"/>) trains
/// its adapters' arena: the optimizer, the zeroed gradients and the trainable count are the adapters', and the FLOPs per token
/// drop the base weights' gradient products (<see cref="FlopsPerToken(TransformerConfig, long, int, long)"/>).
/// </para>
/// </summary>
public sealed class TrainingStepBenchmark
{
    private readonly Transformer _model;
    private readonly ParameterArena _trained;    // the model's arena, or its adapters' under a frozen base
    private readonly AdamWOptimizer _optimizer;
    private readonly IDeviceTimeline? _timeline;
    private readonly Func<long>? _peakDeviceBytes;
    private readonly Tensor _tokens, _targets;   // (micro, T) I32
    private readonly Tensor _lossSum;            // (1) LossDType: the step's mean loss
    private readonly int _accumulation;

    /// <summary>
    /// Prepares a benchmark of <paramref name="model"/> (built and initialized by the caller) with a fresh AdamW state.
    /// <paramref name="timeline"/>, when given, times each phase on the device (marks 0, then after forward + loss and
    /// after backward of each micro-batch, then after the update); <paramref name="peakDeviceBytes"/>, when given, is
    /// read after the timed steps. The model's device-side token check is turned off, as the trainer does: the random
    /// tokens are drawn in range.
    /// </summary>
    /// <exception cref="ArgumentException">The options are invalid or do not fit the model.</exception>
    public TrainingStepBenchmark(Transformer model, TrainingStepBenchmarkOptions options, IDeviceTimeline? timeline = null, Func<long>? peakDeviceBytes = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        Options = options.Validate(model.Config);
        _model = model;
        _timeline = timeline;
        _peakDeviceBytes = peakDeviceBytes;
        _accumulation = options.BatchSize / options.EffectiveMicroBatchSize;
        _trained = !model.Parameters.Frozen ? model.Parameters
            : model.Adapters?.Arena ?? throw new ArgumentException("training benchmark: the model's base is frozen and it has no LoRA adapters; nothing would train");
        _optimizer = new AdamWOptimizer(_trained, options.Optimizer);
        model.ValidateInputs = false;

        var backend = model.Backend;
        int micro = options.EffectiveMicroBatchSize, t = options.SequenceLength, vocab = model.Config.VocabSize;
        var rng = new Random(options.Seed);
        // Inputs first, then targets, from one generator: the draws the benchmarks have always used.
        var inputs = new int[micro * t];
        var targets = new int[micro * t];
        for (int i = 0; i < inputs.Length; i++) inputs[i] = rng.Next(vocab);
        for (int i = 0; i < targets.Length; i++) targets[i] = rng.Next(vocab);
        _tokens = backend.FromHost<int>(inputs, new Shape(micro, t));
        _targets = backend.FromHost<int>(targets, new Shape(micro, t));
        _lossSum = backend.Zeros(new Shape(1), model.LossDType);
    }

    /// <summary>The validated settings.</summary>
    public TrainingStepBenchmarkOptions Options { get; }

    /// <summary>FLOPs per trained token: 6N + 12·L·T·C for N parameters, L layers, sequence length T and width C.</summary>
    public static double FlopsPerToken(TransformerConfig config, long parameterCount, int sequenceLength) =>
        6.0 * parameterCount + 12.0 * config.Layers * sequenceLength * config.Heads * config.HeadSize;

    /// <summary>
    /// FLOPs per token of LoRA training: 4N + 6·N_A + 12·L·T·C for N frozen base parameters (forward 2N and the input
    /// gradient 2N, no weight gradient) and N_A adapter parameters (all three products). The same convention as the 6N form,
    /// so LoRA's MFU counts the work it does, not the full fine-tuning it replaces.
    /// </summary>
    public static double FlopsPerToken(TransformerConfig config, long frozenParameterCount, int sequenceLength, long adapterParameterCount) =>
        4.0 * frozenParameterCount + 6.0 * adapterParameterCount + 12.0 * config.Layers * sequenceLength * config.Heads * config.HeadSize;

    /// <summary>Runs <see cref="TrainingStepBenchmarkOptions.WarmupSteps"/> untimed steps, then <see cref="Measure"/>.</summary>
    public TrainingStepBenchmarkResult Run()
    {
        WarmUp();
        return Measure();
    }

    /// <summary>
    /// Runs the untimed warm-up steps. Separate from <see cref="Measure"/> so a caller can reset its own counters (a
    /// per-op profiler, say) between the two.
    /// </summary>
    public void WarmUp()
    {
        for (int s = 0; s < Options.WarmupSteps; s++) Step(s);
    }

    /// <summary>Runs the timed steps and returns their medians.</summary>
    /// <exception cref="InvalidOperationException">A step's loss is not finite.</exception>
    public TrainingStepBenchmarkResult Measure()
    {
        int steps = Options.Steps;
        var step = new double[steps];
        var wall = new double[steps];
        var forward = new double[steps];
        var backward = new double[steps];
        var optimizer = new double[steps];
        double loss = double.NaN;
        for (int s = 0; s < steps; s++)
        {
            (loss, wall[s]) = Step(Options.WarmupSteps + s);
            if (_timeline is not { } timeline) { step[s] = wall[s]; continue; }
            int last = 2 * _accumulation + 1;
            step[s] = timeline.ElapsedMilliseconds(0, last);
            optimizer[s] = timeline.ElapsedMilliseconds(last - 1, last);
            for (int m = 0; m < _accumulation; m++)
            {
                forward[s] += timeline.ElapsedMilliseconds(2 * m, 2 * m + 1);
                backward[s] += timeline.ElapsedMilliseconds(2 * m + 1, 2 * m + 2);
            }
        }
        bool phases = _timeline is not null;
        return new TrainingStepBenchmarkResult
        {
            ParameterCount = _model.Parameters.ParameterCount,
            TrainableParameterCount = _trained.ParameterCount,
            BatchSize = Options.BatchSize,
            MicroBatchSize = Options.EffectiveMicroBatchSize,
            SequenceLength = Options.SequenceLength,
            TimedSteps = steps,
            StepMilliseconds = Median(step),
            WallMilliseconds = Median(wall),
            ForwardMilliseconds = phases ? Median(forward) : null,
            BackwardMilliseconds = phases ? Median(backward) : null,
            OptimizerMilliseconds = phases ? Median(optimizer) : null,
            FinalLoss = loss,
            FlopsPerToken = ReferenceEquals(_trained, _model.Parameters)
                ? FlopsPerToken(_model.Config, _model.Parameters.ParameterCount, Options.SequenceLength)
                : FlopsPerToken(_model.Config, _model.Parameters.ParameterCount, Options.SequenceLength, _trained.ParameterCount),
            PeakDeviceBytes = _peakDeviceBytes?.Invoke(),
        };
    }

    /// <summary>
    /// Trains <paramref name="steps"/> steps on consecutive windows of <paramref name="stream"/> (step s, micro-batch row r reads
    /// T + 1 tokens from offset ((s · rows) + r) · (T + 1), wrapping: inputs are the first T, targets the next token of each)
    /// and returns each step's mean loss: a loss curve on learnable data, to compare kernels or settings run for run (the
    /// timed steps' fixed random tokens are memorized within a few dozen steps). Every micro-batch of a step reads the same
    /// window, as <see cref="Measure"/> does. Call it on a fresh benchmark (no warm-up), or the curve starts from trained weights.
    /// </summary>
    /// <exception cref="ArgumentException">The stream is shorter than one row or holds a token outside the vocabulary.</exception>
    /// <exception cref="InvalidOperationException">A step's loss is not finite.</exception>
    public double[] LossCurve(IReadOnlyList<int> stream, int steps)
    {
        ArgumentNullException.ThrowIfNull(stream);
        int micro = Options.EffectiveMicroBatchSize, t = Options.SequenceLength, vocab = _model.Config.VocabSize;
        if (stream.Count < t + 1)
            throw new ArgumentException($"training benchmark: the loss curve's token stream has {stream.Count} tokens; one row needs {t + 1}");
        for (int i = 0; i < stream.Count; i++)
            if ((uint)stream[i] >= (uint)vocab)
                throw new ArgumentException($"training benchmark: token {stream[i]} at {i} of the loss curve's stream is outside the vocabulary (0..{vocab - 1})");
        var inputs = new int[micro * t];
        var targets = new int[micro * t];
        var losses = new double[steps];
        for (int s = 0; s < steps; s++)
        {
            for (int r = 0; r < micro; r++)
            {
                long start = ((long)s * micro + r) * (t + 1);
                for (int j = 0; j < t; j++)
                {
                    inputs[r * t + j] = stream[(int)((start + j) % stream.Count)];
                    targets[r * t + j] = stream[(int)((start + j + 1) % stream.Count)];
                }
            }
            _model.Backend.CopyFromHost<int>(inputs, _tokens);
            _model.Backend.CopyFromHost<int>(targets, _targets);
            losses[s] = Step(s).Loss;
        }
        return losses;
    }

    /// <summary>One training step (<paramref name="index"/> counts warm-up steps too); returns its mean loss and host milliseconds.</summary>
    private (double Loss, double WallMilliseconds) Step(int index)
    {
        var backend = _model.Backend;
        double scale = 1.0 / (Options.BatchSize * (double)Options.SequenceLength);
        long start = Stopwatch.GetTimestamp();
        _timeline?.Mark(0);
        _trained.ZeroGrad();
        backend.Fill(_lossSum, 0);
        for (int m = 0; m < _accumulation; m++)
        {
            var losses = _model.Loss(_tokens, _targets, microBatch: 0, lossScale: scale);
            backend.Sum(losses, _lossSum, scale, accumulate: true);
            _timeline?.Mark(2 * m + 1);
            _model.Backward(microBatch: 0);
            _timeline?.Mark(2 * m + 2);
        }
        int warm = Options.LearningRateWarmupSteps;
        _optimizer.Step(warm > 0 ? Options.LearningRate * Math.Min(1.0, (index + 1.0) / warm) : Options.LearningRate);
        _timeline?.Mark(2 * _accumulation + 1);
        double loss = backend.ReadScalar(_lossSum);   // the step's one host read, which also waits for the step
        double ms = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        if (!double.IsFinite(loss))
            throw new InvalidOperationException($"training benchmark: the loss is {loss} at step {index + 1}; the measured steps would not be meaningful (check the model's dtype and the learning rate)");
        return (loss, ms);
    }

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        return sorted[sorted.Length / 2];
    }
}
