using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The CPU backend's MatMul epilogues: bit-identical to the unfused ops they compose (the same kernels in the
/// same order), and, in F64, equal to a naive loop with the tanh-GELU formula.
/// </summary>
public class CpuMatMulEpilogueTests
{
    private readonly CpuBackend _cpu = new(2);

    private static double Gelu(double x) => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

    private static double GeluDerivative(double x)
    {
        double c = Math.Sqrt(2 / Math.PI), u = c * (x + 0.044715 * x * x * x), t = Math.Tanh(u);
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
    }

    private Tensor Fresh(Random rng, DType dtype, params int[] dims) => TestTensors.RandomNormal(_cpu, rng, dtype, dims);

    private Tensor Poisoned(DType dtype, params int[] dims)
    {
        var t = _cpu.Allocate(new Shape(dims), dtype);
        TestTensors.Poison(_cpu, t);
        return t;
    }

    private double[] D(Tensor t) => TestTensors.ToDoubles(_cpu, t);

    [Theory]
    [InlineData(DType.F32, true)]
    [InlineData(DType.F32, false)]
    [InlineData(DType.F64, true)]
    public void GeluEpilogueIsBitIdenticalToProductThenGelu(DType dtype, bool withBias)
    {
        var rng = TestRandom.Create();
        int m = 11, n = 24, k = 17;
        var a = Fresh(rng, dtype, m, k); var b = Fresh(rng, dtype, n, k);
        var bias = withBias ? Fresh(rng, dtype, n) : null;
        var c = Poisoned(dtype, m, n); var aux = Poisoned(dtype, m, n);
        _cpu.MatMul(a, b, c, transposeB: true, alpha: 0.75, bias: bias, epilogue: MatMulEpilogue.Gelu, auxiliary: aux);
        var h = Poisoned(dtype, m, n); var y = Poisoned(dtype, m, n);
        _cpu.MatMul(a, b, h, transposeB: true, alpha: 0.75, bias: bias);
        _cpu.GeluForward(h, y);
        Assert.Equal(D(h), D(aux));
        Assert.Equal(D(y), D(c));
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void AddendIsAddedToTheProductAndLeftUntouched(DType dtype)
    {
        var rng = TestRandom.Create();
        int m = 13, n = 20, k = 9;
        var a = Fresh(rng, dtype, m, k); var b = Fresh(rng, dtype, n, k); var bias = Fresh(rng, dtype, n);
        var residual = Fresh(rng, dtype, m, n);
        var before = D(residual);
        var c = Poisoned(dtype, m, n);
        _cpu.MatMul(a, b, c, transposeB: true, bias: bias, addend: residual);
        var expected = (double[])before.Clone();
        var product = Poisoned(dtype, m, n);
        _cpu.MatMul(a, b, product, transposeB: true, bias: bias);
        var pv = D(product);
        // The fused form accumulates the product onto a copy of the addend (beta = 1): the same roundings as product + addend
        // only in F64 (ulp-level in F32), so F32 is checked against the sum within a few ulps.
        for (int i = 0; i < expected.Length; i++) expected[i] += pv[i];
        NumericAssert.Close(expected, D(c), dtype == DType.F64 ? 1e-14 : 1e-6, "product + addend");
        Assert.Equal(before, D(residual));
    }

    [Fact]
    public void AddendRefusesBetaEpiloguesSharedStorageAndOtherShapes()
    {
        var rng = new Random(1);
        var a = Fresh(rng, DType.F32, 4, 3); var b = Fresh(rng, DType.F32, 5, 3);
        var c = Poisoned(DType.F32, 4, 5);
        var addend = Fresh(rng, DType.F32, 4, 5);
        Assert.Contains("beta", Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c, transposeB: true, beta: 1.0, addend: addend)).Message);
        var aux = Poisoned(DType.F32, 4, 5);
        Assert.Contains("epilogue", Assert.Throws<ArgumentException>(() =>
            _cpu.MatMul(a, b, c, transposeB: true, epilogue: MatMulEpilogue.Gelu, auxiliary: aux, addend: addend)).Message);
        Assert.Contains("storage", Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c, transposeB: true, addend: c)).Message);
        Assert.Contains("must match", Assert.Throws<ArgumentException>(() =>
            _cpu.MatMul(a, b, c, transposeB: true, addend: Fresh(rng, DType.F32, 4, 6))).Message);
    }

    [Fact]
    public void GeluEpilogueMatchesNaiveLoopInF64()
    {
        var rng = TestRandom.Create();
        int m = 6, n = 8, k = 5;
        var av = TestTensors.Normal(rng, m * k); var bv = TestTensors.Normal(rng, k * n); var biasv = TestTensors.Normal(rng, n);
        var a = TestTensors.FromDoubles(_cpu, av, DType.F64, m, k);
        var b = TestTensors.FromDoubles(_cpu, bv, DType.F64, k, n);
        var bias = TestTensors.FromDoubles(_cpu, biasv, DType.F64, n);
        var c = Poisoned(DType.F64, m, n); var aux = Poisoned(DType.F64, m, n);
        _cpu.MatMul(a, b, c, bias: bias, epilogue: MatMulEpilogue.Gelu, auxiliary: aux);
        var pre = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = biasv[j];
                for (int p = 0; p < k; p++) s += av[i * k + p] * bv[p * n + j];
                pre[i * n + j] = s;
            }
        // F64 throughout: only rounding of a few short sums and tanh, far below 1e-12.
        NumericAssert.Close(pre, D(aux), 1e-12, "pre-activation");
        NumericAssert.Close(pre.Select(Gelu).ToArray(), D(c), 1e-12, "gelu");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void GeluBackwardEpilogueIsBitIdenticalToProductThenGeluBackward(DType dtype)
    {
        var rng = TestRandom.Create();
        int m = 9, n = 16, k = 12;
        var dy = Fresh(rng, dtype, m, k); var w = Fresh(rng, dtype, k, n); var pre = Fresh(rng, dtype, m, n);
        var dx = Poisoned(dtype, m, n);
        _cpu.MatMul(dy, w, dx, epilogue: MatMulEpilogue.GeluBackward, auxiliary: pre);
        var da = Poisoned(dtype, m, n); var expected = Poisoned(dtype, m, n);
        _cpu.MatMul(dy, w, da);
        _cpu.GeluBackward(pre, da, expected);
        Assert.Equal(D(expected), D(dx));
    }

    [Fact]
    public void GeluBackwardEpilogueMatchesNaiveLoopInF64()
    {
        var rng = TestRandom.Create();
        int m = 5, n = 7, k = 4;
        var av = TestTensors.Normal(rng, m * k); var bv = TestTensors.Normal(rng, k * n); var prev = TestTensors.Normal(rng, m * n);
        var c = Poisoned(DType.F64, m, n);
        _cpu.MatMul(TestTensors.FromDoubles(_cpu, av, DType.F64, m, k), TestTensors.FromDoubles(_cpu, bv, DType.F64, k, n), c,
            epilogue: MatMulEpilogue.GeluBackward, auxiliary: TestTensors.FromDoubles(_cpu, prev, DType.F64, m, n));
        var expected = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += av[i * k + p] * bv[p * n + j];
                expected[i * n + j] = s * GeluDerivative(prev[i * n + j]);
            }
        // F64: rounding only, far below 1e-12.
        NumericAssert.Close(expected, D(c), 1e-12, "gelu backward");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void GeluBackwardBiasGradientEpilogueIsBitIdenticalToGeluBackwardThenSumRows(DType dtype)
    {
        var rng = TestRandom.Create();
        int m = 11, n = 16, k = 12;
        var dy = Fresh(rng, dtype, m, k); var w = Fresh(rng, dtype, k, n); var pre = Fresh(rng, dtype, m, n);
        var db0 = Fresh(rng, dtype, n);
        var db = _cpu.Allocate(db0.Shape, dtype); _cpu.Copy(db0, db);
        var dx = Poisoned(dtype, m, n);
        _cpu.MatMul(dy, w, dx, epilogue: MatMulEpilogue.GeluBackwardBiasGradient, auxiliary: pre, biasGradient: db);
        var expected = Poisoned(dtype, m, n);
        _cpu.MatMul(dy, w, expected, epilogue: MatMulEpilogue.GeluBackward, auxiliary: pre);
        _cpu.SumRows(expected, db0);
        Assert.Equal(D(expected), D(dx));
        Assert.Equal(D(db0), D(db));
    }

    [Fact]
    public void GeluBackwardBiasGradientEpilogueMatchesNaiveLoopInF64()
    {
        var rng = TestRandom.Create();
        int m = 6, n = 5, k = 4;
        var av = TestTensors.Normal(rng, m * k); var bv = TestTensors.Normal(rng, k * n); var prev = TestTensors.Normal(rng, m * n);
        var dbv = TestTensors.Normal(rng, n);
        var c = Poisoned(DType.F64, m, n);
        var db = TestTensors.FromDoubles(_cpu, dbv, DType.F64, n);
        _cpu.MatMul(TestTensors.FromDoubles(_cpu, av, DType.F64, m, k), TestTensors.FromDoubles(_cpu, bv, DType.F64, k, n), c,
            epilogue: MatMulEpilogue.GeluBackwardBiasGradient, auxiliary: TestTensors.FromDoubles(_cpu, prev, DType.F64, m, n), biasGradient: db);
        var expected = new double[m * n];
        var expectedDb = (double[])dbv.Clone();
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int p = 0; p < k; p++) s += av[i * k + p] * bv[p * n + j];
                expected[i * n + j] = s * GeluDerivative(prev[i * n + j]);
                expectedDb[j] += expected[i * n + j];
            }
        // F64: rounding only, far below 1e-12.
        NumericAssert.Close(expected, D(c), 1e-12, "gelu backward");
        NumericAssert.Close(expectedDb, D(db), 1e-12, "bias gradient accumulated from the gelu backward's column sums");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void BiasGradientEpilogueIsBitIdenticalToProductThenSumRows(DType dtype)
    {
        var rng = TestRandom.Create();
        int tokens = 13, outF = 10, inF = 7;
        var dy = Fresh(rng, dtype, tokens, outF); var x = Fresh(rng, dtype, tokens, inF);
        var dw0 = Fresh(rng, dtype, outF, inF); var db0 = Fresh(rng, dtype, outF);
        var dw = _cpu.Allocate(dw0.Shape, dtype); _cpu.Copy(dw0, dw);
        var db = _cpu.Allocate(db0.Shape, dtype); _cpu.Copy(db0, db);
        _cpu.MatMul(dy, x, dw, transposeA: true, beta: 1.0, epilogue: MatMulEpilogue.BiasGradient, biasGradient: db);
        _cpu.MatMul(dy, x, dw0, transposeA: true, beta: 1.0);
        _cpu.SumRows(dy, db0);
        Assert.Equal(D(dw0), D(dw));
        Assert.Equal(D(db0), D(db));
    }

    [Fact]
    public void EpilogueArgumentsAreChecked()
    {
        var rng = new Random(1);
        var a = Fresh(rng, DType.F32, 4, 3); var b = Fresh(rng, DType.F32, 3, 5); var c = Poisoned(DType.F32, 4, 5);
        Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c, epilogue: MatMulEpilogue.Gelu));
        Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c, beta: 1, epilogue: MatMulEpilogue.Gelu, auxiliary: Poisoned(DType.F32, 4, 5)));
        Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c, epilogue: MatMulEpilogue.BiasGradient, biasGradient: Poisoned(DType.F32, 4)));
        Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c, auxiliary: Poisoned(DType.F32, 4, 5)));
        // GeluBackwardBiasGradient: the bias gradient has N (5) elements, not M (4), and cannot be left out.
        var ex = Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c, epilogue: MatMulEpilogue.GeluBackwardBiasGradient,
            auxiliary: Poisoned(DType.F32, 4, 5), biasGradient: Poisoned(DType.F32, 4)));
        Assert.Contains("5 elements", ex.Message);
        Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c, epilogue: MatMulEpilogue.GeluBackwardBiasGradient, auxiliary: Poisoned(DType.F32, 4, 5)));
        Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c, epilogue: MatMulEpilogue.GeluBackward, auxiliary: Poisoned(DType.F32, 4, 5),
            biasGradient: Poisoned(DType.F32, 5)));
    }
}
