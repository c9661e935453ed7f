using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

public class CpuElementwiseTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>F32: each element is a few float operations (a tanh or exp), so errors stay within ~1e-6 relative; F64 within ~1e-14.</summary>
    private static double Tol(DType t) => t == DType.F32 ? 2e-6 : 1e-13;

    private static double Gelu(double x) => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
    private static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));

    // 1000 elements: the vector loops and their scalar tails both run.
    private const int N = 1003;

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void AddAccumulateAndScaleMatchScalarArithmetic(DType dtype)
    {
        var rng = new Random(20);
        var a = TestTensors.Normal(rng, N); var b = TestTensors.Normal(rng, N);
        var ta = TestTensors.FromDoubles(_cpu, a, dtype, N); var tb = TestTensors.FromDoubles(_cpu, b, dtype, N);
        var o = _cpu.Allocate(new Shape(N), dtype);
        TestTensors.Poison(_cpu, o);
        _cpu.Add(ta, tb, o);
        NumericAssert.Close(a.Zip(b, (x, y) => x + y).ToArray(), TestTensors.ToDoubles(_cpu, o), Tol(dtype), "add");
        _cpu.Accumulate(ta, tb, -0.5);
        NumericAssert.Close(a.Zip(b, (x, y) => x - 0.5 * y).ToArray(), TestTensors.ToDoubles(_cpu, ta), Tol(dtype), "accumulate");
        _cpu.Scale(tb, 3);
        NumericAssert.Close(b.Select(x => 3 * x).ToArray(), TestTensors.ToDoubles(_cpu, tb), Tol(dtype), "scale");
    }

    [Fact]
    public void AddAcceptsOutputAliasingAnInput()
    {
        var rng = new Random(21);
        var a = TestTensors.Normal(rng, N); var b = TestTensors.Normal(rng, N);
        var ta = TestTensors.FromDoubles(_cpu, a, DType.F64, N);
        _cpu.Add(ta, TestTensors.FromDoubles(_cpu, b, DType.F64, N), ta);
        NumericAssert.Close(a.Zip(b, (x, y) => x + y).ToArray(), TestTensors.ToDoubles(_cpu, ta), 1e-15, "aliased add");
    }

    [Fact]
    public void ElementwiseShapeMismatchNamesOpArgumentAndShapes()
    {
        var a = _cpu.Allocate(new Shape(2, 3), DType.F32);
        var b = _cpu.Allocate(new Shape(3, 2), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.Add(a, b, a));
        Assert.Contains("Add", e.Message); Assert.Contains("(2, 3)", e.Message); Assert.Contains("(3, 2)", e.Message);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void GeluForwardAndBackwardMatchTheTanhFormula(DType dtype)
    {
        var rng = new Random(22);
        var x = TestTensors.Normal(rng, N, 3); var dy = TestTensors.Normal(rng, N);
        var tx = TestTensors.FromDoubles(_cpu, x, dtype, N);
        var y = _cpu.Allocate(tx.Shape, dtype); TestTensors.Poison(_cpu, y);
        _cpu.GeluForward(tx, y);
        NumericAssert.Close(x.Select(Gelu).ToArray(), TestTensors.ToDoubles(_cpu, y), Tol(dtype), "gelu");
        var dx = _cpu.Allocate(tx.Shape, dtype); TestTensors.Poison(_cpu, dx);
        _cpu.GeluBackward(tx, TestTensors.FromDoubles(_cpu, dy, dtype, N), dx);
        // Reference derivative by a central difference of the F64 formula (h = 1e-6: error ~1e-12).
        var expected = x.Select((v, i) => dy[i] * (Gelu(v + 1e-6) - Gelu(v - 1e-6)) / 2e-6).ToArray();
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, dx), dtype == DType.F32 ? 2e-6 : 1e-8, "gelu backward");
    }

    [Fact]
    public void GeluBackwardPassesTheGradientCheck()
    {
        var rng = new Random(23);
        var x = TestTensors.Normal(rng, 64, 2); var w = TestTensors.Normal(rng, 64);
        var dx = _cpu.Allocate(new Shape(64), DType.F64);
        _cpu.GeluBackward(TestTensors.FromDoubles(_cpu, x, DType.F64, 64), TestTensors.FromDoubles(_cpu, w, DType.F64, 64), dx);
        var y = _cpu.Allocate(new Shape(64), DType.F64);
        double Loss() { _cpu.GeluForward(TestTensors.FromDoubles(_cpu, x, DType.F64, 64), y); return TestTensors.Dot(w, _cpu.ToArray<double>(y)); }
        GradientCheck.Assert(Loss, x, _cpu.ToArray<double>(dx), "gelu dx");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void SwiGluForwardAndBackwardMatchScalarFormulas(DType dtype)
    {
        var rng = new Random(24);
        var g = TestTensors.Normal(rng, N, 3); var u = TestTensors.Normal(rng, N); var dy = TestTensors.Normal(rng, N);
        var tg = TestTensors.FromDoubles(_cpu, g, dtype, N); var tu = TestTensors.FromDoubles(_cpu, u, dtype, N);
        var y = _cpu.Allocate(tg.Shape, dtype); TestTensors.Poison(_cpu, y);
        _cpu.SwiGluForward(tg, tu, y);
        NumericAssert.Close(g.Select((v, i) => v * Sigmoid(v) * u[i]).ToArray(), TestTensors.ToDoubles(_cpu, y), Tol(dtype), "swiglu");
        var dg = _cpu.Allocate(tg.Shape, dtype); var du = _cpu.Allocate(tg.Shape, dtype);
        TestTensors.Poison(_cpu, dg); TestTensors.Poison(_cpu, du);
        _cpu.SwiGluBackward(tg, tu, TestTensors.FromDoubles(_cpu, dy, dtype, N), dg, du);
        var eg = g.Select((v, i) => dy[i] * u[i] * (Sigmoid(v) + v * Sigmoid(v) * (1 - Sigmoid(v)))).ToArray();
        var eu = g.Select((v, i) => dy[i] * v * Sigmoid(v)).ToArray();
        NumericAssert.Close(eg, TestTensors.ToDoubles(_cpu, dg), Tol(dtype), "swiglu dgate");
        NumericAssert.Close(eu, TestTensors.ToDoubles(_cpu, du), Tol(dtype), "swiglu dup");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void SwiGluOnTheHalvesOfOneProductEqualsSwiGluOnContiguousCopies(DType dtype)
    {
        // The halves of a fused (rows, 2F) gate/up product, read in place, and their gradients written into the halves of one
        // (rows, 2F) buffer: the same element-wise formulas, so bit for bit the contiguous op's results.
        const int rows = 7, f = 13;
        var rng = new Random(26);
        var gu = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, rows * 2 * f, 2), dtype, rows, 2 * f);
        var dy = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, rows * f), dtype, rows, f);
        Tensor Copy(Tensor view) { var t = _cpu.Allocate(view.Shape, dtype); _cpu.Copy(view, t); return t; }
        var g = Copy(gu.Slice(1, 0, f));
        var u = Copy(gu.Slice(1, f, f));
        var expected = _cpu.Allocate(g.Shape, dtype);
        _cpu.SwiGluForward(g, u, expected);
        var y = _cpu.Allocate(g.Shape, dtype);
        TestTensors.Poison(_cpu, y);
        _cpu.SwiGluForward(gu.Slice(1, 0, f), gu.Slice(1, f, f), y);
        Assert.Equal(TestTensors.ToDoubles(_cpu, expected), TestTensors.ToDoubles(_cpu, y));

        var dg = _cpu.Allocate(g.Shape, dtype);
        var du = _cpu.Allocate(g.Shape, dtype);
        _cpu.SwiGluBackward(g, u, dy, dg, du);
        var dgu = _cpu.Allocate(gu.Shape, dtype);
        TestTensors.Poison(_cpu, dgu);
        _cpu.SwiGluBackward(gu.Slice(1, 0, f), gu.Slice(1, f, f), dy, dgu.Slice(1, 0, f), dgu.Slice(1, f, f));
        Assert.Equal(TestTensors.ToDoubles(_cpu, dg), TestTensors.ToDoubles(_cpu, Copy(dgu.Slice(1, 0, f))));
        Assert.Equal(TestTensors.ToDoubles(_cpu, du), TestTensors.ToDoubles(_cpu, Copy(dgu.Slice(1, f, f))));
        Assert.Contains(TestTensors.ToDoubles(_cpu, du), v => v != 0);
    }

    [Fact]
    public void SwiGluBackwardPassesTheGradientCheck()
    {
        var rng = new Random(25);
        int n = 48;
        var g = TestTensors.Normal(rng, n, 2); var u = TestTensors.Normal(rng, n); var w = TestTensors.Normal(rng, n);
        var dg = _cpu.Allocate(new Shape(n), DType.F64); var du = _cpu.Allocate(new Shape(n), DType.F64);
        _cpu.SwiGluBackward(TestTensors.FromDoubles(_cpu, g, DType.F64, n), TestTensors.FromDoubles(_cpu, u, DType.F64, n),
            TestTensors.FromDoubles(_cpu, w, DType.F64, n), dg, du);
        var y = _cpu.Allocate(new Shape(n), DType.F64);
        double Loss()
        {
            _cpu.SwiGluForward(TestTensors.FromDoubles(_cpu, g, DType.F64, n), TestTensors.FromDoubles(_cpu, u, DType.F64, n), y);
            return TestTensors.Dot(w, _cpu.ToArray<double>(y));
        }
        GradientCheck.Assert(Loss, g, _cpu.ToArray<double>(dg), "swiglu dgate");
        GradientCheck.Assert(Loss, u, _cpu.ToArray<double>(du), "swiglu dup");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void SoftmaxRowsMatchTheNaiveFormulaOnStridedRows(DType dtype)
    {
        var rng = new Random(26);
        int n = 5, v = 37, stride = 40;
        var x = TestTensors.Normal(rng, n * stride, 4, mean: 30); // a large offset: only a max-shifted softmax survives in F32
        var tx = TestTensors.FromDoubles(_cpu, x, dtype, n, stride).Slice(1, 0, v);
        var o = _cpu.Allocate(new Shape(n, v), dtype); TestTensors.Poison(_cpu, o);
        _cpu.Softmax(tx, o);
        var expected = new double[n * v];
        for (int r = 0; r < n; r++)
        {
            double max = double.NegativeInfinity, sum = 0;
            for (int j = 0; j < v; j++) max = Math.Max(max, x[r * stride + j]);
            for (int j = 0; j < v; j++) sum += Math.Exp(x[r * stride + j] - max);
            for (int j = 0; j < v; j++) expected[r * v + j] = Math.Exp(x[r * stride + j] - max) / sum;
        }
        // Relative to the largest probability; F32 exp of inputs up to ~16 loses ~1e-6.
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, o), dtype == DType.F32 ? 1e-5 : 1e-13, "softmax");
    }
}
