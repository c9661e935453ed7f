using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Speculation;

/// <summary>
/// Speculative decoding in <see cref="TextGenerator"/> (the dense cache, `tessera generate --draft-tokens`) against greedy
/// decoding one token a step, on random debug models in F64: exact equality is the oracle (the verifying forward's extra rows
/// change no argmax at F64; a tie would need two logits equal to 1e-16 relative).
/// </summary>
public class SpeculativeGenerationTests
{
    private readonly CpuBackend _cpu = new(1);

    private Transformer Model(string preset, int context = 128) => ByteModels.Random(_cpu, preset, seed: 5, context);

    private static readonly int[][] Prompts =
    [
        [10, 20, 30, 40, 10, 20, 30, 40, 10, 20, 30],
        [5, 6, 5, 6, 5, 6, 5],
        [99, 98, 97, 96, 95, 94],
        [7],
    ];

    private static GenerationOptions Options(int max, int drafts, IReadOnlyCollection<int>? stops = null) => new()
    {
        MaxNewTokens = max, StopTokens = stops ?? [], Speculation = new SpeculationOptions { DraftTokens = drafts, MinNgram = 1 },
    };

    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    public void GreedyGenerationEqualsDecodingOneTokenAStepAndDraftsAreBothAcceptedAndRejected(string preset)
    {
        var (drafted, accepted) = AssertSpeculationGivesTheSameTokens(Model(preset), 60);
        TestContext.Current.SendDiagnosticMessage($"{preset}: {accepted} of {drafted} drafts accepted");
        Assert.True(accepted > 0, $"no draft of {drafted} was accepted: the acceptance path did not run");
        Assert.True(accepted < drafted, $"all {drafted} drafts were accepted: the rejection path did not run");
    }

    /// <summary>
    /// LongRoPE (phi4-mini-debug: the long factors once a forward passes 16 positions): decoding one token a step recomputes
    /// the sequence where it first passes them, and speculation must give the same tokens. A verifying forward that would
    /// start within the 16 positions and reach past them is shortened to end at the switch, and the step that starts at it
    /// recomputes the sequence with its drafts from position 0 (a forward over keys cached with the short factors is refused
    /// by the model). Prompts of 1, 6, 7 and 11 tokens meet the switch at different points of a 4-draft step. Then the same with a draft
    /// model that has the switch too.
    /// </summary>
    [Fact]
    public void GenerationAcrossTheLongRopeSwitchEqualsDecodingOneTokenAStep()
    {
        var model = Model("phi4-mini-debug", context: 64);
        var (drafted, accepted) = AssertSpeculationGivesTheSameTokens(model, 45);
        Assert.True(accepted > 0, $"no draft of {drafted} was accepted: the speculative path did not run");

        // A draft model with LongRoPE of its own (the same model: every guess is kept until the verifier's context ends)
        // crosses its switch inside its drafting loop, and recomputes there too.
        foreach (var prompt in Prompts)
        {
            var expected = new TextGenerator(model).Generate(prompt, Options(45, 0)).ToList();
            var withDraft = new TextGenerator(model, draftModel: model);
            Assert.Equal(expected, withDraft.Generate(prompt, Options(45, 4)).ToList());
            Assert.True(withDraft.LastRunAcceptedDraftTokens > 0, "the draft model's guesses were never kept");
        }
    }

    /// <summary>
    /// Every prompt generated up to <paramref name="max"/> tokens with 4 drafts by prompt lookup must give the tokens of decoding
    /// one token a step; returns the drafts proposed and kept over all prompts.
    /// </summary>
    private static (int Drafted, int Accepted) AssertSpeculationGivesTheSameTokens(Transformer model, int max)
    {
        int drafted = 0, accepted = 0;
        foreach (var prompt in Prompts)
        {
            var expected = new TextGenerator(model).Generate(prompt, Options(max, 0)).ToList();
            var generator = new TextGenerator(model);
            Assert.Equal(expected, generator.Generate(prompt, Options(max, 4)).ToList());
            drafted += generator.LastRunDraftTokens;
            accepted += generator.LastRunAcceptedDraftTokens;
        }
        return (drafted, accepted);
    }

    [Fact]
    public void LimitsStopsAndTheContextEndFallOnTheSameToken()
    {
        var model = Model("llama-debug", context: 40);
        foreach (var prompt in Prompts.Take(2))
        {
            // max_tokens at every length up to 12, and the context's end (40 positions: 29 or 33 new tokens at most).
            foreach (int max in Enumerable.Range(1, 12).Append(100))
                Assert.Equal(new TextGenerator(model).Generate(prompt, Options(max, 0)).ToList(), new TextGenerator(model).Generate(prompt, Options(max, 4)).ToList());
            // A stop token from the middle of the plain output: both end just before its first occurrence.
            var full = new TextGenerator(model).Generate(prompt, Options(100, 0)).ToList();
            int[] stop = [full[full.Count / 2]];
            var plain = new TextGenerator(model).Generate(prompt, Options(100, 0, stop)).ToList();
            Assert.Equal(plain, new TextGenerator(model).Generate(prompt, Options(100, 4, stop)).ToList());
            Assert.Equal(full.IndexOf(stop[0]), plain.Count);
        }
    }

    /// <summary>
    /// Sampling speculates too, every row drawn on the device at its token's position (<see cref="Sampler.Verify"/>'s rule): at a
    /// low temperature some guesses are kept and some are not, the tokens are those of the same seed without speculation, and a
    /// stop token ends the same tokens at its first occurrence.
    /// </summary>
    [Fact]
    public void SampledGenerationSpeculatesReproducibly()
    {
        var model = Model("gpt2-debug");
        var sampled = Options(60, 4) with { Sampling = new SamplingOptions { Temperature = 0.3, Seed = 3 } };
        int drafted = 0, accepted = 0;
        foreach (var prompt in Prompts)
        {
            var generator = new TextGenerator(model);
            var tokens = generator.Generate(prompt, sampled).ToList();
            Assert.Equal(60, tokens.Count);
            Assert.Equal(tokens, new TextGenerator(model).Generate(prompt, sampled).ToList());
            Assert.Equal(new TextGenerator(model).Generate(prompt, sampled with { Speculation = new() }).ToList(), tokens);
            drafted += generator.LastRunDraftTokens;
            accepted += generator.LastRunAcceptedDraftTokens;
            int[] stop = [tokens[30]];
            var stopped = new TextGenerator(model).Generate(prompt, sampled with { StopTokens = stop }).ToList();
            Assert.Equal(tokens.TakeWhile(t => t != stop[0]), stopped);       // the same draws up to the stop
        }
        TestContext.Current.SendDiagnosticMessage($"sampled: {accepted} of {drafted} drafts kept");
        Assert.True(accepted > 0 && accepted < drafted, $"{accepted} of {drafted} drafts kept: both paths must run");
    }

    /// <summary>
    /// With a draft model: the served model's own weights guess right every time (but where a limit cuts the guesses), a
    /// one-layer model of other weights mostly wrong; greedy output is greedy decoding's either way, and a small draft
    /// context only limits the guesses.
    /// </summary>
    [Fact]
    public void ADraftModelsGuessesLeaveGreedyOutputUnchanged()
    {
        var model = Model("llama-debug");
        var same = Model("llama-debug");                               // seed 5 as well: the same weights
        var other = ByteModels.Random(_cpu, "llama-debug", seed: 6, context: 128, layers: 1);
        var shortContext = Model("llama-debug", context: 24);
        foreach (var prompt in Prompts)
        {
            var expected = new TextGenerator(model).Generate(prompt, Options(60, 0)).ToList();
            var right = new TextGenerator(model, same);
            Assert.Equal(expected, right.Generate(prompt, Options(60, 4)).ToList());
            Assert.Equal(right.LastRunDraftTokens, right.LastRunAcceptedDraftTokens);
            Assert.True(right.LastRunDraftTokens >= 40, $"only {right.LastRunDraftTokens} guesses for 60 tokens");
            var wrong = new TextGenerator(model, other);
            Assert.Equal(expected, wrong.Generate(prompt, Options(60, 3)).ToList());
            Assert.True(wrong.LastRunAcceptedDraftTokens < wrong.LastRunDraftTokens);
            var limited = new TextGenerator(model, shortContext);
            Assert.Equal(expected, limited.Generate(prompt, Options(60, 4)).ToList());
            Assert.True(limited.LastRunDraftTokens < right.LastRunDraftTokens);   // no guesses once the draft's 24 positions are full
        }
    }

    [Fact]
    public void ADraftModelThatCannotGuessIsRefused()
    {
        var model = Model("llama-debug");
        var otherVocabulary = new Transformer(ModelPresets.Get("llama-debug") with { VocabSize = 300 }, _cpu, DType.F64);
        Assert.Contains("vocabulary", Assert.Throws<ArgumentException>(() => new TextGenerator(model, otherVocabulary)).Message);
        var elsewhere = new Transformer(ModelPresets.Get("llama-debug") with { VocabSize = 256, MaxSequenceLength = 128 }, new CpuBackend(1), DType.F64);
        Assert.Contains("backend", Assert.Throws<ArgumentException>(() => new TextGenerator(model, elsewhere)).Message);
        Assert.Contains("DraftTokens", Assert.Throws<ArgumentException>(() => new TextGenerator(model, Model("llama-debug")).Generate(Prompts[0], Options(10, 0)).ToList()).Message);
    }
}
