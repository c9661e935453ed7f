namespace Tessera.Tensors;

/// <summary>
/// OCP FP8 E4M3 ("e4m3fn", <see cref="DType.F8E4M3"/>) codes: bit 7 the sign, bits 6-3 the exponent (bias 7), bits 2-0 the
/// mantissa. Exponent 0 is subnormal (m 2^-9, so the smallest nonzero magnitude is 2^-9); the format has no infinities, and
/// only S.1111.111 (0x7F, 0xFF) is NaN, which leaves 1.75 x 2^8 = 448 the largest finite magnitude. The conversion from F32
/// is the one the tensor cores' <c>cvt.rn.satfinite.e4m3x2.f32</c> performs: round to nearest, ties to even; magnitudes
/// above 448 (infinities too) saturate to ±448; NaN gives 0x7F.
/// </summary>
public static class Float8E4M3
{
    /// <summary>The largest finite magnitude, 448.</summary>
    public const float MaxValue = 448f;

    /// <summary>The code of NaN that <see cref="FromSingle"/> gives (0xFF is NaN too).</summary>
    public const byte NaN = 0x7F;

    /// <summary>The code of +448.</summary>
    public const byte MaxCode = 0x7E;

    private static readonly float[] Decoded = BuildTable();

    /// <summary>The value of <paramref name="code"/> (exact in F32: at most 4 significant bits).</summary>
    public static float ToSingle(byte code) => Decoded[code];

    /// <summary>
    /// <paramref name="value"/> rounded to the nearest E4M3 value, ties to even, saturating to ±448; NaN gives
    /// <see cref="NaN"/>; the sign of a zero (and of a value that rounds to zero) is kept.
    /// </summary>
    public static byte FromSingle(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        byte sign = (byte)((bits >> 24) & 0x80);
        uint magnitude = bits & 0x7FFF_FFFF;
        if (magnitude > 0x7F80_0000) return NaN;
        if (magnitude > 0x43E0_0000) return (byte)(sign | MaxCode);         // above 448 (0x43E00000), infinity included
        if (magnitude < 0x3C80_0000)                                          // below 2^-6, the smallest normal: steps of 2^-9
        {
            // a 2^9 is exact (a power-of-two scaling of a value below 2^-6) and below 8; its nearest integer, ties to even, is
            // the code (8 being 2^-6, the smallest normal, whose code is 0x08).
            float steps = MathF.Round(BitConverter.UInt32BitsToSingle(magnitude) * 512f, MidpointRounding.ToEven);
            return (byte)(sign | (int)steps);
        }
        // Normal: keep the top 3 of F32's 23 mantissa bits, rounding the 20 dropped ones to nearest even; a carry out of the
        // mantissa moves into the exponent, as it should. 448 is the largest result: anything above was saturated.
        uint exponent = (magnitude >> 23) - 127 + 7;                          // 1..8+7 for 2^-6..448
        uint mantissa = magnitude & 0x7F_FFFF;
        uint kept = mantissa >> 20, dropped = mantissa & 0xF_FFFF;
        uint code = (exponent << 3) | kept;
        if (dropped > 0x8_0000 || (dropped == 0x8_0000 && (kept & 1) != 0)) code++;
        return (byte)(sign | Math.Min(code, MaxCode));
    }

    private static float[] BuildTable()
    {
        var table = new float[256];
        for (int c = 0; c < 256; c++)
        {
            int exponent = (c >> 3) & 0xF, mantissa = c & 7;
            float magnitude = (c & 0x7F) == 0x7F ? float.NaN
                : exponent == 0 ? mantissa * (1f / 512f)
                : (8 + mantissa) * MathF.ScaleB(1f, exponent - 7 - 3);
            table[c] = (c & 0x80) != 0 ? -magnitude : magnitude;
        }
        return table;
    }
}
