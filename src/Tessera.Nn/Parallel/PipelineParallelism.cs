using Tessera.Distributed;

namespace Tessera.Nn.Parallel;

/// <summary>
/// A rank's share of pipeline parallelism: its pipeline group (whose ranks are the stages, in order), the
/// <see cref="PipelinePartition"/> that says which blocks each virtual stage holds, and, for a model whose LM head is tied to
/// its token embedding, the embedding group (Megatron's): the first and last stages both hold the table, and their gradients
/// are summed over this group once per step so that the two copies stay one parameter. Given to a model when it is built; the
/// model builds only the units of this rank's virtual stages, and the schedule executor moves activations between stages.
/// Groups are passed in, never global.
/// </summary>
public sealed class PipelineParallelism
{
    private readonly IProcessGroupFactory? _factory;
    private ProcessGroup? _embeddingGroup;

    /// <summary>
    /// Stage <paramref name="group"/>.Rank of <paramref name="partition"/>. <paramref name="factory"/> creates the embedding group
    /// (needed only by a tied model over more than one stage).
    /// </summary>
    public PipelineParallelism(ProcessGroup group, PipelinePartition partition, IProcessGroupFactory? factory = null)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(partition);
        if (group.Size != partition.Stages)
            throw new ArgumentException($"pipeline parallelism: the pipeline group '{group.Name}' has {group.Size} ranks but the partition ({partition}) has {partition.Stages} stages");
        Group = group;
        Partition = partition;
        _factory = factory;
    }

    /// <summary>The pipeline group: group rank i is stage i.</summary>
    public ProcessGroup Group { get; }

    /// <summary>Which blocks each virtual stage holds.</summary>
    public PipelinePartition Partition { get; }

    /// <summary>This rank's stage (its coordinate on the pp axis).</summary>
    public int Stage => Group.Rank;

    /// <summary>Pipeline stages p.</summary>
    public int Stages => Group.Size;

    /// <summary>Model chunks on this rank, v.</summary>
    public int Chunks => Partition.Chunks;

    /// <summary>Whether this rank holds the embeddings (the first virtual stage).</summary>
    public bool IsFirst => Stage == 0;

    /// <summary>Whether this rank holds the final norm, head and loss (the last virtual stage).</summary>
    public bool IsLast => Stage == Stages - 1;

    /// <summary>The virtual stage of this rank's chunk <paramref name="chunk"/>.</summary>
    public int VirtualStage(int chunk) => Partition.VirtualStage(Stage, chunk);

    /// <summary>
    /// The group that sums a tied token embedding's gradient between the first and the last stage: those two stages
    /// together; every other stage alone (it holds no copy and never uses the group, but NCCL's communicator split is
    /// collective over the world, so each rank takes part). Created on first use, at the same point on every rank (building a
    /// tied model), by the factory given at construction.
    /// </summary>
    public ProcessGroup EmbeddingGroup()
    {
        if (_embeddingGroup is not null) return _embeddingGroup;
        if (Stages == 1)
            throw new InvalidOperationException("pipeline parallelism: one stage holds the tied token embedding once; there is no embedding group to sum over");
        if (_factory is null)
            throw new InvalidOperationException($"pipeline parallelism: a tied token embedding over {Stages} stages is kept as one parameter by summing the first and last stages' " +
                "gradients over an embedding group; give PipelineParallelism a process-group factory to create it");
        var ranks = IsFirst || IsLast ? new[] { Group.GlobalRanks[0], Group.GlobalRanks[^1] } : new[] { Group.GlobalRanks[Stage] };
        return _embeddingGroup = _factory.CreateGroup($"{Group.Name}-embedding", ranks);
    }

    /// <inheritdoc/>
    public override string ToString() => $"pipeline stage {Stage} of {Stages} ({Partition})";
}
