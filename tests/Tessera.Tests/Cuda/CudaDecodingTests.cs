using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The decode path on the GPU: KV-cache ops at device-side positions, the matrix-vector kernels, the argmax, CUDA graph
/// recording and replay, and whole generations against the CPU. Tolerances: f32 1e-5 and bf16 1e-2 relative against
/// f64 references on the same rounded inputs (see <see cref="CudaTestBase.Tolerance"/>); position and index ops exact.
/// </summary>
[Collection("cuda")]
public sealed class CudaDecodingTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    private Tensor Positions(params int[] starts) => UploadInts(starts, starts.Length);

    private Tensor ToCpu(double[] values, params int[] dims) => TestTensors.FromDoubles(_cpu, values, DType.F64, dims);

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void RopeAtDevicePositionsMatchesTheCpu(DType dtype)
    {
        int b = 2, t = 3, h = 5, d = 64;
        var (x, xv) = Random(dtype, 2, b, t, h, d);
        int[] starts = [4, 70000];
        Gpu.Rope(x, Positions(starts), 500000.0);
        var reference = ToCpu(xv, b, t, h, d);
        _cpu.Rope(reference, _cpu.FromArray(starts, 2), 500000.0);
        AssertClose(TestTensors.ToDoubles(_cpu, reference), Download(x), Tolerance(dtype), "Rope at device positions");
    }

    /// <summary>Cached attention per kernel: split-K decode (T = 1 and 16, capacity 1024), the tiled forward (T = 20), the scalar kernel (F32).</summary>
    [Theory]
    [InlineData(DType.BF16, 1, 64, 1024)]
    [InlineData(DType.BF16, 16, 128, 1024)]
    [InlineData(DType.BF16, 20, 64, 300)]
    [InlineData(DType.F32, 2, 64, 300)]
    public void CachedAttentionAtDevicePositionsMatchesTheCpu(DType dtype, int t, int d, int capacity)
    {
        AssertCachedAttentionMatchesTheCpu(dtype, t, d, h: 8, kh: 2, capacity, [capacity / 3, capacity - t - 5],
            dtype == DType.F32 ? 1e-5 : 2e-2, $"cached attention T={t} D={d} S={capacity}");
    }

    /// <summary>Random q (B, T, H, D) and a random (B, capacity, 2K, D) cache through AttentionForwardCached on the GPU (output
    /// poisoned first) against the CPU backend's f64 result on the same rounded inputs.</summary>
    private void AssertCachedAttentionMatchesTheCpu(DType dtype, int t, int d, int h, int kh, int capacity, int[] starts, double tolerance, string label)
    {
        int b = starts.Length;
        var (q, qv) = Random(dtype, 1.5, b, t, h, d);
        var (kv, kvv) = Random(dtype, 1.5, b, capacity, 2 * kh, d);
        var output = Poisoned(dtype, b, t, h, d);
        Gpu.AttentionForwardCached(q, kv.Slice(2, 0, kh), kv.Slice(2, kh, kh), Positions(starts), output, 1 / Math.Sqrt(d));
        var cpuKv = ToCpu(kvv, b, capacity, 2 * kh, d);
        var expected = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        _cpu.AttentionForwardCached(ToCpu(qv, b, t, h, d), cpuKv.Slice(2, 0, kh), cpuKv.Slice(2, kh, kh), _cpu.FromArray(starts, b), expected, 1 / Math.Sqrt(d));
        AssertClose(TestTensors.ToDoubles(_cpu, expected), Download(output), tolerance, label);
    }

    /// <summary>
    /// The grouped decode kernel (one CTA per kv head and split; rows = H / K * T of 4, 8, 16 pick its 1, 2, 4 rows per warp)
    /// against the CPU: Llama 1B's 32 / 8 heads, a 3-key sequence beside a 5000-key one in a cache of 8192 (most of the first
    /// sequence's splits are empty, the second's take several 64-key chunks each), and a length that ends inside a chunk.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 1, 64, 3, 5000)]
    [InlineData(DType.BF16, 2, 64, 700, 8000)]
    [InlineData(DType.F16, 4, 128, 1234, 77)]
    [InlineData(DType.BF16, 1, 128, 8190, 4097)]
    public void GroupedDecodeAttentionMatchesTheCpu(DType dtype, int t, int d, int start0, int start1)
    {
        AssertCachedAttentionMatchesTheCpu(dtype, t, d, h: 32, kh: 8, capacity: 8192, [start0, start1], 2e-2,
            $"grouped decode T={t} D={d} starts {start0}, {start1}");
    }

    /// <summary>The fused rope + KV append against the CPU's Rope then CopyAtPositions: the rotated q and k heads in place, and
    /// the whole cache (rotated k and plain v at each sequence's positions, every other row untouched).</summary>
    [Theory]
    [InlineData(DType.BF16, 1)]
    [InlineData(DType.F32, 3)]
    public void RopeAndAppendMatchesRopeThenCopyOnTheCpu(DType dtype, int t)
    {
        int b = 2, h = 8, kh = 2, d = 64, capacity = 40;
        int[] starts = [5, capacity - t];
        var (qkv, qkvv) = Random(dtype, 1, b, t, h + 2 * kh, d);
        var (cache, cachev) = Random(dtype, 1, b, capacity, 2 * kh, d);
        Gpu.RopeAndAppend(qkv, h, cache, Positions(starts), 500000.0);
        var cpuQkv = ToCpu(qkvv, b, t, h + 2 * kh, d);
        var cpuCache = ToCpu(cachev, b, capacity, 2 * kh, d);
        _cpu.RopeAndAppend(cpuQkv, h, cpuCache, _cpu.FromArray(starts, 2), 500000.0);
        AssertClose(TestTensors.ToDoubles(_cpu, cpuQkv), Download(qkv), Tolerance(dtype), "RopeAndAppend: qkv");
        AssertClose(TestTensors.ToDoubles(_cpu, cpuCache), Download(cache), Tolerance(dtype), "RopeAndAppend: cache");
    }

    /// <summary>
    /// The fused decode QKV op (norm, product, rotation of q and k, append of k and v; one kernel for at most 4 rows): bit for
    /// bit the unfused GPU ops it replaces (the same per-row arithmetic in the same order), and within the dtype's tolerance
    /// of the CPU in f64. Six rows take the composed path.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 1, 1, 1024, true, false)]   // a Llama decode step: one sequence, one token
    [InlineData(DType.BF16, 2, 2, 1024, true, true)]    // M = 4: two sequences of two tokens, with bias
    [InlineData(DType.F32, 3, 1, 1000, false, true)]    // no norm; K not a whole number of 16-byte loads per lane
    [InlineData(DType.F16, 1, 3, 4096, true, false)]    // two units of loads per row
    [InlineData(DType.BF16, 2, 3, 1024, true, true)]    // M = 6: cuBLASLt, then RopeAndAppend
    public void FusedQkvRopeAppendMatchesTheUnfusedOps(DType dtype, int b, int t, int c, bool withNorm, bool withBias)
    {
        const double theta = 500000.0, eps = 1e-5;
        int h = 8, kh = 2, d = 64, capacity = 40, rows = (h + 2 * kh) * d;
        int[] starts = b switch { 1 => [7], 2 => [3, capacity - t], _ => [0, 11, capacity - t] };
        var (x, xv) = Random(dtype, 1, b * t, c);
        var (w, wv) = Random(dtype, 0.1, rows, c);
        var (bias, bv) = Random(dtype, 0.5, rows);
        var (nw, nwv) = Random(dtype, 1, c);
        var cachev = Stored(Enumerable.Range(0, b * capacity * 2 * kh * d).Select(_ => Rng.NextDouble() * 2 - 1).ToArray(), dtype);
        RmsNormPrologue? norm = withNorm ? new RmsNormPrologue(nw, eps) : null;

        var qkv = Poisoned(dtype, b, t, h + 2 * kh, d);
        var cache = Upload(cachev, dtype, b, capacity, 2 * kh, d);
        Gpu.MatMulRopeAppend(x, norm, w, withBias ? bias : null, qkv, h, cache, Positions(starts), theta);

        var qkv2 = Poisoned(dtype, b, t, h + 2 * kh, d);
        var cache2 = Upload(cachev, dtype, b, capacity, 2 * kh, d);
        var flat = qkv2.Reshape(b * t, rows);
        if (norm is { } r) Gpu.RmsNormMatMul(x, r, w, flat, withBias ? bias : null);
        else Gpu.MatMul(x, w, flat, transposeB: true, bias: withBias ? bias : null);
        Gpu.RopeAndAppend(qkv2, h, cache2, Positions(starts), theta);
        Assert.Equal(Download(qkv2), Download(qkv));
        Assert.Equal(Download(cache2), Download(cache));

        var cpuQkv = _cpu.Allocate(new Shape(b, t, h + 2 * kh, d), DType.F64);
        var cpuCache = ToCpu(cachev, b, capacity, 2 * kh, d);
        _cpu.MatMulRopeAppend(ToCpu(xv, b * t, c), withNorm ? new RmsNormPrologue(ToCpu(nwv, c), eps) : null, ToCpu(wv, rows, c),
            withBias ? ToCpu(bv, rows) : null, cpuQkv, h, cpuCache, _cpu.FromArray(starts, b), theta);
        AssertClose(TestTensors.ToDoubles(_cpu, cpuQkv), Download(qkv), Tolerance(dtype), $"MatMulRopeAppend {dtype} B={b} T={t}: qkv");
        AssertClose(TestTensors.ToDoubles(_cpu, cpuCache), Download(cache), Tolerance(dtype), $"MatMulRopeAppend {dtype} B={b} T={t}: cache");
    }

    /// <summary>
    /// The inference scope's rule: a matrix-vector product reads weights before waiting on the kernel in front of it only
    /// inside a scope and only when that kernel was launched in the scope too; the result is the same bit for bit.
    /// </summary>
    [Fact]
    public void InferenceScopeReadsWeightsEarlyOnlyAfterALaunchInsideIt()
    {
        if (!Gpu.Options.EarlyWeightLoads) Assert.Skip("the shared backend's options turn early weight loads off");
        var (x, _) = Random(DType.BF16, 1, 1, 2048);
        var (w, _) = Random(DType.BF16, 0.1, 3000, 2048);
        var outside = Poisoned(DType.BF16, 1, 3000);
        var inside = Poisoned(DType.BF16, 1, 3000);
        Assert.False(Gpu.EarlyWeights);
        Gpu.MatMul(x, w, outside, transposeB: true);
        using (Gpu.EnterInference())
        {
            Assert.False(Gpu.EarlyWeights);                       // the kernel in front was launched before the scope
            Gpu.Fill(inside, 0.5);
            Assert.True(Gpu.EarlyWeights);
            using (Gpu.EnterInference()) Assert.True(Gpu.EarlyWeights);
            Assert.True(Gpu.EarlyWeights);                        // the inner scope's end leaves the outer one open
            Gpu.MatMul(x, w, inside, transposeB: true);
        }
        Assert.False(Gpu.EarlyWeights);
        Assert.Equal(Download(outside), Download(inside));
    }

    /// <summary>
    /// A decode step's attention behind the op that appends its keys, inside an inference scope as a recorded step runs it:
    /// the fused QKV product (norm, product, RoPE, append; at most 4 rows) lets the grouped decode attention start under
    /// programmatic dependent launch. Llama 1B's 32 / 8 heads over a 2,048-position cache (where the grouped kernel is the
    /// default; <paramref name="grouped"/> false forces the per-query-head split kernel, also launched dependent), two
    /// sequences of 1 or 2 new rows at 1,900 and 37 cached positions, or one of 4 rows. Checked: the same step on a
    /// profiled backend (no programmatic launch) ran the fused op and the chosen kernel and gives the same bits;
    /// and the CPU's f64 attention over its own appended cache, with q and the cache rounded to bf16 as the GPU stores them,
    /// is within 2e-2 of the largest output: the output's bf16 rounding (2^-9 relative), plus q and k values a bf16 step
    /// apart where the GPU's fp32 sums and the CPU's f64 ones round to either side of a boundary, which moves scores and
    /// softmax weights by about 2^-8 relative.
    /// </summary>
    [Theory]
    [InlineData(1, true)]
    [InlineData(2, true)]
    [InlineData(4, true)]
    [InlineData(1, false)]
    [InlineData(4, false)]
    public void DecodeAttentionBehindTheAppendInADecodeStepMatchesTheCpu(int t, bool grouped)
    {
        var options = Gpu.Options with { DecodeAttention = grouped ? Tessera.Cuda.DecodeAttentionKernel.Grouped : Tessera.Cuda.DecodeAttentionKernel.PerQueryHead };
        const double theta = 500000.0, eps = 1e-5;
        int b = t == 4 ? 1 : 2, h = 32, kh = 8, d = 64, c = 256, capacity = 2048, rows = (h + 2 * kh) * d;
        int[] starts = b == 2 ? [1900, 37] : [1900];
        double[] Values(int count, double scale) => Stored(Enumerable.Range(0, count).Select(_ => (Rng.NextDouble() * 2 - 1) * scale).ToArray(), DType.BF16);
        double[] xv = Values(b * t * c, 1), wv = Values(rows * c, 0.1), nwv = Values(c, 1), cachev = Values(b * capacity * 2 * kh * d, 1);
        double[] Step(Tessera.Cuda.CudaBackend backend)
        {
            var cache = Upload(backend, cachev, DType.BF16, b, capacity, 2 * kh, d);
            var positions = backend.Allocate(new Shape(b), DType.I32);
            backend.CopyFromHost<int>(starts, positions);
            var qkv = backend.Allocate(new Shape(b, t, h + 2 * kh, d), DType.BF16);
            var output = backend.Allocate(new Shape(b, t, h, d), DType.BF16);
            backend.Fill(output, double.NaN);
            var x = Upload(backend, xv, DType.BF16, b * t, c);
            var norm = new RmsNormPrologue(Upload(backend, nwv, DType.BF16, c), eps);
            var w = Upload(backend, wv, DType.BF16, rows, c);
            using (backend.EnterInference())
            {
                backend.Fill(qkv, 0);                                               // a launch in the scope, as a step's first
                backend.MatMulRopeAppend(x, norm, w, null, qkv, h, cache, positions, theta);
                Assert.True(backend.EarlyWeights || !backend.Options.EarlyWeightLoads, "the attention is not launched as a decode step's");
                backend.AttentionForwardCached(qkv.Slice(2, 0, h), cache.Slice(2, 0, kh), cache.Slice(2, kh, kh), positions, output, 1 / Math.Sqrt(d));
            }
            return Download(backend, output);
        }
        double[] actual;
        using (var backend = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, options))
            actual = Step(backend);
        using (var profiled = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, options with { ProfileOps = true }))
        {
            Assert.Equal(actual, Step(profiled));
            var kernels = profiled.Profiler!.Totals().Select(r => r.Name).ToList();
            Assert.Contains($"gemv_stream_rope_bf16_m{b * t}", kernels);
            Assert.Contains(kernels, k => k.StartsWith(grouped ? "flash_decode_gqa_bf16_d64_r" : "flash_decode_bf16_d64", StringComparison.Ordinal));
        }

        var cpuQkv = _cpu.Allocate(new Shape(b, t, h + 2 * kh, d), DType.F64);
        var cpuCache = ToCpu(cachev, b, capacity, 2 * kh, d);
        var cpuStarts = _cpu.FromArray(starts, b);
        _cpu.MatMulRopeAppend(ToCpu(xv, b * t, c), new RmsNormPrologue(ToCpu(nwv, c), eps), ToCpu(wv, rows, c), null, cpuQkv, h, cpuCache, cpuStarts, theta);
        var roundedQkv = ToCpu(Stored(TestTensors.ToDoubles(_cpu, cpuQkv), DType.BF16), b, t, h + 2 * kh, d);
        var roundedCache = ToCpu(Stored(TestTensors.ToDoubles(_cpu, cpuCache), DType.BF16), b, capacity, 2 * kh, d);
        var expected = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        _cpu.AttentionForwardCached(roundedQkv.Slice(2, 0, h), roundedCache.Slice(2, 0, kh), roundedCache.Slice(2, kh, kh), cpuStarts, expected, 1 / Math.Sqrt(d));
        AssertClose(TestTensors.ToDoubles(_cpu, expected), actual, 2e-2, $"decode attention behind the append, B={b} T={t} grouped={grouped}");
    }

    [Fact]
    public void CopyAtPositionsFillPositionsAndIncrementAreExact()
    {
        int b = 2, t = 3, r = 4, d = 16, capacity = 10;
        var (src, sv) = Random(DType.BF16, 1, b, t, 2 * r, d);
        var cache = Gpu.Allocate(new Shape(b, capacity, r, d), DType.BF16);
        Gpu.Fill(cache, -7);
        var starts = Positions(2, 6);
        Gpu.CopyAtPositions(src.Slice(2, r, r), cache, starts);    // a strided source: the second half of the heads
        var got = Download(cache);
        for (int i = 0; i < b; i++)
            for (int p = 0; p < capacity; p++)
                for (int hh = 0; hh < r; hh++)
                    for (int e = 0; e < d; e++)
                    {
                        int start = i == 0 ? 2 : 6;
                        double expected = p >= start && p < start + t ? sv[(((i * t) + p - start) * 2 * r + r + hh) * d + e] : -7;
                        Assert.Equal(expected, got[((i * capacity + p) * r + hh) * d + e]);
                    }
        var ids = Gpu.Allocate(new Shape(b, t), DType.I32);
        Gpu.FillPositions(starts, ids);
        Assert.Equal(new[] { 2, 3, 4, 6, 7, 8 }, Gpu.ToArray<int>(ids));
        Gpu.Increment(starts, 5);
        Assert.Equal(new[] { 7, 11 }, Gpu.ToArray<int>(starts));
    }

    [Theory]
    [InlineData(DType.BF16, 128256)]
    [InlineData(DType.F32, 1003)]
    public void ArgMaxMatchesTheHostRuleOnStridedRows(DType dtype, int v)
    {
        int n = 3, ld = v + 24;
        var values = Stored(Enumerable.Range(0, n * ld).Select(_ => Rng.NextDouble() * 8 - 4).ToArray(), dtype);
        // Ties: row 1 has its maximum twice, row 2 a maximum in the padding columns the view must not see.
        values[1 * ld + 17] = 100; values[1 * ld + v - 1] = 100;
        values[2 * ld + v + 3] = 1000; values[2 * ld + 5] = 50;
        var xt = Upload(values, dtype, n, ld);
        var indices = Gpu.Allocate(new Shape(n), DType.I32);
        Gpu.ArgMax(xt.Slice(1, 0, v), indices);
        var expected = Enumerable.Range(0, n).Select(r => Sampler.ArgMax(values.Skip(r * ld).Take(v).Select(z => (float)z).ToArray())).ToArray();
        Assert.Equal(expected, Gpu.ToArray<int>(indices));
        Assert.Equal(17, expected[1]);
    }

    /// <summary>The matrix-vector kernels: M = 1..4 rows, with bias and with beta = 1 (the residual accumulation).</summary>
    [Theory]
    [InlineData(DType.BF16, 1, 2048, 3072, false, 0.0)]
    [InlineData(DType.BF16, 4, 8192, 2048, true, 1.0)]
    [InlineData(DType.F32, 3, 768, 2304, true, 0.0)]
    [InlineData(DType.F16, 2, 512, 1000, false, 1.0)]
    [InlineData(DType.BF16, 1, 4096, 5, true, 1.0)]     // fewer rows than warps: most of the grid has none
    public void MatrixVectorProductsMatchTheReference(DType dtype, int m, int k, int n, bool withBias, double beta)
    {
        var (x, xv) = Random(dtype, 1, m, k);
        var (w, wv) = Random(dtype, 1, n, k);
        var (bias, bv) = Random(dtype, 1, n);
        var (y, yv) = Random(dtype, 1, m, n);
        Gpu.MatMul(x, w, y, transposeB: true, beta: beta, bias: withBias ? bias : null);
        var expected = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int e = 0; e < k; e++) s += xv[i * k + e] * wv[j * k + e];
                expected[i * n + j] = s + (withBias ? bv[j] : 0) + beta * yv[i * n + j];
            }
        AssertClose(expected, Download(y), Tolerance(dtype), $"gemv {dtype} M={m} K={k} N={n}");
    }

    /// <summary>The fused gate/up kernel (M &lt;= 4) and the composed path (M = 9) against SiLU(x Wg^T + bg) * (x Wu^T + bu).</summary>
    [Theory]
    [InlineData(DType.BF16, 1, 2048, 1024, false)]
    [InlineData(DType.F32, 4, 256, 300, true)]
    [InlineData(DType.BF16, 2, 8192, 300, true)]   // four units of loads per row
    [InlineData(DType.BF16, 9, 512, 200, true)]
    public void FusedSwiGluProductMatchesTheReference(DType dtype, int m, int k, int f, bool withBias)
    {
        var (x, xv) = Random(dtype, 1, m, k);
        var (wg, gv) = Random(dtype, 0.2, f, k);
        var (wu, uv) = Random(dtype, 0.2, f, k);
        var (bg, bgv) = Random(dtype, 1, f);
        var (bu, buv) = Random(dtype, 1, f);
        var output = Poisoned(dtype, m, f);
        Gpu.MatMulSwiGlu(x, wg, wu, output, withBias ? bg : null, withBias ? bu : null);
        var expected = new double[m * f];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < f; j++)
            {
                double g = withBias ? bgv[j] : 0, u = withBias ? buv[j] : 0;
                for (int e = 0; e < k; e++) { g += xv[i * k + e] * gv[j * k + e]; u += xv[i * k + e] * uv[j * k + e]; }
                expected[i * f + j] = g / (1 + Math.Exp(-g)) * u;
            }
        AssertClose(expected, Download(output), Tolerance(dtype), $"MatMulSwiGlu {dtype} M={m} K={k} F={f}");
    }

    /// <summary>
    /// Above 4 rows (serving's batches), gate and up weights adjacent in one storage (as the parameter arena lays them out)
    /// run as one product over [Wg; Wu] and SwiGLU on its halves: the same values as the reference.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 64, 512, 200)]
    [InlineData(DType.F32, 9, 256, 72)]
    public void StackedGateAndUpProductMatchesTheReference(DType dtype, int m, int k, int f)
    {
        var (x, xv) = Random(dtype, 1, m, k);
        var (w, wv) = Random(dtype, 0.2, 2 * f, k);                  // [Wg; Wu] in one storage
        var output = Poisoned(dtype, m, f);
        Gpu.MatMulSwiGlu(x, w.Slice(0, 0, f), w.Slice(0, f, f), output);
        var expected = new double[m * f];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < f; j++)
            {
                double g = 0, u = 0;
                for (int e = 0; e < k; e++) { g += xv[i * k + e] * wv[j * k + e]; u += xv[i * k + e] * wv[(f + j) * k + e]; }
                expected[i * f + j] = g / (1 + Math.Exp(-g)) * u;
            }
        AssertClose(expected, Download(output), Tolerance(dtype), $"stacked MatMulSwiGlu {dtype} M={m} K={k} F={f}");
    }

    [Fact]
    public void RecordedGraphReplaysDevicePositionWorkAndRefusesHostTransfers()
    {
        var counter = Positions(0);
        var ids = Gpu.Allocate(new Shape(1, 4), DType.I32);
        var history = Gpu.Allocate(new Shape(1, 8, 1, 4), DType.F32);
        Gpu.Fill(history, -1);
        var row = Gpu.Allocate(new Shape(1, 1, 1, 4), DType.F32);
        Gpu.Fill(row, 3);
        void Body()
        {
            Gpu.CopyAtPositions(row, history, counter);
            Gpu.Increment(counter, 1);
            Gpu.FillPositions(counter, ids);
        }
        Body();                                                       // eager: position 0
        using var graph = Gpu.Capture(Body);
        Assert.NotNull(graph);
        Assert.Equal(new[] { 1 }, Gpu.ToArray<int>(counter));         // recording ran nothing
        for (int i = 0; i < 4; i++) graph!.Replay();                  // positions 1..4
        Assert.Equal(new[] { 5 }, Gpu.ToArray<int>(counter));
        Assert.Equal(new[] { 5, 6, 7, 8 }, Gpu.ToArray<int>(ids));
        var h = Download(history);
        for (int p = 0; p < 8; p++) Assert.Equal(p < 5 ? 3.0 : -1.0, h[p * 4]);
        var e = Assert.Throws<InvalidOperationException>(() => Gpu.Capture(() => Gpu.ToArray<int>(counter)));
        Assert.Contains("CopyToHost", e.Message);
        Assert.Equal(new[] { 5 }, Gpu.ToArray<int>(counter));         // the stream works after a refused recording
    }

    /// <summary>
    /// Greedy generation on the GPU (F32: every op within 1e-5 of the CPU's) picks the CPU reference's tokens, with the
    /// decode step recorded into a graph and without; in BF16 the recorded and the eager decode agree token for token
    /// (the same kernels on the same inputs).
    /// </summary>
    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    [InlineData("qwen3-debug")]   // the unfused decode (product, q/k norms, RoPE, append) recorded into a graph
    [InlineData("gemma3-debug")]  // post-norms, GeGLU, per-layer windows and RoPE bases
    [InlineData("gemma2-debug")]  // attention and final-logit soft caps
    public void GreedyGenerationOnTheGpuMatchesTheCpuWithAndWithoutAGraph(string preset)
    {
        var config = ModelPresets.Get(preset);
        var onCpu = new Transformer(config, _cpu, DType.F32);
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, onCpu.Parameters, new Random(9));
        var weights = _cpu.ToArray<float>(onCpu.Parameters.Values);
        var onGpu = new Transformer(config, Gpu, DType.F32);
        Gpu.CopyFromHost<float>(weights, onGpu.Parameters.Values);
        int[] prompt = [5, 1, 4, 1, 5, 9, 2, 6];
        int count = config.MaxSequenceLength - prompt.Length - 1;
        var expected = TextGeneratorTests.Reference(onCpu, _cpu, prompt, count, SamplingOptions.Greedy);
        var generator = new TextGenerator(onGpu);
        var recorded = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count }).ToList();
        Assert.True(generator.LastRunRecorded, "the decode step should replay a CUDA graph");
        var eager = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = count, CaptureGraph = false }).ToList();
        Assert.False(generator.LastRunRecorded);
        Assert.Equal(expected, recorded);
        Assert.Equal(expected, eager);

        var bf16 = new Transformer(config, Gpu, DType.BF16);
        Gpu.CopyFromHost<float>(weights, bf16.Parameters.Masters!);
        bf16.Parameters.SyncValuesFromMasters();
        var g16 = new TextGenerator(bf16);
        var r16 = g16.Generate(prompt, new GenerationOptions { MaxNewTokens = count }).ToList();
        var e16 = g16.Generate(prompt, new GenerationOptions { MaxNewTokens = count, CaptureGraph = false }).ToList();
        Assert.Equal(e16, r16);
    }

    /// <summary>
    /// A recorded decode step promises its backend the longest cache worth promising (<c>IInferenceScope.CacheBound</c>):
    /// the CUDA backend decodes a 4,096-position cache with the per-query-head split kernel while it holds fewer than
    /// 1,536 positions and with the grouped one from there, and the step records again as the cache passes 1,535. Checked:
    /// the bounds and the kernels named for them; then a BF16 Llama of heads of 64 (8 query heads, 2 kv heads), a
    /// 1,500-token prompt (seed 49) and 60 greedy tokens: two recordings (at 1,502 positions, bound 1,535; at 1,536, bound
    /// 4,096), and the recorded decode and the eager one, which promises the same bounds, agree token for token (the same
    /// kernels on the same inputs). A forced kernel never asks to record again.
    /// </summary>
    [Fact]
    public void RecordedDecodeRecordsAgainAsTheCachePassesItsBound()
    {
        Assert.Equal(1535, Gpu.CacheBound(1502, 4096));
        Assert.Equal(4096, Gpu.CacheBound(1536, 4096));
        Assert.Equal(1000, Gpu.CacheBound(900, 1000));
        Assert.StartsWith("flash_decode_bf16_d64", Gpu.FlashDecodeKernel(DType.BF16, 64, 4, Gpu.CacheBound(1502, 4096)), StringComparison.Ordinal);
        Assert.StartsWith("flash_decode_gqa_bf16_d64", Gpu.FlashDecodeKernel(DType.BF16, 64, 4, Gpu.CacheBound(1536, 4096)), StringComparison.Ordinal);
        using (var forced = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { DecodeAttention = Tessera.Cuda.DecodeAttentionKernel.Grouped }))
            Assert.Equal(4096, forced.CacheBound(1502, 4096));

        var config = ModelPresets.Get("llama-debug") with { MaxSequenceLength = 4096, Layers = 1, Embedding = 512, Heads = 8, KvHeads = 2, Hidden = 512 };
        var model = new Transformer(config, Gpu, DType.BF16);
        var cpu = new Transformer(config, _cpu, DType.F32);
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, cpu.Parameters, new Random(49));
        Gpu.CopyFromHost<float>(_cpu.ToArray<float>(cpu.Parameters.Values), model.Parameters.Masters!);
        model.Parameters.SyncValuesFromMasters();
        var random = new Random(49);
        int[] prompt = Enumerable.Range(0, 1500).Select(_ => random.Next(config.VocabSize)).ToArray();
        var generator = new TextGenerator(model);
        var recorded = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 60 }).ToList();
        Assert.True(generator.LastRunRecorded, "the decode step should replay a CUDA graph");
        Assert.Equal(2, generator.LastRunRecordings);
        var eager = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 60, CaptureGraph = false }).ToList();
        Assert.Equal(60, recorded.Count);
        Assert.Equal(eager, recorded);
    }

    /// <summary>
    /// A decode step's attention with the output product and the residual add in one launch (<c>FusedDecodeAttentionOutput</c>,
    /// flash_decode_out_*) against the two ops it replaces on the fixture's backend (AttentionForwardCached, then the product
    /// adding into the target with the bias): llama-1b's layer (32 / 8 heads of 64, 2,048 rows) over a cache whose capacity
    /// (2,048) passes the grouped decode's threshold, so the fused op declines until an inference scope promises 1,535
    /// positions; llama-8b's (heads of 128, 4,096 rows: segments shrunk to fit shared memory) for two sequences of different
    /// lengths with a bias; F16 with 3 query heads a kv head and a window of 16 (a key more or less moves an output by about
    /// 1/16). Tolerance: relative error 1e-2 (both paths round the attention output and the sum once; the sums differ in
    /// order only); the residual is about a fifth of the product (uniform in +-0.02), so a residual left out fails too. A
    /// second call and a recorded graph's replay give the first call's bits (the kv heads' partial sums are added in a fixed
    /// order, and every launch leaves its counters zero).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 32, 8, 64, 2048, 2048, 0, false, new[] { 699 })]
    [InlineData(DType.BF16, 32, 8, 128, 4096, 1535, 0, true, new[] { 300, 1534 })]
    [InlineData(DType.F16, 12, 4, 64, 768, 1024, 16, true, new[] { 900 })]
    public void FusedDecodeAttentionOutputMatchesTheTwoOps(DType dtype, int h, int kh, int d, int c, int capacity, int window, bool bias, int[] starts)
    {
        using var fused = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedDecodeAttentionOutput = true });
        var inputs = new FusedAttentionOutputCase(this, dtype, h, kh, d, c, capacity, window, bias, starts);
        if (capacity >= 1536)
            Assert.False(inputs.Run(fused, Upload(fused, inputs.Residual, dtype, starts.Length, c)),
                "a cache of 2,048 positions, none promised, is too long for the fused op");
        using var scope = fused.EnterInference(capacity >= 1536 ? 1535 : int.MaxValue);
        var first = inputs.AssertMatches(fused);
        var y2 = Upload(fused, inputs.Residual, dtype, starts.Length, c);
        Assert.True(inputs.Run(fused, y2));
        Assert.Equal(first, Download(fused, y2));
        var y3 = Upload(fused, inputs.Residual, dtype, starts.Length, c);
        using (var graph = fused.Capture(() => inputs.Run(fused, y3)))
        {
            Assert.NotNull(graph);
            graph!.Replay();
        }
        Assert.Equal(first, Download(fused, y3));
    }

    /// <summary>
    /// One backend running the fused attention output at two shapes in turn (two sequences and 1,024 output rows, then one
    /// sequence and 512): each against the two ops (1e-2, as above). The second call's segment counters and partial sums
    /// must not inherit the first's (a counter left at another shape's value would drop the residual add).
    /// </summary>
    [Fact]
    public void FusedDecodeAttentionOutputServesTwoShapesInTurn()
    {
        using var fused = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedDecodeAttentionOutput = true });
        new FusedAttentionOutputCase(this, DType.BF16, 16, 4, 64, 1024, 1024, 0, true, [400, 800]).AssertMatches(fused);
        new FusedAttentionOutputCase(this, DType.BF16, 8, 2, 64, 512, 600, 0, false, [500]).AssertMatches(fused);
        new FusedAttentionOutputCase(this, DType.BF16, 16, 4, 64, 1024, 1024, 0, true, [100, 1000]).AssertMatches(fused);
    }

    /// <summary>
    /// Short outputs, where the backend's rule gives clusters of fewer CTAs than 4 or pads the segments to a whole cluster
    /// (8 query heads over 2 kv heads, one sequence, rows of 8: 8 output rows in one segment, a cluster of 1; 16 in 2; 24 in
    /// 3; 40 in 5 segments padded to 8, whose 3 pad segments hold no rows but share their cluster's attention) over 3 keys,
    /// so a cluster of 4 has a rank without keys: each against the two ops (1e-2, as above).
    /// </summary>
    [Theory]
    [InlineData(8)]
    [InlineData(16)]
    [InlineData(24)]
    [InlineData(40)]
    public void FusedDecodeAttentionOutputServesShortOutputsInSmallOrPaddedClusters(int c)
    {
        using var fused = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedDecodeAttentionOutput = true });
        new FusedAttentionOutputCase(this, DType.BF16, 8, 2, 64, c, 600, 0, true, [2]).AssertMatches(fused);
    }

    /// <summary>Random inputs of the fused attention output, the two ops' result on the fixture's backend, and the fused op
    /// on another backend checked against it.</summary>
    private sealed class FusedAttentionOutputCase
    {
        private readonly CudaDecodingTests _t;
        private readonly DType _dtype;
        private readonly int _h, _kh, _d, _c, _capacity, _window, _b;
        private readonly int[] _starts;
        private readonly double[] _q, _kv, _w, _bias;
        private readonly bool _withBias;
        private readonly double[] _expected;
        private Tensor? _fq, _fkv, _fw, _fb, _fpositions;

        public double[] Residual { get; }

        public FusedAttentionOutputCase(CudaDecodingTests t, DType dtype, int h, int kh, int d, int c, int capacity, int window, bool bias, int[] starts)
        {
            (_t, _dtype, _h, _kh, _d, _c, _capacity, _window, _withBias, _starts, _b) = (t, dtype, h, kh, d, c, capacity, window, bias, starts, starts.Length);
            double[] Values(long n, double range) => Enumerable.Range(0, checked((int)n)).Select(_ => range * (2 * t.Rng.NextDouble() - 1)).ToArray();
            (_q, _kv, _w, _bias, Residual) = (Values((long)_b * h * d, 1.5), Values((long)_b * capacity * 2 * kh * d, 1.5), Values((long)c * h * d, 0.05),
                Values(c, 0.1), Values((long)_b * c, 0.02));
            var gpu = t.Gpu;
            var q = Upload(gpu, _q, dtype, _b, 1, h, d);
            var kvc = Upload(gpu, _kv, dtype, _b, capacity, 2 * kh, d);
            var (w, bt, y) = (Upload(gpu, _w, dtype, c, h * d), bias ? Upload(gpu, _bias, dtype, c) : null, Upload(gpu, Residual, dtype, _b, c));
            var positions = t.Positions(starts);
            double scale = 1 / Math.Sqrt(d);
            Assert.False(gpu.TryAttentionOutputAccumulate(q, kvc.Slice(2, 0, kh), kvc.Slice(2, kh, kh), positions, w, bt, y, scale, window),
                "the default options keep two ops");
            var att = gpu.Allocate(new Shape(_b, 1, h, d), dtype);
            gpu.AttentionForwardCached(q, kvc.Slice(2, 0, kh), kvc.Slice(2, kh, kh), positions, att, scale, window);
            gpu.MatMul(att.Reshape(_b, h * d), w, y, transposeB: true, beta: 1.0, bias: bt);
            _expected = Download(gpu, y);
        }

        /// <summary>The fused op on <paramref name="fused"/> into <paramref name="target"/>; whether it took the call.</summary>
        public bool Run(Tessera.Cuda.CudaBackend fused, Tensor target)
        {
            if (_fq is null)
            {
                (_fq, _fkv, _fw) = (Upload(fused, _q, _dtype, _b, 1, _h, _d), Upload(fused, _kv, _dtype, _b, _capacity, 2 * _kh, _d), Upload(fused, _w, _dtype, _c, _h * _d));
                _fb = _withBias ? Upload(fused, _bias, _dtype, _c) : null;
                _fpositions = fused.Allocate(new Shape(_b), DType.I32);
                fused.CopyFromHost<int>(_starts, _fpositions);
            }
            return fused.TryAttentionOutputAccumulate(_fq, _fkv!.Slice(2, 0, _kh), _fkv.Slice(2, _kh, _kh), _fpositions!, _fw!, _fb, target,
                1 / Math.Sqrt(_d), _window);
        }

        /// <summary>Runs the fused op once on a fresh residual and asserts it matches the two ops; returns its values.</summary>
        public double[] AssertMatches(Tessera.Cuda.CudaBackend fused)
        {
            var y = Upload(fused, Residual, _dtype, _b, _c);
            Assert.True(Run(fused, y), "the fused backend should take a decode step's attention and output product");
            var actual = Download(fused, y);
            AssertClose(_expected, actual, 1e-2, $"fused attention and output product {_dtype} B={_b} H={_h} K={_kh} D={_d} C={_c} window={_window}");
            return actual;
        }
    }

    /// <summary>
    /// Greedy generation of a BF16 Llama (2 layers, 4 / 2 heads of 64, a 512-position cache, which the two ops decode with the
    /// per-query-head split kernel) with the attention and its output product in one launch: the recorded decode steps give
    /// the eager run's tokens, 40 from a 30-token prompt (seed 51); on a profiled backend the eager run gives them again, and
    /// every layer of every decode step launches flash_decode_out_bf16_d64 (as often as the one-row QKV kernel) and never the
    /// per-query-head decode attention; the
    /// first 10 tokens equal the two-op model's (the paths differ in the order of a row's sums only, about one bf16 rounding
    /// of a logit, less than this seed's top-two margins; the kernels are deterministic, so a run that passes keeps passing).
    /// </summary>
    [Fact]
    public void RecordedDecodeWithTheFusedAttentionOutputGivesTheEagerTokens()
    {
        var options = Gpu.Options with { FusedDecodeAttentionOutput = true };
        var config = ModelPresets.Get("llama-debug") with { Layers = 2, Embedding = 256, Heads = 4, KvHeads = 2, Hidden = 1024, MaxSequenceLength = 512 };
        var cpu = new Transformer(config, _cpu, DType.F32);
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, cpu.Parameters, new Random(51));
        var random = new Random(51);
        int[] prompt = Enumerable.Range(0, 30).Select(_ => random.Next(config.VocabSize)).ToArray();
        TextGenerator Generator(Tessera.Cuda.CudaBackend backend)
        {
            var model = new Transformer(config, backend, DType.BF16);
            backend.CopyFromHost<float>(_cpu.ToArray<float>(cpu.Parameters.Values), model.Parameters.Masters!);
            model.Parameters.SyncValuesFromMasters();
            return new TextGenerator(model);
        }
        List<int> recorded, eager;
        using (var backend = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, options))
        {
            var generator = Generator(backend);
            recorded = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 40 }).ToList();
            Assert.True(generator.LastRunRecorded, "the decode step should replay a CUDA graph");
            eager = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 40, CaptureGraph = false }).ToList();
        }
        Assert.Equal(40, recorded.Count);
        Assert.Equal(eager, recorded);
        using var profiled = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, options with { ProfileOps = true });
        Assert.Equal(eager, Generator(profiled).Generate(prompt, new GenerationOptions { MaxNewTokens = 40, CaptureGraph = false }).ToList());
        var totals = profiled.Profiler!.Totals();
        long Calls(string kernel) => totals.Where(r => r.Name == kernel).Sum(r => r.Calls);
        Assert.True(Calls("gemv_stream_rope_bf16_m1") >= 2 * 39, "every decode step's layers run the one-row QKV kernel");
        Assert.Equal(Calls("gemv_stream_rope_bf16_m1"), Calls("flash_decode_out_bf16_d64"));
        Assert.Equal(0, Calls("flash_decode_bf16_d64"));
        using var twoOps = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options);
        var unfused = Generator(twoOps).Generate(prompt, new GenerationOptions { MaxNewTokens = 10, CaptureGraph = false }).ToList();
        Assert.Equal(unfused, eager.Take(10).ToList());
    }
}
