using Tessera.Distributed;
using Tessera.Distributed.Mesh;
using Tessera.Inference.Paging;
using Tessera.Inference.Sampling;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Inference.Serving;

/// <summary>
/// Serving a tensor-parallel model on CPU thread ranks: rank 0's engine schedules and every rank runs each step over its own
/// key/value heads, announced to the other ranks by a broadcast (<see cref="Tessera.Inference.Paging.PagedModelRunner.FollowStep"/>).
/// In F64 the logits agree with one device's to rounding, so concurrent greedy requests and a seeded sampled one must give one
/// device's tokens; the ranks leave no block in use, stop with the engine, and issue the same collectives.
/// </summary>
public sealed class TensorParallelServingTests
{
    private static readonly int[][] Prompts = [[5, 17, 3, 42, 8], [1], [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72], [9, 9, 9]];

    private static EngineOptions Options => new()
    {
        Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 1 << 20 },
        Scheduler = new SchedulerOptions { MaxBatch = 4, TokenBudget = 16, MaxQueue = 16 },
        Speculation = new Tessera.Inference.Speculation.SpeculationOptions { DraftTokens = 2, MinNgram = 1 },
        TensorParallelKeepAlive = TimeSpan.FromHours(1),   // none in these short runs: the broadcasts count the steps exactly
    };

    private static CompletionRequest[] Requests =>
    [
        .. Prompts.Select(p => new CompletionRequest { Prompt = p, MaxTokens = 16 }),
        new CompletionRequest { Prompt = Prompts[0], MaxTokens = 16, Seed = 11, Sampling = new SamplingOptions { Temperature = 0.9, TopK = 20 } },
    ];

    private static List<int>[] Serve(InferenceEngine engine) =>
        Task.WhenAll(Requests.Select(async r =>
        {
            var tokens = new List<int>();
            await foreach (var e in engine.Submit(r).ReadAllAsync()) tokens.AddRange(e.Tokens);
            return tokens;
        })).GetAwaiter().GetResult();

    [Theory(Timeout = 120_000)]
    [InlineData("gpt2-debug", 2)]
    [InlineData("llama-debug", 2)]
    [InlineData("llama-debug", 4)]   // 2 key/value heads over 4 ranks: each rank caches a replica of its head
    [InlineData("mixtral-debug", 2)] // paged MoE steps: every rank routes the batch's rows alike, its slice of every expert
    [InlineData("qwen2-moe-debug", 2)]
    public async Task TensorParallelRanksServeOneDevicesTokens(string preset, int tp)
    {
        var config = ModelPresets.Get(preset);
        var one = new Transformer(config, new CpuBackend(1), DType.F64);
        one.InitializeWeights(seed: 3);
        List<int>[] expected;
        using (var engine = new InferenceEngine(one, new ByteTokenizer(), Options)) expected = Serve(engine);

        long steps = 0;
        var counts = new (long Broadcast, long AllGather, long AllReduce)[tp];
        var results = await Task.Run(() => ParallelTraining.RunThreadRanks(tp, ctx => TensorParallelServingRank.Run(ctx.Rank, tp, ctx.Backend, ctx.Factory,
            config, DType.F64, Options, engine =>
            {
                Assert.Equal(Math.Max(1, config.EffectiveKvHeads / tp), engine.Model.CachedKvHeads);
                var served = Serve(engine);
                Assert.Equal(0, engine.Metrics.KvBlocksInUse);
                Assert.True(engine.Metrics.DraftTokens > 0, "no guess was verified across the ranks");
                steps = engine.Metrics.Steps;
                return served;
            }, finished: g => counts[ctx.Rank] = (g.Count(CollectiveKind.Broadcast), g.Count(CollectiveKind.AllGather), g.Count(CollectiveKind.AllReduce))),
            TimeSpan.FromSeconds(60)), TestContext.Current.CancellationToken);
        Assert.All(results.Skip(1), Assert.Null);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], results[0]![i]);
        // Collectives: every rank the same; per step a header and the metadata broadcast, and one gather of the vocabulary;
        // one more gather for the warm-up pass, one more broadcast for the stop; all-reduces the same number in every pass.
        Assert.All(counts, c => Assert.Equal(counts[0], c));
        Assert.Equal(2 * steps + 1, counts[0].Broadcast);
        Assert.Equal(steps + 1, counts[0].AllGather);
        Assert.True(counts[0].AllReduce > 0 && counts[0].AllReduce % (steps + 1) == 0, $"{counts[0].AllReduce} all-reduces over {steps + 1} passes");
    }

    /// <summary>
    /// Sampled requests drawn on the device, without speculation so that steps are scheduled asynchronously: a step's input
    /// ids are the previous step's draws read on the device, on every rank, so the other ranks must draw what rank 0 draws
    /// (the header says the step draws). Tokens are one device's, and some steps were pipelined.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task PipelinedSampledStepsDrawOneDevicesTokensOnEveryRank()
    {
        var config = ModelPresets.Get("llama-debug");
        var options = Options with { Speculation = new() };
        CompletionRequest[] requests =
        [
            new() { Prompt = Prompts[0], MaxTokens = 16, Seed = 11, Sampling = new SamplingOptions { Temperature = 0.9, TopK = 20 } },
            new() { Prompt = Prompts[2], MaxTokens = 16, Seed = 12, Sampling = new SamplingOptions { Temperature = 0.7, TopP = 0.9 } },
            new() { Prompt = Prompts[3], MaxTokens = 16 },
        ];
        List<int>[] Run(InferenceEngine engine) =>
            Task.WhenAll(requests.Select(async r =>
            {
                var tokens = new List<int>();
                await foreach (var e in engine.Submit(r).ReadAllAsync()) tokens.AddRange(e.Tokens);
                return tokens;
            })).GetAwaiter().GetResult();
        var one = new Transformer(config, new CpuBackend(1), DType.F64);
        one.InitializeWeights(seed: 3);
        List<int>[] expected;
        using (var engine = new InferenceEngine(one, new ByteTokenizer(), options)) expected = Run(engine);
        var results = await Task.Run(() => ParallelTraining.RunThreadRanks(2, ctx => TensorParallelServingRank.Run(ctx.Rank, 2, ctx.Backend, ctx.Factory,
            config, DType.F64, options, engine =>
            {
                var served = Run(engine);
                Assert.True(engine.PipelinedSteps > 0, "no sampled step was scheduled asynchronously");
                return served;
            }), TimeSpan.FromSeconds(60)), TestContext.Current.CancellationToken);
        for (int i = 0; i < expected.Length; i++) Assert.Equal(expected[i], results[0]![i]);
    }

    /// <summary>
    /// Rank 0's engine refusing its options (too little KV memory for one sequence) stops the other rank at once: the world
    /// aborts on rank 0's failure, so the other rank's warm-up collectives fail instead of waiting for the world's timeout.
    /// </summary>
    [Fact(Timeout = 60_000)]
    public async Task ARankZeroThatFailsBeforeItsRunnerStopsTheOthersAtOnce()
    {
        var tooSmall = Options with { Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 4096 } };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var failure = await Assert.ThrowsAsync<AggregateException>(() => Task.Run(() => ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var model = new Transformer(ModelPresets.Get("llama-debug"), ctx.Backend, DType.F64,
                tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory));
            if (ctx.Rank > 0) InferenceEngine.Follow(model, tooSmall);
            else using (new InferenceEngine(model, new ByteTokenizer(), tooSmall)) { }
            return 0;
        }, TimeSpan.FromSeconds(50)), TestContext.Current.CancellationToken));
        Assert.Contains(failure.InnerExceptions, e => e.Message.Contains("MemoryBytes"));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"the ranks took {clock.Elapsed} to stop");
    }

    /// <summary>
    /// An idle server outlives the collectives' timeout: the world's is 3 s, the engine idles 4 s between two waves of
    /// requests, and its keep-alive steps (every 0.5 s) keep the other rank's wait short. Without them that rank's wait for
    /// the next step would time out and the second wave would fail.
    /// </summary>
    [Fact(Timeout = 60_000)]
    public async Task AnIdleTensorParallelServerOutlivesTheCollectivesTimeout()
    {
        var options = Options with { TensorParallelKeepAlive = TimeSpan.FromMilliseconds(500) };
        var results = await Task.Run(() => ParallelTraining.RunThreadRanks(2, ctx => TensorParallelServingRank.Run(ctx.Rank, 2, ctx.Backend, ctx.Factory,
            ModelPresets.Get("llama-debug"), DType.F64, options, engine =>
            {
                var first = Serve(engine);
                Thread.Sleep(4000);
                return first.Zip(Serve(engine), (a, b) => a.SequenceEqual(b)).ToArray();
            }), TimeSpan.FromSeconds(3)), TestContext.Current.CancellationToken);
        Assert.All(results[0]!.Take(Prompts.Length), Assert.True);        // greedy requests: the same tokens in both waves
    }

    /// <summary>
    /// A draft model beside a split model: the draft runs whole on rank 0 (here the served weights, unsplit, so every guess is
    /// right), its pool addressed by rank 0's block tables, while the verification runs on both ranks.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task AWholeDraftModelOnRankZeroGuessesForASplitModel()
    {
        var config = ModelPresets.Get("llama-debug");
        var one = new Transformer(config, new CpuBackend(1), DType.F64);
        one.InitializeWeights(seed: 3);
        List<int>[] expected;
        using (var engine = new InferenceEngine(one, new ByteTokenizer(), Options)) expected = await EngineRequests.RunAll(engine, Prompts, 16);
        var results = await Task.Run(() => ParallelTraining.RunThreadRanks(2, ctx => TensorParallelServingRank.Run(ctx.Rank, 2, ctx.Backend, ctx.Factory,
            config, DType.F64, Options with { Speculation = new Tessera.Inference.Speculation.SpeculationOptions { DraftTokens = 3 } }, engine =>
            {
                var served = EngineRequests.RunAll(engine, Prompts, 16).GetAwaiter().GetResult();
                Assert.True(engine.Metrics.DraftTokens > 0);
                Assert.Equal(engine.Metrics.DraftTokens, engine.Metrics.AcceptedDraftTokens);
                return served;
            }, draft: backend =>
            {
                var whole = new Transformer(config, backend, DType.F64);
                whole.InitializeWeights(seed: 3);
                return whole;
            }), TimeSpan.FromSeconds(60)), TestContext.Current.CancellationToken);
        for (int i = 0; i < Prompts.Length; i++) Assert.Equal(expected[i], results[0]![i]);
    }

    [Fact]
    public void OnlyRankZeroBuildsTheEngineAndOnlyTheOthersFollow()
    {
        var results = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var model = new Transformer(ModelPresets.Get("llama-debug"), ctx.Backend, DType.F64,
                tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory));
            return ctx.Rank == 0
                ? Assert.Throws<ArgumentException>(() => InferenceEngine.Follow(model, Options)).Message
                : Assert.Throws<ArgumentException>(() => new InferenceEngine(model, new ByteTokenizer(), Options)).Message;
        }, TimeSpan.FromSeconds(60));
        Assert.Contains("rank 0 builds the engine", results[0]);
        Assert.Contains("rank 1 runs InferenceEngine.Follow", results[1]);
    }
}
