namespace Tessera.Tensors;

/// <summary>
/// What <see cref="IBackend.MatMul"/> does with the product before (or besides) storing it: the fusions that
/// cuBLASLt's epilogues provide and the CPU backend composes from <see cref="IBackend.GeluForward"/>,
/// <see cref="IBackend.GeluBackward"/> and <see cref="IBackend.SumRows"/>.
/// </summary>
public enum MatMulEpilogue
{
    /// <summary>c = alpha * op(a) op(b) + beta * c (+ bias).</summary>
    None,

    /// <summary>
    /// auxiliary (M,N) = alpha * op(a) op(b) + bias (the pre-activation, kept for the backward pass);
    /// c (M,N) = GELU(auxiliary), tanh approximation. Requires beta = 0 and a rank-2 product.
    /// </summary>
    Gelu,

    /// <summary>
    /// c (M,N) = (alpha * op(a) op(b)) * GELU'(auxiliary), auxiliary (M,N) the pre-activation saved by
    /// <see cref="Gelu"/>. Requires beta = 0, no bias and a rank-2 product.
    /// </summary>
    GeluBackward,

    /// <summary>
    /// c = alpha * op(a) op(b) + beta * c as with <see cref="None"/>, and biasGradient (M) += the column sums of a (K,M),
    /// which must be transposed (transposeA): in the weight gradient dW (out,in) += dY^T X, a is dY (N,out) and
    /// biasGradient receives the bias gradient, the column sums of dY. Requires a rank-2 product and no bias.
    /// </summary>
    BiasGradient,

    /// <summary>
    /// c (M,N) = (alpha * op(a) op(b)) * GELU'(auxiliary) as with <see cref="GeluBackward"/>, and biasGradient (N) += the
    /// column sums of c: the gradient of the pre-activation and of the bias that entered it (cuBLASLt's DGELU_BGRAD). In
    /// GPT-2's MLP the projection's input gradient is the up product's pre-activation gradient, so this gives the up
    /// product's bias gradient in the same pass, and its weight-gradient product needs no epilogue. Requires beta = 0, no
    /// bias and a rank-2 product.
    /// </summary>
    GeluBackwardBiasGradient,
}
