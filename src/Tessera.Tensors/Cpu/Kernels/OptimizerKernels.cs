using System.Numerics;
using System.Runtime.CompilerServices;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>The per-step constants of AdamW, converted once to the compute type.</summary>
internal readonly struct AdamWConstants<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public readonly T Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, Epsilon, LearningRate, Decay, Clip;
    /// <summary>1 / (1 - beta1^t) and 1 / (1 - beta2^t): the bias corrections.</summary>
    public readonly T Correction1, Correction2;

    public AdamWConstants(in AdamWStep step, double clip)
    {
        Beta1 = T.CreateTruncating(step.Beta1); OneMinusBeta1 = T.CreateTruncating(1 - step.Beta1);
        Beta2 = T.CreateTruncating(step.Beta2); OneMinusBeta2 = T.CreateTruncating(1 - step.Beta2);
        Epsilon = T.CreateTruncating(step.Epsilon);
        LearningRate = T.CreateTruncating(step.LearningRate);
        Decay = T.CreateTruncating(step.WeightDecay);
        Clip = T.CreateTruncating(clip);
        Correction1 = T.CreateTruncating(1.0 / (1.0 - Math.Pow(step.Beta1, step.Step)));
        Correction2 = T.CreateTruncating(1.0 / (1.0 - Math.Pow(step.Beta2, step.Step)));
    }
}

/// <summary>Optimizer updates over contiguous runs.</summary>
internal static unsafe class OptimizerKernels
{
    /// <summary>One AdamW step with decoupled weight decay, as documented on IBackend.AdamW.</summary>
    public static void AdamW<T>(T* p, T* g, T* m, T* v, long n, in AdamWConstants<T> k) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var b1 = new Vector<T>(k.Beta1); var ob1 = new Vector<T>(k.OneMinusBeta1);
            var b2 = new Vector<T>(k.Beta2); var ob2 = new Vector<T>(k.OneMinusBeta2);
            var c1 = new Vector<T>(k.Correction1); var c2 = new Vector<T>(k.Correction2);
            var eps = new Vector<T>(k.Epsilon); var lr = new Vector<T>(k.LearningRate);
            var wd = new Vector<T>(k.Decay); var clip = new Vector<T>(k.Clip);
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
            {
                var gi = ElementwiseKernels.Load(g + i) * clip;
                var mi = b1 * ElementwiseKernels.Load(m + i) + ob1 * gi;
                var vi = b2 * ElementwiseKernels.Load(v + i) + ob2 * gi * gi;
                ElementwiseKernels.Store(m + i, mi);
                ElementwiseKernels.Store(v + i, vi);
                var pi = ElementwiseKernels.Load(p + i);
                ElementwiseKernels.Store(p + i, pi - lr * (mi * c1 / (Vector.SquareRoot(vi * c2) + eps) + wd * pi));
            }
        }
        for (; i < n; i++)
        {
            T gi = g[i] * k.Clip;
            T mi = k.Beta1 * m[i] + k.OneMinusBeta1 * gi;
            T vi = k.Beta2 * v[i] + k.OneMinusBeta2 * gi * gi;
            m[i] = mi; v[i] = vi;
            T mHat = mi * k.Correction1, vHat = vi * k.Correction2;
            p[i] -= k.LearningRate * (mHat / (T.Sqrt(vHat) + k.Epsilon) + k.Decay * p[i]);
        }
    }

    /// <summary>
    /// <see cref="AdamW{T}"/> with the gradient read from <paramref name="g"/> and the updated values also written to
    /// <paramref name="o"/> (staging buffers of the parameters' own dtype, F32 or F64): the same operations in the same
    /// order per element, so p, m and v are bit-identical to <see cref="AdamW{T}"/>'s. <paramref name="o"/> may alias
    /// <paramref name="g"/>.
    /// </summary>
    // Fully optimized from the first call (as the GEMM kernels): each 64K-element block is one call, and tier-0 code with
    // on-stack replacement ran the staged update at half speed in the benchmark before tiering caught up.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AdamWStaged<T>(T* p, T* g, T* m, T* v, T* o, long n, in AdamWConstants<T> k) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var c = new AdamWVectors<T>(k);
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
                ElementwiseKernels.Store(o + i, Step(ElementwiseKernels.Load(g + i), p + i, m + i, v + i, c));
        }
        for (; i < n; i++) o[i] = Step(g[i], p + i, m + i, v + i, k);
    }

    /// <summary>
    /// <see cref="AdamW{T}"/> over F32 masters with the BF16 gradient widened as it is read from <paramref name="g"/>
    /// and the updated masters narrowed into <paramref name="o"/> with <see cref="BFloat16.FromSingle"/>'s rounding (to
    /// nearest even, NaN kept quiet): what widening, AdamW and its BF16 <c>lowPrecisionCopy</c> compute, in one pass.
    /// <paramref name="o"/> may alias <paramref name="g"/>.
    /// </summary>
    // Fully optimized from the first call (as the GEMM kernels): each 64K-element block is one call, and tier-0 code with
    // on-stack replacement ran the staged update at half speed in the benchmark before tiering caught up.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AdamWStagedBFloat16(float* p, ushort* g, float* m, float* v, ushort* o, long n, in AdamWConstants<float> k)
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var c = new AdamWVectors<float>(k);
            var magnitude = new Vector<uint>(0x7FFF_FFFFu);
            var infinity = new Vector<uint>(0x7F80_0000u);
            var half = new Vector<uint>(0x7FFFu);
            var one = new Vector<uint>(1u);
            var quiet = new Vector<uint>(0x40u);
            int width = Vector<float>.Count;
            for (; i <= n - 2 * width; i += 2 * width)
            {
                // One vector of BF16 bits is two vectors of F32 (a 16-bit shift widens exactly).
                Vector.Widen(ElementwiseKernels.Load(g + i), out Vector<uint> lower, out Vector<uint> upper);
                var a = Step(Vector.AsVectorSingle(Vector.ShiftLeft(lower, 16)), p + i, m + i, v + i, c);
                var b = Step(Vector.AsVectorSingle(Vector.ShiftLeft(upper, 16)), p + i + width, m + i + width, v + i + width, c);
                ElementwiseKernels.Store(o + i, Vector.Narrow(Round(Vector.AsVectorUInt32(a)), Round(Vector.AsVectorUInt32(b))));
            }

            Vector<uint> Round(Vector<uint> u)
            {
                var nan = Vector.GreaterThan(u & magnitude, infinity);
                var rounded = Vector.ShiftRightLogical(u + half + (Vector.ShiftRightLogical(u, 16) & one), 16);
                return Vector.ConditionalSelect(nan, Vector.ShiftRightLogical(u, 16) | quiet, rounded);
            }
        }
        for (; i < n; i++) o[i] = BFloat16.FromSingle(Step(BFloat16.FromBits(g[i]).ToSingle(), p + i, m + i, v + i, k)).Bits;
    }

    /// <summary>
    /// <see cref="AdamW{T}"/> over split F32 masters: each master is joined from its BF16 high half <paramref name="hi"/>
    /// and low word <paramref name="lo"/> (<see cref="Join"/>), updated by the scalar step (the same operations as the
    /// vector loop, so bitwise the same), and split back (<see cref="Split"/>). The BF16 gradient widens exactly.
    /// </summary>
    public static void AdamWSplit(ushort* hi, ushort* lo, ushort* g, float* m, float* v, long n, in AdamWConstants<float> k)
    {
        for (long i = 0; i < n; i++)
        {
            float p = BitConverter.UInt32BitsToSingle(Join(hi[i], lo[i]));
            Step(BitConverter.UInt32BitsToSingle((uint)g[i] << 16), &p, m + i, v + i, k);
            (hi[i], lo[i]) = Split(BitConverter.SingleToUInt32Bits(p));
        }
    }

    /// <summary>
    /// <see cref="AdamW{T}"/> over F32 parameters with the BF16 gradient widened (exactly) as it is read: the scalar step, the
    /// same operations as the vector loop, so p, m and v are bitwise those of AdamW over the widened gradient.
    /// </summary>
    public static void AdamWBFloat16Gradients(float* p, ushort* g, float* m, float* v, long n, in AdamWConstants<float> k)
    {
        for (long i = 0; i < n; i++) Step(BitConverter.UInt32BitsToSingle((uint)g[i] << 16), p + i, m + i, v + i, k);
    }

    /// <summary><see cref="AdamWSplit(ushort*, ushort*, ushort*, float*, float*, long, in AdamWConstants{float})"/> with F32 gradients.</summary>
    public static void AdamWSplit(ushort* hi, ushort* lo, float* g, float* m, float* v, long n, in AdamWConstants<float> k)
    {
        for (long i = 0; i < n; i++)
        {
            float p = BitConverter.UInt32BitsToSingle(Join(hi[i], lo[i]));
            Step(g[i], &p, m + i, v + i, k);
            (hi[i], lo[i]) = Split(BitConverter.SingleToUInt32Bits(p));
        }
    }

    /// <summary>
    /// An F32 master's bits as a BF16 high half, rounded half away from zero in magnitude (F32 bits are sign-magnitude), and
    /// the signed 16-bit remainder, in [-0x8000, 0x7FFF]: master = (hi &lt;&lt; 16) + (int16)lo exactly, mod 2^32.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (ushort Hi, ushort Lo) Split(uint bits)
    {
        uint hi = (bits + 0x8000u) >> 16;
        return ((ushort)hi, (ushort)(bits - (hi << 16)));
    }

    /// <summary>The inverse of <see cref="Split"/>: (hi &lt;&lt; 16) + (int16)lo, mod 2^32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint Join(ushort hi, ushort lo) => ((uint)hi << 16) + (uint)(int)(short)lo;

    /// <summary>One vector of <see cref="AdamW{T}"/>'s loop body: updates m, v and p in place, returns the new p.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector<T> Step<T>(Vector<T> g, T* p, T* m, T* v, in AdamWVectors<T> c) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var gi = g * c.Clip;
        var mi = c.Beta1 * ElementwiseKernels.Load(m) + c.OneMinusBeta1 * gi;
        var vi = c.Beta2 * ElementwiseKernels.Load(v) + c.OneMinusBeta2 * gi * gi;
        ElementwiseKernels.Store(m, mi);
        ElementwiseKernels.Store(v, vi);
        var pi = ElementwiseKernels.Load(p);
        var updated = pi - c.LearningRate * (mi * c.Correction1 / (Vector.SquareRoot(vi * c.Correction2) + c.Epsilon) + c.Decay * pi);
        ElementwiseKernels.Store(p, updated);
        return updated;
    }

    /// <summary>One element of <see cref="AdamW{T}"/>'s scalar tail: updates m, v and p in place, returns the new p.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static T Step<T>(T g, T* p, T* m, T* v, in AdamWConstants<T> k) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T gi = g * k.Clip;
        T mi = k.Beta1 * *m + k.OneMinusBeta1 * gi;
        T vi = k.Beta2 * *v + k.OneMinusBeta2 * gi * gi;
        *m = mi; *v = vi;
        T mHat = mi * k.Correction1, vHat = vi * k.Correction2;
        *p -= k.LearningRate * (mHat / (T.Sqrt(vHat) + k.Epsilon) + k.Decay * *p);
        return *p;
    }
}

/// <summary><see cref="AdamWConstants{T}"/> broadcast to vectors, once per run.</summary>
internal readonly struct AdamWVectors<T> where T : unmanaged, IFloatingPointIeee754<T>
{
    public readonly Vector<T> Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, Epsilon, LearningRate, Decay, Clip, Correction1, Correction2;

    public AdamWVectors(in AdamWConstants<T> k)
    {
        Beta1 = new Vector<T>(k.Beta1); OneMinusBeta1 = new Vector<T>(k.OneMinusBeta1);
        Beta2 = new Vector<T>(k.Beta2); OneMinusBeta2 = new Vector<T>(k.OneMinusBeta2);
        Epsilon = new Vector<T>(k.Epsilon); LearningRate = new Vector<T>(k.LearningRate);
        Decay = new Vector<T>(k.Decay); Clip = new Vector<T>(k.Clip);
        Correction1 = new Vector<T>(k.Correction1); Correction2 = new Vector<T>(k.Correction2);
    }
}
