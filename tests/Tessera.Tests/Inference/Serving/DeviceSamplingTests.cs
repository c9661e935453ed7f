using Tessera.Inference.Paging;
using Tessera.Inference.Sampling;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Speculation;
using Tessera.Models.Tokenization;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Serving;

/// <summary>
/// Sampled requests drawn on the device (<see cref="EngineOptions.SampleOnDevice"/>, <c>IBackend.SampleRows</c>) on a random
/// llama-debug model (F64, CPU) with the byte tokenizer. Both the device's draws and the host sampler's follow one rule, a
/// function of the row, the options and the token's position, so exact equality is the oracle: drawn on the device or on
/// the host, in a batch or alone, with speculation or without, a seeded request has the same tokens.
/// </summary>
public class DeviceSamplingTests
{
    private readonly CpuBackend _cpu = new(1);

    private static readonly int[][] Prompts =
    [
        [10, 20, 30, 40, 10, 20, 30, 40, 10, 20, 30],
        [5, 6, 5, 6, 5, 6, 5],
        [99, 98, 97, 96, 95, 94],
        [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2],
    ];

    private static readonly SamplingOptions[] Samplings =
    [
        new() { Temperature = 1.0 },
        new() { Temperature = 0.7, TopP = 0.9 },
        new() { Temperature = 1.2, TopK = 20 },
        new() { Temperature = 0.5, TopK = 40, TopP = 0.8 },
    ];

    private InferenceEngine Engine(bool onDevice, int draftTokens = 0) =>
        new(ByteModels.Random(_cpu, "llama-debug", seed: 11, context: 96), new ByteTokenizer(), new EngineOptions
        {
            Cache = new PagedKvCacheOptions { BlockSize = 4, MemoryBytes = 1 << 20 },
            Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 32, MaxQueue = 16 },
            SampleOnDevice = onDevice,
            Speculation = new SpeculationOptions { DraftTokens = draftTokens, MinNgram = 1 },
        });

    private static CompletionRequest[] Requests(double frequencyPenalty = 0, double temperatureScale = 1, bool presenceAndBias = false) =>
        [.. Prompts.Select((p, i) => new CompletionRequest
        {
            Prompt = p, MaxTokens = 24, Choices = 2, Seed = (ulong)(500 + i),
            Sampling = Samplings[i % Samplings.Length] with { Temperature = Samplings[i % Samplings.Length].Temperature * temperatureScale },
            FrequencyPenalty = i == 3 ? frequencyPenalty : 0,
            PresencePenalty = presenceAndBias && i == 1 ? 0.8 : 0,
            LogitBias = presenceAndBias && i >= 2 ? new Dictionary<int, double> { [p[0]] = 3.0, [7] = -100, [200] = 1.5 } : new Dictionary<int, double>(),
        })];

    private static async Task<List<int>[][]> RunAll(InferenceEngine engine, CompletionRequest[] requests)
    {
        var runs = requests.Select(async r =>
        {
            var tokens = Enumerable.Range(0, r.Choices).Select(_ => new List<int>()).ToArray();
            await foreach (var e in engine.Submit(r).ReadAllAsync()) tokens[e.Index].AddRange(e.Tokens);
            return tokens;
        });
        return await Task.WhenAll(runs);
    }

    /// <summary>
    /// The same seeded requests (four samplings: temperature alone, with top-p, top-k, both; two choices each; run
    /// together; with <paramref name="penalties"/> a frequency penalty, a presence penalty and logit_bias on some, added on the
    /// device; with speculation too, where a row's penalties count the guesses kept before it) give the same tokens drawn on the
    /// device as on the host, and without penalties the device's steps are scheduled
    /// asynchronously where the host's are not (they need the logits first). The choices of a request differ (their seeds do).
    /// </summary>
    [Theory(Timeout = 120_000)]
    [InlineData(false, 0)]
    [InlineData(true, 0)]
    [InlineData(true, 3)]
    public async Task TheDeviceDrawsTheTokensTheHostDraws(bool penalties, int draftTokens)
    {
        using var device = Engine(onDevice: true, draftTokens);
        using var host = Engine(onDevice: false, draftTokens);
        var requests = penalties ? Requests(frequencyPenalty: 0.5, temperatureScale: draftTokens > 0 ? 0.3 : 1, presenceAndBias: true) : Requests();
        var onDevice = await RunAll(device, requests);
        var onHost = await RunAll(host, requests);
        for (int i = 0; i < requests.Length; i++)
        {
            for (int c = 0; c < 2; c++)
            {
                Assert.Equal(24, onDevice[i][c].Count);
                Assert.Equal(onHost[i][c], onDevice[i][c]);
            }
            Assert.NotEqual(onDevice[i][0], onDevice[i][1]);
        }
        // Steps with penalty terms are collected at once (the next step's terms count their tokens): here every step has some.
        if (!penalties) Assert.True(device.PipelinedSteps > 0, "no device-sampled step was scheduled asynchronously");
        // With guesses, a row's penalties count the guesses kept before it: some must be kept for that to be checked.
        if (draftTokens > 0) Assert.True(device.Metrics.AcceptedDraftTokens > 0, "no guess was kept");
        Assert.Equal(0, host.PipelinedSteps);
        Assert.Equal(0, device.Metrics.KvBlocksInUse);
    }

    /// <summary>
    /// Speculation by prompt lookup keeps a sampled request's tokens exactly (a guess is kept when it is the token its row
    /// draws, which is the token that position draws without guesses): on the device, and on the host with a frequency
    /// penalty counted over the kept guesses. At a third of the temperatures the model's choices are peaked enough that some
    /// guesses are kept and some rejected, so both paths run.
    /// </summary>
    [Theory(Timeout = 120_000)]
    [InlineData(true)]
    [InlineData(false)]
    public async Task SpeculationKeepsASampledRequestsTokens(bool onDevice)
    {
        using var plain = Engine(onDevice);
        using var speculative = Engine(onDevice, draftTokens: 3);
        var requests = Requests(frequencyPenalty: 0.5, temperatureScale: 0.3);
        var expected = await RunAll(plain, requests);
        var actual = await RunAll(speculative, requests);
        for (int i = 0; i < requests.Length; i++)
            for (int c = 0; c < 2; c++) Assert.Equal(expected[i][c], actual[i][c]);
        var m = speculative.Metrics;
        TestContext.Current.SendDiagnosticMessage($"on the device: {onDevice}; {m.AcceptedDraftTokens} of {m.DraftTokens} guesses kept");
        Assert.True(m.AcceptedDraftTokens > 0 && m.AcceptedDraftTokens < m.DraftTokens, $"{m.AcceptedDraftTokens} of {m.DraftTokens} guesses kept: both paths must run");
        Assert.Equal(0, m.KvBlocksInUse);
    }

    /// <summary>
    /// Log-probabilities computed on the device (<c>IBackend.TokenLogprobs</c>, greedy and sampled requests asking for 0 to 3
    /// alternatives, with and without speculation) are the host's: the same tokens, alternatives and values (on the CPU the
    /// op and the host read the same float rows and follow one definition, so exactly).
    /// </summary>
    [Theory(Timeout = 120_000)]
    [InlineData(0)]
    [InlineData(3)]
    public async Task LogprobsComputedOnTheDeviceAreTheHosts(int draftTokens)
    {
        using var device = Engine(onDevice: true, draftTokens);
        using var host = Engine(onDevice: false, draftTokens);
        var requests = Prompts.Select((p, i) => new CompletionRequest
        {
            Prompt = p, MaxTokens = 12, Seed = (ulong)(70 + i), TopLogprobs = i % 4,
            Sampling = i % 2 == 0 ? SamplingOptions.Greedy : Samplings[i % Samplings.Length] with { Temperature = 0.3 },
        }).ToArray();
        async Task<List<(List<int> Tokens, List<TokenLogprob> Logprobs)>> Run(InferenceEngine engine) =>
            [.. await Task.WhenAll(requests.Select(async r =>
            {
                var tokens = new List<int>();
                var logprobs = new List<TokenLogprob>();
                await foreach (var e in engine.Submit(r).ReadAllAsync())
                {
                    tokens.AddRange(e.Tokens);
                    if (e.Logprobs is not null) logprobs.AddRange(e.Logprobs);
                }
                return (tokens, logprobs);
            }))];
        var onDevice = await Run(device);
        var onHost = await Run(host);
        for (int i = 0; i < requests.Length; i++)
        {
            Assert.Equal(onHost[i].Tokens, onDevice[i].Tokens);
            Assert.Equal(12, onDevice[i].Logprobs.Count);
            for (int t = 0; t < 12; t++)
            {
                var (d, h) = (onDevice[i].Logprobs[t], onHost[i].Logprobs[t]);
                Assert.Equal((h.Token.Id, (float)h.Token.Logprob), (d.Token.Id, (float)d.Token.Logprob));
                Assert.Equal(h.Top.Select(a => (a.Id, (float)a.Logprob)), d.Top.Select(a => (a.Id, (float)a.Logprob)));
                Assert.Equal(i % 4, d.Top.Count);
            }
        }
    }

    /// <summary>A sampled request run alone draws what it draws in a full batch beside others (greedy, sampled and penalized).</summary>
    [Fact(Timeout = 120_000)]
    public async Task ARequestAloneDrawsWhatItDrawsInABatch()
    {
        using var engine = Engine(onDevice: true);
        var requests = Requests(frequencyPenalty: 0.5);
        var together = await RunAll(engine, requests);
        for (int i = 0; i < requests.Length; i++)
        {
            var alone = await RunAll(engine, [requests[i]]);
            for (int c = 0; c < 2; c++) Assert.Equal(together[i][c], alone[0][c]);
        }
    }
}
