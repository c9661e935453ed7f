using Tessera.Cuda;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// How many CTAs of a thread-block cluster share a row of the device draw when the options leave it open
/// (<see cref="CudaBackend.SamplingClusterShape"/>, no GPU needed): the fewest, a power of two up to 8, that give the batch two
/// CTAs an SM, while each CTA keeps at least 2,048 of the row's logits (timed on an H100 in session 31, CudaSamplingSpeedReport);
/// and one CTA a row for a call of temperature alone of 128 rows or more (<see cref="CudaBackend.SamplingKernelShape"/>).
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

    [Theory]
    [InlineData(256, false, 2)]           // a filter: the cluster at any batch
    [InlineData(256, true, 0)]            // temperature alone, 256 rows: one CTA a row (277 us against 314 on the H100)
    [InlineData(128, true, 0)]
    [InlineData(127, true, 4)]            // fewer rows: the cluster (64 rows: 99 us against 117)
    [InlineData(64, true, 8)]
    [InlineData(1, true, 8)]
    public void TemperatureAloneAtManyRowsTakesOneCtaARow(int rows, bool temperatureOnly, int expected) =>
        Assert.Equal(expected, CudaBackend.SamplingKernelShape(rows, 128_256, temperatureOnly, 132));

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
