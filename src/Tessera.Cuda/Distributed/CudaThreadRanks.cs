using Tessera.Distributed.InProcess;
using Tessera.Tensors.Cpu;

namespace Tessera.Cuda.Distributed;

/// <summary>
/// Thread ranks sharing one GPU (the CUDA counterpart of <c>ParallelTraining.RunThreadRanks</c>): each rank gets its own
/// <see cref="CudaBackend"/> on the device and a world group whose collectives run on the GPU
/// (<see cref="CudaInProcessTransport"/>), so tensor-, data- and pipeline-parallel layouts run their CUDA kernels with
/// the shapes each rank holds, on a one-GPU machine. A test instrument; NCCL (one process per GPU) is the production path.
/// </summary>
public static class CudaThreadRanks
{
    /// <summary>
    /// Opens <paramref name="worldSize"/> backends on GPU <paramref name="ordinal"/> (each with <paramref name="options"/>,
    /// default <see cref="CudaBackendOptions.Default"/>), runs <paramref name="body"/> on one thread per rank and returns each
    /// rank's result (index = rank). Groups time out after <paramref name="timeout"/> (default 2 minutes). If a rank throws,
    /// the world is aborted: the others' pending and later collectives fail at once, and the original failures are rethrown
    /// together in an AggregateException (<see cref="ThreadRanks.Run{T}(InProcessWorld, Func{int, T})"/>).
    /// The backends, and everything allocated on them, are disposed when the ranks have finished: return host values.
    /// </summary>
    public static T[] Run<T>(int worldSize, Func<CudaRankContext, T> body, CudaBackendOptions? options = null, TimeSpan? timeout = null, int ordinal = 0)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"world size must be at least 1, got {worldSize}");
        var backends = new List<CudaBackend>(worldSize);
        CudaInProcessTransport? transport = null;
        try
        {
            for (int r = 0; r < worldSize; r++) backends.Add(new CudaBackend(ordinal, options));
            transport = new CudaInProcessTransport(backends);
            var world = new InProcessWorld(worldSize, timeout ?? TimeSpan.FromMinutes(2), transport);
            int threads = Math.Max(1, Environment.ProcessorCount / worldSize);
            return ThreadRanks.Run(world, rank =>
            {
                using var group = world.WorldGroup(rank);
                return body(new CudaRankContext(rank, worldSize, group, backends[rank], new CpuBackend(threads), world.FactoryFor(rank)));
            });
        }
        finally
        {
            // The group streams first (they read and write the ranks' memory), then the backends.
            transport?.Dispose();
            foreach (var b in backends) b.Dispose();
        }
    }
}
