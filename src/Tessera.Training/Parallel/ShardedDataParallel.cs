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
/// <item>Stage 3: each segment is all-gathered before its forward (the next one prefetched), released after
/// it, gathered again before its backward (the previous one prefetched), and its gradients reduce-scattered
/// right after its backward. The head segment stays gathered from its forward to its backward; with tied
/// embeddings the embedding segment stays gathered through the whole pass (the head reads it).</item>
/// </list>
/// Gradients are summed (the loss scale carries 1 / world); ranks reduce in rank order on thread-rank groups.
/// <para>
/// Mixed precision (a BF16 arena with F32 masters): what travels is what the layers use, in the arena's dtype: BF16
/// gradients are all-reduced or reduce-scattered, BF16 values all-gathered (half the bytes of F32). The F32 masters
/// never travel during training; each rank's optimizer keeps the masters of its own shard, and
/// <see cref="GatherMasters"/> all-gathers them (F32) only when the whole F32 model is needed (a checkpoint).
/// </para>
/// <para>
/// Memory per rank (P arena elements, W ranks): the model's value and gradient arenas stay full size in every
/// stage (layers read <c>Parameter.Value</c>/<c>.Grad</c> views of them), so ZeRO here shards the optimizer
/// state (2P/W moments; with offload those and P/W masters live on the host, with two pieces of gradient staging)
/// and, from ZeRO-2, the reduced gradient (a P/W shard); the full gradient arena is still written by the backward.
/// ZeRO-3 keeps only its P/W master shard current and communicates like FSDP (gather per segment, reduce-scatter
/// per segment), but the released segments' memory is not returned (it can be poisoned with NaN to prove no
/// stale read). Without offload a BF16 arena also keeps its full-size F32 <see cref="ParameterArena.Masters"/> on the
/// device, of which a rank keeps only its owned ranges current until <see cref="GatherMasters"/>; with offload the
/// trainer releases it (the host shard is the only F32 copy; <see cref="GatherUnits"/> assembles the whole model through
/// unit-size buffers when a checkpoint needs it). Transient buffers: one unit of staging per in-flight collective
/// (pooled per size and dtype).
/// </para>
/// </summary>
public sealed class ShardedDataParallel : ITransformerPassHooks
{
    private readonly Transformer _model;
    private readonly ParameterArena _arena;
    private readonly ProcessGroup _group;
    private readonly DataParallelOptions _options;
    private readonly List<(CollectiveHandle Handle, Tensor? Staging)> _gradientOps = [];
    private readonly bool[] _resident;
    private readonly Dictionary<int, (CollectiveHandle Handle, Tensor Input, Tensor Output)> _gathers = [];
    private readonly Dictionary<(long Elements, DType DType), Stack<Tensor>> _pool = [];
    private int _nextBucket;
    private bool _lastMicroBatch = true;

    /// <summary>Sets up rank <paramref name="group"/>.Rank's layout and installs itself as <paramref name="model"/>'s pass hooks.</summary>
    public ShardedDataParallel(Transformer model, ProcessGroup group, DataParallelOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(group);
        options.Validate();
        _model = model;
        _arena = model.Parameters;
        _group = group;
        _options = options;
        Layout = new ShardLayout(model, options.Stage, group.Size, group.Rank, options.BucketElements);
        if (options.Stage >= ZeroStage.Gradients)
            GradientShard = _arena.Backend.Zeros(new Shape(checked((int)Math.Max(Layout.ShardLength / ParameterArena.Alignment, 1)), ParameterArena.Alignment), _arena.DType);
        _resident = new bool[Layout.Segments];
        Array.Fill(_resident, true);
        model.PassHooks = this;
        if (options.Stage == ZeroStage.Parameters) ReleaseAll();
    }

    /// <summary>The arena layout (units and owned ranges).</summary>
    public ShardLayout Layout { get; }

    /// <summary>ZeRO-2/3: this rank's reduced gradient shard (ShardLength elements, shard layout); null otherwise.</summary>
    public Tensor? GradientShard { get; }

    /// <summary>The reduced gradient of an owned range: a view of the arena gradients (stages 0-1) or of <see cref="GradientShard"/>.</summary>
    public Tensor Gradient(OwnedRange range)
    {
        var shape = new Shape((int)range.Length);
        return GradientShard is null ? _arena.Grads.Narrow(range.ArenaOffset, shape) : GradientShard.Narrow(range.ShardOffset, shape);
    }

    /// <summary>Marks the next micro-batch as the last of its step (gradients are communicated) or not (they only accumulate).</summary>
    public void BeginMicroBatch(bool last)
    {
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
        if (segment > 0) Prefetch(segment - 1);
    }

    /// <inheritdoc/>
    public void AfterBackward(int segment)
    {
        if (Layout.Stage == ZeroStage.Parameters)
        {
            if (_lastMicroBatch) IssueGradient(Layout.Units[segment]);
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

    /// <summary>ZeRO-3: gathers every segment (to export or inspect the full weights); a no-op for other stages.</summary>
    public void GatherAll()
    {
        if (Layout.Stage != ZeroStage.Parameters) return;
        for (int s = 0; s < Layout.Segments; s++) EnsureResident(s);
    }

    /// <summary>
    /// Collective, mixed precision and sharded stages only (a no-op otherwise): all-gathers every unit's F32 master
    /// chunk from its owner into <see cref="ParameterArena.Masters"/>, so every rank holds the whole, current F32
    /// model (training keeps only the owned ranges current). With offload, publish the host masters to the arena
    /// first (<see cref="ShardedAdamW.PublishMasters"/>). One F32 all-gather per unit, one unit in flight at a time.
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
    /// <see cref="ShardUnit.Length"/> elements (valid only during the call). At most two unit-size buffers exist at a time,
    /// so the whole model (e.g. the F32 masters of an offloaded run) is assembled without a full-size device buffer.
    /// </summary>
    public void GatherUnits(DType dtype, Action<ShardUnit, Tensor> ownedChunk, Action<ShardUnit, Tensor> consume)
    {
        ArgumentNullException.ThrowIfNull(ownedChunk);
        ArgumentNullException.ThrowIfNull(consume);
        foreach (var unit in Layout.Units)
        {
            var input = Rent(unit.Chunk, dtype);
            var output = Rent(unit.Chunk * Layout.Shards, dtype);
            try
            {
                ownedChunk(unit, input);
                _group.AllGather(input, output).Wait();
                consume(unit, output.Narrow(0, new Shape((int)unit.Length)));
            }
            finally
            {
                Return(input);
                Return(output);
            }
        }
    }

    /// <summary>ZeRO-3: releases every segment (poisoning non-owned values when configured); a no-op for other stages.</summary>
    public void ReleaseAll()
    {
        if (Layout.Stage != ZeroStage.Parameters) return;
        foreach (var (s, op) in _gathers.ToList())
        {
            op.Handle.Wait();
            Return(op.Input); Return(op.Output);
            _gathers.Remove(s);
        }
        for (int s = 0; s < Layout.Segments; s++) { _resident[s] = true; Release(s); }
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

    /// <summary>Starts the all-gather of <paramref name="unit"/>'s owned chunk of <paramref name="source"/> (the values, or the F32 masters).</summary>
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

    private void Prefetch(int segment)
    {
        if (_resident[segment] || _gathers.ContainsKey(segment)) return;
        _gathers[segment] = IssueGather(Layout.Units[segment], _arena.Values);
    }

    private void EnsureResident(int segment)
    {
        if (_resident[segment]) return;
        if (!_gathers.Remove(segment, out var op)) op = IssueGather(Layout.Units[segment], _arena.Values);
        CompleteGather(Layout.Units[segment], op, _arena.Values);
        _resident[segment] = true;
    }

    private void Release(int segment)
    {
        if (!_resident[segment]) return;
        _resident[segment] = false;
        if (!_options.PoisonReleasedParameters) return;
        var unit = Layout.Units[segment];
        var (start, end) = Layout.OwnedSpan(unit);
        var backend = _arena.Backend;
        if (start > unit.Start) backend.Fill(_arena.Values.Narrow(unit.Start, new Shape((int)(start - unit.Start))), double.NaN);
        if (unit.End > end) backend.Fill(_arena.Values.Narrow(end, new Shape((int)(unit.End - end))), double.NaN);
    }

    private Tensor Rent(long elements, DType dtype)
    {
        if (_pool.TryGetValue((elements, dtype), out var stack) && stack.Count > 0) return stack.Pop();
        return _arena.Backend.Allocate(new Shape(checked((int)elements)), dtype);
    }

    private void Return(Tensor buffer)
    {
        var key = (buffer.NumElements, buffer.DType);
        if (!_pool.TryGetValue(key, out var stack)) _pool[key] = stack = new Stack<Tensor>();
        stack.Push(buffer);
    }
}
