using Tessera.Tensors;

namespace Tessera.Distributed.Nccl;

/// <summary>
/// A process group over an NCCL communicator: one process per GPU, operations enqueued on the
/// caller's communication stream (<see cref="IDeviceBufferAccess"/>). Create the world group from
/// a unique id that rank 0 made with <see cref="CreateUniqueId"/> and shared (TcpRendezvous), then
/// sub-groups with <see cref="Split"/>. Every NCCL status is checked; errors name the call and NCCL's
/// error text. Reductions: F32, F64, BF16, F16, I32 (Average: floating point only).
/// </summary>
public sealed class NcclProcessGroup : ProcessGroup
{
    private readonly Dictionary<int, long> _sent = [];
    private readonly Dictionary<int, long> _received = [];
    private IntPtr _comm;
    private bool _aborted;
    private readonly List<NcclHandle> _batched = [];   // issued since the outermost GroupStart
    private int _batchDepth;
    private Tensor? _barrierScratch; // (1) F32

    private NcclProcessGroup(string name, int rank, IReadOnlyList<int> globalRanks, TimeSpan timeout, IntPtr comm, IDeviceBufferAccess access)
        : base(name, rank, globalRanks, timeout)
    {
        _comm = comm;
        Access = access;
    }

    /// <summary>Device pointers and the stream, from the caller's GPU backend.</summary>
    public IDeviceBufferAccess Access { get; }

    /// <summary>True when libnccl.so.2 can be loaded on this machine.</summary>
    public static bool IsAvailable()
    {
        try { NcclNative.EnsureLoaded(); return true; }
        catch (NcclException) { return false; }
    }

    /// <summary>NCCL's version code (e.g. 22703 for 2.27.3).</summary>
    public static unsafe int Version()
    {
        NcclNative.EnsureLoaded();
        int version;
        CheckStatus(NcclNative.ncclGetVersion(&version), "ncclGetVersion", "");
        return version;
    }

    /// <summary>A new NCCL unique id (128 bytes); rank 0 makes it and sends it to every rank.</summary>
    public static unsafe byte[] CreateUniqueId()
    {
        NcclNative.EnsureLoaded();
        NcclUniqueId id;
        CheckStatus(NcclNative.ncclGetUniqueId(&id), "ncclGetUniqueId", "");
        return new ReadOnlySpan<byte>(id.Internal, NcclUniqueId.Size).ToArray();
    }

    /// <summary>
    /// Joins the communicator of <paramref name="size"/> ranks identified by <paramref name="uniqueId"/>
    /// as <paramref name="rank"/> (ncclCommInitRank; blocks until every rank has joined, so run the
    /// rendezvous first). The caller's current CUDA device must already be this rank's GPU.
    /// </summary>
    public static unsafe NcclProcessGroup Create(string name, int rank, int size, ReadOnlySpan<byte> uniqueId,
        IDeviceBufferAccess access, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(access);
        if (uniqueId.Length != NcclUniqueId.Size)
            throw new ArgumentException($"NCCL unique id must be {NcclUniqueId.Size} bytes, got {uniqueId.Length}; pass the bytes rank 0 got from CreateUniqueId", nameof(uniqueId));
        if (size < 1 || rank < 0 || rank >= size)
            throw new ArgumentOutOfRangeException(nameof(rank), $"NCCL group '{name}': rank {rank} is outside [0, {size})");
        NcclNative.EnsureLoaded();
        NcclUniqueId id;
        uniqueId.CopyTo(new Span<byte>(id.Internal, NcclUniqueId.Size));
        IntPtr comm;
        CheckStatus(NcclNative.ncclCommInitRank(&comm, size, id, rank), "ncclCommInitRank", $" (group '{name}', rank {rank} of {size})");
        return new NcclProcessGroup(name, rank, Enumerable.Range(0, size).ToArray(), timeout, comm, access);
    }

    /// <summary>
    /// This rank's member of a sub-group over <paramref name="groupRanks"/> (ranks of this group, in
    /// the new group's rank order), by ncclCommSplit. Collective: every rank of this group must call
    /// Split, in the same order, each with the ranks of its own sub-group.
    /// </summary>
    public unsafe NcclProcessGroup Split(string name, IReadOnlyList<int> groupRanks)
    {
        ArgumentNullException.ThrowIfNull(groupRanks);
        int key = groupRanks.ToList().IndexOf(Rank);
        if (key < 0)
            throw new ArgumentException($"Split of {Describe()} into '{name}': this rank is not in ({string.Join(", ", groupRanks)})", nameof(groupRanks));
        IntPtr comm;
        // Color: the smallest member, identical for every member and distinct between disjoint groups.
        Check(NcclNative.ncclCommSplit(Comm, groupRanks.Min(), key, &comm, IntPtr.Zero), "ncclCommSplit", $" ({Describe()} into '{name}')");
        return new NcclProcessGroup(name, key, groupRanks.Select(r => GlobalRanks[r]).ToArray(), Timeout, comm, Access);
    }

    /// <summary>Starts a batch of operations issued together (ncclGroupStart): pair Sends and Recvs between it and <see cref="GroupEnd"/>.</summary>
    public void GroupStart()
    {
        Check(NcclNative.ncclGroupStart(), "ncclGroupStart", $" ({Describe()})");
        _batchDepth++;
    }

    /// <summary>
    /// Issues the batch started by <see cref="GroupStart"/> (ncclGroupEnd). NCCL enqueues a batch's operations only here, so
    /// their handles' end event is recorded here too, after the whole batch.
    /// </summary>
    public void GroupEnd()
    {
        if (_batchDepth == 0) throw new InvalidOperationException($"GroupEnd in NCCL {Describe()} without a GroupStart");
        Check(NcclNative.ncclGroupEnd(), "ncclGroupEnd", $" ({Describe()})");
        if (--_batchDepth > 0 || _batched.Count == 0) return;
        var done = Access.RecordCommunication();
        foreach (var handle in _batched) handle.Issued(done);
        _batched.Clear();
    }

    /// <inheritdoc/>
    protected override void BeginBatch() => GroupStart();

    /// <inheritdoc/>
    protected override void EndBatch() => GroupEnd();

    /// <summary>The handle of an operation just enqueued: its end is an event recorded now, or at GroupEnd inside a batch.</summary>
    private NcclHandle Issued(CollectiveKind kind, long number)
    {
        if (_batchDepth == 0) return new NcclHandle(this, kind, number, Access.RecordCommunication());
        var handle = new NcclHandle(this, kind, number, null);
        _batched.Add(handle);
        return handle;
    }

    /// <summary>Aborts the communicator (ncclCommAbort): pending operations stop; the group is unusable afterwards.</summary>
    public void Abort()
    {
        if (_comm == IntPtr.Zero) return;
        NcclNative.ncclCommAbort(_comm);
        _comm = IntPtr.Zero;
        _aborted = true;
    }

    /// <summary>Destroys the communicator (ncclCommDestroy) after its pending work.</summary>
    public override void Dispose()
    {
        _barrierScratch?.Storage.Dispose();
        _barrierScratch = null;
        if (_comm != IntPtr.Zero)
        {
            var comm = _comm;
            _comm = IntPtr.Zero;
            Check(NcclNative.ncclCommDestroy(comm), "ncclCommDestroy", $" ({Describe()})");
        }
        base.Dispose();
    }

    /// <inheritdoc/>
    protected override bool CanReduce(DType dtype, ReduceOp op) =>
        dtype is DType.F32 or DType.F64 or DType.BF16 or DType.F16 || (dtype is DType.I32 && op != ReduceOp.Average);

    /// <inheritdoc/>
    protected override CollectiveHandle AllReduceCore(Tensor tensor, ReduceOp op, long sequenceNumber)
    {
        Access.OrderCommunicationAfterCompute();
        var p = Access.DevicePointer(tensor);
        var (type, count) = Elements(tensor);
        Check(NcclNative.ncclAllReduce(p, p, count, type, RedOp(op), Comm, Access.CommunicationStream), "ncclAllReduce", Where(CollectiveKind.AllReduce, sequenceNumber));
        return Issued(CollectiveKind.AllReduce, sequenceNumber);
    }

    /// <inheritdoc/>
    protected override CollectiveHandle ReduceScatterCore(Tensor input, Tensor output, ReduceOp op, long sequenceNumber)
    {
        Access.OrderCommunicationAfterCompute();
        var (type, count) = Elements(output);
        Check(NcclNative.ncclReduceScatter(Access.DevicePointer(input), Access.DevicePointer(output), count, type, RedOp(op), Comm, Access.CommunicationStream),
            "ncclReduceScatter", Where(CollectiveKind.ReduceScatter, sequenceNumber));
        return Issued(CollectiveKind.ReduceScatter, sequenceNumber);
    }

    /// <inheritdoc/>
    protected override CollectiveHandle AllGatherCore(Tensor input, Tensor output, long sequenceNumber)
    {
        Access.OrderCommunicationAfterCompute();
        var (type, count) = Elements(input);
        Check(NcclNative.ncclAllGather(Access.DevicePointer(input), Access.DevicePointer(output), count, type, Comm, Access.CommunicationStream),
            "ncclAllGather", Where(CollectiveKind.AllGather, sequenceNumber));
        return Issued(CollectiveKind.AllGather, sequenceNumber);
    }

    /// <inheritdoc/>
    protected override CollectiveHandle BroadcastCore(Tensor tensor, int root, long sequenceNumber)
    {
        Access.OrderCommunicationAfterCompute();
        var p = Access.DevicePointer(tensor);
        var (type, count) = Elements(tensor);
        Check(NcclNative.ncclBroadcast(p, p, count, type, root, Comm, Access.CommunicationStream), "ncclBroadcast", Where(CollectiveKind.Broadcast, sequenceNumber));
        return Issued(CollectiveKind.Broadcast, sequenceNumber);
    }

    /// <inheritdoc/>
    /// <remarks>One ncclGroupStart/ncclGroupEnd of an ncclSend and an ncclRecv per peer with rows to move (itself included, which
    /// NCCL copies), at row offsets of the two buffers; zero-size splits issue nothing. The handle's event is recorded after the group.</remarks>
    protected override CollectiveHandle AllToAllCore(Tensor input, Tensor output, int[] inputSplits, int[] outputSplits, long sequenceNumber)
    {
        Access.OrderCommunicationAfterCompute();
        var (type, _) = Elements(input);
        long rowBytes = RowElements(input) * input.DType.SizeInBytes();
        nuint rowCount = (nuint)RowElements(input);
        string where = Where(CollectiveKind.AllToAll, sequenceNumber);
        GroupStart();
        NcclHandle handle;
        try
        {
            long sent = 0, received = 0;
            for (int peer = 0; peer < Size; peer++)
            {
                if (inputSplits[peer] > 0)
                    Check(NcclNative.ncclSend(Access.DevicePointer(input) + (nint)(sent * rowBytes), (nuint)inputSplits[peer] * rowCount, type, peer, Comm,
                        Access.CommunicationStream), "ncclSend (all-to-all)", where);
                if (outputSplits[peer] > 0)
                    Check(NcclNative.ncclRecv(Access.DevicePointer(output) + (nint)(received * rowBytes), (nuint)outputSplits[peer] * rowCount, type, peer, Comm,
                        Access.CommunicationStream), "ncclRecv (all-to-all)", where);
                sent += inputSplits[peer];
                received += outputSplits[peer];
            }
            handle = Issued(CollectiveKind.AllToAll, sequenceNumber);
        }
        finally
        {
            GroupEnd();
        }
        return handle;
    }

    /// <inheritdoc/>
    protected override CollectiveHandle BarrierCore(long sequenceNumber)
    {
        Access.OrderCommunicationAfterCompute();
        _barrierScratch ??= Access.Backend.Allocate(new Shape(1), DType.F32);
        var p = Access.DevicePointer(_barrierScratch);
        Check(NcclNative.ncclAllReduce(p, p, 1, NcclDataType.Float32, NcclRedOp.Sum, Comm, Access.CommunicationStream), "ncclAllReduce (barrier)", Where(CollectiveKind.Barrier, sequenceNumber));
        return Issued(CollectiveKind.Barrier, sequenceNumber);
    }

    /// <inheritdoc/>
    protected override CollectiveHandle SendCore(Tensor tensor, int peer)
    {
        Access.OrderCommunicationAfterCompute();
        long number = _sent[peer] = _sent.GetValueOrDefault(peer) + 1;
        var (type, count) = Elements(tensor);
        Check(NcclNative.ncclSend(Access.DevicePointer(tensor), count, type, peer, Comm, Access.CommunicationStream), "ncclSend", $" (message #{number} from rank {Rank} to rank {peer} in group '{Name}')");
        return Issued(CollectiveKind.Send, number);
    }

    /// <inheritdoc/>
    protected override CollectiveHandle RecvCore(Tensor tensor, int peer)
    {
        Access.OrderCommunicationAfterCompute();
        long number = _received[peer] = _received.GetValueOrDefault(peer) + 1;
        var (type, count) = Elements(tensor);
        Check(NcclNative.ncclRecv(Access.DevicePointer(tensor), count, type, peer, Comm, Access.CommunicationStream), "ncclRecv", $" (message #{number} from rank {peer} to rank {Rank} in group '{Name}')");
        return Issued(CollectiveKind.Recv, number);
    }

    /// <summary>Throws when NCCL reports an asynchronous error (a peer failed, a network error); aborts the communicator first.</summary>
    internal unsafe void ThrowIfAsyncError(CollectiveKind kind, long sequenceNumber)
    {
        if (_aborted) throw new NcclException($"{kind} #{sequenceNumber} in NCCL {Describe()}: the communicator was aborted; create new process groups to continue");
        NcclResult error;
        Check(NcclNative.ncclCommGetAsyncError(_comm, &error), "ncclCommGetAsyncError", $" ({Describe()})");
        if (error is NcclResult.Success or NcclResult.InProgress) return;
        string? detail = NcclNative.LastError(_comm);
        Abort();
        throw new NcclException($"{kind} #{sequenceNumber} in NCCL {Describe()} failed asynchronously: {error} ({NcclNative.ErrorString(error)})" +
            (detail is null ? "" : $": {detail}") + "; the communicator was aborted");
    }

    private IntPtr Comm => _comm != IntPtr.Zero ? _comm
        : throw new InvalidOperationException($"NCCL {Describe()} was {(_aborted ? "aborted" : "disposed")}; create new process groups to continue");

    private string Where(CollectiveKind kind, long sequenceNumber) => $" ({kind} #{sequenceNumber} in {Describe()})";

    private static (NcclDataType Type, nuint Count) Elements(Tensor t) => t.DType switch
    {
        DType.F32 => (NcclDataType.Float32, (nuint)t.NumElements),
        DType.F64 => (NcclDataType.Float64, (nuint)t.NumElements),
        DType.BF16 => (NcclDataType.Bfloat16, (nuint)t.NumElements),
        DType.F16 => (NcclDataType.Float16, (nuint)t.NumElements),
        DType.I32 => (NcclDataType.Int32, (nuint)t.NumElements),
        DType.I8 => (NcclDataType.Int8, (nuint)t.NumElements),
        DType.F8E4M3 => (NcclDataType.Uint8, (nuint)t.NumElements),     // moved as bytes; never reduced
        DType.U16 => (NcclDataType.Uint8, (nuint)(2 * t.NumElements)), // moved as bytes; never reduced
        _ => throw new NotSupportedException($"NCCL has no type for {t.DType}"),
    };

    private static NcclRedOp RedOp(ReduceOp op) => op switch
    {
        ReduceOp.Sum => NcclRedOp.Sum,
        ReduceOp.Average => NcclRedOp.Avg,
        ReduceOp.Max => NcclRedOp.Max,
        _ => throw new ArgumentOutOfRangeException(nameof(op), op, "unknown reduce op"),
    };

    private void Check(NcclResult result, string call, string where)
    {
        if (result is NcclResult.Success or NcclResult.InProgress) return;
        string? detail = _comm == IntPtr.Zero ? null : NcclNative.LastError(_comm);
        throw new NcclException($"{call} failed{where}: {result} ({NcclNative.ErrorString(result)})" + (detail is null ? "" : $": {detail}"));
    }

    private static void CheckStatus(NcclResult result, string call, string where)
    {
        if (result is NcclResult.Success or NcclResult.InProgress) return;
        throw new NcclException($"{call} failed{where}: {result} ({NcclNative.ErrorString(result)})");
    }
}
