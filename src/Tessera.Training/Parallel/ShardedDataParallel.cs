using Tessera.Distributed;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Training.Parallel;

/// <summary>
/// The communication of data-parallel and ZeRO training for one rank, driven by the model's pass hooks.
/// <list type="bullet">
/// <item>Stages 0-2: on the last micro-batch of a step, each gradient bucket is issued (all-reduce, or
/// reduce-scatter for ZeRO-2) as soon as the backward has finished every parameter in it; earlier
/// micro-batches only accumulate locally. After the update, ZeRO-1/2 all-gather each bucket's updated shards.</item>
/// <item>Stage 3 (FSDP's design): the arena is sharded (<see cref="ShardArena"/>): the rank keeps only its shards of the
/// values, the reduced gradient and (mixed precision, not offloaded) the F32 masters, P/W elements each. Each segment is
/// all-gathered from the value shards into a pooled buffer before its forward (the next one prefetched) and the
/// segment's parameters are bound to views of it (<see cref="ParameterArena.Bind"/>); after the forward they are unbound
/// and the buffer returns to the pool. Before its backward it is gathered again (the previous one prefetched) and a
/// zeroed, pooled gradient buffer of the segment is bound; right after the backward that buffer is reduce-scattered into
/// the gradient shard and unbound. The head segment stays gathered from its forward to its backward; with tied
/// embeddings the embedding segment stays gathered (and its gradient buffer bound) through the pass, as the head reads
/// and writes it. Every micro-batch reduce-scatters (DeepSpeed's behaviour: keeping whole gradients across
/// micro-batches would need the full gradient memory ZeRO-3 saves); later micro-batches add into the shard.</item>
/// </list>
/// Gradients are summed (the loss scale carries 1 / world); ranks reduce in rank order on thread-rank groups.
/// <para>
/// Mixed precision (a BF16 arena with F32 masters): what travels is what the layers use, in the arena's dtype: BF16
/// gradients are all-reduced or reduce-scattered, BF16 values all-gathered (half the bytes of F32). The F32 masters
/// never travel during training; each rank's optimizer keeps the masters of its own shard, and
/// <see cref="GatherMasters"/> (full device masters) or <see cref="GatherUnits"/> (unit by unit) gathers them only when
/// the whole F32 model is needed (a checkpoint).
/// </para>
/// <para>
/// Memory per rank (P arena elements, W ranks, b bytes per element of the arena dtype). Stages 0-2: the value and
/// gradient arenas stay full size (2bP; layers read views of them); ZeRO-1/2 shard the optimizer state (2P/W moments;
/// with offload those and P/W masters live on the host) and ZeRO-2 keeps the reduced gradient in a P/W shard (the
/// backward still writes the full gradient arena). Without offload a BF16 arena also keeps its full-size F32
/// <see cref="ParameterArena.Masters"/> (4P bytes) of which a rank keeps only its owned ranges current until
/// <see cref="GatherMasters"/>; with offload the trainer releases it (<see cref="ParameterArena.ReleaseMasters"/>).
/// ZeRO-3: persistent 2bP/W (value and gradient shards) plus 4P/W (F32 master shard of a BF16 arena, on the device
/// unless offloaded), and transient pooled buffers of whole segments (<see cref="TransientBytes"/>): at most three
/// gathered value segments (current, prefetched, and the tied embeddings or the kept head) and three gradient segments
/// (current, the previous one while its reduce-scatter is in flight, the tied embeddings), plus two chunk buffers when
/// micro-batches accumulate. Setup: a model built with <see cref="ArenaStorage.Deferred"/> (sharded construction, as
/// DeepSpeed's <c>zero.Init</c>) never allocates a full-size buffer; <see cref="ShardArena"/> allocates the shards and
/// the trainer writes each rank's owned ranges of the initialized or loaded weights into them, one parameter at a time
/// from the host. A model built full size (construct-then-shard) peaks at the full arena once, until
/// <see cref="ShardArena"/> frees it.
/// </para>
/// </summary>
public sealed class ShardedDataParallel : ITransformerPassHooks
{
    private readonly Transformer _model;
    private readonly ParameterArena _arena;
    private readonly ProcessGroup _group;
    private readonly DataParallelOptions _options;
    private readonly List<(CollectiveHandle Handle, Tensor? Staging)> _gradientOps = [];
    private readonly Tensor?[] _gathered;                 // ZeRO-3: (Chunk * W) arena dtype, the segment's gathered values while resident
    private readonly Tensor?[] _segmentGrads;             // ZeRO-3: (Chunk * W) arena dtype, the segment's gradient buffer during its backward
    private readonly Dictionary<int, (CollectiveHandle Handle, Tensor Input, Tensor Output)> _gathers = [];
    private readonly Queue<(int Segment, CollectiveHandle Handle, Tensor Buffer, Tensor? Partial)> _scatters = [];   // ZeRO-3 gradient reduce-scatters in flight
    private readonly Dictionary<(long Elements, DType DType), Stack<Tensor>> _pool = [];
    private int _nextBucket;
    private bool _firstMicroBatch = true, _lastMicroBatch = true;

    /// <summary>
    /// Sets up rank <paramref name="group"/>.Rank's layout and installs itself as <paramref name="model"/>'s pass hooks.
    /// ZeRO-3 also needs <see cref="ShardArena"/> (after the optimizer has read the full arena) before the first pass.
    /// </summary>
    public ShardedDataParallel(Transformer model, ProcessGroup group, DataParallelOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(group);
        options.Validate();
        _model = model;
        _arena = model.Parameters;
        _group = group;
        _options = options;
        if (_arena.IsSharded && options.Stage != ZeroStage.Parameters)
            throw new ArgumentException($"{group.Describe()}: the model's parameter arena is sharded ({(_arena.IsDeferred ? "built deferred, ArenaStorage.Deferred" : "released")}), " +
                $"which only ZeRO-3 serves; build the model with ArenaStorage.Full for stage {(int)options.Stage}");
        Layout = new ShardLayout(model, options.Stage, group.Size, group.Rank, options.BucketElements);
        if (options.Stage >= ZeroStage.Gradients) GradientShard = _arena.Backend.Zeros(ShardShape(), _arena.DType);
        _gathered = new Tensor?[Layout.Segments];
        _segmentGrads = new Tensor?[Layout.Segments];
        model.PassHooks = this;
    }

    /// <summary>The arena layout (units and owned ranges).</summary>
    public ShardLayout Layout { get; }

    /// <summary>ZeRO-2/3: this rank's reduced gradient shard (ShardLength elements, shard layout); null otherwise.</summary>
    public Tensor? GradientShard { get; }

    /// <summary>ZeRO-3 after <see cref="ShardArena"/>: this rank's value shard (ShardLength elements, arena dtype, shard layout); null otherwise.</summary>
    public Tensor? ValueShard { get; private set; }

    /// <summary>ZeRO-3 after <see cref="ShardArena"/>, mixed precision without offload: this rank's F32 master shard (shard layout); null otherwise.</summary>
    public Tensor? MasterShard { get; private set; }

    /// <summary>Bytes of this rank's persistent shard buffers on the device (value, gradient and master shards that exist).</summary>
    public long PersistentBytes => (GradientShard?.Storage.ByteLength ?? 0) + (ValueShard?.Storage.ByteLength ?? 0) + (MasterShard?.Storage.ByteLength ?? 0);

    /// <summary>
    /// Bytes of every transient buffer this rank's communication has allocated and still holds (pooled or in use: gathered
    /// segments, segment gradients, staging). The pool never frees during training, so after a step this is the peak.
    /// </summary>
    public long TransientBytes { get; private set; }

    /// <summary>The reduced gradient of an owned range: a view of the arena gradients (stages 0-1) or of <see cref="GradientShard"/>.</summary>
    public Tensor Gradient(OwnedRange range)
    {
        var shape = new Shape((int)range.Length);
        return GradientShard is null ? _arena.Grads.Narrow(range.ArenaOffset, shape) : GradientShard.Narrow(range.ShardOffset, shape);
    }

    /// <summary>The values of an owned range (arena dtype): a view of <see cref="ValueShard"/> once sharded, else of the arena's values.</summary>
    public Tensor Value(OwnedRange range)
    {
        var shape = new Shape((int)range.Length);
        return ValueShard is null ? _arena.Values.Narrow(range.ArenaOffset, shape) : ValueShard.Narrow(range.ShardOffset, shape);
    }

    /// <summary>The F32 masters of an owned range (mixed precision): a view of <see cref="MasterShard"/> or of the arena's masters; null when the device holds none (F32/F64 arenas, or offloaded).</summary>
    public Tensor? Master(OwnedRange range)
    {
        var shape = new Shape((int)range.Length);
        if (MasterShard is not null) return MasterShard.Narrow(range.ShardOffset, shape);
        return _arena.Masters?.Narrow(range.ArenaOffset, shape);
    }

    /// <summary>
    /// ZeRO-3 (a no-op otherwise): materializes this rank's value shard (and, for a BF16 arena whose F32 masters stay on
    /// the device, the master shard). A full arena (<see cref="ArenaStorage.Full"/>, construct-then-shard): copies the
    /// rank's chunk of every segment into the shards, then frees the arena's full-size buffers
    /// (<see cref="ParameterArena.ReleaseStorage"/>); call once the weights are initialized or loaded and the optimizer has
    /// read what it needs (an offloaded optimizer loads its host masters from the arena). A deferred arena
    /// (<see cref="ArenaStorage.Deferred"/>, sharded construction): allocates zeroed shards only, so no full-size buffer
    /// ever exists; the weights are written into them afterwards (<see cref="DataParallelTrainer.InitializeWeights"/>,
    /// <see cref="DataParallelTrainer.LoadWeights(string)"/>, <see cref="ShardedCheckpoint.Restore"/>).
    /// </summary>
    public void ShardArena()
    {
        if (Layout.Stage != ZeroStage.Parameters || ValueShard is not null) return;
        var backend = _arena.Backend;
        if (_arena.IsDeferred)
        {
            ValueShard = backend.Zeros(ShardShape(), _arena.DType);
            if (_arena.MasterDType != _arena.DType && !_options.OffloadOptimizer) MasterShard = backend.Zeros(ShardShape(), _arena.MasterDType);
            return;
        }
        if (_arena.IsSharded) throw new InvalidOperationException($"{_group.Describe()}: the arena is already sharded by another owner");
        ValueShard = backend.Zeros(ShardShape(), _arena.DType);
        if (_arena.Masters is not null) MasterShard = backend.Zeros(ShardShape(), _arena.MasterDType);
        foreach (var unit in Layout.Units)
        {
            var (start, end) = Layout.OwnedSpan(unit);
            if (end <= start) continue;
            var shape = new Shape((int)(end - start));
            backend.Copy(_arena.Values.Narrow(start, shape), ValueShard.Narrow(unit.ShardStart, shape));
            if (MasterShard is not null) backend.Copy(_arena.Masters!.Narrow(start, shape), MasterShard.Narrow(unit.ShardStart, shape));
        }
        backend.Synchronize();   // the copies read the full buffers, which are freed next
        _arena.ReleaseStorage();
    }

    /// <summary>
    /// Marks the next micro-batch as the first and/or last of its step. Stages 0-2 communicate gradients only on the last
    /// (earlier ones accumulate locally); ZeRO-3 reduce-scatters every micro-batch, overwriting the shard on the first.
    /// </summary>
    public void BeginMicroBatch(bool first, bool last)
    {
        _firstMicroBatch = first;
        _lastMicroBatch = last;
        _nextBucket = 0;
    }

    /// <inheritdoc/>
    public void BeforeForward(int segment)
    {
        if (Layout.Stage != ZeroStage.Parameters) return;
        EnsureResident(segment);
        if (segment == Layout.Segments - 1 && _model.Config.TiedEmbeddings) EnsureResident(0);
        if (segment + 1 < Layout.Segments) Prefetch(segment + 1);
    }

    /// <inheritdoc/>
    public void AfterForward(int segment)
    {
        if (Layout.Stage != ZeroStage.Parameters) return;
        bool keep = segment == Layout.Segments - 1 || (segment == 0 && _model.Config.TiedEmbeddings);
        if (!keep) Release(segment);
    }

    /// <inheritdoc/>
    public void BeforeBackward(int segment)
    {
        if (Layout.Stage != ZeroStage.Parameters) return;
        EnsureResident(segment);
        BindGradients(segment);
        // The tied head writes the embedding's gradient: bound from the head's backward to the embeddings'.
        if (segment == Layout.Segments - 1 && _model.Config.TiedEmbeddings) BindGradients(0);
        if (segment > 0) Prefetch(segment - 1);
    }

    /// <inheritdoc/>
    public void AfterBackward(int segment)
    {
        if (Layout.Stage == ZeroStage.Parameters)
        {
            IssueSegmentGradient(segment);
            Release(segment);
            return;
        }
        if (!_lastMicroBatch) return;
        long frontier = Layout.SegmentStart[segment];
        while (_nextBucket < Layout.Units.Count && Layout.Units[_nextBucket].Start >= frontier)
            IssueGradient(Layout.Units[_nextBucket++]);
    }

    /// <summary>Waits for every gradient reduction of the step (call before the optimizer step).</summary>
    public void FinishGradients()
    {
        if (Layout.Stage != ZeroStage.Parameters && _nextBucket != Layout.Units.Count)
            throw new InvalidOperationException($"{_group.Describe()}: only {_nextBucket} of {Layout.Units.Count} gradient buckets were issued; run Backward on the last micro-batch before finishing the step");
        foreach (var (handle, staging) in _gradientOps)
        {
            handle.Wait();
            if (staging is not null) Return(staging);
        }
        _gradientOps.Clear();
        while (_scatters.Count > 0) CompleteScatter();
    }

    /// <summary>After the optimizer step: ZeRO-1/2 all-gather the updated shards; ZeRO-3 releases every segment.</summary>
    public void AfterUpdate()
    {
        switch (Layout.Stage)
        {
            case ZeroStage.OptimizerStates:
            case ZeroStage.Gradients:
                var pending = Layout.Units.Select(u => (Unit: u, Op: IssueGather(u, _arena.Values))).ToList();
                foreach (var (unit, op) in pending) CompleteGather(unit, op, _arena.Values);
                break;
            case ZeroStage.Parameters:
                ReleaseAll();
                break;
        }
    }

    /// <summary>
    /// ZeRO-3: gathers and binds every segment (to inspect the full weights through the parameters; holds every segment's
    /// buffer until <see cref="ReleaseAll"/>, i.e. the full model: prefer <see cref="GatherUnits"/>); a no-op for other stages.
    /// </summary>
    public void GatherAll()
    {
        if (Layout.Stage != ZeroStage.Parameters) return;
        for (int s = 0; s < Layout.Segments; s++) EnsureResident(s);
    }

    /// <summary>
    /// Collective, mixed precision with full-size device masters (stages 0-2 without offload; a no-op otherwise):
    /// all-gathers every unit's F32 master chunk from its owner into <see cref="ParameterArena.Masters"/>, so every rank
    /// holds the whole, current F32 model (training keeps only the owned ranges current). One F32 all-gather per unit,
    /// one unit in flight at a time.
    /// </summary>
    public void GatherMasters()
    {
        var masters = _arena.Masters;
        if (masters is null || Layout.Shards == 1) return;
        (ShardUnit Unit, (CollectiveHandle Handle, Tensor Input, Tensor Output) Op)? previous = null;
        foreach (var unit in Layout.Units)
        {
            // Issue the next unit before completing the previous one, so one gather overlaps one copy-out.
            var op = IssueGather(unit, masters);
            if (previous is { } p) CompleteGather(p.Unit, p.Op, masters);
            previous = (unit, op);
        }
        if (previous is { } last) CompleteGather(last.Unit, last.Op, masters);
    }

    /// <summary>
    /// Collective: for each unit in turn, <paramref name="ownedChunk"/> fills a transient device buffer of
    /// <see cref="ShardUnit.Chunk"/> elements of <paramref name="dtype"/> with this rank's chunk (padding zeroed), the chunks
    /// are all-gathered into a transient buffer of the whole unit, and <paramref name="consume"/> gets its first
    /// <see cref="ShardUnit.Length"/> elements (valid only during the call). Two unit-size buffers exist at a time and are
    /// freed at the end, so the whole model (e.g. the F32 masters of an offloaded run) is assembled without a full-size
    /// device buffer.
    /// </summary>
    public void GatherUnits(DType dtype, Action<ShardUnit, Tensor> ownedChunk, Action<ShardUnit, Tensor> consume)
    {
        ArgumentNullException.ThrowIfNull(ownedChunk);
        ArgumentNullException.ThrowIfNull(consume);
        var backend = _arena.Backend;
        foreach (var unit in Layout.Units)
        {
            var input = backend.Allocate(new Shape(checked((int)unit.Chunk)), dtype);
            var output = backend.Allocate(new Shape(checked((int)(unit.Chunk * Layout.Shards))), dtype);
            try
            {
                ownedChunk(unit, input);
                _group.AllGather(input, output).Wait();
                consume(unit, output.Narrow(0, new Shape((int)unit.Length)));
            }
            finally
            {
                backend.Synchronize();   // nothing queued may still read the buffers freed here
                input.Storage.Dispose();
                output.Storage.Dispose();
            }
        }
    }

    /// <summary>ZeRO-3: waits for prefetches and releases every segment (unbinding its parameters); a no-op for other stages.</summary>
    public void ReleaseAll()
    {
        if (Layout.Stage != ZeroStage.Parameters) return;
        foreach (var (s, op) in _gathers.ToList())
        {
            op.Handle.Wait();
            Return(op.Output);
            _gathers.Remove(s);
        }
        for (int s = 0; s < Layout.Segments; s++)
        {
            if (_segmentGrads[s] is not null) throw new InvalidOperationException($"{_group.Describe()}: segment {s}'s gradient buffer is still bound; finish its backward first");
            Release(s);
        }
    }

    private Shape ShardShape() => new(checked((int)Math.Max(Layout.ShardLength / ParameterArena.Alignment, 1)), ParameterArena.Alignment);

    private void RequireSharded()
    {
        if (ValueShard is null)
            throw new InvalidOperationException($"{_group.Describe()}: ZeRO-3 needs ShardArena() before the first pass (the data-parallel trainer calls it)");
    }

    private void IssueGradient(ShardUnit unit)
    {
        var grads = _arena.Grads.Narrow(unit.Start, new Shape((int)unit.Length));
        if (Layout.Stage <= ZeroStage.OptimizerStates)
        {
            _gradientOps.Add((_group.AllReduce(grads, ReduceOp.Sum), null));
            return;
        }
        var output = GradientShard!.Narrow(unit.ShardStart, new Shape((int)unit.Chunk));
        long padded = unit.Chunk * Layout.Shards;
        if (padded == unit.Length)
        {
            _gradientOps.Add((_group.ReduceScatter(grads, output, ReduceOp.Sum), null));
            return;
        }
        var staging = Rent(padded, _arena.DType);
        _arena.Backend.Copy(grads, staging.Narrow(0, grads.Shape));
        _arena.Backend.Fill(staging.Narrow(unit.Length, new Shape((int)(padded - unit.Length))), 0);
        _gradientOps.Add((_group.ReduceScatter(staging, output, ReduceOp.Sum), staging));
    }

    /// <summary>ZeRO-3: a zeroed gradient buffer of the whole (padded) segment, bound to its parameters' Grad.</summary>
    private void BindGradients(int segment)
    {
        if (_segmentGrads[segment] is not null) return;
        var unit = Layout.Units[segment];
        var buffer = Rent(unit.Chunk * Layout.Shards, _arena.DType);
        _arena.Backend.Fill(buffer, 0);   // parameter gradients accumulate; the padding must reduce to zero
        _arena.BindGradients(unit.Start, unit.End, buffer.Narrow(0, new Shape((int)unit.Length)));
        _segmentGrads[segment] = buffer;
    }

    /// <summary>
    /// ZeRO-3: reduce-scatters the segment's gradient buffer into the gradient shard (the first micro-batch writes it,
    /// later ones reduce into a chunk buffer that is added on completion) and unbinds the gradients. At most one earlier
    /// reduce-scatter stays in flight, so at most two segment gradient buffers (plus the tied embeddings') are alive.
    /// </summary>
    private void IssueSegmentGradient(int segment)
    {
        var buffer = _segmentGrads[segment] ?? throw new InvalidOperationException($"{_group.Describe()}: segment {segment} finished its backward without a gradient buffer");
        var unit = Layout.Units[segment];
        _arena.UnbindGradients(unit.Start, unit.End);
        _segmentGrads[segment] = null;
        while (_scatters.Count > 0) CompleteScatter();
        var shard = GradientShard!.Narrow(unit.ShardStart, new Shape((int)unit.Chunk));
        var partial = _firstMicroBatch ? null : Rent(unit.Chunk, _arena.DType);
        _scatters.Enqueue((segment, _group.ReduceScatter(buffer, partial ?? shard, ReduceOp.Sum), buffer, partial));
    }

    private void CompleteScatter()
    {
        var (segment, handle, buffer, partial) = _scatters.Dequeue();
        handle.Wait();
        if (partial is not null)
        {
            var unit = Layout.Units[segment];
            _arena.Backend.Accumulate(GradientShard!.Narrow(unit.ShardStart, new Shape((int)unit.Chunk)), partial);
            Return(partial);
        }
        Return(buffer);
    }

    /// <summary>Starts the all-gather of <paramref name="unit"/>'s owned chunk of <paramref name="source"/> (the values, or the F32 masters; arena layout).</summary>
    private (CollectiveHandle Handle, Tensor Input, Tensor Output) IssueGather(ShardUnit unit, Tensor source)
    {
        var backend = _arena.Backend;
        var (start, end) = Layout.OwnedSpan(unit);
        var input = Rent(unit.Chunk, source.DType);
        if (end > start) backend.Copy(source.Narrow(start, new Shape((int)(end - start))), input.Narrow(0, new Shape((int)(end - start))));
        if (end - start < unit.Chunk) backend.Fill(input.Narrow(end - start, new Shape((int)(unit.Chunk - (end - start)))), 0);
        var output = Rent(unit.Chunk * Layout.Shards, source.DType);
        return (_group.AllGather(input, output), input, output);
    }

    private void CompleteGather(ShardUnit unit, (CollectiveHandle Handle, Tensor Input, Tensor Output) op, Tensor destination)
    {
        op.Handle.Wait();
        var shape = new Shape((int)unit.Length);
        _arena.Backend.Copy(op.Output.Narrow(0, shape), destination.Narrow(unit.Start, shape));
        Return(op.Input);
        Return(op.Output);
    }

    /// <summary>ZeRO-3: starts gathering a segment straight from the value shard into a pooled segment buffer (no staging copy).</summary>
    private (CollectiveHandle Handle, Tensor Input, Tensor Output) IssueSegmentGather(int segment)
    {
        RequireSharded();
        var unit = Layout.Units[segment];
        var input = ValueShard!.Narrow(unit.ShardStart, new Shape((int)unit.Chunk));
        var output = Rent(unit.Chunk * Layout.Shards, _arena.DType);
        return (_group.AllGather(input, output), input, output);
    }

    private void Prefetch(int segment)
    {
        if (_gathered[segment] is not null || _gathers.ContainsKey(segment)) return;
        _gathers[segment] = IssueSegmentGather(segment);
    }

    private void EnsureResident(int segment)
    {
        if (_gathered[segment] is not null) return;
        if (!_gathers.Remove(segment, out var op)) op = IssueSegmentGather(segment);
        op.Handle.Wait();
        var unit = Layout.Units[segment];
        _arena.Bind(unit.Start, unit.End, op.Output.Narrow(0, new Shape((int)unit.Length)));
        _gathered[segment] = op.Output;
    }

    /// <summary>ZeRO-3: unbinds the segment's parameters and returns its buffer to the pool (poisoned with NaN first when configured, so a kept view reads NaN).</summary>
    private void Release(int segment)
    {
        var buffer = _gathered[segment];
        if (buffer is null) return;
        var unit = Layout.Units[segment];
        _arena.Unbind(unit.Start, unit.End);
        _gathered[segment] = null;
        if (_options.PoisonReleasedParameters) _arena.Backend.Fill(buffer, double.NaN);
        Return(buffer);
    }

    private Tensor Rent(long elements, DType dtype)
    {
        if (_pool.TryGetValue((elements, dtype), out var stack) && stack.Count > 0) return stack.Pop();
        var buffer = _arena.Backend.Allocate(new Shape(checked((int)elements)), dtype);
        TransientBytes += buffer.Storage.ByteLength;
        return buffer;
    }

    private void Return(Tensor buffer)
    {
        var key = (buffer.NumElements, buffer.DType);
        if (!_pool.TryGetValue(key, out var stack)) _pool[key] = stack = new Stack<Tensor>();
        stack.Push(buffer);
    }
}
