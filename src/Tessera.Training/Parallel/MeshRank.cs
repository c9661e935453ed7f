using Tessera.Distributed.Mesh;
using Tessera.Nn.Parallel;

namespace Tessera.Training.Parallel;

/// <summary>One thread rank of a device mesh, as <see cref="ParallelTraining"/>'s mesh overload of Train hands it to the code that builds the rank's model.</summary>
/// <param name="Context">The rank's backends and world group.</param>
/// <param name="Groups">Its groups along each mesh axis (and its coordinate).</param>
/// <param name="TensorParallelism">What its model is built with when the mesh has tp &gt; 1; null otherwise.</param>
/// <param name="Pipeline">Its pipeline stage when the mesh has pp &gt; 1; null otherwise.</param>
/// <param name="ExpertParallelism">What its mixture-of-experts model is built with when training runs ep &gt; 1 expert-parallel ranks inside dp; null otherwise.</param>
public sealed record MeshRank(RankContext Context, MeshGroups Groups, TensorParallelism? TensorParallelism, PipelineParallelism? Pipeline = null,
    ExpertParallelism? ExpertParallelism = null);
