using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The CPU backend's products over group-wise int4 weights (<see cref="QuantizedWeight.Int4"/>) against a naive loop in double
/// over the weight scale (q - zero), the nibbles, scales and zeros drawn by the test (seed logged) and packed by its own loop
/// (column c of a row in bits 4 (c mod 8) of word c / 8): the direct kernel (F32, at most 8 rows), the dequantized GEMM (more
/// rows, and F64), groups of 8 to a whole row with a short last one, bias, accumulation, an addend and GELU; Dequantize.
/// </summary>
public class CpuInt4QuantizedMatMulTests
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>Random nibbles, scales U(0.01, 0.05) and zeros (N, K) in groups of <paramref name="group"/>; the weight and what it stands for in double.</summary>
    private (QuantizedWeight Weight, double[] Dequantized) Weight(Random rng, int n, int k, int group)
    {
        int groups = (k + group - 1) / group;
        var q = new int[n * k];
        for (int i = 0; i < q.Length; i++) q[i] = rng.Next(16);
        var packed = new int[n * k / 8];
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++) packed[(r * k + c) / 8] |= q[r * k + c] << (4 * (c % 8));
        var scales = new float[n * groups];
        var zeros = new sbyte[n * groups];
        for (int i = 0; i < scales.Length; i++) { scales[i] = (float)(0.01 + 0.04 * rng.NextDouble()); zeros[i] = (sbyte)rng.Next(16); }
        var weight = QuantizedWeight.Int4(_cpu.Allocate(new Shape(n, k / 8), DType.I32), _cpu.Allocate(new Shape(n, groups), DType.F32),
            _cpu.Allocate(new Shape(n, groups), DType.I8), k, group);
        Int4Quantization.Write(_cpu, weight, packed, scales, zeros);
        var d = new double[n * k];
        for (int r = 0; r < n; r++)
            for (int c = 0; c < k; c++) d[r * k + c] = (double)scales[r * groups + c / group] * (q[r * k + c] - zeros[r * groups + c / group]);
        return (weight, d);
    }

    [Theory]
    [InlineData(DType.F32, 1, 64, 40, 32)]      // the direct kernel, one row of x, two groups
    [InlineData(DType.F32, 5, 200, 33, 64)]     // the direct kernel, a last group of 8, a scalar tail
    [InlineData(DType.F32, 8, 96, 17, 96)]      // the direct kernel at its most rows, one group a row
    [InlineData(DType.F32, 9, 96, 50, 8)]       // the dequantized GEMM, groups of 8
    [InlineData(DType.F64, 3, 136, 20, 128)]    // F64: always the dequantized GEMM; a last group of 8
    [InlineData(DType.F32, 20, 4096, 150, 128)] // three tiles of weight rows
    public void ProductsEqualANaiveLoopOverTheDequantizedWeight(DType dtype, int m, int k, int n, int group)
    {
        var rng = TestRandom.Create();
        var (weight, w) = Weight(rng, n, k, group);
        // F32: the weight rounded once to F32 (2^-24) and sums of K products of O(0.1) terms; 1e-5 as for int8. F64: 1e-12.
        QuantizedProductChecks.AgainstANaiveLoop(_cpu, weight, w, dtype, m, k, n, dtype == DType.F32 ? 1e-5 : 1e-12, rng);
    }

    /// <summary>
    /// QuantizedMatMulSwiGlu over two int4 weights: SiLU(norm(x) Wg^T + bg) (norm(x) Wu^T + bu) against a loop in double over
    /// the weights scale (q - zero), with and without the norm and the biases.
    /// </summary>
    [Theory]
    [InlineData(DType.F64, 3, 64, 9, 16, false, false)]   // F64: sums and SiLU in double, 1e-12
    [InlineData(DType.F64, 2, 96, 7, 32, true, true)]     // normalized (RMSNorm with its gain), biases
    [InlineData(DType.F32, 5, 128, 20, 64, true, false)]  // F32: the direct kernel at 5 rows; 1e-5 as the products'
    [InlineData(DType.F32, 12, 64, 11, 64, false, true)]  // F32: the dequantized GEMM at 12 rows
    public void SwiGluOverTwoWeightsEqualsANaiveLoop(DType dtype, int m, int k, int f, int group, bool withNorm, bool withBias)
    {
        var rng = TestRandom.Create();
        var (gate, wg) = Weight(rng, f, k, group);
        var (up, wu) = Weight(rng, f, k, group);
        var xv = TestTensors.Normal(rng, (long)m * k);
        var gainv = TestTensors.Uniform(rng, k, 0.5, 1.5);
        var bgv = TestTensors.Normal(rng, f);
        var buv = TestTensors.Normal(rng, f);
        const double eps = 1e-5;
        var expected = new double[m * f];
        for (int i = 0; i < m; i++)
        {
            double ss = 0;
            for (int c = 0; c < k; c++) ss += xv[i * k + c] * xv[i * k + c];
            double rstd = withNorm ? 1 / Math.Sqrt(ss / k + eps) : 1;
            for (int j = 0; j < f; j++)
            {
                double g = withBias ? bgv[j] : 0, u = withBias ? buv[j] : 0;
                for (int c = 0; c < k; c++)
                {
                    double h = xv[i * k + c] * (withNorm ? rstd * gainv[c] : 1);
                    g += h * wg[j * k + c];
                    u += h * wu[j * k + c];
                }
                expected[i * f + j] = g / (1 + Math.Exp(-g)) * u;
            }
        }
        var y = _cpu.Allocate(new Shape(m, f), dtype);
        _cpu.QuantizedMatMulSwiGlu(TestTensors.FromDoubles(_cpu, xv, dtype, m, k), gate, up, y,
            withBias ? TestTensors.FromDoubles(_cpu, bgv, dtype, f) : null, withBias ? TestTensors.FromDoubles(_cpu, buv, dtype, f) : null,
            withNorm ? new RmsNormPrologue(TestTensors.FromDoubles(_cpu, gainv, dtype, k), eps) : null);
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, y), dtype == DType.F32 ? 1e-5 : 1e-12, $"{dtype} M={m} norm={withNorm} bias={withBias}");
    }

    [Fact]
    public void SwiGluRefusesWeightsOfDifferentFormats()
    {
        var rng = TestRandom.Create();
        var (gate, _) = Weight(rng, 8, 64, 32);
        var (up, _) = Weight(rng, 8, 64, 16);
        var x = _cpu.Allocate(new Shape(2, 64), DType.F32);
        var y = _cpu.Allocate(new Shape(2, 8), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMulSwiGlu(x, gate, up, y));
        Assert.Contains("CpuBackend.QuantizedMatMulSwiGlu: the gate ((8, 64) int4, groups of 32) and up ((8, 64) int4, groups of 16) weights must have one shape and format", e.Message);
        var wrong = _cpu.Allocate(new Shape(2, 9), DType.F32);
        e = Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMulSwiGlu(x, gate, Weight(rng, 8, 64, 32).Weight, wrong));
        Assert.Contains("CpuBackend.QuantizedMatMulSwiGlu: x (2, 64) and y (2, 9) do not fit the weight (8, 64)", e.Message);
    }

    /// <summary>
    /// QuantizedMatMulRopeAppend over an int4 QKV weight (2 query heads, 1 kv head of 8, C = 32): q and k rotated at each
    /// sequence's position, k and v appended to the cache, against a loop in double over what the weight stands for (F64,
    /// 1e-12); and a qkv that does not fit the weight is refused naming the op and the shapes.
    /// </summary>
    [Fact]
    public void QkvWithRotationAndAppendEqualsALoopAndRefusesMisfits()
    {
        var rng = TestRandom.Create();
        const int h = 2, kh = 1, d = 8, c = 32, b = 2, s = 6, rows = (h + 2 * kh) * d;
        var (weight, w) = Weight(rng, rows, c, 16);
        var xv = TestTensors.Normal(rng, b * c);
        int[] starts = [1, 4];
        var qkv = _cpu.Allocate(new Shape(b, 1, h + 2 * kh, d), DType.F64);
        var cache = _cpu.Allocate(new Shape(b, s, 2 * kh, d), DType.F64);
        _cpu.Fill(cache, 0);
        _cpu.QuantizedMatMulRopeAppend(TestTensors.FromDoubles(_cpu, xv, DType.F64, b, c), null, weight, null, qkv, h, cache,
            _cpu.FromArray(starts, b), new RopeFrequencies(10000.0));
        var product = new double[b * rows];
        for (int i = 0; i < b; i++)
            for (int r = 0; r < rows; r++)
                for (int k = 0; k < c; k++) product[i * rows + r] += xv[i * c + k] * w[r * c + k];
        var expected = (double[])product.Clone();
        var expectedCache = new double[b * s * 2 * kh * d];
        for (int i = 0; i < b; i++)
            for (int head = 0; head < h + 2 * kh; head++)
            {
                int at = i * rows + head * d;
                if (head < h + kh)
                    for (int j = 0; j < d / 2; j++)
                    {
                        // The rotate-half pairing (j, j + D/2), angle position · theta^(-2j / D).
                        double angle = starts[i] * Math.Pow(10000.0, -2.0 * j / d), x1 = product[at + j], x2 = product[at + j + d / 2];
                        expected[at + j] = x1 * Math.Cos(angle) - x2 * Math.Sin(angle);
                        expected[at + j + d / 2] = x2 * Math.Cos(angle) + x1 * Math.Sin(angle);
                    }
                if (head >= h)
                    for (int j = 0; j < d; j++) expectedCache[((i * s + starts[i]) * 2 * kh + head - h) * d + j] = expected[at + j];
            }
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, qkv), 1e-12, "qkv");
        NumericAssert.Close(expectedCache, TestTensors.ToDoubles(_cpu, cache), 1e-12, "cache");

        var wrong = _cpu.Allocate(new Shape(b, 1, h + 2 * kh, d + 2), DType.F64);
        var e = Assert.Throws<ArgumentException>(() => _cpu.QuantizedMatMulRopeAppend(TestTensors.FromDoubles(_cpu, xv, DType.F64, b, c), null,
            weight, null, wrong, h, cache, _cpu.FromArray(starts, b), new RopeFrequencies(10000.0)));
        Assert.Contains($"CpuBackend.QuantizedMatMulRopeAppend: x ({b}, {c}), weight ({rows}, {c}) and qkv ({b}, 1, {h + 2 * kh}, {d + 2}) do not fit", e.Message);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    [InlineData(DType.BF16)]
    public void DequantizeGivesScaleTimesNibbleMinusZero(DType dtype)
    {
        var (weight, w) = Weight(TestRandom.Create(), 9, 40, 16);
        var output = _cpu.Allocate(weight.Shape, dtype);
        _cpu.Dequantize(weight, output);
        // F64 holds scale (q - z) exactly; F32 rounds it once (2^-24 relative); BF16 keeps 8 significant bits (2^-8).
        double tol = dtype switch { DType.F64 => 0, DType.F32 => 6e-8, _ => 3.91e-3 };
        var got = TestTensors.ToDoubles(_cpu, output);
        for (int i = 0; i < w.Length; i++) Assert.True(Math.Abs(got[i] - w[i]) <= tol * Math.Abs(w[i]), $"element {i}: {got[i]} against {w[i]}");
    }

    /// <summary>
    /// A weight with an input order (GPTQ's act order: stored column j is input order[j], a random permutation, seed logged)
    /// stands for w[n, order[j]] = stored[n, j]: every product form (the direct kernel, the dequantized GEMM, bias, beta, addend,
    /// GELU) equals the naive loop over that weight, and so do the SwiGLU pair normalized and Dequantize (bit for bit: the same
    /// values, moved). Tolerances as the unordered products'.
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 2, 64, 24, 16)]
    [InlineData(DType.F32, 11, 96, 20, 32)]
    [InlineData(DType.F64, 3, 128, 9, 64)]
    public void AWeightWithAnInputOrderStandsForItsStoredColumnsPutInOrder(DType dtype, int m, int k, int n, int group)
    {
        var rng = TestRandom.Create();
        var (stored, ws) = Weight(rng, n, k, group);
        var (up, wus) = Weight(rng, n, k, group);
        var order = Enumerable.Range(0, k).OrderBy(_ => rng.Next()).ToArray();
        var inverse = QuantizedWeight.CheckPermutation(order, "test");
        var o = _cpu.Allocate(new Shape(k), DType.I32);
        var i = _cpu.Allocate(new Shape(k), DType.I32);
        _cpu.CopyFromHost<int>(order, o);
        _cpu.CopyFromHost<int>(inverse, i);
        var weight = stored.WithInputOrder(o, i);
        double[] InOrder(double[] s)
        {
            var w = new double[n * k];
            for (int r = 0; r < n; r++) for (int j = 0; j < k; j++) w[r * k + order[j]] = s[r * k + j];
            return w;
        }
        var w = InOrder(ws);
        QuantizedProductChecks.AgainstANaiveLoop(_cpu, weight, w, dtype, m, k, n, dtype == DType.F32 ? 1e-5 : 1e-12, rng);

        var dequantized = _cpu.Allocate(weight.Shape, DType.F64);
        _cpu.Dequantize(weight, dequantized);
        Assert.True(w.AsSpan().SequenceEqual(TestTensors.ToDoubles(_cpu, dequantized)), "Dequantize does not give the stored columns in the inputs' order");

        // The SwiGLU pair, both weights ordered, normalized: against the loop over the weights they stand for.
        var wu = InOrder(wus);
        var xv = TestTensors.Normal(rng, (long)m * k);
        var gainv = TestTensors.Uniform(rng, k, 0.5, 1.5);
        const double eps = 1e-5;
        var expected = new double[m * n];
        for (int r = 0; r < m; r++)
        {
            double ss = 0;
            for (int c = 0; c < k; c++) ss += xv[r * k + c] * xv[r * k + c];
            double rstd = 1 / Math.Sqrt(ss / k + eps);
            for (int j = 0; j < n; j++)
            {
                double g = 0, u = 0;
                for (int c = 0; c < k; c++) { double h = xv[r * k + c] * rstd * gainv[c]; g += h * w[j * k + c]; u += h * wu[j * k + c]; }
                expected[r * n + j] = g / (1 + Math.Exp(-g)) * u;
            }
        }
        var y = _cpu.Allocate(new Shape(m, n), dtype);
        _cpu.QuantizedMatMulSwiGlu(TestTensors.FromDoubles(_cpu, xv, dtype, m, k), weight, up.WithInputOrder(o, i), y,
            norm: new RmsNormPrologue(TestTensors.FromDoubles(_cpu, gainv, dtype, k), eps));
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, y), dtype == DType.F32 ? 1e-5 : 1e-12, $"{dtype} ordered SwiGLU");
    }

    /// <summary>GatherColumns moves x's columns as the indices say (any rows, repeats allowed), and refuses an index outside x and a
    /// permutation check refuses a repeat or a value out of range, naming it.</summary>
    [Fact]
    public void GatherColumnsMovesColumnsAndOutOfRangeIndicesAreRefused()
    {
        var rng = TestRandom.Create();
        var xv = TestTensors.Normal(rng, 4 * 7);
        var x = TestTensors.FromDoubles(_cpu, xv, DType.BF16, 4, 7);
        int[] idx = [6, 0, 0, 3, 5];
        var t = _cpu.Allocate(new Shape(5), DType.I32);
        _cpu.CopyFromHost<int>(idx, t);
        var y = _cpu.Allocate(new Shape(4, 5), DType.BF16);
        _cpu.GatherColumns(x, t, y);
        var xs = TestTensors.ToDoubles(_cpu, x);
        var got = TestTensors.ToDoubles(_cpu, y);
        for (int r = 0; r < 4; r++) for (int j = 0; j < 5; j++) Assert.Equal(xs[r * 7 + idx[j]], got[r * 5 + j]);
        _cpu.CopyFromHost<int>(new[] { 0, 1, 7, 2, 3 }, t);
        Assert.Contains("index 2 is 7, outside x's 7 columns", Assert.Throws<ArgumentException>(() => _cpu.GatherColumns(x, t, y)).Message);
        Assert.Contains("names input 1 twice", Assert.Throws<ArgumentException>(() => QuantizedWeight.CheckPermutation(new[] { 1, 0, 1 }, "w")).Message);
        Assert.Contains("entry 1 is 3, outside 0 .. 2", Assert.Throws<ArgumentException>(() => QuantizedWeight.CheckPermutation(new[] { 1, 3, 0 }, "w")).Message);
    }

    [Fact]
    public void BadShapesAreRefusedNamingWhatIsWrong()
    {
        var e = Assert.Throws<ArgumentException>(() => QuantizedWeight.Int4(_cpu.Allocate(new Shape(4, 2), DType.I32),
            _cpu.Allocate(new Shape(4, 1), DType.F32), _cpu.Allocate(new Shape(4, 1), DType.I8), 20, 20));
        Assert.Contains("K (20) must be a positive multiple of 8", e.Message);
        e = Assert.Throws<ArgumentException>(() => QuantizedWeight.Int4(_cpu.Allocate(new Shape(4, 2), DType.I32),
            _cpu.Allocate(new Shape(4, 1), DType.F32), _cpu.Allocate(new Shape(4, 1), DType.I8), 16, 8));
        Assert.Contains("scales must be a contiguous (4, 2) F32 tensor", e.Message);
        var (weight, _) = Weight(TestRandom.Create(), 4, 16, 8);
        var zeros = new sbyte[8];
        zeros[3] = 16;
        var z = Assert.Throws<ArgumentException>(() => Int4Quantization.Write(_cpu, weight, new int[8], new float[8], zeros));
        Assert.Contains("zero point 16 is outside 0 .. 15", z.Message);
    }
}
