using Tessera.Tensors;

namespace Tessera.Cuda;

// Weight-only int8 products (QuantizedWeight): the weight dequantized into scratch, then the product as for any weight.
public sealed unsafe partial class CudaBackend
{
    /// <inheritdoc/>
    /// <remarks>The weight is dequantized into scratch of x's dtype (one weight at a time, from the caching allocator, so it
    /// is recorded into graphs like any scratch) and <see cref="MatMul"/> runs on it.</remarks>
    public void QuantizedMatMul(Tensor x, QuantizedWeight weight, Tensor y, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? addend = null)
    {
        ArgumentNullException.ThrowIfNull(weight);
        weight.ValidateProduct(nameof(CudaBackend), x, y, beta, bias, epilogue, auxiliary, addend);
        var w = ScratchTensor(weight.Shape, x.DType);
        Dequantize(weight, w);
        MatMul(x, w, y, transposeB: true, beta: beta, bias: bias, epilogue: epilogue, auxiliary: auxiliary, addend: addend);
        w.Storage.Dispose();
    }

    /// <inheritdoc/>
    public void Dequantize(QuantizedWeight weight, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(weight);
        ArgumentNullException.ThrowIfNull(output);
        if (output.Shape != weight.Shape || !output.IsContiguous)
            throw new ArgumentException($"CudaBackend.Dequantize: output {output.Shape} must be contiguous and of the weight's shape {weight.Shape}", nameof(output));
        ulong pv = Ptr(weight.Values), ps = Ptr(weight.Scales), po = Ptr(output);
        long n = weight.Values.NumElements;
        int k = weight.Columns;
        void** args = stackalloc void*[] { &pv, &ps, &po, &n, &k };
        Launch("quantized.cu", "dequantize_" + Suffix(output.DType, nameof(Dequantize)), GridFor(n), Threads, args);
    }
}
