using Tessera.Cuda;
using Tessera.Tensors;

namespace Tessera.Cli.CommandLine;

/// <summary>What a user of <c>--quantize fp8</c> is told about where its products run.</summary>
internal static class Fp8Support
{
    /// <summary>
    /// Empty where the products run on FP8 tensor cores (a CUDA device of compute capability 8.9+ and a 16-bit --dtype);
    /// otherwise why they do not and what runs instead: the dequantized operands on an older GPU or in F32, the exact (and
    /// slow) reference on the CPU.
    /// </summary>
    public static string Caveat(IBackend backend, DType dtype) => backend switch
    {
        CudaBackend cuda when cuda.CudaDevice.ComputeCapability is var (major, minor) && (major < 8 || major == 8 && minor < 9) =>
            $"no FP8 tensor cores on {cuda.CudaDevice.Architecture} (they need sm_89 or later): the products run on dequantized operands",
        CudaBackend when dtype is not (DType.BF16 or DType.F16) =>
            $"the FP8 tensor cores write bf16 or f16, not {dtype}: the products run on dequantized operands (--dtype bf16 uses them)",
        CudaBackend => "",
        _ => "FP8 on the CPU is the exact reference, not a fast path; --quantize int8 is one there",
    };
}
