using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Mistral's sliding window and the scaled RoPE frequencies on the GPU, against the CPU backend in F64 on the same rounded
/// inputs (the CPU ops are themselves checked against direct references in Tensors/CpuSlidingWindowTests and
/// CpuRopeFrequencyTests). Every attention kernel that skips key blocks runs: the simple F32 kernels, FlashAttention
/// forward and backward (bf16, D 64 and 128), the split decode and the grouped decode. Tolerances as
/// <see cref="CudaTestBase.Tolerance"/>: f32 1e-5, 16-bit 1e-2 relative in norm.
/// </summary>
[Collection("cuda")]
public sealed class CudaSlidingWindowAndRopeTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    private Tensor Cpu(double[] values, params int[] dims) => TestTensors.FromDoubles(_cpu, values, DType.F64, dims);

    [Theory]
    [InlineData(DType.F32, 32, 50, 7)]      // simple kernels
    [InlineData(DType.BF16, 64, 200, 37)]   // FlashAttention: the window starts inside a 64-key block
    [InlineData(DType.BF16, 64, 200, 64)]
    [InlineData(DType.BF16, 128, 300, 2)]   // each query sees itself and one more key (at window 1 dq is exactly zero,
                                            // dS = P (dP - delta) with P = 1 and dP = delta, so a relative error has no scale)
    [InlineData(DType.F16, 64, 129, 130)]   // a window wider than the sequence: plain causal attention
    public void TrainingForwardAndBackwardWithAWindowMatchTheCpu(DType dtype, int d, int t, int window)
    {
        int b = 2, h = 4, kh = 2;
        double scale = 1 / Math.Sqrt(d);
        var (q, qv) = Random(dtype, 1, b, t, h, d);
        var (k, kv) = Random(dtype, 1, b, t, kh, d);
        var (v, vv) = Random(dtype, 1, b, t, kh, d);
        var (dO, dOv) = Random(dtype, 1, b, t, h, d);
        var o = Poisoned(dtype, b, t, h, d);
        var lse = Gpu.Allocate(new Shape(b, h, t), DType.F32);
        Gpu.AttentionForward(q, k, v, o, lse, scale, window);

        var co = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        var cl = _cpu.Allocate(new Shape(b, h, t), DType.F64);
        _cpu.AttentionForward(Cpu(qv, b, t, h, d), Cpu(kv, b, t, kh, d), Cpu(vv, b, t, kh, d), co, cl, scale, window);
        AssertClose(_cpu.ToArray<double>(co), Download(o), Tolerance(dtype), $"output {dtype} D={d} T={t} window {window}");
        AssertClose(_cpu.ToArray<double>(cl), Download(lse), 1e-4, $"log-sum-exp {dtype} D={d} T={t} window {window}");

        // The backward from the GPU's own output and lse, as training feeds them back; the CPU from its own.
        var dq = Poisoned(dtype, b, t, h, d);
        var dk = Poisoned(dtype, b, t, kh, d);
        var dv = Poisoned(dtype, b, t, kh, d);
        Gpu.AttentionBackward(q, k, v, o, dO, lse, dq, dk, dv, scale, window);
        var cdq = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        var cdk = _cpu.Allocate(new Shape(b, t, kh, d), DType.F64);
        var cdv = _cpu.Allocate(new Shape(b, t, kh, d), DType.F64);
        _cpu.AttentionBackward(Cpu(qv, b, t, h, d), Cpu(kv, b, t, kh, d), Cpu(vv, b, t, kh, d), co, Cpu(dOv, b, t, h, d), cl, cdq, cdk, cdv, scale, window);
        double tol = dtype == DType.F32 ? 1e-5 : 2e-2;   // 16-bit: P and dS rounded before the products (FlashAttention-2's choice)
        AssertClose(_cpu.ToArray<double>(cdq), Download(dq), tol, $"dq {dtype} D={d} T={t} window {window}");
        AssertClose(_cpu.ToArray<double>(cdk), Download(dk), tol, $"dk {dtype} D={d} T={t} window {window}");
        AssertClose(_cpu.ToArray<double>(cdv), Download(dv), tol, $"dv {dtype} D={d} T={t} window {window}");
    }

    [Theory]
    [InlineData(DType.BF16, 64, 1, 600, 100)]     // split decode (fewer than 2048 keys), window inside the cache
    [InlineData(DType.BF16, 64, 1, 3000, 1000)]   // grouped decode (2048 keys or more)
    [InlineData(DType.BF16, 128, 3, 2500, 17)]    // grouped, three new queries each with its own window
    [InlineData(DType.F32, 64, 2, 100, 9)]        // the simple kernel at device positions
    public void CachedAttentionWithAWindowMatchesTheCpu(DType dtype, int d, int t, int capacity, int window)
    {
        int b = 2, h = 8, kh = 2;
        int[] starts = [capacity / 3, capacity - t];
        double scale = 1 / Math.Sqrt(d);
        var (q, qv) = Random(dtype, 1, b, t, h, d);
        var (kc, kcv) = Random(dtype, 1, b, capacity, kh, d);
        var (vc, vcv) = Random(dtype, 1, b, capacity, kh, d);
        var o = Poisoned(dtype, b, t, h, d);
        Gpu.AttentionForwardCached(q, kc, vc, UploadInts(starts, 2), o, scale, window);
        var co = _cpu.Allocate(new Shape(b, t, h, d), DType.F64);
        _cpu.AttentionForwardCached(Cpu(qv, b, t, h, d), Cpu(kcv, b, capacity, kh, d), Cpu(vcv, b, capacity, kh, d), _cpu.FromArray(starts, 2), co, scale, window);
        AssertClose(_cpu.ToArray<double>(co), Download(o), Tolerance(dtype), $"cached attention {dtype} D={d} T={t} S={capacity} window {window}");
    }

    /// <summary>
    /// Partial rotary embedding (the first R of D = 64 channels of each head turn, frequencies over R; Phi-4-mini's 0.75 is
    /// 48 of 64, and 16 of 64 a narrow one) on the GPU against the CPU (tolerance <see cref="CudaTestBase.Tolerance"/>; the
    /// passing channels exactly as they were): at a host start through the angle table and inverse, at device positions,
    /// and from 0 over 20 positions (LongRoPE past its length), and the fused QKV product's epilogue (2 rows) and RopeAndAppend
    /// (6 rows, by its row kernel and by its item kernel), whose caches must hold the passing channels of the k and v heads too.
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 48)]
    [InlineData(DType.BF16, 48)]
    [InlineData(DType.BF16, 16)]
    public void PartialRotaryMatchesTheCpu(DType dtype, int rotated)
    {
        int b = 2, t = 5, h = 3, d = 64;
        var plain = new RopeFrequencies(10000) { RotaryDimensions = rotated };
        var shortTable = Enumerable.Range(0, rotated / 2).Select(i => Math.Pow(10000, -2.0 * i / rotated)).ToArray();
        var longRope = new RopeFrequencies(10000)
        {
            RotaryDimensions = rotated, InverseFrequencies = shortTable, LongInverseFrequencies = shortTable.Select((f, i) => f / (1 + 0.25 * i)).ToArray(),
            LongOriginalLength = 16, AttentionFactor = 1.19,
        };
        using var items = new CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { RopeAppendRowKernelMaxRows = 0 });
        foreach (var (freq, name) in new[] { (plain, "partial"), (longRope, "partial + LongRoPE") })
        {
            foreach (int length in new[] { t, 20 })                   // LongRoPE: within 16 positions, then past them
            {
                var (x, xv) = Random(dtype, 1, b, length, h, d);
                Gpu.Rope(x, 0, freq);
                var cx = Cpu(xv, b, length, h, d);
                _cpu.Rope(cx, 0, freq);
                var got = Download(x);
                AssertClose(_cpu.ToArray<double>(cx), got, Tolerance(dtype), $"Rope {name} R={rotated} {dtype} from 0, {length} positions");
                for (int e = 0; e < got.Length; e++)
                    if (e % d >= rotated) Assert.Equal(Stored(xv, dtype)[e], got[e]);    // the passing channels untouched
                if (length != t) continue;
                Gpu.Rope(x, 0, freq, inverse: true);
                double f2 = freq.AttentionFactor * freq.AttentionFactor;
                AssertClose(Stored(xv, dtype).Select((v, e) => e % d < rotated ? v * f2 : v).ToArray(), Download(x), dtype == DType.F32 ? 1e-6 : 2e-2,
                    $"Rope then its transpose {name} R={rotated} {dtype}");
            }

            int[] starts = [0, 30];
            var (y, yv) = Random(dtype, 1, b, t, h, d);
            Gpu.Rope(y, UploadInts(starts, 2), freq);
            var cy = Cpu(yv, b, t, h, d);
            _cpu.Rope(cy, _cpu.FromArray(starts, 2), freq);
            AssertClose(_cpu.ToArray<double>(cy), Download(y), Tolerance(dtype), $"Rope {name} R={rotated} {dtype} at device positions");

            foreach (var (bb, tt, positions) in new[] { (2, 1, new[] { 0, 33 }), (2, 3, new[] { 0, 30 }) })
                foreach (var backend in new[] { Gpu, items })
                    AssertMatMulRopeAppendMatchesTheCpu(backend, dtype, freq, h + 1, bb, tt, positions, $"{name} R={rotated}");
        }
    }

    /// <summary>
    /// <see cref="CudaBackend.MatMulRopeAppend"/> on <paramref name="backend"/> (at most 4 rows: the fused QKV product's
    /// epilogue; more: the product, then <c>RopeAndAppend</c>, whose row kernel or item kernel the backend's
    /// <c>RopeAppendRowKernelMaxRows</c> picks) against the CPU's composition in F64 on the same rounded inputs: qkv within
    /// <see cref="CudaTestBase.Tolerance"/>, the cache's written positions within it on their own, its other positions exactly
    /// as they were.
    /// </summary>
    private void AssertMatMulRopeAppendMatchesTheCpu(CudaBackend backend, DType dtype, RopeFrequencies freq, int heads, int bb, int tt, int[] positions, string name)
    {
        int c = 256, kh = 2, d = 64, capacity = 40, rows = (heads + 2 * kh) * d, slot = 2 * kh * d;
        double[] Values(int count, double scale) => Stored(Enumerable.Range(0, count).Select(_ => (Rng.NextDouble() * 2 - 1) * scale).ToArray(), dtype);
        double[] xv = Values(bb * tt * c, 1), wv = Values(rows * c, 0.1), cachev = Values(bb * capacity * slot, 1);
        var qkv = backend.Allocate(new Shape(bb, tt, heads + 2 * kh, d), dtype);
        backend.Fill(qkv, double.NaN);
        var cache = Upload(backend, cachev, dtype, bb, capacity, 2 * kh, d);
        var starts = backend.Allocate(new Shape(bb), DType.I32);
        backend.CopyFromHost<int>(positions, starts);
        backend.MatMulRopeAppend(Upload(backend, xv, dtype, bb * tt, c), null, Upload(backend, wv, dtype, rows, c), null, qkv, heads, cache, starts, freq);
        var cpuQkv = _cpu.Allocate(new Shape(bb, tt, heads + 2 * kh, d), DType.F64);
        var cpuCache = Cpu(cachev, bb, capacity, 2 * kh, d);
        _cpu.MatMulRopeAppend(Cpu(xv, bb * tt, c), null, Cpu(wv, rows, c), null, cpuQkv, heads, cpuCache, _cpu.FromArray(positions, bb), freq);
        string label = $"MatMulRopeAppend {name} {dtype} B={bb} T={tt} at {string.Join(", ", positions)}"
            + (backend.Options.RopeAppendRowKernelMaxRows == 0 ? " (item kernel)" : "");
        AssertClose(_cpu.ToArray<double>(cpuQkv), Download(backend, qkv), Tolerance(dtype), label + ": qkv");
        double[] expected = _cpu.ToArray<double>(cpuCache), got = Download(backend, cache);
        var written = new List<(double Expected, double Got)>();
        for (int s0 = 0; s0 < bb; s0++)
            for (int p = 0; p < capacity; p++)
                for (int j = 0; j < slot; j++)
                {
                    int at = (s0 * capacity + p) * slot + j;
                    if (p >= positions[s0] && p < positions[s0] + tt) written.Add((expected[at], got[at]));
                    else Assert.True(cachev[at] == got[at], $"{label}: cache position {p} of sequence {s0} changed");
                }
        AssertClose(written.Select(e => e.Expected).ToArray(), written.Select(e => e.Got).ToArray(), Tolerance(dtype), label + ": the cache's written positions");
    }

    /// <summary>LongRoPE at head size <paramref name="d"/>: a short table and a long one (each short frequency divided by 1 +
    /// 0.25 i, so the two differ by up to 9x) past 16 positions, with an attention factor.</summary>
    private static RopeFrequencies LongRope(int d, int original = 16)
    {
        var shortTable = Enumerable.Range(0, d / 2).Select(i => Math.Pow(10000, -2.0 * i / d) / (1 + 0.1 * (i % 4))).ToArray();
        return new RopeFrequencies(10000)
        {
            InverseFrequencies = shortTable, LongInverseFrequencies = shortTable.Select((f, i) => f / (1 + 0.25 * i)).ToArray(),
            LongOriginalLength = original, AttentionFactor = 1.19,
        };
    }

    /// <summary>
    /// LongRoPE on the GPU against the CPU (tolerance <see cref="CudaTestBase.Tolerance"/>): the short table for a call within
    /// the original 16 positions and the long one for every position of a call reaching past them, at host starts (0 reaching
    /// 5 and 20 positions, 30 reaching 35) and at device positions (a batch within 16, and one whose longer sequence passes it
    /// while the other starts at 0); the fused QKV product's epilogue and RopeAndAppend (6 rows, by its row kernel and by its
    /// item kernel) at decode positions past the length and within it. A host call from inside the length reaching past it is
    /// refused by name, as on the CPU.
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void LongRopeSwitchesTablesAsTheCpuDoes(DType dtype)
    {
        int b = 2, h = 3, d = 64;
        var freq = LongRope(d);
        foreach (var (start, t) in new[] { (0, 5), (0, 20), (30, 5) })
        {
            var (x, xv) = Random(dtype, 1, b, t, h, d);
            Gpu.Rope(x, start, freq);
            var cx = Cpu(xv, b, t, h, d);
            _cpu.Rope(cx, start, freq);
            AssertClose(_cpu.ToArray<double>(cx), Download(x), Tolerance(dtype), $"LongRoPE {dtype} from {start}, {t} positions");
        }
        foreach (int[] starts in new[] { new[] { 2, 9 }, new[] { 0, 30 } })
        {
            var (y, yv) = Random(dtype, 1, b, 5, h, d);
            Gpu.Rope(y, UploadInts(starts, 2), freq);
            var cy = Cpu(yv, b, 5, h, d);
            _cpu.Rope(cy, _cpu.FromArray(starts, 2), freq);
            AssertClose(_cpu.ToArray<double>(cy), Download(y), Tolerance(dtype), $"LongRoPE {dtype} at device positions {starts[0]}, {starts[1]}");
        }
        var (z, _) = Random(dtype, 1, b, 5, h, d);
        Assert.Contains("LongRoPE", Assert.Throws<InvalidOperationException>(() => Gpu.Rope(z, 13, freq)).Message);

        using var items = new CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { RopeAppendRowKernelMaxRows = 0 });
        foreach (var (bb, tt, positions) in new[] { (1, 1, new[] { 20 }), (2, 2, new[] { 0, 38 }), (2, 3, new[] { 5, 9 }), (2, 3, new[] { 0, 30 }) })
            foreach (var backend in new[] { Gpu, items })
                AssertMatMulRopeAppendMatchesTheCpu(backend, dtype, freq, h + 1, bb, tt, positions, "LongRoPE");
    }

    /// <summary>
    /// Greedy generation of a LongRoPE model (phi3-debug with longrope factors switching at 16 of its 64 positions, and
    /// phi4-mini-debug, whose own factors switch there too; F32) on the
    /// GPU, the decode step recorded and not: the CPU reference's tokens. The generator drops its cache and recomputes the
    /// sequence where it first passes 16 positions, so every step after it reads keys rotated with the long table.
    /// </summary>
    /// <remarks>phi4-mini-debug adds partial rotary (6 of each head's 8 channels turn) and a tied head.</remarks>
    [Theory]
    [InlineData("phi3-debug")]
    [InlineData("phi4-mini-debug")]
    public void GreedyGenerationOfALongRopeModelMatchesTheCpu(string preset)
    {
        var config = Tessera.Models.ModelPresets.Get(preset);
        if (config.RopeScaling is null)
            config = config with
            {
                RopeScaling = new Tessera.Models.RopeScaling
                {
                    Type = Tessera.Models.RopeScalingType.LongRope, OriginalMaxPositions = 16,
                    ShortFactor = [1.0, 1.4, 2.5, 4.0], LongFactor = [1.0, 3.0, 12.0, 40.0],
                },
            };
        var onCpu = new Tessera.Models.Transformer(config, _cpu, DType.F32);
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, onCpu.Parameters, new Random(9));
        var onGpu = new Tessera.Models.Transformer(config, Gpu, DType.F32);
        Gpu.CopyFromHost<float>(_cpu.ToArray<float>(onCpu.Parameters.Values), onGpu.Parameters.Values);
        int[] prompt = [5, 1, 4, 1, 5, 9, 2, 6];
        int count = config.MaxSequenceLength - prompt.Length - 1;
        var expected = Tessera.Tests.Inference.TextGeneratorTests.Reference(onCpu, _cpu, prompt, count, Tessera.Inference.Sampling.SamplingOptions.Greedy);
        var generator = new Tessera.Inference.TextGenerator(onGpu);
        Assert.Equal(expected, generator.Generate(prompt, new Tessera.Inference.GenerationOptions { MaxNewTokens = count }).ToList());
        Assert.True(generator.LastRunRecorded, "the decode step should replay a CUDA graph");
        Assert.Equal(expected, generator.Generate(prompt, new Tessera.Inference.GenerationOptions { MaxNewTokens = count, CaptureGraph = false }).ToList());
    }

    /// <summary>YaRN-like table and attention factor, and dynamic NTK past the original length, at host and device positions.</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void ScaledRopeMatchesTheCpu(DType dtype)
    {
        int b = 2, t = 5, h = 3, d = 64;
        var table = Enumerable.Range(0, d / 2).Select(i => Math.Pow(500000, -2.0 * i / d) / (i % 3 == 0 ? 1 : 8)).ToArray();
        var scaled = new RopeFrequencies(500000) { InverseFrequencies = table, AttentionFactor = 1.1386 };
        var dynamic = new RopeFrequencies(10000) { DynamicFactor = 4, DynamicOriginalLength = 16 };
        foreach (var (freq, name) in new[] { (scaled, "table + attention factor"), (dynamic, "dynamic NTK") })
        {
            var (x, xv) = Random(dtype, 1, b, t, h, d);
            Gpu.Rope(x, 13, freq);                                  // positions 13..17: dynamic past 16
            var cx = Cpu(xv, b, t, h, d);
            _cpu.Rope(cx, 13, freq);
            AssertClose(_cpu.ToArray<double>(cx), Download(x), Tolerance(dtype), $"Rope {name} {dtype}");

            // The inverse is the transpose: it turns back by the same angles and scales by the factor again.
            Gpu.Rope(x, 13, freq, inverse: true);
            double f2 = freq.AttentionFactor * freq.AttentionFactor;
            AssertClose(Stored(xv, dtype).Select(e => e * f2).ToArray(), Download(x), dtype == DType.F32 ? 1e-6 : 2e-2, $"Rope then its transpose {name} {dtype}");

            int[] starts = [2, 30];                                 // the batch's longest length (35) sets dynamic's frequencies
            var (y, yv) = Random(dtype, 1, b, t, h, d);
            Gpu.Rope(y, UploadInts(starts, 2), freq);
            var cy = Cpu(yv, b, t, h, d);
            _cpu.Rope(cy, _cpu.FromArray(starts, 2), freq);
            AssertClose(_cpu.ToArray<double>(cy), Download(y), Tolerance(dtype), $"Rope at device positions {name} {dtype}");
        }
    }

    /// <summary>
    /// RoPE at a host start position reads a device table of (cos, sin) (rope_rows); at device positions it computes each
    /// angle in place (rope). Both use the same double arithmetic, so the table must give the per-element kernel's bits
    /// exactly (tolerance zero): plain theta, a YaRN-like table with an attention factor, dynamic NTK and LongRoPE inside their
    /// original length, partial rotary (the passing channels untouched by either), a strided view (some heads of a wider tensor; 16-byte aligned, so rope_rows takes its vector path), and a start
    /// that makes the table grow past 4,096 positions.
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 64)]
    [InlineData(DType.BF16, 64)]
    [InlineData(DType.BF16, 128)]
    public void RopeFromTheAngleTableGivesThePerElementKernelsBits(DType dtype, int d)
    {
        int b = 2, t = 7, h = 5;
        var table = Enumerable.Range(0, d / 2).Select(i => Math.Pow(500000, -2.0 * i / d) / (i % 3 == 0 ? 1 : 8)).ToArray();
        var cases = new (RopeFrequencies Freq, string Name)[]
        {
            (new RopeFrequencies(10000), "theta 10000"),
            (new RopeFrequencies(500000) { InverseFrequencies = table, AttentionFactor = 1.1386 }, "table + attention factor"),
            (new RopeFrequencies(10000) { DynamicFactor = 4, DynamicOriginalLength = 8192 }, "dynamic NTK inside its length"),
            (LongRope(d, original: 8192), "LongRoPE inside its length"),
            (new RopeFrequencies(10000) { RotaryDimensions = d * 3 / 4 }, "partial rotary, 3/4 of the head"),
        };
        foreach (var (freq, name) in cases)
            foreach (int start in new[] { 0, 3, 4093, 6000 })
            {
                var (wide, _) = Random(dtype, 1, b, t, h + 2, d);
                var x = wide.Slice(2, 1, h);                             // strided: 5 of 7 heads
                var y = Gpu.Allocate(wide.Shape, dtype);
                Gpu.Copy(wide, y);
                var yv = y.Slice(2, 1, h);
                Gpu.Rope(x, start, freq);                               // the table
                Gpu.Rope(yv, UploadInts([start, start], 2), freq);      // the per-element kernel
                Assert.Equal(Download(y), Download(wide));
                TestContext.Current.TestOutputHelper?.WriteLine($"{name}, start {start}, {dtype}, D {d}: identical bits");
            }
    }

    /// <summary>The decode step's fused QKV product + RoPE + append (one kernel for at most 4 rows) and RopeAndAppend with
    /// scaled frequencies: against the CPU's composition.</summary>
    [Theory]
    [InlineData(DType.BF16, 1, 1)]
    [InlineData(DType.F32, 2, 2)]
    [InlineData(DType.BF16, 2, 3)]   // 6 rows: the product, then RopeAndAppend
    public void FusedQkvRopeAppendWithScaledFrequenciesMatchesTheCpu(DType dtype, int b, int t)
    {
        int c = 256, h = 8, kh = 2, d = 64, capacity = 40, rows = (h + 2 * kh) * d;
        int[] starts = b == 1 ? [20] : [3, capacity - t];
        foreach (var freq in new[]
                 {
                     new RopeFrequencies(10000) { DynamicFactor = 2, DynamicOriginalLength = 16 },
                     new RopeFrequencies(10000) { InverseFrequencies = Enumerable.Range(0, d / 2).Select(i => 0.5 / (i + 1)).ToArray(), AttentionFactor = 0.9 },
                 })
        {
            var (x, xv) = Random(dtype, 1, b * t, c);
            var (w, wv) = Random(dtype, 0.1, rows, c);
            var cachev = Stored(Enumerable.Range(0, b * capacity * 2 * kh * d).Select(_ => Rng.NextDouble() * 2 - 1).ToArray(), dtype);
            var qkv = Poisoned(dtype, b, t, h + 2 * kh, d);
            var cache = Upload(cachev, dtype, b, capacity, 2 * kh, d);
            Gpu.MatMulRopeAppend(x, null, w, null, qkv, h, cache, UploadInts(starts, b), freq);
            var cpuQkv = _cpu.Allocate(new Shape(b, t, h + 2 * kh, d), DType.F64);
            var cpuCache = Cpu(cachev, b, capacity, 2 * kh, d);
            _cpu.MatMulRopeAppend(Cpu(xv, b * t, c), null, Cpu(wv, rows, c), null, cpuQkv, h, cpuCache, _cpu.FromArray(starts, b), freq);
            AssertClose(_cpu.ToArray<double>(cpuQkv), Download(qkv), Tolerance(dtype), $"MatMulRopeAppend {dtype} B={b} T={t} {freq.IsDynamic}: qkv");
            AssertClose(_cpu.ToArray<double>(cpuCache), Download(cache), Tolerance(dtype), $"MatMulRopeAppend {dtype} B={b} T={t}: cache");
        }
    }
}
