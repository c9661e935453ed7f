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
/// Multi-LoRA: PEFT adapters served unmerged over one base (<see cref="ServedLoraAdapters"/>, <see cref="Tessera.Nn.Adapters.MultiLoraLinear"/>),
/// requests for the base and for each adapter in one continuous batch. The reference for an adapter is the base with that adapter
/// merged as it loads (<c>--adapter</c>, <see cref="LoraWeightMerge"/>), served or run alone; tiny random models in F64 on the CPU
/// with the byte vocabulary (<see cref="AdapterCase"/>). The merge adds s·BA to the F32 weights in F32 (as export does), so merged
/// and unmerged differ by a rounding of the F32 weights (about 1e-7 relative), not by F64's 1e-16.
/// </summary>
public sealed class MultiLoraServingTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-multilora-").FullName;
    private readonly CpuBackend _cpu = new(1);

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// A base of <paramref name="preset"/> and two adapters: one on every target, one on fewer (so the stacks differ by layer and
    /// part). On a mixture of experts (mixtral-debug, qwen2-moe-debug) the first also adapts the router and the second only the
    /// experts' up and down (and the shared expert's, on Qwen2-MoE), so each expert's gathered rows mix the two adapters and the base.
    /// </summary>
    private (AdapterCase Case, string Second) Write(string preset, int seed)
    {
        bool moe = ModelPresets.Get(preset).IsMixtureOfExperts;
        var c = AdapterCase.Write(_dir, preset, moe ? [.. AdapterCase.AllTargets(preset), "router"] : AdapterCase.AllTargets(preset), seed);
        string second = Path.Combine(_dir, preset + "-adapter2");
        string[] fewer = preset.StartsWith("gpt2", StringComparison.Ordinal) ? ["c_attn", "mlp.c_proj"]
            : preset.StartsWith("phi", StringComparison.Ordinal) ? ["qkv_proj", "gate_up_proj"] : moe ? ["up", "down"] : ["q", "v", "down"];
        AdapterCase.WriteAdapter(second, c.Config, fewer, seed + 7, c.Base);
        return (c, second);
    }

    private InferenceEngine Engine(Transformer model, int budget = 8, int maxBatch = 6, int draftTokens = 0) => new(model, new ByteTokenizer(), new EngineOptions
    {
        Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 4 << 20 },
        Scheduler = new SchedulerOptions { MaxBatch = maxBatch, TokenBudget = budget, MaxQueue = 64 },
        Speculation = new Tessera.Inference.Speculation.SpeculationOptions { DraftTokens = draftTokens },
    });

    private static async Task<(List<int> Tokens, CompletionUsage Usage)> Complete(InferenceEngine engine, int[] prompt, int adapter, int maxTokens)
    {
        var tokens = new List<int>();
        CompletionUsage? usage = null;
        await foreach (var e in engine.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = maxTokens, Adapter = adapter }).ReadAllAsync())
        {
            tokens.AddRange(e.Tokens);
            usage ??= e.Usage;
        }
        return (tokens, usage!);
    }

    private static int[][] Prompts(int seed, int count, int minLength, int maxLength)
    {
        TestContext.Current.TestOutputHelper?.WriteLine($"prompts seed {seed}");
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, rng.Next(minLength, maxLength + 1)).Select(_ => rng.Next(256)).ToArray()).ToArray();
    }

    /// <summary>
    /// The served model's forward pass with each row's adapter set by hand (half the rows on one adapter, half on the other, then
    /// all on the base) gives each row the logits of the model with that adapter merged, within 1e-5 of the largest logit (the F32
    /// rounding of the merged weights, see the class); the adapters move the logits by far more than that.
    /// </summary>
    [Theory]
    [InlineData("llama-debug", 501)]
    [InlineData("gpt2-debug", 511)]
    [InlineData("phi3-debug", 512)]
    [InlineData("mixtral-debug", 513)]
    [InlineData("qwen2-moe-debug", 514)]
    public void EachRowGetsTheLogitsOfItsOwnAdapterMerged(string preset, int seed)
    {
        var (c, second) = Write(preset, seed);
        var served = PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter), new LoraModule("b", second)]);
        var plain = PretrainedModel.Load(c.Base, _cpu, DType.F64);
        var mergedA = PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: c.Adapter);
        var mergedB = PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: second);
        var rng = new Random(seed);
        int[] tokens = Enumerable.Range(0, 24).Select(_ => rng.Next(256)).ToArray();   // (2, 12)
        int vocab = c.Config.VocabSize;
        var rows = Enumerable.Repeat(0, 12).Concat(Enumerable.Repeat(1, 12)).ToArray();  // sequence 0 on adapter a, sequence 1 on b
        served.ServedAdapters!.SetRows(rows);
        var mixed = AdapterCase.Logits(served, tokens);
        served.ServedAdapters.Clear();
        var baseLogits = AdapterCase.Logits(served, tokens);
        var a = AdapterCase.Logits(mergedA, tokens);
        var b = AdapterCase.Logits(mergedB, tokens);
        var p = AdapterCase.Logits(plain, tokens);
        double scale = p.Max(Math.Abs);
        int half = 12 * vocab;
        Assert.Equal(p, baseLogits);                                                   // no adapter row: the base, bit for bit
        AssertClose(a.AsSpan(0, half), mixed.AsSpan(0, half), 1e-5 * scale, "adapter a");
        AssertClose(b.AsSpan(half), mixed.AsSpan(half), 1e-5 * scale, "adapter b");
        Assert.True(MaxDifference(a.AsSpan(0, half), p.AsSpan(0, half)) > 0.05 * scale, "adapter a does not move the logits");
        Assert.True(MaxDifference(b.AsSpan(half), p.AsSpan(half)) > 0.05 * scale, "adapter b does not move the logits");
    }

    /// <summary>
    /// Adapters served over an int8 base (<c>serve --quantize int8 --lora ...</c>): a row on an adapter gets the logits of the
    /// training path's LoRA model over the same int8 base (<see cref="Tessera.Nn.Adapters.LoraLinear"/> unmerged, the adapter read
    /// by <see cref="PeftAdapter.Load"/>), within 1e-9 of the largest logit: both add s·B(A x) to the same int8 product in F64,
    /// only the scaling's place in the order differs (about 1e-15); the adapter moves the logits by far more.
    /// </summary>
    [Fact]
    public void AdaptersOverAnInt8BaseGiveTheLogitsOfLoraOverThatBase()
    {
        const int seed = 541;
        var c = AdapterCase.Write(_dir, "llama-debug", AdapterCase.AllTargets("llama-debug"), seed);
        var int8 = Tessera.Nn.Quantization.WeightQuantization.Int8;
        var served = PretrainedModel.Load(c.Base, _cpu, DType.F64, quantization: int8, loraModules: [new LoraModule("a", c.Adapter)]);
        var plain = PretrainedModel.Load(c.Base, _cpu, DType.F64, quantization: int8);
        Transformer lora;
        using (var hf = Tessera.Models.HuggingFace.HuggingFaceModelDirectory.Open(c.Base))
        {
            lora = PretrainedModel.Quantized(hf.Config, _cpu, DType.F64, lora: PeftAdapter.ReadOptions(c.Adapter, hf.Config), quantization: int8);
            hf.LoadInto(lora.Layout.Parameters, _cpu);
        }
        PeftAdapter.Load(c.Adapter, lora.Adapters!);
        int[] tokens = Prompts(seed, 1, 24, 24)[0];                       // (2, 12), as AdapterCase.Logits takes them
        served.ServedAdapters!.SetRows(Enumerable.Repeat(0, tokens.Length).ToArray());
        var actual = AdapterCase.Logits(served, tokens);
        served.ServedAdapters.Clear();
        var expected = AdapterCase.Logits(lora, tokens);
        var p = AdapterCase.Logits(plain, tokens);
        double scale = p.Max(Math.Abs);
        AssertClose(expected, actual, 1e-9 * scale, "adapter over int8");
        Assert.True(MaxDifference(expected, p) > 0.05 * scale, "the adapter does not move the logits");
    }

    /// <summary>
    /// Many concurrent greedy requests, each on the base or one of two adapters, in steps that mix decodes and prompt chunks
    /// (a budget of 8 tokens splits the longer prompts): every request's tokens equal those of the dense generator over the
    /// model with its adapter merged (the base's over the plain base), and the adapters' answers differ from the base's. With
    /// prompt-lookup speculation (3 drafts) each sequence verifies its guesses under its own adapter, and the tokens stay the same.
    /// </summary>
    [Theory]
    [InlineData("llama-debug", 521, 0)]
    [InlineData("gpt2-debug", 531, 0)]
    [InlineData("phi3-debug", 532, 0)]
    [InlineData("mixtral-debug", 533, 0)]
    [InlineData("qwen2-moe-debug", 534, 0)]
    [InlineData("llama-debug", 536, 3)]
    public async Task MixedAdapterBatchesAnswerEachRequestAsItsMergedModelAlone(string preset, int seed, int draftTokens)
    {
        var (c, second) = Write(preset, seed);
        var served = PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter), new LoraModule("b", second)]);
        Transformer[] references = [PretrainedModel.Load(c.Base, _cpu, DType.F64), PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: c.Adapter),
            PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: second)];
        var prompts = Prompts(seed, 12, 2, 19);
        if (draftTokens > 0)   // repeated motifs, so that prompt lookup finds something to guess
            prompts = prompts.Select(p => Enumerable.Range(0, 18).Select(i => p[i % Math.Min(p.Length, 4)]).ToArray()).ToArray();
        int[] adapters = prompts.Select((_, i) => i % 3).ToArray();
        const int maxTokens = 8;
        var expected = prompts.Select((p, i) => new TextGenerator(references[adapters[i]]).Generate(p, new GenerationOptions { MaxNewTokens = maxTokens }).ToList()).ToList();
        using var engine = Engine(served, draftTokens: draftTokens);
        Assert.Equal(["a", "b"], engine.AdapterNames);
        var results = await Task.WhenAll(prompts.Select((p, i) => Complete(engine, p, adapters[i], maxTokens)));
        for (int i = 0; i < prompts.Length; i++) Assert.True(expected[i].SequenceEqual(results[i].Tokens), $"request {i} (adapter {adapters[i]}): expected {string.Join(",", expected[i])}, got {string.Join(",", results[i].Tokens)}");
        Assert.True(engine.Metrics.MixedStepPhases.Steps > 0 && engine.Metrics.DecodeStepPhases.Steps > 0);
        if (draftTokens > 0) Assert.True(engine.Metrics.DraftTokens > 0, "no draft was verified");
        TestContext.Current.TestOutputHelper?.WriteLine($"drafts verified {engine.Metrics.DraftTokens}, accepted {engine.Metrics.AcceptedDraftTokens}");
        // The adapters matter: some adapter request's tokens differ from what the base says for the same prompt.
        int differing = Enumerable.Range(0, prompts.Length).Count(i => adapters[i] != 0
            && !new TextGenerator(references[0]).Generate(prompts[i], new GenerationOptions { MaxNewTokens = maxTokens }).SequenceEqual(expected[i]));
        Assert.True(differing > 0, "no adapter request answered otherwise than the base");
        Assert.Equal(0, engine.Metrics.KvBlocksInUse);
    }

    /// <summary>
    /// The prefix cache never shares blocks across adapters: one long prompt (6 full blocks) asked of the base and of an adapter,
    /// at once and then one after the other, gives each the tokens of its own model alone; the adapter's request after the base's
    /// reuses none of the base's cached blocks, while a repeat on the same adapter does reuse its own.
    /// </summary>
    [Fact]
    public async Task PrefixCacheKeepsEachAdaptersBlocksApart()
    {
        var (c, second) = Write("llama-debug", 541);
        var served = PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter), new LoraModule("b", second)]);
        Transformer[] references = [PretrainedModel.Load(c.Base, _cpu, DType.F64), PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: c.Adapter)];
        var prompt = Prompts(541, 1, 26, 26)[0];
        const int maxTokens = 6;
        var expected = references.Select(m => new TextGenerator(m).Generate(prompt, new GenerationOptions { MaxNewTokens = maxTokens }).ToList()).ToArray();
        Assert.NotEqual(expected[0], expected[1]);                                    // the adapter matters for this prompt
        using (var engine = Engine(served, budget: 64))
        {
            var both = await Task.WhenAll(Complete(engine, prompt, 0, maxTokens), Complete(engine, prompt, 1, maxTokens));
            Assert.Equal(expected[0], both[0].Tokens);
            Assert.Equal(expected[1], both[1].Tokens);
        }
        using (var engine = Engine(served, budget: 64))
        {
            var first = await Complete(engine, prompt, 0, maxTokens);
            var after = await Complete(engine, prompt, 1, maxTokens);
            var again = await Complete(engine, prompt, 1, maxTokens);
            var otherAdapter = await Complete(engine, prompt, 2, maxTokens);
            Assert.Equal(expected[0], first.Tokens);
            Assert.Equal(expected[1], after.Tokens);
            Assert.Equal(expected[1], again.Tokens);
            Assert.Equal(0, after.Usage.CachedPromptTokens);                          // not the base's blocks
            Assert.True(again.Usage.CachedPromptTokens >= 24, $"the adapter's repeat reused {again.Usage.CachedPromptTokens} prompt tokens");
            Assert.Equal(0, otherAdapter.Usage.CachedPromptTokens);                   // nor adapter a's for adapter b
        }
    }

    /// <summary>A request for an adapter the engine does not serve is refused, naming the field; so is a draft model beside served adapters.</summary>
    [Fact]
    public void UnknownAdaptersAndDraftModelsAreRefused()
    {
        var (c, _) = Write("llama-debug", 551);
        var served = PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter)]);
        using (var engine = Engine(served))
        {
            var e = Assert.Throws<InvalidRequestException>(() => engine.Submit(new CompletionRequest { Prompt = [1, 2], MaxTokens = 2, Adapter = 2 }, TestContext.Current.CancellationToken));
            Assert.Contains("adapter 2", e.Message);
        }
        var draft = PretrainedModel.Load(c.Base, _cpu, DType.F64);
        var options = new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 4 << 20 },
            Speculation = new Tessera.Inference.Speculation.SpeculationOptions { DraftTokens = 2 },
        };
        var refused = Assert.Throws<NotSupportedException>(() => new InferenceEngine(served, new ByteTokenizer(), options, draft));
        Assert.Contains("draft model", refused.Message);
    }

    /// <summary>
    /// <see cref="TesseraChatClient"/> (Microsoft.Extensions.AI): <see cref="Microsoft.Extensions.AI.ChatOptions.ModelId"/> naming an
    /// adapter answers as a client of the merged model does; the client's own id is the base; an unknown id is refused.
    /// </summary>
    [Fact]
    public async Task ChatClientModelIdPicksTheAdapter()
    {
        var (c, _) = Write("llama-debug", 591);
        var served = PretrainedModel.Load(c.Base, _cpu, DType.F64, loraModules: [new LoraModule("a", c.Adapter)]);
        var chat = new ChatPrompt(new Tessera.Models.Chat.ChatFormat(Tessera.Models.Chat.ChatTemplate.Fallback, null, null, IsFallback: true), new ByteTokenizer());
        async Task<string> Ask(InferenceEngine engine, string? modelId)
        {
            var client = new TesseraChatClient(engine, chat, "base");
            var response = await client.GetResponseAsync([new Microsoft.Extensions.AI.ChatMessage(Microsoft.Extensions.AI.ChatRole.User, "Name a colour")],
                new Microsoft.Extensions.AI.ChatOptions { ModelId = modelId, Temperature = 0, MaxOutputTokens = 10 }, TestContext.Current.CancellationToken);
            Assert.Equal(modelId ?? "base", response.ModelId);
            return response.Text;
        }
        using var engine = Engine(served);
        string adapted = await Ask(engine, "a"), plain = await Ask(engine, "base");
        using (var merged = Engine(PretrainedModel.Load(c.Base, _cpu, DType.F64, adapter: c.Adapter))) Assert.Equal(await Ask(merged, null), adapted);
        using (var alone = Engine(PretrainedModel.Load(c.Base, _cpu, DType.F64))) Assert.Equal(await Ask(alone, null), plain);
        Assert.NotEqual(plain, adapted);
        await Assert.ThrowsAsync<InvalidRequestException>(() => Ask(engine, "nope"));
    }

    private static double MaxDifference(ReadOnlySpan<double> a, ReadOnlySpan<double> b)
    {
        double max = 0;
        for (int i = 0; i < a.Length; i++) max = Math.Max(max, Math.Abs(a[i] - b[i]));
        return max;
    }

    private static void AssertClose(ReadOnlySpan<double> expected, ReadOnlySpan<double> actual, double tolerance, string what)
    {
        double difference = MaxDifference(expected, actual);
        Assert.True(difference <= tolerance, $"{what}: logits differ by up to {difference:G3}, more than {tolerance:G3}");
    }
}
