namespace Tessera.Tensors;

/// <summary>Kind of processor that holds a tensor's storage.</summary>
public enum DeviceKind
{
    /// <summary>Host memory, computed by the CPU backend.</summary>
    Cpu,
    /// <summary>Memory of an NVIDIA GPU, computed by the CUDA backend.</summary>
    Cuda,
}
