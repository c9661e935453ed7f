using Tessera.Distributed;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Optim;

namespace Tessera.Training.Parallel;

/// <summary>
/// What the data-parallel strategies share: the rank's <see cref="ShardLayout"/> over the model's (local) parameter
/// layout, its <see cref="ShardedAdamW"/>, the pool of transient communication buffers, and the gathers that assemble
/// the whole model from every rank's shard (checkpoints). Two strategies derive from it:
/// <see cref="BucketedDataParallel"/> (plain data parallelism, ZeRO-1 and ZeRO-2) and
/// <see cref="FullyShardedDataParallel"/> (ZeRO-3). Each installs itself as the model's pass hooks.
/// Gradients are summed over the group (the loss scale carries 1 / world); thread-rank groups reduce in rank order.
/// <para>
/// What is trained is a parameter layout, <see cref="Trained"/>: the model's own, or another layout whose units are named after
/// units of the model and follow their order (a LoRA model's adapters: a unit per adapted block, beside the model's frozen arena,
/// which every data-parallel rank holds, whole or as its tensor-parallel slices, and never communicates). The model's pass hooks number the model's units; each is mapped to the
/// trained layout's unit of the same name (or to none), so buckets, gathers and reduce-scatters follow the same pass order.
/// </para>
/// </summary>
public abstract class DataParallelism : IDataParallelism, ITransformerPassHooks
{
    private readonly Dictionary<(long Elements, DType DType), Stack<Tensor>> _pool = [];
    private readonly int[] _trainedUnit;      // per model unit (pass-hook segment): the trained layout's unit of that name, or -1
    private readonly long[] _frontier;        // per model unit: the trained element from which every gradient is complete after its backward
    private bool _weightsPending;

    /// <summary>
    /// Lays out rank <paramref name="group"/>.Rank's share of <paramref name="trained"/> (the model's own layout when null) and
    /// installs the pass hooks on <paramref name="model"/>.
    /// </summary>
    private protected DataParallelism(Transformer model, ProcessGroup group, DataParallelOptions options, IBackend? host, ParameterLayout? trained,
        ProcessGroup? expertData = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (options.OffloadOptimizer && host is null)
            throw new ArgumentException("parallel options: OffloadOptimizer needs a host backend (pass a CpuBackend as 'host')");
        // Split masters: the arena's choice, or for a model declared without storage (ZeRO-3's sharded construction) the model's.
        var masters = (trained ?? model.Layout).Storage is ParameterArena arena ? arena.MasterWeights
            : trained is null || ReferenceEquals(trained, model.Layout) ? model.MasterWeights : MasterWeights.Separate;
        if (masters == MasterWeights.Split && options.OffloadOptimizer)
            throw new NotSupportedException($"{group.Describe()}: the model keeps split masters (MasterWeights.Split), which the offloaded optimizer does not: " +
                "offload keeps whole F32 masters on the host and frees the device's; build the model with MasterWeights.Separate, or train without offload");
        Model = model;
        MasterWeights = masters;
        Group = group;
        Options = options;
        Trained = trained ?? model.Layout;
        if (!ReferenceEquals(Trained, model.Layout) && model.Pipeline is not null)
            throw new NotSupportedException($"{group.Describe()}: training a layout other than the model's (LoRA adapters) over pipeline stages is not built; the model is split over pp ranks");
        Host = options.OffloadOptimizer ? host : null;
        ExpertData = CheckExpertParallel(model, group, options, expertData);
        Layout = new ShardLayout(Trained, options.Stage, group.Size, group.Rank, options.BucketElements);
        _weightsPending = Trained.Storage is null;
        (_trainedUnit, _frontier) = MapUnits(model.Layout, Trained, group);
        model.PassHooks = this;
    }

    /// <summary>
    /// The strategy for <paramref name="options"/>' stage: <see cref="FullyShardedDataParallel"/> for ZeRO-3, else
    /// <see cref="BucketedDataParallel"/>. <paramref name="host"/> holds the offloaded optimizer state (required with
    /// <see cref="DataParallelOptions.OffloadOptimizer"/>). <paramref name="trained"/> is what is trained: by default the model's
    /// <see cref="Transformer.TrainableLayout"/> (its own layout, or a LoRA model's adapters over its frozen base).
    /// </summary>
    /// <remarks><paramref name="expertData"/>: with a model built with expert parallelism, the expert-data-parallel group
    /// (<see cref="ExpertParallelGroups.ExpertData"/>) over which the experts' gradients are summed (plain data parallelism only).</remarks>
    public static DataParallelism Create(Transformer model, ProcessGroup group, DataParallelOptions options, AdamWOptions adamW, IBackend? host = null,
        ParameterLayout? trained = null, ProcessGroup? expertData = null) =>
        options.Stage == ZeroStage.Parameters
            ? new FullyShardedDataParallel(model, group, options, adamW, host, trained ?? model.TrainableLayout, expertData)
            : new BucketedDataParallel(model, group, options, adamW, host, trained ?? model.TrainableLayout, expertData);

    /// <summary>The model this rank trains.</summary>
    public Transformer Model { get; }

    /// <summary>The parameters trained: the model's layout, or the LoRA adapters' (the model's base then stays frozen and replicated over dp;
    /// under tensor parallelism each tp rank's share of the adapters, sharded over its dp group).</summary>
    public ParameterLayout Trained { get; }

    /// <summary>The trained layout's unit that model unit <paramref name="segment"/> (a pass-hook segment) holds, or -1 when it holds none.</summary>
    private protected int TrainedUnit(int segment) => _trainedUnit[segment];

    /// <summary>The trained element from which every gradient is complete once model unit <paramref name="segment"/>'s backward is done (the pass runs backward in unit order).</summary>
    private protected long GradientFrontier(int segment) => _frontier[segment];

    /// <summary>The norm scope of the optimizer: the model's (tensor and pipeline parallel sums), or the LoRA adapters' (their tensor-parallel split).</summary>
    private protected GradientNormScope? NormScope => GradientNormScope.For(Model, Trained);

    /// <summary>
    /// Expert parallelism is proven with plain data parallelism only: its expert parameters differ between the ranks of an
    /// expert-parallel group, so a dp-wide shard of them (ZeRO-1/2's all-gather of updated values, ZeRO-3's parameter shards)
    /// would mix different experts. Those, offload and a trained layout other than the model's are refused here.
    /// </summary>
    private static ProcessGroup? CheckExpertParallel(Transformer model, ProcessGroup group, DataParallelOptions options, ProcessGroup? expertData)
    {
        if (model.ExpertParallelism is not { } ep)
        {
            if (expertData is not null && expertData.Size != group.Size)
                throw new ArgumentException($"{group.Describe()}: an expert-data-parallel group was given but the model has no expert parallelism");
            return null;
        }
        if (expertData is null)
            throw new ArgumentException($"{group.Describe()}: the model's experts are split over ep ({ep.Size}) ranks; give the expert-data-parallel group (ExpertParallelGroups.ExpertData), over which their gradients are summed");
        if (expertData.Size * ep.Size != group.Size)
            throw new ArgumentException($"{group.Describe()}: the expert-data-parallel group has {expertData.Size} ranks; with ep {ep.Size} of dp {group.Size} it must have dp / ep = {group.Size / ep.Size}");
        if (options.Stage != ZeroStage.None)
            throw new NotSupportedException($"{group.Describe()}: expert parallelism (ep {ep.Size}) with ZeRO stage {(int)options.Stage} is not built: a dp-wide shard of the " +
                "parameters or optimizer state would mix different experts; train with --zero 0");
        if (options.OffloadOptimizer)
            throw new NotSupportedException($"{group.Describe()}: expert parallelism (ep {ep.Size}) with an offloaded optimizer is not built; train without --offload");
        return expertData;
    }

    /// <summary>The expert-data-parallel group over which expert gradients are summed (dp / ep ranks), or null without expert parallelism.</summary>
    public ProcessGroup? ExpertData { get; }

    private static (int[] Units, long[] Frontier) MapUnits(ParameterLayout model, ParameterLayout trained, ProcessGroup group)
    {
        int segments = model.Units.Count;
        var units = new int[segments];
        var frontier = new long[segments];
        if (ReferenceEquals(model, trained))
        {
            for (int s = 0; s < segments; s++) (units[s], frontier[s]) = (s, model.Units[s].Start);
            return (units, frontier);
        }
        Array.Fill(units, -1);
        int previous = -1;
        foreach (var u in trained.Units)
        {
            int s = model.Units.FirstOrDefault(m => m.Name == u.Name)?.Index ?? -1;
            if (s < 0 || s <= previous)
                throw new ArgumentException($"{group.Describe()}: trained unit '{u.Name}' is {(s < 0 ? "no unit of the model" : "out of the model's unit order")}; " +
                    "a trained layout other than the model's must name its units after the model's, in their order");
            units[s] = u.Index;
            previous = s;
        }
        long next = trained.Length;
        for (int s = segments - 1; s >= 0; s--)
        {
            if (units[s] >= 0) next = trained.Units[units[s]].Start;
            frontier[s] = next;
        }
        return (units, frontier);
    }

    /// <summary>The data-parallel group.</summary>
    public ProcessGroup Group { get; }

    /// <summary>
    /// How the trained parameters keep their F32 masters: <see cref="MasterWeights.Split"/> (BF16 values as the high halves,
    /// U16 low words beside them: <see cref="LowWords"/>) or <see cref="MasterWeights.Separate"/>.
    /// </summary>
    public MasterWeights MasterWeights { get; }

    ProcessGroup? IDataParallelism.Group => Group;

    /// <summary>Data-parallel settings.</summary>
    public DataParallelOptions Options { get; }

    /// <summary>The host backend of the offloaded optimizer state, or null.</summary>
    public IBackend? Host { get; }

    /// <summary>The arena layout (communication units and owned ranges).</summary>
    public ShardLayout Layout { get; }

    /// <summary>The rank's optimizer shard (set by the derived strategy's constructor).</summary>
    public ShardedAdamW Optimizer { get; private protected set; } = null!;

    /// <inheritdoc/>
    public long StepCount { get => Optimizer.StepCount; set => Optimizer.StepCount = value; }

    /// <inheritdoc/>
    public bool WeightsPending => _weightsPending;

    /// <inheritdoc/>
    public abstract bool ReducesEveryMicroBatch { get; }

    /// <summary>
    /// Bytes of every transient buffer this rank's communication has allocated and still holds (pooled or in use). The pool
    /// never frees during training, so after a step this is the peak.
    /// </summary>
    public long TransientBytes { get; private set; }

    /// <summary>The reduced gradient of an owned range (a view of the arena gradients, or of the gradient shard).</summary>
    public abstract Tensor Gradient(OwnedRange range);

    /// <summary>The values of an owned range in the model's dtype (a view of the arena's values, or of the value shard).</summary>
    public abstract Tensor Value(OwnedRange range);

    /// <summary>The F32 masters of an owned range on the device (mixed precision), or null when the device holds none (split masters among them).</summary>
    public abstract Tensor? Master(OwnedRange range);

    /// <summary>Split masters: the U16 low words of an owned range's masters (a view of the arena's, or of the low-word shard); else null.</summary>
    public abstract Tensor? LowWords(OwnedRange range);

    /// <inheritdoc/>
    public abstract void ZeroGrad();

    /// <inheritdoc/>
    public abstract void BeginMicroBatch(bool first, bool last);

    /// <inheritdoc/>
    public abstract void FinishGradients();

    /// <inheritdoc/>
    public void Step(double learningRate) => Optimizer.Step(learningRate);

    /// <inheritdoc/>
    public abstract void AfterUpdate();

    /// <inheritdoc/>
    public abstract void ReleaseAll();

    /// <inheritdoc/>
    public double LastGradNorm() => Optimizer.LastGradNorm();

    /// <inheritdoc/>
    public abstract int CollectivesPerStep(int accumulationSteps);

    /// <inheritdoc/>
    public abstract void BeforeForward(int segment);

    /// <inheritdoc/>
    public abstract void AfterForward(int segment);

    /// <inheritdoc/>
    public abstract void BeforeBackward(int segment);

    /// <inheritdoc/>
    public abstract void AfterBackward(int segment);

    /// <inheritdoc/>
    public void WriteWeights(Parameter parameter, ReadOnlySpan<double> values)
    {
        ArgumentNullException.ThrowIfNull(parameter);
        if (values.Length != parameter.NumElements)
            throw new ArgumentException($"{Group.Describe()}: {values.Length} values for parameter '{parameter.Name}' of {parameter.NumElements} elements");
        WriteWhole(parameter, values);
        var hostMasters = Optimizer.Masters;
        foreach (var r in Layout.Owned)
        {
            long lo = Math.Max(r.ArenaOffset, parameter.Offset), hi = Math.Min(r.ArenaOffset + r.Length, parameter.Offset + parameter.NumElements);
            if (lo >= hi) continue;
            var shape = new Shape((int)(hi - lo));
            var part = values.Slice((int)(lo - parameter.Offset), (int)(hi - lo));
            if (hostMasters is not null) HostValues.Write(Optimizer.Host!, part, hostMasters.Narrow(r.ShardOffset + (lo - r.ArenaOffset), shape));
            WriteOwned(r, lo, part);
        }
    }

    /// <inheritdoc/>
    public void MarkWeightsWritten() => _weightsPending = false;

    /// <summary>Writes a whole parameter where the rank keeps whole parameters (a full arena); nothing for ZeRO-3.</summary>
    private protected abstract void WriteWhole(Parameter parameter, ReadOnlySpan<double> values);

    /// <summary>Writes <paramref name="values"/> of arena elements [<paramref name="start"/>, + length) of owned range <paramref name="range"/> into the rank's device shards (ZeRO-3); nothing elsewhere.</summary>
    private protected abstract void WriteOwned(OwnedRange range, long start, ReadOnlySpan<double> values);

    /// <summary>
    /// Collective: for each communication unit in turn, <paramref name="ownedChunk"/> fills a transient device buffer of
    /// <see cref="ShardUnit.Chunk"/> elements of <paramref name="dtype"/> with this rank's chunk (padding zeroed), the
    /// chunks are all-gathered into a transient buffer of the whole unit, and <paramref name="consume"/> gets its first
    /// <see cref="ShardUnit.Length"/> elements (valid only during the call). Two unit-size buffers exist at a time, so the
    /// whole model is assembled without a full-size device buffer.
    /// </summary>
    public void GatherUnits(DType dtype, Action<ShardUnit, Tensor> ownedChunk, Action<ShardUnit, Tensor> consume)
    {
        ArgumentNullException.ThrowIfNull(ownedChunk);
        ArgumentNullException.ThrowIfNull(consume);
        var backend = Model.Backend;
        foreach (var unit in Layout.Units)
        {
            if (Layout.Shards == 1)
            {
                // Plain data parallelism: every rank owns every unit whole; there is nothing to gather.
                var whole = backend.Allocate(new Shape(checked((int)unit.Chunk)), dtype);
                try
                {
                    ownedChunk(unit, whole);
                    consume(unit, whole.Narrow(0, new Shape((int)unit.Length)));
                }
                finally
                {
                    backend.Synchronize();
                    whole.Storage.Dispose();
                }
                continue;
            }
            var input = backend.Allocate(new Shape(checked((int)unit.Chunk)), dtype);
            var output = backend.Allocate(new Shape(checked((int)(unit.Chunk * Layout.Shards))), dtype);
            try
            {
                ownedChunk(unit, input);
                Group.AllGather(input, output).Wait();
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

    /// <summary>
    /// Collective (every rank, same point): the rank's whole local model in its master values (the F32 masters of a BF16
    /// run, else the values), assembled on rank <paramref name="root"/>'s host as F32 in arena layout (Length elements) and
    /// null on the other ranks: what a checkpoint exports. Read from wherever the masters live (the host shard with
    /// offload, the device otherwise; split masters joined on their owner), one F32 all-gather per unit through unit-size
    /// transient buffers.
    /// </summary>
    public float[]? GatherMastersToHost(int root = 0) =>
        GatherToHost(MasterDType, root, (unit, chunk) =>
        {
            if (Optimizer.Offload is { } offload) offload.CopyMastersToDevice(unit.ShardStart, chunk);
            else CopyOwnedMasters(unit, chunk);
        });

    /// <summary>
    /// Collective, as <see cref="GatherMastersToHost"/> but in F64 on rank <paramref name="root"/> (null elsewhere): exact for F64
    /// and F32 masters, for trained layouts small enough to hold twice (LoRA adapters, whose checkpoints keep the masters exactly).
    /// </summary>
    public double[]? GatherMastersToHostF64(int root = 0) => GatherToHostF64(root, (unit, chunk) =>
    {
        if (Optimizer.Offload is { } offload) offload.CopyMastersToDevice(unit.ShardStart, chunk);
        else CopyOwnedMasters(unit, chunk);
    });

    /// <summary>
    /// Collective: the AdamW moments of the whole trained layout in arena layout, in F64 on rank <paramref name="root"/> (null
    /// elsewhere), assembled from every rank's shard (what a LoRA checkpoint keeps). Not for offloaded moments.
    /// </summary>
    public (double[] M, double[] V)? GatherMomentsToHostF64(int root = 0)
    {
        if (Optimizer.Offload is not null) throw new NotSupportedException($"{Group.Describe()}: the moments are offloaded to the host; gather them from there");
        var device = Model.Backend;
        var m = GatherToHostF64(root, (unit, chunk) => device.Copy(Optimizer.M.Narrow(unit.ShardStart, new Shape((int)unit.Chunk)), chunk));
        var v = GatherToHostF64(root, (unit, chunk) => device.Copy(Optimizer.V.Narrow(unit.ShardStart, new Shape((int)unit.Chunk)), chunk));
        return m is null ? null : (m, v!);
    }

    private double[]? GatherToHostF64(int root, Action<ShardUnit, Tensor> ownedChunk)
    {
        if (root < 0 || root >= Group.Size) throw new ArgumentOutOfRangeException(nameof(root), $"{Group.Describe()}: root {root} is outside the group");
        var device = Model.Backend;
        var full = Group.Rank == root ? new double[Trained.Length] : null;
        GatherUnits(MasterDType, ownedChunk, (unit, gathered) =>
        {
            if (full is null) return;
            var target = full.AsSpan((int)unit.Start, (int)unit.Length);
            if (gathered.DType == DType.F64) device.CopyToHost<double>(gathered, target);
            else { var f = device.ToArray<float>(gathered.DType == DType.F32 ? gathered : device.Contiguous(gathered, DType.F32)); for (int i = 0; i < f.Length; i++) target[i] = f[i]; }
        });
        return full;
    }

    /// <summary>Collective: the whole local model in the values the layers read (BF16 for a BF16 run), on rank <paramref name="root"/>'s host as F32, null elsewhere.</summary>
    public float[]? GatherValuesToHost(int root = 0) => GatherToHost(Model.DType, root, CopyOwnedValues);

    /// <summary>The element type the optimizer updates: F32 for 16-bit models, else the model's.</summary>
    public DType MasterDType => Model.DType is DType.BF16 or DType.F16 ? DType.F32 : Model.DType;

    /// <summary>Fills <paramref name="chunk"/> (Chunk elements, master dtype) with this rank's chunk of <paramref name="unit"/>'s masters, padding zeroed.</summary>
    private protected abstract void CopyOwnedMasters(ShardUnit unit, Tensor chunk);

    /// <summary>Fills <paramref name="chunk"/> (Chunk elements, model dtype) with this rank's chunk of <paramref name="unit"/>'s values, padding zeroed.</summary>
    private protected abstract void CopyOwnedValues(ShardUnit unit, Tensor chunk);

    /// <summary>Copies this rank's chunk of <paramref name="unit"/> from the arena-laid-out <paramref name="source"/> into <paramref name="chunk"/>, zeroing padding.</summary>
    private protected void CopyOwnedChunk(Tensor source, ShardUnit unit, Tensor chunk)
    {
        var device = Model.Backend;
        var (start, end) = Layout.OwnedSpan(unit);
        if (end > start) device.Copy(source.Narrow(start, new Shape((int)(end - start))), chunk.Narrow(0, new Shape((int)(end - start))));
        if (end - start < unit.Chunk) device.Fill(chunk.Narrow(end - start, new Shape((int)(unit.Chunk - (end - start)))), 0);
    }

    private float[]? GatherToHost(DType dtype, int root, Action<ShardUnit, Tensor> ownedChunk)
    {
        if (root < 0 || root >= Group.Size) throw new ArgumentOutOfRangeException(nameof(root), $"{Group.Describe()}: root {root} is outside the group");
        var device = Model.Backend;
        var full = Group.Rank == root ? new float[Trained.Length] : null;
        GatherUnits(dtype, ownedChunk, (unit, gathered) =>
        {
            if (full is null) return;
            var target = full.AsSpan((int)unit.Start, (int)unit.Length);
            switch (gathered.DType)
            {
                case DType.F32: device.CopyToHost<float>(gathered, target); break;
                case DType.F64: { var wide = device.ToArray<double>(gathered); for (int i = 0; i < wide.Length; i++) target[i] = (float)wide[i]; break; }
                case DType.BF16: { var low = device.ToArray<BFloat16>(gathered); for (int i = 0; i < low.Length; i++) target[i] = low[i].ToSingle(); break; }
                default: throw new NotSupportedException($"{Group.Describe()}: cannot gather {gathered.DType} parameters to the host");
            }
        });
        return full;
    }

    /// <summary>Starts the all-gather of <paramref name="unit"/>'s owned chunk of <paramref name="source"/> (arena layout).</summary>
    private protected (CollectiveHandle Handle, Tensor Input, Tensor Output) IssueGather(ShardUnit unit, Tensor source)
    {
        var backend = Model.Backend;
        var (start, end) = Layout.OwnedSpan(unit);
        var input = Rent(unit.Chunk, source.DType);
        if (end > start) backend.Copy(source.Narrow(start, new Shape((int)(end - start))), input.Narrow(0, new Shape((int)(end - start))));
        if (end - start < unit.Chunk) backend.Fill(input.Narrow(end - start, new Shape((int)(unit.Chunk - (end - start)))), 0);
        var output = Rent(unit.Chunk * Layout.Shards, source.DType);
        return (Group.AllGather(input, output), input, output);
    }

    /// <summary>Waits for <paramref name="op"/> and copies the gathered unit into <paramref name="destination"/> (arena layout).</summary>
    private protected void CompleteGather(ShardUnit unit, (CollectiveHandle Handle, Tensor Input, Tensor Output) op, Tensor destination)
    {
        op.Handle.Wait();
        var shape = new Shape((int)unit.Length);
        Model.Backend.Copy(op.Output.Narrow(0, shape), destination.Narrow(unit.Start, shape));
        Return(op.Input);
        Return(op.Output);
    }

    /// <summary>A pooled device buffer of <paramref name="elements"/> (allocated on first need, kept for reuse).</summary>
    private protected Tensor Rent(long elements, DType dtype)
    {
        if (_pool.TryGetValue((elements, dtype), out var stack) && stack.Count > 0) return stack.Pop();
        var buffer = Model.Backend.Allocate(new Shape(checked((int)elements)), dtype);
        TransientBytes += buffer.Storage.ByteLength;
        return buffer;
    }

    /// <summary>Returns a buffer from <see cref="Rent"/> to the pool.</summary>
    private protected void Return(Tensor buffer)
    {
        var key = (buffer.NumElements, buffer.DType);
        if (!_pool.TryGetValue(key, out var stack)) _pool[key] = stack = new Stack<Tensor>();
        stack.Push(buffer);
    }

    /// <summary>The (ShardLength / Alignment, Alignment) shape of the rank's shard buffers.</summary>
    private protected Shape ShardShape() => new(checked((int)Math.Max(Layout.ShardLength / ParameterLayout.Alignment, 1)), ParameterLayout.Alignment);
}
