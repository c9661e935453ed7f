using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// Soft-capping on the CPU backend (Gemma 2: attention scores s = c tanh(s / c) after the scale, and the final logits
/// z = c tanh(z / c)): F64 against a direct masked softmax of capped scores, gradients against finite differences, at
/// lengths below and above the 32 queries where uncapped attention switches to its GEMM path (capped attention stays on
/// the loops).
/// </summary>
public sealed class CpuSoftCapTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>Softmax over keys j with p - window &lt; j &lt;= p of cap tanh(scale q·k / cap), written out directly.</summary>
    private static double[] Reference(double[] q, double[] k, double[] v, int t, int h, int kh, int d, double scale, int window, double cap)
    {
        var o = new double[t * h * d];
        int group = h / kh;
        for (int hi = 0; hi < h; hi++)
            for (int p = 0; p < t; p++)
            {
                int kv = hi / group;
                var scores = new double[t];
                double max = double.NegativeInfinity;
                for (int j = 0; j < t; j++)
                {
                    if (j > p || (window > 0 && j <= p - window)) { scores[j] = double.NegativeInfinity; continue; }
                    double dot = 0;
                    for (int x = 0; x < d; x++) dot += q[(p * h + hi) * d + x] * k[(j * kh + kv) * d + x];
                    scores[j] = cap * Math.Tanh(scale * dot / cap);
                    max = Math.Max(max, scores[j]);
                }
                double sum = 0;
                for (int j = 0; j < t; j++) { scores[j] = Math.Exp(scores[j] - max); sum += scores[j]; }
                for (int j = 0; j < t; j++)
                    for (int x = 0; x < d; x++) o[(p * h + hi) * d + x] += scores[j] / sum * v[(j * kh + kv) * d + x];
            }
        return o;
    }

    private Tensor Attention(double[] q, double[] k, double[] v, int t, int h, int kh, int d, double scale, int window, double cap, Tensor? lse = null)
    {
        var o = _cpu.Allocate(new Shape(1, t, h, d), DType.F64);
        _cpu.AttentionForward(TestTensors.FromDoubles(_cpu, q, DType.F64, 1, t, h, d), TestTensors.FromDoubles(_cpu, k, DType.F64, 1, t, kh, d),
            TestTensors.FromDoubles(_cpu, v, DType.F64, 1, t, kh, d), o, lse, scale, window, cap);
        return o;
    }

    [Theory]
    [InlineData(9, 0)]
    [InlineData(9, 4)]
    [InlineData(40, 0)]     // past the GEMM threshold: a cap keeps the loops
    [InlineData(40, 6)]
    public void CappedForwardMatchesADirectSoftmaxOfCappedScoresInF64(int t, int window)
    {
        var rng = new Random(3000 + t + window);
        int h = 4, kh = 2, d = 8;
        const double scale = 0.9, cap = 1.5;   // scores of O(2): the cap bends them well away from the identity
        var q = TestTensors.Normal(rng, t * h * d);
        var k = TestTensors.Normal(rng, t * kh * d);
        var v = TestTensors.Normal(rng, t * kh * d);
        var expected = Reference(q, k, v, t, h, kh, d, scale, window, cap);
        var actual = _cpu.ToArray<double>(Attention(q, k, v, t, h, kh, d, scale, window, cap));
        // F64 against F64, one summation order apart: 1e-12 relative.
        NumericAssert.Close(expected, actual, 1e-12, $"T={t}, window {window}");
        var uncapped = _cpu.ToArray<double>(Attention(q, k, v, t, h, kh, d, scale, window, 0));
        Assert.True(NumericAssert.MaxRelativeError(uncapped, actual) > 1e-2, "the cap does not change the output");
    }

    [Theory]
    [InlineData(7, 0)]
    [InlineData(7, 3)]
    [InlineData(36, 5)]
    public void CappedBackwardMatchesFiniteDifferences(int t, int window)
    {
        var rng = new Random(4000 + t + window);
        int h = 2, kh = 1, d = 4;
        const double scale = 0.8, cap = 1.2;
        var q = TestTensors.Normal(rng, t * h * d);
        var k = TestTensors.Normal(rng, t * kh * d);
        var v = TestTensors.Normal(rng, t * kh * d);
        var w = TestTensors.Normal(rng, t * h * d);           // loss = <w, attention(q, k, v)>
        var lse = _cpu.Allocate(new Shape(1, h, t), DType.F64);
        var output = Attention(q, k, v, t, h, kh, d, scale, window, cap, lse);
        var dq = _cpu.Allocate(new Shape(1, t, h, d), DType.F64);
        var dk = _cpu.Allocate(new Shape(1, t, kh, d), DType.F64);
        var dv = _cpu.Allocate(new Shape(1, t, kh, d), DType.F64);
        _cpu.AttentionBackward(TestTensors.FromDoubles(_cpu, q, DType.F64, 1, t, h, d), TestTensors.FromDoubles(_cpu, k, DType.F64, 1, t, kh, d),
            TestTensors.FromDoubles(_cpu, v, DType.F64, 1, t, kh, d), output, TestTensors.FromDoubles(_cpu, w, DType.F64, 1, t, h, d), lse,
            dq, dk, dv, scale, window, softCap: cap);
        double Loss() => TestTensors.Dot(w, _cpu.ToArray<double>(Attention(q, k, v, t, h, kh, d, scale, window, cap)));
        // Central differences in F64: 1e-6 relative (GradientCheck's bound).
        GradientCheck.Assert(Loss, q, _cpu.ToArray<double>(dq), "dq");
        GradientCheck.Assert(Loss, k, _cpu.ToArray<double>(dk), "dk");
        GradientCheck.Assert(Loss, v, _cpu.ToArray<double>(dv), "dv");
    }

    [Fact]
    public void CachedAndPagedPathsCapAsTheTrainingOpDoes()
    {
        var rng = new Random(5);
        int t = 1, h = 2, kh = 1, d = 4, s = 6;
        const double cap = 0.7;
        var keys = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, s * kh * d, 2), DType.F64, 1, s, kh, d);
        var values = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, s * kh * d), DType.F64, 1, s, kh, d);
        var q = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, t * h * d, 2), DType.F64, 1, t, h, d);
        var cached = _cpu.Allocate(new Shape(1, t, h, d), DType.F64);
        _cpu.AttentionForwardCached(q, keys, values, _cpu.FromArray(new[] { s - t }, 1), cached, 0.5, 0, cap);
        var direct = _cpu.Allocate(new Shape(1, t, h, d), DType.F64);
        _cpu.AttentionForward(q, keys, values, direct, null, 0.5, 0, cap);
        NumericAssert.Close(_cpu.ToArray<double>(direct), _cpu.ToArray<double>(cached), 0, "cached");
        var plain = _cpu.Allocate(new Shape(1, t, h, d), DType.F64);
        _cpu.AttentionForward(q, keys, values, plain, null, 0.5);
        Assert.True(NumericAssert.MaxRelativeError(_cpu.ToArray<double>(plain), _cpu.ToArray<double>(cached)) > 1e-3, "the cached op ignores the cap");
    }

    [Fact]
    public void LogitSoftCapAndItsBackwardMatchTanhAndFiniteDifferences()
    {
        var rng = new Random(6);
        const double cap = 3;
        var x = TestTensors.Normal(rng, 24, 4);
        var y = TestTensors.FromDoubles(_cpu, x, DType.F64, 4, 6);
        _cpu.SoftCap(y, cap);
        NumericAssert.Close(x.Select(v => cap * Math.Tanh(v / cap)).ToArray(), _cpu.ToArray<double>(y), 1e-15, "forward");
        var w = TestTensors.Normal(rng, 24);
        var dy = TestTensors.FromDoubles(_cpu, w, DType.F64, 4, 6);
        _cpu.SoftCapBackward(y, dy, cap);
        double Loss()
        {
            var z = TestTensors.FromDoubles(_cpu, x, DType.F64, 4, 6);
            _cpu.SoftCap(z, cap);
            return TestTensors.Dot(w, _cpu.ToArray<double>(z));
        }
        GradientCheck.Assert(Loss, x, _cpu.ToArray<double>(dy), "dx");
    }

    [Fact]
    public void ANegativeCapIsRefusedNamingIt()
    {
        var x = _cpu.Allocate(new Shape(1, 2, 1, 2), DType.F64);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => _cpu.AttentionForward(x, x, x, _cpu.Allocate(new Shape(1, 2, 1, 2), DType.F64), null, 1.0, 0, -1));
        Assert.Contains("soft cap", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => _cpu.SoftCap(_cpu.Allocate(new Shape(3), DType.F64), 0));
    }
}
