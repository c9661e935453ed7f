namespace Tessera.Tensors;

/// <summary>The checks every backend applies to the arguments of <see cref="IBackend.GatherColumns"/>.</summary>
public static class GatherColumnsArguments
{
    /// <summary>
    /// Throws unless x is (M, K) with unit column stride in F32, F64, BF16 or F16, indices a contiguous (J) I32 tensor, and
    /// output a contiguous (M, J) tensor of x's dtype. The indices' values are the backend's to check (or not: see the op).
    /// </summary>
    public static void Validate(string backend, Tensor x, Tensor indices, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(indices);
        ArgumentNullException.ThrowIfNull(output);
        string where = $"{backend}.{nameof(IBackend.GatherColumns)}";
        if (x.Rank != 2 || x.Stride(1) != 1 || x.DType is not (DType.F32 or DType.F64 or DType.BF16 or DType.F16))
            throw new ArgumentException($"{where}: x must be an (M, K) F32, F64, BF16 or F16 tensor with unit column stride, got {x.DType} {x.Shape}", nameof(x));
        if (indices.DType != DType.I32 || indices.Rank != 1 || !indices.IsContiguous)
            throw new ArgumentException($"{where}: indices must be a contiguous (J) I32 tensor, got {indices.DType} {indices.Shape}", nameof(indices));
        if (output.Shape != new Shape(x.Size(0), indices.Size(0)) || output.DType != x.DType || !output.IsContiguous)
            throw new ArgumentException($"{where}: output {output.DType} {output.Shape} must be a contiguous ({x.Size(0)}, {indices.Size(0)}) {x.DType} tensor", nameof(output));
    }
}
