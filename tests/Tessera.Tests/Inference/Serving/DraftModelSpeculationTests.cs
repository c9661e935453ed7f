using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Serving;

/// <summary>
/// Speculative decoding with a draft model (<see cref="ModelDrafter"/>) in the engine, on random llama-debug models (F64,
/// CPU): exact equality with decoding one token a step is the oracle, as for prompt lookup. A draft with the served model's
/// own weights guesses right every time, a different one mostly wrong: both must leave the output unchanged.
/// </summary>
public class DraftModelSpeculationTests
{
    private readonly CpuBackend _cpu = new(1);

    private static readonly int[][] Prompts =
    [
        [10, 20, 30, 40, 50, 60, 70],
        [5],
        [99, 98, 97],
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
        [42, 42],
    ];

    private Transformer Model(int seed, int layers = 0) => ByteModels.Random(_cpu, "llama-debug", seed, context: 96, layers: layers);

    private static EngineOptions Options(int draftTokens, long kvBytes = 1 << 20, bool uniform = false) => new()
    {
        Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = kvBytes },
        Scheduler = new SchedulerOptions { MaxBatch = 4, TokenBudget = 32, MaxQueue = 16 },
        Speculation = new SpeculationOptions { DraftTokens = draftTokens, UniformDrafts = uniform },
    };

    [Fact(Timeout = 120_000)]
    public async Task ADraftWithTheServedWeightsIsAlwaysRightAndADifferentOneChangesNothing()
    {
        var served = Model(11);
        List<int>[] expected;
        using (var plain = new InferenceEngine(served, new ByteTokenizer(), Options(0))) expected = await EngineRequests.RunAll(plain, Prompts, 24);

        // The served model's own weights as the draft: every guess is accepted but those cut by max_tokens' room.
        using (var same = new InferenceEngine(served, new ByteTokenizer(), Options(4), draftModel: Model(11)))
        {
            var results = await EngineRequests.RunAll(same, Prompts, 24);
            for (int i = 0; i < Prompts.Length; i++) Assert.Equal(expected[i], results[i]);
            var m = same.Metrics;
            TestContext.Current.SendDiagnosticMessage($"same weights: {m.AcceptedDraftTokens} of {m.DraftTokens} accepted in {m.Steps} steps");
            Assert.Equal(m.DraftTokens, m.AcceptedDraftTokens);
            Assert.True(m.DraftTokens >= Prompts.Length * 16, $"only {m.DraftTokens} drafts for {Prompts.Length} x 23 decoded tokens");
            Assert.Equal(0, m.KvBlocksInUse);
        }

        // A one-layer model of other weights: mostly wrong guesses, the same output.
        using (var other = new InferenceEngine(served, new ByteTokenizer(), Options(3), draftModel: Model(12, layers: 1)))
        {
            var results = await EngineRequests.RunAll(other, Prompts, 24);
            for (int i = 0; i < Prompts.Length; i++) Assert.Equal(expected[i], results[i]);
            var m = other.Metrics;
            TestContext.Current.SendDiagnosticMessage($"other weights: {m.AcceptedDraftTokens} of {m.DraftTokens} accepted");
            Assert.True(m.DraftTokens > 0 && m.AcceptedDraftTokens < m.DraftTokens);
            Assert.Equal(0, m.KvBlocksInUse);
        }
    }

    /// <summary>
    /// A pool of 24 blocks of 4 positions for five sequences of up to 42 positions forces preemptions (the draft pool is
    /// released and recomputed with the served one's), and two identical prompts share prefix blocks in both pools; uniform
    /// drafts pad every sequence's guesses. The output stays greedy decoding's.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task PreemptionPrefixSharingAndUniformDraftsKeepTheOutput()
    {
        var served = Model(11);
        var prompts = Prompts.Append(Prompts[3]).ToArray();
        long kvBytes = PagedKvCache.BlockBytes(DType.F64, served.Config.Layers, served.Config.EffectiveKvHeads, served.Config.HeadSize, 4) * 24;
        List<int>[] expected;
        using (var plain = new InferenceEngine(served, new ByteTokenizer(), Options(0))) expected = await EngineRequests.RunAll(plain, prompts, 24);
        foreach (bool uniform in new[] { false, true })
        {
            using var engine = new InferenceEngine(served, new ByteTokenizer(), Options(4, kvBytes, uniform), draftModel: Model(11));
            var results = await EngineRequests.RunAll(engine, prompts, 24);
            for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], results[i]);
            TestContext.Current.SendDiagnosticMessage($"uniform {uniform}: {engine.Metrics.Preemptions} preemptions, {engine.Metrics.CachedPromptTokens} cached prompt tokens, " +
                $"{engine.Metrics.AcceptedDraftTokens} of {engine.Metrics.DraftTokens} drafts accepted");
            Assert.True(engine.Metrics.Preemptions > 0, "no sequence was preempted: the pool was not tight");
            Assert.Equal(0, engine.Metrics.KvBlocksInUse);
        }
    }

    [Fact]
    public void ADraftModelThatCannotDraftIsRefusedSayingWhy()
    {
        var served = Model(11);
        Assert.Contains("DraftTokens", Assert.Throws<ArgumentException>(() => new InferenceEngine(served, new ByteTokenizer(), Options(0), draftModel: Model(12))).Message);
        var otherVocabulary = new Transformer(ModelPresets.Get("llama-debug") with { VocabSize = 300, MaxSequenceLength = 96 }, _cpu, DType.F64);
        Assert.Contains("vocabulary", Assert.Throws<ArgumentException>(() => new InferenceEngine(served, new ByteTokenizer(), Options(4), draftModel: otherVocabulary)).Message);
        var shortContext = new Transformer(ModelPresets.Get("llama-debug") with { VocabSize = 256, MaxSequenceLength = 32 }, _cpu, DType.F64);
        Assert.Contains("context", Assert.Throws<ArgumentException>(() => new InferenceEngine(served, new ByteTokenizer(), Options(4), draftModel: shortContext)).Message);
    }
}
