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
/// Serving with a quantized paged KV cache (<see cref="PagedKvCacheOptions.DType"/> I8 or F8E4M3: each test runs for both)
/// on random debug models (F64, CPU). The oracle is the same engine whose float cache holds what the codes stand for
/// (<see cref="DequantizedKvBackend"/>): on the CPU both compute the same numbers, so tokens and log-probabilities must be
/// equal exactly, through chunked prefill, prefix sharing, preemption by recompute, prompt-lookup and draft-model
/// speculation; and tensor-parallel ranks, each with its own quantized pool, must give one device's tokens.
/// </summary>
public class QuantizedKvCacheServingTests
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
    /// <paramref name="kvDType"/>'s pool (null: the model's F64), so that the quantized engine and its oracle schedule alike.</summary>
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
    [InlineData("gpt2-debug", DType.I8)]
    [InlineData("llama-debug", DType.I8)]
    [InlineData("gpt2-debug", DType.F8E4M3)]
    [InlineData("llama-debug", DType.F8E4M3)]
    public async Task AQuantizedCacheServesWhatAFloatCacheHoldingItsValuesServes(string preset, DType kvDType)
    {
        TestContext.Current.SendDiagnosticMessage($"model seed {Seed}");
        var cpu = new CpuBackend(1);
        var oracleBackend = new DequantizedKvBackend(cpu, kvDType);
        var quantizedModel = ByteModels.Random(cpu, preset, Seed, Context);
        var oracleModel = ByteModels.Random(oracleBackend, preset, Seed, Context);
        var config = quantizedModel.Config;
        List<(int Token, double Logprob)>[] expected, actual;
        EngineMetrics oracleMetrics, quantizedMetrics;
        using (var oracle = new InferenceEngine(oracleModel, new ByteTokenizer(), Options(config, null, blocks: 20)))
        {
            expected = await Serve(oracle);
            oracleMetrics = oracle.Metrics;
        }
        using (var quantized = new InferenceEngine(quantizedModel, new ByteTokenizer(), Options(config, kvDType, blocks: 20)))
        {
            actual = await Serve(quantized);
            quantizedMetrics = quantized.Metrics;
        }
        Assert.True(oracleBackend.RowsQuantized > 0);
        Assert.Equal(20, quantizedMetrics.KvBlocksTotal);
        TestContext.Current.SendDiagnosticMessage($"{preset}: {quantizedMetrics.Preemptions} preemptions, {quantizedMetrics.CachedPromptTokens} cached prompt tokens, " +
            $"{quantizedMetrics.AcceptedDraftTokens} of {quantizedMetrics.DraftTokens} guesses kept");
        Assert.True(quantizedMetrics.Preemptions > 0, "no sequence was preempted");
        Assert.True(quantizedMetrics.CachedPromptTokens > 0, "no prefix block was shared");
        Assert.True(quantizedMetrics.DraftTokens > 0, "no guess was verified");
        // How many preemptions and shared blocks there are depends on when the concurrent requests reach each engine's loop
        // (a step later, a different batch), so the two engines' counts are not compared; each request's tokens and
        // log-probabilities do not depend on its batch, and those must be equal.
        Assert.True(oracleMetrics.Preemptions > 0 && oracleMetrics.CachedPromptTokens > 0, "the oracle neither preempted nor shared a block");
        Assert.Equal(0, quantizedMetrics.KvBlocksInUse);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i]);
    }

    /// <summary>
    /// A draft model (the served weights: every guess right) with a quantized served cache: its own pool follows the served
    /// one into the same code, and the output equals the oracle's, whose draft model also runs over the dequantizing backend.
    /// </summary>
    [Theory(Timeout = 120_000)]
    [InlineData(DType.I8)]
    [InlineData(DType.F8E4M3)]
    public async Task ADraftModelOverAQuantizedCacheServesTheOraclesTokens(DType kvDType)
    {
        var cpu = new CpuBackend(1);
        var oracleBackend = new DequantizedKvBackend(cpu, kvDType);
        var config = ByteModels.Random(cpu, "llama-debug", Seed, Context).Config;
        List<(int, double)>[] expected, actual;
        using (var oracle = new InferenceEngine(ByteModels.Random(oracleBackend, "llama-debug", Seed, Context), new ByteTokenizer(),
            Options(config, null, blocks: 64, draftTokens: 3), draftModel: ByteModels.Random(oracleBackend, "llama-debug", Seed, Context)))
            expected = await Serve(oracle);
        using (var quantized = new InferenceEngine(ByteModels.Random(cpu, "llama-debug", Seed, Context), new ByteTokenizer(),
            Options(config, kvDType, blocks: 64, draftTokens: 3), draftModel: ByteModels.Random(cpu, "llama-debug", Seed, Context)))
        {
            actual = await Serve(quantized);
            var m = quantized.Metrics;
            TestContext.Current.SendDiagnosticMessage($"{m.AcceptedDraftTokens} of {m.DraftTokens} guesses kept");
            Assert.True(m.DraftTokens > 0);
            Assert.Equal(m.DraftTokens, m.AcceptedDraftTokens);   // the draft's quantized pool computes what the served one does
        }
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], actual[i]);
    }

    /// <summary>
    /// Tensor parallelism on 2 CPU thread ranks, each holding its own key/value heads in a quantized pool: rank 0's tokens
    /// equal one device's with the same cache. Scales are per (position, head), so a rank quantizes its heads as one device does;
    /// only the F64 rounding of the split products could move a value across a rounding boundary, which these random models'
    /// well-separated logits do not feel (the float tensor-parallel serving tests make the same comparison).
    /// </summary>
    [Theory(Timeout = 120_000)]
    [InlineData("gpt2-debug", DType.I8)]
    [InlineData("llama-debug", DType.I8)]
    [InlineData("gpt2-debug", DType.F8E4M3)]
    [InlineData("llama-debug", DType.F8E4M3)]
    public async Task TensorParallelRanksWithQuantizedPoolsServeOneDevicesTokens(string preset, DType kvDType)
    {
        const int tp = 2;
        var config = ModelPresets.Get(preset) with { VocabSize = 256, MaxSequenceLength = Context };
        var options = Options(config, kvDType, blocks: 64);
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

    /// <summary>The same bytes hold (8 D) / (D + 4) times the positions of an F64 cache in a quantized pool (D = 16 here,
    /// 6.4x: each (position, head) is D bytes and a 4-byte scale instead of 8 D bytes); a float dtype other than the model's
    /// is refused by name.</summary>
    [Theory]
    [InlineData(DType.I8)]
    [InlineData(DType.F8E4M3)]
    public void AQuantizedCacheHoldsMoreBlocksInTheSameBytesAndOtherDTypesAreRefused(DType kvDType)
    {
        var cpu = new CpuBackend(1);
        var config = ByteModels.Random(cpu, "llama-debug", Seed, Context).Config;
        var options = new PagedKvCacheOptions { BlockSize = BlockSize, MemoryBytes = 1 << 20 };
        using var f64 = new PagedKvCache(cpu, DType.F64, config.Layers, config.EffectiveKvHeads, config.HeadSize, options);
        using var q8 = new PagedKvCache(cpu, DType.F64, config.Layers, config.EffectiveKvHeads, config.HeadSize, options with { DType = kvDType });
        int d = config.HeadSize;
        Assert.Equal(kvDType, q8.DType);
        Assert.Equal(kvDType, q8.Pool(0).DType);
        Assert.Null(f64.Scales(0));
        Assert.Equal(new Shape(q8.Blocks, BlockSize, 2 * config.EffectiveKvHeads), q8.Scales(0)!.Shape);
        Assert.Equal((long)config.Layers * BlockSize * 2 * config.EffectiveKvHeads * (d + 4), q8.BytesPerBlock);
        Assert.Equal(8.0 * d / (d + 4), (double)q8.Blocks / f64.Blocks, 2);
        var e = Assert.Throws<ArgumentException>(() => new PagedKvCache(cpu, DType.F64, config.Layers, config.EffectiveKvHeads, config.HeadSize, options with { DType = DType.F32 }));
        Assert.Contains("PagedKvCacheOptions.DType", e.Message);
    }
}
