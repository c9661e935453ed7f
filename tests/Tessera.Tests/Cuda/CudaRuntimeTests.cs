using Xunit;
using Tessera.Cuda.Interop;
using Tessera.Tensors;

namespace Tessera.Tests.Cuda;

/// <summary>Device properties, the allocator, host transfers, copies, casts and fills.</summary>
[Collection("cuda")]
public sealed class CudaRuntimeTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Fact]
    public void DeviceReportsItsProperties()
    {
        var d = Gpu.CudaDevice;
        Assert.False(string.IsNullOrWhiteSpace(d.Name));
        Assert.True(d.MultiprocessorCount > 0);
        Assert.True(d.ComputeCapability.Major >= 7, d.ToString());
        Assert.True(d.TotalMemoryBytes > 1L << 30);
        var (free, total) = d.MemoryInfo();
        Assert.InRange(free, 1, total);
        TestContext.Current.SendDiagnosticMessage(d.ToString());
    }

    [Fact]
    public void AllocatorTracksBytesInUseAndPeak()
    {
        Gpu.Synchronize();
        var before = Gpu.Allocator.Statistics;
        Gpu.Allocator.ResetPeak();
        var a = Gpu.Allocate(new Shape(1 << 20), DType.F32);
        var b = Gpu.Allocate(new Shape(1 << 19), DType.BF16);
        var mid = Gpu.Allocator.Statistics;
        Assert.Equal(before.BytesInUse + (4L << 20) + (1L << 20), mid.BytesInUse);
        Assert.Equal(before.Allocations + 2, mid.Allocations);
        a.Storage.Dispose();
        b.Storage.Dispose();
        var after = Gpu.Allocator.Statistics;
        Assert.Equal(before.BytesInUse, after.BytesInUse);
        Assert.Equal(mid.BytesInUse, after.PeakBytesInUse);
    }

    [Fact]
    public void OutOfMemoryNamesTheRequestAndThePeak()
    {
        var e = Assert.Throws<CudaOutOfMemoryException>(() => Gpu.Allocate(new Shape(1 << 30, 1 << 10), DType.F32)); // 4 TiB
        Assert.Contains("cannot allocate 4096.00 GiB", e.Message);
        Assert.Contains("peak", e.Message);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    [InlineData(DType.F64)]
    public void HostRoundTripIsExact(DType dtype)
    {
        var (t, values) = Random(dtype, 3.0, 37, 129);
        Assert.Equal(values, Download(t));
    }

    [Fact]
    public void LargeTransferCrossesTheStagingBuffer()
    {
        var (t, values) = Random(DType.F32, 1.0, 20 << 20); // 80 MB > the 64 MB staging buffer
        Assert.Equal(values, Download(t));
    }

    [Theory]
    [InlineData(DType.F32, DType.BF16)]
    [InlineData(DType.BF16, DType.F32)]
    [InlineData(DType.F32, DType.F16)]
    [InlineData(DType.F16, DType.BF16)]
    [InlineData(DType.F64, DType.F32)]
    public void CastRoundsLikeTheHost(DType from, DType to)
    {
        var (src, values) = Random(from, 100.0, 1000, 3);
        var dst = Poisoned(to, 1000, 3);
        Gpu.Copy(src, dst);
        // Exact: device and host both round to nearest even (f64 -> f32 -> 16-bit is the same double rounding on both).
        Assert.Equal(Stored(Stored(values, DType.F32), to), Download(dst));
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void StridedCopyTransposesRank4(DType dtype)
    {
        var (src, values) = Random(dtype, 1.0, 2, 3, 5, 7);
        var view = src.Transpose(1, 3); // (2, 7, 5, 3)
        var dst = Poisoned(dtype, 2, 7, 5, 3);
        Gpu.Copy(view, dst);
        var got = Download(dst);
        for (int a = 0; a < 2; a++) for (int b = 0; b < 7; b++) for (int c = 0; c < 5; c++) for (int d = 0; d < 3; d++)
            Assert.Equal(values[((a * 3 + d) * 5 + c) * 7 + b], got[((a * 7 + b) * 5 + c) * 3 + d]);
        // And a non-contiguous source straight to the host.
        var host = Download(view);
        Assert.Equal(got, host);
        // A strided cast takes the other kernel path: widening to f64 is exact.
        var wide = Poisoned(DType.F64, 2, 7, 5, 3);
        Gpu.Copy(view, wide);
        Assert.Equal(got, Download(wide));
    }

    [Theory]
    [InlineData(DType.F32, 2.5)]
    [InlineData(DType.BF16, -1.25)]
    [InlineData(DType.F64, 0.1)]
    public void FillSetsEveryElement(DType dtype, double value)
    {
        var t = Poisoned(dtype, 1001);
        Gpu.Fill(t, value);
        Assert.All(Download(t), v => Assert.Equal(Stored([value], dtype)[0], v));
        Gpu.Fill(t, 0);
        Assert.All(Download(t), v => Assert.Equal(0.0, v));
    }
}
