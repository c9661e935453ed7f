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
/// <see cref="SparseMoeFeedForward"/>'s shared expert (Qwen2-MoE) in F64 on the CPU against the plain-loop
/// <see cref="SparseMoeReference"/> (per token: the routed experts as in <see cref="MixtureOfExpertsLayerTests"/>, plus sigmoid(x · w_g) times the shared
/// SwiGLU of every token), its backward against central differences of that reference, and the refusals.
/// </summary>
public sealed class SharedExpertTests
{
    private const int N = 10, C = 8, F = 6, Fs = 5, E = 4;
    private readonly CpuBackend _cpu = new(1);

    private SparseMoeReference.Weights Read(SparseMoeFeedForward moe) => SparseMoeReference.Read(_cpu, moe);

    /// <summary>y (N, C) of x (N, C) by <see cref="SparseMoeReference"/>: the routed experts' weighted sum plus, when
    /// <paramref name="shared"/>, the gated shared expert; <paramref name="aux"/> the load-balancing loss.</summary>
    private static double[] Reference(double[] x, SparseMoeReference.Weights w, int k, bool normalize, double coefficient, bool shared, out double aux) =>
        SparseMoeReference.Forward(x, w, k, normalize, coefficient, shared, out aux, out _);

    private (SparseMoeFeedForward Moe, ParameterArena Arena) Layer(int k, bool normalize, double coefficient, Random rng)
    {
        var parameters = new ParameterLayoutBuilder();
        var moe = new SparseMoeFeedForward(new LayerFactory(parameters), "moe", C, F, E, k, normalize, coefficient, sharedExpertHidden: Fs);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        return (moe, arena);
    }

    [Theory]
    [InlineData(2, false)]    // Qwen2-MoE's releases: norm_topk_prob false
    [InlineData(2, true)]
    [InlineData(1, false)]
    public void ForwardMatchesAPlainLoopReference(int k, bool normalize)
    {
        const int seed = 6101;
        var rng = new Random(seed);
        var (moe, _) = Layer(k, normalize, 0.01, rng);
        var x = TestTensors.Normal(rng, N * C);
        var residual = TestTensors.Normal(rng, N * C);
        var ctx = PassContext.Training(new ActivationStore(_cpu), 0);
        var y = TestTensors.ToDoubles(_cpu, moe.Forward(ctx, TestTensors.FromDoubles(_cpu, x, DType.F64, N, C), TestTensors.FromDoubles(_cpu, residual, DType.F64, N, C)));
        var expected = Reference(x, Read(moe), k, normalize, 0.01, shared: true, out double aux);
        for (int i = 0; i < expected.Length; i++) expected[i] += residual[i];
        // The same sums in another order (gathered rows, batched scales, a scatter-add, the sigmoid on the host): ~1e-16 per
        // operation; 1e-12 relative still fails for a missing or ungated shared expert, which moves the output by O(0.1).
        NumericAssert.Close(expected, y, 1e-12, $"output (k {k}, normalize {normalize}, seed {seed})");
        Assert.True(Math.Abs(moe.LastAuxiliaryLoss - aux) <= 1e-12 * Math.Abs(aux), $"auxiliary loss {moe.LastAuxiliaryLoss} vs {aux} (seed {seed})");
        // The shared expert is not dead code: without it the reference is another function.
        var routedOnly = Reference(x, Read(moe), k, normalize, 0.01, shared: false, out _);
        for (int i = 0; i < routedOnly.Length; i++) routedOnly[i] += residual[i];
        Assert.True(NumericAssert.MaxRelativeError(routedOnly, y) > 1e-2, $"the shared expert changed nothing (seed {seed})");
    }

    [Fact]
    public void InferenceForwardAccumulateAddsWhatTheTrainingForwardReturns()
    {
        const int seed = 6201;
        var rng = new Random(seed);
        var (moe, _) = Layer(2, false, 0, rng);
        var x = TestTensors.Normal(rng, N * C);
        var residual = TestTensors.Normal(rng, N * C);
        var normLayers = LayerFactory.OneDevice();
        var norm = normLayers.RmsNorm("norm", C, 1e-6);
        var normArena = new ParameterArena(normLayers.Parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, normArena, rng);
        var trainingCtx = PassContext.Training(new ActivationStore(_cpu), 0);
        var normalized = norm.Forward(trainingCtx, TestTensors.FromDoubles(_cpu, x, DType.F64, N, C));
        var expected = TestTensors.ToDoubles(_cpu, moe.Forward(trainingCtx, normalized, TestTensors.FromDoubles(_cpu, residual, DType.F64, N, C)));
        var accumulated = TestTensors.FromDoubles(_cpu, residual, DType.F64, N, C);
        moe.DeviceRouting = false;                                   // the host-routed inference path
        moe.ForwardAccumulate(PassContext.Transient(new ActivationStore(_cpu)), TestTensors.FromDoubles(_cpu, x, DType.F64, N, C), norm, accumulated);
        // The same operations in the same order on the same rows: bit for bit.
        Assert.Equal(expected, TestTensors.ToDoubles(_cpu, accumulated));
        // The device-routed path (the MoE ops, the shared expert through MoeCombine): the same F64 values summed in another
        // order (slots, not experts; the sigmoid-gated shared term in the combine), within 1e-12 of the largest.
        moe.DeviceRouting = true;
        var routed = TestTensors.FromDoubles(_cpu, residual, DType.F64, N, C);
        moe.ForwardAccumulate(PassContext.Transient(new ActivationStore(_cpu)), TestTensors.FromDoubles(_cpu, x, DType.F64, N, C), norm, routed);
        Assert.Equal(1, moe.DeviceRoutedForwards);
        NumericAssert.Close(expected, TestTensors.ToDoubles(_cpu, routed), 1e-12, $"device-routed output (seed {seed})");
        GC.KeepAlive(normArena);
    }

    [Theory]
    [InlineData(2, false, 0.0)]
    [InlineData(2, true, 0.3)]    // with the load-balancing loss
    public void BackwardMatchesCentralDifferencesOfTheReference(int k, bool normalize, double coefficient)
    {
        const int seed = 6301;
        const double auxWeight = 0.7;
        var rng = new Random(seed);
        var (moe, arena) = Layer(k, normalize, coefficient, rng);
        var (x, dy, dx) = SparseMoeLayerRun.ForwardBackward(_cpu, moe, arena, rng, N, C, auxWeight);   // dx poisoned first: "=" semantics

        // J = Σ dy · y + auxWeight · aux: the objective whose gradient the layer's backward computes.
        var w = Read(moe);
        double J() => TestTensors.Dot(dy, Reference(x, w, k, normalize, coefficient, shared: true, out double aux)) + auxWeight * aux;
        // Central differences of a smooth function (the routing does not change within a step of 1e-5 at this seed) are good
        // to ~1e-9 relative in F64; 1e-6 fails for a missing term (the sigmoid's derivative g (1 - g), the gate's dx).
        void Check(double[] values, Tensor grad, string what) =>
            NumericAssert.Close(GradientCheck.Numerical(J, values), TestTensors.ToDoubles(_cpu, grad), 1e-6, $"{what} (seed {seed})");
        Check(x, dx, "dx");
        Check(w.Router, moe.Router.Weight.Grad, "router");
        Check(w.SharedGate!, moe.SharedExpert!.Gate.Weight.Grad, "shared expert gate");
        Check(w.SharedUp!, moe.SharedExpert.Up.Weight.Grad, "shared expert up");
        Check(w.SharedProj!, moe.SharedExpert.Projection.Weight.Grad, "shared expert proj");
        Check(w.SharedExpertGate!, moe.SharedExpertGate!.Weight.Grad, "shared_expert_gate");
        for (int e = 0; e < E; e++)
        {
            Check(w.Gate[e], moe.Experts[e].Gate.Weight.Grad, $"expert {e} gate");
            Check(w.Proj[e], moe.Experts[e].Projection.Weight.Grad, $"expert {e} proj");
        }
    }

    [Fact]
    public void TheSharedExpertIsReplicatedNotAnExpertParameter()
    {
        var parameters = new ParameterLayoutBuilder();
        var layers = new LayerFactory(parameters);
        var moe = new SparseMoeFeedForward(layers, "moe", C, F, E, 2, false, sharedExpertHidden: Fs);
        var names = parameters.Build().Parameters.Select(p => p.Name).ToArray();
        // Declared after the routed experts, in Hugging Face's order, and with names no expert-parallel rule takes for an expert's.
        Assert.Equal(["moe.shared_expert.gate.weight", "moe.shared_expert.up.weight", "moe.shared_expert.proj.weight", "moe.shared_expert_gate.weight"], names[^4..]);
        Assert.Equal(1, moe.SharedExpertGate!.OutFeatures);
        Assert.Null(moe.SharedExpertGate.Bias);
        Assert.Empty(layers.ExpertParameters);
    }

    [Fact]
    public void UngatedSharedExpertsAndInconsistentSettingsAreRefused()
    {
        var e = Assert.Throws<NotSupportedException>(() => new SparseMoeFeedForward(LayerFactory.OneDevice(), "moe", C, F, E, 2, false, sharedExpertHidden: Fs, sharedExpertGated: false));
        Assert.Contains("an ungated shared expert (DeepSeek-MoE's) is not built", e.Message);
        var config = ModelPresets.Get("qwen2-moe-debug");
        Assert.Equal(40, config.SharedExpertHidden);
        var ungated = Assert.Throws<ArgumentException>(() => (config with { SharedExpertGated = false }).Validate());
        Assert.Contains("SharedExpertHidden (40) needs SharedExpertGated = true", ungated.Message);
        var gateOnly = Assert.Throws<ArgumentException>(() => (config with { SharedExpertHidden = 0 }).Validate());
        Assert.Contains("SharedExpertGated gates a shared expert", gateOnly.Message);
        var dense = Assert.Throws<ArgumentException>(() => (ModelPresets.Get("qwen2-debug") with { SharedExpertHidden = 40, SharedExpertGated = true }).Validate());
        Assert.Contains("set Experts", dense.Message);
        var negative = Assert.Throws<ArgumentException>(() => (config with { SharedExpertHidden = -1 }).Validate());
        Assert.Contains("SharedExpertHidden (-1) must be 0", negative.Message);
    }
}
