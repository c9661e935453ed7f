using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Nn.Layers;

/// <summary>
/// The MLP's gate and up projections as one product ([g | u] = x [Wg; Wu]^T, SwiGLU on its halves in place) against the two
/// products of the same layer's <see cref="SwiGluMlp.Gate"/> and <see cref="SwiGluMlp.Up"/> (the unfused composition), in F64
/// on the same weights. Each output element is the same dot product of one row of x with one row of a weight; the input
/// gradient sums the gate's and the up's terms in one product instead of two, a reassociation of a 2F-term sum: 1e-13
/// relative covers it, and a swapped half or a missing term is O(1).
/// </summary>
public sealed class SwiGluMlpTests
{
    private const int N = 10, C = 16, F = 24;   // 16 x 24 = 384 elements: gate and up back to back in the arena
    private const double Tolerance = 1e-13;
    private readonly CpuBackend _cpu = new(2);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void OneGateUpProductGivesTheTwoProductsOutputAndGradients(bool accumulateDx)
    {
        var rng = new Random(31);
        var parameters = new ParameterLayoutBuilder();
        var mlp = new SwiGluMlp(new LayerFactory(parameters), "mlp", C, F, bias: false);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        Assert.True(mlp.FusesGateAndUp);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, N, C);
        var dy = TestTensors.RandomNormal(_cpu, rng, DType.F64, N, C);
        var dxStart = TestTensors.Normal(rng, N * C);

        // The unfused composition, on the layer's own Linear layers, in a store of its own.
        var reference = PassContext.Training(new ActivationStore(_cpu), 0);
        var g = mlp.Gate.Forward(reference, x);
        var u = mlp.Up.Forward(reference, x);
        var a = _cpu.Allocate(g.Shape, DType.F64);
        _cpu.SwiGluForward(g, u, a);
        var expectedY = _cpu.ToArray<double>(mlp.Projection.Forward(reference, a));
        arena.ZeroGrad();
        var da = _cpu.Allocate(g.Shape, DType.F64);
        mlp.Projection.Backward(reference, dy, da);
        var dg = _cpu.Allocate(g.Shape, DType.F64);
        var du = _cpu.Allocate(g.Shape, DType.F64);
        _cpu.SwiGluBackward(g, u, da, dg, du);
        var expectedDx = TestTensors.FromDoubles(_cpu, dxStart, DType.F64, N, C);
        mlp.Gate.Backward(reference, dg, expectedDx, accumulateDx);
        mlp.Up.Backward(reference, du, expectedDx, accumulateDx: true);
        var expectedGrads = _cpu.ToArray<double>(arena.Grads);

        arena.ZeroGrad();
        var ctx = PassContext.Training(new ActivationStore(_cpu), 0);
        var y = _cpu.ToArray<double>(mlp.Forward(ctx, x));
        var dx = TestTensors.FromDoubles(_cpu, dxStart, DType.F64, N, C);
        if (!accumulateDx) TestTensors.Poison(_cpu, dx);            // "=" semantics: every element written
        mlp.Backward(ctx, dy, dx, accumulateDx);

        NumericAssert.Close(expectedY, y, Tolerance, "output");
        NumericAssert.Close(_cpu.ToArray<double>(expectedDx), _cpu.ToArray<double>(dx), Tolerance, "dx");
        NumericAssert.Close(expectedGrads, _cpu.ToArray<double>(arena.Grads), Tolerance, "gate, up and projection weight gradients");
        Assert.Contains(_cpu.ToArray<double>(mlp.Up.Weight.Grad), v => Math.Abs(v) > 1e-3);
    }

    [Theory]
    [InlineData(12, 20, false)]     // 240 elements, padded to 256 in the arena: up does not start where gate ends
    [InlineData(16, 24, true)]
    public void GateAndUpAreOneProductExactlyWhenTheirWeightsAreAdjacentAndUnbiased(int channels, int hidden, bool adjacent)
    {
        var parameters = new ParameterLayoutBuilder();
        var plain = new SwiGluMlp(new LayerFactory(parameters), "a", channels, hidden, bias: false);
        var biased = new SwiGluMlp(new LayerFactory(parameters), "b", channels, hidden, bias: true);
        _ = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        Assert.Equal(adjacent, plain.FusesGateAndUp);
        Assert.False(biased.FusesGateAndUp);
    }
}
