using System.Numerics;
using System.Runtime.CompilerServices;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>Whole-run reductions accumulated in double (loss sums, gradient norms over millions of elements).</summary>
internal static unsafe class ReduceKernels
{
    /// <summary>Sum of <paramref name="n"/> elements.</summary>
    public static double Sum<T>(T* x, long n) where T : unmanaged, IFloatingPointIeee754<T> => Reduce(x, n, squares: false);

    /// <summary>Sum of the squares of <paramref name="n"/> elements.</summary>
    public static double SumOfSquares<T>(T* x, long n) where T : unmanaged, IFloatingPointIeee754<T> => Reduce(x, n, squares: true);

    private static double Reduce<T>(T* x, long n, bool squares) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        double s = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var acc = Vector<double>.Zero;
            if (typeof(T) == typeof(float))
            {
                float* f = (float*)x;
                for (; i <= n - Vector<float>.Count; i += Vector<float>.Count)
                {
                    Vector.Widen(Unsafe.ReadUnaligned<Vector<float>>(f + i), out var lo, out var hi);
                    acc += squares ? lo * lo + hi * hi : lo + hi;
                }
            }
            else if (typeof(T) == typeof(double))
            {
                double* d = (double*)x;
                for (; i <= n - Vector<double>.Count; i += Vector<double>.Count)
                {
                    var v = Unsafe.ReadUnaligned<Vector<double>>(d + i);
                    acc += squares ? v * v : v;
                }
            }
            s = Vector.Sum(acc);
        }
        for (; i < n; i++) { double v = double.CreateTruncating(x[i]); s += squares ? v * v : v; }
        return s;
    }
}
