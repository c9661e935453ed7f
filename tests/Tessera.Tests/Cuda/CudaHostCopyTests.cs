using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Copies between the host and the device of tensors past 2 GiB, which a span cannot count in bytes: an F32 master of a
/// 151,936 x 3,584 token table (Qwen2-57B-A14B, Qwen2.5-7B) is 2.18 GB, and until 2026-12-06 its upload threw an
/// OverflowException (and so would its download, e.g. into a checkpoint).
/// </summary>
[Collection("cuda")]
public sealed class CudaHostCopyTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Fact]
    public void TensorsOfMoreThanTwoGibibytesCrossTheHostBothWays()
    {
        var gpu = Gpu;
        // 2^29 + 3 F32 values: 2 GiB and 12 bytes, so the last staging chunk is 3 values. Each value is its index modulo a
        // prime under 2^24 (exact in F32), so a chunk written at the wrong offset or dropped shows as a mismatch.
        int n = (1 << 29) + 3;
        var values = new float[n];
        System.Threading.Tasks.Parallel.For(0, (n + (1 << 20) - 1) >> 20, c =>
        {
            for (int i = c << 20, end = Math.Min(n, (c + 1) << 20); i < end; i++) values[i] = i % 16_777_213;
        });
        var t = gpu.Allocate(new Shape(n), DType.F32);
        try
        {
            gpu.CopyFromHost<float>(values, t);
            var back = new float[n];
            gpu.CopyToHost<float>(t, back);
            int first = values.AsSpan().CommonPrefixLength(back);
            Assert.True(first == n, $"the copy differs first at value {first} of {n}: {(first < n ? back[first] : 0)} for {(first < n ? values[first] : 0)}");
        }
        finally
        {
            t.Storage.Dispose();
        }
    }
}
