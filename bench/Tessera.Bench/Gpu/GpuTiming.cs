using Tessera.Cuda;
using Tessera.Cuda.Runtime;

namespace Tessera.Bench.Gpu;

/// <summary>How the GPU benches time one op: CUDA events on the backend's stream around each run.</summary>
internal static class GpuTiming
{
    /// <summary>Median milliseconds of <paramref name="op"/> over <paramref name="reps"/> runs after 3 warm-ups, each run
    /// between its own pair of events on <paramref name="be"/>'s stream.</summary>
    public static double MedianMs(CudaBackend be, Action op, int reps)
    {
        for (int i = 0; i < 3; i++) op();
        using var start = new CudaEvent(be.CudaDevice);
        using var end = new CudaEvent(be.CudaDevice);
        var times = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            start.Record(be.Stream);
            op();
            end.Record(be.Stream);
            end.Synchronize();
            times.Add(end.ElapsedSince(start));
        }
        times.Sort();
        return times[reps / 2];
    }
}
