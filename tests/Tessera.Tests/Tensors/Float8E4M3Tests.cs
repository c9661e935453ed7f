using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// <see cref="Float8E4M3"/> against the OCP E4M3 ("fn") definition: the value of every code computed here from its bit fields,
/// the round trip of every code, ties to even at the midpoints between neighbours, saturation above 448, NaN, and the
/// subnormal range down to 2^-9 and below.
/// </summary>
public class Float8E4M3Tests
{
    /// <summary>The value of <paramref name="code"/> from the definition: (-1)^s 2^(e-7) (1 + m/8), or (-1)^s 2^-6 (m/8) for e = 0; S.1111.111 is NaN.</summary>
    private static double Definition(int code)
    {
        int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
        if (e == 15 && m == 7) return double.NaN;
        double magnitude = e == 0 ? Math.Pow(2, -6) * (m / 8.0) : Math.Pow(2, e - 7) * (1 + m / 8.0);
        return s == 1 ? -magnitude : magnitude;
    }

    [Fact]
    public void EveryCodeDecodesToItsValueByDefinition()
    {
        for (int c = 0; c < 256; c++)
        {
            double expected = Definition(c), got = Float8E4M3.ToSingle((byte)c);
            if (double.IsNaN(expected)) Assert.True(double.IsNaN(got), $"code 0x{c:X2} must be NaN, got {got}");
            else Assert.True(expected == got, $"code 0x{c:X2}: {got} against {expected}");
        }
        Assert.Equal(448.0, Definition(0x7E));                    // the largest finite value
        Assert.Equal(Math.Pow(2, -9), Definition(0x01));          // the smallest subnormal
        Assert.Equal(Math.Pow(2, -6), Definition(0x08));          // the smallest normal
    }

    [Fact]
    public void EveryNonNaNCodeRoundTrips()
    {
        for (int c = 0; c < 256; c++)
        {
            if ((c & 0x7F) == 0x7F) continue;
            Assert.Equal((byte)c, Float8E4M3.FromSingle(Float8E4M3.ToSingle((byte)c)));
        }
    }

    /// <summary>
    /// The midpoint between each pair of neighbouring positive codes (exact in F32: one more significant bit than E4M3 needs)
    /// goes to the one whose mantissa is even; a hair either side of it goes to the nearer one. Negative values mirror it.
    /// </summary>
    [Fact]
    public void MidpointsRoundToEvenAndNeighboursToTheNearer()
    {
        for (int c = 0; c < 0x7E; c++)
        {
            double lo = Definition(c), hi = Definition(c + 1), mid = (lo + hi) / 2;
            int even = (c & 1) == 0 ? c : c + 1;
            Assert.Equal((byte)even, Float8E4M3.FromSingle((float)mid));
            Assert.Equal((byte)(even | 0x80), Float8E4M3.FromSingle((float)-mid));
            Assert.Equal((byte)c, Float8E4M3.FromSingle(MathF.BitDecrement((float)mid)));
            Assert.Equal((byte)(c + 1), Float8E4M3.FromSingle(MathF.BitIncrement((float)mid)));
        }
    }

    [Theory]
    [InlineData(448f, 0x7E)]
    [InlineData(449f, 0x7E)]                      // above 448: saturates (satfinite), never NaN
    [InlineData(464f, 0x7E)]                      // the midpoint to the absent 480
    [InlineData(1e30f, 0x7E)]
    [InlineData(float.PositiveInfinity, 0x7E)]
    [InlineData(-500f, 0xFE)]
    [InlineData(float.NegativeInfinity, 0xFE)]
    [InlineData(float.NaN, 0x7F)]
    [InlineData(0f, 0x00)]
    [InlineData(-0f, 0x80)]
    public void SpecialValuesSaturateOrAreNaN(float value, int code) => Assert.Equal((byte)code, Float8E4M3.FromSingle(value));

    /// <summary>
    /// Below 2^-6 the steps are 2^-9: 2^-10 (half the smallest subnormal) is a tie and goes to zero, a hair above it to 2^-9;
    /// 1.5 x 2^-9 ties to 2 x 2^-9 (even); the largest subnormal, 7 x 2^-9, and the smallest normal meet at 7.5 x 2^-9, which
    /// goes to the normal (code 0x08, even); F32's own subnormals give zero.
    /// </summary>
    [Theory]
    [InlineData(1.0 / 1024, 0x00)]
    [InlineData(1.0 / 1024 * 1.0001, 0x01)]
    [InlineData(1.5 / 512, 0x02)]
    [InlineData(2.5 / 512, 0x02)]
    [InlineData(7.0 / 512, 0x07)]
    [InlineData(7.5 / 512, 0x08)]
    [InlineData(1e-40, 0x00)]
    [InlineData(-1.0 / 512, 0x81)]
    public void TinyValuesRoundThroughTheSubnormals(double value, int code) => Assert.Equal((byte)code, Float8E4M3.FromSingle((float)value));
}
