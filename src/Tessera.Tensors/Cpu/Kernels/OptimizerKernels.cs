using System.Numerics;

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
}
