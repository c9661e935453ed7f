using Tessera.Distributed;

namespace Tessera.Nn.Parallel;

/// <summary>
/// A rank's share of expert parallelism (Megatron-Core's and DeepSpeed-MoE's EP): its expert-parallel group, whose Size ranks
/// each hold E / Size of every mixture-of-experts layer's experts (rank r the contiguous block [r E/Size, (r+1) E/Size)) and are
/// data-parallel replicas of everything else. Each rank routes its own tokens and sends each token's row to the rank holding its
/// expert (<see cref="Layers.SparseMoeFeedForward"/>'s token dispatcher). Given to a model when it is built, as
/// <see cref="TensorParallelism"/> is; the group is passed in, never global.
/// </summary>
public sealed class ExpertParallelism
{
    /// <summary>This rank's expert parallelism over <paramref name="group"/>.</summary>
    public ExpertParallelism(ProcessGroup group)
    {
        ArgumentNullException.ThrowIfNull(group);
        Group = group;
    }

    /// <summary>The expert-parallel group (ranks holding different experts of the same layers).</summary>
    public ProcessGroup Group { get; }

    /// <summary>This rank's index in the group.</summary>
    public int Rank => Group.Rank;

    /// <summary>Ranks in the group, ep.</summary>
    public int Size => Group.Size;

    /// <summary>Experts each rank holds of a layer of <paramref name="experts"/>: E / ep; throws when ep does not divide E.</summary>
    public int LocalExperts(int experts, string where)
    {
        if (experts % Size != 0)
            throw new ArgumentException($"{where}: expert parallelism ep ({Size}) must divide the experts ({experts}); choose ep among the divisors of {experts}");
        return experts / Size;
    }

    /// <summary>The rank of the group that holds expert <paramref name="expert"/> of a layer of <paramref name="experts"/>.</summary>
    public int Holder(int expert, int experts) => expert / (experts / Size);
}
