using Tessera.Distributed;
using Tessera.Distributed.InProcess;
using Tessera.Tensors.Cpu;

namespace Tessera.Cuda.Distributed;

/// <summary>What one thread rank of <see cref="CudaThreadRanks.Run{T}"/> gets: its rank, its GPU backend, its group and a host backend.</summary>
/// <param name="Rank">This rank, 0 .. WorldSize-1.</param>
/// <param name="WorldSize">Number of ranks.</param>
/// <param name="Group">The rank's world process group (thread ranks on one GPU; rank-order reductions on the device).</param>
/// <param name="Backend">The rank's own CUDA backend: its own stream and allocator on the shared GPU.</param>
/// <param name="Host">A CPU backend with the rank's share of the cores, for offloaded optimizer state.</param>
/// <param name="Factory">Creates the rank's sub-groups (mesh axes, key/value replica groups) of the same world; they run on the GPU too.</param>
/// <remarks>Field for field Tessera.Training's <c>RankContext</c>, with the concrete types: <c>new RankContext(c.Rank, c.WorldSize,
/// c.Group, c.Backend, c.Host, c.Factory)</c> hands a GPU rank to code written for CPU thread ranks.</remarks>
public sealed record CudaRankContext(int Rank, int WorldSize, InProcessProcessGroup Group, CudaBackend Backend, CpuBackend Host, IProcessGroupFactory Factory);
