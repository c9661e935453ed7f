using Tessera.Tensors;

namespace Tessera.Tests.Support;

/// <summary>
/// The device-routed mixture-of-experts ops in the order a layer runs them (<see cref="IBackend.MoeRoute"/>,
/// <see cref="IBackend.MoeAlign"/>, <see cref="IBackend.MoeExpertSwiGlu"/>, <see cref="IBackend.MoeExpertDown"/>,
/// <see cref="IBackend.MoeCombine"/>), with the buffers they need, for the tests that hold one backend's ops to another's.
/// </summary>
internal static class MoeDeviceOps
{
    /// <summary>
    /// Routes the rows <paramref name="x"/> (N, C) by <paramref name="logits"/> (N, E) to k = <paramref name="k"/> of
    /// <paramref name="experts"/> and adds their weighted outputs (and, when given, the gated shared expert's) into
    /// <paramref name="output"/> (N, C, the residual on entry); the routing weights in <paramref name="weightsDType"/>.
    /// Returns the expert ids (N, k) and the weights (N, k).
    /// </summary>
    public static (Tensor Ids, Tensor Weights) Run(IBackend backend, MoeExpertWeights experts, Tensor logits, Tensor x, Tensor output,
        int k, bool normalize, DType weightsDType, Tensor? shared = null, Tensor? sharedGateLogits = null)
    {
        int n = x.Size(0), e = experts.Experts;
        var ids = backend.Allocate(new Shape(n, k), DType.I32);
        var weights = backend.Allocate(new Shape(n, k), weightsDType);
        var offsets = backend.Allocate(new Shape(e + 1), DType.I32);
        var slots = backend.Allocate(new Shape(n * k), DType.I32);
        var hidden = backend.Allocate(new Shape(n * k, experts.Hidden), x.DType);
        var y = backend.Allocate(new Shape(n * k, experts.Channels), x.DType);
        backend.MoeRoute(logits, ids, weights, normalize);
        backend.MoeAlign(ids, offsets, slots);
        backend.MoeExpertSwiGlu(x, experts, offsets, slots, hidden);
        backend.MoeExpertDown(hidden, experts, offsets, slots, y);
        backend.MoeCombine(y, weights, output, shared, sharedGateLogits);
        return (ids, weights);
    }
}
