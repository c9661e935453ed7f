using System.Numerics;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>Whole-run reductions accumulated in double (loss sums, gradient norms over millions of elements).</summary>
internal static unsafe class ReduceKernels
{
    /// <summary>Sum of <paramref name="n"/> elements.</summary>
    public static double Sum<T>(T* x, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double s = 0;
        for (long i = 0; i < n; i++) s += double.CreateTruncating(x[i]);
        return s;
    }

    /// <summary>Sum of the squares of <paramref name="n"/> elements.</summary>
    public static double SumOfSquares<T>(T* x, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        double s = 0;
        for (long i = 0; i < n; i++) { double v = double.CreateTruncating(x[i]); s += v * v; }
        return s;
    }
}
