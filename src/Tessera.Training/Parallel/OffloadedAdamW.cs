using System.Runtime.InteropServices;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;

namespace Tessera.Training.Parallel;

/// <summary>
/// The host half of ZeRO-Offload for one rank: the master values and AdamW moments of the rank's shard live on a host
/// backend (a CpuBackend) in the arena's master dtype (F32 for a BF16 arena), and each update copies the reduced
/// gradient of the shard off the device in the arena's dtype (BF16 under mixed precision: half the bytes over the bus),
/// runs AdamW on the host, and copies the updated values back in the arena's dtype (the masters rounded to BF16, or the
/// F32/F64 masters themselves).
/// <para>
/// On a <see cref="CpuBackend"/> host (and a supported dtype pair, <see cref="CpuBackend.SupportsAdamWStaged"/>: every
/// arena but F16) the update of a piece is one fused pass, <see cref="CpuBackend.AdamWStaged"/>: it reads the gradient
/// straight from the staging bytes the device copied into, updates masters, m and v in place, and writes the values in
/// the arena's dtype over the gradient in the same staging bytes, which are copied back: per element of a BF16 arena
/// 2 + 12 bytes read and 12 + 2 written (28), against about 48 for the unfused sequence it replaces (staging into a BF16
/// tensor, a cast to an F32 gradient tensor, AdamW writing a BF16 copy, that copy into separate staging), whose results
/// it reproduces bit for bit. It runs vectorized over blocks of 64K elements on the host backend's threads. Another host
/// backend, or an F16 arena, takes the unfused sequence through <see cref="IBackend"/> ops (<see cref="FusedHostUpdate"/>
/// is false).
/// </para>
/// <para>
/// The shard is moved in pieces of at most <see cref="PieceElements"/> elements (never across a unit, so a piece is
/// contiguous on both sides), pipelined over two host staging slots: while the host updates piece i on a worker
/// thread, the calling thread copies the gradient of piece i + 1 off the device and the values of piece i - 1 back
/// (piece i - 1's values leave a slot before piece i + 1's gradient lands in it, which the fused update's in-place
/// staging relies on).
/// Every device call stays on the calling thread (a device backend and its context need not be thread-safe); the
/// worker only touches the host backend.
/// </para>
/// <para>
/// Not overlapped, because the <see cref="IBackend"/> cannot: <see cref="IBackend.CopyToHost{T}"/> waits for all
/// work queued on the device, so a gradient bucket cannot be copied off while the backward pass is still queued
/// (DeepSpeed streams buckets to the host during backward); the copies start once the gradients are reduced and
/// the global norm is known (it is needed for clipping before any update anyway).
/// </para>
/// Host memory: masters, m and v of the shard (3 x 4 bytes per shard element for F32 masters) plus two staging buffers
/// of one piece each (unfused: four, and two host gradient tensors of one piece). The device keeps no optimizer state;
/// the data-parallel strategy also releases a BF16 arena's own F32 master buffer (<see cref="ParameterArena.ReleaseMasters"/>)
/// once this copy is loaded, so the host masters are the only F32 copy (checkpoints read them here;
/// <see cref="PublishMasters"/> serves an arena that kept its masters).
/// </summary>
public sealed class OffloadedAdamW
{
    /// <summary>Default elements per device-host transfer: 2^22 (16 MiB of F32).</summary>
    public const long DefaultPieceElements = 1L << 22;

    /// <summary>Largest allowed piece (its staging must fit one managed array).</summary>
    public const long MaxPieceElements = 1L << 27;

    private readonly DType _dtype, _masterDType;                 // what the layers read (arena dtype), what the update computes in
    private readonly Func<Tensor?> _fullMasters;                 // the arena-laid-out authoritative values on the device, or null when none exists
    private readonly IBackend _device;
    private readonly List<Piece> _pieces = [];
    private readonly CpuBackend? _fused;                         // the host, when the fused update runs on it; null: the unfused IBackend sequence
    private readonly Tensor?[] _gradSlots = new Tensor?[2];      // (piece) master dtype, unfused only: the gradient of a piece on the host
    private readonly Tensor?[] _lowSlots = new Tensor?[2];       // (piece) arena dtype, unfused mixed precision only: gradients as copied, then the updated values
    private readonly byte[][] _toHost = new byte[2][];           // managed staging of device -> host copies (one piece)
    private readonly byte[][] _toDevice = new byte[2][];         // managed staging of host -> device copies (one piece); fused: the same arrays as _toHost
    private readonly Tensor _sumOfSquares;                       // (1) master dtype: the global gradient sum of squares on the host
    private readonly byte[] _scalarStaging = new byte[sizeof(double)];
    private readonly Func<OwnedRange, Tensor> _values;          // device values of an owned range (arena dtype), read at each update

    /// <summary>
    /// Allocates zeroed moments and masters on <paramref name="host"/> for the ranges <paramref name="layout"/> gives this
    /// rank. <paramref name="device"/> holds the model's values in <paramref name="dtype"/> (the update computes in F32 for a
    /// 16-bit dtype, else in it); <paramref name="values"/> returns the device values of an owned range that each update
    /// writes (a data-parallel arena's values, or ZeRO-3's value shard). <paramref name="fullMasters"/> returns the
    /// arena-laid-out buffer of authoritative values on the device (F32 masters, or the values of an F32/F64 arena), or null
    /// when none exists (ZeRO-3 shards, released masters); when <paramref name="loadMasters"/> the host masters are loaded
    /// from it now (<see cref="LoadMastersFromArena"/>).
    /// </summary>
    public OffloadedAdamW(IBackend device, DType dtype, ShardLayout layout, IBackend host, long pieceElements,
        Func<OwnedRange, Tensor> values, Func<Tensor?> fullMasters, bool loadMasters)
        : this(device, dtype, layout, host, pieceElements, values, fullMasters, loadMasters, fuse: true)
    {
    }

    /// <summary>
    /// The offloaded optimizer of the ranges <paramref name="layout"/> gives this rank of a whole
    /// <paramref name="arena"/>: each update writes the arena's values, and the host masters are loaded from the arena's
    /// authoritative values now.
    /// </summary>
    public OffloadedAdamW(ParameterArena arena, ShardLayout layout, IBackend host, long pieceElements = DefaultPieceElements)
        : this(arena, layout, host, pieceElements, fuse: true)
    {
    }

    /// <summary>As the arena constructor; <paramref name="fuse"/> false keeps the unfused sequence (tests compare the two bit for bit).</summary>
    internal OffloadedAdamW(ParameterArena arena, ShardLayout layout, IBackend host, long pieceElements, bool fuse)
        : this(NotSplit(arena).Backend, arena.DType, layout, host, pieceElements, r => arena.Values.Narrow(r.ArenaOffset, new Shape((int)r.Length)),
            () => arena.Masters ?? (arena.MastersReleased ? null : arena.Values), loadMasters: true, fuse)
    {
    }

    /// <summary>The arena, unless it keeps split masters, whose values are not the masters an offloaded update may read or overwrite.</summary>
    private static ParameterArena NotSplit(ParameterArena arena) => arena.MasterWeights == MasterWeights.Split
        ? throw new NotSupportedException("offloaded optimizer: the arena keeps split masters (MasterWeights.Split); offload needs MasterWeights.Separate")
        : arena;

    /// <summary>
    /// As the public constructor; <paramref name="fuse"/> false keeps the unfused sequence even on a CpuBackend host (the
    /// tests compare the two paths bit for bit).
    /// </summary>
    internal OffloadedAdamW(IBackend device, DType dtype, ShardLayout layout, IBackend host, long pieceElements,
        Func<OwnedRange, Tensor> values, Func<Tensor?> fullMasters, bool loadMasters, bool fuse)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(host);
        ArgumentNullException.ThrowIfNull(values);
        ArgumentNullException.ThrowIfNull(fullMasters);
        if (pieceElements < 1 || pieceElements > MaxPieceElements)
            throw new ArgumentOutOfRangeException(nameof(pieceElements), $"offloaded optimizer: pieceElements ({pieceElements}) must be in [1, {MaxPieceElements}]");
        _device = device;
        _dtype = dtype;
        _masterDType = dtype is DType.BF16 or DType.F16 ? DType.F32 : dtype;
        _values = values;
        _fullMasters = fullMasters;
        Host = host;
        PieceElements = pieceElements;
        _fused = fuse && host is CpuBackend cpu && CpuBackend.SupportsAdamWStaged(_masterDType, dtype) ? cpu : null;
        var shape = new Shape(checked((int)Math.Max(layout.ShardLength / ParameterLayout.Alignment, 1)), ParameterLayout.Alignment);
        Masters = host.Zeros(shape, _masterDType);
        M = host.Zeros(shape, _masterDType);
        V = host.Zeros(shape, _masterDType);
        _sumOfSquares = host.Zeros(new Shape(1), _masterDType);
        BuildPieces(layout.Owned);
        long largest = _pieces.Count == 0 ? 1 : _pieces.Max(p => p.Length);
        // Sized for the wider of the two dtypes: steps move the arena dtype, loading and publishing masters the master dtype.
        int stagingBytes = checked((int)(largest * Math.Max(dtype.SizeInBytes(), _masterDType.SizeInBytes())));
        for (int slot = 0; slot < 2; slot++)
        {
            if (_fused is null)
            {
                _gradSlots[slot] = host.Allocate(new Shape((int)largest), _masterDType);
                _lowSlots[slot] = _masterDType == dtype ? null : host.Allocate(new Shape((int)largest), dtype);
            }
            _toHost[slot] = new byte[stagingBytes];
            // Fused, a slot's values overwrite its gradient in place (no cache line of a second buffer to fetch before
            // writing it); safe because piece i's values are copied back before piece i + 2's gradient lands in the slot.
            _toDevice[slot] = _fused is null ? new byte[stagingBytes] : _toHost[slot];
        }
        if (loadMasters) LoadMastersFromArena();
    }

    /// <summary>The host backend that holds the state and runs the update.</summary>
    public IBackend Host { get; }

    /// <summary>
    /// Whether each piece is updated by the fused one-pass kernel (<see cref="CpuBackend.AdamWStaged"/>, a CpuBackend host
    /// and a supported dtype pair) rather than the unfused sequence of <see cref="IBackend"/> ops; the results are the same bits.
    /// </summary>
    public bool FusedHostUpdate => _fused is not null;

    /// <summary>Largest number of elements one device-host transfer moves.</summary>
    public long PieceElements { get; }

    /// <summary>Transfers per direction per update (pieces of the owned ranges).</summary>
    public int PieceCount => _pieces.Count;

    /// <summary>The shard's master values on the host (ShardLength / Alignment, Alignment), in the arena's master dtype, laid out like the shard buffers.</summary>
    public Tensor Masters { get; }

    /// <summary>First moments of the shard on the host, laid out like <see cref="Masters"/>.</summary>
    public Tensor M { get; }

    /// <summary>Second moments of the shard on the host, laid out like <see cref="Masters"/>.</summary>
    public Tensor V { get; }

    /// <summary>
    /// Copies the owned ranges of the arena's authoritative values (<see cref="ParameterArena.Masters"/> under mixed
    /// precision, never the BF16 copy; otherwise the values) into <see cref="Masters"/>: after loading weights.
    /// </summary>
    public void LoadMastersFromArena()
    {
        var source = _fullMasters() ?? throw new InvalidOperationException(
            "offloaded optimizer: the device holds no full F32 masters (ZeRO-3 shards, or masters released to the host); the host masters are authoritative (write them directly, as the trainer's weight loading and ShardedCheckpoint.Restore do)");
        foreach (var piece in _pieces)
        {
            var shape = new Shape((int)piece.Length);
            Download(_device, source.Narrow(piece.ArenaOffset, shape), _toHost[0]);
            Upload(Host, _toHost[0], Masters.Narrow(piece.ShardOffset, shape));
        }
    }

    /// <summary>
    /// Copies <see cref="Masters"/> into the owned ranges of the arena's master buffer (<see cref="ParameterArena.Masters"/>,
    /// or the values of an F32/F64 arena), which the update itself never writes under mixed precision: before exporting
    /// the F32 weights.
    /// </summary>
    public void PublishMasters()
    {
        var destination = _fullMasters() ?? throw new InvalidOperationException(
            "offloaded optimizer: the device holds no full F32 masters to publish to; gather the host masters instead (DataParallelism.GatherMastersToHost)");
        foreach (var piece in _pieces)
        {
            var shape = new Shape((int)piece.Length);
            Download(Host, Masters.Narrow(piece.ShardOffset, shape), _toDevice[0]);
            Upload(_device, _toDevice[0], destination.Narrow(piece.ArenaOffset, shape));
        }
    }

    /// <summary>
    /// Copies <see cref="Masters"/> [<paramref name="shardOffset"/>, + destination elements) into <paramref name="destination"/>,
    /// a device tensor of the master dtype (the transient input of a gather of the masters): one fill with zeros, then one
    /// staged copy per owned piece in the range. Elements outside the pieces are padding, which is zero in the host masters
    /// too (nothing writes there), so a rank that owns nothing of the range does one fill.
    /// </summary>
    public void CopyMastersToDevice(long shardOffset, Tensor destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (destination.DType != Masters.DType)
            throw new ArgumentException($"offloaded optimizer: the masters are {Masters.DType}, the destination is {destination.DType}", nameof(destination));
        long end = shardOffset + destination.NumElements;
        if (shardOffset < 0 || end > Masters.NumElements)
            throw new ArgumentOutOfRangeException(nameof(shardOffset), $"offloaded optimizer: [{shardOffset}, {end}) is outside the shard's {Masters.NumElements} elements");
        _device.Fill(destination, 0);
        foreach (var piece in _pieces)
        {
            long lo = Math.Max(piece.ShardOffset, shardOffset), hi = Math.Min(piece.ShardOffset + piece.Length, end);
            if (lo >= hi) continue;
            var shape = new Shape((int)(hi - lo));   // at most one piece: fits the staging slot
            Download(Host, Masters.Narrow(lo, shape), _toDevice[0]);
            Upload(_device, _toDevice[0], destination.Narrow(lo - shardOffset, shape));
        }
    }

    /// <summary>
    /// One AdamW update of the shard. <paramref name="gradient"/> returns the reduced device gradient of an owned
    /// range (arena dtype); <paramref name="sumOfSquares"/> is the device scalar of the global gradient sum of squares
    /// (already all-reduced), or null to update without clipping; <paramref name="step"/> gives each range's step
    /// (learning rate, decay, bias-correction count). Writes the updated values into the arena's value buffer.
    /// </summary>
    public void Update(Func<OwnedRange, Tensor> gradient, Tensor? sumOfSquares, Func<OwnedRange, AdamWStep> step)
    {
        ArgumentNullException.ThrowIfNull(gradient);
        ArgumentNullException.ThrowIfNull(step);
        if (sumOfSquares is not null)
        {
            Download(_device, sumOfSquares, _scalarStaging);
            Upload(Host, _scalarStaging, _sumOfSquares);
        }
        var clip = sumOfSquares is null ? null : _sumOfSquares;
        Task? running = null;
        try
        {
            for (int i = 0; i < _pieces.Count; i++)
            {
                int slot = i & 1;
                var piece = _pieces[i];
                // Device -> host copy of piece i, while the worker updates piece i - 1 (in the other slot).
                Download(_device, gradient(piece.AsRange()), _toHost[slot]);
                if (running is not null)
                {
                    var finished = running;
                    running = null;
                    finished.GetAwaiter().GetResult();
                }
                running = Task.Run(() => UpdateOnHost(piece, slot, clip, step));
                // Host -> device copy of piece i - 1's values, while the worker updates piece i.
                if (i > 0) UploadValues(_pieces[i - 1], 1 - slot);
            }
            if (running is not null)
            {
                var finished = running;
                running = null;
                finished.GetAwaiter().GetResult();
                UploadValues(_pieces[^1], (_pieces.Count - 1) & 1);
            }
        }
        finally
        {
            // A device error on this thread must not leave the worker writing buffers that the next call reuses.
            // WaitAny does not throw: the error already propagating is the one to report.
            if (running is not null) Task.WaitAny(running);
        }
    }

    private void UpdateOnHost(Piece piece, int slot, Tensor? clip, Func<OwnedRange, AdamWStep> step)
    {
        if (_fused is not null)
        {
            // One pass per part: the staged gradient in, masters and moments in place, the staged values out (over the gradient).
            int size = _dtype.SizeInBytes();
            foreach (var part in piece.Parts)
            {
                var s = new Shape((int)part.Length);
                int at = checked((int)((part.ShardOffset - piece.ShardOffset) * size)), bytes = checked((int)(part.Length * size));
                _fused.AdamWStaged(Masters.Narrow(part.ShardOffset, s), _toHost[slot].AsSpan(at, bytes), M.Narrow(part.ShardOffset, s),
                    V.Narrow(part.ShardOffset, s), _toDevice[slot].AsSpan(at, bytes), _dtype, step(part), clip);
            }
            return;
        }
        // Unfused: the staged gradient into a host tensor (widened under mixed precision), AdamW, the values into staging.
        var shape = new Shape((int)piece.Length);
        var grads = _gradSlots[slot]!.Narrow(0, shape);
        var low = _lowSlots[slot]?.Narrow(0, shape);
        if (low is null) Upload(Host, _toHost[slot], grads);
        else
        {
            // Mixed precision: the gradient arrives as BF16 (half the bytes over the bus) and is widened here.
            Upload(Host, _toHost[slot], low);
            Host.Copy(low, grads);
        }
        foreach (var part in piece.Parts)
        {
            var s = new Shape((int)part.Length);
            long at = part.ShardOffset - piece.ShardOffset;
            Host.AdamW(Masters.Narrow(part.ShardOffset, s), grads.Narrow(at, s), M.Narrow(part.ShardOffset, s), V.Narrow(part.ShardOffset, s),
                step(part), clip, low?.Narrow(at, s));
        }
        // The values go back in the arena's dtype: the BF16 copy AdamW just wrote, or the F32/F64 masters themselves.
        Download(Host, low ?? Masters.Narrow(piece.ShardOffset, shape), _toDevice[slot]);
    }

    private void UploadValues(Piece piece, int slot) => Upload(_device, _toDevice[slot], _values(piece.AsRange()));

    /// <summary>Cuts the owned ranges into pieces of at most PieceElements, merging neighbours of one unit.</summary>
    private void BuildPieces(IReadOnlyList<OwnedRange> owned)
    {
        foreach (var range in owned)
        {
            for (long done = 0; done < range.Length;)
            {
                long take = Math.Min(range.Length - done, PieceElements);
                var part = range with { ArenaOffset = range.ArenaOffset + done, ShardOffset = range.ShardOffset + done, Length = take };
                done += take;
                if (_pieces.Count > 0)
                {
                    var last = _pieces[^1];
                    if (last.Unit == part.Unit && last.ArenaOffset + last.Length == part.ArenaOffset && last.ShardOffset + last.Length == part.ShardOffset
                        && last.Length + take <= PieceElements)
                    {
                        last.Parts.Add(part);
                        _pieces[^1] = last with { Length = last.Length + take };
                        continue;
                    }
                }
                _pieces.Add(new Piece(part.Unit, part.ArenaOffset, part.ShardOffset, take, [part]));
            }
        }
    }

    /// <summary>Device -> managed staging in the tensor's own dtype; waits for the tensor's backend.</summary>
    private static void Download(IBackend backend, Tensor source, byte[] staging)
    {
        var bytes = staging.AsSpan(0, checked((int)(source.NumElements * source.DType.SizeInBytes())));
        switch (source.DType)
        {
            case DType.F32: backend.CopyToHost(source, MemoryMarshal.Cast<byte, float>(bytes)); break;
            case DType.F64: backend.CopyToHost(source, MemoryMarshal.Cast<byte, double>(bytes)); break;
            case DType.BF16: backend.CopyToHost(source, MemoryMarshal.Cast<byte, BFloat16>(bytes)); break;
            case DType.F16: backend.CopyToHost(source, MemoryMarshal.Cast<byte, Half>(bytes)); break;
            default: throw new NotSupportedException($"offloaded optimizer: cannot stage a {source.DType} tensor (F32, F64, BF16 or F16)");
        }
    }

    /// <summary>Managed staging -> tensor of the same dtype.</summary>
    private static void Upload(IBackend backend, byte[] staging, Tensor destination)
    {
        var bytes = staging.AsSpan(0, checked((int)(destination.NumElements * destination.DType.SizeInBytes())));
        switch (destination.DType)
        {
            case DType.F32: backend.CopyFromHost<float>(MemoryMarshal.Cast<byte, float>(bytes), destination); break;
            case DType.F64: backend.CopyFromHost<double>(MemoryMarshal.Cast<byte, double>(bytes), destination); break;
            case DType.BF16: backend.CopyFromHost<BFloat16>(MemoryMarshal.Cast<byte, BFloat16>(bytes), destination); break;
            case DType.F16: backend.CopyFromHost<Half>(MemoryMarshal.Cast<byte, Half>(bytes), destination); break;
            default: throw new NotSupportedException($"offloaded optimizer: cannot stage a {destination.DType} tensor (F32, F64, BF16 or F16)");
        }
    }

    /// <summary>
    /// A contiguous run of one unit's owned elements, moved by one copy each way: [ArenaOffset, +Length) of the arena,
    /// [ShardOffset, +Length) of the shard; <see cref="Parts"/> are its owned ranges (one decay setting each).
    /// </summary>
    private readonly record struct Piece(int Unit, long ArenaOffset, long ShardOffset, long Length, List<OwnedRange> Parts)
    {
        /// <summary>The piece as one owned range, to ask for its gradient view (the decay setting is unused there).</summary>
        public OwnedRange AsRange() => new(Unit, ArenaOffset, Length, ShardOffset, Parts[0].WeightDecay);
    }
}
