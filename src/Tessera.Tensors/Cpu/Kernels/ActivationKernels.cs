using System.Numerics;
using static Tessera.Tensors.Cpu.Kernels.ElementwiseKernels;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>
/// GELU (tanh approximation) and SwiGLU, forward and backward, over contiguous runs; outputs may alias inputs.
/// GELU uses 0.5 (1 + tanh(u)) = sigmoid(2u) with u = sqrt(2/pi) (x + 0.044715 x^3): the same function,
/// without the cancellation of 1 + tanh(u) for negative x, and 1 - tanh(u)^2 = 4 sigmoid(2u) (1 - sigmoid(2u)).
/// </summary>
internal static unsafe class ActivationKernels
{
    /// <summary>sqrt(2/pi).</summary>
    private const double GeluScale = 0.7978845608028654;
    private const double GeluCubic = 0.044715;

    /// <summary>o = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).</summary>
    public static void GeluForward<T>(T* x, T* o, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T s2 = T.CreateTruncating(2 * GeluScale), c = T.CreateTruncating(GeluCubic);
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var vs2 = new Vector<T>(s2); var vc = new Vector<T>(c);
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
            {
                var xi = Load(x + i);
                var sig = VectorMath.Sigmoid(vs2 * (xi + vc * xi * xi * xi));
                Store(o + i, xi * sig);
            }
        }
        for (; i < n; i++)
        {
            T xi = x[i];
            T sig = T.One / (T.One + T.Exp(-s2 * (xi + c * xi * xi * xi)));
            o[i] = xi * sig;
        }
    }

    /// <summary>dx = dOut * d/dx GELU(x), the exact derivative of the tanh formula.</summary>
    public static void GeluBackward<T>(T* x, T* dOut, T* dx, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        // d/dx [x sigmoid(2u)] = sigmoid(2u) + 2 x sigmoid(2u) (1 - sigmoid(2u)) u'(x), u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2)
        T s = T.CreateTruncating(GeluScale), s2 = T.CreateTruncating(2 * GeluScale), c = T.CreateTruncating(GeluCubic);
        T c3 = T.CreateTruncating(3 * GeluCubic), two = T.CreateTruncating(2.0);
        long i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var vs = new Vector<T>(s); var vs2 = new Vector<T>(s2); var vc = new Vector<T>(c); var vc3 = new Vector<T>(c3); var vtwo = new Vector<T>(two);
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
            {
                var xi = Load(x + i);
                var x2 = xi * xi;
                var sig = VectorMath.Sigmoid(vs2 * (xi + vc * x2 * xi));
                var grad = sig + vtwo * xi * sig * (Vector<T>.One - sig) * vs * (Vector<T>.One + vc3 * x2);
                Store(dx + i, Load(dOut + i) * grad);
            }
        }
        for (; i < n; i++)
        {
            T xi = x[i];
            T sig = T.One / (T.One + T.Exp(-s2 * (xi + c * xi * xi * xi)));
            T grad = sig + two * xi * sig * (T.One - sig) * s * (T.One + c3 * xi * xi);
            dx[i] = dOut[i] * grad;
        }
    }

    /// <summary>o = SiLU(g) * u = g * sigmoid(g) * u.</summary>
    public static void SwiGluForward<T>(T* g, T* u, T* o, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
            {
                var gi = Load(g + i);
                Store(o + i, gi * VectorMath.Sigmoid(gi) * Load(u + i));
            }
        for (; i < n; i++)
        {
            T gi = g[i];
            o[i] = gi / (T.One + T.Exp(-gi)) * u[i];
        }
    }

    /// <summary>dU = dOut * SiLU(g); dG = dOut * u * sigmoid(g) (1 + g (1 - sigmoid(g))).</summary>
    public static void SwiGluBackward<T>(T* g, T* u, T* dOut, T* dG, T* dU, long n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        long i = 0;
        if (Vector.IsHardwareAccelerated)
            for (; i <= n - Vector<T>.Count; i += Vector<T>.Count)
            {
                var gi = Load(g + i); var ui = Load(u + i); var d = Load(dOut + i);
                var sig = VectorMath.Sigmoid(gi);
                Store(dG + i, d * ui * sig * (Vector<T>.One + gi * (Vector<T>.One - sig)));
                Store(dU + i, d * gi * sig);
            }
        for (; i < n; i++)
        {
            T gi = g[i], ui = u[i], d = dOut[i];
            T sig = T.One / (T.One + T.Exp(-gi));
            dG[i] = d * ui * sig * (T.One + gi * (T.One - sig));
            dU[i] = d * gi * sig;
        }
    }
}
