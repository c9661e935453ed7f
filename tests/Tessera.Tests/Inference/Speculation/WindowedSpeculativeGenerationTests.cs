using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Xunit;

namespace Tessera.Tests.Inference.Speculation;

/// <summary>
/// `tessera generate --draft-tokens` and `--draft-model` on a sliding-window model (window 12, context 96, F64 on the CPU):
/// speculation runs in the cache bounded by the window (<see cref="GenerationOptions.BoundedWindowCache"/>), the draft
/// model's pool beside the served one. The oracle is greedy decoding through the dense, unbounded cache without
/// speculation: the same tokens, far past the window.
/// </summary>
public class WindowedSpeculativeGenerationTests
{
    private const int Window = 12, Context = 96;
    private readonly CpuBackend _cpu = new(1);

    private Transformer Model(int seed, int window, int layers = 0)
    {
        var config = ModelPresets.Get("mistral-debug") with { VocabSize = 256, MaxSequenceLength = Context, SlidingWindow = window };
        if (layers > 0) config = config with { Layers = layers };
        var model = new Transformer(config, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));
        return model;
    }

    private static int[] Prompt(int seed, int length)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, length).Select(_ => rng.Next(1, 250)).ToArray();
    }

    private static GenerationOptions Options(int drafts, bool bounded = true, SamplingOptions? sampling = null) => new()
    {
        MaxNewTokens = 70, WindowPrefillChunk = 8, BoundedWindowCache = bounded, Sampling = sampling ?? SamplingOptions.Greedy,
        Speculation = new SpeculationOptions { DraftTokens = drafts, MinNgram = 1 },
    };

    /// <summary>
    /// A 21-token prompt (chunks of 8) and 70 new tokens: with the served model as its own draft (every guess kept), its
    /// weights with a window of 8 or none (some guesses kept), a one-layer draft of other weights, and by prompt lookup, the
    /// tokens of the dense cache without speculation. The pool is the pair's bound: 48 positions with a windowed draft
    /// (window 12 + chunk 8 in blocks of 16), every position of the 91 without one.
    /// </summary>
    [Theory]
    [InlineData("same", 48)]
    [InlineData("narrower", 48)]
    [InlineData("none", 96)]
    [InlineData("other", 48)]
    [InlineData("lookup", 48)]
    public void GreedyBoundedSpeculationEqualsDenseDecoding(string draft, int positions)
    {
        var served = Model(51, Window);
        var prompt = Prompt(50, 21);
        var expected = new TextGenerator(served).Generate(prompt, Options(0, bounded: false)).ToList();
        Assert.Equal(70, expected.Count);
        var draftModel = draft switch
        {
            "same" => Model(51, Window),
            "narrower" => Model(51, 8),
            "none" => Model(51, 0),
            "other" => Model(52, 8, layers: 1),
            _ => null,
        };
        var generator = new TextGenerator(served, draftModel);
        var tokens = generator.Generate(prompt, Options(4)).ToList();
        TestContext.Current.SendDiagnosticMessage($"{draft}: {generator.LastRunAcceptedDraftTokens} of {generator.LastRunDraftTokens} drafts accepted, " +
            $"{generator.LastRunCachePositions} cached positions, peak {generator.LastRunPeakBlocks} blocks");
        Assert.Equal(expected, tokens);
        Assert.Equal(positions, generator.LastRunCachePositions);
        Assert.True(generator.LastRunDraftTokens > 0, "nothing was guessed: speculation did not run in the bounded cache");
        if (draft == "same") Assert.Equal(generator.LastRunDraftTokens, generator.LastRunAcceptedDraftTokens);
        if (draft is "narrower" or "none")
            Assert.InRange(generator.LastRunAcceptedDraftTokens, 1, generator.LastRunDraftTokens - 1);   // guesses kept and dropped
    }

    /// <summary>Sampling (temperature 0.8, seed 3) with a draft model in the bounded cache gives the same tokens twice.</summary>
    [Fact]
    public void SampledBoundedSpeculationIsReproducibleForItsSeed()
    {
        var served = Model(51, Window);
        var prompt = Prompt(50, 21);
        var sampling = new SamplingOptions { Temperature = 0.8, Seed = 3 };
        var first = new TextGenerator(served, Model(51, 8));
        var a = first.Generate(prompt, Options(4, sampling: sampling)).ToList();
        var b = new TextGenerator(served, Model(51, 8)).Generate(prompt, Options(4, sampling: sampling)).ToList();
        TestContext.Current.SendDiagnosticMessage($"{first.LastRunAcceptedDraftTokens} of {first.LastRunDraftTokens} drafts accepted: {string.Join(' ', a)}");
        Assert.Equal(70, a.Count);
        Assert.Equal(a, b);
        Assert.True(first.LastRunDraftTokens > 0);
    }
}
