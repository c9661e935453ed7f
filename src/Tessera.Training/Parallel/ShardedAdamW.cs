using Tessera.Distributed;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training.Optim;

namespace Tessera.Training.Parallel;

/// <summary>
/// AdamW over the arena ranges a rank owns (<see cref="ShardLayout.Owned"/>): moments exist only for
/// the rank's shard (all of the arena for plain data parallelism), the global gradient norm is the
/// all-reduced sum of every rank's shard sum of squares, and each owned range is one fused AdamW call.
/// <para>
/// Mixed precision (a BF16 arena with <see cref="ParameterArena.Masters"/>): the moments are F32 and the update reads
/// the reduced BF16 gradient, updates the owned range of the F32 masters and writes the BF16 values through
/// <c>lowPrecisionCopy</c>, exactly as the one-rank <see cref="AdamWOptimizer"/> does for the whole arena. Only the
/// owned ranges of <see cref="ParameterArena.Masters"/> stay current on a rank (ZeRO 1-3 share out the update, and the
/// stages all-gather the BF16 values the layers read, not the masters); <see cref="BucketedDataParallel.SynchronizeMasters"/>
/// makes them whole when the F32 weights are exported.
/// </para>
/// <para>
/// Split masters (<see cref="MasterWeights.Split"/>): no F32 master exists on the device; an owned range's master is its BF16
/// values (the high halves, what the stages gather) and a U16 low-word range beside them, and the update is
/// <see cref="IBackend.AdamWSplit"/>, which joins, runs AdamW's operations and splits, so masters and moments are bitwise those
/// of separate masters given the same gradients. Read such a master through <see cref="ReadMaster{T}"/> (a transient F32
/// range); <see cref="MasterOf"/> refuses.
/// </para>
/// <para>
/// With offload (<see cref="OffloadedAdamW"/>) the masters, the moments and a gradient copy of the shard live on a host
/// backend and the update runs there; the updated values are copied back into the device arena (BF16 under mixed
/// precision). The data-parallel trainer releases a BF16 arena's device masters under offload (the host copy is the only
/// one); <see cref="MasterOf"/> says where a range's master lives.
/// </para>
/// </summary>
public sealed class ShardedAdamW
{
    private readonly IBackend _device;
    private readonly ShardLayout _layout;
    private readonly Tensor? _wholeGradient;       // plain data parallelism: the whole reduced gradient arena (one sum of squares), else null
    private readonly ProcessGroup _group;
    private readonly Func<OwnedRange, Tensor> _gradient;
    private readonly Func<OwnedRange, Tensor> _value;      // arena dtype: what the layers read (the arena's values, or ZeRO-3's value shard)
    private readonly Func<OwnedRange, Tensor?> _master;    // F32 masters on the device, or null (F32/F64 arenas, offload, split masters)
    private readonly Func<OwnedRange, Tensor>? _lowWords;  // split masters: the U16 low words of an owned range; null otherwise
    private readonly Tensor _sumOfSquares;         // (1) master dtype (F32 under mixed precision), on the device
    private readonly OffloadedAdamW? _offload;
    private readonly GradientNormScope? _normScope;  // tensor parallelism: the counted elements and the tp group, or null

    /// <summary>
    /// Creates zeroed moments for the ranges <paramref name="layout"/> gives this rank, on <paramref name="device"/> in the
    /// master dtype of <paramref name="dtype"/> (F32 for 16-bit values), or takes the offloaded half's host state.
    /// <paramref name="gradient"/>, <paramref name="value"/> and <paramref name="master"/> return an owned range's reduced
    /// gradient, its values (what the layers read) and its device F32 masters (null: none), read at each use (ZeRO-3 keeps
    /// them in shards). <paramref name="wholeGradient"/>, for plain data parallelism (one shard), is the whole reduced
    /// gradient buffer, summed in one call as the one-device optimizer does; null sums range by range.
    /// <paramref name="lowWords"/>, for split masters (BF16 only, not offloaded), returns an owned range's U16 low words; the
    /// values are then the masters' high halves and <paramref name="master"/> must return null.
    /// </summary>
    public ShardedAdamW(IBackend device, DType dtype, ShardLayout layout, ProcessGroup group, AdamWOptions options,
        Func<OwnedRange, Tensor> gradient, Func<OwnedRange, Tensor> value, Func<OwnedRange, Tensor?> master,
        Tensor? wholeGradient = null, OffloadedAdamW? offload = null, GradientNormScope? normScope = null, Func<OwnedRange, Tensor>? lowWords = null)
    {
        if (lowWords is not null && (dtype != DType.BF16 || offload is not null))
            throw new ArgumentException(dtype != DType.BF16
                ? $"sharded AdamW: split masters need BF16 values (the masters' high halves), not {dtype}"
                : "sharded AdamW: split masters stay on the device; an offloaded optimizer keeps separate F32 masters on the host", nameof(lowWords));
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(gradient);
        ArgumentNullException.ThrowIfNull(value);
        ArgumentNullException.ThrowIfNull(master);
        _device = device;
        _layout = layout;
        _group = group;
        _gradient = gradient;
        _value = value;
        _master = master;
        _lowWords = lowWords;
        _wholeGradient = layout.Shards == 1 && normScope is null ? wholeGradient : null;
        _normScope = normScope;
        Options = options;
        var masterDType = dtype is DType.BF16 or DType.F16 ? DType.F32 : dtype;
        // The clipping factor is computed from this scalar on the device, in the dtype the update computes in
        // (the CUDA reductions write F32; an F64 arena keeps its norm in F64).
        _sumOfSquares = device.Zeros(new Shape(1), masterDType);
        if (offload is not null)
        {
            _offload = offload;
            M = offload.M;
            V = offload.V;
        }
        else
        {
            var shape = new Shape(checked((int)Math.Max(layout.ShardLength / ParameterLayout.Alignment, 1)), ParameterLayout.Alignment);
            M = device.Zeros(shape, masterDType);
            V = device.Zeros(shape, masterDType);
        }
    }

    /// <summary>Fixed hyper-parameters.</summary>
    public AdamWOptions Options { get; }

    /// <summary>The host backend of the offloaded state, or null.</summary>
    public IBackend? Host => _offload?.Host;

    /// <summary>The offloaded half of the optimizer, or null when the state stays on the device.</summary>
    public OffloadedAdamW? Offload => _offload;

    /// <summary>First moments of the shard (ShardLength / Alignment, Alignment) in the master dtype, laid out like the shard buffers; on <see cref="Host"/> when offloaded.</summary>
    public Tensor M { get; }

    /// <summary>Second moments of the shard, laid out like <see cref="M"/>.</summary>
    public Tensor V { get; }

    /// <summary>Whether the masters are split (<see cref="MasterWeights.Split"/>): BF16 values and U16 low words, no F32 master on the device.</summary>
    public bool SplitMasters => _lowWords is not null;

    /// <summary>Offload only: the master values of the shard on the host (F32 for a BF16 arena); null otherwise (the arena holds them).</summary>
    public Tensor? Masters => _offload?.Masters;

    /// <summary>Number of updates taken; the next update uses StepCount + 1 for bias correction.</summary>
    public long StepCount { get; set; }

    /// <summary>Collectives issued by the last <see cref="Step"/> (the norm all-reduce when sharded).</summary>
    public int CollectivesPerStep => _layout.Shards > 1 ? 1 : 0;   // on the data-parallel group (the tensor-parallel norm sum is on its own)

    /// <summary>
    /// Updates the owned ranges with learning rate <paramref name="learningRate"/>. The gradients must be
    /// reduced (and waited for). Sharded: one all-reduce of the gradient sum of squares, so every rank clips
    /// with the norm of the whole gradient, not of its shard.
    /// </summary>
    public void Step(double learningRate)
    {
        var backend = _device;
        backend.Fill(_sumOfSquares, 0);
        if (_wholeGradient is not null)
        {
            // Plain data parallelism: every rank holds the whole reduced gradient; one sum over the arena, as the one-rank optimizer does.
            backend.SumOfSquares(_wholeGradient, _sumOfSquares);
        }
        else
        {
            foreach (var r in _layout.Owned)
            {
                if (_normScope is null) backend.SumOfSquares(_gradient(r), _sumOfSquares);
                else _normScope.SumOfSquares(backend, r.ArenaOffset, _gradient(r), _sumOfSquares);
            }
            if (_layout.Shards > 1) _group.AllReduce(_sumOfSquares).Wait();
        }
        _normScope?.Reduce(_sumOfSquares);
        StepCount++;
        var clip = Options.MaxGradNorm > 0 ? _sumOfSquares : null;
        if (_offload is not null)
        {
            _offload.Update(_gradient, clip, r => StepFor(learningRate, r));
            return;
        }
        // Mixed precision: the F32 masters are updated and the BF16 values written beside them; otherwise the values are the masters.
        // Split masters: joined from the values and low words, updated with the same operations, split back.
        foreach (var r in _layout.Owned)
        {
            var shape = new Shape((int)r.Length);
            var value = _value(r);
            if (_lowWords is not null)
            {
                backend.AdamWSplit(value, _lowWords(r), _gradient(r), M.Narrow(r.ShardOffset, shape), V.Narrow(r.ShardOffset, shape),
                    StepFor(learningRate, r), clip);
                continue;
            }
            var master = _master(r);
            backend.AdamW(master ?? value, _gradient(r), M.Narrow(r.ShardOffset, shape), V.Narrow(r.ShardOffset, shape),
                StepFor(learningRate, r), clip, master is null ? null : value);
        }
    }

    /// <summary>
    /// The authoritative master values of an owned range and the backend that holds them: the host master shard when
    /// offloaded, else the arena's F32 masters (mixed precision) or values. Only owned ranges are current on a sharded rank.
    /// Split masters have no such tensor: use <see cref="ReadMaster{T}"/>.
    /// </summary>
    public (IBackend Backend, Tensor Values) MasterOf(OwnedRange range)
    {
        var shape = new Shape((int)range.Length);
        if (_offload is not null) return (_offload.Host, _offload.Masters.Narrow(range.ShardOffset, shape));
        if (_lowWords is not null)
            throw new InvalidOperationException($"{_group.Describe()}: the masters are split (MasterWeights.Split: BF16 values and U16 low words), so no tensor holds " +
                "an F32 master; read it through ShardedAdamW.ReadMaster (the strategy's WriteWeights writes it)");
        return (_device, _master(range) ?? _value(range));
    }

    /// <summary>
    /// Calls <paramref name="read"/> with the master values of elements [<paramref name="start"/>, + <paramref name="length"/>) of
    /// owned range <paramref name="range"/> (start relative to the range) and the backend that holds them: a view of
    /// <see cref="MasterOf"/>'s tensor, or for split masters a transient F32 tensor joined exactly from the values and low words.
    /// Valid during the call only.
    /// </summary>
    public T ReadMaster<T>(OwnedRange range, long start, int length, Func<IBackend, Tensor, T> read)
    {
        ArgumentNullException.ThrowIfNull(read);
        CheckWithin(range, start, length);
        if (_lowWords is null)
        {
            var (backend, masters) = MasterOf(range);
            return read(backend, masters.Narrow(start, new Shape(length)));
        }
        var shape = new Shape(length);
        return SplitMasterRange.Read(_device, _value(range).Narrow(start, shape), _lowWords(range).Narrow(start, shape), m => read(_device, m));
    }

    private void CheckWithin(OwnedRange range, long start, int length)
    {
        if (start < 0 || length < 0 || start + length > range.Length)
            throw new ArgumentOutOfRangeException(nameof(start), $"{_group.Describe()}: elements [{start}, {start + length}) are outside the owned range of {range.Length}");
    }

    /// <summary>The global gradient norm of the last step (reads the device: call only when logging).</summary>
    public double LastGradNorm() => Math.Sqrt(_device.ReadScalar(_sumOfSquares));

    /// <summary>
    /// Offload: copies the owned ranges of the arena's authoritative values (the F32 masters under mixed precision)
    /// into the host masters (after loading weights); a no-op when the state stays on the device.
    /// </summary>
    public void LoadMastersFromArena() => _offload?.LoadMastersFromArena();

    /// <summary>
    /// Offload: copies the host masters into the owned ranges of the arena's master buffer (<see cref="ParameterArena.Masters"/>,
    /// or the values of an F32/F64 arena); a no-op when the state stays on the device, where the update writes them itself.
    /// </summary>
    public void PublishMasters() => _offload?.PublishMasters();

    private AdamWStep StepFor(double learningRate, OwnedRange r) =>
        new(learningRate, Options.Beta1, Options.Beta2, Options.Epsilon, r.WeightDecay ? Options.WeightDecay : 0.0, StepCount, Options.MaxGradNorm);
}
