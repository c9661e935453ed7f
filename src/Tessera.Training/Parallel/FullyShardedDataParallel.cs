using Tessera.Distributed;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Optim;

namespace Tessera.Training.Parallel;

/// <summary>
/// ZeRO-3 (PyTorch FSDP's design) for one rank: the rank keeps only its shards of the values, the reduced gradient and
/// (mixed precision, not offloaded) the F32 masters, P/W elements each, and the model's parameters live in a
/// <see cref="ShardedParameterStorage"/>. Each model unit is all-gathered from the value shards into a pooled buffer
/// before its forward (the next one prefetched) and its parameters bound to views of it; after the forward they are
/// unbound and the buffer returns to the pool. Before its backward the unit is gathered again (the previous one
/// prefetched) and a zeroed, pooled gradient buffer bound, which is reduce-scattered into the gradient shard right
/// after the unit's backward. The head unit stays gathered from its forward to its backward; a unit borrowed by another
/// (the embeddings of a tied head) stays gathered, with its gradient bound, through the pass. Every micro-batch
/// reduce-scatters (DeepSpeed's behaviour: keeping whole gradients across micro-batches would need the memory ZeRO-3
/// saves); later micro-batches add into the shard.
/// <para>
/// Memory per rank (P arena elements, W ranks, b bytes per element): persistent 2bP/W (value and gradient shards) plus
/// 4P/W of F32 master shard for a BF16 model unless offloaded, or with split masters (<see cref="MasterWeights.Split"/>) a
/// 2P/W U16 low-word shard instead (<see cref="LowWordShard"/>: the value shard holds the masters' high halves); transient pooled buffers of whole units
/// (<see cref="DataParallelism.TransientBytes"/>): at most three gathered value units (current, prefetched, and the
/// borrowed embeddings or the kept head) and three gradient units (current, the previous one while its reduce-scatter is
/// in flight, the borrowed embeddings), plus two chunk buffers when micro-batches accumulate.
/// </para>
/// <para>
/// Setup: a model declared without storage (<see cref="ArenaStorage.Deferred"/>, sharded construction as DeepSpeed's
/// <c>zero.Init</c>) never allocates a full-size buffer: this strategy allocates the shards and the trainer writes each
/// rank's owned ranges of the initialized or loaded weights into them, one parameter at a time from the host. A model
/// built with a full arena (construct-then-shard) peaks at the full arena once: its shards are copied out and the arena
/// is released.
/// </para>
/// </summary>
public sealed class FullyShardedDataParallel : DataParallelism
{
    private readonly ShardedParameterStorage _storage;
    private readonly Tensor?[] _gathered;                 // (Chunk * W) model dtype: each unit's gathered values while resident
    private readonly Tensor?[] _unitGrads;                // (Chunk * W) model dtype: each unit's gradient buffer during its backward
    private readonly bool[] _borrowed;                    // units another unit's layers also use (kept gathered through the pass)
    private readonly Dictionary<int, (CollectiveHandle Handle, Tensor Input, Tensor Output)> _gathers = [];
    private readonly Queue<(int Unit, CollectiveHandle Handle, Tensor Buffer, Tensor? Partial)> _scatters = [];   // gradient reduce-scatters in flight
    private bool _firstMicroBatch = true;

    /// <summary>
    /// Sets up rank <paramref name="group"/>.Rank: allocates its shards (copying them out of the model's full arena and
    /// releasing it, when the model has one), attaches the sharded storage, creates the optimizer shard (on
    /// <paramref name="host"/> when offloaded) and installs the pass hooks.
    /// </summary>
    /// <remarks><paramref name="trained"/>: what is trained, the model's layout when null (see <see cref="DataParallelism.Trained"/>).</remarks>
    /// <remarks><paramref name="expertData"/>: refused with expert parallelism (ZeRO-3 would shard different experts together).</remarks>
    public FullyShardedDataParallel(Transformer model, ProcessGroup group, DataParallelOptions options, AdamWOptions adamW, IBackend? host = null,
        ParameterLayout? trained = null, ProcessGroup? expertData = null)
        : base(model, group, options, host, trained, expertData)
    {
        if (options.Stage != ZeroStage.Parameters)
            throw new ArgumentException($"{group.Describe()}: stage {(int)options.Stage} keeps whole parameters; use BucketedDataParallel");
        var backend = model.Backend;
        var arena = Trained.Storage as ParameterArena;
        if (Trained.Storage is not null && arena is null)
            throw new InvalidOperationException($"{group.Describe()}: the model's parameters are already sharded by another strategy");
        if (arena is { Frozen: true })
            throw new ArgumentException($"{group.Describe()}: the trained parameter arena is frozen (no gradients); for LoRA, train the adapters' layout (model.Adapters.Layout)");
        int units = Trained.Units.Count;
        _gathered = new Tensor?[units];
        _unitGrads = new Tensor?[units];
        _borrowed = new bool[units];
        foreach (var u in Trained.Units)
            foreach (var b in u.Borrows) _borrowed[b] = true;
        bool split = MasterWeights == MasterWeights.Split;
        bool deviceMasters = MasterDType != model.DType && !options.OffloadOptimizer && !split;
        ValueShard = backend.Zeros(ShardShape(), model.DType);
        GradientShard = backend.Zeros(ShardShape(), model.DType);
        if (deviceMasters) MasterShard = backend.Zeros(ShardShape(), MasterDType);
        if (split) LowWordShard = backend.Zeros(ShardShape(), DType.U16);
        OffloadedAdamW? offload = null;
        if (Host is not null)
        {
            // Loaded from a full arena's authoritative values while it exists; a deferred model's weights come later.
            offload = new OffloadedAdamW(backend, model.DType, Layout, Host, options.OffloadPieceElements, Value,
                () => arena is null ? null : arena.Masters ?? (arena.MastersReleased ? null : arena.Values), loadMasters: arena is not null);
        }
        if (arena is not null)
        {
            // Construct-then-shard: copy the rank's chunk of every unit out of the full arena, then free it.
            foreach (var unit in Layout.Units)
            {
                var (start, end) = Layout.OwnedSpan(unit);
                if (end <= start) continue;
                var shape = new Shape((int)(end - start));
                backend.Copy(arena.Values.Narrow(start, shape), ValueShard.Narrow(unit.ShardStart, shape));
                if (MasterShard is not null && arena.Masters is not null) backend.Copy(arena.Masters.Narrow(start, shape), MasterShard.Narrow(unit.ShardStart, shape));
                if (LowWordShard is not null) backend.Copy(arena.LowWords!.Narrow(start, shape), LowWordShard.Narrow(unit.ShardStart, shape));
            }
            backend.Synchronize();   // the copies read the full buffers, which are freed next
            arena.Release();
        }
        _storage = new ShardedParameterStorage(Trained, backend, model.DType);
        Trained.Attach(_storage);
        Optimizer = new ShardedAdamW(backend, model.DType, Layout, group, adamW, Gradient, Value, Master, wholeGradient: null, offload, NormScope,
            split ? r => LowWords(r)! : null);
    }

    /// <summary>This rank's value shard (ShardLength elements, model dtype, shard layout).</summary>
    public Tensor ValueShard { get; }

    /// <summary>This rank's reduced gradient shard (shard layout).</summary>
    public Tensor GradientShard { get; }

    /// <summary>Mixed precision with separate masters, without offload: this rank's F32 master shard (shard layout); null otherwise.</summary>
    public Tensor? MasterShard { get; }

    /// <summary>
    /// Split masters (<see cref="MasterWeights.Split"/>): this rank's U16 low-word shard (shard layout) beside <see cref="ValueShard"/>,
    /// which holds the masters' high halves; null otherwise.
    /// </summary>
    public Tensor? LowWordShard { get; }

    /// <summary>Bytes of this rank's persistent shard buffers on the device (value, gradient and master or low-word shards).</summary>
    public long PersistentBytes => GradientShard.Storage.ByteLength + ValueShard.Storage.ByteLength + (MasterShard?.Storage.ByteLength ?? 0)
        + (LowWordShard?.Storage.ByteLength ?? 0);

    /// <summary>The storage the model's parameters read while bound.</summary>
    public ShardedParameterStorage Storage => _storage;

    /// <inheritdoc/>
    public override Tensor Gradient(OwnedRange range) => GradientShard.Narrow(range.ShardOffset, new Shape((int)range.Length));

    /// <inheritdoc/>
    public override Tensor Value(OwnedRange range) => ValueShard.Narrow(range.ShardOffset, new Shape((int)range.Length));

    /// <inheritdoc/>
    public override Tensor? Master(OwnedRange range) => MasterShard?.Narrow(range.ShardOffset, new Shape((int)range.Length));

    /// <inheritdoc/>
    public override Tensor? LowWords(OwnedRange range) => LowWordShard?.Narrow(range.ShardOffset, new Shape((int)range.Length));

    /// <inheritdoc/>
    public override bool ReducesEveryMicroBatch => true;

    /// <inheritdoc/>
    public override void ZeroGrad() => _storage.ZeroBoundGradients();

    /// <inheritdoc/>
    public override void BeginMicroBatch(bool first, bool last) => _firstMicroBatch = first;

    // The hooks number the model's units; each maps to the trained layout's unit (the same one unless LoRA adapters are trained).

    /// <inheritdoc/>
    public override void BeforeForward(int segment)
    {
        int unit = TrainedUnit(segment);
        if (unit < 0) return;
        EnsureResident(unit);
        foreach (var b in Trained.Units[unit].Borrows) EnsureResident(b);
        if (unit + 1 < Layout.Segments) Prefetch(unit + 1);
    }

    /// <inheritdoc/>
    public override void AfterForward(int segment)
    {
        int unit = TrainedUnit(segment);
        if (unit < 0) return;
        bool keep = unit == Layout.Segments - 1 || _borrowed[unit];
        if (!keep) Release(unit);
    }

    /// <inheritdoc/>
    public override void BeforeBackward(int segment)
    {
        int unit = TrainedUnit(segment);
        if (unit < 0) return;
        EnsureResident(unit);
        BindGradients(unit);
        // A borrowing unit writes the borrowed unit's gradient: bound from its backward to the borrowed unit's.
        foreach (var b in Trained.Units[unit].Borrows) BindGradients(b);
        if (unit > 0) Prefetch(unit - 1);
    }

    /// <inheritdoc/>
    public override void AfterBackward(int segment)
    {
        int unit = TrainedUnit(segment);
        if (unit < 0) return;
        IssueUnitGradient(unit);
        Release(unit);
    }

    /// <inheritdoc/>
    public override void FinishGradients()
    {
        while (_scatters.Count > 0) CompleteScatter();
    }

    /// <inheritdoc/>
    public override void AfterUpdate() => ReleaseAll();

    /// <inheritdoc/>
    public override int CollectivesPerStep(int accumulationSteps)
    {
        // Per micro-batch: forward gathers every unit; backward re-gathers all but the head (kept from its forward) and
        // the borrowed units (kept through the pass); every unit's gradient is reduce-scattered (S per micro-batch, not per
        // step: no whole gradient outlives a unit's backward). Plus the optimizer's norm all-reduce.
        int units = Layout.Segments;
        int backward = units - 1 - _borrowed.Count(b => b);
        return (Layout.Shards > 1 ? 1 : 0) + accumulationSteps * (units + backward + units);
    }

    /// <summary>
    /// Gathers and binds every unit (to inspect the whole local model through its parameters; holds every unit's buffer,
    /// i.e. the full model, until <see cref="ReleaseAll"/>: prefer <see cref="DataParallelism.GatherUnits"/>).
    /// </summary>
    public void GatherAll()
    {
        for (int s = 0; s < Layout.Segments; s++) EnsureResident(s);
    }

    /// <inheritdoc/>
    public override void ReleaseAll()
    {
        foreach (var (s, op) in _gathers.ToList())
        {
            op.Handle.Wait();
            Return(op.Output);
            _gathers.Remove(s);
        }
        for (int s = 0; s < Layout.Segments; s++)
        {
            if (_unitGrads[s] is not null) throw new InvalidOperationException($"{Group.Describe()}: unit {s}'s gradient buffer is still bound; finish its backward first");
            Release(s);
        }
    }

    private protected override void WriteWhole(Parameter parameter, ReadOnlySpan<double> values) { }

    private protected override void WriteOwned(OwnedRange range, long start, ReadOnlySpan<double> values)
    {
        var shape = new Shape(values.Length);
        var value = Value(range).Narrow(start - range.ArenaOffset, shape);
        if (LowWords(range) is { } low)
        {
            // Split masters: the F32 master through a transient, split into the value (high half) and low-word shards.
            var host = values.ToArray();
            SplitMasterRange.Write(Model.Backend, value, low.Narrow(start - range.ArenaOffset, shape), m => HostValues.Write(Model.Backend, host, m));
            return;
        }
        HostValues.Write(Model.Backend, values, value);
        if (Master(range) is { } master) HostValues.Write(Model.Backend, values, master.Narrow(start - range.ArenaOffset, shape));
    }

    private protected override void CopyOwnedMasters(ShardUnit unit, Tensor chunk)
    {
        // Split masters: the chunk joined from the value and low-word shards (padding joins to zero).
        if (LowWordShard is not null) Model.Backend.JoinMasters(ShardChunk(ValueShard, unit), ShardChunk(LowWordShard, unit), chunk);
        else Model.Backend.Copy(ShardChunk(MasterShard ?? ValueShard, unit), chunk);
    }

    private protected override void CopyOwnedValues(ShardUnit unit, Tensor chunk) => Model.Backend.Copy(ShardChunk(ValueShard, unit), chunk);

    private static Tensor ShardChunk(Tensor shard, ShardUnit unit) => shard.Narrow(unit.ShardStart, new Shape((int)unit.Chunk));

    /// <summary>A zeroed gradient buffer of the whole (padded) unit, bound to its parameters' gradients.</summary>
    private void BindGradients(int segment)
    {
        if (_unitGrads[segment] is not null) return;
        var unit = Layout.Units[segment];
        var buffer = Rent(unit.Chunk * Layout.Shards, Model.DType);
        Model.Backend.Fill(buffer, 0);   // parameter gradients accumulate; the padding must reduce to zero
        _storage.BindGradients(Trained.Units[segment], buffer.Narrow(0, new Shape((int)unit.Length)));
        _unitGrads[segment] = buffer;
    }

    /// <summary>
    /// Reduce-scatters the unit's gradient buffer into the gradient shard (the first micro-batch writes it, later ones
    /// reduce into a chunk buffer that is added on completion) and unbinds the gradients. At most one earlier
    /// reduce-scatter stays in flight, so at most two unit gradient buffers (plus the borrowed units') are alive.
    /// </summary>
    private void IssueUnitGradient(int segment)
    {
        var buffer = _unitGrads[segment] ?? throw new InvalidOperationException($"{Group.Describe()}: unit {segment} finished its backward without a gradient buffer");
        var unit = Layout.Units[segment];
        _storage.UnbindGradients(Trained.Units[segment]);
        _unitGrads[segment] = null;
        while (_scatters.Count > 0) CompleteScatter();
        var shard = GradientShard.Narrow(unit.ShardStart, new Shape((int)unit.Chunk));
        var partial = _firstMicroBatch ? null : Rent(unit.Chunk, Model.DType);
        _scatters.Enqueue((segment, Group.ReduceScatter(buffer, partial ?? shard, ReduceOp.Sum), buffer, partial));
    }

    private void CompleteScatter()
    {
        var (segment, handle, buffer, partial) = _scatters.Dequeue();
        handle.Wait();
        if (partial is not null)
        {
            var unit = Layout.Units[segment];
            Model.Backend.Accumulate(GradientShard.Narrow(unit.ShardStart, new Shape((int)unit.Chunk)), partial);
            Return(partial);
        }
        Return(buffer);
    }

    /// <summary>Starts gathering a unit straight from the value shard into a pooled unit buffer (no staging copy).</summary>
    private (CollectiveHandle Handle, Tensor Input, Tensor Output) IssueUnitGather(int segment)
    {
        var unit = Layout.Units[segment];
        var input = ValueShard.Narrow(unit.ShardStart, new Shape((int)unit.Chunk));
        var output = Rent(unit.Chunk * Layout.Shards, Model.DType);
        return (Group.AllGather(input, output), input, output);
    }

    private void Prefetch(int segment)
    {
        if (_gathered[segment] is not null || _gathers.ContainsKey(segment)) return;
        _gathers[segment] = IssueUnitGather(segment);
    }

    private void EnsureResident(int segment)
    {
        if (WeightsPending)
            throw new InvalidOperationException($"{Group.Describe()}: the model was declared without storage (ZeRO-3 sharded construction) and its weights were never written; " +
                "call Trainer.InitializeWeights, Trainer.LoadWeights or ShardedCheckpoint.Restore before a pass");
        if (_gathered[segment] is not null) return;
        if (!_gathers.Remove(segment, out var op)) op = IssueUnitGather(segment);
        op.Handle.Wait();
        var unit = Layout.Units[segment];
        _storage.Bind(Trained.Units[segment], op.Output.Narrow(0, new Shape((int)unit.Length)));
        _gathered[segment] = op.Output;
    }

    /// <summary>Unbinds the unit's parameters and returns its buffer to the pool (poisoned with NaN first when configured, so a kept view reads NaN).</summary>
    private void Release(int segment)
    {
        var buffer = _gathered[segment];
        if (buffer is null) return;
        _storage.Unbind(Trained.Units[segment]);
        _gathered[segment] = null;
        if (Options.PoisonReleasedParameters) Model.Backend.Fill(buffer, double.NaN);
        Return(buffer);
    }
}
