using Tessera.Tensors;

namespace Tessera.Distributed;

/// <summary>
/// A set of ranks that communicate (torch.distributed's process group, an NCCL communicator).
/// Every operation is asynchronous: it returns a <see cref="CollectiveHandle"/>, and the tensors
/// it touches belong to the operation until <see cref="CollectiveHandle.Wait"/> returns.
/// Collectives must be issued in the same order, with matching arguments, on every rank of the
/// group; each is numbered (1, 2, ...) and counted, so a trainer or test can assert how many
/// collectives a step issues. One group object belongs to one rank: use it from one thread.
/// </summary>
public abstract class ProcessGroup : IDisposable
{
    private readonly long[] _counts = new long[Enum.GetValues<CollectiveKind>().Length];
    private readonly int[] _globalRanks;
    private long _collectives;

    /// <summary>Creates the member <paramref name="rank"/> of a group over <paramref name="globalRanks"/>.</summary>
    protected ProcessGroup(string name, int rank, IReadOnlyList<int> globalRanks, TimeSpan timeout)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(globalRanks);
        if (globalRanks.Count == 0)
            throw new ArgumentException($"process group '{name}' has no ranks", nameof(globalRanks));
        if (rank < 0 || rank >= globalRanks.Count)
            throw new ArgumentOutOfRangeException(nameof(rank), $"process group '{name}': rank {rank} is outside [0, {globalRanks.Count})");
        if (timeout <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(timeout), $"process group '{name}': timeout must be positive, got {timeout}");
        Name = name;
        Rank = rank;
        _globalRanks = [.. globalRanks];
        Timeout = timeout;
    }

    /// <summary>Name used in messages ("world", "tp", "dp", ...).</summary>
    public string Name { get; }

    /// <summary>This member's rank in the group, 0 .. Size-1.</summary>
    public int Rank { get; }

    /// <summary>Number of ranks in the group.</summary>
    public int Size => _globalRanks.Length;

    /// <summary>The world rank of each group rank (index = group rank).</summary>
    public IReadOnlyList<int> GlobalRanks => _globalRanks;

    /// <summary>How long a rank waits for its peers before an operation fails with <see cref="CollectiveTimeoutException"/>.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>Number of collectives (AllReduce, ReduceScatter, AllGather, Broadcast, Barrier, AllToAll) issued; also the last sequence number.</summary>
    public long CollectiveCount => Interlocked.Read(ref _collectives);

    /// <summary>Number of operations of <paramref name="kind"/> issued by this rank (Send and Recv included).</summary>
    public long Count(CollectiveKind kind) => Interlocked.Read(ref _counts[(int)kind]);

    /// <summary>
    /// In place on every rank: <paramref name="tensor"/> (contiguous, same shape and dtype on every
    /// rank) becomes the reduction over ranks, accumulated in rank order 0 .. Size-1.
    /// </summary>
    public CollectiveHandle AllReduce(Tensor tensor, ReduceOp op = ReduceOp.Sum) // (n) any shape
    {
        CheckTensor(tensor, nameof(tensor), CollectiveKind.AllReduce);
        CheckReducible(tensor, op, CollectiveKind.AllReduce);
        return AllReduceCore(tensor, op, NextCollective(CollectiveKind.AllReduce));
    }

    /// <summary>
    /// <paramref name="input"/> (Size * n) is reduced over ranks and rank r receives elements
    /// [r*n, (r+1)*n) in <paramref name="output"/> (n). Input and output must not overlap.
    /// </summary>
    public CollectiveHandle ReduceScatter(Tensor input, Tensor output, ReduceOp op = ReduceOp.Sum) // input (Size*n), output (n)
    {
        CheckTensor(input, nameof(input), CollectiveKind.ReduceScatter);
        CheckTensor(output, nameof(output), CollectiveKind.ReduceScatter);
        CheckSameDType(input, output, CollectiveKind.ReduceScatter);
        if (input.NumElements != Size * output.NumElements)
            throw new ArgumentException($"ReduceScatter in group '{Name}' (size {Size}): input has {input.NumElements} elements, expected Size * output = {Size} * {output.NumElements}", nameof(input));
        CheckReducible(input, op, CollectiveKind.ReduceScatter);
        return ReduceScatterCore(input, output, op, NextCollective(CollectiveKind.ReduceScatter));
    }

    /// <summary>
    /// <paramref name="output"/> (Size * n) receives every rank's <paramref name="input"/> (n),
    /// rank r at elements [r*n, (r+1)*n). Input and output must not overlap.
    /// </summary>
    public CollectiveHandle AllGather(Tensor input, Tensor output) // input (n), output (Size*n)
    {
        CheckTensor(input, nameof(input), CollectiveKind.AllGather);
        CheckTensor(output, nameof(output), CollectiveKind.AllGather);
        CheckSameDType(input, output, CollectiveKind.AllGather);
        if (output.NumElements != Size * input.NumElements)
            throw new ArgumentException($"AllGather in group '{Name}' (size {Size}): output has {output.NumElements} elements, expected Size * input = {Size} * {input.NumElements}", nameof(output));
        return AllGatherCore(input, output, NextCollective(CollectiveKind.AllGather));
    }

    /// <summary>In place: every rank's <paramref name="tensor"/> (n) receives the one of group rank <paramref name="root"/>.</summary>
    public CollectiveHandle Broadcast(Tensor tensor, int root) // (n)
    {
        CheckTensor(tensor, nameof(tensor), CollectiveKind.Broadcast);
        CheckRank(root, nameof(root), CollectiveKind.Broadcast);
        return BroadcastCore(tensor, root, NextCollective(CollectiveKind.Broadcast));
    }

    /// <summary>
    /// A variable-size exchange of rows (torch.distributed's all_to_all_single with input and output split sizes): the rows of
    /// <paramref name="input"/> (Σ inputSplits, ...) are dealt out in rank order, <paramref name="inputSplits"/>[r] rows to group
    /// rank r, and <paramref name="output"/> (Σ outputSplits, ...) receives <paramref name="outputSplits"/>[r] rows from rank r, in
    /// rank order. A row is everything past dimension 0 (the same on every rank); splits may be zero. Rank s's inputSplits[d]
    /// must equal rank d's outputSplits[s] (the sizes are usually exchanged first, by an all-to-all of one count per peer).
    /// Input and output must not overlap. Counted and numbered as one collective.
    /// </summary>
    public CollectiveHandle AllToAll(Tensor input, Tensor output, IReadOnlyList<int> inputSplits, IReadOnlyList<int> outputSplits) // input (Σ in, R...), output (Σ out, R...)
    {
        const CollectiveKind kind = CollectiveKind.AllToAll;
        CheckTensor(input, nameof(input), kind);
        CheckTensor(output, nameof(output), kind);
        CheckSameDType(input, output, kind);
        ArgumentNullException.ThrowIfNull(inputSplits);
        ArgumentNullException.ThrowIfNull(outputSplits);
        if (input.Rank == 0 || output.Rank == 0)
            throw new ArgumentException($"{kind} in {Describe()}: input {input.Shape} and output {output.Shape} must have a row dimension (dimension 0)");
        if (RowElements(input) != RowElements(output))
            throw new ArgumentException($"{kind} in {Describe()}: input rows {input.Shape} and output rows {output.Shape} differ past dimension 0");
        CheckSplits(inputSplits, input, nameof(inputSplits), kind);
        CheckSplits(outputSplits, output, nameof(outputSplits), kind);
        if (inputSplits[Rank] != outputSplits[Rank])
            throw new ArgumentException($"{kind} in {Describe()}: this rank sends itself {inputSplits[Rank]} rows (inputSplits[{Rank}]) but receives {outputSplits[Rank]} from itself (outputSplits[{Rank}])");
        return AllToAllCore(input, output, [.. inputSplits], [.. outputSplits], NextCollective(kind));
    }

    /// <summary>Elements of one row of <paramref name="t"/>: the product of its dimensions past the first.</summary>
    public static long RowElements(Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        long n = 1;
        for (int d = 1; d < t.Rank; d++) n *= t.Size(d);
        return n;
    }

    private void CheckSplits(IReadOnlyList<int> splits, Tensor t, string argument, CollectiveKind kind)
    {
        if (splits.Count != Size)
            throw new ArgumentException($"{kind} in {Describe()}: {argument} has {splits.Count} sizes, expected one per rank ({Size})", argument);
        long sum = 0;
        for (int r = 0; r < splits.Count; r++)
        {
            if (splits[r] < 0) throw new ArgumentOutOfRangeException(argument, $"{kind} in {Describe()}: {argument}[{r}] = {splits[r]} is negative");
            sum += splits[r];
        }
        if (sum != t.Size(0))
            throw new ArgumentException($"{kind} in {Describe()}: {argument} sum to {sum} rows but the tensor {t.Shape} has {t.Size(0)}", argument);
    }

    /// <summary>Completes on every rank once every rank has issued it.</summary>
    public CollectiveHandle Barrier() => BarrierCore(NextCollective(CollectiveKind.Barrier));

    /// <summary>Sends <paramref name="tensor"/> (n) to group rank <paramref name="peer"/>, which must issue a matching <see cref="Recv"/>.</summary>
    public CollectiveHandle Send(Tensor tensor, int peer) // (n)
    {
        CheckTensor(tensor, nameof(tensor), CollectiveKind.Send);
        CheckPeer(peer, CollectiveKind.Send);
        Interlocked.Increment(ref _counts[(int)CollectiveKind.Send]);
        return SendCore(tensor, peer);
    }

    /// <summary>Fills <paramref name="tensor"/> (n) with what group rank <paramref name="peer"/> sends (same element count and dtype).</summary>
    public CollectiveHandle Recv(Tensor tensor, int peer) // (n)
    {
        CheckTensor(tensor, nameof(tensor), CollectiveKind.Recv);
        CheckPeer(peer, CollectiveKind.Recv);
        Interlocked.Increment(ref _counts[(int)CollectiveKind.Recv]);
        return RecvCore(tensor, peer);
    }

    /// <summary>
    /// Issues <paramref name="operations"/> (sends to and receives from peers of this group) as one batch and returns their
    /// handles in order (torch.distributed's batch_isend_irecv). On NCCL the batch is one ncclGroupStart/ncclGroupEnd, whose
    /// operations progress together: two neighbours that each send to and receive from the other in one batch never wait on
    /// each other's first operation, which separately issued blocking sends would (the pipeline's send-forward-receive-backward
    /// pairs). In-process groups issue the operations one by one, which never blocks. Each operation is validated before any is
    /// issued, and is counted and numbered like a single Send or Recv.
    /// </summary>
    public IReadOnlyList<CollectiveHandle> SendReceive(IReadOnlyList<PointToPoint> operations)
    {
        ArgumentNullException.ThrowIfNull(operations);
        foreach (var op in operations)
        {
            if (op.Kind is not (CollectiveKind.Send or CollectiveKind.Recv))
                throw new ArgumentException($"SendReceive in {Describe()}: {op.Kind} is not a point-to-point operation (Send or Recv)", nameof(operations));
            CheckTensor(op.Tensor, nameof(operations), op.Kind);
            CheckPeer(op.Peer, op.Kind);
        }
        if (operations.Count == 0) return [];
        var handles = new CollectiveHandle[operations.Count];
        BeginBatch();
        try
        {
            for (int i = 0; i < operations.Count; i++)
            {
                var op = operations[i];
                Interlocked.Increment(ref _counts[(int)op.Kind]);
                handles[i] = op.Kind == CollectiveKind.Send ? SendCore(op.Tensor, op.Peer) : RecvCore(op.Tensor, op.Peer);
            }
        }
        finally
        {
            EndBatch();
        }
        return handles;
    }

    /// <summary>Opens a batch of point-to-point operations (<see cref="SendReceive"/>); nothing by default.</summary>
    protected virtual void BeginBatch() { }

    /// <summary>Closes the batch opened by <see cref="BeginBatch"/>, issuing it where the transport defers; nothing by default.</summary>
    protected virtual void EndBatch() { }

    /// <summary>Issues an all-reduce whose arguments have been validated; <paramref name="sequenceNumber"/> is its number in the group.</summary>
    protected abstract CollectiveHandle AllReduceCore(Tensor tensor, ReduceOp op, long sequenceNumber);

    /// <summary>Issues a validated reduce-scatter.</summary>
    protected abstract CollectiveHandle ReduceScatterCore(Tensor input, Tensor output, ReduceOp op, long sequenceNumber);

    /// <summary>Issues a validated all-gather.</summary>
    protected abstract CollectiveHandle AllGatherCore(Tensor input, Tensor output, long sequenceNumber);

    /// <summary>Issues a validated broadcast.</summary>
    protected abstract CollectiveHandle BroadcastCore(Tensor tensor, int root, long sequenceNumber);

    /// <summary>Issues a validated all-to-all (splits in rows, one per rank; this rank's own split equal both ways).</summary>
    protected abstract CollectiveHandle AllToAllCore(Tensor input, Tensor output, int[] inputSplits, int[] outputSplits, long sequenceNumber);

    /// <summary>Issues a barrier.</summary>
    protected abstract CollectiveHandle BarrierCore(long sequenceNumber);

    /// <summary>Issues a validated send; the implementation numbers messages per peer.</summary>
    protected abstract CollectiveHandle SendCore(Tensor tensor, int peer);

    /// <summary>Issues a validated receive; the implementation numbers messages per peer.</summary>
    protected abstract CollectiveHandle RecvCore(Tensor tensor, int peer);

    /// <summary>Which element types this transport reduces (AllReduce, ReduceScatter).</summary>
    protected abstract bool CanReduce(DType dtype, ReduceOp op);

    /// <summary>"group 'tp' rank 1 (global rank 5)": how messages name this member.</summary>
    public string Describe() => _globalRanks[Rank] == Rank
        ? $"group '{Name}' rank {Rank}"
        : $"group '{Name}' rank {Rank} (global rank {_globalRanks[Rank]})";

    /// <summary>Releases the transport's resources.</summary>
    public virtual void Dispose() => GC.SuppressFinalize(this);

    private long NextCollective(CollectiveKind kind)
    {
        Interlocked.Increment(ref _counts[(int)kind]);
        return Interlocked.Increment(ref _collectives);
    }

    private void CheckTensor(Tensor tensor, string argument, CollectiveKind kind)
    {
        ArgumentNullException.ThrowIfNull(tensor, argument);
        if (!tensor.IsContiguous)
            throw new ArgumentException($"{kind} in {Describe()}: {argument} {tensor.Shape} is not contiguous; copy it to a contiguous tensor first", argument);
    }

    private void CheckSameDType(Tensor input, Tensor output, CollectiveKind kind)
    {
        if (input.DType != output.DType)
            throw new ArgumentException($"{kind} in {Describe()}: input is {input.DType} but output is {output.DType}");
    }

    private void CheckReducible(Tensor tensor, ReduceOp op, CollectiveKind kind)
    {
        if (!CanReduce(tensor.DType, op))
            throw new NotSupportedException($"{kind} in {Describe()}: {op} over {tensor.DType} is not supported by {GetType().Name}; reduce in F32 or F64");
    }

    private void CheckRank(int rank, string argument, CollectiveKind kind)
    {
        if (rank < 0 || rank >= Size)
            throw new ArgumentOutOfRangeException(argument, $"{kind} in {Describe()}: {argument} {rank} is outside [0, {Size})");
    }

    private void CheckPeer(int peer, CollectiveKind kind)
    {
        CheckRank(peer, "peer", kind);
        if (peer == Rank)
            throw new ArgumentException($"{kind} in {Describe()}: peer is this rank itself; point-to-point needs another rank", nameof(peer));
    }
}
