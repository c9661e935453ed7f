using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Sampling;
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
/// Speculative decoding by prompt lookup in the engine, on a random llama-debug model (F64, CPU) with the byte tokenizer.
/// Exact equality with decoding one token a step is the oracle: at F64 the verifying step's extra rows change no argmax
/// (a tie would need two logits equal to 1e-16 relative).
/// </summary>
public class SpeculativeDecodingTests
{
    private readonly CpuBackend _cpu = new(1);

    // Prompts that repeat themselves, so that the drafter proposes from the first step, and one that does not.
    private static readonly int[][] Prompts =
    [
        [10, 20, 30, 40, 10, 20, 30, 40, 10, 20, 30],
        [5, 6, 5, 6, 5, 6, 5],
        [99, 98, 97, 96, 95, 94],
        [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2],
        [42, 42, 42],
    ];

    private InferenceEngine Engine(int draftTokens, int budget = 32, int context = 96, int maxBatch = 4, bool uniform = false)
    {
        return new InferenceEngine(ByteModels.Random(_cpu, "llama-debug", seed: 11, context), new ByteTokenizer(), new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 1 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = maxBatch, TokenBudget = budget, MaxQueue = 16 },
            Speculation = new SpeculationOptions { DraftTokens = draftTokens, MinNgram = 1, UniformDrafts = uniform },
        });
    }

    private static async Task<(List<int> Tokens, FinishReason? Finish, CompletionUsage? Usage, string Text, List<TokenLogprob> Logprobs)> Run(InferenceEngine engine, CompletionRequest request)
    {
        var tokens = new List<int>();
        var logprobs = new List<TokenLogprob>();
        FinishReason? finish = null;
        CompletionUsage? usage = null;
        var text = new System.Text.StringBuilder();
        await foreach (var e in engine.Submit(request).ReadAllAsync())
        {
            tokens.AddRange(e.Tokens);
            if (e.Logprobs is not null) logprobs.AddRange(e.Logprobs);
            text.Append(e.Text);
            finish ??= e.FinishReason;
            usage ??= e.Usage;
        }
        return (tokens, finish, usage, text.ToString(), logprobs);
    }

    [Fact(Timeout = 120_000)]
    public async Task GreedyCompletionsEqualDecodingOneTokenAStepAndDraftsAreBothAcceptedAndRejected()
    {
        using var plain = Engine(draftTokens: 0);
        using var speculative = Engine(draftTokens: 4);
        var requests = Prompts.Select(p => new CompletionRequest { Prompt = p, MaxTokens = 40 }).ToArray();
        var expected = await Task.WhenAll(requests.Select(r => Run(plain, r)));
        var actual = await Task.WhenAll(requests.Select(r => Run(speculative, r)));
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal(expected[i].Tokens, actual[i].Tokens);
            Assert.Equal(expected[i].Text, actual[i].Text);
            Assert.Equal(FinishReason.Length, actual[i].Finish);
            Assert.Equal(40, actual[i].Usage!.CompletionTokens);
        }
        var m = speculative.Metrics;
        TestContext.Current.SendDiagnosticMessage($"drafts verified {m.DraftTokens}, accepted {m.AcceptedDraftTokens}; steps {m.Steps} against {plain.Metrics.Steps}");
        Assert.Equal(0, plain.Metrics.DraftTokens);
        Assert.True(m.AcceptedDraftTokens > 0, $"no draft was accepted of {m.DraftTokens}: the acceptance path did not run");
        Assert.True(m.AcceptedDraftTokens < m.DraftTokens, $"every one of {m.DraftTokens} drafts was accepted: the rejection path did not run");
        Assert.True(m.Steps < plain.Metrics.Steps, $"{m.Steps} steps with speculation against {plain.Metrics.Steps} without: accepted drafts save steps");
        Assert.Equal(0, m.KvBlocksInUse);
    }

    /// <summary>
    /// With <see cref="SpeculationOptions.UniformDrafts"/> every decoding sequence verifies exactly 4 guesses (its last
    /// token repeated where the drafter has none), so steps of decodes run in a bucket's fixed layout: three sequences pad
    /// to a bucket of four, the padding sequence's five rows computed and ignored. The completions stay greedy decoding's.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task UniformDraftsRunInTheBucketsLayoutAndGiveTheSameCompletions()
    {
        using var plain = Engine(draftTokens: 0);
        using var uniform = Engine(draftTokens: 4, uniform: true);
        var requests = Prompts.Take(3).Select(p => new CompletionRequest { Prompt = p, MaxTokens = 30 }).ToArray();
        var expected = await Task.WhenAll(requests.Select(r => Run(plain, r)));
        var actual = await Task.WhenAll(requests.Select(r => Run(uniform, r)));
        for (int i = 0; i < requests.Length; i++) Assert.Equal(expected[i].Tokens, actual[i].Tokens);
        TestContext.Current.SendDiagnosticMessage($"uniform: {uniform.UniformVerificationSteps} bucketed verification steps of {uniform.Metrics.Steps}; " +
            $"{uniform.Metrics.AcceptedDraftTokens} of {uniform.Metrics.DraftTokens} drafts accepted");
        Assert.True(uniform.UniformVerificationSteps > 0, "no step ran in the uniform verification layout");
        Assert.True(uniform.Metrics.AcceptedDraftTokens > 0);
        Assert.Equal(0, uniform.Metrics.KvBlocksInUse);
    }

    [Fact(Timeout = 120_000)]
    public async Task StopsInsideAcceptedDraftsEndTheCompletionWhereDecodingOneAStepWould()
    {
        using var plain = Engine(draftTokens: 0);
        using var speculative = Engine(draftTokens: 4);
        // The plain engine's completions give the stops: a token from the middle of each as a stop token's stand-in (a stop
        // string of its text), and max_tokens at every length from 1 to 12 (the last accepted draft, the bonus token).
        foreach (var prompt in Prompts.Take(2))
        {
            var full = await Run(plain, new CompletionRequest { Prompt = prompt, MaxTokens = 24 });
            string stop = full.Text.Substring(full.Text.Length / 2, 1);
            var withStop = new CompletionRequest { Prompt = prompt, MaxTokens = 24, Stop = [stop] };
            var a = await Run(plain, withStop);
            var b = await Run(speculative, withStop);
            Assert.Equal((a.Text, a.Finish), (b.Text, b.Finish));
            Assert.Equal(FinishReason.Stop, b.Finish);
            for (int max = 1; max <= 12; max++)
            {
                var request = new CompletionRequest { Prompt = prompt, MaxTokens = max };
                var (x, y) = (await Run(plain, request), await Run(speculative, request));
                Assert.Equal(x.Tokens, y.Tokens);
                Assert.Equal(max, y.Usage!.CompletionTokens);
            }
        }
        Assert.True(speculative.Metrics.AcceptedDraftTokens > 0);
        Assert.Equal(0, speculative.Metrics.KvBlocksInUse);
    }

    /// <summary>
    /// Sampled requests draft too (<see cref="Sampler.Verify"/> keeps the distribution; SamplerTests checks it): at a low
    /// temperature the model's choices are peaked enough that some guesses are kept. A seeded request gives the same tokens
    /// twice, with a log-probability for every token (accepted guesses included), and penalties count the kept guesses.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task SampledRequestsDraftReproduciblyWithALogprobForEveryToken()
    {
        using var speculative = Engine(draftTokens: 4);
        var requests = Prompts.Select((p, i) => new CompletionRequest
        {
            Prompt = p, MaxTokens = 24, Seed = (ulong)(1000 + i), TopLogprobs = 2, FrequencyPenalty = i == 1 ? 0.5 : 0,
            Sampling = new SamplingOptions { Temperature = 0.3 },
        }).ToArray();
        var first = await Task.WhenAll(requests.Select(r => Run(speculative, r)));
        var again = await Task.WhenAll(requests.Select(r => Run(speculative, r)));
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal(first[i].Tokens, again[i].Tokens);
            Assert.Equal(24, first[i].Tokens.Count);
            Assert.Equal(24, first[i].Logprobs.Count);
            Assert.All(first[i].Logprobs, l => Assert.True(l.Token.Logprob <= 0 && l.Top.Count == 2));
            Assert.Equal(first[i].Tokens, first[i].Logprobs.Select(l => l.Token.Id));
        }
        var m = speculative.Metrics;
        TestContext.Current.SendDiagnosticMessage($"sampled: {m.AcceptedDraftTokens} of {m.DraftTokens} drafts kept");
        Assert.True(m.AcceptedDraftTokens > 0 && m.AcceptedDraftTokens < m.DraftTokens, $"{m.AcceptedDraftTokens} of {m.DraftTokens} drafts kept: both paths must run");
        Assert.Equal(0, m.KvBlocksInUse);
    }

    /// <summary>
    /// n choices speculate each on their own sequence (their prompt blocks shared): three greedy choices are the same
    /// greedy completion, and two seeded sampled choices repeat themselves run to run.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task EveryChoiceOfARequestSpeculatesOnItsOwn()
    {
        using var plain = Engine(draftTokens: 0);
        using var speculative = Engine(draftTokens: 4);
        async Task<List<int>[]> Choices(InferenceEngine engine, CompletionRequest request)
        {
            var byChoice = Enumerable.Range(0, request.Choices).Select(_ => new List<int>()).ToArray();
            await foreach (var e in engine.Submit(request).ReadAllAsync()) if (e.Usage is null) byChoice[e.Index].AddRange(e.Tokens);
            return byChoice;
        }
        var greedy = new CompletionRequest { Prompt = Prompts[0], MaxTokens = 30, Choices = 3 };
        var expected = (await Run(plain, greedy with { Choices = 1 })).Tokens;
        Assert.All(await Choices(speculative, greedy), c => Assert.Equal(expected, c));
        var sampled = greedy with { Choices = 2, Seed = 77, Sampling = new SamplingOptions { Temperature = 0.3 } };
        var first = await Choices(speculative, sampled);
        var again = await Choices(speculative, sampled);
        for (int i = 0; i < 2; i++) Assert.Equal(first[i], again[i]);
        Assert.True(speculative.Metrics.DraftTokens > 0);
        Assert.Equal(0, speculative.Metrics.KvBlocksInUse);
    }

    /// <summary>
    /// A request cancelled while it speculates (a loop its guesses keep up with) frees its blocks, the guesses' included,
    /// and the one beside it still gets greedy decoding's tokens.
    /// </summary>
    [Fact(Timeout = 120_000)]
    public async Task ACancelledSpeculatingRequestFreesItsBlocksAndLeavesTheOtherItsTokens()
    {
        using var plain = Engine(draftTokens: 0, context: 1024);
        using var speculative = Engine(draftTokens: 4, context: 1024);
        var other = new CompletionRequest { Prompt = Prompts[3], MaxTokens = 200 };
        var expected = await Run(plain, other);
        using var cts = new CancellationTokenSource();
        var reader = speculative.Submit(new CompletionRequest { Prompt = Prompts[1], MaxTokens = 1000 }, cts.Token);
        var otherRun = Run(speculative, other);
        await reader.ReadAsync(TestContext.Current.CancellationToken);                                     // it is running
        cts.Cancel();
        int received = 1;
        await foreach (var _ in reader.ReadAllAsync(TestContext.Current.CancellationToken)) received++;    // the stream completes
        Assert.True(received < 1000, $"the request finished ({received} events) before the cancel");
        Assert.Equal(expected.Tokens, (await otherRun).Tokens);
        for (int i = 0; i < 400 && speculative.Metrics.KvBlocksInUse != 0; i++) await Task.Delay(5, TestContext.Current.CancellationToken);
        Assert.Equal(0, speculative.Metrics.KvBlocksInUse);
        Assert.Equal(1, speculative.Metrics.RequestsCancelled);
        Assert.True(speculative.Metrics.DraftTokens > 0);
    }

    [Fact(Timeout = 120_000)]
    public async Task ABudgetTooSmallForEveryDraftStillDecodesEverySequence()
    {
        // Budget 4 with a batch of 4: no room for drafts while all four decode, some when fewer do.
        using var plain = Engine(draftTokens: 0, budget: 4);
        using var speculative = Engine(draftTokens: 4, budget: 4);
        var requests = Prompts.Take(4).Select(p => new CompletionRequest { Prompt = p, MaxTokens = 20 }).ToArray();
        var expected = await Task.WhenAll(requests.Select(r => Run(plain, r)));
        var actual = await Task.WhenAll(requests.Select(r => Run(speculative, r)));
        for (int i = 0; i < requests.Length; i++) Assert.Equal(expected[i].Tokens, actual[i].Tokens);
        Assert.Equal(0, speculative.Metrics.KvBlocksInUse);
    }
}
