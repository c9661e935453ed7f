using Tessera.Distributed.Mesh;
using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Tokenization;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Models.Adapters;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Inference.Serving;

/// <summary>
/// Multi-LoRA under tensor parallelism on CPU thread ranks (<see cref="Tessera.Nn.Adapters.MultiLoraLinear"/> over column- and
/// row-parallel layers): each rank holds its share of every slot, rank 0's engine announces each step's adapter rows and every
/// load and unload, and the ranks must answer every request as one device serving the same adapters does. In F64 the tensor-
/// parallel products differ from one device's only in summation order (the row-parallel all-reduce, the split dot products), about
/// 1e-15 relative, so greedy tokens must be one device's exactly and log-probabilities agree within 1e-9 (far below the adapters'
/// effect, which is checked to change the answers). Tiny random models with the byte vocabulary (<see cref="AdapterCase"/>).
/// </summary>
public sealed class TensorParallelMultiLoraServingTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-tp-multilora-").FullName;
    private const double LogprobTolerance = 1e-9;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static EngineOptions Options => new()
    {
        Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 4 << 20 },
        Scheduler = new SchedulerOptions { MaxBatch = 6, TokenBudget = 16, MaxQueue = 64 },
        TensorParallelKeepAlive = TimeSpan.FromHours(1),
    };

    private sealed record Answer(List<int> Tokens, List<double> Logprobs);

    private static async Task<Answer> Complete(InferenceEngine engine, int[] prompt, string? adapter, int maxTokens)
    {
        var tokens = new List<int>();
        var logprobs = new List<double>();
        await foreach (var e in engine.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = maxTokens, AdapterName = adapter, TopLogprobs = 0 }).ReadAllAsync())
        {
            tokens.AddRange(e.Tokens);
            if (e.Logprobs is { } l) logprobs.AddRange(l.Select(x => x.Token.Logprob));
        }
        return new Answer(tokens, logprobs);
    }

    private static int[][] Prompts(int seed, int count)
    {
        TestContext.Current.TestOutputHelper?.WriteLine($"prompts seed {seed}");
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, rng.Next(2, 15)).Select(_ => rng.Next(256)).ToArray()).ToArray();
    }

    /// <summary>
    /// Builds rank <paramref name="rank"/>'s part of the model in <paramref name="baseDir"/> with the served adapters and slots over a
    /// tensor-parallel group of <paramref name="tp"/>; rank 0 returns what <paramref name="serve"/> makes of its engine, the others follow.
    /// </summary>
    private static T? RunRank<T>(int rank, int tp, IBackend backend, Tessera.Distributed.IProcessGroupFactory factory, string baseDir,
        IReadOnlyList<LoraModule>? modules, LoraSlotOptions? slots, Func<InferenceEngine, T> serve) where T : class
    {
        using var groups = new DeviceMesh(tp: tp).CreateGroups(factory);
        var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), factory);
        var model = PretrainedModel.Load(baseDir, backend, DType.F64, tensorParallelism: tensor, loraModules: modules, loraSlots: slots);
        if (rank > 0)
        {
            InferenceEngine.Follow(model, Options);
            return null;
        }
        using var engine = new InferenceEngine(model, new ByteTokenizer(), Options);
        return serve(engine);
    }

    private static Answer[] ServeAll(InferenceEngine engine, int[][] prompts, string?[] adapters, int maxTokens) =>
        Task.WhenAll(prompts.Select((p, i) => Complete(engine, p, adapters[i], maxTokens))).GetAwaiter().GetResult();

    private static void AssertSameAnswers(Answer[] expected, Answer[] actual, string?[] adapters)
    {
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(expected[i].Tokens.SequenceEqual(actual[i].Tokens),
                $"request {i} ({adapters[i] ?? "base"}): expected {string.Join(",", expected[i].Tokens)}, got {string.Join(",", actual[i].Tokens)}");
            Assert.Equal(expected[i].Logprobs.Count, actual[i].Logprobs.Count);
            for (int j = 0; j < expected[i].Logprobs.Count; j++)
                Assert.True(Math.Abs(expected[i].Logprobs[j] - actual[i].Logprobs[j]) <= LogprobTolerance,
                    $"request {i} token {j}: log-probability {actual[i].Logprobs[j]} vs one device's {expected[i].Logprobs[j]}");
        }
    }

    /// <summary>
    /// Two adapters (one on every target, one on fewer: the stacks differ by layer and part) and the base in mixed continuous
    /// batches over tp ranks give every request one device's tokens and log-probabilities (within 1e-9, see the class): Llama's
    /// fused q/k/v parts and its MLP at tp 2, at tp 4 with 2 key/value heads (each replicated over two ranks, their B rows with
    /// them), and GPT-2's fused c_attn adapted as a whole at tp 2. Some adapter request answers otherwise than the base.
    /// </summary>
    [Theory(Timeout = 300_000)]
    [InlineData("llama-debug", 2, 701)]
    [InlineData("llama-debug", 4, 711)]
    [InlineData("gpt2-debug", 2, 721)]
    [InlineData("phi3-debug", 2, 731)]
    public async Task MixedAdapterBatchesOverTensorParallelRanksAnswerAsOneDevice(string preset, int tp, int seed)
    {
        var c = AdapterCase.Write(_dir, preset, AdapterCase.AllTargets(preset), seed);
        string second = Path.Combine(_dir, preset + "-adapter2");
        string[] fewer = preset.StartsWith("gpt2", StringComparison.Ordinal) ? ["c_attn", "mlp.c_proj"]
            : preset.StartsWith("phi", StringComparison.Ordinal) ? ["qkv_proj", "gate_up_proj"] : ["q", "v", "down"];
        AdapterCase.WriteAdapter(second, c.Config, fewer, seed + 7, c.Base);
        LoraModule[] modules = [new("a", c.Adapter), new("b", second)];
        var prompts = Prompts(seed, 9);
        string?[] adapters = prompts.Select((_, i) => (i % 3) switch { 0 => null, 1 => "a", _ => "b" }).ToArray();
        const int maxTokens = 8;
        Answer[] expected;
        using (var one = new InferenceEngine(PretrainedModel.Load(c.Base, new CpuBackend(1), DType.F64, loraModules: modules), new ByteTokenizer(), Options))
            expected = ServeAll(one, prompts, adapters, maxTokens);
        var results = await Task.Run(() => ParallelTraining.RunThreadRanks(tp, ctx => RunRank(ctx.Rank, tp, ctx.Backend, ctx.Factory, c.Base, modules, null,
            engine =>
            {
                Assert.Equal(["a", "b"], engine.AdapterNames);
                var answers = ServeAll(engine, prompts, adapters, maxTokens);
                Assert.True(engine.Metrics.MixedStepPhases.Steps > 0, "no step mixed prefill and decode rows");
                Assert.Equal(0, engine.Metrics.KvBlocksInUse);
                return answers;
            }), TimeSpan.FromSeconds(120)), TestContext.Current.CancellationToken);
        AssertSameAnswers(expected, results[0]!, adapters);
        // The adapters matter: some adapter request answers otherwise than the base for the same prompt.
        Answer[] baseAnswers;
        using (var plain = new InferenceEngine(PretrainedModel.Load(c.Base, new CpuBackend(1), DType.F64), new ByteTokenizer(), Options))
            baseAnswers = ServeAll(plain, prompts, new string?[prompts.Length], maxTokens);
        Assert.Contains(Enumerable.Range(0, prompts.Length), i => adapters[i] is not null && !baseAnswers[i].Tokens.SequenceEqual(results[0]![i].Tokens));
    }

    /// <summary>
    /// An adapter only on the row-parallel layers (o_proj and down_proj): each rank adds its term (x_r A_r^T ⊙ M) B to its partial
    /// output and the layer's all-reduce sums them. Over 2 ranks the answers are one device's (tokens exact, log-probabilities within
    /// 1e-9) and differ from the base's. Adding each rank's term after the reduction, or skipping the reduction of the terms, would
    /// give each rank half the hidden's sum and fail here.
    /// </summary>
    [Fact(Timeout = 300_000)]
    public async Task RowParallelAdapterTermsAreSummedOverTheRanks()
    {
        const int seed = 731, maxTokens = 8;
        var c = AdapterCase.Write(_dir, "llama-debug", ["o", "down"], seed);
        LoraModule[] modules = [new("rows", c.Adapter)];
        var prompts = Prompts(seed, 4);
        var adapters = prompts.Select(_ => (string?)"rows").ToArray();
        Answer[] expected, baseAnswers;
        using (var one = new InferenceEngine(PretrainedModel.Load(c.Base, new CpuBackend(1), DType.F64, loraModules: modules), new ByteTokenizer(), Options))
        {
            expected = ServeAll(one, prompts, adapters, maxTokens);
            baseAnswers = ServeAll(one, prompts, new string?[prompts.Length], maxTokens);
        }
        var results = await Task.Run(() => ParallelTraining.RunThreadRanks(2, ctx => RunRank(ctx.Rank, 2, ctx.Backend, ctx.Factory, c.Base, modules, null,
            engine => ServeAll(engine, prompts, adapters, maxTokens)), TimeSpan.FromSeconds(120)), TestContext.Current.CancellationToken);
        AssertSameAnswers(expected, results[0]!, adapters);
        Assert.Contains(Enumerable.Range(0, prompts.Length), i => !baseAnswers[i].Logprobs.SequenceEqual(expected[i].Logprobs));
    }

    private static void LoadWhenFree(InferenceEngine engine, string name, string directory, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                engine.LoadAdapterAsync(name, directory, ct).GetAwaiter().GetResult();
                return;
            }
            catch (LoraAdapterException e) when (e.Error == LoraAdapterError.Conflict && attempt < 500)
            {
                Thread.Sleep(10);
            }
        }
    }

    /// <summary>
    /// Runtime loading over 2 tensor-parallel ranks (the base alone at start, one slot): an adapter loaded by rank 0's engine is
    /// written by every rank between the same steps and answers as the same adapter given at start-up on one device; after it is
    /// unloaded its name is refused, and a second adapter loaded into the freed slot answers as that adapter does on one device
    /// (nothing of the first left in any rank's share). A load of a directory that is no adapter is refused on rank 0 before any
    /// rank is told, and the ranks stay in step.
    /// </summary>
    [Fact(Timeout = 300_000)]
    public async Task RuntimeLoadsAndUnloadsOverTensorParallelRanksAnswerAsStartUpOnOneDevice()
    {
        const int seed = 741, maxTokens = 8;
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), seed);
        string second = Path.Combine(_dir, "second");
        AdapterCase.WriteAdapter(second, c.Config, ["q", "v", "down"], seed + 7, c.Base);
        var slots = new LoraSlotOptions { MaxLoras = 1, RuntimeLoading = true };   // one slot: the second load reuses the first's
        var prompts = Prompts(seed, 3);
        Answer[] OneDevice(string directory)
        {
            using var one = new InferenceEngine(PretrainedModel.Load(c.Base, new CpuBackend(1), DType.F64, loraModules: [new LoraModule("x", directory)], loraSlots: slots),
                new ByteTokenizer(), Options);
            return ServeAll(one, prompts, prompts.Select(_ => (string?)"x").ToArray(), maxTokens);
        }
        var expectedFirst = OneDevice(c.Adapter);
        var expectedSecond = OneDevice(second);
        var ct = TestContext.Current.CancellationToken;
        var results = await Task.Run(() => ParallelTraining.RunThreadRanks(2, ctx => RunRank(ctx.Rank, 2, ctx.Backend, ctx.Factory, c.Base, null, slots, engine =>
        {
            Assert.Empty(engine.AdapterNames);
            var refused = Assert.Throws<LoraAdapterException>(() => engine.LoadAdapterAsync("bad", Path.Combine(_dir, "nowhere"), ct).GetAwaiter().GetResult());
            Assert.Equal(LoraAdapterError.Invalid, refused.Error);
            engine.LoadAdapterAsync("x", c.Adapter, ct).GetAwaiter().GetResult();
            var first = ServeAll(engine, prompts, prompts.Select(_ => (string?)"x").ToArray(), maxTokens);
            engine.UnloadAdapter("x");
            Assert.Throws<InvalidRequestException>(() => engine.Submit(new CompletionRequest { Prompt = prompts[0], MaxTokens = 2, AdapterName = "x" }, ct));
            LoadWhenFree(engine, "x", second, ct);                       // the slot frees once the loop has emptied it on every rank
            var then = ServeAll(engine, prompts, prompts.Select(_ => (string?)"x").ToArray(), maxTokens);
            return new[] { first, then };
        }), TimeSpan.FromSeconds(120)), ct);
        var adapters = prompts.Select(_ => (string?)"x").ToArray();
        AssertSameAnswers(expectedFirst, results[0]![0], adapters);
        AssertSameAnswers(expectedSecond, results[0]![1], adapters);
        Assert.Contains(Enumerable.Range(0, prompts.Length), i => !expectedFirst[i].Logprobs.SequenceEqual(expectedSecond[i].Logprobs));
    }
}
