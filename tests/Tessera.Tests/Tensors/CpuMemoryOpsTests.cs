using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

public class CpuMemoryOpsTests
{
    private readonly CpuBackend _cpu = new(2);

    [Fact]
    public void CopyToHostOfTransposedViewReadsRowMajorOrderOfTheView()
    {
        var t = _cpu.FromArray(new float[] { 1, 2, 3, 4, 5, 6 }, 2, 3);
        var host = _cpu.ToArray<float>(t.Transpose(0, 1));
        Assert.Equal(new float[] { 1, 4, 2, 5, 3, 6 }, host);
    }

    [Fact]
    public void CopyFromHostRejectsAHostTypeThatDiffersFromTheDType()
    {
        var t = _cpu.Allocate(new Shape(4), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.CopyFromHost<double>(new double[4], t));
        Assert.Contains("F32", e.Message);
        Assert.Throws<ArgumentException>(() => _cpu.CopyToHost<int>(t, new int[4]));
        Assert.Throws<ArgumentException>(() => _cpu.CopyFromHost<float>(new float[3], t));
    }

    [Theory]
    [InlineData(DType.F32, DType.F64)]
    [InlineData(DType.F64, DType.F32)]
    [InlineData(DType.F32, DType.BF16)]
    [InlineData(DType.BF16, DType.F32)]
    [InlineData(DType.F32, DType.F16)]
    [InlineData(DType.F16, DType.F64)]
    [InlineData(DType.F64, DType.I32)]
    [InlineData(DType.I32, DType.F32)]
    [InlineData(DType.U16, DType.I32)]
    [InlineData(DType.I8, DType.F64)]
    [InlineData(DType.F32, DType.F32)]
    public void CopyCastsBetweenDTypesAsTheScalarConversions(DType from, DType to)
    {
        // Small integers are exact in every dtype; the fraction 0.25 survives every float type.
        var values = new double[] { 0, 1, 2, 3, 7, 100, 0.25, 12 };
        if (from is DType.I32 or DType.U16 or DType.I8 || to is DType.I32 or DType.U16 or DType.I8) values[6] = 5;
        var src = TestTensors.FromDoubles(_cpu, values, from, 2, 4);
        var dst = _cpu.Allocate(new Shape(2, 4), to);
        _cpu.Copy(src, dst);
        Assert.Equal(values, TestTensors.ToDoubles(_cpu, dst));
    }

    [Fact]
    public void CopyRoundsF32ToBF16ToNearestEvenAndTruncatesToInt()
    {
        var src = _cpu.FromArray(new float[] { 1.00390625f /* 1 + 2^-8: tie, rounds to 1 */, 1.01171875f /* 1 + 3*2^-8: tie, rounds up */, -2.7f, 2.7f }, 4);
        var bf = _cpu.Allocate(new Shape(4), DType.BF16);
        _cpu.Copy(src, bf);
        var back = TestTensors.ToDoubles(_cpu, bf);
        Assert.Equal(1.0, back[0]);
        Assert.Equal(1.015625, back[1]);
        var ints = _cpu.Allocate(new Shape(4), DType.I32);
        _cpu.Copy(src, ints);
        Assert.Equal(new[] { 1, 1, -2, 2 }, _cpu.ToArray<int>(ints));
    }

    /// <summary>
    /// The vectorized F32 to BF16 and BF16 to F32 casts (16 elements a step) give exactly the scalar conversions'
    /// bits on random bit patterns (NaNs, infinities, subnormals, rounding ties), with lengths that leave a tail.
    /// </summary>
    [Fact]
    public void VectorizedBFloat16CastsMatchTheScalarConversionsBitForBit()
    {
        var rng = new Random(17);
        const int n = 1003;
        var bits = new uint[n];
        for (int i = 0; i < n; i++) bits[i] = (uint)rng.NextInt64(0, 1L << 32);
        bits[0] = 0x7F80_0000u; bits[1] = 0xFF80_0001u; bits[2] = 0x0000_8000u; bits[3] = 0x3F80_8000u; bits[4] = 0x3F81_8000u;
        bits[5] = 0x7F7F_FFFFu; bits[6] = 0x0000_0001u; bits[7] = 0x8000_0000u;
        var floats = bits.Select(BitConverter.UInt32BitsToSingle).ToArray();
        var narrow = _cpu.Allocate(new Shape(n), DType.BF16);
        _cpu.Copy(_cpu.FromArray(floats, n), narrow);
        var got = _cpu.ToArray<BFloat16>(narrow);
        for (int i = 0; i < n; i++) Assert.Equal(BFloat16.FromSingle(floats[i]).Bits, got[i].Bits);
        var wide = _cpu.Allocate(new Shape(n), DType.F32);
        _cpu.Copy(narrow, wide);
        var back = _cpu.ToArray<float>(wide);
        for (int i = 0; i < n; i++) Assert.Equal(BitConverter.SingleToUInt32Bits(got[i].ToSingle()), BitConverter.SingleToUInt32Bits(back[i]));
    }

    [Fact]
    public void CopyBetweenArbitraryStridedViewsOfRankFourMatchesIndexArithmetic()
    {
        var rng = new Random(1);
        var data = TestTensors.Normal(rng, 2 * 3 * 4 * 5);
        var src = TestTensors.FromDoubles(_cpu, data, DType.F64, 2, 3, 4, 5);
        // A permuted view (2,5,4,3)->(d0,d3,d2,d1), copied into a slice of a larger F32 buffer.
        var view = src.Transpose(1, 3);
        var big = _cpu.Allocate(new Shape(2, 5, 4, 7), DType.F32);
        _cpu.Fill(big, -99);
        var dst = big.Slice(3, 2, 3);
        _cpu.Copy(view, dst);
        var got = TestTensors.ToDoubles(_cpu, big);
        for (int a = 0; a < 2; a++)
            for (int b = 0; b < 5; b++)
                for (int c = 0; c < 4; c++)
                    for (int d = 0; d < 7; d++)
                    {
                        double expected = d is >= 2 and < 5 ? (float)data[((a * 3 + (d - 2)) * 4 + c) * 5 + b] : -99;
                        Assert.Equal(expected, got[((a * 5 + b) * 4 + c) * 7 + d]);
                    }
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    [InlineData(DType.I32)]
    [InlineData(DType.U16)]
    [InlineData(DType.I8)]
    public void FillSetsEveryElementOfEveryDType(DType dtype)
    {
        var t = _cpu.Allocate(new Shape(3, 37), dtype);
        _cpu.Fill(t, 5);
        Assert.All(TestTensors.ToDoubles(_cpu, t), x => Assert.Equal(5.0, x));
    }

    [Fact]
    public void FillOfAStridedViewLeavesTheGapsAlone()
    {
        var t = _cpu.Zeros(new Shape(4, 6), DType.F32);
        _cpu.Fill(t.Slice(1, 1, 2), 3);
        var got = _cpu.ToArray<float>(t);
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 6; c++)
                Assert.Equal(c is 1 or 2 ? 3f : 0f, got[r * 6 + c]);
    }

    [Fact]
    public void LargeContiguousCopyUsesThreadsAndStaysExact()
    {
        var rng = new Random(2);
        var data = TestTensors.Normal(rng, 300_000);
        var src = TestTensors.FromDoubles(_cpu, data, DType.F64, 300_000);
        var dst = _cpu.Allocate(src.Shape, DType.F32);
        _cpu.Copy(src, dst);
        var got = _cpu.ToArray<float>(dst);
        for (int i = 0; i < data.Length; i++) Assert.Equal((float)data[i], got[i]);
    }
}
