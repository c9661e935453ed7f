using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Inference.Serving;

/// <summary>
/// Serving with an int8 paged KV cache (<see cref="PagedKvCacheOptions.DType"/> I8) on random debug models (F64, CPU). The
/// oracle is the same engine whose float cache holds what the int8 values stand for (<see cref="DequantizedKvBackend"/>):
/// on the CPU both compute the same numbers, so tokens and log-probabilities must be equal exactly, through chunked prefill,
/// prefix sharing, preemption by recompute, prompt-lookup and draft-model speculation; and tensor-parallel ranks, each with
/// its own int8 pool, must give one device's int8 tokens.
/// </summary>
public class Int8KvCacheServingTests
{
    private const int BlockSize = 4, Context = 64, Seed = 11;

    // Two prompts share a 12-token prefix (three full blocks); the long one is prefilled in chunks of the 16-token budget.
    private static readonly int[][] Prompts =
    [
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 40, 41],
        [99, 98, 97],
        [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81],
        [42, 42],
    ];

    /// <summary>Options with room for exactly <paramref name="blocks"/> blocks of a model of <paramref name="config"/> in
    /// <paramref name="kvDType"/>'s pool (null: the model's F64), so that the int8 engine and its oracle schedule alike.</summary>
    private static EngineOptions Options(TransformerConfig config, DType? kvDType, int blocks, int draftTokens = 2) => new()
    {
        Cache = new PagedKvCacheOptions
        {
            BlockSize = BlockSize, DType = kvDType,
            MemoryBytes = blocks * PagedKvCache.BlockBytes(kvDType ?? DType.F64, config.Layers, config.EffectiveKvHeads, config.HeadSize, BlockSize),
        },
        Scheduler = new SchedulerOptions { MaxBatch = 4, TokenBudget = 16, MaxQueue = 16 },
        Speculation = new SpeculationOptions { DraftTokens = draftTokens, MinNgram = 1 },
        TensorParallelKeepAlive = TimeSpan.FromHours(1),
    };

    private static async Task<List<(int Token, double Logprob)>[]> Serve(InferenceEngine engine)
    {
        // Two waves: the second finds the first's prefix blocks in the cache.
        var results = new List<List<(int, double)>>();
        foreach (var wave in new[] { Prompts, Prompts[..2] })
            results.AddRange(await Task.WhenAll(wave.Select(async p =>
            {
                var tokens = new List<(int, double)>();
                await foreach (var e in engine.Submit(new CompletionRequest { Prompt = p, MaxTokens = 20, TopLogprobs = 1 }).ReadAllAsync())
                    for (int i = 0; i < e.Tokens.Count; i++) tokens.Add((e.Tokens[i], e.Logprobs![i].Token.Logprob));
                return tokens;
            })));
        return [.. results];
    }

    /// <summary>
    /// 20 blocks of 4 positions for 4 sequences of up to 42 positions: sequences are preempted and recomputed; the second
    /// wave shares the first's prefix blocks; prompt lookup verifies guesses. Every token and log-probability equals the
    /// oracle's (F64, exact: the same sums of the same numbers).
    /// </summary>
    [Theory(Timeout = 120_000)]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
    public async Task AnInt8CacheServesWhatAFloatCacheHoldingItsValuesServes(string preset)
    {
        TestContext.Current.SendDiagnosticMessage($"model seed {Seed}");
        var cpu = new CpuBackend(1);
        var oracleBackend = new DequantizedKvBackend(cpu);
        var int8Model = ByteModels.Random(cpu, preset, Seed, Context);
        var oracleModel = ByteModels.Random(oracleBackend, preset, Seed, Context);
        var config = int8Model.Config;
        List<(int Token, double Logprob)>[] expected, actual;
        EngineMetrics oracleMetrics, int8Metrics;
        using (var oracle = new InferenceEngine(oracleModel, new ByteTokenizer(), Options(config, null, blocks: 20)))
        {
            expected = await Serve(oracle);
            oracleMetrics = oracle.Metrics;
        }
        using (var int8 = new InferenceEngine(int8Model, new ByteTokenizer(), Options(config, DType.I8, blocks: 20)))
        {
            actual = await Serve(int8);
            int8Metrics = int8.Metrics;
        }
        Assert.True(oracleBackend.RowsQuantized > 0);
        Assert.Equal(20, int8Metrics.KvBlocksTotal);
        TestContext.Current.SendDiagnosticMessage($"{preset}: {int8Metrics.Preemptions} preemptions, {int8Metrics.CachedPromptTokens} cached prompt tokens, " +
            $"{int8Metrics.AcceptedDraftTokens} of {int8Metrics.DraftTokens} guesses kept");
        Assert.True(int8Metrics.Preemptions > 0, "no sequence was preempted");
        Assert.True(int8Metrics.CachedPromptTokens > 0, "no prefix block was shared");
        Assert.True(int8Metrics.DraftTokens > 0, "no guess was verified");
        Assert.Equal(oracleMetrics.Preemptions, int8Metrics.Preemptions);
        Assert.Equal(oracleMetrics.CachedPromptTokens, int8Metrics.CachedPromptTokens);
        Assert.Equal(0, int8Metrics.KvBlocksInUse);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i]);
    }

    /// <summary>
    /// A draft model (the served weights: every guess right) with an int8 served cache: its own pool follows the served one
    /// into int8, and the output equals the oracle's, whose draft model also runs over the dequantizing backend.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task ADraftModelOverAnInt8CacheServesTheOraclesTokens()
    {
        var cpu = new CpuBackend(1);
        var oracleBackend = new DequantizedKvBackend(cpu);
        var config = ByteModels.Random(cpu, "llama-debug", Seed, Context).Config;
        List<(int, double)>[] expected, actual;
        using (var oracle = new InferenceEngine(ByteModels.Random(oracleBackend, "llama-debug", Seed, Context), new ByteTokenizer(),
            Options(config, null, blocks: 64, draftTokens: 3), draftModel: ByteModels.Random(oracleBackend, "llama-debug", Seed, Context)))
            expected = await Serve(oracle);
        using (var int8 = new InferenceEngine(ByteModels.Random(cpu, "llama-debug", Seed, Context), new ByteTokenizer(),
            Options(config, DType.I8, blocks: 64, draftTokens: 3), draftModel: ByteModels.Random(cpu, "llama-debug", Seed, Context)))
        {
            actual = await Serve(int8);
            var m = int8.Metrics;
            TestContext.Current.SendDiagnosticMessage($"{m.AcceptedDraftTokens} of {m.DraftTokens} guesses kept");
            Assert.True(m.DraftTokens > 0);
            Assert.Equal(m.DraftTokens, m.AcceptedDraftTokens);   // the draft's int8 pool computes what the served one does
        }
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i]);
    }

    /// <summary>
    /// Tensor parallelism on 2 CPU thread ranks, each holding its own key/value heads in an int8 pool: rank 0's tokens equal
    /// one device's with an int8 cache. Scales are per (position, head), so a rank quantizes its heads as one device does;
    /// only the F64 rounding of the split products could move a value across a rounding boundary, which these random models'
    /// well-separated logits do not feel (the float tensor-parallel serving tests make the same comparison).
    /// </summary>
    [Theory(Timeout = 120_000)]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
    public async Task TensorParallelRanksWithInt8PoolsServeOneDevicesInt8Tokens(string preset)
    {
        const int tp = 2;
        var config = ModelPresets.Get(preset) with { VocabSize = 256, MaxSequenceLength = Context };
        var options = Options(config, DType.I8, blocks: 64);
        var one = new Transformer(config, new CpuBackend(1), DType.F64);
        one.InitializeWeights(seed: 3);
        List<(int, double)>[] expected;
        using (var engine = new InferenceEngine(one, new ByteTokenizer(), options)) expected = await Serve(engine);
        var results = await Task.Run(() => ParallelTraining.RunThreadRanks(tp, ctx => TensorParallelServingRank.Run(ctx.Rank, tp, ctx.Backend, ctx.Factory,
            config, DType.F64, options with { Cache = options.Cache with { MemoryBytes = options.Cache.MemoryBytes / tp } }, engine =>
            {
                Assert.Equal(64, engine.Metrics.KvBlocksTotal);               // each rank's half of the heads in half the bytes
                return Serve(engine).GetAwaiter().GetResult();
            }), TimeSpan.FromSeconds(60)), TestContext.Current.CancellationToken);
        for (int i = 0; i < expected.Length; i++)
            Assert.Equal(expected[i].Select(t => t.Item1), results[0]![i].Select(t => t.Item1));
    }

    /// <summary>The same bytes hold (8 D) / (D + 4) times the positions of an F64 cache in int8 (D = 16 here, 6.4x: each
    /// (position, head) is D bytes and a 4-byte scale instead of 8 D bytes); a float dtype other than the model's is refused
    /// by name.</summary>
    [Fact]
    public void AnInt8CacheHoldsMoreBlocksInTheSameBytesAndOtherDTypesAreRefused()
    {
        var cpu = new CpuBackend(1);
        var config = ByteModels.Random(cpu, "llama-debug", Seed, Context).Config;
        var options = new PagedKvCacheOptions { BlockSize = BlockSize, MemoryBytes = 1 << 20 };
        using var f64 = new PagedKvCache(cpu, DType.F64, config.Layers, config.EffectiveKvHeads, config.HeadSize, options);
        using var i8 = new PagedKvCache(cpu, DType.F64, config.Layers, config.EffectiveKvHeads, config.HeadSize, options with { DType = DType.I8 });
        int d = config.HeadSize;
        Assert.Equal(DType.I8, i8.DType);
        Assert.Null(f64.Scales(0));
        Assert.Equal(new Shape(i8.Blocks, BlockSize, 2 * config.EffectiveKvHeads), i8.Scales(0)!.Shape);
        Assert.Equal((long)config.Layers * BlockSize * 2 * config.EffectiveKvHeads * (d + 4), i8.BytesPerBlock);
        Assert.Equal(8.0 * d / (d + 4), (double)i8.Blocks / f64.Blocks, 2);
        var e = Assert.Throws<ArgumentException>(() => new PagedKvCache(cpu, DType.F64, config.Layers, config.EffectiveKvHeads, config.HeadSize, options with { DType = DType.F32 }));
        Assert.Contains("PagedKvCacheOptions.DType", e.Message);
    }
}
