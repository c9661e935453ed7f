using System.Numerics;
using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// Attention for long sequences: per (batch, head) the score matrix and the products with V
// (and in backward with K, Q, dO) are Gemm calls on the strided head views (FlashAttention's math,
// without its tiling: the (T,S) scores of one head fit in cache-sized scratch per thread).
public sealed unsafe partial class CpuBackend
{
    /// <summary>Row-major Gemm for T = float or double, single-threaded (the caller threads over heads).</summary>
    private static void GemmT<T>(bool ta, bool tb, int m, int n, int k, T alpha, T* a, long lda, T* b, long ldb, T beta, T* c, long ldc)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float))
            Gemm.Gemm.Sgemm(ta, tb, m, n, k, float.CreateTruncating(alpha), (float*)a, lda, (float*)b, ldb, float.CreateTruncating(beta), (float*)c, ldc, 1);
        else
            Gemm.Gemm.Dgemm(ta, tb, m, n, k, double.CreateTruncating(alpha), (double*)a, lda, (double*)b, ldb, double.CreateTruncating(beta), (double*)c, ldc, 1);
    }

    private void AttentionForwardGemm<T>(T* pq, T* pk, T* pv, T* po, T* pl, int b, int t, int h, int s, int kh, int d,
        long qb, long qt, long qh, long kb, long ks, long khs, long vb, long vs, long vhs, T sc, int window)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int group = h / kh;
        ParallelChunks((long)b * h, (long)t * s * d, (i0, i1) =>
        {
            var scratch = new T[(long)t * s];
            fixed (T* scores = scratch)
            {
                for (long bh = i0; bh < i1; bh++)
                {
                    long bi = bh / h; int hi = (int)(bh % h), kvh = hi / group;
                    T* qbase = pq + bi * qb + hi * qh, kbase = pk + bi * kb + kvh * khs, vbase = pv + bi * vb + kvh * vhs;
                    T* obase = po + (bi * t * h + hi) * d;
                    // scores (T,S) = scale * Q (T,D) @ K^T
                    GemmT(false, true, t, s, d, sc, qbase, qt, kbase, ks, T.Zero, scores, s);
                    for (int ti = 0; ti < t; ti++)
                    {
                        T* row = scores + (long)ti * s;
                        int count = s - t + ti + 1; // keys this query sees: first .. count - 1
                        int first = FirstVisibleKey(count - 1, window);
                        new Span<T>(row, first).Clear();
                        row += first;
                        T max = RowKernels.Max(row, count - first);
                        T sum = RowKernels.ExpShiftedAndSum(row, row, max, count - first);
                        RowKernels.Scale(row, T.One / sum, count - first);
                        new Span<T>(row + count - first, s - count).Clear();
                        if (pl != null) pl[(bi * h + hi) * t + ti] = max + T.Log(sum);
                    }
                    // out (T,D) = P (T,S) @ V (S,D), written into the (B,T,H,D) output with row stride H*D
                    GemmT(false, false, t, d, s, T.One, scores, s, vbase, vs, T.Zero, obase, (long)h * d);
                }
            }
        });
    }

    private void AttentionBackwardGemm<T>(Tensor q, Tensor k, Tensor v, Tensor output, Tensor dOutput,
        T* pq, T* pk, T* pv, T* po, T* pdo, T* pl, T* pdq, T* pdk, T* pdv, Tensor dq, Tensor dk, Tensor dv, T sc, int window)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        int b = q.Shape[0], t = q.Shape[1], h = q.Shape[2], d = q.Shape[3], kh = k.Shape[2];
        int group = h / kh;
        long qt = q.Stride(1), ks = k.Stride(1), vs = v.Stride(1), ot = output.Stride(1), dot = dOutput.Stride(1);
        long dqt = dq.Stride(1), dks = dk.Stride(1), dvs = dv.Stride(1);
        // Work items are (batch, kv head): the query heads of one group add into the same dk, dv rows.
        ParallelChunks((long)b * kh, (long)group * t * t * d * 5, (i0, i1) =>
        {
            var scratchP = new T[(long)t * t];
            var scratchDs = new T[(long)t * t];
            fixed (T* p = scratchP) fixed (T* ds = scratchDs)
            {
                for (long bk = i0; bk < i1; bk++)
                {
                    long bi = bk / kh; int kvh = (int)(bk % kh);
                    T* kbase = pk + bi * k.Stride(0) + kvh * k.Stride(2), vbase = pv + bi * v.Stride(0) + kvh * v.Stride(2);
                    T* dkbase = pdk + bi * dk.Stride(0) + kvh * dk.Stride(2), dvbase = pdv + bi * dv.Stride(0) + kvh * dv.Stride(2);
                    for (int j = 0; j < t; j++) { new Span<T>(dkbase + j * dks, d).Clear(); new Span<T>(dvbase + j * dvs, d).Clear(); }
                    for (int hi = kvh * group; hi < (kvh + 1) * group; hi++)
                    {
                        T* qbase = pq + bi * q.Stride(0) + hi * q.Stride(2);
                        T* obase = po + bi * output.Stride(0) + hi * output.Stride(2);
                        T* dobase = pdo + bi * dOutput.Stride(0) + hi * dOutput.Stride(2);
                        T* dqbase = pdq + bi * dq.Stride(0) + hi * dq.Stride(2);
                        T* lse = pl + (bi * h + hi) * t;
                        // P = exp(scale Q K^T - lse), causal; dP = dO V^T
                        GemmT(false, true, t, t, d, sc, qbase, qt, kbase, ks, T.Zero, p, t);
                        GemmT(false, true, t, t, d, T.One, dobase, dot, vbase, vs, T.Zero, ds, t);
                        for (int ti = 0; ti < t; ti++)
                        {
                            T* prow = p + (long)ti * t, dsrow = ds + (long)ti * t;
                            T delta = RowKernels.Dot(dobase + ti * dot, obase + ti * ot, d);
                            T l = lse[ti];
                            int first = FirstVisibleKey(ti, window);
                            for (int j = 0; j < first; j++) { prow[j] = T.Zero; dsrow[j] = T.Zero; }
                            for (int j = first; j <= ti; j++)
                            {
                                T pj = T.Exp(prow[j] - l);
                                prow[j] = pj;
                                dsrow[j] = pj * (dsrow[j] - delta) * sc;
                            }
                            for (int j = ti + 1; j < t; j++) { prow[j] = T.Zero; dsrow[j] = T.Zero; }
                        }
                        // dQ = dS K (written), dK += dS^T Q, dV += P^T dO
                        GemmT(false, false, t, d, t, T.One, ds, t, kbase, ks, T.Zero, dqbase, dqt);
                        GemmT(true, false, t, d, t, T.One, ds, t, qbase, qt, T.One, dkbase, dks);
                        GemmT(true, false, t, d, t, T.One, p, t, dobase, dot, T.One, dvbase, dvs);
                    }
                }
            }
        });
    }
}
