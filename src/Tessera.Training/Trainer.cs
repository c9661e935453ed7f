using System.Diagnostics;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training.Data;
using Tessera.Training.Optim;

namespace Tessera.Training;

/// <summary>
/// The training loop on one device: micro-batches with gradient accumulation, AdamW with a
/// warmup-cosine schedule and global-norm clipping, periodic validation, metrics, and a hook
/// for checkpoints. The loss is read from the device once per step (for logging); everything
/// else stays enqueued.
/// </summary>
public sealed class Trainer : ILoopTrainer
{
    private readonly Transformer _model;
    private readonly TokenDataLoader _train;
    private readonly TokenDataLoader? _validation;
    private readonly CosineSchedule _schedule;
    private readonly int[] _hostInputs, _hostTargets;
    private readonly Tensor _inputs, _targets;   // (B, T) I32
    private readonly Tensor _lossSum;            // (1) mean loss of the step

    /// <summary>Creates a trainer; the model's arena must be built and initialized.</summary>
    public Trainer(Transformer model, AdamWOptimizer optimizer, TokenDataLoader train, TokenDataLoader? validation, TrainerOptions options)
    {
        options.Validate();
        if (train.BatchSize != options.BatchSize || train.SequenceLength != options.SequenceLength)
            throw new ArgumentException($"data loader batches ({train.BatchSize} x {train.SequenceLength}) differ from the options ({options.BatchSize} x {options.SequenceLength})");
        if (options.SequenceLength > model.Config.MaxSequenceLength)
            throw new ArgumentException($"training options: SequenceLength ({options.SequenceLength}) exceeds the model's MaxSequenceLength ({model.Config.MaxSequenceLength})");
        _model = model;
        Optimizer = optimizer;
        _train = train;
        _validation = validation;
        Options = options;
        _schedule = new CosineSchedule(options.LearningRate, options.LearningRate * options.MinLearningRateFraction, options.WarmupSteps, options.Steps);
        int bt = options.BatchSize * options.SequenceLength;
        _hostInputs = new int[bt];
        _hostTargets = new int[bt];
        var backend = model.Parameters.Backend;
        _inputs = backend.Allocate(new Shape(options.BatchSize, options.SequenceLength), DType.I32);
        _targets = backend.Allocate(new Shape(options.BatchSize, options.SequenceLength), DType.I32);
        _lossSum = backend.Zeros(new Shape(1), model.LossDType);
        // The trainer checks token ids on its host arrays (CheckIds), so the model need not read them back from the
        // device: on a GPU that read is a synchronization per forward.
        model.ValidateInputs = false;
    }

    /// <summary>Run settings.</summary>
    public TrainerOptions Options { get; }

    /// <summary>The optimizer (its state is part of a checkpoint).</summary>
    public AdamWOptimizer Optimizer { get; }

    /// <summary>Updates completed so far.</summary>
    public int Step { get; set; }

    /// <summary>Training data position (part of a checkpoint).</summary>
    public DataPosition DataPosition { get => _train.Position; set => _train.Position = value; }

    /// <summary>Runs one update (all accumulation micro-batches) and returns the mean loss.</summary>
    public double TrainStep()
    {
        var backend = _model.Parameters.Backend;
        int accum = Options.GradientAccumulationSteps;
        long tokens = (long)Options.BatchSize * Options.SequenceLength;
        double scale = 1.0 / (tokens * accum);
        _model.Parameters.ZeroGrad();
        backend.Fill(_lossSum, 0);
        for (int micro = 0; micro < accum; micro++)
        {
            _train.NextBatch(_hostInputs, _hostTargets);
            CheckIds();
            backend.CopyFromHost<int>(_hostInputs, _inputs);
            backend.CopyFromHost<int>(_hostTargets, _targets);
            var losses = _model.Loss(_inputs, _targets, microBatch: 0, lossScale: scale);
            backend.Sum(losses, _lossSum, scale, accumulate: true);
            _model.Backward(microBatch: 0);
        }
        Optimizer.Step(_schedule.At(Step));
        Step++;
        return backend.ReadScalar(_lossSum);
    }

    /// <summary>Mean loss over <see cref="TrainerOptions.EvalBatches"/> validation batches, from the start of the validation data.</summary>
    public double Evaluate()
    {
        if (_validation is null) throw new InvalidOperationException("no validation data was given");
        var backend = _model.Parameters.Backend;
        _validation.Position = default;
        double total = 0;
        for (int i = 0; i < Options.EvalBatches; i++)
        {
            _validation.NextBatch(_hostInputs, _hostTargets);
            CheckIds();
            backend.CopyFromHost<int>(_hostInputs, _inputs);
            backend.CopyFromHost<int>(_hostTargets, _targets);
            var losses = _model.Loss(_inputs, _targets, microBatch: 0, lossScale: 0);
            backend.Fill(_lossSum, 0);
            backend.Sum(losses, _lossSum, 1.0 / losses.NumElements);
            total += backend.ReadScalar(_lossSum);
        }
        return total / Options.EvalBatches;
    }

    /// <summary>Checks the batch's inputs (in [0, VocabSize)) and targets (in [-1, VocabSize)) on the host.</summary>
    private void CheckIds()
    {
        int vocab = _model.Config.VocabSize, t = Options.SequenceLength;
        for (int i = 0; i < _hostInputs.Length; i++)
        {
            if ((uint)_hostInputs[i] >= (uint)vocab)
                throw new ArgumentException($"training data: input token [{i / t}, {i % t}] = {_hostInputs[i]} is outside [0, VocabSize = {vocab}); the data was tokenized for another vocabulary");
            if (_hostTargets[i] < -1 || _hostTargets[i] >= vocab)
                throw new ArgumentException($"training data: target [{i / t}, {i % t}] = {_hostTargets[i]} is outside [-1, VocabSize = {vocab}); the data was tokenized for another vocabulary");
        }
    }

    /// <summary>
    /// Runs from the current step to <see cref="TrainerOptions.Steps"/>, reporting every logged step to
    /// <paramref name="onStep"/> and calling <paramref name="checkpoint"/> every CheckpointEvery steps and at the end.
    /// </summary>
    public void Run(Action<StepMetrics>? onStep = null, Action<Trainer>? checkpoint = null, MetricsLog? metrics = null,
        CancellationToken cancellation = default) => TrainingLoop.Run(this, onStep, checkpoint, metrics, cancellation);

    long ILoopTrainer.TokensPerStep => (long)Options.BatchSize * Options.SequenceLength * Options.GradientAccumulationSteps * _train.WorldSize;
    bool ILoopTrainer.Reports => true;
    string ILoopTrainer.Where => "";
    double ILoopTrainer.LearningRateAt(int step) => _schedule.At(step);
    double ILoopTrainer.LastGradNorm() => Optimizer.LastGradNorm();
    bool ILoopTrainer.StopAgreed(bool requestedHere) => requestedHere;
    double? ILoopTrainer.ValidationLossIfDue() =>
        _validation is not null && Options.EvalEvery > 0 && (Step % Options.EvalEvery == 0 || Step == Options.Steps) ? Evaluate() : null;
}
