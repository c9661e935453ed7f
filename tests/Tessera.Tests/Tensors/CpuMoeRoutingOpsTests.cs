using Tessera.Nn.Layers;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// The CPU backend's device-routed mixture-of-experts ops (<see cref="IBackend.MoeRoute"/>, <see cref="IBackend.MoeAlign"/>,
/// <see cref="IBackend.MoeExpertSwiGlu"/>, <see cref="IBackend.MoeExpertDown"/>, <see cref="IBackend.MoeCombine"/>) against the
/// host's <see cref="ExpertRouting"/> and a plain-loop F64 reference. They are the reference the CUDA kernels are held to.
/// </summary>
public sealed class CpuMoeRoutingOpsTests
{
    private readonly CpuBackend _cpu = new(1);

    /// <summary>Logits (N, E), normal; with <paramref name="ties"/> rounded to halves and every third row all equal.</summary>
    private static double[] Logits(Random rng, int n, int e, bool ties)
    {
        var z = new double[n * e];
        for (int i = 0; i < z.Length; i++)
        {
            double v = 2 * (rng.NextDouble() * 2 - 1);
            if (ties) v = Math.Round(v * 2) / 2;
            if (ties && i / e % 3 == 0) v = 0.25;
            z[i] = v;
        }
        return z;
    }

    /// <summary>
    /// The routing equals <see cref="ExpertRouting.Route"/> exactly, ids and weights (tolerance 0: the op takes the same F64
    /// operations in the same order: max, exponentials, their sum, the divisions, the k chosen summed by rank), for k = 1..E,
    /// renormalized or not, with many equal logits (halves, and all-equal rows), where the lower expert index must win.
    /// </summary>
    [Theory]
    [InlineData(5, false)]
    [InlineData(5, true)]
    [InlineData(8, true)]
    public void RoutingEqualsTheHostRoutingWithTiesToTheLowerIndex(int experts, bool ties)
    {
        const int n = 23, seed = 41;
        var rng = new Random(seed);
        var z = Logits(rng, n, experts, ties);
        var logits = _cpu.FromArray(z, n, experts);
        for (int k = 1; k <= experts; k++)
            foreach (bool normalize in new[] { false, true })
            {
                var ids = _cpu.Allocate(new Shape(n, k), DType.I32);
                var weights = _cpu.Allocate(new Shape(n, k), DType.F64);
                _cpu.MoeRoute(logits, ids, weights, normalize);
                var host = ExpertRouting.Route(z, n, experts, k, normalize);
                var got = new int[n * k];
                _cpu.CopyToHost<int>(ids, got);
                var w = new double[n * k];
                _cpu.CopyToHost<double>(weights, w);
                Assert.True(host.Selected.SequenceEqual(got), $"seed {seed}, E {experts}, k {k}, normalize {normalize}: ids [{string.Join(",", got)}], host [{string.Join(",", host.Selected)}]");
                Assert.Equal(host.Weights, w);
                if (ties)                                          // an all-equal row (row 0) picks experts 0..k-1 in order
                    Assert.Equal(Enumerable.Range(0, k), got.Take(k));
            }
    }

    /// <summary>F32 logits and weights: the same experts as the host routing in F64 and weights within 1e-6 relative (the op
    /// computes in F64 and rounds the weights once to F32, 6e-8).</summary>
    [Fact]
    public void F32RoutingGivesTheHostExpertsAndRoundedWeights()
    {
        const int n = 17, e = 6, k = 2, seed = 43;
        var z = Logits(new Random(seed), n, e, ties: false).Select(v => (double)(float)v).ToArray();
        var ids = _cpu.Allocate(new Shape(n, k), DType.I32);
        var weights = _cpu.Allocate(new Shape(n, k), DType.F32);
        _cpu.MoeRoute(_cpu.FromArray(z.Select(v => (float)v).ToArray(), n, e), ids, weights, normalize: true);
        var host = ExpertRouting.Route(z, n, e, k, normalize: true);
        var got = new int[n * k];
        _cpu.CopyToHost<int>(ids, got);
        var w = new float[n * k];
        _cpu.CopyToHost<float>(weights, w);
        Assert.Equal(host.Selected, got);
        for (int i = 0; i < w.Length; i++) Assert.True(Math.Abs(w[i] - host.Weights[i]) <= 1e-6 * host.Weights[i], $"seed {seed}: weight {i} {w[i]} vs {host.Weights[i]}");
    }

    /// <summary>The alignment lists each expert's slots as <see cref="ExpertRouting.SlotsOf"/> does (ascending, row order),
    /// experts no row chose empty; exact (integers).</summary>
    [Fact]
    public void AlignmentListsEachExpertsSlotsInRowOrder()
    {
        const int n = 19, e = 7, k = 2, seed = 47;
        var z = Logits(new Random(seed), n, e, ties: true);
        for (int i = 0; i < n; i++) z[i * e + 6] = z[i * e + 5] = -50;   // experts 5 and 6: no rows
        var host = ExpertRouting.Route(z, n, e, k, normalize: false);
        var ids = _cpu.FromArray(host.Selected, n, k);
        var offsets = _cpu.Allocate(new Shape(e + 1), DType.I32);
        var slots = _cpu.Allocate(new Shape(n * k), DType.I32);
        _cpu.MoeAlign(ids, offsets, slots);
        var o = new int[e + 1];
        _cpu.CopyToHost<int>(offsets, o);
        var s = new int[n * k];
        _cpu.CopyToHost<int>(slots, s);
        Assert.Equal(0, o[0]);
        for (int j = 0; j < e; j++) Assert.Equal(host.SlotsOf(j).ToArray(), s[o[j]..o[j + 1]]);
        Assert.Equal(o[5], o[7]);
    }

    /// <summary>
    /// Route, align, the experts' SwiGLU and down products and the combine (with the gated shared expert or without) equal a
    /// plain-loop F64 reference of y = residual + Σ_s w_s expert_s(x) (+ sigmoid(g) shared) within 1e-12 relative to the
    /// largest value: the same F64 arithmetic, sums in other orders only (about 1e-16 a term over C = 12 and F = 20).
    /// </summary>
    [Theory]
    [InlineData(1, 4, 2, false, false)]
    [InlineData(9, 5, 2, true, false)]
    [InlineData(16, 6, 3, true, true)]
    [InlineData(7, 4, 4, false, true)]
    public void ExpertsAndCombineEqualAPlainLoopReference(int n, int e, int k, bool normalize, bool withShared)
    {
        const int c = 12, f = 20;
        int seed = 53 + n + e + k;
        var rng = new Random(seed);
        double[] Draw(int count, double scale) => Enumerable.Range(0, count).Select(_ => scale * (rng.NextDouble() * 2 - 1)).ToArray();
        var z = Logits(rng, n, e, ties: false);
        var x = Draw(n * c, 1);
        var residual = Draw(n * c, 1);
        var shared = Draw(n * c, 1);
        var gate = Draw(n, 3);
        var wg = Enumerable.Range(0, e).Select(_ => Draw(f * c, 0.5)).ToArray();
        var wu = Enumerable.Range(0, e).Select(_ => Draw(f * c, 0.5)).ToArray();
        var wd = Enumerable.Range(0, e).Select(_ => Draw(c * f, 0.4)).ToArray();
        var routing = ExpertRouting.Route(z, n, e, k, normalize);
        var expected = (double[])residual.Clone();
        for (int r = 0; r < n; r++)
        {
            for (int s = 0; s < k; s++)
            {
                int j = routing.Selected[r * k + s];
                var h = new double[f];
                for (int u = 0; u < f; u++)
                {
                    double a = 0, b = 0;
                    for (int i = 0; i < c; i++) { a += x[r * c + i] * wg[j][u * c + i]; b += x[r * c + i] * wu[j][u * c + i]; }
                    h[u] = a / (1 + Math.Exp(-a)) * b;
                }
                for (int o = 0; o < c; o++)
                {
                    double y = 0;
                    for (int u = 0; u < f; u++) y += h[u] * wd[j][o * f + u];
                    expected[r * c + o] += routing.Weights[r * k + s] * y;
                }
            }
            if (withShared)
                for (int o = 0; o < c; o++) expected[r * c + o] += 1 / (1 + Math.Exp(-gate[r])) * shared[r * c + o];
        }

        var experts = _cpu.PrepareMoeExperts(wg.Select(w => _cpu.FromArray(w, f, c)).ToList(), wu.Select(w => _cpu.FromArray(w, f, c)).ToList(),
            wd.Select(w => _cpu.FromArray(w, c, f)).ToList());
        var output = _cpu.FromArray(residual, n, c);
        MoeDeviceOps.Run(_cpu, experts, _cpu.FromArray(z, n, e), _cpu.FromArray(x, n, c), output, k, normalize, DType.F64,
            withShared ? _cpu.FromArray(shared, n, c) : null, withShared ? _cpu.FromArray(gate, n, 1) : null);
        var got = new double[n * c];
        _cpu.CopyToHost<double>(output, got);
        double scale = expected.Max(Math.Abs);
        for (int i = 0; i < got.Length; i++)
            Assert.True(Math.Abs(got[i] - expected[i]) <= 1e-12 * scale, $"seed {seed}: element {i}: {got[i]} vs {expected[i]}");
    }

    /// <summary>
    /// Quantized experts (int8 with a scale a row; int4 in groups of 8, which divide C = 24 and F = 40, and of 16, which leave
    /// both a shorter last group) give exactly what the same ops give over the
    /// floating-point experts holding the values they stand for (<see cref="IBackend.Dequantize"/> into F64): tolerance 0, since
    /// over F64 rows the CPU's quantized products dequantize the weight into the same F64 values (scale x value, scale
    /// (q - zero)) and run the same F64 product, summing in the same order. F32 rows agree with F64 rows within 1e-5 of the
    /// largest value (F32 storage of x, the hidden rows and the outputs, and F32 products).
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(8)]
    [InlineData(16)]
    public void QuantizedExpertsGiveTheResultsOfTheValuesTheyStandFor(int int4Group)
    {
        const int n = 9, e = 5, k = 2, c = 24, f = 40;
        int seed = 71 + int4Group;
        var rng = new Random(seed);
        float[] Draw(int count, double scale) => Enumerable.Range(0, count).Select(_ => (float)(scale * (rng.NextDouble() * 2 - 1))).ToArray();
        QuantizedWeight Quantize(float[] w, int rows, int cols) => int4Group == 0
            ? Int8Quantization.Quantize(_cpu, w, rows, cols)
            : Int4Quantization.Quantize(_cpu, w, rows, cols, int4Group);
        var gate = Enumerable.Range(0, e).Select(_ => Quantize(Draw(f * c, 0.5), f, c)).ToList();
        var up = Enumerable.Range(0, e).Select(_ => Quantize(Draw(f * c, 0.5), f, c)).ToList();
        var down = Enumerable.Range(0, e).Select(_ => Quantize(Draw(c * f, 0.4), c, f)).ToList();
        Tensor Values(QuantizedWeight q)
        {
            var t = _cpu.Allocate(q.Shape, DType.F64);
            _cpu.Dequantize(q, t);
            return t;
        }
        var z = Logits(new Random(seed), n, e, ties: false).Select(v => (float)v).ToArray();
        var x = Draw(n * c, 1);
        var residual = Draw(n * c, 1);

        double[] Run(MoeExpertWeights experts, DType dtype)
        {
            Tensor Rows(float[] v, int rows, int cols) => dtype == DType.F64
                ? _cpu.FromArray(v.Select(a => (double)a).ToArray(), rows, cols) : _cpu.FromArray(v, rows, cols);
            var output = Rows(residual, n, c);
            MoeDeviceOps.Run(_cpu, experts, Rows(z, n, e), Rows(x, n, c), output, k, normalize: true, DType.F64);
            return TestTensors.ToDoubles(_cpu, output);
        }

        var quantized = _cpu.PrepareMoeExperts(gate, up, down);
        Assert.True(quantized.IsQuantized);
        Assert.Equal(int4Group > 0, quantized.IsInt4);
        var values = _cpu.PrepareMoeExperts(gate.Select(Values).ToList(), up.Select(Values).ToList(), down.Select(Values).ToList());
        var expected = Run(values, DType.F64);
        Assert.Equal(expected, Run(quantized, DType.F64));
        NumericAssert.Close(expected, Run(quantized, DType.F32), 1e-5, $"seed {seed}: F32 rows over quantized experts");
    }

    /// <summary>
    /// Quantized experts the ops do not read are refused by name (the layer then routes on the host): FP8 weights, an input
    /// order (activation order), int8 beside int4, different group sizes among the gates; and floating-point experts take rows
    /// of their own dtype only, where quantized ones take any.
    /// </summary>
    [Fact]
    public void QuantizedExpertsTheOpsCannotReadAreRefused()
    {
        var rng = new Random(3);
        float[] Draw(int count) => Enumerable.Range(0, count).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        const int c = 16, f = 8;
        QuantizedWeight I8(int rows, int cols) => Int8Quantization.Quantize(_cpu, Draw(rows * cols), rows, cols);
        QuantizedWeight I4(int rows, int cols, int group) => Int4Quantization.Quantize(_cpu, Draw(rows * cols), rows, cols, group);
        var fp8 = Fp8Quantization.Quantize(_cpu, Draw(f * c), f, c);
        var ex = Assert.Throws<ArgumentException>(() => _cpu.PrepareMoeExperts([fp8], [I8(f, c)], [I8(c, f)]));
        Assert.Contains("FP8", ex.Message);
        var order = _cpu.FromArray(Enumerable.Range(0, c).Reverse().ToArray(), c);
        var ordered = I4(f, c, 8).WithInputOrder(order, order);
        ex = Assert.Throws<ArgumentException>(() => _cpu.PrepareMoeExperts([ordered], [I4(f, c, 8)], [I4(c, f, 8)]));
        Assert.Contains("input order", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => _cpu.PrepareMoeExperts([I4(f, c, 8)], [I8(f, c)], [I4(c, f, 8)]));
        Assert.Contains("expert 0's up", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => _cpu.PrepareMoeExperts([I4(f, c, 8), I4(f, c, 16)], [I4(f, c, 8), I4(f, c, 8)], [I4(c, f, 8), I4(c, f, 8)]));
        Assert.Contains("expert 1's gate", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => _cpu.PrepareMoeExperts([I4(f, c, 8)], [I4(f, c, 8)], [I8(c, f)]));
        Assert.Contains("quantized alike", ex.Message);
        var quantized = _cpu.PrepareMoeExperts([I8(f, c)], [I8(f, c)], [I8(c, f)]);
        Assert.True(quantized.TakesRows(DType.F32) && quantized.TakesRows(DType.F64));
        // A backend whose kernels take fewer row dtypes says so (CUDA: no F64), and the ops then refuse those rows by name.
        var narrow = new MoeExpertWeights([I8(f, c)], [I8(f, c)], [I8(c, f)], addresses: null, rowDTypes: [DType.F32]);
        Assert.False(narrow.TakesRows(DType.F64));
        ex = Assert.Throws<ArgumentException>(() => _cpu.MoeExpertSwiGlu(_cpu.Allocate(new Shape(1, c), DType.F64), narrow,
            _cpu.FromArray(new[] { 0, 1 }, 2), _cpu.FromArray(new[] { 0 }, 1), _cpu.Allocate(new Shape(1, f), DType.F64)));
        Assert.Contains("must be contiguous (N, 16) F32", ex.Message);
        var floats = _cpu.PrepareMoeExperts([_cpu.Allocate(new Shape(f, c), DType.F64)], [_cpu.Allocate(new Shape(f, c), DType.F64)], [_cpu.Allocate(new Shape(c, f), DType.F64)]);
        Assert.False(floats.TakesRows(DType.F32));
        ex = Assert.Throws<ArgumentException>(() => _cpu.MoeExpertSwiGlu(_cpu.Allocate(new Shape(1, c), DType.F32), floats,
            _cpu.FromArray(new[] { 0, 1 }, 2), _cpu.FromArray(new[] { 0 }, 1), _cpu.Allocate(new Shape(1, f), DType.F32)));
        Assert.Contains("F64", ex.Message);
    }

    /// <summary>
    /// The combine adds a row's slots in slot order, exactly: outputs 1, 1e16, -1e16 (weights 1, residual 0) sum to 0 in slot
    /// order ((1 + 1e16) rounds to 1e16 in F64) and to 1 in any order that adds the two large ones first. Tolerance 0.
    /// </summary>
    [Fact]
    public void CombineAddsTheSlotsInSlotOrder()
    {
        var y = _cpu.FromArray(new[] { 1.0, 1e16, -1e16, -1e16, 1e16, 1.0 }, 6, 1);       // (N k, C) = (2 x 3, 1)
        var output = _cpu.FromArray(new double[2], 2, 1);
        _cpu.MoeCombine(y, _cpu.FromArray(new[] { 1.0, 1, 1, 1, 1, 1 }, 2, 3), output);
        Assert.Equal(new[] { 0.0, 1.0 }, _cpu.ToArray<double>(output));
    }

    /// <summary>Bad input is refused by name: k above E, ids that name no expert, a shared expert without its gate's logits.</summary>
    [Fact]
    public void BadInputIsRefusedWithAClearMessage()
    {
        var logits = _cpu.Allocate(new Shape(3, 4), DType.F64);
        _cpu.Fill(logits, 0);
        var ex = Assert.Throws<ArgumentException>(() => _cpu.MoeRoute(logits, _cpu.Allocate(new Shape(3, 5), DType.I32), _cpu.Allocate(new Shape(3, 5), DType.F64), false));
        Assert.Contains("k (5", ex.Message);
        ex = Assert.Throws<ArgumentException>(() => _cpu.MoeAlign(_cpu.FromArray(new[] { 0, 9, 1, 2 }, 2, 2), _cpu.Allocate(new Shape(5), DType.I32), _cpu.Allocate(new Shape(4), DType.I32)));
        Assert.Contains("no expert of [0, 4)", ex.Message);
        var y = _cpu.Allocate(new Shape(4, 2), DType.F64);
        ex = Assert.Throws<ArgumentException>(() => _cpu.MoeCombine(y, _cpu.Allocate(new Shape(2, 2), DType.F64), _cpu.Allocate(new Shape(2, 2), DType.F64), shared: _cpu.Allocate(new Shape(2, 2), DType.F64)));
        Assert.Contains("together", ex.Message);
    }
}
