using Tessera.Distributed;
using Tessera.Tensors;

namespace Tessera.Bench.Gpu;

/// <summary>
/// A benchmark instrument, not a transport: one rank standing for rank <c>rank</c> of a group of <c>size</c>, whose
/// collectives move nothing and complete at once, while it counts the bytes each would move per rank. Running a
/// tensor-parallel rank's shard alone on the GPU with it measures that rank's compute without the other ranks' kernels
/// sharing the GPU, and gives the communication volume the step would put on the wire (for the written model of the step
/// time on several GPUs). Never used to train: the numbers it leaves in the tensors are wrong.
/// </summary>
internal sealed class ComputeOnlyGroup : ProcessGroup
{
    public ComputeOnlyGroup(string name, int rank, int size)
        : base(name, rank, Enumerable.Range(0, size).ToArray(), TimeSpan.FromMinutes(1))
    {
    }

    /// <summary>Bytes per rank each kind of collective would have sent: all-reduce 2 (n-1)/n of the tensor (ring), all-gather and reduce-scatter (n-1)/n of the whole, all-to-all the rows sent to other ranks.</summary>
    public Dictionary<CollectiveKind, double> WireBytes { get; } = [];

    private CollectiveHandle Count(CollectiveKind kind, long sequence, double bytes)
    {
        WireBytes[kind] = WireBytes.GetValueOrDefault(kind) + bytes;
        return new Done(kind, sequence);
    }

    private double Fraction => (Size - 1) / (double)Size;

    protected override CollectiveHandle AllReduceCore(Tensor tensor, ReduceOp op, long sequenceNumber) =>
        Count(CollectiveKind.AllReduce, sequenceNumber, 2 * Fraction * tensor.NumElements * tensor.DType.SizeInBytes());

    protected override CollectiveHandle ReduceScatterCore(Tensor input, Tensor output, ReduceOp op, long sequenceNumber) =>
        Count(CollectiveKind.ReduceScatter, sequenceNumber, Fraction * input.NumElements * input.DType.SizeInBytes());

    protected override CollectiveHandle AllGatherCore(Tensor input, Tensor output, long sequenceNumber) =>
        Count(CollectiveKind.AllGather, sequenceNumber, Fraction * output.NumElements * output.DType.SizeInBytes());

    protected override CollectiveHandle AllToAllCore(Tensor input, Tensor output, int[] inputSplits, int[] outputSplits, long sequenceNumber) =>
        Count(CollectiveKind.AllToAll, sequenceNumber, (input.Size(0) - inputSplits[Rank]) * RowElements(input) * input.DType.SizeInBytes());

    protected override CollectiveHandle BroadcastCore(Tensor tensor, int root, long sequenceNumber) => new Done(CollectiveKind.Broadcast, sequenceNumber);

    protected override CollectiveHandle BarrierCore(long sequenceNumber) => new Done(CollectiveKind.Barrier, sequenceNumber);

    protected override CollectiveHandle SendCore(Tensor tensor, int peer) => new Done(CollectiveKind.Send, 0);

    protected override CollectiveHandle RecvCore(Tensor tensor, int peer) => new Done(CollectiveKind.Recv, 0);

    protected override bool CanReduce(DType dtype, ReduceOp op) => true;

    private sealed class Done(CollectiveKind kind, long sequence) : CollectiveHandle(kind, sequence)
    {
        public override bool IsCompleted => true;

        public override void Wait(TimeSpan? timeout = null) { }
    }

    /// <summary>Sub-groups (key/value replicas) of the same kind.</summary>
    public sealed class Factory : IProcessGroupFactory
    {
        public int GlobalRank => 0;

        public ProcessGroup CreateGroup(string name, IReadOnlyList<int> globalRanks) => new ComputeOnlyGroup(name, 0, globalRanks.Count);
    }
}
