using System.Runtime.CompilerServices;

namespace Tessera.Tensors;

/// <summary>
/// bfloat16: sign, 8 exponent bits, 7 mantissa bits; the upper half of an IEEE binary32.
/// Conversion from float rounds to nearest even, as PyTorch and CUDA's __float2bfloat16 do.
/// </summary>
public readonly struct BFloat16 : IEquatable<BFloat16>
{
    /// <summary>The raw 16 bits.</summary>
    public readonly ushort Bits;

    private BFloat16(ushort bits) => Bits = bits;

    /// <summary>Wraps raw bits.</summary>
    public static BFloat16 FromBits(ushort bits) => new(bits);

    /// <summary>Rounds a float to the nearest bfloat16 (ties to even); NaN stays NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static BFloat16 FromSingle(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7FFF_FFFFu) > 0x7F80_0000u) return new BFloat16((ushort)((u >> 16) | 0x40)); // quiet NaN
        uint rounding = 0x7FFFu + ((u >> 16) & 1u);
        return new BFloat16((ushort)((u + rounding) >> 16));
    }

    /// <summary>Widens to float exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float ToSingle() => BitConverter.UInt32BitsToSingle((uint)Bits << 16);

    public static explicit operator BFloat16(float value) => FromSingle(value);
    public static explicit operator float(BFloat16 value) => value.ToSingle();

    public bool Equals(BFloat16 other) => Bits == other.Bits;
    public override bool Equals(object? obj) => obj is BFloat16 b && Equals(b);
    public override int GetHashCode() => Bits;
    public override string ToString() => ToSingle().ToString("G4", System.Globalization.CultureInfo.InvariantCulture);
}
