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
        DeviceKind.Cuda => CreateCuda(device.Index),
        _ => throw new UsageException($"--device {device}: unsupported device kind"),
    };

    /// <summary>The CUDA backend's options in one string at this edge ("ProfileOps=true,TuneMatMulAlgorithms=false"), parsed into
    /// <see cref="Tessera.Cuda.CudaBackendOptions"/>; unset means the defaults. The library itself reads no such variable.</summary>
    public const string CudaOptionsVariable = "TESSERA_CUDA_OPTIONS";

    // Errors (no driver, no GPU, missing library) come from Tessera.Cuda with what is missing and what to do.
    private static IBackend CreateCuda(int index)
    {
        Tessera.Cuda.CudaBackendOptions options;
        try { options = Tessera.Cuda.CudaBackendOptions.Parse(Environment.GetEnvironmentVariable(CudaOptionsVariable)); }
        catch (ArgumentException e) { throw new UsageException($"{CudaOptionsVariable}: {e.Message}"); }
        return new Tessera.Cuda.CudaBackend(index, options);
    }
}
