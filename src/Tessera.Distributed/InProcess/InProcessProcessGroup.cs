using Tessera.Tensors;

namespace Tessera.Distributed.InProcess;

/// <summary>
/// A process group whose ranks are threads of one process (CPU ranks, tests of every parallel
/// layout on one machine). The last rank to issue an operation executes it for all ranks through the
/// world's <see cref="InProcessTransport"/>: by default (<see cref="HostTransport"/>) staging through
/// pooled host buffers with each tensor's backend; Tessera.Cuda's transport runs it on the GPU that the
/// ranks share. Reductions sum in rank order 0 .. Size-1: results are bit-identical on every rank.
/// Which dtypes reduce is the transport's (host: F32, F64 and I32; Average: F32, F64); data movement
/// supports every dtype.
/// </summary>
public sealed class InProcessProcessGroup : ProcessGroup
{
    private readonly InProcessRendezvous _rendezvous;
    private readonly Dictionary<int, long> _sent = [];
    private readonly Dictionary<int, long> _received = [];

    internal InProcessProcessGroup(InProcessWorld world, InProcessRendezvous rendezvous, int rank)
        : base(rendezvous.Name, rank, rendezvous.GlobalRanks, rendezvous.Timeout)
    {
        World = world;
        _rendezvous = rendezvous;
    }

    /// <summary>
    /// Creates a world of <paramref name="worldSize"/> thread ranks and returns each rank's world
    /// group (index = rank); hand group r to the thread of rank r. <paramref name="transport"/>: how
    /// operations execute (default: a <see cref="HostTransport"/>).
    /// </summary>
    public static InProcessProcessGroup[] Create(int worldSize, TimeSpan timeout, InProcessTransport? transport = null)
    {
        var world = new InProcessWorld(worldSize, timeout, transport);
        return Enumerable.Range(0, worldSize).Select(world.WorldGroup).ToArray();
    }

    /// <summary>The world this group belongs to (to create sub-groups).</summary>
    public InProcessWorld World { get; }

    /// <inheritdoc/>
    protected override bool CanReduce(DType dtype, ReduceOp op) => _rendezvous.Transport.CanReduce(dtype, op);

    /// <inheritdoc/>
    protected override CollectiveHandle AllReduceCore(Tensor tensor, ReduceOp op, long sequenceNumber) =>
        Collective(sequenceNumber, CollectiveKind.AllReduce, tensor, tensor, op, 0);

    /// <inheritdoc/>
    protected override CollectiveHandle ReduceScatterCore(Tensor input, Tensor output, ReduceOp op, long sequenceNumber) =>
        Collective(sequenceNumber, CollectiveKind.ReduceScatter, input, output, op, 0);

    /// <inheritdoc/>
    protected override CollectiveHandle AllGatherCore(Tensor input, Tensor output, long sequenceNumber) =>
        Collective(sequenceNumber, CollectiveKind.AllGather, input, output, ReduceOp.Sum, 0);

    /// <inheritdoc/>
    protected override CollectiveHandle BroadcastCore(Tensor tensor, int root, long sequenceNumber) =>
        Collective(sequenceNumber, CollectiveKind.Broadcast, tensor, tensor, ReduceOp.Sum, root);

    /// <inheritdoc/>
    protected override CollectiveHandle AllToAllCore(Tensor input, Tensor output, int[] inputSplits, int[] outputSplits, long sequenceNumber)
    {
        var token = Issue(CollectiveKind.AllToAll);
        long now = Environment.TickCount64;
        var pending = _rendezvous.ArriveCollective(sequenceNumber,
            new Contribution(Rank, CollectiveKind.AllToAll, input, output, ReduceOp.Sum, 0, now, token, inputSplits, outputSplits));
        return new InProcessHandle(pending, _rendezvous, Rank, now);
    }

    /// <inheritdoc/>
    protected override CollectiveHandle BarrierCore(long sequenceNumber) =>
        Collective(sequenceNumber, CollectiveKind.Barrier, null, null, ReduceOp.Sum, 0);

    /// <inheritdoc/>
    protected override CollectiveHandle SendCore(Tensor tensor, int peer)
    {
        long number = _sent[peer] = _sent.GetValueOrDefault(peer) + 1;
        var token = Issue(CollectiveKind.Send);
        long now = Environment.TickCount64;
        var op = _rendezvous.ArriveMessage(Rank, peer, number,
            new Contribution(Rank, CollectiveKind.Send, tensor, null, ReduceOp.Sum, 0, now, token));
        return new InProcessHandle(op, _rendezvous, Rank, now);
    }

    /// <inheritdoc/>
    protected override CollectiveHandle RecvCore(Tensor tensor, int peer)
    {
        long number = _received[peer] = _received.GetValueOrDefault(peer) + 1;
        var token = Issue(CollectiveKind.Recv);
        long now = Environment.TickCount64;
        var op = _rendezvous.ArriveMessage(peer, Rank, number,
            new Contribution(Rank, CollectiveKind.Recv, null, tensor, ReduceOp.Sum, 0, now, token));
        return new InProcessHandle(op, _rendezvous, Rank, now);
    }

    private InProcessHandle Collective(long sequenceNumber, CollectiveKind kind, Tensor? input, Tensor? output, ReduceOp op, int root)
    {
        var token = Issue(kind);
        long now = Environment.TickCount64;
        var pending = _rendezvous.ArriveCollective(sequenceNumber, new Contribution(Rank, kind, input, output, op, root, now, token));
        return new InProcessHandle(pending, _rendezvous, Rank, now);
    }

    /// <summary>The transport's note of this rank's state as it issues an operation (on this rank's thread).</summary>
    private IDisposable? Issue(CollectiveKind kind) => _rendezvous.Transport.Issue(GlobalRanks[Rank], kind);
}
