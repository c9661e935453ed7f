namespace Tessera.Tensors;

/// <summary>
/// <see cref="IBackend.GateUpSwiGlu"/> as its two ops on any backend: the product into gateUp, then
/// <see cref="IBackend.SwiGluForward"/> on its halves. The CPU backend's form, and the CUDA backend's where it does not fuse.
/// </summary>
public static class GateUpSwiGluComposition
{
    /// <summary>gateUp = x gateUpWeight^T on <paramref name="backend"/>, then activated = SiLU(gateUp[:, :F]) * gateUp[:, F:].</summary>
    /// <exception cref="ArgumentException">gateUp is not (N, 2F) for activated (N, F).</exception>
    public static void Apply(IBackend backend, Tensor x, Tensor gateUpWeight, Tensor gateUp, Tensor activated)
    {
        ArgumentNullException.ThrowIfNull(backend); ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(gateUp); ArgumentNullException.ThrowIfNull(activated);
        if (gateUp.Rank != 2 || activated.Rank != 2 || gateUp.Size(1) != 2 * activated.Size(1) || gateUp.Size(0) != activated.Size(0))
            throw new ArgumentException($"GateUpSwiGlu: gateUp {gateUp.Shape} must be (N, 2F) for activated {activated.Shape} (N, F)");
        int f = activated.Size(1);
        backend.MatMul(x, gateUpWeight, gateUp, transposeB: true);
        backend.SwiGluForward(gateUp.Slice(1, 0, f), gateUp.Slice(1, f, f), activated);
    }
}
