using Tessera.Tensors;
using Tessera.Tests.Models.Golden;
using Xunit;

namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// The golden tests (Tessera against PyTorch + transformers on tiny random-init models) on the CUDA backend:
/// the same test bodies and tolerances as <see cref="GoldenModelTests"/> (F32: 1e-4 relative; cuBLASLt runs
/// with TF32 off). The F64 cases skip: the CUDA kernels compute in F32, BF16 and F16.
/// </summary>
[Collection("cuda")]
public sealed class CudaGoldenModelTests(CudaFixture fixture) : GoldenModelTests
{
    /// <inheritdoc/>
    protected override IBackend CreateBackend(DType dtype)
    {
        var backend = fixture.Backend;
        if (dtype != DType.F32) Assert.Skip($"the CUDA backend has no {dtype} kernels for the whole model; {dtype} goldens run on the CPU");
        return backend;
    }
}
