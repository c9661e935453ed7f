namespace Tessera.Tests.Support;

/// <summary>
/// Double references of the decode step's fused ops for Gemma and Qwen3 (<c>IBackend.RmsNormForward</c> with a unit offset,
/// <c>AccumulateRmsNorm</c>, <c>NormalizeHeadsRopeAndAppend</c>, <c>MatMulSwiGlu</c> with a GELU gate), written from their
/// definitions, for the CPU and GPU tests of those ops.
/// </summary>
internal static class DecodeOpReference
{
    /// <summary>Rows of x (rows, C) RMS-normalized: x / sqrt(mean(x^2) + eps) * s, s = w or (unit) 1 + w.</summary>
    public static double[] RmsNorm(double[] x, double[] w, int rows, int c, double eps, bool unit)
    {
        var y = new double[rows * c];
        for (int r = 0; r < rows; r++)
        {
            double ss = 0;
            for (int i = 0; i < c; i++) ss += x[r * c + i] * x[r * c + i];
            double rs = 1 / Math.Sqrt(ss / c + eps);
            for (int i = 0; i < c; i++) y[r * c + i] = x[r * c + i] * rs * (unit ? 1 + w[i] : w[i]);
        }
        return y;
    }

    /// <summary>
    /// qkv (B, T, H + 2K, D) after the head norms (each q head by qw, each k head by kw), RoPE at starts[b] + t with
    /// frequencies theta^(-2i/D) on pairs (i, i + D/2) of the q and k heads, and the cache (B, S, 2K, D) with the rotated k and
    /// the v heads written at those positions.
    /// </summary>
    public static (double[] Qkv, double[] Cache) NormalizeHeadsRopeAndAppend(double[] qkv, double[] cache, int b, int t, int h, int k,
        int d, int capacity, int[] starts, double[] qw, double[] kw, double eps, bool unit, double theta)
    {
        int heads = h + 2 * k, half = d / 2;
        var outQkv = (double[])qkv.Clone();
        var outCache = (double[])cache.Clone();
        for (int bb = 0; bb < b; bb++)
            for (int tt = 0; tt < t; tt++)
            {
                int pos = starts[bb] + tt;
                long row = ((long)bb * t + tt) * heads * d;
                for (int hh = 0; hh < heads; hh++)
                {
                    var y = qkv.AsSpan((int)(row + hh * d), d).ToArray();
                    if (hh < h + k)
                    {
                        y = RmsNorm(y, hh < h ? qw : kw, 1, d, eps, unit);
                        var z = (double[])y.Clone();
                        for (int i = 0; i < half; i++)
                        {
                            double a = pos * Math.Pow(theta, -2.0 * i / d), c = Math.Cos(a), s = Math.Sin(a);
                            z[i] = y[i] * c - y[i + half] * s;
                            z[i + half] = y[i + half] * c + y[i] * s;
                        }
                        y = z;
                        Array.Copy(y, 0, outQkv, row + hh * d, d);
                    }
                    if (hh >= h) Array.Copy(y, 0, outCache, (((long)bb * capacity + pos) * 2 * k + (hh - h)) * d, d);
                }
            }
        return (outQkv, outCache);
    }

    /// <summary>out (M, F) = act(n(x) gate^T + gateBias) * (n(x) up^T + upBias), n the norm (when normWeight is given),
    /// act SiLU or (gelu) the tanh GELU.</summary>
    public static double[] GatedProduct(double[] x, double[] gate, double[] up, double[]? gateBias, double[]? upBias, int m, int f, int c,
        double[]? normWeight, double eps, bool unit, bool gelu)
    {
        var h = normWeight is null ? x : RmsNorm(x, normWeight, m, c, eps, unit);
        var output = new double[m * f];
        for (int r = 0; r < m; r++)
            for (int n = 0; n < f; n++)
            {
                double g = gateBias?[n] ?? 0, u = upBias?[n] ?? 0;
                for (int i = 0; i < c; i++)
                {
                    g += h[r * c + i] * gate[n * c + i];
                    u += h[r * c + i] * up[n * c + i];
                }
                double act = gelu ? 0.5 * g * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (g + 0.044715 * g * g * g))) : g / (1 + Math.Exp(-g));
                output[r * f + n] = act * u;
            }
        return output;
    }
}
