using System.Numerics;
using static Tessera.Tensors.Cpu.Kernels.ElementwiseKernels;

namespace Tessera.Tensors.Cpu.Kernels;

/// <summary>One row of LayerNorm / RMSNorm, forward and backward (llm.c's formulas), vectorized over channels.</summary>
internal static unsafe class NormKernels
{
    /// <summary>o = (x - mean) * rstd * w (+ b); returns (mean, rstd). Two passes: mean, then the centered variance.</summary>
    public static (T Mean, T Rstd) LayerNormRow<T>(T* x, T* w, T* b, T* o, int c, T eps) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T cT = T.CreateTruncating(c);
        T mean = RowKernels.Sum(x, c) / cT;
        int i = 0;
        T sq = T.Zero;
        var vm = new Vector<T>(mean);
        if (Vector.IsHardwareAccelerated && c >= Vector<T>.Count)
        {
            var acc = Vector<T>.Zero;
            for (; i <= c - Vector<T>.Count; i += Vector<T>.Count) { var d = Load(x + i) - vm; acc += d * d; }
            sq = Vector.Sum(acc);
        }
        for (; i < c; i++) { T d = x[i] - mean; sq += d * d; }
        T rstd = T.One / T.Sqrt(sq / cT + eps);
        var vs = new Vector<T>(rstd);
        i = 0;
        if (Vector.IsHardwareAccelerated)
            for (; i <= c - Vector<T>.Count; i += Vector<T>.Count)
            {
                var y = (Load(x + i) - vm) * vs * Load(w + i);
                Store(o + i, b == null ? y : y + Load(b + i));
            }
        for (; i < c; i++)
        {
            T y = (x[i] - mean) * rstd * w[i];
            o[i] = b == null ? y : y + b[i];
        }
        return (mean, rstd);
    }

    /// <summary>
    /// dx += (w dy - mean(w dy) - norm * mean(w dy norm)) * rstd; gw += norm dy; gb += dy; gs += dx, the new dx (gb and gs
    /// may be null).
    /// </summary>
    public static void LayerNormBackwardRow<T>(T* x, T* dy, T* w, T mean, T rstd, T* dx, T* gw, T* gb, T* gs, int c)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        var vm = new Vector<T>(mean); var vs = new Vector<T>(rstd);
        T a = T.Zero, bsum = T.Zero;
        int i = 0;
        if (Vector.IsHardwareAccelerated && c >= Vector<T>.Count)
        {
            var va = Vector<T>.Zero; var vb = Vector<T>.Zero;
            for (; i <= c - Vector<T>.Count; i += Vector<T>.Count)
            {
                var norm = (Load(x + i) - vm) * vs;
                var dnorm = Load(w + i) * Load(dy + i);
                va += dnorm; vb += dnorm * norm;
            }
            a = Vector.Sum(va); bsum = Vector.Sum(vb);
        }
        for (; i < c; i++)
        {
            T norm = (x[i] - mean) * rstd;
            T dnorm = w[i] * dy[i];
            a += dnorm; bsum += dnorm * norm;
        }
        T cT = T.CreateTruncating(c);
        T dnormMean = a / cT, dnormNormMean = bsum / cT;
        var vdm = new Vector<T>(dnormMean); var vdnm = new Vector<T>(dnormNormMean);
        i = 0;
        if (Vector.IsHardwareAccelerated)
            for (; i <= c - Vector<T>.Count; i += Vector<T>.Count)
            {
                var norm = (Load(x + i) - vm) * vs;
                var d = Load(dy + i);
                var dnorm = Load(w + i) * d;
                if (gb != null) Store(gb + i, Load(gb + i) + d);
                Store(gw + i, Load(gw + i) + norm * d);
                var o = Load(dx + i) + (dnorm - vdm - norm * vdnm) * vs;
                Store(dx + i, o);
                if (gs != null) Store(gs + i, Load(gs + i) + o);
            }
        for (; i < c; i++)
        {
            T norm = (x[i] - mean) * rstd;
            T dnorm = w[i] * dy[i];
            if (gb != null) gb[i] += dy[i];
            gw[i] += norm * dy[i];
            dx[i] += (dnorm - dnormMean - norm * dnormNormMean) * rstd;
            if (gs != null) gs[i] += dx[i];
        }
    }

    /// <summary>o = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps); returns rstd.</summary>
    public static T RmsNormRow<T>(T* x, T* w, T* o, int c, T eps) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T sq = RowKernels.Dot(x, x, c);
        T rstd = T.One / T.Sqrt(sq / T.CreateTruncating(c) + eps);
        var vs = new Vector<T>(rstd);
        int i = 0;
        if (Vector.IsHardwareAccelerated)
            for (; i <= c - Vector<T>.Count; i += Vector<T>.Count) Store(o + i, Load(x + i) * vs * Load(w + i));
        for (; i < c; i++) o[i] = x[i] * rstd * w[i];
        return rstd;
    }

    /// <summary>dx += rstd w dy - rstd^3 x / C * sum(w dy x); gw += x rstd dy.</summary>
    public static void RmsNormBackwardRow<T>(T* x, T* dy, T* w, T rstd, T* dx, T* gw, int c) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T dot = T.Zero;
        int i = 0;
        if (Vector.IsHardwareAccelerated && c >= Vector<T>.Count)
        {
            var acc = Vector<T>.Zero;
            for (; i <= c - Vector<T>.Count; i += Vector<T>.Count) acc += Load(w + i) * Load(dy + i) * Load(x + i);
            dot = Vector.Sum(acc);
        }
        for (; i < c; i++) dot += w[i] * dy[i] * x[i];
        T coef = rstd * rstd * rstd * dot / T.CreateTruncating(c);
        var vs = new Vector<T>(rstd); var vc = new Vector<T>(coef);
        i = 0;
        if (Vector.IsHardwareAccelerated)
            for (; i <= c - Vector<T>.Count; i += Vector<T>.Count)
            {
                var xi = Load(x + i); var d = Load(dy + i);
                Store(gw + i, Load(gw + i) + xi * vs * d);
                Store(dx + i, Load(dx + i) + vs * Load(w + i) * d - vc * xi);
            }
        for (; i < c; i++)
        {
            gw[i] += x[i] * rstd * dy[i];
            dx[i] += rstd * w[i] * dy[i] - coef * x[i];
        }
    }
}
