using System.Diagnostics;
using Tessera.Distributed;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Tensors;
using Tessera.Training.Data;
using Tessera.Training.Optim;

namespace Tessera.Training.Parallel;

/// <summary>
/// The training loop of one data-parallel rank (plain DP or ZeRO 1-3, optionally with the optimizer
/// offloaded): the same steps as <see cref="Trainer"/>, on this rank's slice of every global batch.
/// Each micro-batch's loss scale is 1 / (B * T * accumulation * world), so summing gradients over ranks
/// gives the gradient of the global mean loss. Per step it issues the gradient collectives of
/// <see cref="ShardedDataParallel"/>, one all-reduce of the loss (every rank logs the global loss),
/// the norm all-reduce of <see cref="ShardedAdamW"/> when sharded, and the ZeRO-1/2 all-gathers.
/// <para>
/// Mixed precision (a BF16 model with F32 masters, <c>new Transformer(config, backend, DType.BF16)</c>): gradients and
/// gathered values travel in BF16, each rank updates the F32 masters of its shard (on the host with offload) and
/// writes their BF16 copy, as the one-rank <see cref="Trainer"/> does for the whole arena; the loss is summed in F32.
/// Call <see cref="SynchronizeMasters"/> before reading <c>Parameter.Master</c> of a sharded run. With the optimizer
/// offloaded, the trainer releases the model's device masters (the host shard is the only F32 copy): read the whole F32
/// model with <see cref="GatherMastersToHost"/> (<see cref="ShardedCheckpoint.Save"/> does).
/// </para>
/// <para>
/// ZeRO-3 sharded construction (DeepSpeed's <c>zero.Init</c>): build the model with <see cref="Tessera.Nn.ArenaStorage.Deferred"/>
/// (nothing allocated), create the trainer (it allocates the rank's shards only), then write the weights with
/// <see cref="InitializeWeights"/>, <see cref="LoadWeights(string)"/> or <see cref="ShardedCheckpoint.Restore"/>: each
/// parameter passes through the host once and only its owned ranges reach the device, so no full-size device buffer exists
/// at any point. The values are exactly those of a full initialization or load.
/// </para>
/// </summary>
public sealed class DataParallelTrainer : ILoopTrainer
{
    private readonly Transformer _model;
    private readonly ProcessGroup _group;
    private readonly TokenDataLoader _train;
    private readonly CosineSchedule _schedule;
    private readonly int[] _hostInputs, _hostTargets;
    private readonly Tensor _inputs, _targets;   // (B, T) I32
    private readonly Tensor _lossSum;            // (1) loss dtype (F32 for BF16): this rank's share of the step's mean loss, then the global mean
    private Tensor? _stopFlag;                   // (1) loss dtype: this rank's stop request, then the max over ranks
    private bool _weightsPending;                // a deferred (sharded-construction) model whose weights are not written yet

    /// <summary>
    /// Creates rank <paramref name="group"/>.Rank's trainer. The model's weights must be initialized identically on
    /// every rank, or (ZeRO-3's sharded construction) the model is built with <see cref="Tessera.Nn.ArenaStorage.Deferred"/>
    /// and its weights are written after this constructor, into the rank's shards only (<see cref="InitializeWeights"/>,
    /// <see cref="LoadWeights(string)"/> or <see cref="ShardedCheckpoint.Restore"/>; a step before that throws).
    /// <paramref name="train"/> must read slice Rank of Size. <paramref name="host"/> is the backend of the
    /// offloaded optimizer state (required when <see cref="DataParallelOptions.OffloadOptimizer"/> is set).
    /// </summary>
    public DataParallelTrainer(Transformer model, ProcessGroup group, TokenDataLoader train, TrainerOptions options,
        AdamWOptions adamW, DataParallelOptions parallel, IBackend? host = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(train);
        options.Validate();
        parallel.Validate();
        if (train.WorldSize != group.Size || train.Rank != group.Rank)
            throw new ArgumentException($"{group.Describe()}: the data loader reads slice {train.Rank} of {train.WorldSize}; it must read slice {group.Rank} of {group.Size}");
        if (train.BatchSize != options.BatchSize || train.SequenceLength != options.SequenceLength)
            throw new ArgumentException($"data loader batches ({train.BatchSize} x {train.SequenceLength}) differ from the options ({options.BatchSize} x {options.SequenceLength})");
        if (options.SequenceLength > model.Config.MaxSequenceLength)
            throw new ArgumentException($"training options: SequenceLength ({options.SequenceLength}) exceeds the model's MaxSequenceLength ({model.Config.MaxSequenceLength})");
        if (parallel.OffloadOptimizer && host is null)
            throw new ArgumentException("parallel options: OffloadOptimizer needs a host backend (pass a CpuBackend as 'host')");
        _model = model;
        _group = group;
        _train = train;
        Options = options;
        Parallel = parallel;
        _schedule = new CosineSchedule(options.LearningRate, options.LearningRate * options.MinLearningRateFraction, options.WarmupSteps, options.Steps);
        Communication = new ShardedDataParallel(model, group, parallel);
        Optimizer = new ShardedAdamW(model.Parameters, Communication.Layout, group, adamW, Communication.Gradient,
            parallel.OffloadOptimizer ? host : null, parallel.OffloadPieceElements, Communication.Value, Communication.Master);
        // ZeRO-Offload: the host master shard (just loaded from the arena) is authoritative; a BF16 arena's full-size F32
        // device masters would be 4 bytes per parameter of dead weight, so they are freed.
        if (parallel.OffloadOptimizer) model.Parameters.ReleaseMasters();
        // ZeRO-3: the rank keeps its shards only; the full-size arena buffers are freed (or, built deferred, never existed).
        _weightsPending = model.Parameters.IsDeferred;
        Communication.ShardArena();
        int bt = options.BatchSize * options.SequenceLength;
        _hostInputs = new int[bt];
        _hostTargets = new int[bt];
        var backend = model.Parameters.Backend;
        _inputs = backend.Allocate(new Shape(options.BatchSize, options.SequenceLength), DType.I32);
        _targets = backend.Allocate(new Shape(options.BatchSize, options.SequenceLength), DType.I32);
        // BF16 would round the per-token losses' sum to 3 significant digits; the model's loss dtype is F32 (F64 for F64).
        _lossSum = backend.Zeros(new Shape(1), model.LossDType);
        // Token ids are checked on the host arrays (CheckIds), so the model need not read them back from the device:
        // on a GPU that read is a synchronization per forward, which would stall the overlapped bucket reductions.
        model.ValidateInputs = false;
    }

    /// <summary>Run settings (per rank: BatchSize is this rank's micro-batch).</summary>
    public TrainerOptions Options { get; }

    /// <summary>Data-parallel settings.</summary>
    public DataParallelOptions Parallel { get; }

    /// <summary>The rank's process group.</summary>
    public ProcessGroup Group => _group;

    /// <summary>The model this rank trains.</summary>
    public Transformer Model => _model;

    /// <summary>Gradient and parameter communication.</summary>
    public ShardedDataParallel Communication { get; }

    /// <summary>The rank's optimizer shard.</summary>
    public ShardedAdamW Optimizer { get; }

    /// <summary>Updates completed so far.</summary>
    public int Step { get; set; }

    /// <summary>Training data position (global: the same on every rank).</summary>
    public DataPosition DataPosition { get => _train.Position; set => _train.Position = value; }

    /// <summary>
    /// Collectives one step issues on this rank's group: gradient units (all-reduce or reduce-scatter),
    /// the loss all-reduce, the norm all-reduce (sharded stages), ZeRO-1/2 all-gathers after the update,
    /// and ZeRO-3 segment all-gathers (forward and backward, per micro-batch).
    /// </summary>
    public int CollectivesPerStep
    {
        get
        {
            int units = Communication.Layout.Units.Count, segments = Communication.Layout.Segments;
            int count = 1 + Optimizer.CollectivesPerStep;
            if (Parallel.Stage is ZeroStage.OptimizerStates or ZeroStage.Gradients) count += 2 * units;
            else if (Parallel.Stage == ZeroStage.None) count += units;
            else
            {
                // Per micro-batch: forward gathers every segment; backward re-gathers all but the head (kept from its
                // forward) and, with tied embeddings, the embeddings (kept through the pass); every segment's gradient
                // is reduce-scattered (S per micro-batch, not per step: no full gradient outlives a segment's backward).
                int backward = segments - 1 - (_model.Config.TiedEmbeddings ? 1 : 0);
                count += Options.GradientAccumulationSteps * (segments + backward + segments);
            }
            return count;
        }
    }

    /// <summary>
    /// Writes <see cref="Transformer.InitializeWeights"/>' values (seed <paramref name="seed"/>) wherever this rank keeps
    /// its weights: the full arena (and the host masters with offload) for a full model; for ZeRO-3 only the owned ranges,
    /// into the value shard, the F32 master shard and/or the host masters. One parameter at a time on the host, in the
    /// full initialization's order, so every rank gets exactly the values a full initialization gives its ranges and no
    /// full-size device buffer is allocated. Not collective.
    /// </summary>
    public void InitializeWeights(int seed)
    {
        foreach (var (p, values) in _model.InitialValues(seed)) WriteWeights(p, values);
        _weightsPending = false;
    }

    /// <summary>
    /// Loads the weights of a Hugging Face model directory (or a Tessera checkpoint, which holds one) with this model's
    /// configuration, one parameter at a time through the host, into wherever this rank keeps them (as
    /// <see cref="InitializeWeights"/>): under ZeRO-3 no full-size device buffer is allocated. Not collective.
    /// </summary>
    public void LoadWeights(string directory)
    {
        ArgumentNullException.ThrowIfNull(directory);
        using var hf = HuggingFaceModelDirectory.Open(directory, _model.Config);
        var parameters = _model.Parameters.Parameters;
        hf.CheckParameters(parameters);
        foreach (var p in parameters) WriteWeights(p, Array.ConvertAll(hf.ReadCanonical(p.Name).Data, x => (double)x));
        _weightsPending = false;
    }

    /// <summary>
    /// Writes the full host values of <paramref name="parameter"/> (its master values: F32 precision for a BF16 model)
    /// wherever this rank keeps them: a full arena gets the whole parameter (masters, then the low-precision values cast
    /// from them, or only the values when the masters live on the host); every owned range goes to the offloaded host
    /// masters and, for a sharded arena, to the value shard and the F32 master shard.
    /// </summary>
    internal void WriteWeights(Tessera.Nn.Parameter parameter, ReadOnlySpan<double> values)
    {
        var arena = _model.Parameters;
        var backend = arena.Backend;
        if (values.Length != parameter.NumElements)
            throw new ArgumentException($"{_group.Describe()}: {values.Length} values for parameter '{parameter.Name}' of {parameter.NumElements} elements");
        if (!arena.IsSharded)
        {
            if (arena.MastersReleased) ShardedCheckpoint.WriteHost(backend, values, parameter.Value);   // the host masters below are the F32 copy
            else
            {
                ShardedCheckpoint.WriteHost(backend, values, parameter.MasterOrValue);
                if (parameter.Master is not null) backend.Copy(parameter.Master, parameter.Value);
            }
        }
        var hostMasters = Optimizer.Masters;
        if (hostMasters is null && !arena.IsSharded) return;
        foreach (var r in Communication.Layout.Owned)
        {
            long lo = Math.Max(r.ArenaOffset, parameter.Offset), hi = Math.Min(r.ArenaOffset + r.Length, parameter.Offset + parameter.NumElements);
            if (lo >= hi) continue;
            var shape = new Shape((int)(hi - lo));
            var part = values.Slice((int)(lo - parameter.Offset), (int)(hi - lo));
            if (hostMasters is not null) ShardedCheckpoint.WriteHost(Optimizer.Host!, part, hostMasters.Narrow(r.ShardOffset + (lo - r.ArenaOffset), shape));
            if (!arena.IsSharded) continue;
            ShardedCheckpoint.WriteHost(backend, part, Communication.Value(r).Narrow(lo - r.ArenaOffset, shape));
            if (Communication.Master(r) is { } master) ShardedCheckpoint.WriteHost(backend, part, master.Narrow(lo - r.ArenaOffset, shape));
        }
    }

    /// <summary>Restore has written every weight (ShardedCheckpoint.Restore).</summary>
    internal void MarkWeightsWritten() => _weightsPending = false;

    /// <summary>Runs one update (all accumulation micro-batches of this rank) and returns the global mean loss.</summary>
    public double TrainStep()
    {
        if (_weightsPending)
            throw new InvalidOperationException($"{_group.Describe()}: the model was built deferred (ZeRO-3 sharded construction) and its weights were never written; " +
                "call InitializeWeights, LoadWeights or ShardedCheckpoint.Restore before training");
        var backend = _model.Parameters.Backend;
        int accum = Options.GradientAccumulationSteps;
        long tokens = (long)Options.BatchSize * Options.SequenceLength;
        double scale = 1.0 / (tokens * accum * _group.Size);
        _model.Parameters.ZeroGrad();
        backend.Fill(_lossSum, 0);
        for (int micro = 0; micro < accum; micro++)
        {
            Communication.BeginMicroBatch(first: micro == 0, last: micro == accum - 1);
            _train.NextBatch(_hostInputs, _hostTargets);
            CheckIds();
            backend.CopyFromHost<int>(_hostInputs, _inputs);
            backend.CopyFromHost<int>(_hostTargets, _targets);
            var losses = _model.Loss(_inputs, _targets, microBatch: 0, lossScale: scale);
            backend.Sum(losses, _lossSum, scale, accumulate: true);
            _model.Backward(microBatch: 0);
        }
        var loss = _group.AllReduce(_lossSum, ReduceOp.Sum);
        Communication.FinishGradients();
        Optimizer.Step(_schedule.At(Step));
        Communication.AfterUpdate();
        loss.Wait();
        Step++;
        return backend.ReadScalar(_lossSum);
    }

    /// <summary>
    /// Collective (every rank, same point): makes <see cref="Tessera.Nn.ParameterArena.Masters"/> hold the whole current F32
    /// model on every rank (stages 0-2 without offload: training keeps only a rank's owned ranges of them current, so this
    /// all-gathers the F32 shards). A no-op
    /// for F32/F64 models, whose values are current after every step (ZeRO-3 keeps them in shards: use <see cref="GatherMastersToHost"/>).
    /// Throws when the device holds no full-size masters (offload, or a ZeRO-3 BF16 run).
    /// </summary>
    public void SynchronizeMasters()
    {
        if (_model.Parameters.MastersReleased)
            throw new InvalidOperationException($"{_group.Describe()}: the device holds no full-size F32 masters (they live on the host with offload, in the rank's master shard under ZeRO-3); use GatherMastersToHost");
        if (_model.Parameters.Masters is null) return;
        Communication.GatherMasters();
    }

    /// <summary>
    /// Collective (every rank, same point): the whole current model in its master values (the F32 masters of a BF16 run,
    /// else the values), assembled on rank <paramref name="root"/>'s host as F32 (arena layout, Length elements; what a
    /// checkpoint exports) and null on the other ranks. Works from wherever the masters live (the host shard with
    /// offload, the device otherwise) through unit-size transient device buffers (<see cref="ShardedDataParallel.GatherUnits"/>),
    /// one all-gather per unit; no full-size device buffer.
    /// </summary>
    public float[]? GatherMastersToHost(int root = 0)
    {
        var arena = _model.Parameters;
        return GatherToHost(arena.MasterDType, root, (unit, chunk) =>
        {
            if (Optimizer.Offload is { } offload) offload.CopyMastersToDevice(unit.ShardStart, chunk);
            else if (arena.IsSharded) arena.Backend.Copy(ShardChunk(Communication.MasterShard ?? Communication.ValueShard!, unit), chunk);
            else CopyOwnedChunk(arena.Masters ?? arena.Values, unit, chunk);
        });
    }

    /// <summary>
    /// Collective: the whole current model in the values the layers read (BF16 for a BF16 run), on rank
    /// <paramref name="root"/>'s host as F32 (arena layout), null elsewhere; gathered from the owned chunks like
    /// <see cref="GatherMastersToHost"/>.
    /// </summary>
    public float[]? GatherValuesToHost(int root = 0)
    {
        var arena = _model.Parameters;
        return GatherToHost(arena.DType, root, (unit, chunk) =>
        {
            if (arena.IsSharded) arena.Backend.Copy(ShardChunk(Communication.ValueShard!, unit), chunk);
            else CopyOwnedChunk(arena.Values, unit, chunk);
        });
    }

    private static Tensor ShardChunk(Tensor shard, ShardUnit unit) => shard.Narrow(unit.ShardStart, new Shape((int)unit.Chunk));

    /// <summary>Copies this rank's chunk of <paramref name="unit"/> from the arena-laid-out <paramref name="source"/> into <paramref name="chunk"/>, zeroing padding.</summary>
    private void CopyOwnedChunk(Tensor source, ShardUnit unit, Tensor chunk)
    {
        var device = _model.Parameters.Backend;
        var (start, end) = Communication.Layout.OwnedSpan(unit);
        if (end > start) device.Copy(source.Narrow(start, new Shape((int)(end - start))), chunk.Narrow(0, new Shape((int)(end - start))));
        if (end - start < unit.Chunk) device.Fill(chunk.Narrow(end - start, new Shape((int)(unit.Chunk - (end - start)))), 0);
    }

    private float[]? GatherToHost(DType dtype, int root, Action<ShardUnit, Tensor> ownedChunk)
    {
        if (root < 0 || root >= _group.Size) throw new ArgumentOutOfRangeException(nameof(root), $"{_group.Describe()}: root {root} is outside the group");
        var device = _model.Parameters.Backend;
        var full = _group.Rank == root ? new float[_model.Parameters.Length] : null;
        Communication.GatherUnits(dtype, ownedChunk, (unit, gathered) =>
        {
            if (full is null) return;
            var target = full.AsSpan((int)unit.Start, (int)unit.Length);
            switch (gathered.DType)
            {
                case DType.F32: device.CopyToHost<float>(gathered, target); break;
                case DType.F64: { var wide = device.ToArray<double>(gathered); for (int i = 0; i < wide.Length; i++) target[i] = (float)wide[i]; break; }
                case DType.BF16: { var low = device.ToArray<BFloat16>(gathered); for (int i = 0; i < low.Length; i++) target[i] = low[i].ToSingle(); break; }
                default: throw new NotSupportedException($"{_group.Describe()}: cannot gather {gathered.DType} parameters to the host");
            }
        });
        return full;
    }

    /// <summary>Checks the batch's inputs (in [0, VocabSize)) and targets (in [-1, VocabSize)) on the host.</summary>
    private void CheckIds()
    {
        int vocab = _model.Config.VocabSize, t = Options.SequenceLength;
        for (int i = 0; i < _hostInputs.Length; i++)
        {
            if ((uint)_hostInputs[i] >= (uint)vocab)
                throw new ArgumentException($"{_group.Describe()}: training data: input token [{i / t}, {i % t}] = {_hostInputs[i]} is outside [0, VocabSize = {vocab}); the data was tokenized for another vocabulary");
            if (_hostTargets[i] < -1 || _hostTargets[i] >= vocab)
                throw new ArgumentException($"{_group.Describe()}: training data: target [{i / t}, {i % t}] = {_hostTargets[i]} is outside [-1, VocabSize = {vocab}); the data was tokenized for another vocabulary");
        }
    }

    /// <summary>
    /// Runs from the current step to <see cref="TrainerOptions.Steps"/>; rank 0 alone reports to <paramref name="onStep"/>
    /// and <paramref name="metrics"/>; every rank calls <paramref name="checkpoint"/> (a sharded save is collective).
    /// </summary>
    public void Run(Action<StepMetrics>? onStep = null, Action<DataParallelTrainer>? checkpoint = null, MetricsLog? metrics = null,
        CancellationToken cancellation = default) => TrainingLoop.Run(this, onStep, checkpoint, metrics, cancellation);

    long ILoopTrainer.TokensPerStep => (long)Options.BatchSize * Options.SequenceLength * Options.GradientAccumulationSteps * _group.Size;
    bool ILoopTrainer.Reports => _group.Rank == 0;
    string ILoopTrainer.Where => _group.Describe() + ": ";
    double ILoopTrainer.LearningRateAt(int step) => _schedule.At(step);
    double ILoopTrainer.LastGradNorm() => Optimizer.LastGradNorm();

    // One all-reduce (max) of a flag per step boundary, only while a cancellable token is given: a signal reaches the
    // ranks (threads or processes) at different moments, and a rank that stopped alone would leave the others waiting
    // in the next step's collectives.
    bool ILoopTrainer.StopAgreed(bool requestedHere)
    {
        var backend = _model.Parameters.Backend;
        _stopFlag ??= backend.Allocate(new Shape(1), _model.LossDType);
        backend.Fill(_stopFlag, requestedHere ? 1 : 0);
        _group.AllReduce(_stopFlag, ReduceOp.Max).Wait();
        return backend.ReadScalar(_stopFlag) > 0;
    }
    double? ILoopTrainer.ValidationLossIfDue() => null;   // no validation in data-parallel runs yet
}
