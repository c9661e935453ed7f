using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

public class CpuOptimizerTests
{
    private readonly CpuBackend _cpu = new(2);

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void SumOfSquaresAccumulatesIntoTheResult(DType dtype)
    {
        var rng = new Random(70);
        var x = TestTensors.Normal(rng, 70_001);
        var result = TestTensors.FromDoubles(_cpu, new[] { 2.5 }, DType.F64, 1);
        _cpu.SumOfSquares(TestTensors.FromDoubles(_cpu, x, dtype, x.Length), result);
        double expected = 2.5 + x.Select(v => dtype == DType.F32 ? (double)(float)v : v).Sum(v => v * v);
        // Accumulated in double over 7e4 terms: ~1e-12 relative.
        Assert.InRange(_cpu.ReadScalar(result), expected * (1 - 1e-12), expected * (1 + 1e-12));
    }

    private static void AdamWReference(double[] p, double[] g, double[] m, double[] v, AdamWStep s, double clip)
    {
        for (int i = 0; i < p.Length; i++)
        {
            double gi = g[i] * clip;
            m[i] = s.Beta1 * m[i] + (1 - s.Beta1) * gi;
            v[i] = s.Beta2 * v[i] + (1 - s.Beta2) * gi * gi;
            double mh = m[i] / (1 - Math.Pow(s.Beta1, s.Step)), vh = v[i] / (1 - Math.Pow(s.Beta2, s.Step));
            p[i] -= s.LearningRate * (mh / (Math.Sqrt(vh) + s.Epsilon) + s.WeightDecay * p[i]);
        }
    }

    [Theory]
    [InlineData(DType.F32, false)]
    [InlineData(DType.F64, false)]
    [InlineData(DType.F32, true)]
    [InlineData(DType.F64, true)]
    public void AdamWMatchesTheDocumentedUpdateOverThreeSteps(DType dtype, bool clipped)
    {
        var rng = new Random(71);
        int n = 1001;
        var p = TestTensors.Normal(rng, n); var m = new double[n]; var v = new double[n];
        var tp = TestTensors.FromDoubles(_cpu, p, dtype, n); var tm = _cpu.Zeros(new Shape(n), dtype); var tv = _cpu.Zeros(new Shape(n), dtype);
        var low = _cpu.Allocate(new Shape(n), DType.BF16);
        for (int step = 1; step <= 3; step++)
        {
            var g = TestTensors.Normal(rng, n, 0.1);
            var s = new AdamWStep(1e-2, 0.9, 0.95, 1e-8, 0.1, step, clipped ? 1.0 : 0.0);
            double sumsq = g.Sum(x => x * x);
            // ||g|| is about sqrt(1001) * 0.1 = 3.2 > 1, so clipping scales gradients by about 0.3.
            double clip = clipped ? Math.Min(1, 1.0 / (Math.Sqrt(sumsq) + 1e-6)) : 1;   // PyTorch clip_grad_norm_ coefficient
            AdamWReference(p, g, m, v, s, clip);
            var sq = TestTensors.FromDoubles(_cpu, new[] { sumsq }, dtype, 1);
            _cpu.AdamW(tp, TestTensors.FromDoubles(_cpu, g, dtype, n), tm, tv, s, sq, low);
        }
        // F32: each step moves p by ~lr = 1e-2 with float rounding ~1e-7 relative; 1e-6 relative to max|p| ~ 3.
        double tol = dtype == DType.F32 ? 1e-6 : 1e-13;
        NumericAssert.Close(p, TestTensors.ToDoubles(_cpu, tp), tol, "adamw parameters");
        NumericAssert.Close(m, TestTensors.ToDoubles(_cpu, tm), dtype == DType.F32 ? 1e-6 : 1e-13, "adamw m");
        NumericAssert.Close(v, TestTensors.ToDoubles(_cpu, tv), dtype == DType.F32 ? 1e-6 : 1e-13, "adamw v");
        // The BF16 copy is the rounded parameters: within BF16's half-ulp (2^-9 relative).
        var lowValues = TestTensors.ToDoubles(_cpu, low);
        var final = TestTensors.ToDoubles(_cpu, tp);
        for (int i = 0; i < n; i++) Assert.Equal(BFloat16.FromSingle((float)final[i]).ToSingle(), lowValues[i]);
    }

    [Fact]
    public void AdamWWithoutClippingIgnoresTheSumOfSquaresWhenMaxNormIsZero()
    {
        var p = _cpu.FromArray(new[] { 1.0, -2.0 }, 2); var g = _cpu.FromArray(new[] { 0.5, 0.25 }, 2);
        var m = _cpu.Zeros(new Shape(2), DType.F64); var v = _cpu.Zeros(new Shape(2), DType.F64);
        var s = new AdamWStep(0.1, 0.9, 0.999, 1e-8, 0.0, 1, 0.0);
        _cpu.AdamW(p, g, m, v, s, _cpu.FromArray(new[] { 1e6 }, 1));
        // Step 1 without clipping: m_hat = g, v_hat = g^2, so each parameter moves by lr * sign(g) (up to eps).
        NumericAssert.Close(new[] { 0.9, -2.1 }, _cpu.ToArray<double>(p), 1e-7, "adamw step 1");
    }
}
