using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The CPU backend's products over int8 weights (<see cref="IBackend.QuantizedMatMul"/>) against a naive loop in double over the
/// weight the int8 values and scales stand for: the direct kernel (F32, at most 8 rows), the dequantized GEMM (more rows,
/// and F64), bias, accumulation, an addend and the GELU epilogue; <see cref="IBackend.Dequantize"/>; and the argument checks.
/// </summary>
public class CpuQuantizedMatMulTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>Random weights (N, K) quantized on the host; returns the weight and the dequantized values in double.</summary>
    private (QuantizedWeight Weight, double[] Dequantized) Weight(Random rng, int n, int k)
    {
        var w = Array.ConvertAll(TestTensors.Normal(rng, (long)n * k, 0.3), x => (float)x);
        var weight = Int8Quantization.Quantize(_cpu, w, n, k);
        var q = _cpu.ToArray<sbyte>(weight.Values);
        var s = _cpu.ToArray<float>(weight.Scales);
        var d = new double[w.Length];
        for (int i = 0; i < d.Length; i++) d[i] = (double)s[i / k] * q[i];
        return (weight, d);
    }

    [Theory]
    [InlineData(DType.F32, 1, 64, 40)]      // the direct kernel: 8-wide vectors exactly, one row of x
    [InlineData(DType.F32, 5, 77, 33)]      // the direct kernel: two groups of rows (3 + 2), a scalar tail, a last block of one weight row
    [InlineData(DType.F32, 8, 300, 130)]    // the direct kernel at its most rows
    [InlineData(DType.F32, 9, 96, 50)]      // the dequantized GEMM
    [InlineData(DType.F64, 3, 70, 20)]      // F64: always the dequantized GEMM
    [InlineData(DType.F64, 40, 70, 20)]
    [InlineData(DType.F32, 20, 4096, 150)]  // three tiles of weight rows (64, 64, 22 at K = 4096)
    [InlineData(DType.F64, 3, 4096, 150)]
    public void ProductsEqualANaiveLoopOverTheDequantizedWeight(DType dtype, int m, int k, int n)
    {
        var rng = TestRandom.Create();
        var (weight, w) = Weight(rng, n, k);
        // F32 sums K products of O(1) terms: the error grows like sqrt(K) 2^-24 of the sums' scale (1e-5 covers K = 4096 with
        // room: 4e-6 at worst if every rounding went one way); F64 takes 1e-12.
        QuantizedProductChecks.AgainstANaiveLoop(_cpu, weight, w, dtype, m, k, n, dtype == DType.F32 ? 1e-5 : 1e-12, rng);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    [InlineData(DType.BF16)]
    public void DequantizeGivesScaleTimesValue(DType dtype)
    {
        var rng = TestRandom.Create();
        var (weight, w) = Weight(rng, 9, 33);
        var output = _cpu.Allocate(weight.Shape, dtype);
        _cpu.Dequantize(weight, output);
        // F64 holds scale x value exactly; F32 rounds it once (at most 2^-24 relative); BF16 keeps 8 significant bits (2^-8).
        double tol = dtype switch { DType.F64 => 0, DType.F32 => 6e-8, _ => 3.91e-3 };
        var got = TestTensors.ToDoubles(_cpu, output);
        for (int i = 0; i < w.Length; i++) Assert.True(Math.Abs(got[i] - w[i]) <= tol * Math.Abs(w[i]), $"element {i}: {got[i]} against {w[i]}");
    }

    /// <summary>An int8 table's lookup gives its dequantized rows (F64: scale x value exactly; F32: rounded once), added with accumulate.</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void EmbeddingLookupGivesTheDequantizedRows(DType dtype)
    {
        var rng = TestRandom.Create();
        var (table, w) = Weight(rng, 12, 37);
        int[] ids = [4, 0, 11, 4];
        var output = _cpu.Allocate(new Shape(ids.Length, 37), dtype);
        _cpu.QuantizedEmbeddingForward(_cpu.FromArray(ids, ids.Length), table, output);
        var expected = ids.SelectMany(id => w.Skip(id * 37).Take(37)).ToArray();
        double tol = dtype == DType.F64 ? 0 : 6e-8;               // F32 rounds scale x value once (2^-24 relative)
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, output), tol, "lookup");
        _cpu.QuantizedEmbeddingForward(_cpu.FromArray(ids, ids.Length), table, output, accumulate: true);
        NumericAssert.Close([.. expected.Select(x => 2 * x)], TestTensors.ToDoubles(_cpu, output), tol, "lookup, accumulated");
        var e = Assert.Throws<ArgumentException>(() => _cpu.QuantizedEmbeddingForward(_cpu.FromArray(new[] { 12 }, 1), table, _cpu.Allocate(new Shape(1, 37), dtype)));
        Assert.Contains("outside the table's 12 rows", e.Message);
    }

    /// <summary>A vocabulary shard's lookup: the dequantized row for ids in the shard, zeros for the others.</summary>
    [Fact]
    public void ShardLookupGivesItsRowsAndZerosElsewhere()
    {
        var rng = TestRandom.Create();
        var (table, w) = Weight(rng, 6, 20);                       // rows 10..15 of a whole table
        int[] ids = [9, 10, 15, 16, 12];
        var output = _cpu.Allocate(new Shape(ids.Length, 20), DType.F64);
        _cpu.QuantizedEmbeddingShardForward(_cpu.FromArray(ids, ids.Length), table, 10, output);
        var expected = ids.SelectMany(id => id is >= 10 and < 16 ? w.Skip((id - 10) * 20).Take(20) : Enumerable.Repeat(0.0, 20)).ToArray();
        Assert.Equal(expected, TestTensors.ToDoubles(_cpu, output));   // F64 holds scale x value exactly
    }

    /// <summary>
    /// With a norm, the product is x RMS-normalized (x * rsqrt(mean(x^2) + eps) * g) times the weight, plus the bias: a naive loop
    /// in double over the dequantized weight, F64 within 1e-12 (the sums' order alone differs), on the direct kernel's path (F32,
    /// 3 rows, 1e-5 of F32's rounding of the normalized x and the sums) and the dequantized GEMM's (F64).
    /// </summary>
    [Theory]
    [InlineData(DType.F64, 5, 70, 20, 1e-12)]
    [InlineData(DType.F32, 3, 64, 40, 1e-5)]
    public void NormalizedProductsEqualANaiveLoopOverTheNormalizedInput(DType dtype, int m, int k, int n, double tolerance)
    {
        var rng = TestRandom.Create();
        var (weight, w) = Weight(rng, n, k);
        var xv = TestTensors.Normal(rng, (long)m * k);
        var gv = TestTensors.Normal(rng, k);
        var bv = TestTensors.Normal(rng, n);
        const double eps = 1e-5;
        var y = _cpu.Zeros(new Shape(m, n), dtype);
        _cpu.QuantizedMatMul(TestTensors.FromDoubles(_cpu, xv, dtype, m, k), weight, y, bias: TestTensors.FromDoubles(_cpu, bv, dtype, n),
            norm: new RmsNormPrologue(TestTensors.FromDoubles(_cpu, gv, dtype, k), eps));
        var expected = new double[m * n];
        for (int i = 0; i < m; i++)
        {
            double ss = 0;
            for (int c = 0; c < k; c++) ss += xv[i * k + c] * xv[i * k + c];
            double rstd = 1 / Math.Sqrt(ss / k + eps);
            for (int j = 0; j < n; j++)
            {
                double acc = 0;
                for (int c = 0; c < k; c++) acc += xv[i * k + c] * rstd * gv[c] * w[j * k + c];
                expected[i * n + j] = acc + bv[j];
            }
        }
        var got = TestTensors.ToDoubles(_cpu, y);
        double scale = expected.Max(Math.Abs);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(got[i] - expected[i]) <= tolerance * scale, $"{dtype} [{i}]: {got[i]} against {expected[i]} (bound {tolerance} x {scale:G3})");
    }

    [Fact]
    public void ArgumentsThatDoNotFitAreRefusedNamingThem()
    {
        var rng = TestRandom.Create();
        var (weight, _) = Weight(rng, 8, 16);
        var x = _cpu.Zeros(new Shape(2, 16), DType.F32);
        Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(_cpu.Zeros(new Shape(2, 15), DType.F32), weight, _cpu.Zeros(new Shape(2, 8), DType.F32)));
        Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(x, weight, _cpu.Zeros(new Shape(2, 9), DType.F32)));
        Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(x, weight, _cpu.Zeros(new Shape(2, 8), DType.F64)));
        Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(x, weight, _cpu.Zeros(new Shape(2, 8), DType.F32), bias: _cpu.Zeros(new Shape(16), DType.F32)));
        var e = Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(x, weight, _cpu.Zeros(new Shape(2, 8), DType.F32),
            epilogue: MatMulEpilogue.GeluBackward, auxiliary: _cpu.Zeros(new Shape(2, 8), DType.F32)));
        Assert.Contains("GeluBackward", e.Message);
        var n = Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(x, weight, _cpu.Zeros(new Shape(2, 8), DType.F32),
            norm: new RmsNormPrologue(_cpu.Zeros(new Shape(15), DType.F32), 1e-5)));
        Assert.Equal("norm", n.ParamName);
        Assert.Throws<ArgumentException>(() => new QuantizedWeight(_cpu.Zeros(new Shape(8, 16), DType.F32), weight.Scales));
        Assert.Throws<ArgumentException>(() => new QuantizedWeight(weight.Values, _cpu.Zeros(new Shape(7), DType.F32)));
    }
}
