using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// One of Megatron's conjugate communication ops at the edge of a tensor-parallel region: a forward and its backward,
/// side by side. The tensors are rows (N, C) of the residual stream or of a layer's output. A sub-layer applies its input
/// region before its first products; a row-parallel layer applies its output region after its product.
/// </summary>
public interface ITensorParallelRegion
{
    /// <summary>y from x: x itself (in place) or a pooled buffer of <paramref name="ctx"/>.</summary>
    Tensor Forward(in PassContext ctx, Tensor x);

    /// <summary>
    /// Where the gradient of <see cref="Forward"/>'s output is to be written, when the gradient of its input goes to
    /// <paramref name="dx"/>: dx itself when the two have one shape (the backward then works in place), else a pooled scratch.
    /// </summary>
    Tensor GradientBuffer(in PassContext ctx, Tensor dx);

    /// <summary>dx from dy (the buffer <see cref="GradientBuffer"/> returned, filled by the layer after the region).</summary>
    void Backward(in PassContext ctx, Tensor dy, Tensor dx);
}
