using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Tessera.Cuda.Compilation;
using Tessera.Cuda.Runtime;
using Tessera.Distributed;
using Tessera.Distributed.InProcess;
using Tessera.Tensors;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Cuda.Distributed;

/// <summary>
/// The CUDA flavour of the in-process process group: thread ranks of one process sharing one GPU, each with its own
/// <see cref="CudaBackend"/> (own stream, own allocator bookkeeping), whose collectives are device-to-device copies and a
/// reduction kernel (Kernels/collectives.cu) ordered by events. A test instrument, written for correctness and clarity; NCCL
/// stays the production path.
/// <para>
/// Ordering: as a rank issues an operation it records a "ready" event at the end of its compute stream
/// (<see cref="Issue"/>, on its own thread), so the operation reads what was enqueued before it. Once every participant
/// has arrived, the last one's thread enqueues the work on the group's own stream (one per group, as an NCCL communicator
/// has): a wait on every participant's ready event, the copies or the reduction, then a completion event. The handles'
/// Wait blocks the host on that event; WaitOnDevice makes the rank's compute stream wait for it. Reductions combine the
/// ranks in order 0 .. n-1, each operation rounded on its own, in F32 for F32/BF16/F16, F64 for F64, wrapping int for I32,
/// rounded once to the storage type: every rank gets the same bits, for F32, F64 and I32 those of
/// <see cref="InProcessProcessGroup"/>'s host reduction. A barrier orders too: it completes when every rank's work enqueued
/// before it has.
/// </para>
/// <para>Dispose it after the ranks have finished and before their backends (it waits for its streams).</para>
/// </summary>
public sealed unsafe class CudaInProcessTransport : InProcessTransport, IDisposable
{
    /// <summary>The most ranks one reduction combines (the kernel's pointer table).</summary>
    public const int MaxReductionRanks = 64;

    private const int Threads = 256;
    private readonly CudaBackend[] _backends;   // by global rank
    private readonly CudaDevice _device;
    private readonly KernelLibrary _kernels;
    private readonly ConcurrentDictionary<string, GroupChannel> _channels = new(StringComparer.Ordinal);
    private readonly ConcurrentBag<CudaEvent> _freeReadyEvents = [];
    private readonly List<CudaEvent> _readyEvents = [];
    private readonly Lock _lock = new();
    private bool _disposed;

    /// <summary>A transport for the world whose global rank r computes on <paramref name="backends"/>[r] (all on one GPU).</summary>
    public CudaInProcessTransport(IReadOnlyList<CudaBackend> backends)
    {
        ArgumentNullException.ThrowIfNull(backends);
        if (backends.Count == 0) throw new ArgumentException("the CUDA in-process transport needs at least one rank's backend", nameof(backends));
        int ordinal = backends[0].CudaDevice.Ordinal;
        for (int r = 0; r < backends.Count; r++)
        {
            if (backends[r] is null) throw new ArgumentNullException(nameof(backends), $"rank {r}'s backend is null");
            if (backends[r].CudaDevice.Ordinal != ordinal)
                throw new ArgumentException($"rank {r}'s backend is on GPU {backends[r].CudaDevice.Ordinal}, rank 0's on GPU {ordinal}: the in-process CUDA group shares one GPU (use NCCL across GPUs)", nameof(backends));
            for (int q = 0; q < r; q++)
                if (ReferenceEquals(backends[q], backends[r]))
                    throw new ArgumentException($"ranks {q} and {r} share one backend; each rank needs its own (its own stream)", nameof(backends));
        }
        _backends = [.. backends];
        _device = CudaDevice.Open(ordinal);
        _kernels = new KernelLibrary(_device, backends[0].KernelCache);
    }

    /// <summary>Number of ranks (backends) of the world.</summary>
    public int WorldSize => _backends.Length;

    /// <summary>Global rank <paramref name="rank"/>'s backend.</summary>
    public CudaBackend Backend(int rank) => _backends[rank];

    /// <inheritdoc/>
    public override bool CanReduce(DType dtype, ReduceOp op) =>
        dtype is DType.F32 or DType.BF16 or DType.F16 or DType.F64 || (dtype is DType.I32 && op != ReduceOp.Average);

    /// <inheritdoc/>
    /// <remarks>Records a ready event at the current end of the rank's compute stream.</remarks>
    public override IDisposable? Issue(int globalRank, CollectiveKind kind)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var backend = _backends[globalRank];
        if (!_freeReadyEvents.TryTake(out var ready))
        {
            ready = new CudaEvent(_device, timing: false);
            lock (_lock) _readyEvents.Add(ready);
        }
        backend.CudaDevice.MakeCurrent();
        ready.Record(backend.Stream);
        return new ReadyNote(this, ready);
    }

    /// <inheritdoc/>
    public override IDeviceEvent? Execute(InProcessOperation operation)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var channel = _channels.GetOrAdd(operation.GroupName + "|" + string.Join(",", operation.GlobalRanks), _ => new GroupChannel(_device));
        var cs = operation.Contributions;
        // Resolve every pointer before enqueueing anything, so a bad tensor fails the operation with nothing half done.
        var work = Plan(operation, cs);
        lock (channel)
        {
            _device.MakeCurrent();
            foreach (var c in cs) channel.Stream.Wait(((ReadyNote)c.Token!).Event);
            work.Enqueue(channel.Stream);
            return channel.Completions.Record();
        }
    }

    /// <inheritdoc/>
    /// <remarks>The rank's compute stream waits for the completion event on the device; the host does not wait.</remarks>
    public override void OrderComputeAfter(int globalRank, IDeviceEvent done)
    {
        if (done is not CudaCompletionEvent completion)
            throw new ArgumentException($"the event ({done.GetType().Name}) did not come from this transport", nameof(done));
        var backend = _backends[globalRank];
        backend.CudaDevice.MakeCurrent();
        completion.OrderBefore(backend.Stream);
    }

    /// <summary>Waits for every group's stream, then destroys the streams, events and kernel modules.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var channel in _channels.Values) channel.Dispose();
        _channels.Clear();
        lock (_lock)
        {
            foreach (var e in _readyEvents) e.Dispose();
            _readyEvents.Clear();
        }
        _kernels.Dispose();
        _device.Dispose();
    }

    /// <summary>What to enqueue for <paramref name="operation"/>, with every pointer resolved and checked.</summary>
    private Work Plan(InProcessOperation operation, IReadOnlyList<Contribution> cs)
    {
        var first = cs[0];
        string where = $"{operation.Label} in group '{operation.GroupName}'";
        switch (first.Kind)
        {
            case CollectiveKind.Barrier:
                return new Work(where);
            case CollectiveKind.AllReduce:
            case CollectiveKind.ReduceScatter:
            {
                if (cs.Count > MaxReductionRanks)
                    throw new NotSupportedException($"{operation.Label} in group '{operation.GroupName}': {cs.Count} ranks; the device reduction combines at most {MaxReductionRanks}");
                var table = new RankPointers();
                for (int r = 0; r < cs.Count; r++)
                {
                    table.In[r] = Pointer(operation, cs[r], cs[r].Input!, "input");
                    table.Out[r] = Pointer(operation, cs[r], cs[r].Output!, "output");
                }
                long total = first.Input!.NumElements;
                long chunk = first.Kind == CollectiveKind.ReduceScatter ? first.Output!.NumElements : 0;
                int ranks = cs.Count, op = (int)first.Op;
                string kernel = "reduce_ranks_" + first.Input.DType switch
                {
                    DType.F32 => "f32",
                    DType.BF16 => "bf16",
                    DType.F16 => "f16",
                    DType.F64 => "f64",
                    DType.I32 => "i32",
                    var other => throw new NotSupportedException($"{operation.Label}: reduction over {other}"),
                };
                return new Work(where)
                {
                    Kernel = kernel, Function = _kernels.Module("collectives.cu").Function(kernel), Table = table, Ranks = ranks,
                    Total = total, Chunk = chunk, Op = op,
                    Grid = (uint)Math.Clamp((total + Threads - 1) / Threads, 1, (long)_device.MultiprocessorCount * 32),
                };
            }
            case CollectiveKind.AllGather:
            {
                long bytes = Bytes(first.Input!);
                var copies = new List<(ulong Destination, ulong Source)>();
                foreach (var destination in cs)
                {
                    ulong output = Pointer(operation, destination, destination.Output!, "output");
                    foreach (var source in cs)
                        copies.Add((output + (ulong)(source.Rank * bytes), Pointer(operation, source, source.Input!, "input")));
                }
                return new Work(where) { Copies = copies, Bytes = bytes };
            }
            case CollectiveKind.Broadcast:
            {
                var root = cs.Single(c => c.Rank == first.Root);
                ulong source = Pointer(operation, root, root.Input!, "tensor");
                long bytes = Bytes(root.Input!);
                var copies = cs.Where(c => c.Rank != root.Rank).Select(c => (Pointer(operation, c, c.Output!, "tensor"), source)).ToList();
                return new Work(where) { Copies = copies, Bytes = bytes };
            }
            case CollectiveKind.Send:
            case CollectiveKind.Recv:
            {
                var send = cs.Single(c => c.Kind == CollectiveKind.Send);
                var recv = cs.Single(c => c.Kind == CollectiveKind.Recv);
                long bytes = Bytes(send.Input!);
                var copies = new List<(ulong, ulong)> { (Pointer(operation, recv, recv.Output!, "tensor"), Pointer(operation, send, send.Input!, "tensor")) };
                return new Work(where) { Copies = copies, Bytes = bytes };
            }
            case CollectiveKind.AllToAll:
                throw new NotSupportedException($"{operation.Label} in group '{operation.GroupName}': the device in-process transport has no all-to-all yet " +
                    "(its copies are of one size); use the host transport or NCCL for expert parallelism");
            default:
                throw new NotSupportedException($"{operation.Label}: {first.Kind} is not an operation of the in-process group");
        }
    }

    private static long Bytes(Tensor t) => t.NumElements * t.DType.SizeInBytes();

    /// <summary>One operation's device work: a reduction launch, or device-to-device copies of <see cref="Bytes"/> each, or nothing (a barrier).</summary>
    private sealed class Work(string where)
    {
        public string? Kernel;
        public IntPtr Function;
        public RankPointers Table;
        public int Ranks, Op;
        public long Total, Chunk;
        public uint Grid;
        public List<(ulong Destination, ulong Source)>? Copies;
        public long Bytes;

        public void Enqueue(CudaStream stream)
        {
            if (Kernel is not null && Total > 0)
            {
                var table = Table;
                int ranks = Ranks, op = Op;
                long total = Total, chunk = Chunk;
                void** args = stackalloc void*[] { &table, &ranks, &total, &chunk, &op };
                Check(cuLaunchKernel(Function, Grid, 1, 1, Threads, 1, 1, 0, stream.Handle, args, null), "cuLaunchKernel",
                    $"{Kernel} for {where} ({ranks} ranks, {total} elements)");
            }
            if (Copies is not null && Bytes > 0)
                foreach (var (destination, source) in Copies)
                    Check(cuMemcpyDtoDAsync(destination, source, (nuint)Bytes, stream.Handle), "cuMemcpyDtoDAsync", where);
        }
    }

    /// <summary>The device address of a participant's tensor, which must live on that rank's own backend.</summary>
    private ulong Pointer(InProcessOperation operation, Contribution c, Tensor tensor, string what)
    {
        int global = operation.GlobalRanks[c.Rank];
        var backend = _backends[global];
        if (!ReferenceEquals(tensor.Backend, backend))
            throw new ArgumentException(
                $"{operation.Label} in group '{operation.GroupName}': rank {c.Rank} (global rank {global}) passed a {what} {tensor.Shape} that does not live on its own CUDA backend");
        return (ulong)(long)backend.DevicePointer(tensor);
    }

    /// <summary>collectives.cu's RankPointers, field for field.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct RankPointers
    {
        public Pointers In;
        public Pointers Out;
    }

    [System.Runtime.CompilerServices.InlineArray(MaxReductionRanks)]
    private struct Pointers
    {
        private ulong _element;
    }

    /// <summary>A rank's ready event for one operation, back to the pool once the operation no longer needs it.</summary>
    private sealed class ReadyNote(CudaInProcessTransport owner, CudaEvent ready) : IDisposable
    {
        private int _released;

        public CudaEvent Event => ready;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0 && !owner._disposed) owner._freeReadyEvents.Add(ready);
        }
    }

    /// <summary>One group's stream (its operations run in order on it, as an NCCL communicator's do) and its completion events.</summary>
    private sealed class GroupChannel : IDisposable
    {
        public GroupChannel(CudaDevice device)
        {
            Stream = new CudaStream(device);
            Completions = new CudaCompletionEvents(device, Stream);
        }

        public CudaStream Stream { get; }

        public CudaCompletionEvents Completions { get; }

        public void Dispose()
        {
            Completions.Dispose();
            Stream.Dispose();
        }
    }
}
