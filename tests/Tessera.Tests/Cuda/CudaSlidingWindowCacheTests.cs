using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The KV cache bounded by a sliding window on the GPU (the twins of the CPU tests in Inference/Paging/SlidingWindowCacheTests):
/// the paged attention kernels (generic, vectorized decode with key splits, tensor-core prefill) over a window never read a
/// block left of it (those table entries point at a block of NaNs) and agree with the CPU backend (F64 on the same rounded
/// inputs; f32 1e-5, bf16 2e-2 relative, as <see cref="CudaPagedServingTests"/>); and generation and serving of a windowed
/// model far past its window through the bounded cache give the tokens of the CPU's unbounded dense cache.
/// </summary>
[Collection("cuda")]
public sealed class CudaSlidingWindowCacheTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>
    /// Sequences: a 37-row prefill chunk after 20 positions, decodes after 300 and 1000 positions, a padding row, a 5-token
    /// prompt, and a 300-row chunk after 400 positions (tensor-core tiles in bf16). Blocks wholly left of the window of a
    /// sequence's first row point at the pool's last block, filled with NaN: a kernel that reads one poisons its row.
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 8, 2, 64, 16)]
    [InlineData(DType.F32, 4, 4, 8, 40)]      // the generic kernel (head size 8)
    [InlineData(DType.BF16, 8, 2, 64, 16)]
    [InlineData(DType.BF16, 32, 8, 64, 100)]  // a window across block and tile edges; key splits inside the window
    [InlineData(DType.BF16, 32, 8, 128, 24)]
    public void PagedAttentionOverAWindowMatchesTheCpuAndNeverReadsBlocksLeftOfIt(DType dtype, int h, int k, int d, int window)
    {
        const int bs = 16;
        var batch = PagedBatchLayout.Scattered(Rng, bs, [37, 1, 1, 1, 5, 300], [57, 301, 1001, 0, 5, 700], spareBlocks: 0, window);
        int poolBlocks = batch.PoolBlocks, nanBlock = batch.OutsideWindowBlock;
        int n = batch.Slots.Length;
        var (q, qv) = Random(dtype, 1.0, n, h + 2 * k, d);
        var (pool, poolValues) = Random(dtype, 1.0, poolBlocks, bs, 2 * k, d);
        for (long i = (long)nanBlock * bs * 2 * k * d; i < poolValues.Length; i++) poolValues[i] = double.NaN;
        pool = Upload(poolValues, dtype, poolBlocks, bs, 2 * k, d);
        var output = Poisoned(dtype, n, h, d);
        Gpu.PagedAttention(q.Slice(1, 0, h), pool, batch.On(Gpu), output, 1 / Math.Sqrt(d), window);

        var cpuQ = TestTensors.FromDoubles(_cpu, qv, DType.F64, n, h + 2 * k, d);
        var cpuPool = TestTensors.FromDoubles(_cpu, poolValues, DType.F64, poolBlocks, bs, 2 * k, d);
        var expected = _cpu.Allocate(new Shape(n, h, d), DType.F64);
        _cpu.PagedAttention(cpuQ.Slice(1, 0, h), cpuPool, batch.On(_cpu), expected, 1 / Math.Sqrt(d), window);
        AssertClose(TestTensors.ToDoubles(_cpu, expected), Download(output), dtype == DType.F32 ? 1e-5 : 2e-2,
            $"windowed paged attention {dtype} H={h} K={k} D={d} window={window}");
    }

    private static TransformerConfig Windowed => ModelPresets.Get("mistral-debug") with { VocabSize = 256, MaxSequenceLength = 128, SlidingWindow = 12 };

    /// <summary>
    /// `tessera generate`'s path: a 20-token prompt and 60 greedy tokens (80 positions, 6.7 windows of 12) through the bounded
    /// cache on the GPU (prefill in chunks of 16, decode steps recorded and replayed) give the tokens of the CPU's dense,
    /// unbounded windowed cache (F32 on both: the same rounding up to summation order, so greedy choices agree), and the
    /// pool holds the bound, not the sequence.
    /// </summary>
    [Fact]
    public void BoundedGenerationOnTheGpuMatchesTheUnboundedDenseCacheOnTheCpu()
    {
        var (onCpu, onGpu) = Models(DType.F32);
        var prompt = Enumerable.Range(0, 20).Select(j => (j * 29 + 3) % 256).ToArray();
        var expected = new TextGenerator(onCpu).Generate(prompt, new GenerationOptions { MaxNewTokens = 60, BoundedWindowCache = false }).ToList();
        var generator = new TextGenerator(onGpu);
        var bounded = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 60, WindowPrefillChunk = 16 }).ToList();
        Assert.Equal(expected, bounded);
        Assert.True(generator.LastRunRecorded, "no decode step replayed a recorded graph");
        Assert.Equal(16 * Scheduler.BlocksHeld(80, 16, 12, 16), generator.LastRunCachePositions);   // 3 blocks: 48 positions for 80
        var dense = generator.Generate(prompt, new GenerationOptions { MaxNewTokens = 60, BoundedWindowCache = false }).ToList();
        Assert.Equal(expected, dense);
    }

    /// <summary>
    /// Serving: six concurrent greedy requests of a windowed model (prompts of 3 to 40 tokens, 70 new tokens each) on the GPU
    /// engine give the CPU's dense unbounded tokens, and every block goes back when they finish.
    /// </summary>
    [Fact]
    public async Task WindowedServingOnTheGpuMatchesTheUnboundedDenseCacheOnTheCpu()
    {
        var (onCpu, onGpu) = Models(DType.F32);
        var prompts = Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 3 + 37 * i / 5).Select(j => (i * 41 + j * 13) % 256).ToArray()).ToArray();
        const int tokens = 70;
        var options = new GenerationOptions { MaxNewTokens = tokens, BoundedWindowCache = false };
        var expected = prompts.Select(p => new TextGenerator(onCpu).Generate(p, options).ToList()).ToList();
        var engineOptions = new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 4 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 32 },
            RecordGraphs = true,
        };
        using var engine = new InferenceEngine(onGpu, new ByteTokenizer(), engineOptions);
        var results = await Task.WhenAll(prompts.Select(async p =>
        {
            var produced = new List<int>();
            await foreach (var e in engine.Submit(new CompletionRequest { Prompt = p, MaxTokens = tokens }).ReadAllAsync()) produced.AddRange(e.Tokens);
            return produced;
        }));
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], results[i]);
        Assert.Equal(0, engine.Metrics.KvBlocksInUse);
    }

    /// <summary>
    /// Decode speed on the llama-1b shape (bf16, constant weights, a 512-token prompt, 512 new tokens), printed for the log
    /// (not a pass/fail bar): without a window through the dense cache (the recorded decode step of docs/benchmarks.md), and
    /// with a window of 256 through the dense unbounded cache and through the bounded one (paged, chunks of 512: a pool of
    /// 49 blocks, 784 positions, instead of 2048).
    /// </summary>
    [Fact]
    public void WindowedGenerationOnLlama1bShapeReportsItsSpeed()
    {
        var prompt = Enumerable.Range(0, 512).Select(j => (j * 7) % 1000).ToArray();
        foreach (var (label, window, bounded) in new[] { ("no window, dense", 0, false), ("window 256, dense", 256, false), ("window 256, bounded", 256, true) })
        {
            var config = ModelPresets.Get("llama-1b") with { MaxSequenceLength = 2048, SlidingWindow = window };
            var model = new Transformer(config, Gpu, DType.BF16);
            Gpu.Fill(model.Parameters.Values, 0.01);
            var generator = new TextGenerator(model);
            var options = new GenerationOptions { MaxNewTokens = 512, BoundedWindowCache = bounded, WindowPrefillChunk = 512 };
            generator.Generate(prompt, options with { MaxNewTokens = 8 }).ToList();   // compile, record
            var watch = System.Diagnostics.Stopwatch.StartNew();
            int first = 0, count = 0;
            double firstMs = 0;
            foreach (var _ in generator.Generate(prompt, options))
            {
                if (count++ == 0) { firstMs = watch.Elapsed.TotalMilliseconds; first = 1; }
            }
            double decodeMs = (watch.Elapsed.TotalMilliseconds - firstMs) / Math.Max(1, count - first);
            Console.WriteLine($"[window cache] llama-1b bf16, {label}: prefill {firstMs:F1} ms, decode {decodeMs:F3} ms/token over {count - 1} tokens, " +
                $"cache {generator.LastRunCachePositions} positions, recorded {generator.LastRunRecorded}");
        }
    }

    private (Transformer OnCpu, Transformer OnGpu) Models(DType dtype)
    {
        var onCpu = new Transformer(Windowed, _cpu, DType.F32);
        const int seed = 9;
        Console.WriteLine($"[sliding window cache] weight seed {seed}");
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, onCpu.Parameters, new Random(seed));
        var onGpu = new Transformer(Windowed, Gpu, dtype);
        Gpu.CopyFromHost<float>(_cpu.ToArray<float>(onCpu.Parameters.Values), onGpu.Parameters.Values);
        return (onCpu, onGpu);
    }
}
