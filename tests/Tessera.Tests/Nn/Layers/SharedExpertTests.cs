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
/// <see cref="SparseMoeFeedForward"/>'s shared expert (Qwen2-MoE) in F64 on the CPU against a reference written here with plain
/// loops (per token: the routed experts as in <see cref="MixtureOfExpertsLayerTests"/>, plus sigmoid(x · w_g) times the shared
/// SwiGLU of every token), its backward against central differences of that reference, and the refusals.
/// </summary>
public sealed class SharedExpertTests
{
    private const int N = 10, C = 8, F = 6, Fs = 5, E = 4;
    private readonly CpuBackend _cpu = new(1);

    /// <summary>The layer's weights on the host: router (E, C); per expert gate, up (F, C), proj (C, F); the shared expert's
    /// gate, up (Fs, C), proj (C, Fs); its gate (1, C).</summary>
    private sealed record Weights(double[] Router, double[][] Gate, double[][] Up, double[][] Proj,
        double[] SharedGate, double[] SharedUp, double[] SharedProj, double[] SharedExpertGate);

    private Weights Read(SparseMoeFeedForward moe) => new(
        TestTensors.ToDoubles(_cpu, moe.Router.Weight.Value),
        moe.Experts.Select(x => TestTensors.ToDoubles(_cpu, x.Gate.Weight.Value)).ToArray(),
        moe.Experts.Select(x => TestTensors.ToDoubles(_cpu, x.Up.Weight.Value)).ToArray(),
        moe.Experts.Select(x => TestTensors.ToDoubles(_cpu, x.Projection.Weight.Value)).ToArray(),
        TestTensors.ToDoubles(_cpu, moe.SharedExpert!.Gate.Weight.Value),
        TestTensors.ToDoubles(_cpu, moe.SharedExpert.Up.Weight.Value),
        TestTensors.ToDoubles(_cpu, moe.SharedExpert.Projection.Weight.Value),
        TestTensors.ToDoubles(_cpu, moe.SharedExpertGate!.Weight.Value));

    /// <summary>proj(SiLU(gate x) * up x) of one row (C) through a SwiGLU of width <paramref name="f"/>.</summary>
    private static double[] SwiGlu(double[] x, int t, double[] gate, double[] up, double[] proj, int f)
    {
        var a = new double[f];
        for (int i = 0; i < f; i++)
        {
            double g = 0, u = 0;
            for (int c = 0; c < C; c++) { g += gate[i * C + c] * x[t * C + c]; u += up[i * C + c] * x[t * C + c]; }
            a[i] = g / (1 + Math.Exp(-g)) * u;
        }
        var y = new double[C];
        for (int c = 0; c < C; c++)
            for (int i = 0; i < f; i++) y[c] += proj[c * f + i] * a[i];
        return y;
    }

    /// <summary>y (N, C) of x (N, C): the routed experts' weighted sum plus, when <paramref name="shared"/>, the gated shared expert;
    /// <paramref name="aux"/> the load-balancing loss.</summary>
    private static double[] Reference(double[] x, Weights w, int k, bool normalize, double coefficient, bool shared, out double aux)
    {
        int n = x.Length / C;
        var y = new double[n * C];
        var routed = new int[E];
        var meanP = new double[E];
        for (int t = 0; t < n; t++)
        {
            var z = new double[E];
            for (int e = 0; e < E; e++)
                for (int c = 0; c < C; c++) z[e] += w.Router[e * C + c] * x[t * C + c];
            double max = z.Max();
            var p = z.Select(v => Math.Exp(v - max)).ToArray();
            double sum = p.Sum();
            for (int e = 0; e < E; e++) { p[e] /= sum; meanP[e] += p[e] / n; }
            var chosen = Enumerable.Range(0, E).OrderByDescending(e => p[e]).ThenBy(e => e).Take(k).ToArray();
            double norm = normalize ? chosen.Sum(e => p[e]) : 1.0;
            foreach (int e in chosen)
            {
                routed[e]++;
                var o = SwiGlu(x, t, w.Gate[e], w.Up[e], w.Proj[e], F);
                for (int c = 0; c < C; c++) y[t * C + c] += p[e] / norm * o[c];
            }
            if (!shared) continue;
            double gz = 0;
            for (int c = 0; c < C; c++) gz += w.SharedExpertGate[c] * x[t * C + c];
            double g = 1 / (1 + Math.Exp(-gz));
            var s = SwiGlu(x, t, w.SharedGate, w.SharedUp, w.SharedProj, Fs);
            for (int c = 0; c < C; c++) y[t * C + c] += g * s[c];
        }
        aux = coefficient * E * Enumerable.Range(0, E).Sum(e => (double)routed[e] / n * meanP[e]);
        return y;
    }

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
        moe.ForwardAccumulate(PassContext.Transient(new ActivationStore(_cpu)), TestTensors.FromDoubles(_cpu, x, DType.F64, N, C), norm, accumulated);
        // The same operations in the same order on the same rows: bit for bit.
        Assert.Equal(expected, TestTensors.ToDoubles(_cpu, accumulated));
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
        moe.AuxiliaryLossWeight = auxWeight;
        var x = TestTensors.Normal(rng, N * C);
        var dy = TestTensors.Normal(rng, N * C);
        var ctx = PassContext.Training(new ActivationStore(_cpu), 0);
        moe.Forward(ctx, TestTensors.FromDoubles(_cpu, x, DType.F64, N, C));
        arena.ZeroGrad();
        var dx = TestTensors.FromDoubles(_cpu, new double[N * C], DType.F64, N, C);
        TestTensors.Poison(_cpu, dx);                                 // "=" semantics: every element written
        moe.Backward(ctx, TestTensors.FromDoubles(_cpu, dy, DType.F64, N, C), dx);

        // J = Σ dy · y + auxWeight · aux: the objective whose gradient the layer's backward computes.
        var w = Read(moe);
        double J() => TestTensors.Dot(dy, Reference(x, w, k, normalize, coefficient, shared: true, out double aux)) + auxWeight * aux;
        // Central differences of a smooth function (the routing does not change within a step of 1e-5 at this seed) are good
        // to ~1e-9 relative in F64; 1e-6 fails for a missing term (the sigmoid's derivative g (1 - g), the gate's dx).
        void Check(double[] values, Tensor grad, string what) =>
            NumericAssert.Close(GradientCheck.Numerical(J, values), TestTensors.ToDoubles(_cpu, grad), 1e-6, $"{what} (seed {seed})");
        Check(x, dx, "dx");
        Check(w.Router, moe.Router.Weight.Grad, "router");
        Check(w.SharedGate, moe.SharedExpert!.Gate.Weight.Grad, "shared expert gate");
        Check(w.SharedUp, moe.SharedExpert.Up.Weight.Grad, "shared expert up");
        Check(w.SharedProj, moe.SharedExpert.Projection.Weight.Grad, "shared expert proj");
        Check(w.SharedExpertGate, moe.SharedExpertGate!.Weight.Grad, "shared_expert_gate");
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
