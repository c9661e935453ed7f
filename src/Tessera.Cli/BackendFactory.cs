using Tessera.Tensors;
using Tessera.Tensors.Cpu;

namespace Tessera.Cli;

/// <summary>Creates the backend for a --device option.</summary>
public static class BackendFactory
{
    /// <summary>A backend for "cpu", "cuda" or "cuda:N".</summary>
    public static IBackend Create(string device, int threads)
    {
        var d = Device.Parse(device);
        return d.Kind switch
        {
            DeviceKind.Cpu => new CpuBackend(threads),
            DeviceKind.Cuda => CreateCuda(d.Index),
            _ => throw new UsageException($"unsupported device '{device}'"),
        };
    }

    // Errors (no driver, no GPU, missing library) come from Tessera.Cuda with what is missing and what to do.
    private static IBackend CreateCuda(int index) => new Tessera.Cuda.CudaBackend(index);
}
