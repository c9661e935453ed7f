using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// FP8 (E4M3) weights on the CPU: <see cref="Fp8Quantization"/>'s codes and scales against a search over every code, and the
/// W8A8 product (<see cref="IBackend.QuantizedMatMul"/> with F8E4M3 values) against a loop in double over the codes and scales
/// of the weight and of x's rows (tight), and against the product of the unquantized operands (loose: E4M3 keeps 3 mantissa
/// bits); bias, beta, an addend, GELU, the norm prologue; <see cref="IBackend.Dequantize"/>, the embedding lookups; the checks.
/// </summary>
public class CpuFp8QuantizedMatMulTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>The E4M3 code nearest <paramref name="v"/> by a search over every finite code (ties to the even code), saturating at ±448.</summary>
    private static byte Nearest(double v)
    {
        if (double.IsNaN(v)) return Float8E4M3.NaN;
        int best = 0; double bestDistance = double.PositiveInfinity;
        for (int c = 0; c < 256; c++)
        {
            if ((c & 0x7F) == 0x7F) continue;
            double d = Math.Abs(Float8E4M3.ToSingle((byte)c) - Math.Clamp(v, -448, 448));
            if (d < bestDistance || d == bestDistance && (c & 1) == 0 && (c & 0x7F) != 0) { best = c; bestDistance = d; }
        }
        if (v < 0 && best == 0) best = 0x80;                         // the sign of a value that rounds to zero is kept
        if (v > 0 && best == 0x80) best = 0;
        return (byte)best;
    }

    /// <summary>One row quantized as the product does it: scale max|row| / 448 in F32 (1 for zeros), codes of row / scale (F32 division).</summary>
    private static (byte[] Codes, float Scale) QuantizedRow(float[] row)
    {
        var codes = new byte[row.Length];
        float scale = Fp8Quantization.QuantizeRow(row, codes);
        return (codes, scale);
    }

    [Fact]
    public void RowsQuantizeToTheNearestCodeOfTheirScaledValues()
    {
        var rng = TestRandom.Create();
        for (int trial = 0; trial < 20; trial++)
        {
            // Magnitudes over ten binades, so that rows reach E4M3's subnormals after scaling.
            var row = Enumerable.Range(0, 64).Select(_ => (float)((rng.NextDouble() - 0.5) * Math.Pow(10, rng.Next(-6, 4)))).ToArray();
            var (codes, scale) = QuantizedRow(row);
            float max = row.Max(MathF.Abs);
            Assert.Equal(max / 448f, scale);
            for (int c = 0; c < row.Length; c++)
                Assert.True(Nearest(row[c] / scale) == codes[c], $"trial {trial} [{c}]: {row[c]} / {scale} gave 0x{codes[c]:X2}, the nearest code is 0x{Nearest(row[c] / scale):X2}");
            Assert.Contains(codes, q => (q & 0x7F) == Float8E4M3.MaxCode);   // the row's largest maps to ±448
        }
        var (zeros, one) = QuantizedRow(new float[8]);
        Assert.Equal(1f, one);
        Assert.All(zeros, q => Assert.Equal(0, q));
        var (nanCodes, nan) = QuantizedRow([1f, float.PositiveInfinity]);
        Assert.True(float.IsNaN(nan));
        Assert.All(nanCodes, q => Assert.Equal(0, q));
        var e = Assert.Throws<ArgumentException>(() => Fp8Quantization.Quantize(_cpu, [1f, float.NaN], 1, 2, "w"));
        Assert.Contains("w: weight [0, 1] is NaN", e.Message);
    }

    /// <summary>Random weights (N, K) quantized to FP8 on the host; returns the weight, its codes' values times nothing (the codes) and its scales.</summary>
    private (QuantizedWeight Weight, double[] Codes, float[] Scales, double[] Original) Weight(Random rng, int n, int k)
    {
        var w = Array.ConvertAll(TestTensors.Normal(rng, (long)n * k, 0.3), x => (float)x);
        var weight = Fp8Quantization.Quantize(_cpu, w, n, k);
        Assert.True(weight.IsFp8);
        var codes = _cpu.ToArray<byte>(weight.Values).Select(c => (double)Float8E4M3.ToSingle(c)).ToArray();
        return (weight, codes, _cpu.ToArray<float>(weight.Scales), Array.ConvertAll(w, x => (double)x));
    }

    /// <summary>x's rows quantized by the test: the codes' values (M, K) and the scales (M), from x as F32.</summary>
    private static (double[] Codes, float[] Scales) QuantizedInput(double[] x, int m, int k)
    {
        var codes = new double[m * k];
        var scales = new float[m];
        for (int i = 0; i < m; i++)
        {
            var (q, s) = QuantizedRow([.. x.Skip(i * k).Take(k).Select(v => (float)v)]);
            scales[i] = s;
            for (int c = 0; c < k; c++) codes[i * k + c] = Float8E4M3.ToSingle(q[c]);
        }
        return (codes, scales);
    }

    [Theory]
    [InlineData(DType.F32, 1, 64, 40)]
    [InlineData(DType.F32, 9, 96, 50)]
    [InlineData(DType.F64, 3, 70, 20)]
    [InlineData(DType.F32, 20, 4096, 300)]   // two tiles of weight rows (256 + 44 at K = 4096)
    public void ProductsEqualALoopOverTheCodesAndScales(DType dtype, int m, int k, int n)
    {
        var rng = TestRandom.Create();
        var (weight, wq, sw, wOriginal) = Weight(rng, n, k);
        var x = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, (long)m * k), dtype, m, k);
        var bias = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, n), dtype, n);
        var y0 = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, (long)m * n), dtype, m, n);
        var addend = TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, (long)m * n), dtype, m, n);
        // The operands as the tensors hold them (F32 rounds the draws).
        double[] xv = TestTensors.ToDoubles(_cpu, x), bv = TestTensors.ToDoubles(_cpu, bias), yv = TestTensors.ToDoubles(_cpu, y0), av = TestTensors.ToDoubles(_cpu, addend);
        var (xq, sx) = QuantizedInput(xv, m, k);
        double[] Reference(Func<int, int, double, double> finish)
        {
            var r = new double[m * n];
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                {
                    double acc = 0;                                    // exact: products of codes are multiples of 2^-18 below 2^18
                    for (int c = 0; c < k; c++) acc += xq[i * k + c] * wq[j * k + c];
                    r[i * n + j] = finish(i, j, (double)sx[i] * sw[j] * acc);
                }
            return r;
        }
        // The backend computes these very F64 operations, the sums exact in any order, and rounds y once to its dtype: F32 within
        // 2^-24 of each element (6e-8 of the largest bounds it); F64 within a few ulps (GELU's tanh is the library's).
        double tol = dtype == DType.F32 ? 6e-8 : 1e-14;
        var y = _cpu.Allocate(new Shape(m, n), dtype);
        _cpu.QuantizedMatMul(x, weight, y);
        NumericAssert.Close(Reference((_, _, p) => p), TestTensors.ToDoubles(_cpu, y), tol, "x W^T");

        // Against the unquantized operands: every code of x and W is within 2^-4 of its value (half a step of 3 mantissa bits)
        // and the errors are independent, so the sums move by a few percent of their scale (3-4 % of the largest in
        // development); 10 % of the largest bounds it, where a wrong or swapped scale moves them by O(1).
        var exact = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double acc = 0;
                for (int c = 0; c < k; c++) acc += xv[i * k + c] * wOriginal[j * k + c];
                exact[i * n + j] = acc;
            }
        double drift = NumericAssert.MaxRelativeError(exact, TestTensors.ToDoubles(_cpu, y));
        TestContext.Current.TestOutputHelper?.WriteLine($"fp8 product moved by {drift:P2} of its largest");
        Assert.InRange(drift, 1e-6, 0.1);

        _cpu.QuantizedMatMul(x, weight, y, bias: bias);
        NumericAssert.Close(Reference((_, j, p) => p + bv[j]), TestTensors.ToDoubles(_cpu, y), tol, "x W^T + b");

        TestTensors.Write(_cpu, y, yv);
        _cpu.QuantizedMatMul(x, weight, y, beta: 0.5, bias: bias);
        NumericAssert.Close(Reference((i, j, p) => p + bv[j] + 0.5 * yv[i * n + j]), TestTensors.ToDoubles(_cpu, y), tol, "y = x W^T + b + 0.5 y");

        _cpu.QuantizedMatMul(x, weight, y, addend: addend);
        NumericAssert.Close(Reference((i, j, p) => p + av[i * n + j]), TestTensors.ToDoubles(_cpu, y), tol, "x W^T + addend");

        var pre = _cpu.Allocate(new Shape(m, n), dtype);
        _cpu.QuantizedMatMul(x, weight, y, bias: bias, epilogue: MatMulEpilogue.Gelu, auxiliary: pre);
        NumericAssert.Close(Reference((_, j, p) => p + bv[j]), TestTensors.ToDoubles(_cpu, pre), tol, "GELU's pre-activation");
        // GELU of the F32-rounded pre-activation, in F32: 1e-6 of the largest covers its few roundings.
        NumericAssert.Close(Reference((_, j, p) => QuantizedProductChecks.Gelu(p + bv[j])), TestTensors.ToDoubles(_cpu, y), dtype == DType.F32 ? 1e-6 : 1e-14, "GELU(x W^T + b)");
    }

    /// <summary>
    /// With a norm, x is RMS-normalized (in F64 here) before its rows are quantized: the reference normalizes in a loop in double,
    /// quantizes, and sums codes. The backend's normalized values can differ from the loop's in the last F64 bits, which could
    /// move a value across an F32 rounding boundary and a code by one step (a chance of about 1e-8 an element); 1e-14 otherwise.
    /// </summary>
    [Fact]
    public void NormalizedProductsQuantizeTheNormalizedRows()
    {
        var rng = TestRandom.Create();
        const int m = 5, k = 70, n = 20;
        const double eps = 1e-5;
        var (weight, wq, sw, _) = Weight(rng, n, k);
        var xv = TestTensors.Normal(rng, (long)m * k);
        var gv = TestTensors.Normal(rng, k);
        var bv = TestTensors.Normal(rng, n);
        var y = _cpu.Zeros(new Shape(m, n), DType.F64);
        _cpu.QuantizedMatMul(TestTensors.FromDoubles(_cpu, xv, DType.F64, m, k), weight, y, bias: TestTensors.FromDoubles(_cpu, bv, DType.F64, n),
            norm: new RmsNormPrologue(TestTensors.FromDoubles(_cpu, gv, DType.F64, k), eps));
        var normalized = new double[m * k];
        for (int i = 0; i < m; i++)
        {
            double ss = 0;
            for (int c = 0; c < k; c++) ss += xv[i * k + c] * xv[i * k + c];
            double rstd = 1 / Math.Sqrt(ss / k + eps);
            for (int c = 0; c < k; c++) normalized[i * k + c] = xv[i * k + c] * rstd * gv[c];
        }
        var (xq, sx) = QuantizedInput(normalized, m, k);
        var expected = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double acc = 0;
                for (int c = 0; c < k; c++) acc += xq[i * k + c] * wq[j * k + c];
                expected[i * n + j] = (double)sx[i] * sw[j] * acc + bv[j];
            }
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, y), 1e-14, "RMSNorm(x) W^T + b");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    [InlineData(DType.BF16)]
    public void DequantizeGivesScaleTimesCode(DType dtype)
    {
        var rng = TestRandom.Create();
        var (weight, wq, sw, original) = Weight(rng, 9, 33);
        var output = _cpu.Allocate(weight.Shape, dtype);
        _cpu.Dequantize(weight, output);
        // F64 holds scale x code exactly; F32 rounds it once (2^-24 relative); BF16 keeps 8 significant bits (2^-8).
        double tol = dtype switch { DType.F64 => 0, DType.F32 => 6e-8, _ => 3.91e-3 };
        var got = TestTensors.ToDoubles(_cpu, output);
        for (int i = 0; i < wq.Length; i++)
        {
            double w = (double)sw[i / 33] * wq[i];
            Assert.True(Math.Abs(got[i] - w) <= tol * Math.Abs(w), $"element {i}: {got[i]} against {w}");
            // And E4M3's own bound: within 2^-4 of the weight relative, or 2^-10 of the row's scale x 448 in the subnormals.
            Assert.True(Math.Abs(w - original[i]) <= Math.Max(Math.Abs(original[i]) / 16, sw[i / 33] / 1024.0) * (1 + 1e-6), $"element {i}: {w} stands for {original[i]}");
        }
    }

    [Fact]
    public void EmbeddingLookupsGiveTheDequantizedRows()
    {
        var rng = TestRandom.Create();
        var (table, wq, sw, _) = Weight(rng, 12, 37);
        double Row(int id, int c) => (double)sw[id] * wq[id * 37 + c];
        int[] ids = [4, 0, 11, 4];
        var output = _cpu.Allocate(new Shape(ids.Length, 37), DType.F64);
        _cpu.QuantizedEmbeddingForward(_cpu.FromArray(ids, ids.Length), table, output);
        var expected = ids.SelectMany(id => Enumerable.Range(0, 37).Select(c => Row(id, c))).ToArray();
        Assert.Equal(expected, TestTensors.ToDoubles(_cpu, output));        // F64 holds scale x code exactly
        _cpu.QuantizedEmbeddingForward(_cpu.FromArray(ids, ids.Length), table, output, accumulate: true);
        Assert.Equal([.. expected.Select(v => 2 * v)], TestTensors.ToDoubles(_cpu, output));
        int[] shardIds = [9, 10, 15, 16, 12];                             // the table as rows 10..21 of a whole vocabulary
        var shard = _cpu.Allocate(new Shape(shardIds.Length, 37), DType.F64);
        _cpu.QuantizedEmbeddingShardForward(_cpu.FromArray(shardIds, shardIds.Length), table, 10, shard);
        var shardExpected = shardIds.SelectMany(id => Enumerable.Range(0, 37).Select(c => id is >= 10 and < 22 ? Row(id - 10, c) : 0.0)).ToArray();
        Assert.Equal(shardExpected, TestTensors.ToDoubles(_cpu, shard));
    }

    [Fact]
    public void ArgumentsThatDoNotFitAreRefusedNamingThem()
    {
        var rng = TestRandom.Create();
        var (weight, _, _, _) = Weight(rng, 8, 16);
        var x = _cpu.Zeros(new Shape(2, 16), DType.F32);
        var wrongK = Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(_cpu.Zeros(new Shape(2, 15), DType.F32), weight, _cpu.Zeros(new Shape(2, 8), DType.F32)));
        Assert.Contains("do not fit the weight", wrongK.Message);
        Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(x, weight, _cpu.Zeros(new Shape(2, 9), DType.F32)));
        var mixed = Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(x, weight, _cpu.Zeros(new Shape(2, 8), DType.F64)));
        Assert.Contains("one floating-point dtype", mixed.Message);
        Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(x, weight, _cpu.Zeros(new Shape(2, 8), DType.F32), bias: _cpu.Zeros(new Shape(8), DType.F64)));
        Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMul(x, weight, _cpu.Zeros(new Shape(2, 8), DType.F32),
            epilogue: MatMulEpilogue.GeluBackward, auxiliary: _cpu.Zeros(new Shape(2, 8), DType.F32)));
        var values = Assert.Throws<ArgumentException>(() => new QuantizedWeight(_cpu.Zeros(new Shape(8, 16), DType.U16), weight.Scales));
        Assert.Contains("I8 or F8E4M3", values.Message);
        var int8Target = new QuantizedWeight(_cpu.Zeros(new Shape(8, 16), DType.I8), weight.Scales);
        Assert.Throws<ArgumentException>(() => Fp8Quantization.QuantizeInto(_cpu, new float[8 * 16], int8Target));
        Assert.Throws<ArgumentException>(() => Int8Quantization.QuantizeInto(_cpu, new float[8 * 16], weight));
    }
}
