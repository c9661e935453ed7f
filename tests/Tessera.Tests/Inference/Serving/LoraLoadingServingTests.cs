using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Models.Adapters;
using Xunit;

namespace Tessera.Tests.Inference.Serving;

/// <summary>
/// LoRA adapters loaded into and unloaded from a running engine (<see cref="InferenceEngine.LoadAdapterAsync"/>,
/// <see cref="InferenceEngine.UnloadAdapter"/>) in the slots allocated at start-up (<see cref="LoraSlotOptions"/>): a loaded adapter
/// answers as the same adapter given at start-up does, a smaller rank in a larger slot as in a slot of its own rank, a re-used slot
/// never meets the previous adapter's prefix-cache blocks, an unloaded adapter's running requests finish, and refusals change
/// nothing. Tiny random Llama models in F64 on the CPU with the byte vocabulary (<see cref="AdapterCase"/>).
/// </summary>
public sealed class LoraLoadingServingTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-lora-loading-").FullName;
    private readonly CpuBackend _cpu = new(1);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static InferenceEngine Engine(Transformer model) => new(model, new ByteTokenizer(), new EngineOptions
    {
        Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 4 << 20 },
        Scheduler = new SchedulerOptions { MaxBatch = 6, TokenBudget = 64, MaxQueue = 64 },
    });

    private static async Task<(List<int> Tokens, List<double> Logprobs, CompletionUsage Usage)> Complete(InferenceEngine engine, int[] prompt, string? adapter, int maxTokens)
    {
        var tokens = new List<int>();
        var logprobs = new List<double>();
        CompletionUsage? usage = null;
        await foreach (var e in engine.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = maxTokens, AdapterName = adapter, TopLogprobs = 0 }).ReadAllAsync())
        {
            tokens.AddRange(e.Tokens);
            if (e.Logprobs is { } l) logprobs.AddRange(l.Select(x => x.Token.Logprob));
            usage ??= e.Usage;
        }
        return (tokens, logprobs, usage!);
    }

    private static int[] Prompt(int seed, int length)
    {
        TestContext.Current.TestOutputHelper?.WriteLine($"prompt seed {seed}");
        var rng = new Random(seed);
        return Enumerable.Range(0, length).Select(_ => rng.Next(256)).ToArray();
    }

    private static List<int> Greedy(Transformer model, int[] prompt, int maxTokens) =>
        new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = maxTokens }).ToList();

    /// <summary>
    /// An adapter loaded into a running engine (the base alone at start) answers with the tokens and log-probabilities of the same
    /// adapter given at start-up in the same slots, bit for bit (the same products over the same stacks), and with the tokens of
    /// the adapter merged (<c>--adapter</c>).
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task LoadedAdapterAnswersAsTheSameAdapterGivenAtStartUp()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), 601);
        var slots = new LoraSlotOptions { MaxLoras = 2, RuntimeLoading = true };
        var prompt = Prompt(601, 10);
        const int maxTokens = 8;
        using var loading = Engine(PretrainedModel.Load(c.Base, _cpu, DType.F64, loraSlots: slots));
        Assert.Empty(loading.AdapterNames);
        await loading.LoadAdapterAsync("sql", c.Adapter, TestContext.Current.CancellationToken);
        Assert.Equal(["sql"], loading.AdapterNames);
        var loaded = await Complete(loading, prompt, "sql", maxTokens);
        using var startup = Engine(PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("sql", c.Adapter)], loraSlots: slots));
        var atStart = await Complete(startup, prompt, "sql", maxTokens);
        Assert.Equal(atStart.Tokens, loaded.Tokens);
        Assert.Equal(atStart.Logprobs, loaded.Logprobs);
        Assert.Equal(Greedy(PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: c.Adapter), prompt, maxTokens), loaded.Tokens);
        Assert.NotEqual(Greedy(PretrainedModel.Load(c.Base, _cpu, DType.F64), prompt, maxTokens), loaded.Tokens);   // the adapter matters
    }

    /// <summary>
    /// A rank-4 adapter in slots of rank 16 (zero-padded, beside a second slot) gives the logits it gives in a slot of its own rank,
    /// within 1e-12 of the largest logit: the padded columns add exact zeros, so only the products' summation order over the longer
    /// rank can differ (F64 rounding, about 1e-16 relative); the merged model agrees within 1e-5 (the merge's F32 rounding).
    /// </summary>
    [Fact]
    public void SmallerRankInALargerSlotGivesTheSameLogits()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), 611);
        var exact = PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter)]);
        var padded = PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter)],
            loraSlots: new LoraSlotOptions { MaxLoras = 2, MaxLoraRank = 16 });
        Assert.Equal((1, 4), (exact.ServedAdapters!.Slots, exact.ServedAdapters.MaxRank));
        Assert.Equal((2, 16), (padded.ServedAdapters!.Slots, padded.ServedAdapters.MaxRank));
        var merged = PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: c.Adapter);
        var rng = new Random(611);
        int[] tokens = Enumerable.Range(0, 24).Select(_ => rng.Next(256)).ToArray();
        var rows = Enumerable.Repeat(0, 24).ToArray();
        double[] Logits(Transformer m)
        {
            m.ServedAdapters?.SetRows(rows);
            var l = AdapterCase.Logits(m, tokens);
            m.ServedAdapters?.Clear();
            return l;
        }
        var e = Logits(exact);
        var p = Logits(padded);
        var r = Logits(merged);
        double scale = e.Max(Math.Abs);
        Assert.True(MaxDifference(e, p) <= 1e-12 * scale, $"padded slot differs by {MaxDifference(e, p):G3}");
        Assert.True(MaxDifference(r, p) <= 1e-5 * scale, $"merged differs by {MaxDifference(r, p):G3}");
    }

    /// <summary>
    /// The prefix cache of a re-used slot: adapter A is loaded as "x", asked a 26-token prompt (6 full blocks cached), unloaded, and
    /// adapter B loaded as "x" into the same (only) slot. B's request for the same prompt reuses none of A's blocks and answers as B
    /// alone does; its repeat reuses its own. Fails when the prefix hash's seed tells adapters apart by slot only.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task AReusedSlotNeverMeetsThePreviousAdaptersBlocks()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), 621);
        string second = Path.Combine(_dir, "second");
        AdapterCase.WriteAdapter(second, c.Config, ["q", "v", "down"], 628, c.Base, rank: 2);
        var prompt = Prompt(621, 26);
        const int maxTokens = 6;
        var expectedA = Greedy(PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: c.Adapter), prompt, maxTokens);
        var expectedB = Greedy(PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: second), prompt, maxTokens);
        Assert.NotEqual(expectedA, expectedB);
        using var engine = Engine(PretrainedModel.Load(c.Base, _cpu, DType.F64, loraSlots: new LoraSlotOptions { MaxLoras = 1, RuntimeLoading = true }));
        var ct = TestContext.Current.CancellationToken;
        await engine.LoadAdapterAsync("x", c.Adapter, ct);
        var a = await Complete(engine, prompt, "x", maxTokens);
        Assert.Equal(expectedA, a.Tokens);
        engine.UnloadAdapter("x");
        await LoadWhenFree(engine, "x", second, ct);
        var b = await Complete(engine, prompt, "x", maxTokens);
        var again = await Complete(engine, prompt, "x", maxTokens);
        Assert.Equal(0, b.Usage.CachedPromptTokens);                                   // none of A's blocks
        Assert.Equal(expectedB, b.Tokens);
        Assert.Equal(expectedB, again.Tokens);
        Assert.True(again.Usage.CachedPromptTokens >= 24, $"B's repeat reused {again.Usage.CachedPromptTokens} prompt tokens");
    }

    /// <summary>Loads once the unloaded slot has drained (the engine frees it between steps, after its last request).</summary>
    private static async Task LoadWhenFree(InferenceEngine engine, string name, string directory, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                await engine.LoadAdapterAsync(name, directory, ct);
                return;
            }
            catch (LoraAdapterException e) when (e.Error == LoraAdapterError.Conflict && attempt < 200)
            {
                await Task.Delay(10, ct);
            }
        }
    }

    /// <summary>
    /// Unloading an adapter with a request running: the request finishes with the adapter's tokens; new requests naming it are
    /// refused at once (model_not_found) and <see cref="InferenceEngine.AdapterNames"/> drops it at once; the slot frees after the
    /// request ends, so a load then fits the engine's only slot.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task UnloadLetsRunningRequestsFinishAndRefusesNewOnes()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), 631);
        var prompt = Prompt(631, 8);
        const int maxTokens = 40;
        var expected = Greedy(PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: c.Adapter), prompt, maxTokens);
        using var engine = Engine(PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("x", c.Adapter)],
            loraSlots: new LoraSlotOptions { RuntimeLoading = true }));
        var running = Complete(engine, prompt, "x", maxTokens);
        engine.UnloadAdapter("x");
        Assert.Empty(engine.AdapterNames);
        var refused = Assert.Throws<InvalidRequestException>(() => engine.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = 2, AdapterName = "x" }, TestContext.Current.CancellationToken));
        Assert.Equal("model_not_found", refused.Code);
        Assert.Throws<InvalidRequestException>(() => engine.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = 2, Adapter = 1 }, TestContext.Current.CancellationToken));
        var finished = await running;
        Assert.Equal(expected, finished.Tokens);
        await LoadWhenFree(engine, "y", c.Adapter, TestContext.Current.CancellationToken);
        Assert.Equal(["y"], engine.AdapterNames);
        var notFound = Assert.Throws<LoraAdapterException>(() => engine.UnloadAdapter("x"));
        Assert.Equal(LoraAdapterError.NotFound, notFound.Error);
    }

    /// <summary>
    /// Loads the engine refuses, each naming the problem, leave the served names and the answers as they were: a missing directory,
    /// targets outside the slots' (the slots serve the start-up adapter's q, v, down only), a rank above the slots', a name served
    /// already, no free slot.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task RefusedLoadsChangeNothing()
    {
        var c = AdapterCase.Write(_dir, "llama-debug", ["q", "v", "down"], 641);
        string wide = Path.Combine(_dir, "wide"), big = Path.Combine(_dir, "big"), fits = Path.Combine(_dir, "fits");
        AdapterCase.WriteAdapter(wide, c.Config, AdapterCase.AllTargets("llama-debug"), 642, c.Base);
        AdapterCase.WriteAdapter(big, c.Config, ["q"], 643, c.Base, rank: 8);
        AdapterCase.WriteAdapter(fits, c.Config, ["q", "down"], 644, c.Base, rank: 2);
        using var engine = Engine(PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter)],
            loraSlots: new LoraSlotOptions { MaxLoras = 2 }));
        var prompt = Prompt(641, 9);
        var before = await Complete(engine, prompt, "a", 6);
        var ct = TestContext.Current.CancellationToken;
        string[] served = ["a"];
        async Task Refused(LoraAdapterError error, string message, string name, string directory)
        {
            var e = await Assert.ThrowsAsync<LoraAdapterException>(() => engine.LoadAdapterAsync(name, directory, ct));
            Assert.Equal(error, e.Error);
            Assert.Contains(message, e.Message);
            Assert.Equal(served, engine.AdapterNames);
        }
        await Refused(LoraAdapterError.Invalid, "no such adapter directory", "b", Path.Combine(_dir, "nowhere"));
        await Refused(LoraAdapterError.Invalid, "which the server does not serve", "b", wide);
        await Refused(LoraAdapterError.Invalid, "--max-lora-rank 8", "b", big);
        await Refused(LoraAdapterError.Conflict, "served already", "a", fits);
        await engine.LoadAdapterAsync("b", fits, ct);
        served = ["a", "b"];
        Assert.Equal(served, engine.AdapterNames);
        await Refused(LoraAdapterError.Conflict, "every one of the 2 LoRA slots is taken", "c", fits);
        Assert.Equal(["a", "b"], engine.AdapterNames);
        var after = await Complete(engine, prompt, "a", 6);
        Assert.Equal(before.Tokens, after.Tokens);
        Assert.Equal(before.Logprobs, after.Logprobs);
    }

    private static double MaxDifference(double[] a, double[] b)
    {
        double max = 0;
        for (int i = 0; i < a.Length; i++) max = Math.Max(max, Math.Abs(a[i] - b[i]));
        return max;
    }
}
