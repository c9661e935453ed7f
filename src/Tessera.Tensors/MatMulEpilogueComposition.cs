namespace Tessera.Tensors;

/// <summary>
/// The epilogues of <see cref="IBackend.MatMul"/> composed from a plain product and the backend's own
/// <see cref="IBackend.GeluForward"/>, <see cref="IBackend.GeluBackward"/> and <see cref="IBackend.SumRows"/>:
/// the CPU backend's implementation, and a GPU backend's fallback where its fused product cannot.
/// </summary>
public static class MatMulEpilogueComposition
{
    /// <summary>A product without epilogue: c = alpha * op(a) op(b) + beta * c (+ bias).</summary>
    public delegate void PlainProduct(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias);

    /// <summary>Runs <paramref name="epilogue"/> (arguments already validated) as <paramref name="plain"/> followed by elementwise ops of <paramref name="backend"/>.</summary>
    public static void Apply(IBackend backend, Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta,
        Tensor? bias, MatMulEpilogue epilogue, Tensor? auxiliary, Tensor? biasGradient, PlainProduct plain)
    {
        ArgumentNullException.ThrowIfNull(backend); ArgumentNullException.ThrowIfNull(plain);
        switch (epilogue)
        {
            case MatMulEpilogue.None:
                plain(a, b, c, transposeA, transposeB, alpha, beta, bias);
                break;
            case MatMulEpilogue.Gelu:
                plain(a, b, auxiliary!, transposeA, transposeB, alpha, 0.0, bias);
                backend.GeluForward(auxiliary!, c);
                break;
            case MatMulEpilogue.GeluBackward:
            case MatMulEpilogue.GeluBackwardBiasGradient:
            {
                var product = backend.Allocate(c.Shape, c.DType); // (M, N): the gradient reaching the GELU output
                try
                {
                    plain(a, b, product, transposeA, transposeB, alpha, 0.0, null);
                    backend.GeluBackward(auxiliary!, product, c);
                }
                finally { product.Storage.Dispose(); }
                if (epilogue == MatMulEpilogue.GeluBackwardBiasGradient) backend.SumRows(c, biasGradient!);
                break;
            }
            case MatMulEpilogue.BiasGradient:
                plain(a, b, c, transposeA, transposeB, alpha, beta, null);
                backend.SumRows(a, biasGradient!);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(epilogue), epilogue, $"MatMul: unknown epilogue {epilogue}");
        }
    }
}
