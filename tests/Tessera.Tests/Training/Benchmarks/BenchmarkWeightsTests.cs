using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Benchmarks;
using Xunit;

namespace Tessera.Tests.Training.Benchmarks;

public sealed class BenchmarkWeightsTests
{
    private static Dictionary<string, float[]> Initialized(int seed)
    {
        var backend = new CpuBackend(2);
        var model = new global::Tessera.Models.Transformer(ModelPresets.Get("gpt2-tiny"), backend, DType.F32);
        BenchmarkWeights.Initialize(model, seed);
        return model.Parameters.Parameters.ToDictionary(p => p.Name, p =>
        {
            var host = new float[p.NumElements];
            backend.CopyToHost<float>(p.Value, host);
            return host;
        });
    }

    [Fact]
    public void WeightsHaveGpt2sScaleAndNormsAndBiasesTheirNeutralValues()
    {
        var w = Initialized(seed: 4);
        double Std(float[] v) => Math.Sqrt(v.Average(x => (double)x * x));
        // 0.02 for matrices, 0.02 / sqrt(2 * 4 layers) for residual projections; 1% over 32K+ samples is loose enough.
        Assert.Equal(0.02, Std(w["blocks.0.attn.qkv.weight"]), 0.0002);
        Assert.Equal(0.02 / Math.Sqrt(8), Std(w["blocks.0.mlp.proj.weight"]), 0.0001);
        Assert.All(w["blocks.0.norm1.weight"], x => Assert.Equal(1f, x));
        Assert.All(w["blocks.0.attn.qkv.bias"], x => Assert.Equal(0f, x));
    }

    [Fact]
    public void TheSameSeedGivesTheSameWeightsAndAnotherSeedOthers()
    {
        var a = Initialized(seed: 4);
        var b = Initialized(seed: 4);
        var c = Initialized(seed: 5);
        Assert.Equal(a["tok_emb.weight"], b["tok_emb.weight"]);
        Assert.NotEqual(a["tok_emb.weight"], c["tok_emb.weight"]);
    }

    /// <summary>
    /// The name hash is FNV-1a 64 (the published vectors for "a" and "foobar"), so the weights do not depend on the
    /// process: .NET randomizes string hashes and HashCode.Combine per process, which made two benchmark runs "from the same
    /// weights" start from different ones. The first values of one matrix for seed 4 are pinned (drawn 2026-12-03): a
    /// per-process seed would change them in every test run.
    /// </summary>
    [Fact]
    public void TheWeightsOfASeedAreTheSameInEveryProcess()
    {
        Assert.Equal(0xaf63dc4c8601ec8cUL, BenchmarkWeights.StableHash("a"));
        Assert.Equal(0x85944171f73967e8UL, BenchmarkWeights.StableHash("foobar"));
        var first = Initialized(seed: 4)["blocks.0.attn.qkv.weight"].Take(3).ToArray();
        TestContext.Current.TestOutputHelper?.WriteLine(string.Join(", ", first.Select(x => x.ToString("R", System.Globalization.CultureInfo.InvariantCulture))));
        Assert.Equal(Pinned, first);
    }

    private static readonly float[] Pinned = [-0.00469839f, -0.012391446f, 0.0010770807f];
}
