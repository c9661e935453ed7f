using Tessera.Models;
using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Nn.Layers;

/// <summary>
/// <see cref="SparseMoeFeedForward"/> in F64 on the CPU against the plain-loop <see cref="SparseMoeReference"/> (per token: the
/// router's softmax, the k experts of highest probability with ties to the lower index, their weights renormalized or not,
/// the weighted sum of their SwiGLUs), and its backward against central differences of that reference.
/// </summary>
public sealed class MixtureOfExpertsLayerTests
{
    private const int N = 10, C = 8, F = 6, E = 4;
    private readonly CpuBackend _cpu = new(1);

    private SparseMoeReference.Weights Read(SparseMoeFeedForward moe) => SparseMoeReference.Read(_cpu, moe);

    /// <summary>y (N, C) of x (N, C) by <see cref="SparseMoeReference"/> (no shared expert); <paramref name="aux"/> the
    /// load-balancing loss, <paramref name="counts"/> the tokens each expert took.</summary>
    private static double[] Reference(double[] x, SparseMoeReference.Weights w, int k, bool normalize, double coefficient, out double aux, out int[] counts) =>
        SparseMoeReference.Forward(x, w, k, normalize, coefficient, shared: false, out aux, out counts);

    private (SparseMoeFeedForward Moe, ParameterArena Arena) Layer(int k, bool normalize, double coefficient, Random rng)
    {
        var parameters = new ParameterLayoutBuilder();
        var moe = new SparseMoeFeedForward(new LayerFactory(parameters), "moe", C, F, E, k, normalize, coefficient);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        return (moe, arena);
    }

    [Theory]
    [InlineData(2, true)]
    [InlineData(2, false)]
    [InlineData(1, false)]
    [InlineData(4, true)]     // every expert: renormalized weights are the softmax itself
    public void ForwardMatchesAPlainLoopReference(int k, bool normalize)
    {
        const int seed = 4101;
        var rng = new Random(seed);
        var (moe, _) = Layer(k, normalize, 0.01, rng);
        var x = TestTensors.Normal(rng, N * C);
        var residual = TestTensors.Normal(rng, N * C);
        var ctx = PassContext.Training(new ActivationStore(_cpu), 0);
        var y = TestTensors.ToDoubles(_cpu, moe.Forward(ctx, TestTensors.FromDoubles(_cpu, x, DType.F64, N, C), TestTensors.FromDoubles(_cpu, residual, DType.F64, N, C)));
        var expected = Reference(x, Read(moe), k, normalize, 0.01, out double aux, out _);
        for (int i = 0; i < expected.Length; i++) expected[i] += residual[i];
        // The same sums in another order (gathered rows, a batched scale, a scatter-add): ~1e-16 per operation; 1e-12 relative
        // still fails for a wrong expert or weight, which moves the output by O(0.1).
        NumericAssert.Close(expected, y, 1e-12, $"output (k {k}, normalize {normalize}, seed {seed})");
        Assert.True(Math.Abs(moe.LastAuxiliaryLoss - aux) <= 1e-12 * Math.Abs(aux), $"auxiliary loss {moe.LastAuxiliaryLoss} vs {aux} (seed {seed})");
    }

    [Fact]
    public void RenormalizedAndPlainWeightsGiveDifferentOutputs()
    {
        const int seed = 4201;
        var (moe, _) = Layer(2, normalize: true, 0, new Random(seed));
        var x = TestTensors.Normal(new Random(seed + 1), N * C);
        var w = Read(moe);
        var renormalized = Reference(x, w, 2, true, 0, out _, out _);
        var plain = Reference(x, w, 2, false, 0, out _, out _);
        // With 4 experts the top two hold well under all of the probability: the renormalized outputs are larger by O(1).
        Assert.True(NumericAssert.MaxRelativeError(renormalized, plain) > 0.1, $"renormalizing changed nothing (seed {seed})");
    }

    [Theory]
    [InlineData(2, true, 0.0)]
    [InlineData(2, false, 0.0)]
    [InlineData(2, true, 0.3)]    // the load-balancing loss's gradient into the router
    [InlineData(1, false, 0.3)]
    public void BackwardMatchesCentralDifferencesOfTheReference(int k, bool normalize, double coefficient)
    {
        const int seed = 4301;
        const double auxWeight = 0.7;
        var rng = new Random(seed);
        var (moe, arena) = Layer(k, normalize, coefficient, rng);
        var (x, dy, dx) = SparseMoeLayerRun.ForwardBackward(_cpu, moe, arena, rng, N, C, auxWeight);   // dx poisoned first: "=" semantics

        // J = Σ dy · y + auxWeight · aux: the objective whose gradient the layer's backward computes.
        var w = Read(moe);
        double J() => TestTensors.Dot(dy, Reference(x, w, k, normalize, coefficient, out double aux, out _)) + auxWeight * aux;
        // Central differences of a smooth function (the routing does not change within a step of 1e-5 at this seed's gaps)
        // are good to ~1e-9 relative in F64; 1e-6 fails for any missing term (the renormalization's, the softmax's, the aux's).
        NumericAssert.Close(GradientCheck.Numerical(J, x), TestTensors.ToDoubles(_cpu, dx), 1e-6, $"dx (seed {seed})");
        NumericAssert.Close(GradientCheck.Numerical(J, w.Router), TestTensors.ToDoubles(_cpu, moe.Router.Weight.Grad), 1e-6, $"router (seed {seed})");
        for (int e = 0; e < E; e++)
        {
            var expert = moe.Experts[e];
            NumericAssert.Close(GradientCheck.Numerical(J, w.Gate[e]), TestTensors.ToDoubles(_cpu, expert.Gate.Weight.Grad), 1e-6, $"expert {e} gate (seed {seed})");
            NumericAssert.Close(GradientCheck.Numerical(J, w.Up[e]), TestTensors.ToDoubles(_cpu, expert.Up.Weight.Grad), 1e-6, $"expert {e} up (seed {seed})");
            NumericAssert.Close(GradientCheck.Numerical(J, w.Proj[e]), TestTensors.ToDoubles(_cpu, expert.Projection.Weight.Grad), 1e-6, $"expert {e} proj (seed {seed})");
        }
        if (coefficient > 0)
        {
            // The aux term matters: without it the router's gradient is another one.
            double Jce() => TestTensors.Dot(dy, Reference(x, w, k, normalize, coefficient, out _, out _));
            Assert.True(NumericAssert.MaxRelativeError(GradientCheck.Numerical(Jce, w.Router), TestTensors.ToDoubles(_cpu, moe.Router.Weight.Grad)) > 1e-4,
                $"the load-balancing loss left the router's gradient unchanged (seed {seed})");
        }
    }

    [Fact]
    public void AnExpertNoTokenChoseGetsNoGradient()
    {
        const int seed = 4401;
        var rng = new Random(seed);
        var (moe, arena) = Layer(1, false, 0, rng);
        const int tokens = 3;                                         // one expert each: at least one of 4 is left out
        var x = TestTensors.Normal(rng, tokens * C);
        var ctx = PassContext.Training(new ActivationStore(_cpu), 0);
        moe.Forward(ctx, TestTensors.FromDoubles(_cpu, x, DType.F64, tokens, C));
        arena.ZeroGrad();
        var dx = _cpu.Allocate(new Shape(tokens, C), DType.F64);
        moe.Backward(ctx, TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, tokens * C), DType.F64, tokens, C), dx);
        Reference(x, Read(moe), 1, false, 0, out _, out var counts);
        Assert.Contains(0, counts);
        for (int e = 0; e < E; e++)
        {
            var grads = new[] { moe.Experts[e].Gate, moe.Experts[e].Up, moe.Experts[e].Projection }.SelectMany(l => TestTensors.ToDoubles(_cpu, l.Weight.Grad)).ToArray();
            if (counts[e] == 0) Assert.All(grads, g => Assert.Equal(0.0, g));
            else Assert.Contains(grads, g => g != 0);
        }
    }

    [Fact]
    public void TiesGoToTheLowerExpertIndex()
    {
        // Equal probabilities: the lower index first (torch.topk promises no order among equal values; this is Tessera's rule).
        var routing = ExpertRouting.Route([1, 1, 1, 1, 0, 2, 2, 1, 3, 0, 3, 3], tokens: 3, experts: 4, k: 2, normalize: true);
        Assert.Equal([0, 1, 1, 2, 0, 2], routing.Selected);
        Assert.Equal([0.5, 0.5, 0.5, 0.5, 0.5, 0.5], routing.Weights);
        Assert.Equal([0, 2], routing.TokensOf(0).ToArray());
        Assert.Equal([1, 2], routing.TokensOf(2).ToArray());
        Assert.Empty(routing.TokensOf(3).ToArray());

        // A router of zeros: every token ties over all experts and goes to experts 0 and 1, weights 1/E each (not renormalized).
        var rng = new Random(4501);
        var (moe, _) = Layer(2, false, 0, rng);
        _cpu.Fill(moe.Router.Weight.Value, 0);
        var x = TestTensors.Normal(rng, N * C);
        var y = TestTensors.ToDoubles(_cpu, moe.Forward(PassContext.Training(new ActivationStore(_cpu), 0), TestTensors.FromDoubles(_cpu, x, DType.F64, N, C)));
        NumericAssert.Close(Reference(x, Read(moe), 2, false, 0, out _, out var counts), y, 1e-12, "output with tied probabilities");
        Assert.Equal([N, N, 0, 0], counts);
    }

    [Fact]
    public void MoreExpertsPerTokenThanExpertsAreRefused()
    {
        var e = Assert.Throws<ArgumentException>(() => new SparseMoeFeedForward(LayerFactory.OneDevice(), "moe", C, F, E, 5, true));
        Assert.Contains("experts per token (5) must be in [1, experts = 4]", e.Message);
        var config = ModelPresets.Get("mixtral-debug");
        var c = Assert.Throws<ArgumentException>(() => (config with { ExpertsPerToken = 5 }).Validate());
        Assert.Contains("ExpertsPerToken (5) must be in [1, Experts = 4]", c.Message);
        var dense = Assert.Throws<ArgumentException>(() => (ModelPresets.Get("llama-debug") with { ExpertsPerToken = 2 }).Validate());
        Assert.Contains("set Experts", dense.Message);
        var gpt2 = Assert.Throws<ArgumentException>(() => (ModelPresets.Get("gpt2-debug") with { Experts = 4, ExpertsPerToken = 2 }).Validate());
        Assert.Contains("GPT-2 has a dense MLP", gpt2.Message);
    }

    [Fact]
    public void TensorParallelismSplitsTheExpertsOnlyWhereTpDividesTheirWidth()
    {
        Tessera.Models.Transformer.CheckTensorParallel(ModelPresets.Get("qwen3-moe-debug"), 2);   // 48 / 2 units of each expert a rank
        var e = Assert.Throws<ArgumentException>(() => Tessera.Models.Transformer.CheckTensorParallel(ModelPresets.Get("qwen3-moe-debug") with { ExpertHidden = 50 }, 4));
        Assert.Contains("tp (4) must divide the experts' width (ExpertHidden = 50)", e.Message);
    }
}
