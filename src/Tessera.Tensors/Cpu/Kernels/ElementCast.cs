using System.Runtime.Intrinsics;
using System.Runtime.CompilerServices;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>
/// Converts runs of elements between dtypes. Floating to integer truncates toward zero and
/// saturates (NaN becomes 0), as .NET's conversions do. F64 to BF16 and to F8E4M3 rounds through F32.
/// </summary>
internal static unsafe class ElementCast
{
    /// <summary>
    /// Converts <paramref name="count"/> elements read at <paramref name="source"/> (stride in elements)
    /// and written at <paramref name="destination"/> (stride in elements).
    /// </summary>
    public static void Run(DType sourceType, byte* source, long sourceStride,
        DType destinationType, byte* destination, long destinationStride, long count)
    {
        if (count <= 0) return;
        int sSize = sourceType.SizeInBytes(), dSize = destinationType.SizeInBytes();
        if (sourceType == destinationType)
        {
            if (sourceStride == 1 && destinationStride == 1)
            {
                long bytes = count * sSize;
                Buffer.MemoryCopy(source, destination, bytes, bytes);
                return;
            }
            switch (sSize)
            {
                case 8: CopyStrided((long*)source, sourceStride, (long*)destination, destinationStride, count); return;
                case 4: CopyStrided((int*)source, sourceStride, (int*)destination, destinationStride, count); return;
                case 2: CopyStrided((short*)source, sourceStride, (short*)destination, destinationStride, count); return;
                default: CopyStrided(source, sourceStride, destination, destinationStride, count); return;
            }
        }

        // The common mixed-precision pairs get loops without a per-element dtype switch, vectorized when contiguous
        // (the host half of ZeRO-Offload widens every BF16 gradient and narrows every updated value).
        if (sourceType == DType.F32 && destinationType == DType.BF16)
        {
            float* s = (float*)source; BFloat16* d = (BFloat16*)destination;
            long i = 0;
            if (sourceStride == 1 && destinationStride == 1) i = NarrowToBFloat16((uint*)s, (ushort*)d, count);
            for (; i < count; i++) d[i * destinationStride] = BFloat16.FromSingle(s[i * sourceStride]);
            return;
        }
        if (sourceType == DType.BF16 && destinationType == DType.F32)
        {
            BFloat16* s = (BFloat16*)source; float* d = (float*)destination;
            long i = 0;
            if (sourceStride == 1 && destinationStride == 1) i = WidenFromBFloat16((ushort*)s, (uint*)d, count);
            for (; i < count; i++) d[i * destinationStride] = s[i * sourceStride].ToSingle();
            return;
        }
        if (sourceType == DType.F32 && destinationType == DType.F64)
        {
            float* s = (float*)source; double* d = (double*)destination;
            for (long i = 0; i < count; i++) d[i * destinationStride] = s[i * sourceStride];
            return;
        }
        if (sourceType == DType.F64 && destinationType == DType.F32)
        {
            double* s = (double*)source; float* d = (float*)destination;
            for (long i = 0; i < count; i++) d[i * destinationStride] = (float)s[i * sourceStride];
            return;
        }
        if (sourceType == DType.F32 && destinationType == DType.F16)
        {
            float* s = (float*)source; Half* d = (Half*)destination;
            for (long i = 0; i < count; i++) d[i * destinationStride] = (Half)s[i * sourceStride];
            return;
        }
        if (sourceType == DType.F16 && destinationType == DType.F32)
        {
            Half* s = (Half*)source; float* d = (float*)destination;
            for (long i = 0; i < count; i++) d[i * destinationStride] = (float)s[i * sourceStride];
            return;
        }

        for (long i = 0; i < count; i++)
            Write(destinationType, destination + i * destinationStride * dSize, Read(sourceType, source + i * sourceStride * sSize));
    }

    private static void CopyStrided<T>(T* s, long sStride, T* d, long dStride, long count) where T : unmanaged
    {
        for (long i = 0; i < count; i++) d[i * dStride] = s[i * sStride];
    }

    /// <summary>One element as a double (exact for every dtype but I32 beyond 2^53, which cannot occur).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Read(DType type, byte* p) => type switch
    {
        DType.F32 => *(float*)p,
        DType.F64 => *(double*)p,
        DType.BF16 => ((BFloat16*)p)->ToSingle(),
        DType.F16 => (double)*(Half*)p,
        DType.I32 => *(int*)p,
        DType.U16 => *(ushort*)p,
        DType.I8 => *(sbyte*)p,
        DType.F8E4M3 => Float8E4M3.ToSingle(*p),
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype"),
    };

    /// <summary>Stores a double as one element of <paramref name="type"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Write(DType type, byte* p, double value)
    {
        switch (type)
        {
            case DType.F32: *(float*)p = (float)value; break;
            case DType.F64: *(double*)p = value; break;
            case DType.BF16: *(BFloat16*)p = BFloat16.FromSingle((float)value); break;
            case DType.F16: *(Half*)p = (Half)value; break;
            case DType.I32: *(int*)p = (int)value; break;
            case DType.U16: *(ushort*)p = (ushort)value; break;
            case DType.I8: *(sbyte*)p = (sbyte)value; break;
            case DType.F8E4M3: *p = Float8E4M3.FromSingle((float)value); break;
            default: throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype");
        }
    }

    /// <summary>
    /// F32 bits to BF16 in 16-element vectors with <see cref="BFloat16.FromSingle"/>'s rule (round to nearest even, NaN kept
    /// quiet); returns how many elements it converted (a multiple of 16; the caller does the tail).
    /// </summary>
    private static long NarrowToBFloat16(uint* source, ushort* destination, long count)
    {
        if (!Vector256.IsHardwareAccelerated) return 0;
        var magnitude = Vector256.Create(0x7FFF_FFFFu);
        var infinity = Vector256.Create(0x7F80_0000u);
        var half = Vector256.Create(0x7FFFu);
        var one = Vector256.Create(1u);
        var quiet = Vector256.Create(0x40u);
        long i = 0;
        for (; i + 16 <= count; i += 16)
        {
            var a = Vector256.Load(source + i);
            var b = Vector256.Load(source + i + 8);
            Vector256.Store(Vector256.Narrow(Round(a), Round(b)), destination + i);
        }
        return i;

        Vector256<uint> Round(Vector256<uint> u)
        {
            var nan = Vector256.GreaterThan(u & magnitude, infinity);
            var rounded = (u + half + ((u >> 16) & one)) >> 16;
            return Vector256.ConditionalSelect(nan, (u >> 16) | quiet, rounded);
        }
    }

    /// <summary>BF16 to F32 bits (exact: a 16-bit shift) in 16-element vectors; returns how many elements it converted.</summary>
    private static long WidenFromBFloat16(ushort* source, uint* destination, long count)
    {
        if (!Vector256.IsHardwareAccelerated) return 0;
        long i = 0;
        for (; i + 16 <= count; i += 16)
        {
            var (lower, upper) = Vector256.Widen(Vector256.Load(source + i));
            Vector256.Store(lower << 16, destination + i);
            Vector256.Store(upper << 16, destination + i + 8);
        }
        return i;
    }
}
