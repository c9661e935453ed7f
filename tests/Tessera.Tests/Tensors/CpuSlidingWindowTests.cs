using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// Sliding-window attention (Mistral) on the CPU backend, the oracle the CUDA kernels are compared with: F64 against a
/// direct masked softmax, gradients against finite differences, and the cached (decode) op against the training op.
/// Both CPU paths run: dot-product loops below 32 queries, per-head Gemm from 32 on.
/// </summary>
public sealed class CpuSlidingWindowTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>Softmax over keys j with p - window &lt; j &lt;= p (p = S - T + t), written out directly in F64.</summary>
    private static (double[] O, double[] Lse) Reference(double[] q, double[] k, double[] v, int b, int t, int h, int s, int kh, int d,
        double scale, int window)
    {
        var o = new double[b * t * h * d];
        var lse = new double[b * h * t];
        int group = h / kh;
        for (int bi = 0; bi < b; bi++)
            for (int hi = 0; hi < h; hi++)
                for (int ti = 0; ti < t; ti++)
                {
                    int kv = hi / group, p = s - t + ti;
                    var weights = new double[s];
                    double sum = 0;
                    var scores = new double[s];
                    double max = double.NegativeInfinity;
                    for (int j = 0; j < s; j++)
                    {
                        bool visible = j <= p && (window == 0 || j > p - window);
                        if (!visible) { scores[j] = double.NegativeInfinity; continue; }
                        double dot = 0;
                        for (int x = 0; x < d; x++) dot += q[((bi * t + ti) * h + hi) * d + x] * k[((bi * s + j) * kh + kv) * d + x];
                        scores[j] = scale * dot;
                        max = Math.Max(max, scores[j]);
                    }
                    for (int j = 0; j < s; j++) { weights[j] = Math.Exp(scores[j] - max); sum += weights[j]; }
                    for (int j = 0; j < s; j++)
                        for (int x = 0; x < d; x++) o[((bi * t + ti) * h + hi) * d + x] += weights[j] / sum * v[((bi * s + j) * kh + kv) * d + x];
                    lse[(bi * h + hi) * t + ti] = max + Math.Log(sum);
                }
        return (o, lse);
    }

    [Theory]
    [InlineData(9, 3)]      // loop path, window well inside the sequence
    [InlineData(9, 1)]      // each query sees only itself
    [InlineData(9, 9)]      // the window covers everything: plain causal attention
    [InlineData(40, 7)]     // Gemm path
    [InlineData(40, 33)]
    public void ForwardMatchesADirectMaskedSoftmaxInF64(int t, int window)
    {
        var rng = new Random(1000 + t * 10 + window);   // seed logged by the name's inputs
        int b = 2, h = 4, kh = 2, d = 8;
        var q = TestTensors.Normal(rng, b * t * h * d);
        var k = TestTensors.Normal(rng, b * t * kh * d);
        var v = TestTensors.Normal(rng, b * t * kh * d);
        double scale = 1 / Math.Sqrt(d);
        var (eo, el) = Reference(q, k, v, b, t, h, t, kh, d, scale, window);
        var o = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        var lse = _cpu.Allocate(new Shape(b, h, t), DType.F64);
        _cpu.AttentionForward(TestTensors.FromDoubles(_cpu, q, DType.F64, b, t, h, d), TestTensors.FromDoubles(_cpu, k, DType.F64, b, t, kh, d),
            TestTensors.FromDoubles(_cpu, v, DType.F64, b, t, kh, d), o, lse, scale, window);
        // F64 against F64: only summation order differs (about 1e-15 relative).
        NumericAssert.Close(eo, _cpu.ToArray<double>(o), 1e-12, $"output, T={t}, window {window}");
        NumericAssert.Close(el, _cpu.ToArray<double>(lse), 1e-12, $"log-sum-exp, T={t}, window {window}");
    }

    [Fact]
    public void AWindowChangesTheOutputOnlyForQueriesPastIt()
    {
        var rng = new Random(77);
        int b = 1, t = 10, h = 2, d = 4, window = 4;
        var q = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, b * t * h * d), DType.F64, b, t, h, d);
        var k = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, b * t * h * d), DType.F64, b, t, h, d);
        var v = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, b * t * h * d), DType.F64, b, t, h, d);
        var full = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        var windowed = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        _cpu.AttentionForward(q, k, v, full, null, 0.5);
        _cpu.AttentionForward(q, k, v, windowed, null, 0.5, window);
        var a = _cpu.ToArray<double>(full);
        var w = _cpu.ToArray<double>(windowed);
        for (int ti = 0; ti < t; ti++)
        {
            double diff = 0;
            for (int x = 0; x < h * d; x++) diff = Math.Max(diff, Math.Abs(a[ti * h * d + x] - w[ti * h * d + x]));
            if (ti < window) Assert.True(diff == 0, $"query {ti} sees all its keys either way, yet differs by {diff}");
            else Assert.True(diff > 1e-6, $"query {ti} lost keys to the window, yet its output is unchanged");
        }
    }

    [Theory]
    [InlineData(7, 3)]
    [InlineData(36, 5)]
    public void BackwardMatchesFiniteDifferencesOfTheWindowedForward(int t, int window)
    {
        var rng = new Random(2000 + t + window);
        int b = 1, h = 2, kh = 1, d = 4;
        double scale = 0.5;
        var q = TestTensors.Normal(rng, b * t * h * d);
        var k = TestTensors.Normal(rng, b * t * kh * d);
        var v = TestTensors.Normal(rng, b * t * kh * d);
        var w = TestTensors.Normal(rng, b * t * h * d);     // loss = <w, attention(q, k, v)>
        Tensor Out(double[] qq, double[] kk, double[] vv, Tensor? lse)
        {
            var o = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
            _cpu.AttentionForward(TestTensors.FromDoubles(_cpu, qq, DType.F64, b, t, h, d), TestTensors.FromDoubles(_cpu, kk, DType.F64, b, t, kh, d),
                TestTensors.FromDoubles(_cpu, vv, DType.F64, b, t, kh, d), o, lse, scale, window);
            return o;
        }
        var lse = _cpu.Allocate(new Shape(b, h, t), DType.F64);
        var output = Out(q, k, v, lse);
        var dq = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        var dk = _cpu.Allocate(new Shape(b, t, kh, d), DType.F64);
        var dv = _cpu.Allocate(new Shape(b, t, kh, d), DType.F64);
        _cpu.AttentionBackward(TestTensors.FromDoubles(_cpu, q, DType.F64, b, t, h, d), TestTensors.FromDoubles(_cpu, k, DType.F64, b, t, kh, d),
            TestTensors.FromDoubles(_cpu, v, DType.F64, b, t, kh, d), output, TestTensors.FromDoubles(_cpu, w, DType.F64, b, t, h, d), lse,
            dq, dk, dv, scale, window);
        GradientCheck.Assert(() => TestTensors.Dot(w, _cpu.ToArray<double>(Out(q, k, v, null))), q, _cpu.ToArray<double>(dq), "dq");
        GradientCheck.Assert(() => TestTensors.Dot(w, _cpu.ToArray<double>(Out(q, k, v, null))), k, _cpu.ToArray<double>(dk), "dk");
        GradientCheck.Assert(() => TestTensors.Dot(w, _cpu.ToArray<double>(Out(q, k, v, null))), v, _cpu.ToArray<double>(dv), "dv");
    }

    [Fact]
    public void CachedAttentionWithAWindowEqualsTheTrainingOpOnTheSameKeys()
    {
        // Two sequences at different lengths decode 2 new positions each against a cache of 20; the result must equal the
        // training op over each sequence's filled keys (its last T rows), window applied the same way.
        var rng = new Random(31);
        int b = 2, t = 2, h = 4, kh = 2, d = 8, s = 20, window = 5;
        int[] starts = [9, 14];
        var cacheK = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, b * s * kh * d), DType.F64, b, s, kh, d);
        var cacheV = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, b * s * kh * d), DType.F64, b, s, kh, d);
        var q = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, b * t * h * d), DType.F64, b, t, h, d);
        var output = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        _cpu.AttentionForwardCached(q, cacheK, cacheV, _cpu.FromArray(starts, b), output, 0.3, window);
        var got = _cpu.ToArray<double>(output);
        for (int i = 0; i < b; i++)
        {
            int filled = starts[i] + t;
            var expected = _cpu.Allocate(new Shape(1, t, h, d), DType.F64);
            _cpu.AttentionForward(q.Slice(0, i, 1), cacheK.Slice(0, i, 1).Slice(1, 0, filled), cacheV.Slice(0, i, 1).Slice(1, 0, filled), expected, null, 0.3, window);
            NumericAssert.Close(_cpu.ToArray<double>(expected), got.AsSpan(i * t * h * d, t * h * d), 0, $"sequence {i}");
        }
    }

    [Fact]
    public void ANegativeWindowIsRefusedNamingIt()
    {
        var x = _cpu.Allocate(new Shape(1, 2, 1, 2), DType.F64);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => _cpu.AttentionForward(x, x, x, _cpu.Allocate(new Shape(1, 2, 1, 2), DType.F64), null, 1.0, -3));
        Assert.Contains("sliding window", e.Message);
    }
}
