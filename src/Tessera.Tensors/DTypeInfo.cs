namespace Tessera.Tensors;

/// <summary>Facts about <see cref="DType"/> values.</summary>
public static class DTypeInfo
{
    /// <summary>Size of one element in bytes.</summary>
    public static int SizeInBytes(this DType dtype) => dtype switch
    {
        DType.F32 or DType.I32 => 4,
        DType.F64 => 8,
        DType.BF16 or DType.F16 or DType.U16 => 2,
        DType.I8 or DType.F8E4M3 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown dtype"),
    };

    /// <summary>True for F32, F64, BF16 and F16.</summary>
    public static bool IsFloatingPoint(this DType dtype) =>
        dtype is DType.F32 or DType.F64 or DType.BF16 or DType.F16;

    /// <summary>The DType that stores a CLR type <typeparamref name="T"/> (<see cref="byte"/>: the raw codes of F8E4M3).</summary>
    public static DType Of<T>() where T : unmanaged =>
        TryOf<T>() ?? throw new NotSupportedException($"no DType stores CLR type {typeof(T).Name}");

    /// <summary>The DType that stores a CLR type <typeparamref name="T"/>, or null where none does (see <see cref="Of{T}"/>).</summary>
    public static DType? TryOf<T>() where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return DType.F32;
        if (typeof(T) == typeof(double)) return DType.F64;
        if (typeof(T) == typeof(BFloat16)) return DType.BF16;
        if (typeof(T) == typeof(Half)) return DType.F16;
        if (typeof(T) == typeof(int)) return DType.I32;
        if (typeof(T) == typeof(ushort)) return DType.U16;
        if (typeof(T) == typeof(sbyte)) return DType.I8;
        if (typeof(T) == typeof(byte)) return DType.F8E4M3;
        return null;
    }

    /// <summary>The safetensors dtype string ("F32", "BF16", ...).</summary>
    public static string SafetensorsName(this DType dtype) => dtype switch
    {
        DType.F32 => "F32",
        DType.F64 => "F64",
        DType.BF16 => "BF16",
        DType.F16 => "F16",
        DType.I32 => "I32",
        DType.U16 => "U16",
        DType.I8 => "I8",
        DType.F8E4M3 => "F8_E4M3",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    /// <summary>Parses a safetensors dtype string; null when unknown.</summary>
    public static DType? FromSafetensorsName(string name) => name switch
    {
        "F32" => DType.F32,
        "F64" => DType.F64,
        "BF16" => DType.BF16,
        "F16" => DType.F16,
        "I32" => DType.I32,
        "U16" => DType.U16,
        "I8" => DType.I8,
        "F8_E4M3" => DType.F8E4M3,
        _ => null,
    };
}
