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
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The int8 paged KV cache on the GPU (skipped, with the reason, without one): <c>paged_append_i8</c> writes the CPU
/// backend's bytes and scales; every attention kernel's <c>_i8</c> instantiation (the tensor-core decode and prefill
/// kernels, the CUDA-core and tiled decode kernels, the generic kernel for other head sizes) matches the CPU backend over the
/// same int8 pool (F64 reference: f32 1e-5, 16-bit 2e-2 relative, the float pool's tolerances: the tensor-core kernels round
/// the dequantized keys and values to 16 bits as a 16-bit pool holds them); and the engine's batched, recorded decode with an
/// int8 cache gives the CPU engine's tokens.
/// </summary>
[Collection("cuda")]
public sealed class CudaInt8PagedKvTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>
    /// A mixed batch (a 37-row prefill chunk after 20 positions, decodes after 300 and 1000, a padding row, a 5-token
    /// prompt) over int8 keys and values: the GPU writes the bytes and scales the CPU writes, bit for bit (the same fp32
    /// operations: <see cref="Int8Quantization.QuantizeRow"/>), including a head of zeros (scale 0); padding writes nothing.
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 64)]
    [InlineData(DType.BF16, 64)]
    [InlineData(DType.BF16, 128)]
    [InlineData(DType.F16, 64)]
    public void PagedAppendToAnInt8PoolWritesTheCpusBytesAndScales(DType dtype, int d)
    {
        const int blockSize = 16, h = 4, k = 2;
        var batch = PagedBatchLayout.Scattered(Rng, blockSize, [37, 1, 1, 1, 5], [57, 301, 1001, 0, 5], spareBlocks: 7);
        int n = batch.Slots.Length;
        var values = Stored(Enumerable.Range(0, n * (h + 2 * k) * d).Select(_ => (Rng.NextDouble() * 2 - 1) * 3).ToArray(), dtype);
        Array.Clear(values, (2 * (h + 2 * k) + h + 1) * d, d);                  // row 2, key head 1: zeros
        var qkv = Upload(values, dtype, n, h + 2 * k, d);
        var (pool, scales) = Int8Pool(Gpu, batch.PoolBlocks, blockSize, 2 * k, d);
        Gpu.PagedAppend(qkv.Slice(1, h, 2 * k), pool, batch.On(Gpu), scales);

        var (cpuPool, cpuScales) = Int8Pool(_cpu, batch.PoolBlocks, blockSize, 2 * k, d);
        _cpu.PagedAppend(TestTensors.FromDoubles(_cpu, values, DType.F32, n, h + 2 * k, d).Slice(1, h, 2 * k), cpuPool, batch.On(_cpu), cpuScales);
        Assert.Equal(_cpu.ToArray<sbyte>(cpuPool), Gpu.ToArray<sbyte>(pool));
        Assert.Equal(_cpu.ToArray<float>(cpuScales), Gpu.ToArray<float>(scales));
        Assert.Contains(0f, Gpu.ToArray<float>(scales).Where((_, i) => i / (2 * k) == batch.Slots[2] && i % (2 * k) == 1));
    }

    /// <summary>
    /// PagedAttention over an int8 pool (random values in [-127, 127], random scales) against the CPU backend over the same
    /// pool in F64, for the same batch, in each kernel family: the default (16-bit rows: paged_decode_mma and, for the
    /// prefill chunk, paged_prefill_hopper on a compute capability 9.0 device or paged_prefill; F32 rows: paged_decode), the
    /// CUDA-core decode kernel, the tiled decode kernel, paged_prefill instead of the Hopper tile, a sliding window, and a
    /// head size of 8 (the generic kernel).
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 8, 2, 64, "default", 0)]
    [InlineData(DType.BF16, 8, 2, 64, "default", 0)]
    [InlineData(DType.BF16, 32, 8, 128, "default", 0)]
    [InlineData(DType.BF16, 14, 2, 64, "default", 0)]
    [InlineData(DType.F16, 14, 2, 64, "default", 0)]
    [InlineData(DType.BF16, 8, 2, 64, "default", 24)]
    [InlineData(DType.BF16, 32, 8, 64, "cuda-cores", 0)]
    [InlineData(DType.BF16, 32, 8, 128, "tiled", 0)]
    [InlineData(DType.F32, 8, 2, 64, "tiled", 24)]
    [InlineData(DType.BF16, 32, 8, 64, "no-hopper", 0)]
    [InlineData(DType.BF16, 8, 2, 128, "no-hopper", 24)]
    [InlineData(DType.F32, 4, 4, 8, "default", 0)]
    public void PagedAttentionOverAnInt8PoolMatchesTheCpu(DType dtype, int h, int k, int d, string kernels, int window)
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
        var (poolValues, scaleValues) = RandomInt8(batch.PoolBlocks * blockSize * 2 * k, d);
        var q = Upload(gpu, qv, dtype, n, h + 2 * k, d);
        var pool = gpu.FromArray(poolValues, batch.PoolBlocks, blockSize, 2 * k, d);
        var scales = gpu.FromArray(scaleValues, batch.PoolBlocks, blockSize, 2 * k);
        var output = gpu.Allocate(new Shape(n, h, d), dtype);
        gpu.Fill(output, double.NaN);
        gpu.PagedAttention(q.Slice(1, 0, h), pool, batch.On(gpu), output, 1 / Math.Sqrt(d), window, scales);

        var expected = _cpu.Allocate(new Shape(n, h, d), DType.F64);
        _cpu.PagedAttention(TestTensors.FromDoubles(_cpu, qv, DType.F64, n, h + 2 * k, d).Slice(1, 0, h),
            _cpu.FromArray(poolValues, batch.PoolBlocks, blockSize, 2 * k, d), batch.On(_cpu), expected, 1 / Math.Sqrt(d), window,
            _cpu.FromArray(scaleValues, batch.PoolBlocks, blockSize, 2 * k));
        AssertClose(TestTensors.ToDoubles(_cpu, expected), Download(gpu, output), dtype == DType.F32 ? 1e-5 : 2e-2,
            $"int8 paged attention {dtype} H={h} K={k} D={d} {kernels} window={window}");
    }

    /// <summary>
    /// The attention input over an int8 pool (which the fused QKV kernels step aside for: the product, Rope, the quantizing
    /// append) equals those calls on the GPU bit for bit, and is within the dtype's tolerance of the CPU: qkv as
    /// <see cref="CudaTestBase.Tolerance"/>, each scale within that relative tolerance, and each int8 value within one step
    /// (a product rounded differently may cross a rounding boundary of the quantization).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 1)]
    [InlineData(DType.BF16, 64)]
    [InlineData(DType.F32, 3)]
    public void MatMulRopePagedAppendIntoAnInt8PoolMatchesItsPartsAndTheCpu(DType dtype, int n)
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
        var (pool, scales) = Int8Pool(Gpu, poolBlocks, blockSize, 2 * kh, d);
        Gpu.MatMulRopePagedAppend(x, new RmsNormPrologue(nw, eps), w, null, qkv, h, pool, UploadInts(positions, n), BatchOn(Gpu), theta, scales);

        var qkv2 = Poisoned(dtype, n, h + 2 * kh, d);
        var (pool2, scales2) = Int8Pool(Gpu, poolBlocks, blockSize, 2 * kh, d);
        Gpu.RmsNormMatMul(x, new RmsNormPrologue(nw, eps), w, qkv2.Reshape(n, rows));
        Gpu.Rope(qkv2.Reshape(n, 1, h + 2 * kh, d).Slice(2, 0, h + kh), UploadInts(positions, n), theta);
        Gpu.PagedAppend(qkv2.Slice(1, h, 2 * kh), pool2, BatchOn(Gpu), scales2);
        Assert.Equal(Download(qkv2), Download(qkv));
        Assert.Equal(Gpu.ToArray<sbyte>(pool2), Gpu.ToArray<sbyte>(pool));
        Assert.Equal(Gpu.ToArray<float>(scales2), Gpu.ToArray<float>(scales));

        var cpuQkv = _cpu.Allocate(new Shape(n, h + 2 * kh, d), DType.F64);
        var (cpuPool, cpuScales) = Int8Pool(_cpu, poolBlocks, blockSize, 2 * kh, d);
        _cpu.MatMulRopePagedAppend(TestTensors.FromDoubles(_cpu, xv, DType.F64, n, c), new RmsNormPrologue(TestTensors.FromDoubles(_cpu, nwv, DType.F64, c), eps),
            TestTensors.FromDoubles(_cpu, wv, DType.F64, rows, c), null, cpuQkv, h, cpuPool, _cpu.FromArray(positions, n), BatchOn(_cpu), theta, cpuScales);
        AssertClose(TestTensors.ToDoubles(_cpu, cpuQkv), Download(qkv), Tolerance(dtype), $"int8 MatMulRopePagedAppend {dtype} N={n}: qkv");
        var (gs, cs) = (Gpu.ToArray<float>(scales), _cpu.ToArray<float>(cpuScales));
        for (int i = 0; i < gs.Length; i++)
            Assert.True(Math.Abs(gs[i] - cs[i]) <= Tolerance(dtype) * Math.Max(Math.Abs(cs[i]), 1e-30) + 1e-30, $"scale {i}: {gs[i]} against {cs[i]}");
        var (gv, cv) = (Gpu.ToArray<sbyte>(pool), _cpu.ToArray<sbyte>(cpuPool));
        for (int i = 0; i < gv.Length; i++) Assert.True(Math.Abs(gv[i] - cv[i]) <= 1, $"value {i}: {gv[i]} against {cv[i]}");
    }

    private static EngineOptions Options(bool graphs, int draftTokens = 0) => new()
    {
        Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 4 << 20, DType = DType.I8 },
        Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 64 },
        RecordGraphs = graphs,
        Speculation = new SpeculationOptions { DraftTokens = draftTokens, MinNgram = 1 },
    };

    /// <summary>
    /// Eight concurrent greedy requests (prompts of 1 to 40 tokens: steps mix prefill chunks and decodes, and decode batches
    /// of 1 to 8 replay recorded graphs) with an int8 cache: in F32 on the GPU they give the tokens of the CPU engine with an
    /// int8 cache (the random model's logits are far from ties; a key rounded across an int8 step by the GPU's other
    /// summation order moves a logit by far less), also with prompt-lookup speculation; in BF16 the recorded and the eager
    /// engine agree token for token.
    /// </summary>
    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    public async Task BatchedDecodingWithAnInt8CacheOnTheGpuMatchesTheCpu(string preset)
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
            List<int>[] expected, actual;
            using (var cpuEngine = new InferenceEngine(onCpu, new ByteTokenizer(), Options(graphs: false, drafts))) expected = await EngineRequests.RunAll(cpuEngine, prompts, tokens);
            using (var gpuEngine = new InferenceEngine(onGpu, new ByteTokenizer(), Options(graphs: true, drafts)))
            {
                actual = await EngineRequests.RunAll(gpuEngine, prompts, tokens);
                if (drafts == 0) Assert.True(gpuEngine.ReplayedSteps > 0, "no decode step replayed a recorded graph");
                Assert.Equal(0, gpuEngine.Metrics.KvBlocksInUse);
            }
            for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], actual[i]);
        }

        var bf16 = new Transformer(config, Gpu, DType.BF16);
        Gpu.CopyFromHost<float>(weights, bf16.Parameters.Masters!);
        bf16.Parameters.SyncValuesFromMasters();
        List<int>[] recorded, eager;
        using (var engine = new InferenceEngine(bf16, new ByteTokenizer(), Options(graphs: true))) recorded = await EngineRequests.RunAll(engine, prompts, tokens);
        using (var engine = new InferenceEngine(bf16, new ByteTokenizer(), Options(graphs: false))) eager = await EngineRequests.RunAll(engine, prompts, tokens);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(eager[i], recorded[i]);
    }

    /// <summary>An I8 pool (Blocks, BlockSize, R, D) and its F32 scales (Blocks, BlockSize, R) on <paramref name="backend"/>,
    /// filled with 7 and -1 (an unwritten slot keeps them).</summary>
    private static (Tensor Pool, Tensor Scales) Int8Pool(IBackend backend, int blocks, int blockSize, int r, int d)
    {
        var pool = backend.Allocate(new Shape(blocks, blockSize, r, d), DType.I8);
        var scales = backend.Allocate(new Shape(blocks, blockSize, r), DType.F32);
        backend.CopyFromHost<sbyte>(Enumerable.Repeat((sbyte)7, (int)pool.NumElements).ToArray(), pool);
        backend.Fill(scales, -1);
        return (pool, scales);
    }

    /// <summary>Random int8 values in [-127, 127] for <paramref name="rows"/> head rows of <paramref name="d"/>, and a scale per
    /// row in [0.004, 0.012) (values of magnitude up to ~1.5, as the float tests' pools hold).</summary>
    private (sbyte[] Values, float[] Scales) RandomInt8(int rows, int d)
    {
        var values = new sbyte[rows * d];
        for (int i = 0; i < values.Length; i++) values[i] = (sbyte)Rng.Next(-127, 128);
        var scales = new float[rows];
        for (int i = 0; i < rows; i++) scales[i] = (float)(0.004 + 0.008 * Rng.NextDouble());
        return (values, scales);
    }
}
