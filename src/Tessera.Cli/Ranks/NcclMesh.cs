using Tessera.Cuda;
using Tessera.Cuda.Distributed;
using Tessera.Distributed.Launch;
using Tessera.Distributed.Mesh;
using Tessera.Distributed.Nccl;
using Tessera.Nn.Parallel;

namespace Tessera.Cli.Ranks;

/// <summary>
/// This process's place in a launched run (one process per GPU): the NCCL world group, met through the launcher's
/// rendezvous, split into the mesh's groups, and the tensor parallelism (tp &gt; 1) and pipeline stage (pp &gt; 1) its model is
/// built with. Opened before the model is built (a tensor-parallel model and a pipeline stage are built as this rank's part).
/// </summary>
public sealed class NcclMesh : IDisposable
{
    private readonly CudaCommunication _access;
    private readonly NcclProcessGroup _world;

    /// <summary>Joins the world of <paramref name="environment"/> on <paramref name="backend"/>'s GPU and splits it as <paramref name="mesh"/> says.</summary>
    /// <remarks>A mesh with pp &gt; 1 needs the <paramref name="partition"/> of the model's blocks over its stages.</remarks>
    public NcclMesh(CudaBackend backend, DistributedEnvironment environment, DeviceMesh mesh, ParallelPlan plan, TimeSpan timeout, PipelinePartition? partition = null)
    {
        if (mesh.Pp > 1 && partition is null) throw new ArgumentException($"NCCL mesh {mesh}: pipeline stages need the partition of the model's blocks", nameof(partition));
        mesh.Validate(environment.WorldSize);
        _access = new CudaCommunication(backend);
        try
        {
            var uniqueId = TcpRendezvous.Exchange(environment, NcclProcessGroup.CreateUniqueId, timeout);
            _world = NcclProcessGroup.Create("world", environment.Rank, environment.WorldSize, uniqueId, _access, timeout);
            var factory = new NcclProcessGroupFactory(_world);
            Groups = mesh.CreateGroups(factory);
            TensorParallelism = mesh.Tp > 1 ? new TensorParallelism(Groups.Tp, plan, factory) : null;
            Pipeline = mesh.Pp > 1 ? new PipelineParallelism(Groups.Pp, partition!, factory) : null;
        }
        catch
        {
            _world?.Dispose();
            _access.Dispose();
            throw;
        }
    }

    /// <summary>This rank's groups along each mesh axis and its coordinate.</summary>
    public MeshGroups Groups { get; }

    /// <summary>What the model is built with when the mesh has tp &gt; 1; null otherwise.</summary>
    public TensorParallelism? TensorParallelism { get; }

    /// <summary>This rank's pipeline stage when the mesh has pp &gt; 1; null otherwise.</summary>
    public PipelineParallelism? Pipeline { get; }

    /// <summary>
    /// Aborts every communicator of this rank (ncclCommAbort) after a failure: its pending collectives stop, and the
    /// <see cref="Dispose"/> that follows does not wait in ncclCommDestroy for collectives that peers will never join, so
    /// the process exits non-zero at once and the launcher kills the other ranks (<see cref="Launcher"/>).
    /// </summary>
    public void Abort()
    {
        foreach (var axis in Enum.GetValues<MeshAxis>())
            if (Groups[axis] is NcclProcessGroup g) g.Abort();
        _world.Abort();
    }

    /// <summary>
    /// Runs <paramref name="body"/>; when it throws (anything but an agreed stop, <see cref="OperationCanceledException"/>),
    /// aborts the communicators (<see cref="Abort"/>) before the exception leaves.
    /// </summary>
    public T AbortOnFailure<T>(Func<T> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        try { return body(); }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Abort();
            throw;
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        Groups.Dispose();
        _world.Dispose();
        _access.Dispose();
    }
}
