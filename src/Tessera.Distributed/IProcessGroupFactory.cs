namespace Tessera.Distributed;

/// <summary>
/// Creates the calling rank's member of a process group over a subset of the world's ranks
/// (used by <see cref="Mesh.DeviceMesh"/>). Every rank calls it for each of its groups, in the same
/// order on every rank, as NCCL's communicator split requires.
/// </summary>
public interface IProcessGroupFactory
{
    /// <summary>The global rank of the caller.</summary>
    int GlobalRank { get; }

    /// <summary>
    /// The caller's group over <paramref name="globalRanks"/> (global ranks, listed in group-rank
    /// order; the caller must be one of them), named <paramref name="name"/> in messages.
    /// </summary>
    ProcessGroup CreateGroup(string name, IReadOnlyList<int> globalRanks);
}
