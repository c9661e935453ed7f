using System.Numerics;
using System.Runtime.CompilerServices;

namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>
/// The blocked GEMM of Goto and van de Geijn (the BLIS loop nest), specialised per micro-kernel:
/// jc (NC columns of B) / pc (KC deep: pack the B block) / ic (MC rows: pack the A block, L2-resident) /
/// jr (NR: one B micro-panel, reused across the MC/MR row tiles) / ir (MR: the register-blocked kernel).
/// Threads take disjoint column ranges of C (or row ranges when M > N) and pack their own panels, so they
/// never wait on each other; each C element sums its k blocks in the same order whatever the thread count.
/// </summary>
internal static unsafe class GemmDriver<T, TKernel>
    where T : unmanaged, IFloatingPointIeee754<T>
    where TKernel : IGemmKernel<T>
{
    // Below this many multiply-adds a second thread costs more to start than it saves.
    private const long MinWorkPerThread = 1L << 20;

    /// <summary>C (M,N) = alpha * op(A) @ op(B) + beta * C; see <see cref="Gemm"/> for the storage convention.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Run(bool transA, bool transB, int m, int n, int k, T alpha,
        T* a, long lda, T* b, long ldb, T beta, T* c, long ldc, int threads)
    {
        if (m <= 0 || n <= 0)
            return;
        if (k <= 0 || alpha == T.Zero)
        {
            ScaleC(m, n, beta, c, ldc);
            return;
        }

        long work = (long)m * n * k;
        int t = (int)Math.Clamp(Math.Min(threads, work / MinWorkPerThread), 1, threads < 1 ? 1 : threads);
        // Split the dimension whose duplicated packing is cheaper: splitting N makes each thread pack
        // all of A (M*K), splitting M makes each pack all of B (K*N).
        bool splitN = n >= m;
        int unit = splitN ? TKernel.NR : TKernel.MR;
        int extent = splitN ? n : m;
        int units = (extent + unit - 1) / unit;
        t = Math.Min(t, units);
        if (t <= 1)
        {
            RunBlock(transA, transB, 0, m, 0, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
            return;
        }

        var job = new Job(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, t, splitN, unit, units);
        Parallel.For(0, t, new ParallelOptions { MaxDegreeOfParallelism = t }, job.Execute);
    }

    /// <summary>The arguments of one threaded call, shared read-only by its workers.</summary>
    private sealed class Job(bool transA, bool transB, int m, int n, int k, T alpha,
        T* a, long lda, T* b, long ldb, T beta, T* c, long ldc, int parts, bool splitN, int unit, int units)
    {
        public void Execute(int part)
        {
            int u0 = (int)((long)units * part / parts), u1 = (int)((long)units * (part + 1) / parts);
            int extent = splitN ? n : m;
            int lo = u0 * unit, hi = Math.Min(extent, u1 * unit);
            if (lo >= hi)
                return;
            if (splitN)
                RunBlock(transA, transB, 0, m, lo, hi, k, alpha, a, lda, b, ldb, beta, c, ldc);
            else
                RunBlock(transA, transB, lo, hi, 0, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        }
    }

    /// <summary>Single-threaded blocked product over rows [i0, i1) and columns [j0, j1) of C.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RunBlock(bool transA, bool transB, int i0, int i1, int j0, int j1, int k, T alpha,
        T* a, long lda, T* b, long ldb, T beta, T* c, long ldc)
    {
        int mr = TKernel.MR, nr = TKernel.NR;
        int kcMax = Math.Min(TKernel.KC, k);
        // Blocks are whole micro-panels, so that only the last block of a range has a ragged edge.
        int mcMax = Math.Min(Math.Max(mr, TKernel.MC / mr * mr), RoundUp(i1 - i0, mr));
        int ncMax = Math.Min(Math.Max(nr, TKernel.NC / nr * nr), RoundUp(j1 - j0, nr));
        int aLen = RoundUp(mcMax * kcMax, 64 / sizeof(T)), bLen = ncMax * kcMax;
        T* packA = (T*)PackingBuffer.ForCurrentThread((nuint)((long)(aLen + bLen) * sizeof(T)));
        T* packB = packA + aLen;
        T* edge = stackalloc T[mr * nr];
        for (int jc = j0; jc < j1; jc += ncMax)
        {
            int nc = Math.Min(ncMax, j1 - jc);
            for (int pc = 0; pc < k; pc += kcMax)
            {
                int kc = Math.Min(kcMax, k - pc);
                T betaK = pc == 0 ? beta : T.One;
                GemmPacking.PackB<T, TKernel>(transB, b, ldb, pc, kc, jc, nc, packB);
                for (int ic = i0; ic < i1; ic += mcMax)
                {
                    int mc = Math.Min(mcMax, i1 - ic);
                    GemmPacking.PackA<T, TKernel>(transA, a, lda, ic, mc, pc, kc, packA);
                    for (int jr = 0; jr < nc; jr += nr)
                    {
                        int cols = Math.Min(nr, nc - jr);
                        T* bp = packB + (long)jr * kc;
                        for (int ir = 0; ir < mc; ir += mr)
                        {
                            int rows = Math.Min(mr, mc - ir);
                            T* ap = packA + (long)ir * kc;
                            T* cp = c + (long)(ic + ir) * ldc + jc + jr;
                            if (rows == mr && cols == nr)
                            {
                                TKernel.Run(kc, ap, bp, cp, ldc, alpha, betaK);
                            }
                            else
                            {
                                TKernel.Run(kc, ap, bp, edge, nr, alpha, T.Zero);
                                MergeEdge(edge, nr, rows, cols, betaK, cp, ldc);
                            }
                        }
                    }
                }
            }
        }
    }

    /// <summary>C[rows, cols] = tile + beta * C, C not read when beta == 0.</summary>
    private static void MergeEdge(T* tile, int ldt, int rows, int cols, T beta, T* c, long ldc)
    {
        for (int i = 0; i < rows; i++)
        {
            T* ci = c + i * ldc;
            T* ti = tile + i * ldt;
            if (beta == T.Zero)
                for (int j = 0; j < cols; j++) ci[j] = ti[j];
            else
                for (int j = 0; j < cols; j++) ci[j] = ti[j] + beta * ci[j];
        }
    }

    /// <summary>C = beta * C (the whole product vanishes); beta == 0 writes zeros without reading C.</summary>
    private static void ScaleC(int m, int n, T beta, T* c, long ldc)
    {
        for (int i = 0; i < m; i++)
        {
            var row = new Span<T>(c + i * ldc, n);
            if (beta == T.Zero)
                row.Clear();
            else if (beta != T.One)
                for (int j = 0; j < n; j++) row[j] *= beta;
        }
    }

    private static int RoundUp(int x, int multiple) => (x + multiple - 1) / multiple * multiple;
}
