using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Tessera.Tensors.Cpu;

// Weight-only int8 products: x times a weight of int8 rows with one F32 scale each (QuantizedWeight).
public sealed unsafe partial class CpuBackend
{
    /// <summary>
    /// Most rows of x that the direct kernel takes (decoding): each weight row is read once as bytes and dotted with every
    /// row of x while it sits in L1. Larger products dequantize the weight a tile at a time and run the GEMM on each, which
    /// reuses each weight across many rows.
    /// </summary>
    private const int QuantizedDirectMaxRows = 16;

    /// <inheritdoc/>
    /// <remarks>F32 with at most 16 rows: the direct kernel (AVX2 where present, GELU after it); otherwise, and for F64 (the
    /// reference), tiles of weight rows dequantized into a scratch of x's dtype and <see cref="MatMul"/> on each.</remarks>
    public void QuantizedMatMul(Tensor x, QuantizedWeight weight, Tensor y, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? addend = null)
    {
        const string op = nameof(QuantizedMatMul);
        ArgumentNullException.ThrowIfNull(weight);
        weight.ValidateProduct(nameof(CpuBackend), x, y, beta, bias, epilogue, auxiliary, addend);
        RequireComputeDType(op, nameof(x), x);
        bool direct = x.DType == DType.F32 && x.Size(0) <= QuantizedDirectMaxRows && x.Stride(1) == 1 && y.Stride(1) == 1
            && (addend is null || addend.Stride(1) == 1) && (bias is null || bias.IsContiguous) && (auxiliary is null || auxiliary.Stride(1) == 1);
        if (direct)
        {
            // GELU: the product goes to the pre-activation, then each row through the activation into y.
            var product = epilogue == MatMulEpilogue.Gelu ? auxiliary! : y;
            QuantizedDirect(x, weight, product, (float)beta, bias, addend);
            if (epilogue == MatMulEpilogue.Gelu)
                for (int r = 0; r < x.Size(0); r++)
                    Kernels.ActivationKernels.GeluForward(Ptr<float>(product) + r * product.Stride(0), Ptr<float>(y) + r * y.Stride(0), weight.Rows);
        }
        else if (epilogue == MatMulEpilogue.Gelu)
        {
            // The GELU epilogue takes whole contiguous tensors: the tiles' products go to the pre-activation, then GELU into y.
            QuantizedTiled(x, weight, auxiliary!, 0.0, bias, null);
            GeluForward(auxiliary!, y);
        }
        else QuantizedTiled(x, weight, y, beta, bias, addend);
        KeepOperandsAlive(x, weight.Values, weight.Scales, y, bias, auxiliary, addend);
    }

    /// <summary>Elements of the dequantized tile of weight rows that <see cref="QuantizedTiled"/> keeps (1 MiB in F32: L2-sized).</summary>
    private const int QuantizedTileElements = 1 << 18;

    /// <summary>
    /// The product a tile of weight rows at a time: each tile dequantized into one scratch of x's dtype (reused, cache-sized, so the
    /// weight is never whole in floating point), then the GEMM over the matching columns of y (and of the bias and addend),
    /// which it reads and writes in place through their row strides.
    /// </summary>
    private void QuantizedTiled(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend)
    {
        int n = weight.Rows, k = weight.Columns;
        int tile = Math.Min(n, Math.Max(16, QuantizedTileElements / Math.Max(1, k) / 16 * 16));
        var scratch = Allocate(new Shape(tile, k), x.DType);
        try
        {
            for (int first = 0; first < n; first += tile)
            {
                int rows = Math.Min(tile, n - first);
                var w = scratch.Slice(0, 0, rows);
                Dequantize(new QuantizedWeight(weight.Values.Slice(0, first, rows), weight.Scales.Slice(0, first, rows)), w);
                MatMul(x, w, y.Slice(1, first, rows), transposeB: true, beta: beta, bias: bias?.Slice(0, first, rows),
                    addend: addend?.Slice(1, first, rows));
            }
        }
        finally { scratch.Storage.Dispose(); }
    }

    /// <inheritdoc/>
    public void Dequantize(QuantizedWeight weight, Tensor output)
    {
        const string op = nameof(Dequantize);
        ArgumentNullException.ThrowIfNull(weight);
        ArgumentNullException.ThrowIfNull(output);
        RequireShape(op, nameof(output), output, weight.Shape);
        if (output.DType is not (DType.F32 or DType.F64 or DType.BF16) || !output.IsContiguous)
            throw new ArgumentException($"{op}: output must be a contiguous F32, F64 or BF16 tensor, got {output.DType} {output.Shape}", nameof(output));
        int k = weight.Columns;
        sbyte* q = Ptr<sbyte>(weight.Values);
        float* s = Ptr<float>(weight.Scales);
        var dtype = output.DType;
        byte* o = BytePtr(output);
        ParallelChunks(weight.Rows, k, (start, end) =>
        {
            for (long n = start; n < end; n++)
            {
                float scale = s[n];
                sbyte* row = q + n * k;
                for (int c = 0; c < k; c++)
                {
                    float v = scale * row[c];
                    long i = n * k + c;
                    if (dtype == DType.F32) ((float*)o)[i] = v;
                    else if (dtype == DType.F64) ((double*)o)[i] = (double)scale * row[c];
                    else ((BFloat16*)o)[i] = BFloat16.FromSingle(v);
                }
            }
        });
        KeepOperandsAlive(weight.Values, weight.Scales, output);
    }

    /// <summary>
    /// y = x W^T (+ bias) (+ beta y | + addend) for F32 x of few rows: blocks of four weight rows across the threads, each
    /// block's bytes converted once per row of x and dotted with it while x's chunk is in registers.
    /// </summary>
    private void QuantizedDirect(Tensor x, QuantizedWeight weight, Tensor y, float beta, Tensor? bias, Tensor? addend)
    {
        int m = x.Size(0), k = weight.Columns, n = weight.Rows;
        float* px = Ptr<float>(x), py = Ptr<float>(y), ps = Ptr<float>(weight.Scales);
        float* pb = bias is null ? null : Ptr<float>(bias);
        float* pa = addend is null ? null : Ptr<float>(addend);
        sbyte* pq = Ptr<sbyte>(weight.Values);
        long ldx = x.Stride(0), ldy = y.Stride(0), lda = addend?.Stride(0) ?? 0;
        ParallelChunks((n + 3) / 4, 4L * m * k, (start, end) =>
        {
            float* dots = stackalloc float[4];
            for (long block = start; block < end; block++)
            {
                int first = (int)(block * 4), rows = Math.Min(4, n - first);
                for (int r = 0; r < m; r++)
                {
                    Int8Dot4(px + r * ldx, pq + (long)first * k, k, rows, dots);
                    for (int j = 0; j < rows; j++)
                    {
                        int col = first + j;
                        float v = dots[j] * ps[col] + (pb is null ? 0f : pb[col]);
                        float* out_ = py + r * ldy + col;
                        if (pa is not null) v += pa[r * lda + col];
                        else if (beta != 0f) v += beta * *out_;
                        *out_ = v;
                    }
                }
            }
        });
    }

    /// <summary>dots[j] = Σ_i x[i] q[j k + i] for the <paramref name="rows"/> (1 to 4) consecutive rows of q, in F32.</summary>
    private static void Int8Dot4(float* x, sbyte* q, int k, int rows, float* dots)
    {
        int i = 0;
        for (int j = 0; j < 4; j++) dots[j] = 0f;
        if (Avx2.IsSupported && Fma.IsSupported && rows == 4 && k >= 8)
        {
            var a0 = Vector256<float>.Zero; var a1 = Vector256<float>.Zero;
            var a2 = Vector256<float>.Zero; var a3 = Vector256<float>.Zero;
            sbyte* q1 = q + k, q2 = q + 2L * k, q3 = q + 3L * k;
            for (; i + 8 <= k; i += 8)
            {
                var xv = Avx.LoadVector256(x + i);
                a0 = Fma.MultiplyAdd(xv, Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + i)), a0);
                a1 = Fma.MultiplyAdd(xv, Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q1 + i)), a1);
                a2 = Fma.MultiplyAdd(xv, Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q2 + i)), a2);
                a3 = Fma.MultiplyAdd(xv, Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q3 + i)), a3);
            }
            dots[0] = Vector256.Sum(a0); dots[1] = Vector256.Sum(a1); dots[2] = Vector256.Sum(a2); dots[3] = Vector256.Sum(a3);
        }
        else if (Avx2.IsSupported && Fma.IsSupported && k >= 8)
        {
            for (int j = 0; j < rows; j++)
            {
                var a = Vector256<float>.Zero;
                sbyte* row = q + (long)j * k;
                for (int c = 0; c + 8 <= k; c += 8)
                    a = Fma.MultiplyAdd(Avx.LoadVector256(x + c), Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(row + c)), a);
                dots[j] = Vector256.Sum(a);
            }
            i = k / 8 * 8;
        }
        for (int j = 0; j < rows; j++)
        {
            sbyte* row = q + (long)j * k;
            float tail = 0f;
            for (int c = i; c < k; c++) tail += x[c] * row[c];
            dots[j] += tail;
        }
    }
}
