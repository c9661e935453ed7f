using Xunit;
using Tessera.Tensors;

namespace Tessera.Tests.Cuda;

/// <summary>Elementwise ops, softmax, cross-entropy, embedding, reductions and AdamW against f64 references.</summary>
[Collection("cuda")]
public sealed class CudaOpTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private static double Gelu(double x) => 0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

    private static double GeluGrad(double x)
    {
        double c = Math.Sqrt(2 / Math.PI), u = c * (x + 0.044715 * x * x * x), t = Math.Tanh(u);
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
    }

    private static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void ElementwiseOpsMatchReference(DType dtype)
    {
        int n = 3001;
        var (a, av) = Random(dtype, 3, n);
        var (b, bv) = Random(dtype, 3, n);
        var (d, dv) = Random(dtype, 1, n);
        double tol = Tolerance(dtype);

        var o = Poisoned(dtype, n);
        Gpu.Add(a, b, o);
        AssertClose(av.Zip(bv, (x, y) => x + y).ToArray(), Download(o), tol, "Add");

        Gpu.GeluForward(a, o);
        AssertClose(av.Select(Gelu).ToArray(), Download(o), tol, "GeluForward");
        Gpu.Fill(o, double.NaN);
        Gpu.GeluBackward(a, d, o);
        AssertClose(av.Select((x, i) => GeluGrad(x) * dv[i]).ToArray(), Download(o), tol, "GeluBackward");

        Gpu.SwiGluForward(a, b, o);
        AssertClose(av.Select((g, i) => g * Sigmoid(g) * bv[i]).ToArray(), Download(o), tol, "SwiGluForward");
        var dg = Poisoned(dtype, n); var du = Poisoned(dtype, n);
        Gpu.SwiGluBackward(a, b, d, dg, du);
        AssertClose(av.Select((g, i) => dv[i] * bv[i] * Sigmoid(g) * (1 + g * (1 - Sigmoid(g)))).ToArray(), Download(dg), tol, "SwiGluBackward dGate");
        AssertClose(av.Select((g, i) => dv[i] * g * Sigmoid(g)).ToArray(), Download(du), tol, "SwiGluBackward dUp");

        var (acc, accv) = Random(dtype, 1, n);
        Gpu.Accumulate(acc, a, -0.5);
        AssertClose(accv.Select((x, i) => x - 0.5 * av[i]).ToArray(), Download(acc), tol, "Accumulate");
        Gpu.Scale(b, 3.0);
        AssertClose(bv.Select(x => 3 * x).ToArray(), Download(b), tol, "Scale");
    }

    /// <summary>
    /// SwiGLU on the two halves of one (rows, 2F) gate/up product read in place, its gradients written into the halves of one
    /// (rows, 2F) buffer (the fused MLP's layout), against the f64 formulas on the stored inputs: F a multiple of the 16-byte
    /// vector (the vectorized path) and not (one element per thread), every output poisoned first. Tolerance as the contiguous
    /// ops' (the same fp32 arithmetic, rounded once to the dtype).
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 264)]
    [InlineData(DType.BF16, 264)]
    [InlineData(DType.BF16, 261)]
    [InlineData(DType.F16, 1032)]
    public void SwiGluOnTheHalvesOfOneProductMatchesReference(DType dtype, int f)
    {
        const int rows = 37;
        var (gu, guv) = Random(dtype, 3, rows, 2 * f);
        var (d, dv) = Random(dtype, 1, rows, f);
        double tol = Tolerance(dtype);
        double G(int r, int c) => guv[r * 2 * f + c];
        double U(int r, int c) => guv[r * 2 * f + f + c];
        var cells = Enumerable.Range(0, rows * f).Select(i => (R: i / f, C: i % f)).ToArray();

        var o = Poisoned(dtype, rows, f);
        Gpu.SwiGluForward(gu.Slice(1, 0, f), gu.Slice(1, f, f), o);
        AssertClose(cells.Select(x => G(x.R, x.C) * Sigmoid(G(x.R, x.C)) * U(x.R, x.C)).ToArray(), Download(o), tol, "SwiGluForward on halves");

        var dgu = Poisoned(dtype, rows, 2 * f);
        Gpu.SwiGluBackward(gu.Slice(1, 0, f), gu.Slice(1, f, f), d, dgu.Slice(1, 0, f), dgu.Slice(1, f, f));
        var got = Download(dgu);
        var expected = new double[rows * 2 * f];
        foreach (var (r, c) in cells)
        {
            double g = G(r, c), u = U(r, c), s = Sigmoid(g), dy = dv[r * f + c];
            expected[r * 2 * f + c] = dy * u * s * (1 + g * (1 - s));
            expected[r * 2 * f + f + c] = dy * g * s;
        }
        AssertClose(expected, got, tol, "SwiGluBackward into halves");
    }

    [Fact]
    public void AccumulateWidensBf16IntoF32()
    {
        var (acc, accv) = Random(DType.F32, 1, 777);
        var (x, xv) = Random(DType.BF16, 1, 777);
        Gpu.Accumulate(acc, x, 2.0);
        AssertClose(accv.Select((a, i) => a + 2 * xv[i]).ToArray(), Download(acc), 1e-6, "f32 += bf16");
    }

    [Theory]
    [InlineData(DType.F32, 1000)]
    [InlineData(DType.BF16, 5000)]
    public void SoftmaxMatchesReference(DType dtype, int v)
    {
        int rows = 7;
        var (x, xv) = Random(dtype, 8, rows, v);
        var o = Poisoned(dtype, rows, v);
        Gpu.Softmax(x, o);
        var expected = new double[rows * v];
        for (int r = 0; r < rows; r++)
        {
            double m = xv.Skip(r * v).Take(v).Max(), s = 0;
            for (int i = 0; i < v; i++) s += Math.Exp(xv[r * v + i] - m);
            for (int i = 0; i < v; i++) expected[r * v + i] = Math.Exp(xv[r * v + i] - m) / s;
        }
        AssertClose(expected, Download(o), Tolerance(dtype), "Softmax");
    }

    [Theory]
    [InlineData(DType.F32, false, 3000)]
    [InlineData(DType.F32, true, 3000)]
    [InlineData(DType.BF16, true, 3000)]
    [InlineData(DType.BF16, true, 50257)]   // GPT-2's vocabulary: each thread takes its 16-byte vectors two at a time
    [InlineData(DType.F32, false, 50257)]
    public void CrossEntropyLossAndGradient(DType dtype, bool aliasGradient, int v)
    {
        int rows = 9;
        var (logits, lv) = Random(dtype, 5, rows, v);
        var targets = Enumerable.Range(0, rows).Select(_ => Rng.Next(v)).ToArray();
        targets[3] = -1; // ignored row
        var t = UploadInts(targets, rows);
        var losses = Poisoned(DType.F32, rows);
        var dl = aliasGradient ? logits : Poisoned(dtype, rows, v);
        double scale = 1.0 / rows;
        Gpu.CrossEntropy(logits, t, losses, dl, scale);
        var el = new double[rows]; var eg = new double[rows * v];
        for (int r = 0; r < rows; r++)
        {
            if (targets[r] < 0) continue;
            double m = lv.Skip(r * v).Take(v).Max(), s = 0;
            for (int i = 0; i < v; i++) s += Math.Exp(lv[r * v + i] - m);
            el[r] = Math.Log(s) + m - lv[r * v + targets[r]];
            for (int i = 0; i < v; i++) eg[r * v + i] = (Math.Exp(lv[r * v + i] - m) / s - (i == targets[r] ? 1 : 0)) * scale;
        }
        AssertClose(el, Download(losses), 1e-5, "losses"); // losses are f32 from fp32 math in every dtype
        Assert.Equal(0.0, Download(losses)[3]);
        AssertClose(eg, Download(dl), Tolerance(dtype), "dLogits");
    }

    [Theory]
    [InlineData(DType.F32, 3000)]
    [InlineData(DType.BF16, 3000)]
    [InlineData(DType.BF16, 2999)]   // rows 16-byte aligned, a scalar tail after the 16-byte vectors
    [InlineData(DType.BF16, 2998)]   // odd-aligned stride: the scalar path
    public void CrossEntropyOnRowStridedViewMatchesF64AndLeavesPaddingAlone(DType dtype, int v)
    {
        // Padded logits (rows, v + pad) as the Transformer has them; the op sees the first v columns in place.
        int rows = 11, pad = v == 2998 ? 3 : 8 + 3000 - v;
        int width = v + pad;
        var (full, fv) = Random(dtype, 5, rows, width);
        var real = full.Slice(1, 0, v);
        var targets = Enumerable.Range(0, rows).Select(_ => Rng.Next(v)).ToArray();
        targets[2] = -1; // ignored row
        targets[4] = v - 1; // the last column: in the tail when v is not a multiple of 8
        var t = UploadInts(targets, rows);
        var losses = Poisoned(DType.F32, rows);
        double scale = 1.0 / rows;
        Gpu.CrossEntropy(real, t, losses, real, scale);
        var el = new double[rows]; var eg = (double[])fv.Clone();
        for (int r = 0; r < rows; r++)
        {
            var row = fv.Skip(r * width).Take(v).ToArray();
            for (int i = 0; i < v; i++) eg[r * width + i] = 0;
            if (targets[r] < 0) continue;
            double m = row.Max(), s = row.Sum(x => Math.Exp(x - m));
            el[r] = Math.Log(s) + m - row[targets[r]];
            for (int i = 0; i < v; i++) eg[r * width + i] = (Math.Exp(row[i] - m) / s - (i == targets[r] ? 1 : 0)) * scale;
        }
        AssertClose(el, Download(losses), 1e-5, "losses"); // f32 statistics: ~1e-6 relative on a log-sum-exp of 3000 terms
        var got = Download(full);
        bool IsPad(int i) => i % width >= v;
        AssertClose(eg.Where((_, i) => !IsPad(i)).ToArray(), got.Where((_, i) => !IsPad(i)).ToArray(), Tolerance(dtype), "dLogits in place");
        AssertClose(eg.Where((_, i) => IsPad(i)).ToArray(), got.Where((_, i) => IsPad(i)).ToArray(), 0, "padding columns are untouched");
    }

    [Theory]
    [InlineData(DType.F32, 24)]
    [InlineData(DType.BF16, 24)]    // rows of 48 bytes: the 16-byte kernels (packed BF16 atomics on sm_90)
    [InlineData(DType.BF16, 20)]    // rows of 40 bytes: the one-element kernels
    public void EmbeddingForwardAndBackward(DType dtype, int c)
    {
        int vocab = 50, n = 300;
        var (table, tv) = Random(dtype, 1, vocab, c);
        var ids = Enumerable.Range(0, n).Select(_ => Rng.Next(vocab)).ToArray();
        var idt = UploadInts(ids, n);
        var o = Poisoned(dtype, n, c);
        Gpu.EmbeddingForward(idt, table, o);
        var expected = new double[n * c];
        for (int r = 0; r < n; r++) for (int j = 0; j < c; j++) expected[r * c + j] = tv[ids[r] * c + j];
        AssertClose(expected, Download(o), 0, "gather is exact");

        var (pos, pv) = Random(dtype, 1, n, c);
        Gpu.EmbeddingForward(idt, table, pos, accumulate: true);
        AssertClose(expected.Select((e, i) => e + pv[i]).ToArray(), Download(pos), Tolerance(dtype), "accumulate");

        var (dout, dv) = Random(dtype, 1, n, c);
        var (dt, dtv) = Random(DType.F32 == dtype ? DType.F32 : dtype, 1, vocab, c);
        Gpu.EmbeddingBackward(idt, dout, dt);
        var eg = (double[])dtv.Clone();
        for (int r = 0; r < n; r++) for (int j = 0; j < c; j++) eg[ids[r] * c + j] += dv[r * c + j];
        // bf16 atomics round after every add (about 6 adds per row here): a few bf16 ulps.
        AssertClose(eg, Download(dt), dtype == DType.F32 ? 1e-5 : 2e-2, "EmbeddingBackward");
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void ReductionsMatchReference(DType dtype)
    {
        int rows = 1000, c = 77;
        var (x, xv) = Random(dtype, 1, rows, c);
        var r = Upload([0.25], DType.F32, 1);
        Gpu.Sum(x, r, 0.5, accumulate: true);
        Assert.Equal(0.25 + 0.5 * xv.Sum(), Download(r)[0], 1e-3); // |sum| ~ sqrt(77000)/sqrt(3) ~ 160; f32 result
        Gpu.Sum(x, r);
        AssertClose([xv.Sum()], Download(r), 1e-6, "Sum");
        Gpu.Fill(r, 1.0);
        Gpu.SumOfSquares(x, r);
        AssertClose([1 + xv.Sum(v => v * v)], Download(r), 1e-6, "SumOfSquares accumulates");

        var (sums, sv) = Random(dtype == DType.BF16 ? DType.F32 : dtype, 1, c);
        Gpu.SumRows(x, sums);
        var expected = (double[])sv.Clone();
        for (int i = 0; i < rows; i++) for (int j = 0; j < c; j++) expected[j] += xv[i * c + j];
        AssertClose(expected, Download(sums), 1e-5, "SumRows");
    }

    [Theory]
    [InlineData(DType.BF16, 1000, 768)]   // 16-byte column kernel: 96 column vectors, chunks of a warp's 32 (8 row lanes)
    [InlineData(DType.BF16, 333, 3072)]   // 384 column vectors: 12 chunks of 32
    [InlineData(DType.BF16, 700, 1040)]   // 130 column vectors (not a multiple of 32): one chunk of 130, one row lane
    [InlineData(DType.F32, 517, 200)]     // f32 vectors of 4: 50 column vectors, five row lanes
    [InlineData(DType.BF16, 20000, 768)]  // enough rows a thread for the eight-deep loads and a remainder (GPT-2's 768)
    [InlineData(DType.BF16, 6000, 3072)]  // the same at 3,072 columns (12 chunks of row groups)
    public void SumRowsAddsColumnSumsForWideRows(DType dtype, int rows, int c)
    {
        var (x, xv) = Random(dtype, 1, rows, c);
        var (sums, sv) = Random(DType.F32, 1, c);
        Gpu.SumRows(x, sums);
        var expected = (double[])sv.Clone();
        for (int i = 0; i < rows; i++) for (int j = 0; j < c; j++) expected[j] += xv[i * c + j];
        // f32 accumulation of <= 20,000 terms of size ~1 (sums ~140): ~1e-7 relative per add, inside 1e-5 of the whole
        AssertClose(expected, Download(sums), 1e-5, "SumRows");
    }

    [Theory]
    [InlineData(DType.F32, false, 5000)]   // four elements per thread
    [InlineData(DType.BF16, true, 5000)]
    [InlineData(DType.BF16, true, 4999)]   // not a multiple of 4: one element per thread
    public void AdamWMatchesReference(DType gradType, bool clip, int n)
    {
        var (p, pv) = Random(DType.F32, 1, n);
        var (g, gv) = Random(gradType, 0.1, n);
        var (m, mv) = Random(DType.F32, 0.01, n);
        var vInit = Enumerable.Range(0, n).Select(_ => Rng.NextDouble() * 1e-3).ToArray();
        var v = Upload(vInit, DType.F32, n);
        var vv = Stored(vInit, DType.F32);
        var step = new AdamWStep(1e-3, 0.9, 0.95, 1e-8, 0.1, 7, clip ? 0.5 : 0);
        double ss = gv.Sum(x => x * x);
        var sumsq = clip ? Upload([ss], DType.F32, 1) : null;
        var low = Poisoned(DType.BF16, n);
        Gpu.AdamW(p, g, m, v, step, sumsq, low);
        double factor = clip ? Math.Min(1, 0.5 / (Math.Sqrt(Stored([ss], DType.F32)[0]) + 1e-6)) : 1;
        var ep = new double[n]; var em = new double[n]; var ev = new double[n];
        for (int i = 0; i < n; i++)
        {
            double gr = gv[i] * factor;
            em[i] = 0.9 * mv[i] + 0.1 * gr;
            ev[i] = 0.95 * vv[i] + 0.05 * gr * gr;
            double mh = em[i] / (1 - Math.Pow(0.9, 7)), vh = ev[i] / (1 - Math.Pow(0.95, 7));
            ep[i] = pv[i] - 1e-3 * (mh / (Math.Sqrt(vh) + 1e-8) + 0.1 * pv[i]);
        }
        AssertClose(ep, Download(p), 1e-6, "parameters");
        AssertClose(em, Download(m), 1e-5, "m");
        AssertClose(ev, Download(v), 1e-5, "v");
        AssertClose(Stored(ep, DType.BF16), Download(low), 5e-3, "bf16 copy");
    }

    /// <summary>
    /// The GPU update repeats the CPU backend's operations one for one (same rounded constants, no fused multiply-adds),
    /// so on the same F32 inputs and the same sum of squares both backends give bitwise the same parameters and moments:
    /// what lets an offloaded run (host AdamW) follow the plain one (device AdamW) to float32 rounding of the gradients only.
    /// </summary>
    [Theory]
    [InlineData(false, 4000)]
    [InlineData(true, 4000)]
    [InlineData(true, 3999)]
    public void AdamWIsBitwiseTheCpuBackends(bool clip, int n)
    {
        var cpu = new Tessera.Tensors.Cpu.CpuBackend(2);
        var (p, pv) = Random(DType.F32, 1, n);
        var (g, gv) = Random(DType.F32, 0.1, n);
        var (m, mv) = Random(DType.F32, 0.01, n);
        var vInit = Enumerable.Range(0, n).Select(_ => Rng.NextDouble() * 1e-3).ToArray();
        var v = Upload(vInit, DType.F32, n);
        var step = new AdamWStep(3e-4, 0.9, 0.95, 1e-8, 0.1, 5, clip ? 0.5 : 0);
        double ss = gv.Sum(x => x * x);
        var sumsq = clip ? Upload([ss], DType.F32, 1) : null;
        Gpu.AdamW(p, g, m, v, step, sumsq);
        Tensor Host(double[] values)
        {
            var t = cpu.Allocate(new Shape(values.Length), DType.F32);
            cpu.CopyFromHost<float>(values.Select(x => (float)x).ToArray(), t);
            return t;
        }
        var cp = Host(pv); var cg = Host(gv); var cm = Host(mv); var cv = Host(vInit);
        cpu.AdamW(cp, cg, cm, cv, step, clip ? Host([ss]) : null);
        Assert.Equal(cpu.ToArray<float>(cp), Gpu.ToArray<float>(p));
        Assert.Equal(cpu.ToArray<float>(cm), Gpu.ToArray<float>(m));
        Assert.Equal(cpu.ToArray<float>(cv), Gpu.ToArray<float>(v));
    }
}
