using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;

namespace Tessera.Tests.Nn.Layers;

/// <summary>
/// The training pass the mixture-of-experts layer tests check against central differences (<see cref="MixtureOfExpertsLayerTests"/>,
/// <see cref="SharedExpertTests"/>): x (N, C) and dy (N, C) drawn from <c>rng</c>, the forward, the gradients zeroed, then the
/// backward into a poisoned dx (so the "=" semantics are checked: every element must be written).
/// </summary>
internal static class SparseMoeLayerRun
{
    /// <summary>Runs the pass on <paramref name="moe"/> (weights in <paramref name="arena"/>, F64) with the load-balancing loss
    /// weighted by <paramref name="auxWeight"/>; returns x, dy and the dx the backward wrote.</summary>
    public static (double[] X, double[] Dy, Tensor Dx) ForwardBackward(CpuBackend cpu, SparseMoeFeedForward moe, ParameterArena arena, Random rng,
        int n, int c, double auxWeight)
    {
        moe.AuxiliaryLossWeight = auxWeight;
        var x = TestTensors.Normal(rng, n * c);
        var dy = TestTensors.Normal(rng, n * c);
        var ctx = PassContext.Training(new ActivationStore(cpu), 0);
        moe.Forward(ctx, TestTensors.FromDoubles(cpu, x, DType.F64, n, c));
        arena.ZeroGrad();
        var dx = TestTensors.FromDoubles(cpu, new double[n * c], DType.F64, n, c);
        TestTensors.Poison(cpu, dx);
        moe.Backward(ctx, TestTensors.FromDoubles(cpu, dy, DType.F64, n, c), dx);
        return (x, dy, dx);
    }
}
