using System.Numerics;
using System.Runtime.InteropServices;
using Tessera.Tensors;

namespace Tessera.Models.Safetensors;

/// <summary>Widening and narrowing between little-endian tensor bytes and float/double host arrays.</summary>
internal static class HostConversion
{
    /// <summary>Converts <paramref name="source"/> bytes of <paramref name="dtype"/> to floats (F64 rounds to nearest).</summary>
    public static void ToSingle(DType dtype, ReadOnlySpan<byte> source, Span<float> destination) => Convert(dtype, source, destination);

    /// <summary>Converts <paramref name="source"/> bytes of <paramref name="dtype"/> to doubles (exact for every float dtype).</summary>
    public static void ToDouble(DType dtype, ReadOnlySpan<byte> source, Span<double> destination) => Convert(dtype, source, destination);

    private static void Convert<T>(DType dtype, ReadOnlySpan<byte> source, Span<T> destination) where T : unmanaged, IFloatingPointIeee754<T>
    {
        switch (dtype)
        {
            case DType.F32: Convert(MemoryMarshal.Cast<byte, float>(source), destination); break;
            case DType.F64: Convert(MemoryMarshal.Cast<byte, double>(source), destination); break;
            case DType.BF16:
            {
                var s = MemoryMarshal.Cast<byte, ushort>(source);
                for (int i = 0; i < s.Length; i++) destination[i] = T.CreateTruncating(BFloat16.FromBits(s[i]).ToSingle());
                break;
            }
            case DType.F16: Convert(MemoryMarshal.Cast<byte, Half>(source), destination); break;
            default: throw new NotSupportedException($"cannot convert {dtype} tensor data to floating point");
        }
    }

    // The same type is copied; otherwise each element is cast (CreateTruncating between IEEE types is the C# cast:
    // double to float rounds to nearest, every other pair here widens exactly).
    private static void Convert<TFrom, T>(ReadOnlySpan<TFrom> source, Span<T> destination)
        where TFrom : unmanaged, IFloatingPointIeee754<TFrom> where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(TFrom) == typeof(T))
        {
            MemoryMarshal.Cast<TFrom, T>(source).CopyTo(destination);
            return;
        }
        for (int i = 0; i < source.Length; i++) destination[i] = T.CreateTruncating(source[i]);
    }
}
