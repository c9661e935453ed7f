namespace Tessera.Nn;

/// <summary>
/// A run of <paramref name="Units"/> units of <paramref name="UnitSize"/> elements along the sharded dimension of a
/// <see cref="Placement"/>: the query, key or value heads of a fused QKV weight (units = heads, unit size = head size), or
/// a plain dimension (units = its extent, unit size 1). Units are dealt to the ranks of the axis in order: with at least
/// as many units as ranks each rank takes an equal run of them; with fewer (key/value heads under a wider tensor-parallel
/// group) each unit is held by a block of ranks, its replicas.
/// </summary>
/// <param name="Units">Units in the part (e.g. heads).</param>
/// <param name="UnitSize">Elements along the dimension per unit (e.g. head size).</param>
public readonly record struct ShardPart(int Units, int UnitSize)
{
    /// <summary>Elements of the part along the dimension.</summary>
    public int Extent => Units * UnitSize;

    /// <summary>Ranks holding each unit when the axis has <paramref name="ranks"/> ranks: 1, or ranks / Units when there are fewer units than ranks.</summary>
    public int Replicas(int ranks) => Units >= ranks ? 1 : ranks / Units;

    /// <summary>Units each rank holds: Units / ranks, or 1 when there are fewer units than ranks.</summary>
    public int LocalUnits(int ranks) => Units >= ranks ? Units / ranks : 1;

    /// <summary>The first unit rank <paramref name="index"/> of <paramref name="ranks"/> holds.</summary>
    public int FirstUnit(int index, int ranks) => (int)((long)index * Units / ranks);

    /// <summary>Whether the part can be dealt to <paramref name="ranks"/> ranks: the units divide evenly, or the ranks divide evenly over the units.</summary>
    public bool Divides(int ranks) => Units >= ranks ? Units % ranks == 0 : ranks % Units == 0;

    /// <inheritdoc/>
    public override string ToString() => $"{Units}x{UnitSize}";
}
