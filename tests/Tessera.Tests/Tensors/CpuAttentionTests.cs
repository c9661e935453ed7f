using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

public class CpuAttentionTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>Naive causal GQA attention in F64 on dense (B,T,H,D) q and (B,S,K,D) k, v.</summary>
    private static (double[] O, double[] Lse) Reference(double[] q, double[] k, double[] v, int b, int t, int h, int s, int kh, int d, double scale)
    {
        var o = new double[b * t * h * d]; var lse = new double[b * h * t];
        int group = h / kh;
        for (int bi = 0; bi < b; bi++)
            for (int hi = 0; hi < h; hi++)
                for (int ti = 0; ti < t; ti++)
                {
                    int kv = hi / group, last = s - t + ti;
                    var sc = new double[last + 1];
                    double max = double.NegativeInfinity;
                    for (int j = 0; j <= last; j++)
                    {
                        double dot = 0;
                        for (int x = 0; x < d; x++) dot += q[((bi * t + ti) * h + hi) * d + x] * k[((bi * s + j) * kh + kv) * d + x];
                        sc[j] = scale * dot; max = Math.Max(max, sc[j]);
                    }
                    double sum = 0;
                    for (int j = 0; j <= last; j++) sum += Math.Exp(sc[j] - max);
                    for (int j = 0; j <= last; j++)
                    {
                        double p = Math.Exp(sc[j] - max) / sum;
                        for (int x = 0; x < d; x++) o[((bi * t + ti) * h + hi) * d + x] += p * v[((bi * s + j) * kh + kv) * d + x];
                    }
                    lse[(bi * h + hi) * t + ti] = max + Math.Log(sum);
                }
        return (o, lse);
    }

    /// <summary>q, k, v as slices of one fused (B,T,H+2K,D) buffer, the layout a fused QKV projection produces.</summary>
    private (Tensor Q, Tensor K, Tensor V) FusedViews(double[] q, double[] k, double[] v, DType dtype, int b, int t, int h, int kh, int d)
    {
        var fused = _cpu.Allocate(new Shape(b, t, h + 2 * kh, d), dtype);
        TestTensors.Poison(_cpu, fused);
        var tq = fused.Slice(2, 0, h); var tk = fused.Slice(2, h, kh); var tv = fused.Slice(2, h + kh, kh);
        _cpu.Copy(TestTensors.FromDoubles(_cpu, q, dtype, b, t, h, d), tq);
        _cpu.Copy(TestTensors.FromDoubles(_cpu, k, dtype, b, t, kh, d), tk);
        _cpu.Copy(TestTensors.FromDoubles(_cpu, v, dtype, b, t, kh, d), tv);
        return (tq, tk, tv);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void ForwardOnFusedQkvViewsWithGroupedHeadsMatchesNaiveReference(DType dtype)
    {
        var rng = new Random(40);
        int b = 2, t = 7, h = 4, kh = 2, d = 8;
        var q = TestTensors.Normal(rng, b * t * h * d); var k = TestTensors.Normal(rng, b * t * kh * d); var v = TestTensors.Normal(rng, b * t * kh * d);
        var (tq, tk, tv) = FusedViews(q, k, v, dtype, b, t, h, kh, d);
        var o = _cpu.Allocate(new Shape(b, t, h, d), dtype); var lse = _cpu.Allocate(new Shape(b, h, t), dtype);
        TestTensors.Poison(_cpu, o); TestTensors.Poison(_cpu, lse);
        double scale = 1 / Math.Sqrt(d);
        _cpu.AttentionForward(tq, tk, tv, o, lse, scale);
        var (eo, el) = Reference(q, k, v, b, t, h, t, kh, d, scale);
        // F32: dot products of 8 and sums of 7 probabilities: ~1e-6 relative.
        double tol = dtype == DType.F32 ? 1e-5 : 1e-13;
        NumericAssert.Close(eo, TestTensors.ToDoubles(_cpu, o), tol, "attention output");
        NumericAssert.Close(el, TestTensors.ToDoubles(_cpu, lse), tol, "attention logsumexp");
    }

    [Fact]
    public void ForwardWithKvCacheLongerThanQueriesPlacesQueriesAtTheEnd()
    {
        var rng = new Random(41);
        int b = 1, t = 3, s = 10, h = 6, kh = 3, d = 4;
        var q = TestTensors.Normal(rng, b * t * h * d); var k = TestTensors.Normal(rng, b * s * kh * d); var v = TestTensors.Normal(rng, b * s * kh * d);
        var o = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        TestTensors.Poison(_cpu, o);
        _cpu.AttentionForward(TestTensors.FromDoubles(_cpu, q, DType.F64, b, t, h, d), TestTensors.FromDoubles(_cpu, k, DType.F64, b, s, kh, d),
            TestTensors.FromDoubles(_cpu, v, DType.F64, b, s, kh, d), o, null, 0.5);
        NumericAssert.Close(Reference(q, k, v, b, t, h, s, kh, d, 0.5).O, _cpu.ToArray<double>(o), 1e-13, "decode attention");
    }

    [Fact]
    public void BackwardWithGroupedHeadsOnStridedViewsPassesTheGradientCheck()
    {
        var rng = new Random(42);
        int b = 2, t = 5, h = 4, kh = 2, d = 4;
        double scale = 0.6;
        var q = TestTensors.Normal(rng, b * t * h * d); var k = TestTensors.Normal(rng, b * t * kh * d); var v = TestTensors.Normal(rng, b * t * kh * d);
        var w = TestTensors.Normal(rng, b * t * h * d);
        var o = _cpu.Allocate(new Shape(b, t, h, d), DType.F64); var lse = _cpu.Allocate(new Shape(b, h, t), DType.F64);
        double Loss()
        {
            var (tq, tk, tv) = FusedViews(q, k, v, DType.F64, b, t, h, kh, d);
            _cpu.AttentionForward(tq, tk, tv, o, lse, scale);
            return TestTensors.Dot(w, _cpu.ToArray<double>(o));
        }
        Loss();
        var (fq, fk, fv) = FusedViews(q, k, v, DType.F64, b, t, h, kh, d);
        // Gradients land in a fused (B,T,H+2K,D) buffer too, poisoned: every element must be written.
        var dFused = _cpu.Allocate(new Shape(b, t, h + 2 * kh, d), DType.F64);
        TestTensors.Poison(_cpu, dFused);
        Tensor dq = dFused.Slice(2, 0, h), dk = dFused.Slice(2, h, kh), dv = dFused.Slice(2, h + kh, kh);
        _cpu.AttentionBackward(fq, fk, fv, o, TestTensors.FromDoubles(_cpu, w, DType.F64, b, t, h, d), lse, dq, dk, dv, scale);
        GradientCheck.Assert(Loss, q, TestTensors.ToDoubles(_cpu, dq), "attention dq");
        GradientCheck.Assert(Loss, k, TestTensors.ToDoubles(_cpu, dk), "attention dk");
        GradientCheck.Assert(Loss, v, TestTensors.ToDoubles(_cpu, dv), "attention dv");
    }

    [Theory]
    [InlineData(DType.F64, 40, 40)]
    [InlineData(DType.F32, 33, 50)]
    public void ForwardOnLongSequencesThroughGemmMatchesNaiveReference(DType dtype, int t, int s)
    {
        // T >= 32 takes the per-head Gemm path.
        var rng = new Random(47);
        int b = 1, h = 4, kh = 1, d = 8;
        var q = TestTensors.Normal(rng, b * t * h * d); var k = TestTensors.Normal(rng, b * s * kh * d); var v = TestTensors.Normal(rng, b * s * kh * d);
        var o = _cpu.Allocate(new Shape(b, t, h, d), dtype); var lse = _cpu.Allocate(new Shape(b, h, t), dtype);
        TestTensors.Poison(_cpu, o); TestTensors.Poison(_cpu, lse);
        _cpu.AttentionForward(TestTensors.FromDoubles(_cpu, q, dtype, b, t, h, d), TestTensors.FromDoubles(_cpu, k, dtype, b, s, kh, d),
            TestTensors.FromDoubles(_cpu, v, dtype, b, s, kh, d), o, lse, 0.35);
        var (eo, el) = Reference(q, k, v, b, t, h, s, kh, d, 0.35);
        double tol = dtype == DType.F32 ? 1e-5 : 1e-13;
        NumericAssert.Close(eo, TestTensors.ToDoubles(_cpu, o), tol, "gemm attention output");
        NumericAssert.Close(el, TestTensors.ToDoubles(_cpu, lse), tol, "gemm attention logsumexp");
    }

    [Fact]
    public void BackwardOnLongSequencesThroughGemmPassesDirectionalGradientChecks()
    {
        // T = 36 takes the Gemm path; a per-element check would need 2 * 3456 forward passes, so check
        // three random directions per input instead (each a 1e-6-relative agreement of <grad, u>).
        var rng = new Random(48);
        int b = 1, t = 36, h = 4, kh = 2, d = 8;
        var q = TestTensors.Normal(rng, b * t * h * d); var k = TestTensors.Normal(rng, b * t * kh * d); var v = TestTensors.Normal(rng, b * t * kh * d);
        var w = TestTensors.Normal(rng, b * t * h * d);
        var o = _cpu.Allocate(new Shape(b, t, h, d), DType.F64); var lse = _cpu.Allocate(new Shape(b, h, t), DType.F64);
        double Loss()
        {
            var (tq, tk, tv) = FusedViews(q, k, v, DType.F64, b, t, h, kh, d);
            _cpu.AttentionForward(tq, tk, tv, o, lse, 0.4);
            return TestTensors.Dot(w, _cpu.ToArray<double>(o));
        }
        Loss();
        var (fq, fk, fv) = FusedViews(q, k, v, DType.F64, b, t, h, kh, d);
        var dFused = _cpu.Allocate(new Shape(b, t, h + 2 * kh, d), DType.F64);
        TestTensors.Poison(_cpu, dFused);
        Tensor dq = dFused.Slice(2, 0, h), dk = dFused.Slice(2, h, kh), dv = dFused.Slice(2, h + kh, kh);
        _cpu.AttentionBackward(fq, fk, fv, o, TestTensors.FromDoubles(_cpu, w, DType.F64, b, t, h, d), lse, dq, dk, dv, 0.4);
        foreach (var (input, grad, name) in new[] { (q, dq, "dq"), (k, dk, "dk"), (v, dv, "dv") })
        {
            var g = TestTensors.ToDoubles(_cpu, grad);
            for (int r = 0; r < 3; r++)
            {
                double err = GradientCheck.CheckDirection(Loss, input, g, TestTensors.Normal(rng, input.Length));
                Assert.True(err < 1e-6, $"gemm attention {name}: directional relative error {err:E2}");
            }
        }
    }

    [Fact]
    public void BackwardOverwritesRatherThanAccumulates()
    {
        var rng = new Random(43);
        int b = 1, t = 4, h = 2, kh = 1, d = 4;
        var q = TestTensors.RandomNormal(_cpu, rng, DType.F64, b, t, h, d); var k = TestTensors.RandomNormal(_cpu, rng, DType.F64, b, t, kh, d);
        var v = TestTensors.RandomNormal(_cpu, rng, DType.F64, b, t, kh, d); var dO = TestTensors.RandomNormal(_cpu, rng, DType.F64, b, t, h, d);
        var o = _cpu.Allocate(q.Shape, DType.F64); var lse = _cpu.Allocate(new Shape(b, h, t), DType.F64);
        _cpu.AttentionForward(q, k, v, o, lse, 0.5);
        var grads = new[] { _cpu.Allocate(q.Shape, DType.F64), _cpu.Allocate(k.Shape, DType.F64), _cpu.Allocate(k.Shape, DType.F64) };
        _cpu.AttentionBackward(q, k, v, o, dO, lse, grads[0], grads[1], grads[2], 0.5);
        var first = grads.Select(g => _cpu.ToArray<double>(g)).ToArray();
        _cpu.AttentionBackward(q, k, v, o, dO, lse, grads[0], grads[1], grads[2], 0.5);
        for (int i = 0; i < 3; i++) Assert.Equal(first[i], _cpu.ToArray<double>(grads[i]));
    }

    /// <summary>
    /// columnSums ((H + 2K) D) += the sums over (B, T) of dq's, dk's and dv's columns, in that order, for views into one
    /// fused (B, T, H + 2K, D) gradient as the model passes them (GQA 2): against the sums of the gradient the same call
    /// wrote, from a non-zero start, into an F64 and an F32 target. Tolerance: F64 sums of the same values in another order,
    /// 1e-12 relative; the F32 target rounds each sum once (2^-24), 1e-6.
    /// </summary>
    [Theory]
    [InlineData(DType.F64)]
    [InlineData(DType.F32)]
    public void BackwardAddsTheColumnSumsOfItsGradients(DType sumsType)
    {
        const int seed = 45;
        var rng = new Random(seed);
        int b = 2, t = 7, h = 4, kh = 2, d = 3, w = h + 2 * kh;
        var qkv = TestTensors.RandomNormal(_cpu, rng, DType.F64, b, t, w, d);
        var (q, k, v) = (qkv.Slice(2, 0, h), qkv.Slice(2, h, kh), qkv.Slice(2, h + kh, kh));
        var dO = TestTensors.RandomNormal(_cpu, rng, DType.F64, b, t, h, d);
        var o = _cpu.Allocate(new Shape(b, t, h, d), DType.F64); var lse = _cpu.Allocate(new Shape(b, h, t), DType.F64);
        _cpu.AttentionForward(q, k, v, o, lse, 0.5);
        var dqkv = _cpu.Allocate(qkv.Shape, DType.F64);
        var start = TestTensors.Normal(rng, w * d);
        var sums = TestTensors.FromDoubles(_cpu, start, sumsType, w * d);
        _cpu.AttentionBackward(q, k, v, o, dO, lse, dqkv.Slice(2, 0, h), dqkv.Slice(2, h, kh), dqkv.Slice(2, h + kh, kh), 0.5, columnSums: sums);
        var g = _cpu.ToArray<double>(dqkv);
        var expected = (double[])start.Clone();
        for (int r = 0; r < b * t; r++)
            for (int c = 0; c < w * d; c++) expected[c] += g[r * w * d + c];
        var got = TestTensors.ToDoubles(_cpu, sums);
        NumericAssert.Close(expected, got, sumsType == DType.F64 ? 1e-12 : 1e-6, $"column sums into {sumsType} (seed {seed})");
        Assert.Throws<ArgumentException>(() => _cpu.AttentionBackward(q, k, v, o, dO, lse, dqkv.Slice(2, 0, h), dqkv.Slice(2, h, kh),
            dqkv.Slice(2, h + kh, kh), 0.5, columnSums: _cpu.Allocate(new Shape(w * d - 1), DType.F64)));
    }

    [Fact]
    public void BackwardInF32MatchesF64OnAThreadedSize()
    {
        var rng = new Random(44);
        int b = 2, t = 48, h = 4, kh = 2, d = 16;
        var q = TestTensors.Normal(rng, b * t * h * d); var k = TestTensors.Normal(rng, b * t * kh * d); var v = TestTensors.Normal(rng, b * t * kh * d);
        var dO = TestTensors.Normal(rng, b * t * h * d);
        double[][] Run(DType dt)
        {
            var tq = TestTensors.FromDoubles(_cpu, q, dt, b, t, h, d); var tk = TestTensors.FromDoubles(_cpu, k, dt, b, t, kh, d); var tv = TestTensors.FromDoubles(_cpu, v, dt, b, t, kh, d);
            var o = _cpu.Allocate(tq.Shape, dt); var lse = _cpu.Allocate(new Shape(b, h, t), dt);
            _cpu.AttentionForward(tq, tk, tv, o, lse, 0.25);
            var dq = _cpu.Allocate(tq.Shape, dt); var dk = _cpu.Allocate(tk.Shape, dt); var dv = _cpu.Allocate(tk.Shape, dt);
            _cpu.AttentionBackward(tq, tk, tv, o, TestTensors.FromDoubles(_cpu, dO, dt, b, t, h, d), lse, dq, dk, dv, 0.25);
            return new[] { o, dq, dk, dv }.Select(x => TestTensors.ToDoubles(_cpu, x)).ToArray();
        }
        var f64 = Run(DType.F64); var f32 = Run(DType.F32);
        // Sums over up to 48 keys and 2 heads in F32: ~1e-6 relative; 2e-5 leaves margin.
        for (int i = 0; i < 4; i++) NumericAssert.Close(f64[i], f32[i], 2e-5, $"attention tensor {i} F32 vs F64");
    }

    [Fact]
    public void HeadsThatAreNotAMultipleOfKvHeadsAreRejected()
    {
        var q = _cpu.Allocate(new Shape(1, 2, 3, 4), DType.F32); var k = _cpu.Allocate(new Shape(1, 2, 2, 4), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.AttentionForward(q, k, k, q, null, 1));
        Assert.Contains("multiple", e.Message);
    }

    private static double[] RopeReference(double[] x, int b, int t, int h, int d, int start, double theta, bool inverse)
    {
        var y = (double[])x.Clone();
        int half = d / 2;
        for (int bi = 0; bi < b; bi++)
            for (int ti = 0; ti < t; ti++)
                for (int hi = 0; hi < h; hi++)
                    for (int i = 0; i < half; i++)
                    {
                        double angle = (start + ti) * Math.Pow(theta, -2.0 * i / d) * (inverse ? -1 : 1);
                        int o = ((bi * t + ti) * h + hi) * d;
                        double x1 = x[o + i], x2 = x[o + i + half];
                        y[o + i] = x1 * Math.Cos(angle) - x2 * Math.Sin(angle);
                        y[o + i + half] = x2 * Math.Cos(angle) + x1 * Math.Sin(angle);
                    }
        return y;
    }

    [Theory]
    [InlineData(DType.F32, 0)]
    [InlineData(DType.F32, 100_000)]
    [InlineData(DType.F64, 5)]
    public void RopeOnAStridedViewMatchesTheRotateHalfReference(DType dtype, int start)
    {
        var rng = new Random(45);
        int b = 2, t = 5, h = 3, d = 8;
        var x = TestTensors.Normal(rng, b * t * h * d);
        // q of a fused (B,T,H+2,D) buffer: heads are strided, the last dimension contiguous.
        var fused = _cpu.Allocate(new Shape(b, t, h + 2, d), dtype);
        _cpu.Fill(fused, 7);
        var view = fused.Slice(2, 1, h);
        _cpu.Copy(TestTensors.FromDoubles(_cpu, x, dtype, b, t, h, d), view);
        _cpu.Rope(view, start, 10000);
        // Angles are computed in double, so even at position 1e5 F32 only rounds the result (~1e-7).
        NumericAssert.Close(RopeReference(x, b, t, h, d, start, 10000, false), TestTensors.ToDoubles(_cpu, view), dtype == DType.F32 ? 1e-6 : 1e-13, "rope");
        var all = TestTensors.ToDoubles(_cpu, fused);
        for (int i = 0; i < all.Length; i++)
            if ((i / d) % (h + 2) is 0 or 4) Assert.Equal(7.0, all[i]);
    }

    [Fact]
    public void RopeInverseIsTheAdjointOfRope()
    {
        // <Rope(x), y> = <x, Rope^-1(y)>: the backward pass of Rope is its inverse.
        var rng = new Random(46);
        int b = 1, t = 6, h = 2, d = 6;
        var x = TestTensors.Normal(rng, b * t * h * d); var y = TestTensors.Normal(rng, b * t * h * d);
        var tx = TestTensors.FromDoubles(_cpu, x, DType.F64, b, t, h, d); var ty = TestTensors.FromDoubles(_cpu, y, DType.F64, b, t, h, d);
        _cpu.Rope(tx, 3, 500); _cpu.Rope(ty, 3, 500, inverse: true);
        double lhs = TestTensors.Dot(_cpu.ToArray<double>(tx), y), rhs = TestTensors.Dot(x, _cpu.ToArray<double>(ty));
        Assert.True(Math.Abs(lhs - rhs) < 1e-12 * Math.Max(1, Math.Abs(lhs)), $"<Rope x, y> = {lhs} but <x, Rope^-1 y> = {rhs}");
        // And the inverse undoes the rotation.
        _cpu.Rope(tx, 3, 500, inverse: true);
        NumericAssert.Close(x, _cpu.ToArray<double>(tx), 1e-14, "rope round trip");
        // The gradient check: d<w, Rope(x)>/dx = Rope^-1(w).
        var w = TestTensors.Normal(rng, x.Length);
        var tw = TestTensors.FromDoubles(_cpu, w, DType.F64, b, t, h, d);
        _cpu.Rope(tw, 3, 500, inverse: true);
        double Loss() { var t2 = TestTensors.FromDoubles(_cpu, x, DType.F64, b, t, h, d); _cpu.Rope(t2, 3, 500); return TestTensors.Dot(w, _cpu.ToArray<double>(t2)); }
        GradientCheck.Assert(Loss, x, _cpu.ToArray<double>(tw), "rope dx");
    }
}
