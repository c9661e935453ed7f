using System.Numerics;
using System.Runtime.CompilerServices;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>Vectorized loops over contiguous runs: sums, axpy, scaling. Outputs may alias inputs.</summary>
internal static unsafe class ElementwiseKernels
{
    /// <summary>o = a + b over <paramref name="n"/> elements.</summary>
    public static void Add<T>(T* a, T* b, T* o, long n) where T : unmanaged, INumber<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
                Store(o + i, Load(a + i) + Load(b + i));
        for (; i < n; i++) o[i] = a[i] + b[i];
    }

    /// <summary>y += alpha * x over <paramref name="n"/> elements.</summary>
    public static void Axpy<T>(T alpha, T* x, T* y, long n) where T : unmanaged, INumber<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var va = new Vector<T>(alpha);
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
                Store(y + i, Load(y + i) + va * Load(x + i));
        }
        for (; i < n; i++) y[i] += alpha * x[i];
    }

    /// <summary>x *= factor over <paramref name="n"/> elements.</summary>
    public static void Scale<T>(T* x, T factor, long n) where T : unmanaged, INumber<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var vf = new Vector<T>(factor);
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
                Store(x + i, Load(x + i) * vf);
        }
        for (; i < n; i++) x[i] *= factor;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector<T> Load<T>(T* p) where T : unmanaged => Unsafe.ReadUnaligned<Vector<T>>(p);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Store<T>(T* p, Vector<T> v) where T : unmanaged => Unsafe.WriteUnaligned(p, v);
}
