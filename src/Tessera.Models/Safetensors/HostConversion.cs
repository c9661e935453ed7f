using System.Runtime.InteropServices;
using Tessera.Tensors;

namespace Tessera.Models.Safetensors;

/// <summary>Widening and narrowing between little-endian tensor bytes and float/double host arrays.</summary>
internal static class HostConversion
{
    /// <summary>Converts <paramref name="source"/> bytes of <paramref name="dtype"/> to floats (F64 rounds to nearest).</summary>
    public static void ToSingle(DType dtype, ReadOnlySpan<byte> source, Span<float> destination)
    {
        switch (dtype)
        {
            case DType.F32: MemoryMarshal.Cast<byte, float>(source).CopyTo(destination); break;
            case DType.F64:
            {
                var s = MemoryMarshal.Cast<byte, double>(source);
                for (int i = 0; i < s.Length; i++) destination[i] = (float)s[i];
                break;
            }
            case DType.BF16:
            {
                var s = MemoryMarshal.Cast<byte, ushort>(source);
                for (int i = 0; i < s.Length; i++) destination[i] = BFloat16.FromBits(s[i]).ToSingle();
                break;
            }
            case DType.F16:
            {
                var s = MemoryMarshal.Cast<byte, Half>(source);
                for (int i = 0; i < s.Length; i++) destination[i] = (float)s[i];
                break;
            }
            default: throw new NotSupportedException($"cannot convert {dtype} tensor data to floating point");
        }
    }

    /// <summary>Converts <paramref name="source"/> bytes of <paramref name="dtype"/> to doubles (exact for every float dtype).</summary>
    public static void ToDouble(DType dtype, ReadOnlySpan<byte> source, Span<double> destination)
    {
        switch (dtype)
        {
            case DType.F64: MemoryMarshal.Cast<byte, double>(source).CopyTo(destination); break;
            case DType.F32:
            {
                var s = MemoryMarshal.Cast<byte, float>(source);
                for (int i = 0; i < s.Length; i++) destination[i] = s[i];
                break;
            }
            case DType.BF16:
            {
                var s = MemoryMarshal.Cast<byte, ushort>(source);
                for (int i = 0; i < s.Length; i++) destination[i] = BFloat16.FromBits(s[i]).ToSingle();
                break;
            }
            case DType.F16:
            {
                var s = MemoryMarshal.Cast<byte, Half>(source);
                for (int i = 0; i < s.Length; i++) destination[i] = (double)s[i];
                break;
            }
            default: throw new NotSupportedException($"cannot convert {dtype} tensor data to floating point");
        }
    }
}
