using Tessera.Tensors;
using Tessera.Tensors.Cpu;

namespace Tessera.Cli.CommandLine;

/// <summary>Creates the backend for a --device option.</summary>
public static class BackendFactory
{
    /// <summary>A backend for "cpu", "cuda" or "cuda:N" (the device string was checked by the option's parser).</summary>
    public static IBackend Create(Device device, int threads) => device.Kind switch
    {
        DeviceKind.Cpu => new CpuBackend(threads),
        // Errors (no driver, no GPU, missing library) come from Tessera.Cuda with what is missing and what to do.
        DeviceKind.Cuda => new Tessera.Cuda.CudaBackend(device.Index),
        _ => throw new UsageException($"--device {device}: unsupported device kind"),
    };
}
