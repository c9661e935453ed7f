namespace Tessera.Tensors.Cpu;

// W8A8-FP8 products (QuantizedWeight with F8E4M3 values): x quantized row by row to E4M3, codes times codes, both scales after.
public sealed unsafe partial class CpuBackend
{
    /// <summary>
    /// y = sx[m] sw[n] Σ_k qx[m, k] qw[n, k] + bias (+ beta y | + addend) for FP8 weights, the reference every backend's FP8
    /// product is held to. x's rows are read as F32 (F64 rounded once, as the GPU's F32 quantization sees them) and quantized
    /// by <see cref="Fp8Quantization.QuantizeRow"/>. The sums run in F64 on the decoded codes, and are exact in any order: an
    /// E4M3 value is an integer multiple of 2^-9 below 2^17.8 in those units, so every product and partial sum is an integer
    /// multiple of 2^-18 below 2^53 for K up to 2^17 (<see cref="Fp8ExactColumns"/>). Then sx sw (exact in F64) times the sum,
    /// rounded once in F64, the bias, and beta y or the addend, all in F64, and y is written rounded once to its dtype.
    /// The weight's codes are decoded a tile of rows at a time into one F64 scratch (as the int8 tiles), and the GEMM gives the
    /// sums of the tile; the F64 GEMM costs about twice the F32 one, which a reference can afford.
    /// </summary>
    private void QuantizedFp8(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend)
    {
        int m = x.Size(0), k = weight.Columns, n = weight.Rows;
        if (k > Fp8ExactColumns)
            throw new ArgumentException($"CpuBackend.QuantizedMatMul: an FP8 product of K = {k} columns exceeds the {Fp8ExactColumns} whose F64 sums are exact");
        var codes = Allocate(new Shape(m, k), DType.F64);          // (M, K) the decoded codes of x
        var xScales = new float[m];
        int tile = Math.Max(1, Math.Min(n, Math.Max(16, QuantizedTileElements / Math.Max(1, k) / 16 * 16)));
        var w = Allocate(new Shape(tile, k), DType.F64);           // (tile, K) decoded weight codes
        var sums = Allocate(new Shape(m, tile), DType.F64);        // (M, tile)
        try
        {
            QuantizeActivationRows(x, codes, xScales);
            double* pw = Ptr<double>(w), ps = Ptr<double>(sums);
            byte* pq = Ptr<byte>(weight.Values);
            float* sw = Ptr<float>(weight.Scales);
            byte* py = BytePtr(y), pb = bias is null ? null : BytePtr(bias), pa = addend is null ? null : BytePtr(addend);
            var dtype = y.DType;
            int size = dtype.SizeInBytes();
            long ldy = y.Stride(0), sy = y.Stride(1), lda = addend?.Stride(0) ?? 0, sa = addend?.Stride(1) ?? 0, sb = bias?.Stride(0) ?? 0;
            for (int first = 0; first < n; first += tile)
            {
                int rows = Math.Min(tile, n - first);
                ParallelChunks(rows, k, (r0, r1) =>
                {
                    for (long r = r0; r < r1; r++)
                        for (int c = 0; c < k; c++) pw[r * k + c] = Float8E4M3.ToSingle(pq[(first + r) * k + c]);
                });
                MatMul(codes, w.Slice(0, 0, rows), sums.Slice(1, 0, rows), transposeB: true);
                for (int r = 0; r < m; r++)
                    for (int j = 0; j < rows; j++)
                    {
                        int col = first + j;
                        double v = (double)xScales[r] * sw[col] * ps[(long)r * tile + j];
                        if (pb is not null) v += Read(dtype, pb + col * sb * size);
                        byte* target = py + (r * ldy + col * sy) * size;
                        if (pa is not null) v += Read(dtype, pa + (r * lda + col * sa) * size);
                        else if (beta != 0.0) v += beta * Read(dtype, target);
                        if (dtype == DType.F32) *(float*)target = (float)v; else *(double*)target = v;
                    }
            }
        }
        finally
        {
            codes.Storage.Dispose();
            w.Storage.Dispose();
            sums.Storage.Dispose();
        }
    }

    /// <summary>Columns up to which the F64 sums of E4M3 products are exact (see <see cref="QuantizedFp8"/>): 2^17.</summary>
    private const int Fp8ExactColumns = 1 << 17;

    private static double Read(DType dtype, byte* p) => dtype == DType.F32 ? *(float*)p : *(double*)p;

    /// <summary>
    /// Quantizes each row of x (M, K) F32 or F64 to E4M3 (<see cref="Fp8Quantization.QuantizeRow"/>, on the row read as F32) and
    /// writes the codes' values into <paramref name="codes"/> (M, K) F64 (exact) and the rows' scales into <paramref name="scales"/>.
    /// </summary>
    private void QuantizeActivationRows(Tensor x, Tensor codes, float[] scales)
    {
        int m = x.Size(0), k = x.Size(1);
        byte* px = BytePtr(x);
        Ptr<byte>(x);
        double* pc = Ptr<double>(codes);
        bool f32 = x.DType == DType.F32;
        long ldx = x.Stride(0), sx = x.Stride(1);
        int size = x.DType.SizeInBytes();
        ParallelChunks(m, k, (r0, r1) =>
        {
            var row = new float[k];
            var q = new byte[k];
            for (long r = r0; r < r1; r++)
            {
                for (int c = 0; c < k; c++)
                {
                    byte* e = px + (r * ldx + c * sx) * size;
                    row[c] = f32 ? *(float*)e : (float)*(double*)e;
                }
                scales[r] = Fp8Quantization.QuantizeRow(row, q);
                for (int c = 0; c < k; c++) pc[r * k + c] = Float8E4M3.ToSingle(q[c]);
            }
        });
    }
}
