using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Models;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Serving;

/// <summary>The engine's loop, requests and cancellation, on a random llama-debug model (F64, CPU) with the byte tokenizer.</summary>
public class InferenceEngineTests
{
    private readonly CpuBackend _cpu = new(1);

    private InferenceEngine Engine(int maxBatch = 4, int budget = 16, long? kvBytes = null, int context = 64, bool asyncScheduling = true,
        int[]? stopTokens = null, bool advanceOnDevice = false, bool measureDeviceTime = false)
    {
        return new InferenceEngine(ByteModels.Random(_cpu, "llama-debug", seed: 11, context), new ByteTokenizer(), new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = kvBytes ?? 1 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = maxBatch, TokenBudget = budget, MaxQueue = 8 },
            AsyncScheduling = asyncScheduling,
            StopTokens = stopTokens ?? [],
            AdvanceDecodeOnDevice = advanceOnDevice,
            MeasureDeviceTime = measureDeviceTime,
        });
    }

    private static async Task<(List<int> Tokens, FinishReason? Finish, CompletionUsage? Usage)> Collect(IAsyncEnumerable<CompletionEvent> events)
    {
        var tokens = new List<int>();
        FinishReason? finish = null;
        CompletionUsage? usage = null;
        await foreach (var e in events)
        {
            tokens.AddRange(e.Tokens);
            finish ??= e.FinishReason;
            usage ??= e.Usage;
        }
        return (tokens, finish, usage);
    }

    [Fact]
    public async Task ConcurrentGreedyRequestsEachEqualTheDenseGeneratorAlone()
    {
        using var engine = Engine();
        int[][] prompts = [[10, 20, 30, 40, 50, 60, 70], [5], [99, 98, 97], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [42, 42]];
        var expected = prompts.Select(p => new TextGenerator(engine.Model).Generate(p, new GenerationOptions { MaxNewTokens = 9 }).ToList()).ToList();
        var tasks = prompts.Select(p => Collect(engine.Submit(new CompletionRequest { Prompt = p, MaxTokens = 9 }).ReadAllAsync())).ToList();
        var results = await Task.WhenAll(tasks);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(expected[i], results[i].Tokens);
            Assert.Equal(FinishReason.Length, results[i].Finish);
            Assert.Equal(new CompletionUsage(prompts[i].Length, 9, results[i].Usage!.CachedPromptTokens), results[i].Usage);
        }
        Assert.Equal(0, engine.Metrics.KvBlocksInUse);
        // Every step is counted in one kind, with the rows it computed: each prompt token and each generated token but the
        // last (it ends its request without being fed back); no prefix is shared here (distinct first blocks).
        var (decode, mixed) = (engine.Metrics.DecodeStepPhases, engine.Metrics.MixedStepPhases);
        Assert.Equal(engine.Metrics.Steps, decode.Steps + mixed.Steps);
        Assert.Equal(prompts.Sum(p => p.Length) + prompts.Length * 8 - results.Sum(r => r.Usage!.CachedPromptTokens), decode.Rows + mixed.Rows);
        Assert.True(decode.Steps > 0 && mixed.Steps > 0 && decode.Rows >= decode.Steps && decode.Forward > 0 && mixed.Schedule > 0);
    }

    /// <summary>
    /// With <see cref="EngineOptions.MeasureDeviceTime"/> every step is also timed on the backend's clock (the CPU backend's is
    /// the host's, <see cref="HostTimeline"/>): each kind of step reports device time, which on a backend that runs each op as
    /// it is called lies inside the host's metadata and forward phases; without the option the device columns stay zero. The
    /// requests come in two waves with a 500 ms pause between them, in which the engine has nothing to run: that wait is not
    /// the device waiting for the host (<see cref="PagedModelRunner.ForgetDeviceTimeline"/>), so the idle time summed over the
    /// steps stays within the host's own phases, far below the pause.
    /// </summary>
    [Fact]
    public async Task DeviceTimeIsMeasuredOnlyWhenAskedAndFallsInsideTheHostPhases()
    {
        int[][] prompts = [[10, 20, 30, 40, 50, 60, 70], [5, 6, 7], [99, 98, 97, 96, 95]];
        foreach (bool measure in new[] { true, false })
        {
            using var engine = Engine(measureDeviceTime: measure);
            Task Wave() => Task.WhenAll(prompts.Select(p => Collect(engine.Submit(new CompletionRequest { Prompt = p, MaxTokens = 6 }).ReadAllAsync())));
            await Wave();
            await Task.Delay(500, TestContext.Current.CancellationToken);
            await Wave();
            var (decode, mixed) = (engine.Metrics.DecodeStepPhases, engine.Metrics.MixedStepPhases);
            foreach (var phases in new[] { decode, mixed })
            {
                Assert.True(phases.Steps > 0);
                if (!measure)
                {
                    Assert.Equal(0, phases.DeviceBusy);
                    Assert.Equal(0, phases.DeviceIdle);
                    continue;
                }
                Assert.True(phases.DeviceBusy > 0, $"{phases}");
                // The marks sit inside Enqueue (after the metadata is written, before the readback starts): on the CPU's
                // clock their span cannot exceed the host's metadata and forward phases (1 ms of slack for the clock reads).
                Assert.True(phases.DeviceBusy <= phases.Metadata + phases.Forward + 1e-3, $"{phases}");
            }
            if (!measure) continue;
            // Between one step's end mark and the next step's start mark the host is in that interval's phases (readback,
            // emit, schedule, metadata): 50 ms of slack for the bookkeeping outside them, a tenth of the pause.
            double idle = decode.DeviceIdle + mixed.DeviceIdle, host = decode.Total + mixed.Total;
            Assert.True(idle <= host + 0.05, $"device idle {idle * 1000:F1} ms against {host * 1000:F1} ms of host phases: the pause between the waves was counted");
        }
    }

    [Fact]
    public async Task CancelledRequestReleasesItsBlocksAndCompletesItsStream()
    {
        // A context of 4096 positions: 4000 tokens take thousands of steps, so the cancel lands mid-run.
        using var engine = Engine(context: 4096, kvBytes: 16 << 20);
        using var cts = new CancellationTokenSource();
        var reader = engine.Submit(new CompletionRequest { Prompt = [1, 2, 3], MaxTokens = 4000 }, cts.Token);
        await reader.ReadAsync(TestContext.Current.CancellationToken);                                     // it is running
        cts.Cancel();
        int received = 1;
        await foreach (var _ in reader.ReadAllAsync(TestContext.Current.CancellationToken)) received++;    // the stream completes
        Assert.True(received < 4000, $"the request finished ({received} events) before the cancel");
        for (int i = 0; i < 400 && engine.Metrics.KvBlocksInUse != 0; i++) await Task.Delay(5, TestContext.Current.CancellationToken);
        Assert.Equal(0, engine.Metrics.KvBlocksInUse);
        Assert.Equal(1, engine.Metrics.RequestsCancelled);
    }

    [Fact]
    public void RequestPastTheContextIsRefusedNamingMaxTokens()
    {
        using var engine = Engine();
        var e = Assert.Throws<InvalidRequestException>(() => engine.Submit(new CompletionRequest { Prompt = [1, 2, 3], MaxTokens = 62 }, TestContext.Current.CancellationToken));
        Assert.Equal("max_tokens", e.Parameter);
        Assert.Contains("ask for at most 61", e.Message);
    }

    [Fact]
    public async Task SeededSamplingIsReproducibleAndChoicesDiffer()
    {
        using var engine = Engine();
        var request = new CompletionRequest
        {
            Prompt = [7, 8, 9], MaxTokens = 12, Choices = 3, Seed = 1234,
            Sampling = new Tessera.Inference.Sampling.SamplingOptions { Temperature = 1.0 },
        };
        async Task<List<int>[]> Run()
        {
            var choices = new[] { new List<int>(), new List<int>(), new List<int>() };
            await foreach (var e in engine.Submit(request).ReadAllAsync()) if (e.Usage is null) choices[e.Index].AddRange(e.Tokens);
            return choices;
        }
        var first = await Run();
        var second = await Run();
        for (int i = 0; i < 3; i++) Assert.Equal(first[i], second[i]);
        Assert.False(first[0].SequenceEqual(first[1]) && first[1].SequenceEqual(first[2]), "three seeded choices gave the same tokens");
    }

    /// <summary>
    /// Asynchronous scheduling (each step enqueued before the previous step's tokens reach the host) against the engine that
    /// waits for every step, with a stop token that ends one request mid-batch: the step enqueued after the stop computed that
    /// request once more, and its token is discarded. Every request's tokens and finish reason are the same, and every block
    /// is free at the end.
    /// </summary>
    [Fact]
    public async Task AsyncSchedulingGivesTheWaitingEnginesTokensWhenAStopTokenEndsARequestMidBatch()
    {
        int[][] prompts = [[10, 20, 30, 40, 50], [5, 6], [99, 98, 97], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]];
        List<int> free;
        using (var probe = Engine())
            free = new TextGenerator(probe.Model).Generate(prompts[0], new GenerationOptions { MaxNewTokens = 12 }).ToList();
        // The stop token: the first request's 4th token, if the tokens before it differ from it (else the first new one).
        int stopAt = Enumerable.Range(0, free.Count).First(i => i >= 3 && !free.Take(i).Contains(free[i]) || i == free.Count - 1);
        int stop = free[stopAt];
        async Task<(List<int> Tokens, FinishReason? Finish, CompletionUsage? Usage)[]> Serve(bool asyncScheduling)
        {
            using var engine = Engine(asyncScheduling: asyncScheduling, stopTokens: [stop]);
            var results = await Task.WhenAll(prompts.Select(p => Collect(engine.Submit(new CompletionRequest { Prompt = p, MaxTokens = 12 }).ReadAllAsync())));
            for (int i = 0; i < 400 && engine.Metrics.KvBlocksInUse != 0; i++) await Task.Delay(5);
            Assert.Equal(0, engine.Metrics.KvBlocksInUse);
            if (asyncScheduling) Assert.True(engine.PipelinedSteps > 0, "no step was enqueued ahead of the previous one's tokens");
            else Assert.Equal(0, engine.PipelinedSteps);
            return results;
        }
        var waiting = await Serve(asyncScheduling: false);
        var pipelined = await Serve(asyncScheduling: true);
        Assert.Equal(FinishReason.Stop, waiting[0].Finish);
        Assert.Equal(free.Take(stopAt), waiting[0].Tokens);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(waiting[i].Tokens, pipelined[i].Tokens);
            Assert.Equal(waiting[i].Finish, pipelined[i].Finish);
            Assert.Equal(waiting[i].Usage, pipelined[i].Usage);
        }
    }

    /// <summary>
    /// A seeded sampled request (its steps need the logits on the host, so they are not pipelined) beside greedy ones that
    /// are: the engine switches between the two kinds of step, and every request's tokens equal the waiting engine's.
    /// </summary>
    [Fact]
    public async Task SampledAndGreedyRequestsTogetherGiveTheWaitingEnginesTokens()
    {
        var requests = new[]
        {
            new CompletionRequest { Prompt = [3, 1, 4, 1, 5], MaxTokens = 14 },
            new CompletionRequest { Prompt = [9, 2, 6], MaxTokens = 5, Seed = 77, Sampling = new Tessera.Inference.Sampling.SamplingOptions { Temperature = 0.8 } },
            new CompletionRequest { Prompt = [5, 3, 5, 8, 9, 7, 9], MaxTokens = 11 },
        };
        async Task<List<int>[]> Serve(bool asyncScheduling)
        {
            using var engine = Engine(asyncScheduling: asyncScheduling);
            var results = await Task.WhenAll(requests.Select(r => Collect(engine.Submit(r).ReadAllAsync())));
            if (asyncScheduling) Assert.True(engine.PipelinedSteps > 0, "no step was enqueued ahead of the previous one's tokens");
            return results.Select(r => r.Tokens).ToArray();
        }
        var waiting = await Serve(false);
        var pipelined = await Serve(true);
        for (int i = 0; i < requests.Length; i++) Assert.Equal(waiting[i], pipelined[i]);
    }

    /// <summary>
    /// A client that disconnects while its step is in flight (asynchronous scheduling): its blocks are released at once
    /// (the step already enqueued still writes them, before any later step can), its token is discarded, and the request
    /// running beside it gives the dense generator's tokens.
    /// </summary>
    [Fact]
    public async Task DisconnectMidStepLeavesTheOtherRequestsTokensAndFreesEveryBlock()
    {
        using var engine = Engine(context: 1024, kvBytes: 8 << 20);
        int[] prompt = [12, 34, 56, 78];
        var expected = new TextGenerator(engine.Model).Generate(prompt, new GenerationOptions { MaxNewTokens = 40 }).ToList();
        using var cts = new CancellationTokenSource();
        var leaving = engine.Submit(new CompletionRequest { Prompt = [1, 2, 3], MaxTokens = 900 }, cts.Token);
        var staying = Collect(engine.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = 40 }, TestContext.Current.CancellationToken).ReadAllAsync(TestContext.Current.CancellationToken));
        await leaving.ReadAsync(TestContext.Current.CancellationToken);
        await leaving.ReadAsync(TestContext.Current.CancellationToken);                                    // running, steps in flight
        cts.Cancel();
        await foreach (var _ in leaving.ReadAllAsync(TestContext.Current.CancellationToken)) { }
        var result = await staying;
        Assert.Equal(expected, result.Tokens);
        for (int i = 0; i < 400 && engine.Metrics.KvBlocksInUse != 0; i++) await Task.Delay(5, TestContext.Current.CancellationToken);
        Assert.Equal(0, engine.Metrics.KvBlocksInUse);
        Assert.Equal(1, engine.Metrics.RequestsCancelled);
        Assert.True(engine.PipelinedSteps > 0);
    }

    /// <summary>
    /// A request that runs to the end of the context under asynchronous scheduling gets its last token: the length check
    /// counts known tokens, not the next step's unresolved one that already follows (it finished one token early before).
    /// </summary>
    /// <summary>
    /// <see cref="EngineOptions.AdvanceDecodeOnDevice"/> through the engine: one request alone (batch 1, most steps copy no
    /// metadata: blocks of 4, a copy at each crossing) and then three at once with a stop token ending one mid-batch give the
    /// tokens, finish reasons and usage of the engine without it, and every block returns to the pool.
    /// </summary>
    [Fact]
    public async Task AdvancingDecodeMetadataOnTheDeviceGivesTheSameCompletions()
    {
        int[] alone = [3, 1, 4, 1, 5, 9, 2, 6];
        int[][] together = [[10, 20, 30, 40, 50], [5, 6], [99, 98, 97]];
        List<int> free;
        using (var probe = Engine())
            free = new TextGenerator(probe.Model).Generate(together[1], new GenerationOptions { MaxNewTokens = 12 }).ToList();
        int stop = free[Math.Min(5, free.Count - 1)];
        async Task<((List<int> Tokens, FinishReason? Finish, CompletionUsage? Usage) Alone, (List<int> Tokens, FinishReason? Finish, CompletionUsage? Usage)[] Together, long Skipped)> Serve(bool advance)
        {
            using var engine = Engine(stopTokens: [stop], advanceOnDevice: advance);
            var one = await Collect(engine.Submit(new CompletionRequest { Prompt = alone, MaxTokens = 40 }).ReadAllAsync());
            var many = await Task.WhenAll(together.Select(p => Collect(engine.Submit(new CompletionRequest { Prompt = p, MaxTokens = 12 }).ReadAllAsync())));
            for (int i = 0; i < 400 && engine.Metrics.KvBlocksInUse != 0; i++) await Task.Delay(5);
            Assert.Equal(0, engine.Metrics.KvBlocksInUse);
            return (one, many, engine.MetadataCopiesSkipped);
        }
        var copied = await Serve(advance: false);
        var advanced = await Serve(advance: true);
        Assert.Equal(0, copied.Skipped);
        Assert.True(advanced.Skipped >= 15, $"only {advanced.Skipped} decode steps skipped their metadata copy");
        foreach (var (a, b) in copied.Together.Prepend(copied.Alone).Zip(advanced.Together.Prepend(advanced.Alone)))
        {
            Assert.Equal(a.Tokens, b.Tokens);
            Assert.Equal(a.Finish, b.Finish);
            Assert.Equal(a.Usage, b.Usage);
        }
        Assert.Contains(copied.Together, r => r.Finish == FinishReason.Stop);
    }

    [Fact]
    public async Task RequestToTheEndOfTheContextGetsEveryTokenWithAsyncScheduling()
    {
        using var engine = Engine(context: 40);
        int[] prompt = [11, 22, 33, 44, 55];
        var expected = new TextGenerator(engine.Model).Generate(prompt, new GenerationOptions { MaxNewTokens = 35 }).ToList();
        var result = await Collect(engine.Submit(new CompletionRequest { Prompt = prompt, MaxTokens = 35 }, TestContext.Current.CancellationToken).ReadAllAsync(TestContext.Current.CancellationToken));
        Assert.Equal(35, expected.Count);
        Assert.Equal(expected, result.Tokens);
        Assert.Equal(FinishReason.Length, result.Finish);
        Assert.True(engine.PipelinedSteps > 0);
    }
}
