using Tessera.Inference;
using Tessera.Inference.Benchmarks;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Inference.Benchmarks;

public sealed class GenerationBenchmarkTests
{
    private static Transformer DebugModel()
    {
        var model = new Transformer(ModelPresets.Get("gpt2-debug"), new CpuBackend(1), DType.F32);
        model.InitializeWeights(1);
        return model;
    }

    [Fact]
    public void RoundsAfterTheWarmUpAreMeasuredAndTheBytesReadPerTokenAreCounted()
    {
        var model = DebugModel();
        var c = model.Config;
        var r = new GenerationBenchmark(model, new GenerationBenchmarkOptions { PromptLength = 8, NewTokens = 6, Rounds = 3 }, () => 777).Run();

        Assert.Equal(2, r.MeasuredRounds);
        Assert.Equal(5, r.DecodedTokens);
        Assert.True(r.PrefillTokensPerSecond > 0);
        Assert.True(r.DecodeTokensPerSecond > 0);
        Assert.Equal(r.DecodeMilliseconds / 5, r.DecodeMillisecondsPerToken, 1e-12);
        Assert.Equal(777, r.PeakDeviceBytes);
        Assert.False(r.DecodeStepReplayed);   // the CPU backend runs every decode step; only a GPU records one
        // F32: 4 bytes per weight, and per decode step i = 1..5, K and V of 8 + i positions in every layer.
        Assert.Equal(model.Parameters.ParameterCount * 4.0, r.WeightBytesPerToken);
        double kv = Enumerable.Range(1, 5).Sum(i => 2.0 * c.Layers * (8 + i) * c.EffectiveKvHeads * c.HeadSize * 4) / 5;
        Assert.Equal(kv, r.KvCacheBytesPerToken, 1e-9);
        Assert.Equal((r.WeightBytesPerToken + kv) * r.DecodeTokensPerSecond, r.BandwidthBytesPerSecond, 1e-6);
    }

    [Fact]
    public void TheTemplatesTokenLimitAndStopTokensDoNotShortenARound()
    {
        // Every id is a stop token and one new token is allowed: TextGenerator given this template would stop at once.
        var template = new GenerationOptions { MaxNewTokens = 1, StopTokens = Enumerable.Range(0, 96).ToHashSet() };
        var r = new GenerationBenchmark(DebugModel(), new GenerationBenchmarkOptions { PromptLength = 4, NewTokens = 5, Rounds = 1, Generation = template }).Run();
        Assert.Equal(5, r.NewTokens);
        Assert.Equal(1, r.MeasuredRounds);   // one round: measured, no warm-up
        Assert.True(r.DecodeTokensPerSecond > 0);
    }

    public static TheoryData<GenerationBenchmarkOptions, string> InvalidOptions => new()
    {
        { new() { PromptLength = 0, NewTokens = 4 }, "PromptLength (0)" },
        { new() { PromptLength = 4, NewTokens = 1 }, "NewTokens (1)" },
        { new() { PromptLength = 4, NewTokens = 4, Rounds = 0 }, "Rounds (0)" },
        { new() { PromptLength = 20, NewTokens = 13 }, "context of 32" },   // gpt2-debug holds 32 positions
    };

    [Theory]
    [MemberData(nameof(InvalidOptions))]
    public void InvalidOptionsAreRefusedNamingTheField(GenerationBenchmarkOptions options, string expected)
    {
        var e = Assert.Throws<ArgumentException>(() => new GenerationBenchmark(DebugModel(), options));
        Assert.Contains(expected, e.Message);
    }
}
