using System.Numerics;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>Reductions and updates over one contiguous row: max, exp-and-sum, dot products.</summary>
internal static unsafe class RowKernels
{
    /// <summary>Largest of <paramref name="n"/> elements (negative infinity when empty).</summary>
    public static T Max<T>(T* x, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        T m = T.NegativeInfinity;
        if (Vector.IsHardwareAccelerated && n >= Vector<T>.Count)
        {
            var vm = new Vector<T>(T.NegativeInfinity);
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count) vm = Vector.Max(vm, ElementwiseKernels.Load(x + i));
            for (int j = 0; j < Vector<T>.Count; j++) m = T.Max(m, vm[j]);
        }
        for (; i < n; i++) m = T.Max(m, x[i]);
        return m;
    }

    /// <summary>o = exp(x - shift); returns the sum of o. o may alias x.</summary>
    public static T ExpShiftedAndSum<T>(T* x, T* o, T shift, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        T sum = T.Zero;
        if (Vector.IsHardwareAccelerated && n >= Vector<T>.Count)
        {
            var vs = new Vector<T>(shift);
            var acc = Vector<T>.Zero;
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
            {
                var e = VectorMath.Exp(ElementwiseKernels.Load(x + i) - vs);
                ElementwiseKernels.Store(o + i, e);
                acc += e;
            }
            sum = Vector.Sum(acc);
        }
        for (; i < n; i++)
        {
            T e = T.Exp(x[i] - shift);
            o[i] = e;
            sum += e;
        }
        return sum;
    }

    /// <summary>Sum of exp(x - shift) without storing the exponentials.</summary>
    public static T SumExpShifted<T>(T* x, T shift, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        T sum = T.Zero;
        if (Vector.IsHardwareAccelerated && n >= Vector<T>.Count)
        {
            var vs = new Vector<T>(shift);
            var acc = Vector<T>.Zero;
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
                acc += VectorMath.Exp(ElementwiseKernels.Load(x + i) - vs);
            sum = Vector.Sum(acc);
        }
        for (; i < n; i++) sum += T.Exp(x[i] - shift);
        return sum;
    }

    /// <summary>Sum of a row.</summary>
    public static T Sum<T>(T* x, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        T s = T.Zero;
        if (Vector.IsHardwareAccelerated && n >= Vector<T>.Count)
        {
            var acc = Vector<T>.Zero;
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count) acc += ElementwiseKernels.Load(x + i);
            s = Vector.Sum(acc);
        }
        for (; i < n; i++) s += x[i];
        return s;
    }

    /// <summary>x *= factor.</summary>
    public static void Scale<T>(T* x, T factor, long n) where T : unmanaged, IFloatingPointIeee754<T>
        => ElementwiseKernels.Scale(x, factor, n);

    /// <summary>Dot product of two contiguous rows.</summary>
    public static T Dot<T>(T* a, T* b, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        T s = T.Zero;
        if (Vector.IsHardwareAccelerated && n >= Vector<T>.Count)
        {
            var acc = Vector<T>.Zero;
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
                acc += ElementwiseKernels.Load(a + i) * ElementwiseKernels.Load(b + i);
            s = Vector.Sum(acc);
        }
        for (; i < n; i++) s += a[i] * b[i];
        return s;
    }

    /// <summary>y += alpha * x.</summary>
    public static void Axpy<T>(T alpha, T* x, T* y, long n) where T : unmanaged, IFloatingPointIeee754<T>
        => ElementwiseKernels.Axpy(alpha, x, y, n);
}
