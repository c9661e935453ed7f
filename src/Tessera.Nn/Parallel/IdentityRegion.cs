using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>No communication: the region of a layer on one device (or replicated). Forward and backward pass the tensor through.</summary>
public sealed class IdentityRegion : ITensorParallelRegion
{
    /// <summary>The one instance.</summary>
    public static IdentityRegion Instance { get; } = new();

    private IdentityRegion() { }

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x) => x;

    /// <inheritdoc/>
    public Tensor GradientBuffer(in PassContext ctx, Tensor dx) => dx;

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx)
    {
        if (!ReferenceEquals(dy, dx) && !SameView(dy, dx)) dy.Backend.Copy(dy, dx);
    }

    internal static bool SameView(Tensor a, Tensor b) =>
        ReferenceEquals(a.Storage, b.Storage) && a.Offset == b.Offset && a.Shape == b.Shape;
}
