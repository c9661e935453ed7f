using Tessera.Tensors;

namespace Tessera.Training.Benchmarks;

/// <summary>
/// Datasheet peaks of the GPUs Tessera is measured on, the denominators of model FLOPs utilization: dense (no
/// sparsity) BF16 tensor-core FLOP/s for BF16 models, and FP32 CUDA-core FLOP/s for F32 models (the CUDA backend keeps
/// TF32 off for F32 so results match the CPU). Looked up by the driver's device name.
/// </summary>
public static class GpuPeakFlops
{
    // Most specific names first: "H100 PCIe" and "H100 NVL" must not match the SXM entry.
    private static readonly (string NameContains, string Label, double Bf16, double Fp32)[] Known =
    [
        ("H100 NVL", "H100 NVL", 835e12, 60e12),
        ("H200 NVL", "H200 NVL", 835e12, 60e12),
        ("H100 PCIe", "H100 PCIe", 756e12, 51.2e12),
        ("H100", "H100 SXM", 989.4e12, 66.9e12),
        ("H200", "H200 SXM", 989.4e12, 66.9e12),   // also GH200, whose GPU is the same Hopper part
        ("A100", "A100", 312e12, 19.5e12),
    ];

    /// <summary>
    /// The peak FLOP/s of the GPU named <paramref name="deviceName"/> (as the driver reports it, e.g.
    /// "NVIDIA H100 80GB HBM3") for a model in <paramref name="dtype"/>, with a label such as "H100 SXM dense BF16";
    /// null for a GPU or dtype not in the table.
    /// </summary>
    public static (double FlopsPerSecond, string Label)? Find(string deviceName, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(deviceName);
        if (dtype is not (DType.BF16 or DType.F32)) return null;
        foreach (var (name, label, bf16, fp32) in Known)
        {
            if (!deviceName.Contains(name, StringComparison.OrdinalIgnoreCase)) continue;
            return dtype == DType.BF16 ? (bf16, $"{label} dense BF16") : (fp32, $"{label} FP32");
        }
        return null;
    }
}
