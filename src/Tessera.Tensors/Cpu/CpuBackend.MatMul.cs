using System.Numerics;

namespace Tessera.Tensors.Cpu;

// Matrix products: rank 2 and batched rank 3, on top of Gemm.Sgemm / Gemm.Dgemm.
public sealed unsafe partial class CpuBackend
{
    /// <inheritdoc/>
    public void MatMul(Tensor a, Tensor b, Tensor c, bool transposeA = false, bool transposeB = false,
        double alpha = 1.0, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? biasGradient = null,
        Tensor? addend = null)
    {
        MatMulEpilogueArguments.Validate(nameof(CpuBackend), a, c, transposeA, beta, bias, epilogue, auxiliary, biasGradient, addend);
        if (addend is not null) { Copy(addend, c); beta = 1.0; } // c = addend, then the product accumulates onto it
        MatMulEpilogueComposition.Apply(this, a, b, c, transposeA, transposeB, alpha, beta, bias, epilogue, auxiliary, biasGradient, MatMulPlain);
        KeepOperandsAlive(a, b, c, bias, auxiliary, biasGradient, addend);
    }

    private void MatMulPlain(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias)
    {
        const string op = nameof(MatMul);
        ArgumentNullException.ThrowIfNull(a); ArgumentNullException.ThrowIfNull(b); ArgumentNullException.ThrowIfNull(c);
        RequireComputeDType(op, nameof(a), a);
        RequireDType(op, nameof(b), b, a.DType);
        RequireDType(op, nameof(c), c, a.DType);
        if (a.Rank is not (2 or 3))
            throw new ArgumentException($"{op}: a must be rank 2 (M,K) or rank 3 (batch,M,K), got shape {a.Shape}", nameof(a));
        RequireRank(op, nameof(b), b, a.Rank, a.Rank == 2 ? "(K,N)" : "(batch,K,N)");
        RequireRank(op, nameof(c), c, a.Rank, a.Rank == 2 ? "(M,N)" : "(batch,M,N)");
        int batch = a.Rank == 3 ? a.Shape[0] : 1;
        if (a.Rank == 3 && (b.Shape[0] != batch || c.Shape[0] != batch))
            throw new ArgumentException($"{op}: batch dimensions differ: a {a.Shape}, b {b.Shape}, c {c.Shape}");
        int m = transposeA ? a.Shape[^1] : a.Shape[^2];
        int k = transposeA ? a.Shape[^2] : a.Shape[^1];
        int kb = transposeB ? b.Shape[^1] : b.Shape[^2];
        int n = transposeB ? b.Shape[^2] : b.Shape[^1];
        if (k != kb)
            throw new ArgumentException($"{op}: inner dimensions differ: op(a) is ({m},{k}) from a {a.Shape}{(transposeA ? " transposed" : "")}, op(b) is ({kb},{n}) from b {b.Shape}{(transposeB ? " transposed" : "")}");
        if (c.Shape[^2] != m || c.Shape[^1] != n)
            throw new ArgumentException($"{op}: c has shape {c.Shape} but op(a) @ op(b) is ({m},{n}) (a {a.Shape}, b {b.Shape})", nameof(c));
        if (bias is not null)
        {
            RequireDType(op, nameof(bias), bias, a.DType);
            RequireShape(op, nameof(bias), bias, new Shape(n));
        }

        // Gemm needs row-major matrices: unit stride on the last dimension, a row stride >= the row length.
        Tensor ac = GemmOperand(a), bc = GemmOperand(b);
        Tensor cc = GemmOperand(c);
        bool cCopied = !ReferenceEquals(cc, c);
        try
        {
            if (a.DType == DType.F32) MatMulTyped<float>(ac, bc, cc, transposeA, transposeB, m, n, k, batch, alpha, beta, bias);
            else MatMulTyped<double>(ac, bc, cc, transposeA, transposeB, m, n, k, batch, alpha, beta, bias);
            if (cCopied) Copy(cc, c);
        }
        finally
        {
            if (!ReferenceEquals(ac, a)) ac.Storage.Dispose();
            if (!ReferenceEquals(bc, b)) bc.Storage.Dispose();
            if (cCopied) cc.Storage.Dispose();
        }
    }

    /// <summary>The tensor itself when Gemm can read it in place, else a contiguous copy.</summary>
    private Tensor GemmOperand(Tensor t)
    {
        bool lastUnit = t.Shape[^1] <= 1 || t.Stride(-1) == 1;
        bool rowsOk = t.Shape[^2] <= 1 || t.Stride(-2) >= t.Shape[^1];
        if (lastUnit && rowsOk) return t;
        var copy = Allocate(t.Shape, t.DType);
        Copy(t, copy);
        return copy;
    }

    private static long LeadingDim(Tensor t) => t.Shape[^2] <= 1 ? Math.Max(1, t.Shape[^1]) : t.Stride(-2);

    private void MatMulTyped<T>(Tensor a, Tensor b, Tensor c, bool ta, bool tb, int m, int n, int k, int batch,
        double alpha, double beta, Tensor? bias) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* pa = Ptr<T>(a), pb = Ptr<T>(b), pc = Ptr<T>(c);
        long lda = LeadingDim(a), ldb = LeadingDim(b), ldc = LeadingDim(c);
        long sa = a.Rank == 3 ? a.Stride(0) : 0, sb = b.Rank == 3 ? b.Stride(0) : 0, sc = c.Rank == 3 ? c.Stride(0) : 0;
        for (int i = 0; i < batch; i++)
        {
            if (typeof(T) == typeof(float))
                Gemm.Gemm.Sgemm(ta, tb, m, n, k, (float)alpha, (float*)(pa + i * sa), lda, (float*)(pb + i * sb), ldb,
                    (float)beta, (float*)(pc + i * sc), ldc, Threads);
            else
                Gemm.Gemm.Dgemm(ta, tb, m, n, k, alpha, (double*)(pa + i * sa), lda, (double*)(pb + i * sb), ldb,
                    beta, (double*)(pc + i * sc), ldc, Threads);
        }
        if (bias is null) return;
        T* pbias = Ptr<T>(bias);
        long biasStride = bias.Stride(0);
        for (int i = 0; i < batch; i++)
            for (int r = 0; r < m; r++)
            {
                T* row = pc + i * sc + r * ldc;
                for (int j = 0; j < n; j++) row[j] += pbias[j * biasStride];
            }
    }

    /// <inheritdoc/>
    public void SumRows(Tensor x, Tensor sums)
    {
        const string op = nameof(SumRows);
        RequireComputeDType(op, nameof(x), x);
        RequireRank(op, nameof(x), x, 2, "(N,C)");
        RequireContiguous(op, nameof(x), x);
        RequireDType(op, nameof(sums), sums, x.DType);
        RequireShape(op, nameof(sums), sums, new Shape(x.Shape[1]));
        RequireContiguous(op, nameof(sums), sums);
        if (x.DType == DType.F32) SumRowsTyped<float>(x, sums); else SumRowsTyped<double>(x, sums);
        KeepOperandsAlive(x, sums);
    }

    private void SumRowsTyped<T>(Tensor x, Tensor sums) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(x), ps = Ptr<T>(sums);
        int rows = x.Shape[0], cols = x.Shape[1];
        // Threads own column blocks, so no two write the same sum.
        ParallelChunks(cols, rows, (c0, c1) =>
        {
            for (int r = 0; r < rows; r++)
            {
                T* row = px + (long)r * cols;
                for (long j = c0; j < c1; j++) ps[j] += row[j];
            }
        });
    }
}
