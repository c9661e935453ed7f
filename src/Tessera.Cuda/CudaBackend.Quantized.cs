using Tessera.Tensors;

namespace Tessera.Cuda;

// Weight-only int8 products (QuantizedWeight): at most 4 rows of x (decoding), the matrix-vector kernel's int8 form, which
// reads each weight once at one byte; otherwise the weight dequantized into scratch, then the product as for any weight.
public sealed unsafe partial class CudaBackend
{
    /// <summary>Int8 weights a 16-byte load of the matrix-vector kernel holds: K must be a multiple of it.</summary>
    private const int QuantizedGemvChunk = 16;

    /// <inheritdoc/>
    /// <remarks>For 1 to 4 rows of x with no epilogue, the matrix-vector kernel's int8 form (gemv.cu, <c>gemv_stream_q8_*</c>):
    /// each warp streams int8 rows, sums x times the values in fp32 and multiplies the sum by the row's scale, reading the
    /// addend (or y, for beta) as it writes y; it needs what <see cref="GemvFits"/> needs of x and K a multiple of 16, and
    /// <see cref="CudaBackendOptions.MatrixVectorKernels"/> on. Otherwise the weight is dequantized into scratch of x's dtype
    /// (one weight at a time, from the caching allocator, so it is recorded into graphs like any scratch) and
    /// <see cref="MatMul"/> runs on it. The choice depends on shapes, dtypes, alignment and options only, so an eager step
    /// and its recorded graph take the same path.</remarks>
    public void QuantizedMatMul(Tensor x, QuantizedWeight weight, Tensor y, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? addend = null)
    {
        ArgumentNullException.ThrowIfNull(weight);
        weight.ValidateProduct(nameof(CudaBackend), x, y, beta, bias, epilogue, auxiliary, addend);
        if (epilogue == MatMulEpilogue.None && TryGemvQuantized(x, weight, y, beta, bias, addend)) return;
        var w = ScratchTensor(weight.Shape, x.DType);
        Dequantize(weight, w);
        MatMul(x, w, y, transposeB: true, beta: beta, bias: bias, epilogue: epilogue, auxiliary: auxiliary, addend: addend);
        w.Storage.Dispose();
    }

    /// <summary>
    /// y (M, N) = x (M, K) W^T + bias + beta y, or + addend, with M &lt;= 4 and W the int8 weight: the persistent matrix-vector
    /// kernel's int8 form, which streams the (N, K) values once and applies each row's scale to its sum. False, with nothing
    /// enqueued, when the call does not fit it (then the dequantized product runs it).
    /// </summary>
    private bool TryGemvQuantized(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend)
    {
        if (!GemvInputFits(x)) return false;
        int m = x.Size(0), k = x.Size(1), n = weight.Rows;
        var dtype = x.DType;
        if (n == 0 || k % QuantizedGemvChunk != 0 || Ptr(weight.Values) % 16 != 0 || !BiasFits(bias, dtype, n)) return false;
        if (n > 1 && (y.Stride(1) != 1 || (addend is not null && addend.Stride(1) != 1))) return false;
        // The addend is read where the kernel reads beta's term (beta = 1): y = sum + bias + addend in one pass, no copy.
        var c = addend ?? y;
        ulong px = Ptr(x), pq = Ptr(weight.Values), ps = Ptr(weight.Scales), pb = PtrOrNull(bias), py = Ptr(y), pc = Ptr(c);
        long ldx = x.Stride(0), ldw = k, ldy = y.Stride(0), ldc = c.Stride(0);
        float be = addend is null ? (float)beta : 1f;
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pq, &ps, &pb, &py, &pc, &n, &k, &ldx, &ldw, &ldy, &ldc, &be, &early };
        Launch("gemv.cu", $"gemv_stream_q8_{Suffix(dtype, nameof(QuantizedMatMul))}_m{m}", (GemvGrid(n), 1, 1), 256, args,
            GemvShared(m, k, dtype), dependent: true);
        return true;
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
