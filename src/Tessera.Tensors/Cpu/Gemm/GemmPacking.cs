using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace Tessera.Tensors.Cpu.Gemm;

/// <summary>
/// Copies blocks of A and B into the micro-panel order a <see cref="IGemmKernel{T}"/> reads, resolving
/// transposes here so that the kernel sees one layout. Partial panels are zero-padded to a full MR or NR.
/// </summary>
internal static unsafe class GemmPacking
{
    /// <summary>
    /// Packs op(A)[i0 .. i0+mc, p0 .. p0+kc] into ceil(mc/MR) panels, each (kc, MR).
    /// A is stored (M, K) row-major, or (K, M) when <paramref name="transA"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackA<T, TKernel>(bool transA, T* a, long lda, int i0, int mc, int p0, int kc, T* dst)
        where T : unmanaged where TKernel : IGemmKernel<T>
    {
        int mr = TKernel.MR;
        if (transA)
        {
            // op(A)(i, p) = a[p * lda + i]: walk each stored row once, dealing MR-wide pieces to the panels.
            int full = mc / mr * mr;
            for (int p = 0; p < kc; p++)
            {
                T* src = a + (long)(p0 + p) * lda + i0;
                T* d = dst + (long)p * mr;
                for (int r = 0; r < full; r += mr)
                    Unsafe.CopyBlockUnaligned(d + (long)r * kc, src + r, (uint)(mr * sizeof(T)));
            }
            if (full < mc)
            {
                int rows = mc - full;
                T* panel = dst + (long)full * kc;
                new Span<T>(panel, mr * kc).Clear();
                for (int p = 0; p < kc; p++)
                {
                    T* src = a + (long)(p0 + p) * lda + i0 + full;
                    for (int i = 0; i < rows; i++)
                        panel[p * mr + i] = src[i];
                }
            }
            return;
        }
        for (int r = 0; r < mc; r += mr)
        {
            int rows = Math.Min(mr, mc - r);
            T* panel = dst + (long)r * kc;
            if (rows < mr)
                new Span<T>(panel, mr * kc).Clear();
            // op(A)(i, p) = a[i * lda + p]: a transpose. 8x8 tiles in registers where the kernel is
            // 8 rows of float, else read each row contiguously and scatter with stride MR.
            int done = 0;
            if (typeof(T) == typeof(float) && mr == 8 && rows == 8 && Avx.IsSupported)
            {
                float* src = (float*)(a + (long)(i0 + r) * lda + p0);
                for (; done + 8 <= kc; done += 8)
                    GemmTranspose.Transpose8x8(src + done, lda, (float*)panel + done * 8, 8);
            }
            for (int i = 0; i < rows; i++)
            {
                T* src = a + (long)(i0 + r + i) * lda + p0;
                T* d = panel + i;
                for (int p = done; p < kc; p++)
                    d[p * mr] = src[p];
            }
        }
    }

    /// <summary>
    /// Packs op(B)[p0 .. p0+kc, j0 .. j0+nc] into ceil(nc/NR) panels, each (kc, NR).
    /// B is stored (K, N) row-major, or (N, K) when <paramref name="transB"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void PackB<T, TKernel>(bool transB, T* b, long ldb, int p0, int kc, int j0, int nc, T* dst)
        where T : unmanaged where TKernel : IGemmKernel<T>
    {
        int nr = TKernel.NR;
        if (!transB)
        {
            // op(B)(p, j) = b[p * ldb + j]: walk each stored row once, left to right, dealing NR-wide
            // pieces to the panels (sequential reads; a panel-by-panel walk would stride a full row per k).
            int full = nc / nr * nr;
            for (int p = 0; p < kc; p++)
            {
                T* src = b + (long)(p0 + p) * ldb + j0;
                T* d = dst + (long)p * nr;
                for (int s = 0; s < full; s += nr)
                    Unsafe.CopyBlockUnaligned(d + (long)s * kc, src + s, (uint)(nr * sizeof(T)));
            }
            if (full < nc)
            {
                int cols = nc - full;
                T* panel = dst + (long)full * kc;
                new Span<T>(panel, nr * kc).Clear();
                for (int p = 0; p < kc; p++)
                {
                    T* src = b + (long)(p0 + p) * ldb + j0 + full;
                    for (int j = 0; j < cols; j++)
                        panel[p * nr + j] = src[j];
                }
            }
            return;
        }
        for (int s = 0; s < nc; s += nr)
        {
            int cols = Math.Min(nr, nc - s);
            T* panel = dst + (long)s * kc;
            if (cols < nr)
                new Span<T>(panel, nr * kc).Clear();
            // op(B)(p, j) = b[j * ldb + p]: a transpose. 16x16 tiles in registers for full float panels
            // on AVX-512, else read each stored row contiguously and scatter with stride NR.
            int done = 0;
            if (typeof(T) == typeof(float) && nr % 16 == 0 && cols == nr && Avx512F.IsSupported)
            {
                for (int g = 0; g < nr; g += 16)
                {
                    float* src = (float*)(b + (long)(j0 + s + g) * ldb + p0);
                    for (int p = 0; p + 16 <= kc; p += 16)
                        GemmTranspose.Transpose16x16(src + p, ldb, (float*)panel + p * nr + g, nr);
                }
                done = kc / 16 * 16;
            }
            for (int j = 0; j < cols; j++)
            {
                T* src = b + (long)(j0 + s + j) * ldb + p0;
                T* d = panel + j;
                for (int p = done; p < kc; p++)
                    d[p * nr] = src[p];
            }
        }
    }
}
