using System.Runtime.CompilerServices;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>
/// Converts runs of elements between dtypes. Floating to integer truncates toward zero and
/// saturates (NaN becomes 0), as .NET's conversions do. F64 to BF16 rounds through F32.
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

        // The common mixed-precision pairs get loops without a per-element dtype switch.
        if (sourceType == DType.F32 && destinationType == DType.BF16)
        {
            float* s = (float*)source; BFloat16* d = (BFloat16*)destination;
            for (long i = 0; i < count; i++) d[i * destinationStride] = BFloat16.FromSingle(s[i * sourceStride]);
            return;
        }
        if (sourceType == DType.BF16 && destinationType == DType.F32)
        {
            BFloat16* s = (BFloat16*)source; float* d = (float*)destination;
            for (long i = 0; i < count; i++) d[i * destinationStride] = s[i * sourceStride].ToSingle();
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
            default: throw new ArgumentOutOfRangeException(nameof(type), type, "unknown dtype");
        }
    }
}
