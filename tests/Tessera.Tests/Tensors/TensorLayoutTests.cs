using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Tensors;

public class TensorLayoutTests
{
    private readonly CpuBackend _cpu = new(1);

    [Fact]
    public void TransposeSwapsShapeAndStridesWithoutCopying()
    {
        var t = _cpu.Allocate(new Shape(2, 3, 4), DType.F32);
        var tt = t.Transpose(0, 2);
        Assert.Equal(new Shape(4, 3, 2), tt.Shape);
        Assert.Equal(new long[] { 1, 4, 12 }, tt.Strides.ToArray());
        Assert.Same(t.Storage, tt.Storage);
        Assert.False(tt.IsContiguous);
    }

    [Fact]
    public void SliceMovesOffsetAndKeepsStrides()
    {
        var t = _cpu.Allocate(new Shape(5, 6), DType.F32);
        var s = t.Slice(1, 2, 3);
        Assert.Equal(new Shape(5, 3), s.Shape);
        Assert.Equal(2, s.Offset);
        Assert.Equal(6, s.Stride(0));
        var r = t.Slice(0, 1, 2);
        Assert.Equal(6, r.Offset);
        Assert.True(r.IsContiguous);
    }

    [Fact]
    public void ReshapeInfersOneDimensionAndRejectsNonContiguousViews()
    {
        var t = _cpu.Allocate(new Shape(4, 6), DType.F32);
        Assert.Equal(new Shape(2, 12), t.Reshape(2, -1).Shape);
        Assert.Throws<InvalidOperationException>(() => t.Transpose(0, 1).Reshape(24));
        Assert.Throws<ArgumentException>(() => t.Reshape(5, 5));
    }

    [Fact]
    public void ViewOutsideStorageIsRejected()
    {
        var t = _cpu.Allocate(new Shape(4), DType.F32);
        Assert.Throws<ArgumentException>(() => new Tensor(t.Storage, new Shape(5)));
        Assert.Throws<ArgumentOutOfRangeException>(() => t.Slice(0, 3, 2));
    }

    [Theory]
    [InlineData(1.0f)]
    [InlineData(-3.140625f)]
    [InlineData(65280f)] // 0xFF * 2^8: eight significant bits
    public void BFloat16RoundTripsExactlyRepresentableValues(float x)
        => Assert.Equal(x, BFloat16.FromSingle(x).ToSingle());

    [Fact]
    public void BFloat16RoundsToNearestEven()
    {
        // 1 + 2^-8 lies exactly between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        Assert.Equal(1.0f, BFloat16.FromSingle(1f + 1f / 256).ToSingle());
        // 1 + 3*2^-8 lies between 1+2^-7 (odd) and 1+2^-6 (even): rounds up to 1 + 2^-6.
        Assert.Equal(1f + 1f / 64, BFloat16.FromSingle(1f + 3f / 256).ToSingle());
        Assert.True(float.IsNaN(BFloat16.FromSingle(float.NaN).ToSingle()));
    }
}
