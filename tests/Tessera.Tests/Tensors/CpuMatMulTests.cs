using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

public class CpuMatMulTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>F32 products of length-K dot products: rounding grows like sqrt(K) * 6e-8; 1e-5 leaves margin. F64: 1e-12.</summary>
    private static double Tol(DType t) => t == DType.F32 ? 1e-5 : 1e-12;

    [Theory]
    [InlineData(DType.F32, false, false)]
    [InlineData(DType.F32, true, false)]
    [InlineData(DType.F32, false, true)]
    [InlineData(DType.F64, true, true)]
    [InlineData(DType.F64, false, false)]
    public void Rank2ProductWithAlphaBetaAndBiasMatchesNaiveLoop(DType dtype, bool ta, bool tb)
    {
        var rng = new Random(10);
        int m = 7, n = 9, k = 13;
        var a = TestTensors.Normal(rng, m * k); var b = TestTensors.Normal(rng, k * n);
        var c0 = TestTensors.Normal(rng, m * n); var bias = TestTensors.Normal(rng, n);
        var ta_ = TestTensors.FromDoubles(_cpu, a, dtype, ta ? new[] { k, m } : new[] { m, k });
        var tb_ = TestTensors.FromDoubles(_cpu, b, dtype, tb ? new[] { n, k } : new[] { k, n });
        var tc = TestTensors.FromDoubles(_cpu, c0, dtype, m, n);
        var tbias = TestTensors.FromDoubles(_cpu, bias, dtype, n);
        _cpu.MatMul(ta_, tb_, tc, ta, tb, alpha: 0.5, beta: 0.75, bias: tbias);
        NumericAssert.Close(ReferenceMatMul.Compute(a, b, c0, 1, m, n, k, ta, tb, 0.5, 0.75, bias), TestTensors.ToDoubles(_cpu, tc), Tol(dtype), "matmul");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void BatchedProductMatchesNaiveLoopPerBatch(DType dtype)
    {
        var rng = new Random(11);
        int z = 3, m = 5, n = 6, k = 4;
        var a = TestTensors.Normal(rng, z * m * k); var b = TestTensors.Normal(rng, z * n * k);
        var ta = TestTensors.FromDoubles(_cpu, a, dtype, z, m, k);
        var tb = TestTensors.FromDoubles(_cpu, b, dtype, z, n, k);
        var tc = _cpu.Allocate(new Shape(z, m, n), dtype);
        TestTensors.Poison(_cpu, tc);
        _cpu.MatMul(ta, tb, tc, transposeB: true);
        NumericAssert.Close(ReferenceMatMul.Compute(a, b, new double[z * m * n], z, m, n, k, false, true, 1, 0, null), TestTensors.ToDoubles(_cpu, tc), Tol(dtype), "batched matmul");
    }

    [Fact]
    public void OperandsThatAreViewsOfLargerBuffersOrTransposesAreHandled()
    {
        var rng = new Random(12);
        int m = 4, n = 5, k = 3;
        // a is the left 3 columns of a (4,8) buffer (row stride 8); b is a transposed view (k,n) of an (n,k) tensor.
        var bufA = TestTensors.Normal(rng, m * 8);
        var a = TestTensors.FromDoubles(_cpu, bufA, DType.F64, m, 8).Slice(1, 2, k);
        var bData = TestTensors.Normal(rng, n * k);
        var b = TestTensors.FromDoubles(_cpu, bData, DType.F64, n, k).Transpose(0, 1);
        var c = _cpu.Allocate(new Shape(m, n), DType.F64);
        TestTensors.Poison(_cpu, c);
        _cpu.MatMul(a, b, c);
        var aDense = new double[m * k];
        for (int i = 0; i < m; i++) for (int p = 0; p < k; p++) aDense[i * k + p] = bufA[i * 8 + 2 + p];
        NumericAssert.Close(ReferenceMatMul.Compute(aDense, bData, new double[m * n], 1, m, n, k, false, true, 1, 0, null), TestTensors.ToDoubles(_cpu, c), 1e-12, "view matmul");
    }

    [Fact]
    public void MismatchedInnerDimensionsNameBothShapes()
    {
        var a = _cpu.Allocate(new Shape(2, 3), DType.F32);
        var b = _cpu.Allocate(new Shape(4, 5), DType.F32);
        var c = _cpu.Allocate(new Shape(2, 5), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.MatMul(a, b, c));
        Assert.Contains("(2, 3)", e.Message);
        Assert.Contains("(4, 5)", e.Message);
        Assert.Contains("MatMul", e.Message);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void SumRowsAccumulatesColumnSums(DType dtype)
    {
        var rng = new Random(13);
        int n = 11, c = 7;
        var x = TestTensors.Normal(rng, n * c); var s0 = TestTensors.Normal(rng, c);
        var sums = TestTensors.FromDoubles(_cpu, s0, dtype, c);
        _cpu.SumRows(TestTensors.FromDoubles(_cpu, x, dtype, n, c), sums);
        var expected = (double[])s0.Clone();
        for (int i = 0; i < n; i++) for (int j = 0; j < c; j++) expected[j] += x[i * c + j];
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, sums), Tol(dtype), "sum rows");
    }
}
