using Xunit;
using Tessera.Tensors;

namespace Tessera.Tests.Cuda;

/// <summary>RoPE and causal grouped-query attention (forward, backward) against f64 references.</summary>
[Collection("cuda")]
public sealed class CudaAttentionTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void RopeRotatesHalvesAndInverseUndoesIt(DType dtype)
    {
        int b = 2, t = 9, h = 3, d = 16, start = 1000;
        const double theta = 10000;
        // A view: heads 1..3 of a (B, T, 4, D) tensor, as when q is sliced from a fused projection.
        var (full, fv) = Random(dtype, 1, b, t, h + 1, d);
        var x = full.Slice(2, 1, h);
        Gpu.Rope(x, start, theta);
        var expected = (double[])fv.Clone();
        for (int bi = 0; bi < b; bi++) for (int ti = 0; ti < t; ti++) for (int hi = 1; hi <= h; hi++) for (int i = 0; i < d / 2; i++)
        {
            int o = ((bi * t + ti) * (h + 1) + hi) * d;
            double ang = (start + ti) * Math.Pow(theta, -2.0 * i / d);
            double x1 = fv[o + i], x2 = fv[o + i + d / 2];
            expected[o + i] = x1 * Math.Cos(ang) - x2 * Math.Sin(ang);
            expected[o + i + d / 2] = x2 * Math.Cos(ang) + x1 * Math.Sin(ang);
        }
        AssertClose(expected, Download(full), Tolerance(dtype), "rope (head 0 untouched)");
        Gpu.Rope(x, start, theta, inverse: true);
        AssertClose(fv, Download(full), dtype == DType.F32 ? 1e-6 : 2e-2, "inverse");
    }

    /// <summary>Reference forward: output (B,T,H,D), lse (B,H,T); query t sits at S - T + t.</summary>
    private static (double[] O, double[] Lse, double[][] P) Forward(double[] q, double[] k, double[] v, int b, int t, int s, int h, int kh, int d, double scale)
    {
        var o = new double[b * t * h * d]; var lse = new double[b * h * t]; var probs = new double[b * h * t][];
        for (int bi = 0; bi < b; bi++) for (int hi = 0; hi < h; hi++) for (int ti = 0; ti < t; ti++)
        {
            int g = hi / (h / kh), last = s - t + ti;
            var sc = new double[last + 1];
            for (int j = 0; j <= last; j++)
            {
                double dot = 0;
                for (int e = 0; e < d; e++) dot += q[((bi * t + ti) * h + hi) * d + e] * k[((bi * s + j) * kh + g) * d + e];
                sc[j] = dot * scale;
            }
            double m = sc.Max(), z = sc.Sum(x => Math.Exp(x - m));
            lse[(bi * h + hi) * t + ti] = m + Math.Log(z);
            var p = sc.Select(x => Math.Exp(x - m) / z).ToArray();
            probs[(bi * h + hi) * t + ti] = p;
            for (int e = 0; e < d; e++)
            {
                double acc = 0;
                for (int j = 0; j <= last; j++) acc += p[j] * v[((bi * s + j) * kh + g) * d + e];
                o[((bi * t + ti) * h + hi) * d + e] = acc;
            }
        }
        return (o, lse, probs);
    }

    [Theory]
    [InlineData(DType.F32, 2, 70, 70, 4, 2, 64)]
    [InlineData(DType.F32, 1, 5, 77, 6, 3, 32)]   // decoding: S > T
    [InlineData(DType.BF16, 2, 65, 65, 4, 1, 128)]
    [InlineData(DType.F32, 1, 33, 33, 2, 2, 40)]  // head size not a multiple of 32
    public void AttentionForwardMatchesReference(DType dtype, int b, int t, int s, int h, int kh, int d)
    {
        double scale = 1 / Math.Sqrt(d);
        var (q, qv) = Random(dtype, 1, b, t, h, d);
        var (k, kv) = Random(dtype, 1, b, s, kh, d);
        var (v, vv) = Random(dtype, 1, b, s, kh, d);
        var o = Poisoned(dtype, b, t, h, d);
        var lse = Poisoned(DType.F32, b, h, t);
        Gpu.AttentionForward(q, k, v, o, lse, scale);
        var (eo, else_, _) = Forward(qv, kv, vv, b, t, s, h, kh, d, scale);
        AssertClose(eo, Download(o), Tolerance(dtype), "output");
        AssertClose(else_, Download(lse), 1e-5, "logSumExp");
    }

    [Theory]
    [InlineData(DType.F32, 2, 45, 4, 2, 64)]
    [InlineData(DType.BF16, 1, 70, 4, 4, 32)]
    public void AttentionBackwardMatchesReference(DType dtype, int b, int t, int h, int kh, int d)
    {
        double scale = 1 / Math.Sqrt(d);
        // q, k, v as views of one fused (B, T, H + 2K, D) projection, as the model calls it.
        var (qkv, all) = Random(dtype, 1, b, t, h + 2 * kh, d);
        var q = qkv.Slice(2, 0, h); var k = qkv.Slice(2, h, kh); var v = qkv.Slice(2, h + kh, kh);
        double[] Part(int from, int count)
        {
            var r = new double[b * t * count * d];
            for (int bi = 0; bi < b; bi++) for (int ti = 0; ti < t; ti++) for (int hi = 0; hi < count; hi++) for (int e = 0; e < d; e++)
                r[((bi * t + ti) * count + hi) * d + e] = all[((bi * t + ti) * (h + 2 * kh) + from + hi) * d + e];
            return r;
        }
        double[] qv = Part(0, h), kv = Part(h, kh), vv = Part(h + kh, kh);
        var o = Poisoned(dtype, b, t, h, d);
        var lse = Poisoned(DType.F32, b, h, t);
        Gpu.AttentionForward(q, k, v, o, lse, scale);
        var (dOut, dov) = Random(dtype, 1, b, t, h, d);
        var dq = Poisoned(dtype, b, t, h, d); var dk = Poisoned(dtype, b, t, kh, d); var dv = Poisoned(dtype, b, t, kh, d);
        Gpu.AttentionBackward(q, k, v, o, dOut, lse, dq, dk, dv, scale);

        var ov = Download(o); // the backward reads the forward's own (rounded) output, as training does
        var (_, _, probs) = Forward(qv, kv, vv, b, t, t, h, kh, d, scale);
        var edq = new double[qv.Length]; var edk = new double[kv.Length]; var edv = new double[vv.Length];
        for (int bi = 0; bi < b; bi++) for (int hi = 0; hi < h; hi++) for (int ti = 0; ti < t; ti++)
        {
            int g = hi / (h / kh), qo = ((bi * t + ti) * h + hi) * d;
            var p = probs[(bi * h + hi) * t + ti];
            double delta = 0;
            for (int e = 0; e < d; e++) delta += dov[qo + e] * ov[qo + e];
            for (int j = 0; j <= ti; j++)
            {
                int ko = ((bi * t + j) * kh + g) * d;
                double dp = 0;
                for (int e = 0; e < d; e++) dp += dov[qo + e] * vv[ko + e];
                double ds = p[j] * (dp - delta);
                for (int e = 0; e < d; e++)
                {
                    edq[qo + e] += scale * ds * kv[ko + e];
                    edk[ko + e] += scale * ds * qv[qo + e];
                    edv[ko + e] += p[j] * dov[qo + e];
                }
            }
        }
        // bf16: gradients are sums of many rounded terms; 2e-2 is four bf16 ulps.
        double tol = dtype == DType.F32 ? 1e-5 : 2e-2;
        AssertClose(edq, Download(dq), tol, "dq");
        AssertClose(edk, Download(dk), tol, "dk");
        AssertClose(edv, Download(dv), tol, "dv");
    }

    [Fact]
    public void UnsupportedHeadSizeIsNamed()
    {
        var q = Gpu.Allocate(new Shape(1, 4, 1, 256), DType.F32);
        var e = Assert.Throws<NotSupportedException>(() => Gpu.AttentionForward(q, q, q, q, null, 1));
        Assert.Contains("head size 256", e.Message);
    }
}
