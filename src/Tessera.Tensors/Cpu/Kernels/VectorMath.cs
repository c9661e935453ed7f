using System.Numerics;
using System.Runtime.CompilerServices;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>Transcendental functions on <see cref="Vector{T}"/> for T = float or double (the JIT removes the type tests).</summary>
internal static class VectorMath
{
    /// <summary>e^x lane by lane (.NET's vectorized exp: within a few ulp, overflows to +inf, underflows to 0).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Exp<T>(Vector<T> x) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float))
        {
            var r = Vector.Exp(Unsafe.As<Vector<T>, Vector<float>>(ref x));
            return Unsafe.As<Vector<float>, Vector<T>>(ref r);
        }
        if (typeof(T) == typeof(double))
        {
            var r = Vector.Exp(Unsafe.As<Vector<T>, Vector<double>>(ref x));
            return Unsafe.As<Vector<double>, Vector<T>>(ref r);
        }
        throw new NotSupportedException($"vector exp of {typeof(T).Name}");
    }

    /// <summary>1 / (1 + e^-x), which tends to 0 and 1 without NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Sigmoid<T>(Vector<T> x) where T : unmanaged, IFloatingPointIeee754<T>
        => Vector<T>.One / (Vector<T>.One + Exp(-x));
}
