using Tessera.Cuda;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// How many CTAs of a thread-block cluster share a row of the device draw when the options leave it open
/// (<see cref="CudaBackend.SamplingClusterShape"/>, no GPU needed): the fewest, a power of two up to 8, that give the batch two
/// CTAs an SM, while each CTA keeps at least 2,048 of the row's logits. Not yet timed on a GPU (CudaSamplingSpeedReport).
/// </summary>
public sealed class SamplingClusterShapeTests
{
    [Theory]
    [InlineData(64, 128_256, 132, 8)]     // the H100 serving batch: 512 CTAs
    [InlineData(60, 128_256, 132, 8)]
    [InlineData(100, 128_256, 132, 4)]
    [InlineData(256, 128_256, 132, 2)]
    [InlineData(264, 128_256, 132, 1)]
    [InlineData(1, 128_256, 132, 8)]
    [InlineData(1, 12_000, 132, 4)]       // each CTA keeps at least 2,048 logits (3,000 at 4, 1,500 at 8)
    [InlineData(8, 1_000, 132, 1)]        // the tests' small vocabularies: one CTA a row
    [InlineData(0, 128_256, 132, 8)]
    public void FewestCtasThatFillTheMachine(int rows, int columns, int multiprocessors, int expected) =>
        Assert.Equal(expected, CudaBackend.SamplingClusterShape(rows, columns, multiprocessors));

    [Fact]
    public void OptionsTakeZeroToEightCtasOrAuto()
    {
        Assert.Null(CudaBackendOptions.Default.SamplingClusterCtas);
        Assert.Equal(0, CudaBackendOptions.Parse("SamplingClusterCtas=0").SamplingClusterCtas);
        Assert.Equal(4, CudaBackendOptions.Parse("SamplingClusterCtas=4").SamplingClusterCtas);
        Assert.Null(CudaBackendOptions.Parse("SamplingClusterCtas=auto").SamplingClusterCtas);
        Assert.Throws<ArgumentException>(() => CudaBackendOptions.Parse("SamplingClusterCtas=3"));
    }
}
