using Tessera.Cuda;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference.Serving;
using Tessera.Tests.Support;
using Tessera.Tests.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The quantized paged KV caches on the GPU (skipped, with the reason, without one), each test for an I8 and an F8E4M3 pool:
/// <c>paged_append_i8</c> / <c>paged_append_f8</c> write the CPU backend's bytes and scales; every attention kernel's
/// <c>_i8</c> / <c>_f8</c> instantiation (the tensor-core decode and prefill kernels, the CUDA-core and tiled decode
/// kernels, the generic kernel for other head sizes) matches the CPU backend over the same pool (F64 reference: f32 1e-5,
/// 16-bit 2e-2 relative, the float pool's tolerances: the tensor-core kernels round the dequantized keys and values to 16
/// bits as a 16-bit pool holds them); and the engine's batched, recorded decode with a quantized cache gives the CPU
/// engine's tokens.
/// </summary>
[Collection("cuda")]
public sealed class CudaQuantizedPagedKvTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>
    /// A mixed batch (a 37-row prefill chunk after 20 positions, decodes after 300 and 1000, a padding row, a 5-token
    /// prompt) over quantized keys and values: the GPU writes the bytes and scales the CPU writes, bit for bit (the same fp32
    /// operations: <see cref="PagedKvPool.QuantizeRow"/>), including a head of zeros (scale 0) and, for E4M3, a head whose
    /// values reach the subnormals; padding writes nothing.
    /// </summary>
    [Theory]
    [InlineData(DType.I8, DType.F32, 64)]
    [InlineData(DType.I8, DType.BF16, 64)]
    [InlineData(DType.I8, DType.BF16, 128)]
    [InlineData(DType.I8, DType.F16, 64)]
    [InlineData(DType.F8E4M3, DType.F32, 64)]
    [InlineData(DType.F8E4M3, DType.BF16, 64)]
    [InlineData(DType.F8E4M3, DType.BF16, 128)]
    [InlineData(DType.F8E4M3, DType.F16, 64)]
    public void PagedAppendToAQuantizedPoolWritesTheCpusBytesAndScales(DType poolDType, DType dtype, int d)
    {
        const int blockSize = 16, h = 4, k = 2;
        var batch = PagedBatchLayout.Scattered(Rng, blockSize, [37, 1, 1, 1, 5], [57, 301, 1001, 0, 5], spareBlocks: 7);
        int n = batch.Slots.Length;
        var values = Stored(Enumerable.Range(0, n * (h + 2 * k) * d).Select(_ => (Rng.NextDouble() * 2 - 1) * 3).ToArray(), dtype);
        Array.Clear(values, (2 * (h + 2 * k) + h + 1) * d, d);                  // row 2, key head 1: zeros
        for (int i = 0; i < d; i++)                                              // row 3, value head 0: 3 down to 3e-6
            values[(3 * (h + 2 * k) + h + k) * d + i] = (i % 2 == 0 ? 3 : -3) * Math.Pow(10, -6.0 * i / (d - 1));
        values = Stored(values, dtype);
        var qkv = Upload(values, dtype, n, h + 2 * k, d);
        var (pool, scales) = QuantizedPool(Gpu, poolDType, batch.PoolBlocks, blockSize, 2 * k, d);
        Gpu.PagedAppend(qkv.Slice(1, h, 2 * k), pool, batch.On(Gpu), scales);

        var (cpuPool, cpuScales) = QuantizedPool(_cpu, poolDType, batch.PoolBlocks, blockSize, 2 * k, d);
        _cpu.PagedAppend(TestTensors.FromDoubles(_cpu, values, DType.F32, n, h + 2 * k, d).Slice(1, h, 2 * k), cpuPool, batch.On(_cpu), cpuScales);
        Assert.Equal(CpuQuantizedPagedOpsTests.Codes(_cpu, cpuPool), CpuQuantizedPagedOpsTests.Codes(Gpu, pool));
        Assert.Equal(_cpu.ToArray<float>(cpuScales), Gpu.ToArray<float>(scales));
        Assert.Contains(0f, Gpu.ToArray<float>(scales).Where((_, i) => i / (2 * k) == batch.Slots[2] && i % (2 * k) == 1));
    }

    /// <summary>
    /// PagedAttention over a quantized pool (random codes: int8 values in [-127, 127] or E4M3 codes other than NaN; random
    /// scales) against the CPU backend over the same pool in F64, for the same batch, in each kernel family: the default (16-bit rows: paged_decode_mma and, for the
    /// prefill chunk, paged_prefill_hopper on a compute capability 9.0 device or paged_prefill; F32 rows: paged_decode), the
    /// CUDA-core decode kernel, the tiled decode kernel, paged_prefill instead of the Hopper tile, a sliding window, and a
    /// head size of 8 (the generic kernel).
    /// </summary>
    [Theory]
    [InlineData(DType.I8, DType.F32, 8, 2, 64, "default", 0)]
    [InlineData(DType.I8, DType.BF16, 8, 2, 64, "default", 0)]
    [InlineData(DType.I8, DType.BF16, 32, 8, 128, "default", 0)]
    [InlineData(DType.I8, DType.BF16, 14, 2, 64, "default", 0)]
    [InlineData(DType.I8, DType.F16, 14, 2, 64, "default", 0)]
    [InlineData(DType.I8, DType.BF16, 8, 2, 64, "default", 24)]
    [InlineData(DType.I8, DType.BF16, 32, 8, 64, "cuda-cores", 0)]
    [InlineData(DType.I8, DType.BF16, 32, 8, 128, "tiled", 0)]
    [InlineData(DType.I8, DType.F32, 8, 2, 64, "tiled", 24)]
    [InlineData(DType.I8, DType.BF16, 32, 8, 64, "no-hopper", 0)]
    [InlineData(DType.I8, DType.BF16, 8, 2, 128, "no-hopper", 24)]
    [InlineData(DType.I8, DType.F32, 4, 4, 8, "default", 0)]
    [InlineData(DType.F8E4M3, DType.F32, 8, 2, 64, "default", 0)]
    [InlineData(DType.F8E4M3, DType.BF16, 8, 2, 64, "default", 0)]
    [InlineData(DType.F8E4M3, DType.BF16, 32, 8, 128, "default", 0)]
    [InlineData(DType.F8E4M3, DType.BF16, 14, 2, 64, "default", 0)]
    [InlineData(DType.F8E4M3, DType.F16, 14, 2, 64, "default", 0)]
    [InlineData(DType.F8E4M3, DType.BF16, 8, 2, 64, "default", 24)]
    [InlineData(DType.F8E4M3, DType.BF16, 32, 8, 64, "cuda-cores", 0)]
    [InlineData(DType.F8E4M3, DType.BF16, 32, 8, 128, "tiled", 0)]
    [InlineData(DType.F8E4M3, DType.F32, 8, 2, 64, "tiled", 24)]
    [InlineData(DType.F8E4M3, DType.BF16, 32, 8, 64, "no-hopper", 0)]
    [InlineData(DType.F8E4M3, DType.BF16, 8, 2, 128, "no-hopper", 24)]
    [InlineData(DType.F8E4M3, DType.F32, 4, 4, 8, "default", 0)]
    public void PagedAttentionOverAQuantizedPoolMatchesTheCpu(DType poolDType, DType dtype, int h, int k, int d, string kernels, int window)
    {
        var options = kernels switch
        {
            "cuda-cores" => CudaBackendOptions.Default with { PagedDecodeTensorCores = false },
            "tiled" => CudaBackendOptions.Default with { PagedDecodeTensorCores = false, PagedDecodeTiled = true },
            "no-hopper" => CudaBackendOptions.Default with { HopperAttention = false },
            _ => null,
        };
        using var own = options is null ? null : new CudaBackend(Gpu.CudaDevice.Ordinal, options);
        var gpu = own ?? Gpu;
        const int blockSize = 16;
        var batch = PagedBatchLayout.Scattered(Rng, blockSize, [37, 1, 1, 1, 5], [57, 301, 1001, 0, 5], spareBlocks: 7, window: window > 0 ? window : null);
        int n = batch.Slots.Length;
        var (_, qv) = Random(dtype, 1.0, n, h + 2 * k, d);                        // a fused QKV activation: q is a strided view
        var (poolCodes, scaleValues) = RandomCodes(poolDType, batch.PoolBlocks * blockSize * 2 * k, d);
        var q = Upload(gpu, qv, dtype, n, h + 2 * k, d);
        var pool = PoolOf(gpu, poolDType, poolCodes, batch.PoolBlocks, blockSize, 2 * k, d);
        var scales = gpu.FromArray(scaleValues, batch.PoolBlocks, blockSize, 2 * k);
        var output = gpu.Allocate(new Shape(n, h, d), dtype);
        gpu.Fill(output, double.NaN);
        gpu.PagedAttention(q.Slice(1, 0, h), pool, batch.On(gpu), output, 1 / Math.Sqrt(d), window, scales);

        var expected = _cpu.Allocate(new Shape(n, h, d), DType.F64);
        _cpu.PagedAttention(TestTensors.FromDoubles(_cpu, qv, DType.F64, n, h + 2 * k, d).Slice(1, 0, h),
            PoolOf(_cpu, poolDType, poolCodes, batch.PoolBlocks, blockSize, 2 * k, d), batch.On(_cpu), expected, 1 / Math.Sqrt(d), window,
            _cpu.FromArray(scaleValues, batch.PoolBlocks, blockSize, 2 * k));
        AssertClose(TestTensors.ToDoubles(_cpu, expected), Download(gpu, output), dtype == DType.F32 ? 1e-5 : 2e-2,
            $"{poolDType} paged attention {dtype} H={h} K={k} D={d} {kernels} window={window}");
    }

    /// <summary>
    /// The attention input over a quantized pool (which the fused QKV kernels step aside for: the product, Rope, the
    /// quantizing append) equals those calls on the GPU bit for bit, and is within the dtype's tolerance of the CPU: qkv as
    /// <see cref="CudaTestBase.Tolerance"/>, each scale within that relative tolerance, and each code within one step of the
    /// CPU's, in the code's order (a product rounded differently may cross a rounding boundary of the quantization).
    /// </summary>
    [Theory]
    [InlineData(DType.I8, DType.BF16, 1)]
    [InlineData(DType.I8, DType.BF16, 64)]
    [InlineData(DType.I8, DType.F32, 3)]
    [InlineData(DType.F8E4M3, DType.BF16, 1)]
    [InlineData(DType.F8E4M3, DType.BF16, 64)]
    [InlineData(DType.F8E4M3, DType.F32, 3)]
    public void MatMulRopePagedAppendIntoAQuantizedPoolMatchesItsPartsAndTheCpu(DType poolDType, DType dtype, int n)
    {
        const double theta = 500000.0, eps = 1e-5;
        const int h = 8, kh = 2, d = 64, c = 1024, blockSize = 16, poolBlocks = 12, rows = (h + 2 * kh) * d;
        var positions = Enumerable.Range(0, n).Select(i => 5 + 37 * i).ToArray();
        var slots = Enumerable.Range(0, poolBlocks * blockSize).OrderBy(_ => Rng.Next()).Take(n).ToArray();
        var (x, xv) = Random(dtype, 1, n, c);
        var (w, wv) = Random(dtype, 0.1, rows, c);
        var (nw, nwv) = Random(dtype, 1, c);
        PagedBatch BatchOn(IBackend backend) => new(backend.FromArray(new int[n], n, 1), backend.FromArray(Enumerable.Range(0, n + 1).ToArray(), n + 1),
            backend.FromArray(positions.Select(p => p + 1).ToArray(), n), backend.FromArray(slots, n), blockSize);

        var qkv = Poisoned(dtype, n, h + 2 * kh, d);
        var (pool, scales) = QuantizedPool(Gpu, poolDType, poolBlocks, blockSize, 2 * kh, d);
        Gpu.MatMulRopePagedAppend(x, new RmsNormPrologue(nw, eps), w, null, qkv, h, pool, UploadInts(positions, n), BatchOn(Gpu), theta, scales);

        var qkv2 = Poisoned(dtype, n, h + 2 * kh, d);
        var (pool2, scales2) = QuantizedPool(Gpu, poolDType, poolBlocks, blockSize, 2 * kh, d);
        Gpu.RmsNormMatMul(x, new RmsNormPrologue(nw, eps), w, qkv2.Reshape(n, rows));
        Gpu.Rope(qkv2.Reshape(n, 1, h + 2 * kh, d).Slice(2, 0, h + kh), UploadInts(positions, n), theta);
        Gpu.PagedAppend(qkv2.Slice(1, h, 2 * kh), pool2, BatchOn(Gpu), scales2);
        Assert.Equal(Download(qkv2), Download(qkv));
        Assert.Equal(CpuQuantizedPagedOpsTests.Codes(Gpu, pool2), CpuQuantizedPagedOpsTests.Codes(Gpu, pool));
        Assert.Equal(Gpu.ToArray<float>(scales2), Gpu.ToArray<float>(scales));

        var cpuQkv = _cpu.Allocate(new Shape(n, h + 2 * kh, d), DType.F64);
        var (cpuPool, cpuScales) = QuantizedPool(_cpu, poolDType, poolBlocks, blockSize, 2 * kh, d);
        _cpu.MatMulRopePagedAppend(TestTensors.FromDoubles(_cpu, xv, DType.F64, n, c), new RmsNormPrologue(TestTensors.FromDoubles(_cpu, nwv, DType.F64, c), eps),
            TestTensors.FromDoubles(_cpu, wv, DType.F64, rows, c), null, cpuQkv, h, cpuPool, _cpu.FromArray(positions, n), BatchOn(_cpu), theta, cpuScales);
        AssertClose(TestTensors.ToDoubles(_cpu, cpuQkv), Download(qkv), Tolerance(dtype), $"{poolDType} MatMulRopePagedAppend {dtype} N={n}: qkv");
        var (gs, cs) = (Gpu.ToArray<float>(scales), _cpu.ToArray<float>(cpuScales));
        for (int i = 0; i < gs.Length; i++)
            Assert.True(Math.Abs(gs[i] - cs[i]) <= Tolerance(dtype) * Math.Max(Math.Abs(cs[i]), 1e-30) + 1e-30, $"scale {i}: {gs[i]} against {cs[i]}");
        var (gv, cv) = (CpuQuantizedPagedOpsTests.Codes(Gpu, pool), CpuQuantizedPagedOpsTests.Codes(_cpu, cpuPool));
        for (int i = 0; i < gv.Length; i++)
            Assert.True(CodesAgree(poolDType, dtype, gv[i], cv[i]), $"code {i}: {gv[i]:x2} against {cv[i]:x2}");
    }

    /// <summary>
    /// Whether a code the GPU wrote agrees with the CPU's. Int8 codes are evenly spaced (a step is 1/127 of the row's largest
    /// magnitude, wider than a 16-bit product's error), so one step apart. E4M3 codes are spaced by magnitude: near zero a
    /// step is far finer than the error of a bf16 product, which is relative to the row's largest value (mapped to 448), so
    /// there the codes' values may differ by the product's tolerance times 448 plus one step (seen on an H100: 0xbc against
    /// 0xbe, -1.5 and -1.75, in a row whose largest value codes 448; F32 keeps to one step).
    /// </summary>
    private static bool CodesAgree(DType poolDType, DType dtype, byte gpu, byte cpu)
    {
        if (Math.Abs(Ordinal(poolDType, gpu) - Ordinal(poolDType, cpu)) <= 1) return true;
        if (poolDType != DType.F8E4M3 || dtype == DType.F32) return false;
        var (g, c) = ((double)Float8E4M3.ToSingle(gpu), (double)Float8E4M3.ToSingle(cpu));
        double step = Math.Abs(Float8E4M3.ToSingle((byte)((cpu & 0x7F) == 0x7E ? cpu : cpu + 1)) - c);
        return Math.Abs(g - c) <= Tolerance(dtype) * 448 + step;
    }

    /// <summary>Greedy completions with the top two log-probabilities of every position (the CPU engine's).</summary>
    private static async Task<List<(int Token, TokenLogprob? Logprob)>[]> RunWithTopTwo(InferenceEngine engine, int[][] prompts, int maxTokens) =>
        await Task.WhenAll(prompts.Select(async p =>
        {
            var tokens = new List<(int, TokenLogprob?)>();
            await foreach (var e in engine.Submit(new CompletionRequest { Prompt = p, MaxTokens = maxTokens, TopLogprobs = 2 }).ReadAllAsync())
                for (int j = 0; j < e.Tokens.Count; j++) tokens.Add((e.Tokens[j], e.Logprobs?[j]));
            return tokens;
        }));

    /// <summary>
    /// Whether the GPU's tokens equal the CPU's outright (true), or equal them up to a position where the CPU's two most likely
    /// tokens lie within 0.05 nats and the GPU took the second (false; what follows is another text and is not compared). A
    /// key or value whose product lands on the other side of a code's rounding boundary on the GPU (F32 sums in another order)
    /// moves by a whole code step, 1/127 of its row's largest magnitude for int8: that moves a logit by a few hundredths at
    /// most in these models, enough to swap a near tie and nothing else. Any other difference fails.
    /// </summary>
    private static bool AgreeUpToANearTie(List<(int Token, TokenLogprob? Logprob)> cpu, List<int> gpu, string what)
    {
        Assert.Equal(cpu.Count, gpu.Count);
        int k = 0;
        while (k < cpu.Count && cpu[k].Token == gpu[k]) k++;
        if (k == cpu.Count) return true;
        var top = cpu[k].Logprob?.Top ?? throw new InvalidOperationException($"{what}: no log-probabilities at position {k}");
        double gap = top[0].Logprob - top[1].Logprob;
        Console.WriteLine($"[quantized cache] {what}: parted at token {k}: CPU {cpu[k].Token}, GPU {gpu[k]}, the CPU's top two {top[0].Id} and {top[1].Id}, {gap:E2} nats apart");
        Assert.True(top[1].Id == gpu[k] && gap < 0.05, $"{what}: the GPU took {gpu[k]} at token {k} where the CPU's top two are {top[0].Id} and {top[1].Id}, {gap:E2} nats apart");
        return false;
    }

    private static EngineOptions Options(DType kvDType, bool graphs, int draftTokens = 0) => new()
    {
        Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 4 << 20, DType = kvDType },
        Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 64 },
        RecordGraphs = graphs,
        Speculation = new SpeculationOptions { DraftTokens = draftTokens, MinNgram = 1 },
    };

    /// <summary>
    /// Eight concurrent greedy requests (prompts of 1 to 40 tokens: steps mix prefill chunks and decodes, and decode batches
    /// of 1 to 8 replay recorded graphs) with a quantized cache: in F32 on the GPU they give the tokens of the CPU engine with
    /// the same cache, also with prompt-lookup speculation, except that at most one request may part from them at a near tie
    /// (<see cref="AgreeUpToANearTie"/>: on an H100, llama-debug with int8 parted at its 19th token); in BF16 the recorded
    /// and the eager engine agree token for token.
    /// </summary>
    [Theory]
    [InlineData("llama-debug", DType.I8)]
    [InlineData("gpt2-debug", DType.I8)]
    [InlineData("llama-debug", DType.F8E4M3)]
    [InlineData("gpt2-debug", DType.F8E4M3)]
    public async Task BatchedDecodingWithAQuantizedCacheOnTheGpuMatchesTheCpu(string preset, DType kvDType)
    {
        var config = ModelPresets.Get(preset) with { VocabSize = 256, MaxSequenceLength = 64 };
        var onCpu = new Transformer(config, _cpu, DType.F32);
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, onCpu.Parameters, new Random(9));
        var weights = _cpu.ToArray<float>(onCpu.Parameters.Values);
        var onGpu = new Transformer(config, Gpu, DType.F32);
        Gpu.CopyFromHost<float>(weights, onGpu.Parameters.Values);
        var prompts = Enumerable.Range(0, 8).Select(i => Enumerable.Range(0, 1 + 39 * i / 7).Select(j => (i * 37 + j * 11) % 256).ToArray()).ToArray();
        const int tokens = 20;
        foreach (int drafts in new[] { 0, 4 })
        {
            List<(int Token, TokenLogprob? Logprob)>[] expected;
            List<int>[] actual;
            using (var cpuEngine = new InferenceEngine(onCpu, new ByteTokenizer(), Options(kvDType, graphs: false, drafts))) expected = await RunWithTopTwo(cpuEngine, prompts, tokens);
            using (var gpuEngine = new InferenceEngine(onGpu, new ByteTokenizer(), Options(kvDType, graphs: true, drafts)))
            {
                actual = await EngineRequests.RunAll(gpuEngine, prompts, tokens);
                if (drafts == 0) Assert.True(gpuEngine.ReplayedSteps > 0, "no decode step replayed a recorded graph");
                Assert.Equal(0, gpuEngine.Metrics.KvBlocksInUse);
            }
            int parted = 0;
            for (int i = 0; i < prompts.Length; i++) parted += AgreeUpToANearTie(expected[i], actual[i], $"{preset} {kvDType} drafts {drafts} request {i}") ? 0 : 1;
            Assert.True(parted <= 1, $"{parted} of {prompts.Length} requests parted from the CPU's tokens at a near tie; at most one is expected");
        }

        var bf16 = new Transformer(config, Gpu, DType.BF16);
        Gpu.CopyFromHost<float>(weights, bf16.Parameters.Masters!);
        bf16.Parameters.SyncValuesFromMasters();
        List<int>[] recorded, eager;
        using (var engine = new InferenceEngine(bf16, new ByteTokenizer(), Options(kvDType, graphs: true))) recorded = await EngineRequests.RunAll(engine, prompts, tokens);
        using (var engine = new InferenceEngine(bf16, new ByteTokenizer(), Options(kvDType, graphs: false))) eager = await EngineRequests.RunAll(engine, prompts, tokens);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(eager[i], recorded[i]);
    }

    /// <summary>A pool (Blocks, BlockSize, R, D) of <paramref name="poolDType"/> (I8 or F8E4M3) and its F32 scales (Blocks,
    /// BlockSize, R) on <paramref name="backend"/>, filled with code 7 and -1 (an unwritten slot keeps them).</summary>
    private static (Tensor Pool, Tensor Scales) QuantizedPool(IBackend backend, DType poolDType, int blocks, int blockSize, int r, int d)
    {
        var pool = PoolOf(backend, poolDType, Enumerable.Repeat((byte)7, blocks * blockSize * r * d).ToArray(), blocks, blockSize, r, d);
        var scales = backend.Allocate(new Shape(blocks, blockSize, r), DType.F32);
        backend.Fill(scales, -1);
        return (pool, scales);
    }

    /// <summary>A pool of <paramref name="poolDType"/> holding <paramref name="codes"/> (for I8, the values' two's-complement bytes).</summary>
    private static Tensor PoolOf(IBackend backend, DType poolDType, byte[] codes, params int[] shape) => poolDType == DType.I8
        ? backend.FromArray(codes.Select(b => (sbyte)b).ToArray(), shape)
        : backend.FromArray(codes, shape);

    /// <summary>Where a code sits in its format's order of values (I8: the value; E4M3, sign and magnitude: ± the code's low 7
    /// bits), so that neighbouring values are one apart.</summary>
    private static int Ordinal(DType poolDType, byte code) => poolDType == DType.I8 ? (sbyte)code : (code & 0x80) != 0 ? -(code & 0x7F) : code;

    /// <summary>Random codes for <paramref name="rows"/> head rows of <paramref name="d"/> (int8 values in [-127, 127], or any
    /// E4M3 code but the NaNs), and a scale per row giving values of magnitude up to ~1.5, as the float tests' pools hold
    /// (int8: [0.004, 0.012); E4M3: [0.0011, 0.0033)).</summary>
    private (byte[] Codes, float[] Scales) RandomCodes(DType poolDType, int rows, int d)
    {
        var codes = new byte[rows * d];
        for (int i = 0; i < codes.Length; i++)
        {
            int code = poolDType == DType.I8 ? Rng.Next(-127, 128) : Rng.Next(0, 254);
            codes[i] = poolDType == DType.I8 ? (byte)(sbyte)code : (byte)(code >= 0x7F ? code + 1 : code);
        }
        var scales = new float[rows];
        for (int i = 0; i < rows; i++) scales[i] = (float)(poolDType == DType.I8 ? 0.004 + 0.008 * Rng.NextDouble() : 0.0011 + 0.0022 * Rng.NextDouble());
        return (codes, scales);
    }
}
