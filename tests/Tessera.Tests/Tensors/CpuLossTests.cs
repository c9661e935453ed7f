using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

public class CpuLossTests
{
    private readonly CpuBackend _cpu = new(2);

    private static (double[] Loss, double[] Grad) Reference(double[] x, int[] targets, int n, int v, int stride, double scale)
    {
        var loss = new double[n]; var grad = new double[n * v];
        for (int r = 0; r < n; r++)
        {
            if (targets[r] < 0) continue;
            double max = double.NegativeInfinity, sum = 0;
            for (int j = 0; j < v; j++) max = Math.Max(max, x[r * stride + j]);
            for (int j = 0; j < v; j++) sum += Math.Exp(x[r * stride + j] - max);
            loss[r] = Math.Log(sum) + max - x[r * stride + targets[r]];
            for (int j = 0; j < v; j++) grad[r * v + j] = scale * (Math.Exp(x[r * stride + j] - max) / sum - (j == targets[r] ? 1 : 0));
        }
        return (loss, grad);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void CrossEntropyOnSlicedVocabularyMatchesReferenceAndIgnoresNegativeTargets(DType dtype)
    {
        var rng = new Random(50);
        int n = 6, v = 50, padded = 64;
        var x = TestTensors.Normal(rng, n * padded, 3);
        int[] targets = { 3, -1, 49, 0, 17, -100 };
        var logits = TestTensors.FromDoubles(_cpu, x, dtype, n, padded).Slice(1, 0, v);
        var losses = _cpu.Allocate(new Shape(n), dtype); var dLogits = _cpu.Allocate(new Shape(n, v), dtype);
        TestTensors.Poison(_cpu, losses); TestTensors.Poison(_cpu, dLogits);
        _cpu.CrossEntropy(logits, _cpu.FromArray(targets, n), losses, dLogits, 0.25);
        var (el, eg) = Reference(x, targets, n, v, padded, 0.25);
        // F32: log-sum-exp over 50 values of magnitude ~10: ~1e-6 relative to the largest loss.
        double tol = dtype == DType.F32 ? 1e-5 : 1e-13;
        NumericAssert.Close(el, TestTensors.ToDoubles(_cpu, losses), tol, "losses");
        NumericAssert.Close(eg, TestTensors.ToDoubles(_cpu, dLogits), tol, "dlogits");
    }

    [Fact]
    public void CrossEntropyGradientMayOverwriteTheLogitsInPlace()
    {
        var rng = new Random(51);
        int n = 4, v = 33;
        var x = TestTensors.Normal(rng, n * v, 2);
        int[] targets = { 1, 32, -1, 7 };
        var logits = TestTensors.FromDoubles(_cpu, x, DType.F64, n, v);
        var losses = _cpu.Allocate(new Shape(n), DType.F64);
        _cpu.CrossEntropy(logits, _cpu.FromArray(targets, n), losses, logits, 1.0);
        var (el, eg) = Reference(x, targets, n, v, v, 1.0);
        NumericAssert.Close(el, _cpu.ToArray<double>(losses), 1e-13, "aliased losses");
        NumericAssert.Close(eg, _cpu.ToArray<double>(logits), 1e-13, "aliased dlogits");
    }

    [Fact]
    public void CrossEntropyGradientPassesTheGradientCheck()
    {
        var rng = new Random(52);
        int n = 3, v = 11;
        var x = TestTensors.Normal(rng, n * v, 2);
        var targets = _cpu.FromArray(new[] { 4, 0, 10 }, n);
        const double scale = 1.0 / 3;
        var losses = _cpu.Allocate(new Shape(n), DType.F64);
        double Loss()
        {
            _cpu.CrossEntropy(TestTensors.FromDoubles(_cpu, x, DType.F64, n, v), targets, losses, null, 1);
            return scale * _cpu.ToArray<double>(losses).Sum();
        }
        var d = _cpu.Allocate(new Shape(n, v), DType.F64);
        _cpu.CrossEntropy(TestTensors.FromDoubles(_cpu, x, DType.F64, n, v), targets, losses, d, scale);
        GradientCheck.Assert(Loss, x, _cpu.ToArray<double>(d), "cross-entropy dlogits");
    }

    [Fact]
    public void CrossEntropyRejectsATargetOutsideTheVocabularyNamingTheRow()
    {
        var logits = _cpu.Zeros(new Shape(3, 5), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.CrossEntropy(logits, _cpu.FromArray(new[] { 0, 5, 1 }, 3), _cpu.Allocate(new Shape(3), DType.F32), null, 1));
        Assert.Contains("targets[1]", e.Message);
    }

    [Fact]
    public void CrossEntropyOnALargeThreadedBatchInF32MatchesF64()
    {
        var rng = new Random(53);
        int n = 64, v = 1000;
        var x = TestTensors.Normal(rng, n * v, 2);
        var t = Enumerable.Range(0, n).Select(_ => rng.Next(v)).ToArray();
        double[][] Run(DType dt)
        {
            var losses = _cpu.Allocate(new Shape(n), dt); var d = _cpu.Allocate(new Shape(n, v), dt);
            _cpu.CrossEntropy(TestTensors.FromDoubles(_cpu, x, dt, n, v), _cpu.FromArray(t, n), losses, d, 1.0 / n);
            return new[] { TestTensors.ToDoubles(_cpu, losses), TestTensors.ToDoubles(_cpu, d) };
        }
        var f64 = Run(DType.F64); var f32 = Run(DType.F32);
        NumericAssert.Close(f64[0], f32[0], 1e-5, "losses F32 vs F64");
        NumericAssert.Close(f64[1], f32[1], 1e-5, "dlogits F32 vs F64");
    }

    [Theory]
    [InlineData(DType.F32, DType.F32)]
    [InlineData(DType.F64, DType.F64)]
    [InlineData(DType.F32, DType.F64)]
    public void SumScalesAndOptionallyAccumulates(DType xType, DType resultType)
    {
        var rng = new Random(54);
        var x = TestTensors.Normal(rng, 100_001);
        var result = _cpu.Allocate(new Shape(), resultType);
        _cpu.Sum(TestTensors.FromDoubles(_cpu, x, xType, x.Length), result, 0.5);
        double expected = 0.5 * x.Select(v => xType == DType.F32 ? (float)v : v).Sum();
        // Accumulated in double: only the final cast to F32 rounds (6e-8 relative).
        double tol = resultType == DType.F32 ? 1e-7 : 1e-12;
        Assert.InRange(_cpu.ReadScalar(result), expected - tol * Math.Abs(expected) - 1e-9, expected + tol * Math.Abs(expected) + 1e-9);
        _cpu.Sum(TestTensors.FromDoubles(_cpu, x, xType, x.Length), result, 0.5, accumulate: true);
        Assert.InRange(_cpu.ReadScalar(result), 2 * expected - 2 * tol * Math.Abs(expected) - 1e-9, 2 * expected + 2 * tol * Math.Abs(expected) + 1e-9);
    }
}
