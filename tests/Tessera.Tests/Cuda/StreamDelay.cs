using Tessera.Cuda;
using Tessera.Cuda.Compilation;
using Tessera.Cuda.Runtime;
using static Tessera.Cuda.Interop.CudaDriver;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Holds a stream busy for a given time with a one-thread kernel that spins on the GPU's global timer (what
/// torch.cuda._sleep does for PyTorch's stream tests): work enqueued behind it on that stream starts that much later,
/// which turns an ordering bug (a consumer that does not wait) into a wrong value instead of a race that usually passes.
/// </summary>
internal sealed unsafe class StreamDelay : IDisposable
{
    private const string Source = """
        extern "C" __global__ void spin_for_ns(unsigned long long ns)
        {
            unsigned long long start, now;
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
            do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
        }
        """;

    private readonly CudaDevice _device;
    private readonly CudaModule _module;

    public StreamDelay(CudaBackend backend)
    {
        _device = backend.CudaDevice;
        _module = backend.Kernels.Load(Source, "test_spin_for_ns.cu");
    }

    /// <summary>Enqueues <paramref name="time"/> of spinning on <paramref name="stream"/>; returns at once.</summary>
    public void Delay(CudaStream stream, TimeSpan time)
    {
        ulong ns = (ulong)(time.TotalMilliseconds * 1e6);
        void** args = stackalloc void*[] { &ns };
        _device.MakeCurrent();
        Check(cuLaunchKernel(_module.Function("spin_for_ns"), 1, 1, 1, 1, 1, 1, 0, stream.Handle, args, null), "cuLaunchKernel", "spin_for_ns");
    }

    public void Dispose() => _module.Dispose();
}
