using System.Numerics;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>GELU (tanh approximation) and SwiGLU, forward and backward, over contiguous runs.</summary>
internal static unsafe class ActivationKernels
{
    /// <summary>sqrt(2/pi).</summary>
    private const double GeluScale = 0.7978845608028654;
    private const double GeluCubic = 0.044715;

    /// <summary>o = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); o may alias x.</summary>
    public static void GeluForward<T>(T* x, T* o, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T s = T.CreateTruncating(GeluScale), c = T.CreateTruncating(GeluCubic), half = T.CreateTruncating(0.5);
        for (long i = 0; i < n; i++)
        {
            T xi = x[i];
            T t = T.Tanh(s * (xi + c * xi * xi * xi));
            o[i] = half * xi * (T.One + t);
        }
    }

    /// <summary>dx = dOut * d/dx GELU(x), the exact derivative of the tanh formula; dx may alias dOut or x.</summary>
    public static void GeluBackward<T>(T* x, T* dOut, T* dx, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T s = T.CreateTruncating(GeluScale), c = T.CreateTruncating(GeluCubic), half = T.CreateTruncating(0.5);
        T c3 = T.CreateTruncating(3 * GeluCubic);
        for (long i = 0; i < n; i++)
        {
            T xi = x[i];
            T t = T.Tanh(s * (xi + c * xi * xi * xi));
            T sech2 = T.One - t * t;
            T grad = half * (T.One + t) + half * xi * sech2 * s * (T.One + c3 * xi * xi);
            dx[i] = dOut[i] * grad;
        }
    }

    /// <summary>o = SiLU(g) * u = g * sigmoid(g) * u.</summary>
    public static void SwiGluForward<T>(T* g, T* u, T* o, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (long i = 0; i < n; i++)
        {
            T gi = g[i];
            T sig = T.One / (T.One + T.Exp(-gi));
            o[i] = gi * sig * u[i];
        }
    }

    /// <summary>dU = dOut * SiLU(g); dG = dOut * u * sigmoid(g) (1 + g (1 - sigmoid(g))).</summary>
    public static void SwiGluBackward<T>(T* g, T* u, T* dOut, T* dG, T* dU, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (long i = 0; i < n; i++)
        {
            T gi = g[i], ui = u[i], d = dOut[i];
            T sig = T.One / (T.One + T.Exp(-gi));
            T silu = gi * sig;
            dG[i] = d * ui * sig * (T.One + gi * (T.One - sig));
            dU[i] = d * silu;
        }
    }
}
