namespace Tessera.Tensors;

/// <summary>
/// <see cref="IBackend.DownSwiGluBackward"/> as its two ops on any backend: the down product's input gradient into
/// dActivated, then <see cref="IBackend.SwiGluBackward"/> on gateUp's halves into dGateUp's. The CPU backend's form, and the
/// CUDA backend's where it does not fuse.
/// </summary>
public static class DownSwiGluBackwardComposition
{
    /// <summary>dActivated = dOutput downWeight on <paramref name="backend"/>, then [dg | du] = SwiGLU's gradient at gateUp's
    /// halves [g | u] from dActivated.</summary>
    /// <exception cref="ArgumentException">gateUp or dGateUp is not (N, 2F) for dActivated (N, F).</exception>
    public static void Apply(IBackend backend, Tensor dOutput, Tensor downWeight, Tensor gateUp, Tensor dGateUp, Tensor dActivated)
    {
        ArgumentNullException.ThrowIfNull(backend); ArgumentNullException.ThrowIfNull(dOutput); ArgumentNullException.ThrowIfNull(downWeight);
        ArgumentNullException.ThrowIfNull(gateUp); ArgumentNullException.ThrowIfNull(dGateUp); ArgumentNullException.ThrowIfNull(dActivated);
        CheckShapes(gateUp, dGateUp, dActivated);
        int f = dActivated.Size(1);
        backend.MatMul(dOutput, downWeight, dActivated);
        backend.SwiGluBackward(gateUp.Slice(1, 0, f), gateUp.Slice(1, f, f), dActivated, dGateUp.Slice(1, 0, f), dGateUp.Slice(1, f, f));
    }

    /// <summary>Throws unless gateUp and dGateUp are (N, 2F) for dActivated (N, F).</summary>
    public static void CheckShapes(Tensor gateUp, Tensor dGateUp, Tensor dActivated)
    {
        ArgumentNullException.ThrowIfNull(gateUp); ArgumentNullException.ThrowIfNull(dGateUp); ArgumentNullException.ThrowIfNull(dActivated);
        if (gateUp.Rank != 2 || dGateUp.Rank != 2 || dActivated.Rank != 2 || gateUp.Shape != dGateUp.Shape
            || gateUp.Size(1) != 2 * dActivated.Size(1) || gateUp.Size(0) != dActivated.Size(0))
            throw new ArgumentException($"DownSwiGluBackward: gateUp {gateUp.Shape} and dGateUp {dGateUp.Shape} must be (N, 2F) for dActivated {dActivated.Shape} (N, F)");
    }
}
