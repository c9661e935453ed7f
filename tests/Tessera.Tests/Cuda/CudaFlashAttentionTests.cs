using System.Text;
using Xunit;
using Tessera.Tensors;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The tensor-core (FlashAttention-2-style) attention kernels: forward, split-K decode and
/// backward, against a naive f64 reference on the same rounded inputs. Covers T in {1, 17, 64,
/// 200, 1024}, S = T and S > T (decoding), H/K in {12/12, 32/8}, D in {64, 128}, q/k/v (and
/// dq/dk/dv) as strided views of fused buffers.
/// </summary>
[Collection("cuda")]
public sealed class CudaFlashAttentionTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    // bf16/f16 results, norm-wise relative to f64: the inputs are the same rounded values, so the
    // error comes from (1) P rounded to 16 bits before P·V (and dS, P before the backward products),
    // as FlashAttention-2 does, relative 2^-9 per element, (2) fp32 accumulation on the tensor
    // cores (~1e-6), (3) the 16-bit output rounding, 2^-9. Independent rounding errors add in norm
    // well below 1e-2; lse is fp32 from exact products, so 1e-4.
    private const double OutTolerance = 1e-2, LseTolerance = 1e-4;

    /// <summary>Values of heads [from, from + count) of a (B, N, total, D) buffer, as a contiguous (B, N, count, D) array.</summary>
    private static double[] Heads(double[] all, int b, int n, int total, int from, int count, int d)
    {
        var r = new double[(long)b * n * count * d];
        for (int bi = 0; bi < b; bi++) for (int ti = 0; ti < n; ti++) for (int hi = 0; hi < count; hi++)
            Array.Copy(all, (((long)bi * n + ti) * total + from + hi) * d, r, (((long)bi * n + ti) * count + hi) * d, d);
        return r;
    }

    private static (double[] O, double[] Lse) ReferenceForward(double[] q, double[] k, double[] v, int b, int t, int s, int h, int kh, int d, double scale)
    {
        var o = new double[(long)b * t * h * d]; var lse = new double[b * h * t];
        Parallel.For(0, b * h, bh =>
        {
            int bi = bh / h, hi = bh % h, g = hi / (h / kh);
            var sc = new double[s];
            for (int ti = 0; ti < t; ti++)
            {
                int last = s - t + ti;
                long qo = (((long)bi * t + ti) * h + hi) * d;
                double m = double.NegativeInfinity;
                for (int j = 0; j <= last; j++)
                {
                    long ko = (((long)bi * s + j) * kh + g) * d;
                    double dot = 0;
                    for (int e = 0; e < d; e++) dot += q[qo + e] * k[ko + e];
                    sc[j] = dot * scale; m = Math.Max(m, sc[j]);
                }
                double z = 0;
                for (int j = 0; j <= last; j++) { sc[j] = Math.Exp(sc[j] - m); z += sc[j]; }
                lse[(bi * h + hi) * t + ti] = m + Math.Log(z);
                for (int j = 0; j <= last; j++)
                {
                    long vo = (((long)bi * s + j) * kh + g) * d;
                    double p = sc[j] / z;
                    for (int e = 0; e < d; e++) o[qo + e] += p * v[vo + e];
                }
            }
        });
        return (o, lse);
    }

    /// <summary>Reference gradients (S = T); o is the forward's own output, as training feeds it back.</summary>
    private static (double[] Dq, double[] Dk, double[] Dv) ReferenceBackward(double[] q, double[] k, double[] v, double[] o, double[] dO,
        int b, int t, int h, int kh, int d, double scale)
    {
        var dq = new double[q.Length]; var dk = new double[k.Length]; var dv = new double[v.Length];
        int group = h / kh;
        // Parallel over (b, kv head): each task owns its dk/dv rows and its group's dq rows.
        Parallel.For(0, b * kh, bg =>
        {
            int bi = bg / kh, g = bg % kh;
            var p = new double[t]; var dp = new double[t];
            for (int hi = g * group; hi < (g + 1) * group; hi++)
                for (int ti = 0; ti < t; ti++)
                {
                    long qo = (((long)bi * t + ti) * h + hi) * d;
                    double m = double.NegativeInfinity;
                    for (int j = 0; j <= ti; j++)
                    {
                        long ko = (((long)bi * t + j) * kh + g) * d;
                        double dot = 0, dpj = 0;
                        for (int e = 0; e < d; e++) { dot += q[qo + e] * k[ko + e]; dpj += dO[qo + e] * v[ko + e]; }
                        p[j] = dot * scale; dp[j] = dpj; m = Math.Max(m, p[j]);
                    }
                    double z = 0;
                    for (int j = 0; j <= ti; j++) { p[j] = Math.Exp(p[j] - m); z += p[j]; }
                    double delta = 0;
                    for (int e = 0; e < d; e++) delta += dO[qo + e] * o[qo + e];
                    for (int j = 0; j <= ti; j++)
                    {
                        long ko = (((long)bi * t + j) * kh + g) * d;
                        double pj = p[j] / z, ds = pj * (dp[j] - delta) * scale;
                        for (int e = 0; e < d; e++)
                        {
                            dq[qo + e] += ds * k[ko + e];
                            dk[ko + e] += ds * q[qo + e];
                            dv[ko + e] += pj * dO[qo + e];
                        }
                    }
                }
        });
        return (dq, dk, dv);
    }

    /// <summary>
    /// ‖actual − expected‖ / max(‖expected‖, 0.01 √n): relative, except where the exact result is
    /// (near) zero, e.g. dq and dk when every query sees one key (T = 1), where it is absolute
    /// against an element size of 0.01 (gradients here are of order 0.1 to 1). NaN stays NaN.
    /// </summary>
    private static double RelError(double[] expected, double[] actual)
    {
        double diff = 0, norm = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            diff += (actual[i] - expected[i]) * (actual[i] - expected[i]);
            norm += expected[i] * expected[i];
        }
        return double.IsNaN(diff) ? double.NaN : Math.Sqrt(diff) / Math.Max(Math.Sqrt(norm), 0.01 * Math.Sqrt(expected.Length));
    }

    /// <summary>Appends one row to the error table (attention-errors.md beside $TESSERA_CUDA_TIMINGS_OUT), for docs/cuda-notes.md.</summary>
    private static void Report(string row)
    {
        TestContext.Current.TestOutputHelper?.WriteLine(row);
        var timings = Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS_OUT");
        if (string.IsNullOrEmpty(timings)) return;
        var path = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(timings))!, "attention-errors.md");
        lock (typeof(CudaFlashAttentionTests)) File.AppendAllText(path, row + "\n", Encoding.UTF8);
    }

    [Theory]
    [InlineData(DType.BF16, 2, 1, 1, 12, 12, 64, false)]
    [InlineData(DType.BF16, 2, 17, 17, 32, 8, 128, true)]
    [InlineData(DType.BF16, 2, 64, 64, 12, 12, 64, true)]
    [InlineData(DType.BF16, 1, 200, 200, 32, 8, 64, true)]
    [InlineData(DType.BF16, 1, 200, 200, 12, 12, 128, false)]
    [InlineData(DType.BF16, 1, 1024, 1024, 12, 12, 64, true)]
    [InlineData(DType.BF16, 1, 1024, 1024, 32, 8, 128, true)]
    [InlineData(DType.F16, 2, 70, 70, 32, 8, 64, true)]
    [InlineData(DType.BF16, 1, 1, 1000, 32, 8, 64, true)]     // decode: split-K kernel
    [InlineData(DType.BF16, 2, 1, 777, 12, 12, 128, false)]   // decode, S not a multiple of anything
    [InlineData(DType.BF16, 1, 16, 1024, 32, 8, 64, true)]    // decode kernel, T = 16
    [InlineData(DType.BF16, 1, 17, 300, 12, 12, 64, true)]    // S > T through the tiled forward
    [InlineData(DType.BF16, 1, 200, 333, 32, 8, 128, true)]   // S > T, several query blocks
    [InlineData(DType.BF16, 1, 300, 520, 12, 12, 64, true)]   // S > T, several 128-row blocks
    [InlineData(DType.F16, 1, 1, 500, 32, 8, 128, true)]      // decode, f16
    public void FlashAttentionMatchesReference(DType dtype, int b, int t, int s, int h, int kh, int d, bool strided)
    {
        // Under compute-sanitizer (memcheck, racecheck: 100x slower) only the small cases run.
        if (Environment.GetEnvironmentVariable("TESSERA_ATTENTION_SANITIZE") == "1" && (long)t * s > 70_000)
            Assert.Skip("large case skipped under TESSERA_ATTENTION_SANITIZE=1");
        double scale = 1 / Math.Sqrt(d);
        int fused = h + 2 * kh;
        Tensor q, k, v;
        double[] qv, kv, vv;
        // Inputs of magnitude 1.5 give scores of spread ~1 per sqrt(d) scale: peaked but not one-hot softmax rows.
        if (strided)
        {
            // q from a fused (B, T, H + 2K, D) projection; k, v from it too when S = T, else from a (B, S, 2K, D) cache.
            var (qkv, all) = Random(dtype, 1.5, b, t, fused, d);
            q = qkv.Slice(2, 0, h); qv = Heads(all, b, t, fused, 0, h, d);
            if (s == t)
            {
                k = qkv.Slice(2, h, kh); v = qkv.Slice(2, h + kh, kh);
                kv = Heads(all, b, t, fused, h, kh, d); vv = Heads(all, b, t, fused, h + kh, kh, d);
            }
            else
            {
                var (cache, cv) = Random(dtype, 1.5, b, s, 2 * kh, d);
                k = cache.Slice(2, 0, kh); v = cache.Slice(2, kh, kh);
                kv = Heads(cv, b, s, 2 * kh, 0, kh, d); vv = Heads(cv, b, s, 2 * kh, kh, kh, d);
            }
        }
        else
        {
            (q, qv) = Random(dtype, 1.5, b, t, h, d);
            (k, kv) = Random(dtype, 1.5, b, s, kh, d);
            (v, vv) = Random(dtype, 1.5, b, s, kh, d);
        }
        var o = Poisoned(dtype, b, t, h, d);
        var lse = Poisoned(DType.F32, b, h, t);
        Gpu.AttentionForward(q, k, v, o, lse, scale);
        var (eo, else_) = ReferenceForward(qv, kv, vv, b, t, s, h, kh, d, scale);
        var ov = Download(o);
        double eO = RelError(eo, ov), eL = RelError(else_, Download(lse));
        string row = $"| {dtype} | B{b} T{t} S{s} H{h}/{kh} D{d}{(strided ? " strided" : "")} | {eO:E2} | {eL:E2}";
        double eDq = 0, eDk = 0, eDv = 0;
        if (s == t)
        {
            var (dOut, dov) = Random(dtype, 1, b, t, h, d);
            Tensor dq, dk, dv, dBuf = null!;
            if (strided)
            {
                dBuf = Poisoned(dtype, b, t, fused, d);
                dq = dBuf.Slice(2, 0, h); dk = dBuf.Slice(2, h, kh); dv = dBuf.Slice(2, h + kh, kh);
            }
            else
            {
                dq = Poisoned(dtype, b, t, h, d); dk = Poisoned(dtype, b, t, kh, d); dv = Poisoned(dtype, b, t, kh, d);
            }
            Gpu.AttentionBackward(q, k, v, o, dOut, lse, dq, dk, dv, scale);
            var (edq, edk, edv) = ReferenceBackward(qv, kv, vv, ov, dov, b, t, h, kh, d, scale);
            double[] gq, gk, gv;
            if (strided)
            {
                var all = Download(dBuf);
                gq = Heads(all, b, t, fused, 0, h, d); gk = Heads(all, b, t, fused, h, kh, d); gv = Heads(all, b, t, fused, h + kh, kh, d);
            }
            else { gq = Download(dq); gk = Download(dk); gv = Download(dv); }
            eDq = RelError(edq, gq); eDk = RelError(edk, gk); eDv = RelError(edv, gv);
            row += $" | {eDq:E2} | {eDk:E2} | {eDv:E2} |";
        }
        else row += " | - | - | - |";
        Report(row);
        Assert.True(eO <= OutTolerance, $"output: relative error {eO:E3} exceeds {OutTolerance:E1} (NaN = an element not written)");
        Assert.True(eL <= LseTolerance, $"logSumExp: relative error {eL:E3} exceeds {LseTolerance:E1}");
        Assert.True(eDq <= OutTolerance, $"dq: relative error {eDq:E3} exceeds {OutTolerance:E1}");
        Assert.True(eDk <= OutTolerance, $"dk: relative error {eDk:E3} exceeds {OutTolerance:E1}");
        Assert.True(eDv <= OutTolerance, $"dv: relative error {eDv:E3} exceeds {OutTolerance:E1}");
    }
}
