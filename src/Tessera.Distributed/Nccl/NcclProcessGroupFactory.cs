namespace Tessera.Distributed.Nccl;

/// <summary>Creates sub-groups of an NCCL world group by ncclCommSplit (for <see cref="Mesh.DeviceMesh"/>).</summary>
public sealed class NcclProcessGroupFactory : IProcessGroupFactory
{
    private readonly NcclProcessGroup _world;

    /// <summary>A factory splitting <paramref name="world"/>, whose group ranks must be the global ranks.</summary>
    public NcclProcessGroupFactory(NcclProcessGroup world)
    {
        ArgumentNullException.ThrowIfNull(world);
        for (int r = 0; r < world.Size; r++)
            if (world.GlobalRanks[r] != r)
                throw new ArgumentException($"NCCL group '{world.Name}' is not a world group (its rank {r} is global rank {world.GlobalRanks[r]}); split the world group", nameof(world));
        _world = world;
    }

    /// <inheritdoc/>
    public int GlobalRank => _world.Rank;

    /// <inheritdoc/>
    public ProcessGroup CreateGroup(string name, IReadOnlyList<int> globalRanks) => _world.Split(name, globalRanks);
}
