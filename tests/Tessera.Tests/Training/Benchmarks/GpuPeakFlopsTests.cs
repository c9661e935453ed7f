using Tessera.Tensors;
using Tessera.Training.Benchmarks;
using Xunit;

namespace Tessera.Tests.Training.Benchmarks;

public sealed class GpuPeakFlopsTests
{
    [Theory]
    [InlineData("NVIDIA H100 80GB HBM3", DType.BF16, 989.4e12, "H100 SXM dense BF16")]
    [InlineData("NVIDIA H100 80GB HBM3", DType.F32, 66.9e12, "H100 SXM FP32")]
    [InlineData("NVIDIA H100 PCIe", DType.BF16, 756e12, "H100 PCIe dense BF16")]   // not the SXM entry, though it says H100
    [InlineData("NVIDIA H100 NVL", DType.BF16, 835e12, "H100 NVL dense BF16")]
    [InlineData("NVIDIA H200", DType.BF16, 989.4e12, "H200 SXM dense BF16")]
    [InlineData("NVIDIA A100-SXM4-80GB", DType.F32, 19.5e12, "A100 FP32")]
    public void KnownGpusHaveTheirDatasheetPeak(string name, DType dtype, double flops, string label)
    {
        var peak = GpuPeakFlops.Find(name, dtype);
        Assert.NotNull(peak);
        Assert.Equal(flops, peak.Value.FlopsPerSecond);
        Assert.Equal(label, peak.Value.Label);
    }

    [Theory]
    [InlineData("NVIDIA GeForce RTX 4090", DType.BF16)]
    [InlineData("NVIDIA H100 80GB HBM3", DType.F64)]
    public void UnknownGpusOrDtypesHaveNoPeak(string name, DType dtype) => Assert.Null(GpuPeakFlops.Find(name, dtype));
}
