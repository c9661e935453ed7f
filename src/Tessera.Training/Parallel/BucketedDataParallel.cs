using Tessera.Distributed;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Optim;

namespace Tessera.Training.Parallel;

/// <summary>
/// Plain data parallelism (PyTorch DDP), ZeRO-1 and ZeRO-2 for one rank. Every rank keeps the whole arena of values and
/// gradients. On the last micro-batch of a step each gradient bucket (whole parameters, built from the last parameter
/// backwards) is issued as soon as the backward pass has finished every parameter in it: an all-reduce (plain DP,
/// ZeRO-1) or a reduce-scatter into the rank's gradient shard (ZeRO-2); earlier micro-batches only accumulate locally.
/// ZeRO-1/2 shard the AdamW state and, after the update, all-gather each bucket's updated values.
/// <para>
/// Mixed precision (a BF16 arena with F32 masters): BF16 gradients are reduced and BF16 values gathered (half of F32's
/// bytes); each rank's optimizer keeps the F32 masters current only in its owned ranges, and
/// <see cref="SynchronizeMasters"/> gathers them whole when needed. With offload the masters and moments of the shard
/// live on the host, and the arena's own F32 master buffer is released (the host copy is the only one).
/// </para>
/// <para>
/// Split masters (<see cref="MasterWeights.Split"/>, not offloaded): the arena's BF16 values are the masters' high halves and
/// its U16 low-word plane the rest; each owned range is updated by <see cref="IBackend.AdamWSplit"/>, and the values the
/// stages all-gather are exactly the updated high halves, so the exchange is unchanged. Only the owned ranges of the low
/// words stay current; <see cref="SynchronizeMasters"/> all-gathers the low words (2 bytes an element, where gathering joined
/// F32 masters would move 4: every rank already holds every value).
/// </para>
/// <para>
/// Expert parallelism (plain data parallelism only): the arena's expert parameters differ between the ranks of an
/// expert-parallel group, so each bucket is reduced in runs: the runs of non-expert parameters over the data-parallel group
/// as always, the runs of the rank's experts over the expert-data-parallel group (<see cref="DataParallelism.ExpertData"/>;
/// nothing when it has one rank). Each expert's gradient already holds the contributions of every token routed to it within
/// the expert-parallel group (they arrived with the all-to-all, each scaled by its own rank's loss scale, 1 / (dp tokens)), so
/// the sum over the expert-data-parallel group is the whole dp sum, as one device's gradient.
/// </para>
/// Memory per rank (P arena elements, W ranks, b bytes per element): 2bP for the value and gradient arenas, 2P/W moments
/// (ZeRO-1/2; 2P without sharding), ZeRO-2's reduced gradient in a P/W shard, and a BF16 arena's 4P bytes of F32
/// masters unless offloaded (2P bytes of low words with split masters).
/// </summary>
public sealed class BucketedDataParallel : DataParallelism
{
    private readonly ParameterArena _arena;
    private readonly List<(CollectiveHandle Handle, Tensor? Staging)> _gradientOps = [];
    private readonly (long Start, long End)[] _expertRanges;   // expert parallelism: the arena ranges of the rank's experts, ascending
    private int _nextBucket;
    private bool _lastMicroBatch = true;

    /// <summary>Sets up rank <paramref name="group"/>.Rank: layout, optimizer shard (on <paramref name="host"/> when offloaded), pass hooks.</summary>
    /// <remarks><paramref name="trained"/>: what is trained, the model's layout when null (see <see cref="DataParallelism.Trained"/>).</remarks>
    /// <remarks><paramref name="expertData"/>: with expert parallelism, the group over which expert gradients are summed.</remarks>
    public BucketedDataParallel(Transformer model, ProcessGroup group, DataParallelOptions options, AdamWOptions adamW, IBackend? host = null,
        ParameterLayout? trained = null, ProcessGroup? expertData = null)
        : base(model, group, options, host, trained, expertData)
    {
        if (options.Stage == ZeroStage.Parameters)
            throw new ArgumentException($"{group.Describe()}: ZeRO-3 shards the parameters; use FullyShardedDataParallel");
        _arena = Trained.Storage as ParameterArena ?? throw new ArgumentException(
            $"{group.Describe()}: the model has no full parameter arena (built with ArenaStorage.Deferred, or already sharded), which only ZeRO-3 serves; " +
            $"build the model with ArenaStorage.Full for stage {(int)options.Stage}");
        if (_arena.Frozen)
            throw new ArgumentException($"{group.Describe()}: the trained parameter arena is frozen (no gradients); for LoRA, train the adapters' layout (model.Adapters.Layout)");
        _expertRanges = ExpertData is null ? [] : ExpertRanges(model);
        if (options.Stage >= ZeroStage.Gradients) GradientShard = model.Backend.Zeros(ShardShape(), model.DType);
        OffloadedAdamW? offload = Host is null ? null : new OffloadedAdamW(model.Backend, model.DType, Layout, Host, options.OffloadPieceElements,
            Value, () => _arena.Masters ?? (_arena.MastersReleased ? null : _arena.Values), loadMasters: true);
        Optimizer = new ShardedAdamW(model.Backend, model.DType, Layout, group, adamW, Gradient, Value, Master, _arena.Grads, offload, NormScope,
            _arena.LowWords is null ? null : r => LowWords(r)!);
        // ZeRO-Offload: the host master shard (just loaded from the arena) is authoritative; a BF16 arena's full-size F32
        // device masters would be 4 bytes per parameter of dead weight, so they are freed.
        if (offload is not null) _arena.ReleaseMasters();
    }

    /// <summary>ZeRO-2: this rank's reduced gradient shard (ShardLength elements, shard layout); null for plain DP and ZeRO-1.</summary>
    public Tensor? GradientShard { get; }

    /// <inheritdoc/>
    public override Tensor Gradient(OwnedRange range)
    {
        var shape = new Shape((int)range.Length);
        return GradientShard is null ? _arena.Grads.Narrow(range.ArenaOffset, shape) : GradientShard.Narrow(range.ShardOffset, shape);
    }

    /// <inheritdoc/>
    public override Tensor Value(OwnedRange range) => _arena.Values.Narrow(range.ArenaOffset, new Shape((int)range.Length));

    /// <inheritdoc/>
    public override Tensor? Master(OwnedRange range) => _arena.Masters?.Narrow(range.ArenaOffset, new Shape((int)range.Length));

    /// <inheritdoc/>
    public override Tensor? LowWords(OwnedRange range) => _arena.LowWords?.Narrow(range.ArenaOffset, new Shape((int)range.Length));

    /// <inheritdoc/>
    public override bool ReducesEveryMicroBatch => false;

    /// <inheritdoc/>
    public override void ZeroGrad() => _arena.ZeroGrad();

    /// <inheritdoc/>
    public override void BeginMicroBatch(bool first, bool last)
    {
        _lastMicroBatch = last;
        _nextBucket = 0;
    }

    /// <inheritdoc/>
    public override void BeforeForward(int segment) { }

    /// <inheritdoc/>
    public override void AfterForward(int segment) { }

    /// <inheritdoc/>
    public override void BeforeBackward(int segment) { }

    /// <inheritdoc/>
    public override void AfterBackward(int segment)
    {
        if (!_lastMicroBatch) return;
        long frontier = GradientFrontier(segment);
        while (_nextBucket < Layout.Units.Count && Layout.Units[_nextBucket].Start >= frontier)
            IssueGradient(Layout.Units[_nextBucket++]);
    }

    /// <inheritdoc/>
    public override void FinishGradients()
    {
        if (_nextBucket != Layout.Units.Count)
            throw new InvalidOperationException($"{Group.Describe()}: only {_nextBucket} of {Layout.Units.Count} gradient buckets were issued; run Backward on the last micro-batch before finishing the step");
        foreach (var (handle, staging) in _gradientOps)
        {
            handle.Wait();
            if (staging is not null) Return(staging);
        }
        _gradientOps.Clear();
    }

    /// <inheritdoc/>
    public override void AfterUpdate()
    {
        if (Layout.Stage == ZeroStage.None) return;
        var pending = Layout.Units.Select(u => (Unit: u, Op: IssueGather(u, _arena.Values))).ToList();
        foreach (var (unit, op) in pending) CompleteGather(unit, op, _arena.Values);
    }

    /// <inheritdoc/>
    public override void ReleaseAll() { }

    /// <inheritdoc/>
    public override int CollectivesPerStep(int accumulationSteps)
    {
        int units = Layout.Units.Count;
        int count = Layout.Shards > 1 ? 1 : 0;                       // the sharded optimizer's norm all-reduce
        if (ExpertData is not null) return Layout.Units.Sum(u => Runs(u).Count(r => !r.Expert));   // the expert runs are on their own group
        return count + (Layout.Stage == ZeroStage.None ? units : 2 * units);
    }

    /// <summary>
    /// Collective (every rank, same point): makes <see cref="ParameterArena.Masters"/> hold the whole current F32 model on
    /// every rank (training keeps only a rank's owned ranges current): one F32 all-gather per unit, one in flight at a
    /// time. Split masters: the same for <see cref="ParameterArena.LowWords"/> (U16; the values, the high halves, are whole
    /// after every update already). A no-op for F32/F64 arenas and without sharding; throws when the masters were released (offload).
    /// </summary>
    public void SynchronizeMasters()
    {
        if (_arena.MastersReleased)
            throw new InvalidOperationException($"{Group.Describe()}: the device holds no full-size F32 masters (they live on the host with offload); use GatherMastersToHost");
        var masters = _arena.Masters ?? _arena.LowWords;
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

    private protected override void WriteWhole(Parameter parameter, ReadOnlySpan<double> values)
    {
        var backend = Model.Backend;
        // With offload the host masters (written by the caller) are the F32 copy; the device keeps only the values.
        if (_arena.MastersReleased) HostValues.Write(backend, values, parameter.Value);
        else
        {
            // The master (separate: then cast into the value; split: through a transient F32 split into value and low word), or the value.
            var host = values.ToArray();
            parameter.WriteMasterOrValue(target => HostValues.Write(backend, host, target));
        }
    }

    private protected override void WriteOwned(OwnedRange range, long start, ReadOnlySpan<double> values) { }

    private protected override void CopyOwnedMasters(ShardUnit unit, Tensor chunk)
    {
        if (_arena.LowWords is not { } low)
        {
            CopyOwnedChunk(_arena.Masters ?? _arena.Values, unit, chunk);
            return;
        }
        // Split masters: the owned span joined into the F32 chunk (what the other ranks cannot rebuild: they hold these low words stale).
        var device = Model.Backend;
        var (start, end) = Layout.OwnedSpan(unit);
        if (end > start)
        {
            var span = new Shape((int)(end - start));
            device.JoinMasters(_arena.Values.Narrow(start, span), low.Narrow(start, span), chunk.Narrow(0, span));
        }
        if (end - start < unit.Chunk) device.Fill(chunk.Narrow(end - start, new Shape((int)(unit.Chunk - (end - start)))), 0);
    }

    private protected override void CopyOwnedValues(ShardUnit unit, Tensor chunk) => CopyOwnedChunk(_arena.Values, unit, chunk);

    /// <summary>The arena ranges of the parameters the model's layer factory marked as its rank's experts, merged where adjacent.</summary>
    private static (long Start, long End)[] ExpertRanges(Transformer model)
    {
        var names = model.Layers.ExpertParameters;
        var ranges = new List<(long Start, long End)>();
        foreach (var p in model.Layout.Parameters.Where(p => names.Contains(p.Name)).OrderBy(p => p.Offset))
        {
            if (ranges.Count > 0 && ranges[^1].End == p.Offset) ranges[^1] = (ranges[^1].Start, p.Offset + p.NumElements);
            else ranges.Add((p.Offset, p.Offset + p.NumElements));
        }
        return [.. ranges];
    }

    /// <summary>Expert parallelism: <paramref name="unit"/> cut into runs of expert and non-expert elements, in arena order.</summary>
    private List<(long Start, long Length, bool Expert)> Runs(ShardUnit unit)
    {
        var runs = new List<(long, long, bool)>();
        long at = unit.Start, end = unit.Start + unit.Length;
        foreach (var (s, e) in _expertRanges)
        {
            long lo = Math.Max(s, at), hi = Math.Min(e, end);
            if (lo >= hi) continue;
            if (lo > at) runs.Add((at, lo - at, false));
            runs.Add((lo, hi - lo, true));
            at = hi;
        }
        if (at < end) runs.Add((at, end - at, false));
        return runs;
    }

    private void IssueGradient(ShardUnit unit)
    {
        if (ExpertData is { } expertData)
        {
            foreach (var (start, length, expert) in Runs(unit))
            {
                if (expert && expertData.Size == 1) continue;            // ep = dp: each expert lives on one rank, its gradient is whole
                var run = _arena.Grads.Narrow(start, new Shape((int)length));
                _gradientOps.Add(((expert ? expertData : Group).AllReduce(run, ReduceOp.Sum), null));
            }
            return;
        }
        var grads = _arena.Grads.Narrow(unit.Start, new Shape((int)unit.Length));
        if (Layout.Stage <= ZeroStage.OptimizerStates)
        {
            _gradientOps.Add((Group.AllReduce(grads, ReduceOp.Sum), null));
            return;
        }
        var output = GradientShard!.Narrow(unit.ShardStart, new Shape((int)unit.Chunk));
        long padded = unit.Chunk * Layout.Shards;
        if (padded == unit.Length)
        {
            _gradientOps.Add((Group.ReduceScatter(grads, output, ReduceOp.Sum), null));
            return;
        }
        var staging = Rent(padded, _arena.DType);
        _arena.Backend.Copy(grads, staging.Narrow(0, grads.Shape));
        _arena.Backend.Fill(staging.Narrow(unit.Length, new Shape((int)(padded - unit.Length))), 0);
        _gradientOps.Add((Group.ReduceScatter(staging, output, ReduceOp.Sum), staging));
    }
}
