using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Tessera.Tensors.Cpu;

// Weight-only int8 products: x times a weight of int8 rows with one F32 scale each (QuantizedWeight).
public sealed unsafe partial class CpuBackend
{
    /// <summary>
    /// Most rows of x that the direct kernel takes (decoding): each weight row is read once as bytes and dotted with every
    /// row of x while it sits in L1. Larger products dequantize the weight into a transient copy and run the GEMM, which
    /// reuses each weight across many rows.
    /// </summary>
    private const int QuantizedDirectMaxRows = 16;

    /// <inheritdoc/>
    /// <remarks>F32 with at most 16 rows and no epilogue: the direct kernel (AVX2 where present); otherwise, and for F64 (the
    /// reference), the weight dequantized into a transient tensor of x's dtype and <see cref="MatMul"/>.</remarks>
    public void QuantizedMatMul(Tensor x, QuantizedWeight weight, Tensor y, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? addend = null)
    {
        const string op = nameof(QuantizedMatMul);
        ArgumentNullException.ThrowIfNull(weight);
        weight.ValidateProduct(nameof(CpuBackend), x, y, beta, bias, epilogue, auxiliary, addend);
        RequireComputeDType(op, nameof(x), x);
        bool direct = x.DType == DType.F32 && epilogue == MatMulEpilogue.None && x.Size(0) <= QuantizedDirectMaxRows
            && x.Stride(1) == 1 && y.Stride(1) == 1 && (addend is null || addend.Stride(1) == 1) && (bias is null || bias.IsContiguous);
        if (direct) QuantizedDirect(x, weight, y, (float)beta, bias, addend);
        else
        {
            var w = Allocate(weight.Shape, x.DType);
            try
            {
                Dequantize(weight, w);
                MatMul(x, w, y, transposeB: true, beta: beta, bias: bias, epilogue: epilogue, auxiliary: auxiliary, addend: addend);
            }
            finally { w.Storage.Dispose(); }
        }
        KeepOperandsAlive(x, weight.Values, weight.Scales, y, bias, auxiliary, addend);
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

    /// <summary>y = x W^T (+ bias) (+ beta y | + addend) for F32 x of few rows, a weight row at a time across the threads.</summary>
    private void QuantizedDirect(Tensor x, QuantizedWeight weight, Tensor y, float beta, Tensor? bias, Tensor? addend)
    {
        int m = x.Size(0), k = weight.Columns;
        float* px = Ptr<float>(x), py = Ptr<float>(y), ps = Ptr<float>(weight.Scales);
        float* pb = bias is null ? null : Ptr<float>(bias);
        float* pa = addend is null ? null : Ptr<float>(addend);
        sbyte* pq = Ptr<sbyte>(weight.Values);
        long ldx = x.Stride(0), ldy = y.Stride(0), lda = addend?.Stride(0) ?? 0;
        ParallelChunks(weight.Rows, (long)m * k, (start, end) =>
        {
            for (long n = start; n < end; n++)
            {
                sbyte* row = pq + n * k;
                float scale = ps[n], b = pb is null ? 0f : pb[n];
                for (int r = 0; r < m; r++)
                {
                    float v = Int8Dot(px + r * ldx, row, k) * scale + b;
                    float* out_ = py + r * ldy + n;
                    if (pa is not null) v += pa[r * lda + n];
                    else if (beta != 0f) v += beta * *out_;
                    *out_ = v;
                }
            }
        });
    }

    /// <summary>Σ x[i] q[i] over <paramref name="k"/> elements, in F32.</summary>
    private static float Int8Dot(float* x, sbyte* q, int k)
    {
        int i = 0;
        float sum = 0f;
        if (Avx2.IsSupported && Fma.IsSupported && k >= 16)
        {
            var a0 = Vector256<float>.Zero;
            var a1 = Vector256<float>.Zero;
            for (; i + 16 <= k; i += 16)
            {
                var w0 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + i));
                var w1 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + i + 8));
                a0 = Fma.MultiplyAdd(Avx.LoadVector256(x + i), w0, a0);
                a1 = Fma.MultiplyAdd(Avx.LoadVector256(x + i + 8), w1, a1);
            }
            sum = Vector256.Sum(a0 + a1);
        }
        for (; i < k; i++) sum += x[i] * q[i];
        return sum;
    }
}
