using Tessera.Distributed;
using Tessera.Distributed.Mesh;

namespace Tessera.Nn.Parallel;

/// <summary>
/// A rank's share of tensor (and sequence) parallelism: its tensor-parallel group and the <see cref="ParallelPlan"/> that
/// says how each layer is split over it. Given to a model when it is built (the model code itself is written for one
/// device). Groups are passed in, never global; the sub-groups that hold replicas of key/value heads (a group wider than
/// the model's key/value heads) come from <see cref="IProcessGroupFactory"/>.
/// </summary>
public sealed class TensorParallelism
{
    private readonly IProcessGroupFactory? _factory;
    private readonly Dictionary<int, ProcessGroup> _replicaGroups = [];

    /// <summary>
    /// This rank's tensor parallelism over <paramref name="group"/> with <paramref name="plan"/>. <paramref name="factory"/>
    /// creates the key/value replica groups (needed only when the group is wider than the model's key/value heads).
    /// </summary>
    public TensorParallelism(ProcessGroup group, ParallelPlan plan, IProcessGroupFactory? factory = null)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(plan);
        Group = group;
        Plan = plan;
        _factory = factory;
    }

    /// <summary>The tensor-parallel group.</summary>
    public ProcessGroup Group { get; }

    /// <summary>How each layer is split.</summary>
    public ParallelPlan Plan { get; }

    /// <summary>This rank's index in the group (its coordinate on the tp axis).</summary>
    public int Rank => Group.Rank;

    /// <summary>Ranks in the group.</summary>
    public int Size => Group.Size;

    /// <summary>Whether the norm and residual regions are split along the sequence (the plan asks for it and there is more than one rank).</summary>
    public bool SequenceParallel => Plan.SequenceParallel && Size > 1;

    /// <summary>A one-axis mesh of the group, for laying out parameters (tp = Size, this rank at Rank).</summary>
    public DeviceMesh Mesh => new(tp: Size);

    /// <summary>This rank's coordinate on <see cref="Mesh"/>.</summary>
    public MeshCoordinate Coordinate => new(Rank, 0, 0, 0);

    /// <summary>
    /// Sequence parallelism: the rows [Start, Start + Count) of a residual stream of <paramref name="rows"/> rows (B * T
    /// tokens, flattened) that this rank holds; all of them otherwise.
    /// </summary>
    public (int Start, int Count) LocalRows(int rows)
    {
        if (!SequenceParallel) return (0, rows);
        if (rows % Size != 0)
            throw new ArgumentException($"sequence parallelism: the batch's {rows} tokens (B x T) must be a multiple of tp ({Size}); choose B or T accordingly");
        int count = rows / Size;
        return (Rank * count, count);
    }

    /// <summary>
    /// The group of the ranks that hold the same one of <paramref name="units"/> units (key/value heads) when there are
    /// fewer units than ranks: a block of Size / units consecutive ranks. Created on first use (collective on NCCL: every
    /// rank asks at the same point, which building the model guarantees); null when every rank holds its own units.
    /// </summary>
    public ProcessGroup? ReplicaGroup(int units)
    {
        if (units >= Size) return null;
        if (_replicaGroups.TryGetValue(units, out var existing)) return existing;
        if (_factory is null)
            throw new InvalidOperationException($"tensor parallelism: tp ({Size}) is wider than the model's {units} key/value heads, so their replicas' gradients " +
                "are summed over sub-groups; give TensorParallelism a process-group factory to create them");
        int replicas = Size / units, first = Rank / replicas * replicas;
        var ranks = Enumerable.Range(first, replicas).Select(r => Group.GlobalRanks[r]).ToArray();
        var created = _factory.CreateGroup($"{Group.Name}-kv", ranks);
        _replicaGroups[units] = created;
        return created;
    }

    /// <inheritdoc/>
    public override string ToString() => $"tp {Size}{(SequenceParallel ? " + sequence parallelism" : "")}";
}
