using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

public class CpuNormalizationTests
{
    private readonly CpuBackend _cpu = new(2);
    private const double Eps = 1e-5;

    /// <summary>F32: row statistics over C=67 elements in double, then a few float ops: ~1e-6; F64: ~1e-14.</summary>
    private static double Tol(DType t) => t == DType.F32 ? 1e-5 : 1e-12;

    private static (double[] Y, double[] Mean, double[] Rstd) LayerNormRef(double[] x, double[] w, double[]? b, int n, int c)
    {
        var y = new double[n * c]; var mean = new double[n]; var rstd = new double[n];
        for (int r = 0; r < n; r++)
        {
            double m = 0; for (int i = 0; i < c; i++) m += x[r * c + i]; m /= c;
            double v = 0; for (int i = 0; i < c; i++) v += (x[r * c + i] - m) * (x[r * c + i] - m); v /= c;
            double s = 1 / Math.Sqrt(v + Eps);
            for (int i = 0; i < c; i++) y[r * c + i] = (x[r * c + i] - m) * s * w[i] + (b?[i] ?? 0);
            mean[r] = m; rstd[r] = s;
        }
        return (y, mean, rstd);
    }

    [Theory]
    [InlineData(DType.F32, true)]
    [InlineData(DType.F64, true)]
    [InlineData(DType.F64, false)]
    public void LayerNormForwardMatchesNaiveReferenceAndSavesStatistics(DType dtype, bool withBias)
    {
        var rng = new Random(30);
        int n = 9, c = 67;
        var x = TestTensors.Normal(rng, n * c, 2, mean: 3); var w = TestTensors.Normal(rng, c); var b = TestTensors.Normal(rng, c);
        var y = _cpu.Allocate(new Shape(n, c), dtype); var mean = _cpu.Allocate(new Shape(n), dtype); var rstd = _cpu.Allocate(new Shape(n), dtype);
        TestTensors.Poison(_cpu, y); TestTensors.Poison(_cpu, mean); TestTensors.Poison(_cpu, rstd);
        _cpu.LayerNormForward(TestTensors.FromDoubles(_cpu, x, dtype, n, c), TestTensors.FromDoubles(_cpu, w, dtype, c),
            withBias ? TestTensors.FromDoubles(_cpu, b, dtype, c) : null, y, mean, rstd, Eps);
        var (ey, em, es) = LayerNormRef(x, w, withBias ? b : null, n, c);
        NumericAssert.Close(ey, TestTensors.ToDoubles(_cpu, y), Tol(dtype), "layernorm y");
        NumericAssert.Close(em, TestTensors.ToDoubles(_cpu, mean), Tol(dtype), "layernorm mean");
        NumericAssert.Close(es, TestTensors.ToDoubles(_cpu, rstd), Tol(dtype), "layernorm rstd");
    }

    [Fact]
    public void LayerNormBackwardAccumulatesGradientsThatPassTheGradientCheck()
    {
        var rng = new Random(31);
        int n = 4, c = 10;
        var x = TestTensors.Normal(rng, n * c, 1.5, mean: 0.5); var w = TestTensors.Normal(rng, c); var b = TestTensors.Normal(rng, c);
        var dy = TestTensors.Normal(rng, n * c);
        // Gradients start non-zero: the op must add to them.
        var dx0 = TestTensors.Normal(rng, n * c); var dw0 = TestTensors.Normal(rng, c); var db0 = TestTensors.Normal(rng, c);
        var y = _cpu.Allocate(new Shape(n, c), DType.F64); var mean = _cpu.Allocate(new Shape(n), DType.F64); var rstd = _cpu.Allocate(new Shape(n), DType.F64);
        double Loss()
        {
            _cpu.LayerNormForward(TestTensors.FromDoubles(_cpu, x, DType.F64, n, c), TestTensors.FromDoubles(_cpu, w, DType.F64, c),
                TestTensors.FromDoubles(_cpu, b, DType.F64, c), y, mean, rstd, Eps);
            return TestTensors.Dot(dy, _cpu.ToArray<double>(y));
        }
        Loss();
        var dx = TestTensors.FromDoubles(_cpu, dx0, DType.F64, n, c); var dw = TestTensors.FromDoubles(_cpu, dw0, DType.F64, c); var db = TestTensors.FromDoubles(_cpu, db0, DType.F64, c);
        _cpu.LayerNormBackward(TestTensors.FromDoubles(_cpu, dy, DType.F64, n, c), TestTensors.FromDoubles(_cpu, x, DType.F64, n, c),
            TestTensors.FromDoubles(_cpu, w, DType.F64, c), mean, rstd, dx, dw, db);
        double[] Minus(double[] a, double[] b0) => a.Zip(b0, (p, q) => p - q).ToArray();
        GradientCheck.Assert(Loss, x, Minus(_cpu.ToArray<double>(dx), dx0), "layernorm dx");
        GradientCheck.Assert(Loss, w, Minus(_cpu.ToArray<double>(dw), dw0), "layernorm dweight");
        GradientCheck.Assert(Loss, b, Minus(_cpu.ToArray<double>(db), db0), "layernorm dbias");
    }

    [Fact]
    public void LayerNormBackwardInF32MatchesF64OnALargeThreadedBatch()
    {
        var rng = new Random(32);
        int n = 256, c = 192; // 256 rows x 8C work: several threads, several per-chunk partial sums
        var x = TestTensors.Normal(rng, n * c); var w = TestTensors.Normal(rng, c); var b = TestTensors.Normal(rng, c); var dy = TestTensors.Normal(rng, n * c);
        double[][] Run(DType t)
        {
            var y = _cpu.Allocate(new Shape(n, c), t); var mean = _cpu.Allocate(new Shape(n), t); var rstd = _cpu.Allocate(new Shape(n), t);
            var tx = TestTensors.FromDoubles(_cpu, x, t, n, c); var tw = TestTensors.FromDoubles(_cpu, w, t, c);
            _cpu.LayerNormForward(tx, tw, TestTensors.FromDoubles(_cpu, b, t, c), y, mean, rstd, Eps);
            var dx = _cpu.Zeros(new Shape(n, c), t); var dw = _cpu.Zeros(new Shape(c), t); var db = _cpu.Zeros(new Shape(c), t);
            _cpu.LayerNormBackward(TestTensors.FromDoubles(_cpu, dy, t, n, c), tx, tw, mean, rstd, dx, dw, db);
            return new[] { TestTensors.ToDoubles(_cpu, dx), TestTensors.ToDoubles(_cpu, dw), TestTensors.ToDoubles(_cpu, db) };
        }
        var f64 = Run(DType.F64); var f32 = Run(DType.F32);
        // dWeight sums 256 rows in F32: ~sqrt(256) * 6e-8 relative; 1e-5 leaves margin.
        for (int i = 0; i < 3; i++) NumericAssert.Close(f64[i], f32[i], 1e-5, $"layernorm grad {i} F32 vs F64");
    }

    /// <summary>
    /// dxColumnSums += the column sums of dx as the op leaves it (its initial values plus this op's gradient), which must
    /// equal SumRows of that dx; dx, dWeight and dBias must be exactly those of the call without the sums. 256 rows of 192
    /// (several threads, several chunks of partial sums), random inputs of seed 34, every gradient starting non-zero.
    /// Tolerance: F64 1e-12 (the same additions, only the chunks' order differs from SumRows'); F32 1e-5 (256 terms of
    /// magnitude ~1 summed in another order: ~256 x 6e-8 of the terms' scale at worst, against column sums of ~16).
    /// </summary>
    [Theory]
    [InlineData(DType.F64, true)]
    [InlineData(DType.F64, false)]
    [InlineData(DType.F32, true)]
    [InlineData(DType.F32, false)]
    public void LayerNormBackwardSumsTheColumnsOfTheDxItLeaves(DType dtype, bool withBias)
    {
        const int seed = 34;
        var rng = new Random(seed);
        int n = 256, c = 192;
        var x = TestTensors.Normal(rng, n * c, 1.5, mean: 0.5); var w = TestTensors.Normal(rng, c); var b = TestTensors.Normal(rng, c);
        var dy = TestTensors.Normal(rng, n * c);
        var dx0 = TestTensors.Normal(rng, n * c); var dw0 = TestTensors.Normal(rng, c); var db0 = TestTensors.Normal(rng, c);
        var s0 = TestTensors.Normal(rng, c);
        var y = _cpu.Allocate(new Shape(n, c), dtype); var mean = _cpu.Allocate(new Shape(n), dtype); var rstd = _cpu.Allocate(new Shape(n), dtype);
        var tx = TestTensors.FromDoubles(_cpu, x, dtype, n, c); var tw = TestTensors.FromDoubles(_cpu, w, dtype, c);
        _cpu.LayerNormForward(tx, tw, TestTensors.FromDoubles(_cpu, b, dtype, c), y, mean, rstd, Eps);
        var tdy = TestTensors.FromDoubles(_cpu, dy, dtype, n, c);

        (double[] Dx, double[] Dw, double[]? Db, double[]? Sums) Run(bool sums)
        {
            var dx = TestTensors.FromDoubles(_cpu, dx0, dtype, n, c); var dw = TestTensors.FromDoubles(_cpu, dw0, dtype, c);
            var db = withBias ? TestTensors.FromDoubles(_cpu, db0, dtype, c) : null;
            var ds = sums ? TestTensors.FromDoubles(_cpu, s0, dtype, c) : null;
            _cpu.LayerNormBackward(tdy, tx, tw, mean, rstd, dx, dw, db, ds);
            return (TestTensors.ToDoubles(_cpu, dx), TestTensors.ToDoubles(_cpu, dw), db is null ? null : TestTensors.ToDoubles(_cpu, db),
                ds is null ? null : TestTensors.ToDoubles(_cpu, ds));
        }
        var plain = Run(sums: false);
        var summed = Run(sums: true);
        Assert.Equal(plain.Dx, summed.Dx);
        Assert.Equal(plain.Dw, summed.Dw);
        if (withBias) Assert.Equal(plain.Db!, summed.Db!);
        var expected = TestTensors.FromDoubles(_cpu, s0, dtype, c);
        _cpu.SumRows(TestTensors.FromDoubles(_cpu, summed.Dx, dtype, n, c), expected);
        NumericAssert.Close(TestTensors.ToDoubles(_cpu, expected), summed.Sums!, dtype == DType.F32 ? 1e-5 : 1e-12,
            $"{dtype} column sums of dx (seed {seed}, bias {withBias})");
        // The sums added to their initial values rather than replacing them: without s0 they would be off by s0 (~1).
        Assert.True(NumericAssert.MaxRelativeError(s0, summed.Sums!) > 0.1, "the sums must not be the initial values");
    }

    [Fact]
    public void LayerNormBackwardRejectsColumnSumsOfTheWrongShape()
    {
        int n = 3, c = 8;
        var x = _cpu.Zeros(new Shape(n, c), DType.F64); var w = _cpu.Zeros(new Shape(c), DType.F64);
        var stats = _cpu.Zeros(new Shape(n), DType.F64);
        var ex = Assert.Throws<ArgumentException>(() => _cpu.LayerNormBackward(x, x, w, stats, stats, _cpu.Zeros(new Shape(n, c), DType.F64),
            _cpu.Zeros(new Shape(c), DType.F64), null, _cpu.Zeros(new Shape(c + 1), DType.F64)));
        Assert.Contains("dxColumnSums", ex.Message);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void RmsNormForwardMatchesNaiveReference(DType dtype)
    {
        var rng = new Random(33);
        int n = 7, c = 45;
        var x = TestTensors.Normal(rng, n * c); var w = TestTensors.Normal(rng, c);
        var y = _cpu.Allocate(new Shape(n, c), dtype); var rstd = _cpu.Allocate(new Shape(n), dtype);
        TestTensors.Poison(_cpu, y); TestTensors.Poison(_cpu, rstd);
        _cpu.RmsNormForward(TestTensors.FromDoubles(_cpu, x, dtype, n, c), TestTensors.FromDoubles(_cpu, w, dtype, c), y, rstd, Eps);
        var ey = new double[n * c]; var es = new double[n];
        for (int r = 0; r < n; r++)
        {
            double sq = 0; for (int i = 0; i < c; i++) sq += x[r * c + i] * x[r * c + i];
            es[r] = 1 / Math.Sqrt(sq / c + Eps);
            for (int i = 0; i < c; i++) ey[r * c + i] = x[r * c + i] * es[r] * w[i];
        }
        NumericAssert.Close(ey, TestTensors.ToDoubles(_cpu, y), Tol(dtype), "rmsnorm y");
        NumericAssert.Close(es, TestTensors.ToDoubles(_cpu, rstd), Tol(dtype), "rmsnorm rstd");
    }

    [Fact]
    public void RmsNormBackwardAccumulatesGradientsThatPassTheGradientCheck()
    {
        var rng = new Random(34);
        int n = 3, c = 12;
        var x = TestTensors.Normal(rng, n * c); var w = TestTensors.Normal(rng, c); var dy = TestTensors.Normal(rng, n * c);
        var dx0 = TestTensors.Normal(rng, n * c); var dw0 = TestTensors.Normal(rng, c);
        var y = _cpu.Allocate(new Shape(n, c), DType.F64); var rstd = _cpu.Allocate(new Shape(n), DType.F64);
        double Loss()
        {
            _cpu.RmsNormForward(TestTensors.FromDoubles(_cpu, x, DType.F64, n, c), TestTensors.FromDoubles(_cpu, w, DType.F64, c), y, rstd, Eps);
            return TestTensors.Dot(dy, _cpu.ToArray<double>(y));
        }
        Loss();
        var dx = TestTensors.FromDoubles(_cpu, dx0, DType.F64, n, c); var dw = TestTensors.FromDoubles(_cpu, dw0, DType.F64, c);
        _cpu.RmsNormBackward(TestTensors.FromDoubles(_cpu, dy, DType.F64, n, c), TestTensors.FromDoubles(_cpu, x, DType.F64, n, c),
            TestTensors.FromDoubles(_cpu, w, DType.F64, c), rstd, dx, dw);
        GradientCheck.Assert(Loss, x, _cpu.ToArray<double>(dx).Zip(dx0, (p, q) => p - q).ToArray(), "rmsnorm dx");
        GradientCheck.Assert(Loss, w, _cpu.ToArray<double>(dw).Zip(dw0, (p, q) => p - q).ToArray(), "rmsnorm dweight");
    }

    [Fact]
    public void NormWithWrongWeightShapeNamesTheArgument()
    {
        var x = _cpu.Allocate(new Shape(2, 8), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.RmsNormForward(x, _cpu.Allocate(new Shape(7), DType.F32), x, _cpu.Allocate(new Shape(2), DType.F32), 1e-5));
        Assert.Contains("weight", e.Message); Assert.Contains("(7)", e.Message); Assert.Contains("(8)", e.Message);
    }
}
