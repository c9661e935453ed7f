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

    private static IBackend CreateCuda(int index) =>
        throw new UsageException($"--device cuda:{index}: this build has no CUDA backend yet; use --device cpu");
}
