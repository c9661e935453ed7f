namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>
/// General matrix product on row-major operands, the CPU backend's hot path:
/// C (M,N) = alpha * op(A) @ op(B) + beta * C, op(A) (M,K), op(B) (K,N).
/// A is stored (M,K) with row stride lda, or (K,M) when transA; B is (K,N) with ldb, or (N,K) when transB.
/// beta == 0 never reads C (it may hold NaN).
/// </summary>
/// <remarks>
/// Dispatches to the widest micro-kernel the CPU supports (AVX-512, then AVX2+FMA, then portable scalar)
/// under one packed, cache-blocked, multi-threaded driver (<see cref="GemmDriver{T, TKernel}"/>).
/// </remarks>
internal static unsafe class Gemm
{
    /// <summary>Single precision; uses up to <paramref name="threads"/> threads.</summary>
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        float* a, long lda, float* b, long ldb, float beta, float* c, long ldc, int threads)
    {
        if (SgemmKernelAvx512.IsSupported)
            GemmDriver<float, SgemmKernelAvx512>.Run(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
        else if (SgemmKernelAvx2.IsSupported)
            GemmDriver<float, SgemmKernelAvx2>.Run(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
        else
            GemmDriver<float, ScalarGemmKernel<float>>.Run(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
    }

    /// <summary>Double precision (gradient checks, golden comparisons in F64).</summary>
    public static void Dgemm(bool transA, bool transB, int m, int n, int k, double alpha,
        double* a, long lda, double* b, long ldb, double beta, double* c, long ldc, int threads)
    {
        if (DgemmKernelAvx512.IsSupported)
            GemmDriver<double, DgemmKernelAvx512>.Run(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
        else if (DgemmKernelAvx2.IsSupported)
            GemmDriver<double, DgemmKernelAvx2>.Run(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
        else
            GemmDriver<double, ScalarGemmKernel<double>>.Run(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, threads);
    }

    /// <summary>Naive triple loop: the correctness reference.</summary>
    internal static void Reference<T>(bool transA, bool transB, int m, int n, int k, T alpha,
        T* a, long lda, T* b, long ldb, T beta, T* c, long ldc)
        where T : unmanaged, System.Numerics.IFloatingPointIeee754<T>
    {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                T acc = T.Zero;
                for (int p = 0; p < k; p++)
                {
                    T av = transA ? a[p * lda + i] : a[i * lda + p];
                    T bv = transB ? b[j * ldb + p] : b[p * ldb + j];
                    acc += av * bv;
                }
                T prior = beta == T.Zero ? T.Zero : beta * c[i * ldc + j];
                c[i * ldc + j] = alpha * acc + prior;
            }
    }
}
