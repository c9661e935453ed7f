using System.Diagnostics;
using Tessera.Distributed;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Tensors;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;

namespace Tessera.Training;

/// <summary>
/// The training loop, the same for every layout: micro-batches with gradient accumulation, AdamW with a warmup-cosine
/// schedule and global-norm clipping, periodic validation, metrics and checkpoints. What differs between one device,
/// data parallelism, ZeRO 1-3 and offload is handed in as an <see cref="IDataParallelism"/> strategy; tensor
/// parallelism lives in the model's layers; a model that is a pipeline stage runs each step's micro-batches through a pipeline
/// schedule (<see cref="PipelineRunner"/>) instead of one after another. Each micro-batch's loss scale is 1 / (B * T * accumulation * data-parallel
/// ranks), so summing gradients over the data-parallel group gives the gradient of the global mean loss. The loss is
/// read from the device once per step (for logging); everything else stays enqueued.
/// </summary>
public sealed class Trainer
{
    private readonly Transformer _model;
    private readonly ITokenBatchSource _train;
    private readonly ITokenBatchSource? _validation;
    private readonly CosineSchedule _schedule;
    private readonly int[] _hostInputs, _hostTargets;   // (B T): an evaluation batch
    private readonly int[][] _stepInputs, _stepTargets; // per accumulation micro-batch (B T): a step's batches, read before its first forward
    private readonly Tensor _inputs, _targets;   // (B, T) I32
    private readonly Tensor _lossSum;            // (1) loss dtype (F32 for BF16): this rank's share of the step's mean loss, then the global mean
    private readonly TensorParallelGradients? _partialGradients;   // tensor parallelism: sums the gradients each rank has in part
    private Tensor? _stopFlag;                   // (1) loss dtype: this rank's stop request, then the max over all ranks
    private Tensor? _count;                      // (1) loss dtype: this rank's counted targets of a step, then the sum over all ranks
    private readonly PipelineRunner? _pipeline;  // pipeline parallelism: the schedule that runs a step's micro-batches, or null

    /// <summary>
    /// Creates a trainer of <paramref name="model"/> under <paramref name="parallelism"/>. With a data-parallel group,
    /// <paramref name="train"/> (and <paramref name="validation"/>) must read slice Rank of Size. The model's weights must
    /// be initialized identically on every rank, or be written through <see cref="InitializeWeights"/> /
    /// <see cref="LoadWeights"/> afterwards (a model declared without storage for ZeRO-3). When the model is a pipeline stage,
    /// <paramref name="pipelineSchedule"/> says how a step's accumulation micro-batches flow through the stages (every stage of
    /// the pipeline group reads the same batches: the first uses their tokens, the last their targets).
    /// </summary>
    public Trainer(Transformer model, IDataParallelism parallelism, ITokenBatchSource train, ITokenBatchSource? validation, TrainerOptions options,
        PipelineScheduleKind pipelineSchedule = PipelineScheduleKind.OneForwardOneBackward)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(parallelism);
        ArgumentNullException.ThrowIfNull(train);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var group = parallelism.Group;
        int rank = group?.Rank ?? 0, size = group?.Size ?? 1;
        var tp = model.TensorParallelism;
        var pp = model.Pipeline;
        Where = (group is null ? "" : group.Describe() + ": ") + (tp is null ? "" : tp.Group.Describe() + ": ") + (pp is null ? "" : pp.Group.Describe() + ": ");
        if ((tp is not null || pp is not null) && parallelism is SingleDevice { Optimizer.NormScope: null })
            throw new ArgumentException($"{Where}the model is split over {(tp is null ? $"pp ({pp!.Stages})" : $"tp ({tp.Size})")} ranks but its optimizer sums only this rank's gradients for clipping; " +
                "create it with GradientNormScope.For(model) (SingleDevice.For does)");
        foreach (var (loader, what) in new[] { (train, "training"), (validation, "validation") })
        {
            if (loader is null) continue;
            if (loader.WorldSize != size || loader.Rank != rank)
                throw new ArgumentException($"{Where}the {what} data loader reads slice {loader.Rank} of {loader.WorldSize}; it must read slice {rank} of {size}");
            if (loader.BatchSize != options.BatchSize || loader.SequenceLength != options.SequenceLength)
                throw new ArgumentException($"{Where}{what} data loader batches ({loader.BatchSize} x {loader.SequenceLength}) differ from the options ({options.BatchSize} x {options.SequenceLength})");
        }
        if (options.SequenceLength > model.Config.MaxSequenceLength)
            throw new ArgumentException($"training options: SequenceLength ({options.SequenceLength}) exceeds the model's MaxSequenceLength ({model.Config.MaxSequenceLength})");
        _model = model;
        Parallelism = parallelism;
        _train = train;
        _validation = validation;
        Options = options;
        _schedule = new CosineSchedule(options.LearningRate, options.LearningRate * options.MinLearningRateFraction, options.WarmupSteps, options.Steps);
        int bt = options.BatchSize * options.SequenceLength;
        _hostInputs = new int[bt];
        _hostTargets = new int[bt];
        _stepInputs = Enumerable.Range(0, options.GradientAccumulationSteps).Select(_ => new int[bt]).ToArray();
        _stepTargets = Enumerable.Range(0, options.GradientAccumulationSteps).Select(_ => new int[bt]).ToArray();
        var backend = model.Backend;
        _inputs = backend.Allocate(new Shape(options.BatchSize, options.SequenceLength), DType.I32);
        _targets = backend.Allocate(new Shape(options.BatchSize, options.SequenceLength), DType.I32);
        // BF16 would round the per-token losses' sum to 3 significant digits; the model's loss dtype is F32 (F64 for F64).
        _lossSum = backend.Zeros(new Shape(1), model.LossDType);
        // The trainer checks token ids on its host arrays (CheckIds), so the model need not read them back from the
        // device: on a GPU that read is a synchronization per forward, which would stall overlapped reductions.
        model.ValidateInputs = false;
        if (TensorParallelGradients.Needed(model)) _partialGradients = new TensorParallelGradients(model, parallelism.ReducesEveryMicroBatch);
        // Last: the pipeline wraps every pass hook installed so far (it decides when a unit's gradient is complete).
        if (pp is not null) _pipeline = new PipelineRunner(model, parallelism, pipelineSchedule, options);
    }

    /// <summary>A one-device trainer updating <paramref name="model"/>'s arena with <paramref name="optimizer"/>.</summary>
    public Trainer(Transformer model, AdamWOptimizer optimizer, ITokenBatchSource train, ITokenBatchSource? validation, TrainerOptions options)
        : this(model, new SingleDevice(model.Parameters, optimizer), train, validation, options)
    {
    }

    /// <summary>Run settings (BatchSize is this rank's micro-batch).</summary>
    public TrainerOptions Options { get; }

    /// <summary>The model this rank trains.</summary>
    public Transformer Model => _model;

    /// <summary>How gradients are synchronised and parameters updated.</summary>
    public IDataParallelism Parallelism { get; }

    /// <summary>Updates completed so far.</summary>
    public int Step { get; set; }

    /// <summary>Training data position (global: the same on every rank; part of a checkpoint).</summary>
    public DataPosition DataPosition { get => _train.Position; set => _train.Position = value; }

    /// <summary>Tokens one update consumes over all data-parallel ranks.</summary>
    public long TokensPerStep => (long)Options.BatchSize * Options.SequenceLength * Options.GradientAccumulationSteps * (Parallelism.Group?.Size ?? 1);

    /// <summary>The pipeline schedule's runner when the model is a pipeline stage, else null.</summary>
    public PipelineRunner? Pipeline => _pipeline;

    /// <summary>Whether this rank reports progress (rank 0 of the data-parallel, tensor-parallel and pipeline groups; always on one device).</summary>
    public bool Reports => (Parallelism.Group?.Rank ?? 0) == 0 && (_model.TensorParallelism?.Rank ?? 0) == 0 && (_model.Pipeline?.Stage ?? 0) == 0;

    /// <summary>Prefix naming the rank in messages ("" on one device).</summary>
    public string Where { get; }

    /// <summary>Collectives one step issues on the data-parallel group: the strategy's, plus the loss all-reduce (and, for data with ignored targets, the count's).</summary>
    public int CollectivesPerStep => Parallelism.CollectivesPerStep(Options.GradientAccumulationSteps) + (Parallelism.Group is null ? 0 : _train.IgnoresTargets ? 2 : 1);

    /// <summary>The learning rate of update <paramref name="step"/> (0-based).</summary>
    public double LearningRateAt(int step) => _schedule.At(step);

    /// <summary>
    /// Writes <see cref="Transformer.InitializeWeights"/>' values (seed <paramref name="seed"/>) wherever this rank keeps
    /// its weights, one parameter at a time through the host in the full initialization's order: every rank gets exactly
    /// the values a full initialization gives its part, and no full-size device buffer is allocated. Not collective.
    /// </summary>
    public void InitializeWeights(int seed)
    {
        foreach (var (p, values) in _model.InitialValues(seed)) Parallelism.WriteWeights(p, p.LocalValues(values));
        Parallelism.MarkWeightsWritten();
    }

    /// <summary>
    /// Loads the weights of a Hugging Face model directory (or a Tessera checkpoint, which holds one) with this model's
    /// configuration, one parameter at a time through the host, into wherever this rank keeps them. Not collective.
    /// </summary>
    public void LoadWeights(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        using var hf = HuggingFaceModelDirectory.Open(directory, _model.Config);
        var parameters = _model.Layout.Parameters;
        hf.CheckParameters(_model.WholeLayout.Parameters);   // the whole model's, of which a pipeline stage loads its own
        foreach (var p in parameters) Parallelism.WriteWeights(p, Array.ConvertAll(hf.ReadLocal(p), x => (double)x));   // this rank's slice only
        Parallelism.MarkWeightsWritten();
    }

    /// <summary>Runs one update (all accumulation micro-batches of this rank) and returns the global mean loss.</summary>
    public double TrainStep()
    {
        if (Parallelism.WeightsPending)
            throw new InvalidOperationException($"{Where}the model was declared without storage (ZeRO-3 sharded construction) and its weights were never written; " +
                "call InitializeWeights, LoadWeights or ShardedCheckpoint.Restore before training");
        var backend = _model.Backend;
        var group = Parallelism.Group;
        int accum = Options.GradientAccumulationSteps;
        // The step's batches first: the loss is the mean over the targets counted (not -1) in the whole step over every rank,
        // so each micro-batch's scale is 1 / (targets counted by all ranks). Pretraining data counts every target, the same
        // number on every rank: 1 / (B T accum ranks) with nothing communicated. Data with ignored targets (chat) sums the
        // ranks' counts first (exact in the loss dtype up to 2^24 targets a step with F32).
        long counted = 0;
        for (int micro = 0; micro < accum; micro++)
        {
            _train.NextBatch(_stepInputs[micro], _stepTargets[micro]);
            CheckIds(_stepInputs[micro], _stepTargets[micro]);
            foreach (int target in _stepTargets[micro]) if (target >= 0) counted++;
        }
        double scale = group is not null && _train.IgnoresTargets
            ? 1.0 / Math.Max(GlobalCount(group, counted), 1)
            : 1.0 / (Math.Max(counted, 1) * (group?.Size ?? 1));
        Parallelism.ZeroGrad();
        backend.Fill(_lossSum, 0);
        if (_pipeline is not null)
        {
            // Every micro-batch of the step goes through the schedule; each unit's gradient is reduced after its chunk's last
            // backward, so the strategies see the whole step as one last micro-batch.
            Parallelism.BeginMicroBatch(first: true, last: true);
            _partialGradients?.BeginMicroBatch(first: true, last: true);
            for (int micro = 0; micro < accum; micro++) _pipeline.SetMicroBatch(micro, _stepInputs[micro], _stepTargets[micro]);
            _pipeline.Train(_lossSum, scale);
            _pipeline.ReduceLoss(_lossSum);
        }
        else for (int micro = 0; micro < accum; micro++)
        {
            Parallelism.BeginMicroBatch(first: micro == 0, last: micro == accum - 1);
            _partialGradients?.BeginMicroBatch(first: micro == 0, last: micro == accum - 1);
            backend.CopyFromHost<int>(_stepInputs[micro], _inputs);
            backend.CopyFromHost<int>(_stepTargets[micro], _targets);
            var losses = _model.Loss(_inputs, _targets, microBatch: 0, lossScale: scale);
            backend.Sum(losses, _lossSum, scale, accumulate: true);
            _model.Backward(microBatch: 0);
        }
        var loss = group?.AllReduce(_lossSum, ReduceOp.Sum);
        Parallelism.FinishGradients();
        _pipeline?.SynchronizeTiedEmbedding();
        Parallelism.Step(_schedule.At(Step));
        Parallelism.AfterUpdate();
        loss?.Wait();
        Step++;
        return backend.ReadScalar(_lossSum);
    }

    /// <summary>The sum of <paramref name="count"/> over the data-parallel group (one scalar all-reduce, waited for).</summary>
    private double GlobalCount(ProcessGroup group, long count)
    {
        var backend = _model.Backend;
        _count ??= backend.Allocate(new Shape(1), _model.LossDType);
        backend.Fill(_count, count);
        group.AllReduce(_count, ReduceOp.Sum).Wait();
        return backend.ReadScalar(_count);
    }

    /// <summary>
    /// Mean loss over <see cref="TrainerOptions.EvalBatches"/> validation batches from the start of the validation data
    /// (each data-parallel rank evaluates its slice; the mean is over all of them). Collective under data parallelism.
    /// </summary>
    public double Evaluate()
    {
        if (_validation is null) throw new InvalidOperationException("no validation data was given");
        var backend = _model.Backend;
        var group = Parallelism.Group;
        _validation.Position = default;
        double total = 0;
        if (_pipeline is not null)
        {
            // One forward-only pass of the pipeline over every evaluation batch: the last stage sums each batch's mean loss.
            for (int i = 0; i < Options.EvalBatches; i++)
            {
                _validation.NextBatch(_hostInputs, _hostTargets);
                CheckIds(_hostInputs, _hostTargets);
                _pipeline.SetMicroBatch(i, _hostInputs, _hostTargets);
            }
            backend.Fill(_lossSum, 0);
            _pipeline.Evaluate(Options.EvalBatches, _lossSum, 1.0 / (_hostInputs.Length * (group?.Size ?? 1)));
            _pipeline.ReduceLoss(_lossSum);
            group?.AllReduce(_lossSum, ReduceOp.Sum).Wait();
            return backend.ReadScalar(_lossSum) / Options.EvalBatches;
        }
        for (int i = 0; i < Options.EvalBatches; i++)
        {
            _validation.NextBatch(_hostInputs, _hostTargets);
            CheckIds(_hostInputs, _hostTargets);
            backend.CopyFromHost<int>(_hostInputs, _inputs);
            backend.CopyFromHost<int>(_hostTargets, _targets);
            var losses = _model.Loss(_inputs, _targets, microBatch: 0, lossScale: 0);
            backend.Fill(_lossSum, 0);
            backend.Sum(losses, _lossSum, 1.0 / (losses.NumElements * (group?.Size ?? 1)));
            group?.AllReduce(_lossSum, ReduceOp.Sum).Wait();
            total += backend.ReadScalar(_lossSum);
            _model.ReleaseActivations(0);
            Parallelism.ReleaseAll();
        }
        return total / Options.EvalBatches;
    }

    /// <summary>
    /// Runs from the current step to <see cref="TrainerOptions.Steps"/>: a step, a divergence check, validation when due,
    /// metrics for the reporting rank every LogEvery steps (and the last), <paramref name="checkpoint"/> every
    /// CheckpointEvery steps and at the end (on every rank: a sharded save is collective). Cancelled through
    /// <paramref name="cancellation"/>, it stops between two steps with an <see cref="OperationCanceledException"/>, every
    /// data-parallel rank after the same step; the trainer then holds exactly <see cref="Step"/> updates, ready to be saved.
    /// </summary>
    public void Run(Action<StepMetrics>? onStep = null, Action<Trainer>? checkpoint = null, MetricsLog? metrics = null,
        CancellationToken cancellation = default)
    {
        while (Step < Options.Steps)
        {
            // A stop is taken between steps, and by every rank at the same one, so the state left behind is a whole step
            // that a checkpoint can save and a resume continue bit for bit.
            if (cancellation.CanBeCanceled && StopAgreed(cancellation.IsCancellationRequested))
                throw new OperationCanceledException($"{Where}training stopped on request after step {Step}", cancellation);
            double lr = LearningRateAt(Step);
            var clock = Stopwatch.StartNew();
            double loss = TrainStep();
            double ms = clock.Elapsed.TotalMilliseconds;
            // Read before an evaluation's forwards replace it.
            double? aux = _model.Config.RouterAuxLossCoefficient > 0 ? _model.RouterAuxiliaryLoss : null;
            if (!double.IsFinite(loss))
                throw new InvalidOperationException($"{Where}training diverged: loss is {loss} at step {Step}; lower the learning rate or check the data");
            double? validation = _validation is not null && Options.EvalEvery > 0 && (Step % Options.EvalEvery == 0 || Step == Options.Steps) ? Evaluate() : null;
            if (Reports && (Step % Options.LogEvery == 0 || Step == Options.Steps || validation is not null))
            {
                var m = new StepMetrics(Step, Options.Steps, loss, lr, Parallelism.LastGradNorm(), TokensPerStep / (ms / 1000), ms, validation, aux);
                onStep?.Invoke(m);
                metrics?.Append(m);
            }
            if (checkpoint is not null && ((Options.CheckpointEvery > 0 && Step % Options.CheckpointEvery == 0) || Step == Options.Steps))
                checkpoint(this);
        }
    }

    /// <summary>
    /// Whether to stop before the next step, given whether this rank was asked to. One device: as asked. Several ranks:
    /// an all-reduce (max) of a flag over the data-parallel group, then over the tensor-parallel and the pipeline group (together:
    /// over every rank of the mesh), per step boundary and only while a cancellable token is given: a signal reaches the
    /// ranks (threads or processes) at different moments, and a rank that stopped alone would leave the others waiting
    /// in the next step's collectives.
    /// </summary>
    private bool StopAgreed(bool requestedHere)
    {
        var groups = new[] { Parallelism.Group, _model.TensorParallelism?.Group, _model.Pipeline?.Group }.Where(g => g is not null).ToArray();
        if (groups.Length == 0) return requestedHere;
        var backend = _model.Backend;
        _stopFlag ??= backend.Allocate(new Shape(1), _model.LossDType);
        backend.Fill(_stopFlag, requestedHere ? 1 : 0);
        foreach (var group in groups) group!.AllReduce(_stopFlag, ReduceOp.Max).Wait();
        return backend.ReadScalar(_stopFlag) > 0;
    }

    /// <summary>Checks the batch's inputs (in [0, VocabSize)) and targets (in [-1, VocabSize)) on the host.</summary>
    private void CheckIds(int[] inputs, int[] targets)
    {
        int vocab = _model.Config.VocabSize, t = Options.SequenceLength;
        for (int i = 0; i < inputs.Length; i++)
        {
            if ((uint)inputs[i] >= (uint)vocab)
                throw new ArgumentException($"{Where}training data: input token [{i / t}, {i % t}] = {inputs[i]} is outside [0, VocabSize = {vocab}); the data was tokenized for another vocabulary");
            if (targets[i] < -1 || targets[i] >= vocab)
                throw new ArgumentException($"{Where}training data: target [{i / t}, {i % t}] = {targets[i]} is outside [-1, VocabSize = {vocab}); the data was tokenized for another vocabulary");
        }
    }
}
