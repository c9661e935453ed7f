using Tessera.Distributed;
using Tessera.Tensors;

namespace Tessera.Training.Parallel;

/// <summary>What one thread rank of <see cref="ParallelTraining.RunThreadRanks{T}"/> gets: its rank, group and backends.</summary>
/// <param name="Rank">This rank, 0 .. WorldSize-1.</param>
/// <param name="WorldSize">Number of ranks.</param>
/// <param name="Group">The rank's world process group (thread ranks; rank-order reductions).</param>
/// <param name="Backend">The rank's own compute backend (a CpuBackend with its share of the cores).</param>
/// <param name="Host">A separate CPU backend for offloaded optimizer state.</param>
/// <param name="Factory">Creates the rank's sub-groups (mesh axes, key/value replica groups) of the same world.</param>
public sealed record RankContext(int Rank, int WorldSize, ProcessGroup Group, IBackend Backend, IBackend Host, IProcessGroupFactory Factory);
