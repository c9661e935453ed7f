namespace Tessera.Distributed.Mesh;

/// <summary>
/// The ranks of a run arranged on four axes (Megatron-Core's mesh): tensor (tp), context (cp),
/// data (dp) and pipeline (pp) parallel. The product of the sizes is the world size.
/// <para>
/// Rank order: tp varies fastest, then cp, then dp, then pp (Megatron's "tp-cp-dp-pp"):
/// rank = tp + Tp * (cp + Cp * (dp + Dp * pp)). Tensor-parallel peers therefore have
/// consecutive ranks (the same node, NVLink), and pipeline stages are the farthest apart.
/// </para>
/// Groups are not global: <see cref="CreateGroups"/> asks a factory for the caller's groups.
/// </summary>
public sealed class DeviceMesh
{
    /// <summary>The axes from fastest- to slowest-varying in the rank order.</summary>
    public static IReadOnlyList<MeshAxis> RankOrder { get; } = [MeshAxis.Tp, MeshAxis.Cp, MeshAxis.Dp, MeshAxis.Pp];

    /// <summary>A mesh with the given axis sizes (each at least 1).</summary>
    public DeviceMesh(int dp = 1, int pp = 1, int tp = 1, int cp = 1)
    {
        Check(dp, nameof(dp));
        Check(pp, nameof(pp));
        Check(tp, nameof(tp));
        Check(cp, nameof(cp));
        Dp = dp;
        Pp = pp;
        Tp = tp;
        Cp = cp;
        WorldSize = checked(dp * pp * tp * cp);
    }

    /// <summary>Data-parallel size.</summary>
    public int Dp { get; }

    /// <summary>Pipeline-parallel size (number of stages).</summary>
    public int Pp { get; }

    /// <summary>Tensor-parallel size.</summary>
    public int Tp { get; }

    /// <summary>Context-parallel size.</summary>
    public int Cp { get; }

    /// <summary>Number of ranks: dp * pp * tp * cp.</summary>
    public int WorldSize { get; }

    /// <summary>Size of <paramref name="axis"/>.</summary>
    public int SizeOf(MeshAxis axis) => axis switch
    {
        MeshAxis.Tp => Tp,
        MeshAxis.Cp => Cp,
        MeshAxis.Dp => Dp,
        MeshAxis.Pp => Pp,
        _ => throw new ArgumentOutOfRangeException(nameof(axis), axis, "unknown mesh axis"),
    };

    /// <summary>Checks that the mesh covers exactly <paramref name="worldSize"/> ranks.</summary>
    public void Validate(int worldSize)
    {
        if (worldSize != WorldSize)
            throw new ArgumentException($"mesh {this} covers {WorldSize} ranks but the world has {worldSize}; the product dp * pp * tp * cp must equal WORLD_SIZE");
    }

    /// <summary>The position of <paramref name="rank"/> on the mesh.</summary>
    public MeshCoordinate CoordinateOf(int rank)
    {
        CheckRank(rank);
        int tp = rank % Tp; rank /= Tp;
        int cp = rank % Cp; rank /= Cp;
        int dp = rank % Dp; rank /= Dp;
        return new MeshCoordinate(tp, cp, dp, rank);
    }

    /// <summary>The rank at <paramref name="coordinate"/>.</summary>
    public int RankOf(MeshCoordinate coordinate)
    {
        foreach (var axis in RankOrder)
            if (coordinate[axis] < 0 || coordinate[axis] >= SizeOf(axis))
                throw new ArgumentOutOfRangeException(nameof(coordinate), $"{coordinate}: {axis} index {coordinate[axis]} is outside [0, {SizeOf(axis)}) of mesh {this}");
        return coordinate.Tp + Tp * (coordinate.Cp + Cp * (coordinate.Dp + Dp * coordinate.Pp));
    }

    /// <summary>
    /// The ranks that share <paramref name="rank"/>'s coordinates on every axis except
    /// <paramref name="axes"/>, in rank order (the group along those axes; with one axis,
    /// group rank i has coordinate i on it).
    /// </summary>
    public IReadOnlyList<int> RanksAlong(int rank, params MeshAxis[] axes)
    {
        if (axes.Length == 0) throw new ArgumentException("name at least one mesh axis", nameof(axes));
        var origin = CoordinateOf(rank);
        foreach (var a in axes) origin = origin.With(a, 0);
        var ranks = new List<int> { RankOf(origin) };
        // Expand along each axis in rank order so the list comes out ascending.
        foreach (var axis in RankOrder.Where(axes.Contains))
        {
            var next = new List<int>(ranks.Count * SizeOf(axis));
            for (int i = 0; i < SizeOf(axis); i++)
                foreach (var r in ranks) next.Add(RankOf(CoordinateOf(r).With(axis, i)));
            ranks = next;
        }
        ranks.Sort();
        return ranks;
    }

    /// <summary>Every group along <paramref name="axes"/>: a partition of all ranks, ordered by first rank.</summary>
    public IReadOnlyList<IReadOnlyList<int>> GroupsAlong(params MeshAxis[] axes)
    {
        var seen = new HashSet<int>();
        var groups = new List<IReadOnlyList<int>>();
        for (int r = 0; r < WorldSize; r++)
        {
            if (seen.Contains(r)) continue;
            var g = RanksAlong(r, axes);
            foreach (var m in g) seen.Add(m);
            groups.Add(g);
        }
        return groups;
    }

    /// <summary>
    /// Creates the caller's group along each axis, asking <paramref name="factory"/> in the order
    /// tp, cp, dp, pp (the same on every rank). Groups are named "tp", "cp", "dp", "pp".
    /// </summary>
    public MeshGroups CreateGroups(IProcessGroupFactory factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        int rank = factory.GlobalRank;
        CheckRank(rank);
        var groups = new Dictionary<MeshAxis, ProcessGroup>();
        foreach (var axis in RankOrder)
            groups[axis] = factory.CreateGroup(axis.ToString().ToLowerInvariant(), RanksAlong(rank, axis));
        return new MeshGroups(this, rank, groups);
    }

    /// <summary>The caller's group along several axes at once (e.g. dp and cp for gradient reduction), named "dp-cp" etc.</summary>
    public ProcessGroup CreateGroup(IProcessGroupFactory factory, params MeshAxis[] axes)
    {
        ArgumentNullException.ThrowIfNull(factory);
        var name = string.Join("-", axes.Select(a => a.ToString().ToLowerInvariant()));
        return factory.CreateGroup(name, RanksAlong(factory.GlobalRank, axes));
    }

    /// <inheritdoc/>
    public override string ToString() => $"(dp {Dp}, pp {Pp}, tp {Tp}, cp {Cp})";

    private void CheckRank(int rank)
    {
        if (rank < 0 || rank >= WorldSize)
            throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} is outside [0, {WorldSize}) of mesh {this}");
    }

    private static void Check(int size, string axis)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(axis, $"mesh axis {axis} must have size at least 1, got {size}");
    }
}
