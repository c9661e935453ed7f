namespace Tessera.Tensors;

/// <summary>The checks every backend applies to the epilogue arguments of <see cref="IBackend.MatMul"/>.</summary>
public static class MatMulEpilogueArguments
{
    /// <summary>
    /// Throws when <paramref name="epilogue"/> does not fit the product: a (M,K)/(K,M), c (M,N), the auxiliary (M,N)
    /// and bias gradient (M for BiasGradient, N for GeluBackwardBiasGradient) present exactly when the epilogue uses them, beta = 0 for the GELU forms; an addend matching c,
    /// in storage of its own, only with beta = 0 and no epilogue.
    /// </summary>
    public static void Validate(string backend, Tensor a, Tensor c, bool transposeA, double beta, Tensor? bias,
        MatMulEpilogue epilogue, Tensor? auxiliary, Tensor? biasGradient, Tensor? addend = null)
    {
        ArgumentNullException.ThrowIfNull(a); ArgumentNullException.ThrowIfNull(c);
        string where = $"{backend}.MatMul({epilogue})";
        if (addend is not null)
        {
            if (epilogue != MatMulEpilogue.None || beta != 0)
                throw new ArgumentException($"{where}: an addend needs beta = 0 and no epilogue (it is the product's accumulator input), got beta {beta}", nameof(addend));
            if (addend.Shape != c.Shape || addend.DType != c.DType)
                throw new ArgumentException($"{where}: addend {addend.DType} {addend.Shape} must match c {c.DType} {c.Shape}", nameof(addend));
            if (ReferenceEquals(addend.Storage, c.Storage))
                throw new ArgumentException($"{where}: addend must not share c's storage (accumulate into c with beta = 1 instead)", nameof(addend));
        }
        bool gelu = epilogue is MatMulEpilogue.Gelu or MatMulEpilogue.GeluBackward or MatMulEpilogue.GeluBackwardBiasGradient;
        if (gelu != (auxiliary is not null))
            throw new ArgumentException(gelu
                ? $"{where}: the GELU epilogues need the pre-activation tensor 'auxiliary' ({c.Shape})"
                : $"{where}: 'auxiliary' is only used by the GELU epilogues; pass null", nameof(auxiliary));
        bool grad = epilogue == MatMulEpilogue.BiasGradient, geluGrad = epilogue == MatMulEpilogue.GeluBackwardBiasGradient;
        if ((grad || geluGrad) != (biasGradient is not null))
            throw new ArgumentException(grad || geluGrad
                ? $"{where}: the {epilogue} epilogue needs 'biasGradient' ({(grad ? c.Shape[^2] : c.Shape[^1])})"
                : $"{where}: 'biasGradient' is only used by the BiasGradient and GeluBackwardBiasGradient epilogues; pass null", nameof(biasGradient));
        if (epilogue == MatMulEpilogue.None) return;
        if (c.Rank != 2)
            throw new ArgumentException($"{where}: epilogues need a rank-2 product, got c {c.Shape}", nameof(c));
        if (gelu)
        {
            if (beta != 0) throw new ArgumentException($"{where}: beta must be 0 (the GELU epilogues overwrite c), got {beta}", nameof(beta));
            if (auxiliary!.Shape != c.Shape || auxiliary.DType != c.DType || !auxiliary.IsContiguous || !c.IsContiguous)
                throw new ArgumentException($"{where}: auxiliary {auxiliary.DType} {auxiliary.Shape} must be contiguous and match c {c.DType} {c.Shape} (contiguous)", nameof(auxiliary));
        }
        if ((epilogue is MatMulEpilogue.GeluBackward or MatMulEpilogue.GeluBackwardBiasGradient) && bias is not null)
            throw new ArgumentException($"{where}: no bias with {epilogue}", nameof(bias));
        if (geluGrad && (biasGradient!.NumElements != c.Shape[1] || !biasGradient.IsContiguous))
            throw new ArgumentException($"{where}: biasGradient {biasGradient.Shape} must be contiguous with {c.Shape[1]} elements (N, the columns of c)", nameof(biasGradient));
        if (grad)
        {
            if (bias is not null) throw new ArgumentException($"{where}: no bias with BiasGradient", nameof(bias));
            if (!transposeA)
                throw new ArgumentException($"{where}: the bias gradient is the column sums of a (K,M), so a must be transposed (transposeA)", nameof(transposeA));
            if (biasGradient!.NumElements != c.Shape[0] || !biasGradient.IsContiguous || !a.IsContiguous)
                throw new ArgumentException($"{where}: biasGradient {biasGradient.Shape} must be contiguous with {c.Shape[0]} elements (M), and a {a.Shape} contiguous", nameof(biasGradient));
        }
    }
}
