using System.Numerics;
using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// Rotary embedding and causal grouped-query attention, forward and backward.
public sealed unsafe partial class CpuBackend
{
    /// <summary>From this query length on, attention computes scores and products per head with Gemm; below it, dot-product loops.</summary>
    private const int GemmAttentionMinLength = 32;

    /// <inheritdoc/>
    public void Rope(Tensor x, int startPosition, RopeFrequencies frequencies, bool inverse = false)
    {
        const string op = nameof(Rope);
        ArgumentNullException.ThrowIfNull(x);
        RequireRank(op, nameof(x), x, 4, "(B,T,H,D)");
        RopeCore(x, startPosition, frequencies, startPosition + x.Shape[1], inverse);
        KeepOperandsAlive(x);
    }

    /// <summary>Rope at positions startPosition + t with the frequencies of a call reaching <paramref name="length"/> positions.</summary>
    private void RopeCore(Tensor x, int startPosition, RopeFrequencies frequencies, int length, bool inverse)
    {
        const string op = nameof(Rope);
        ArgumentNullException.ThrowIfNull(frequencies);
        RequireComputeDType(op, nameof(x), x);
        RequireRank(op, nameof(x), x, 4, "(B,T,H,D)");
        RequireUnitLastStride(op, nameof(x), x);
        int d = x.Shape[3];
        if (d % 2 != 0) throw new ArgumentException($"{op}: head size D must be even, got x {x.Shape}", nameof(x));
        if (startPosition < 0) throw new ArgumentOutOfRangeException(nameof(startPosition), $"{op}: start position {startPosition} is negative");
        frequencies.RefuseMixedLongCall(op, startPosition, length);
        var inverseFrequencies = frequencies.At(d, length);
        if (x.DType == DType.F32) RopeTyped<float>(x, startPosition, inverseFrequencies, frequencies.AttentionFactor, inverse);
        else RopeTyped<double>(x, startPosition, inverseFrequencies, frequencies.AttentionFactor, inverse);
    }

    private void RopeTyped<T>(Tensor x, int startPosition, double[] inverseFrequencies, double attentionFactor, bool inverse)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        // Pairs (i, i + R/2) of the first R = 2 x (table length) channels of each head; channels R.. pass through (partial rotary).
        int b = x.Shape[0], t = x.Shape[1], h = x.Shape[2], d = x.Shape[3], half = inverseFrequencies.Length;
        // Angles in double: positions reach 1e5 and more, where a float angle loses the low bits. cos and sin are scaled
        // in double and rounded once (the CUDA kernels' rope_angle_at does the same).
        var cos = new T[(long)t * half];
        var sin = new T[(long)t * half];
        double sign = inverse ? -1 : 1;
        for (int i = 0; i < half; i++)
        {
            double freq = inverseFrequencies[i];
            for (int p = 0; p < t; p++)
            {
                double angle = sign * (startPosition + p) * freq;
                cos[(long)p * half + i] = T.CreateTruncating(Math.Cos(angle) * attentionFactor);
                sin[(long)p * half + i] = T.CreateTruncating(Math.Sin(angle) * attentionFactor);
            }
        }
        T* px = Ptr<T>(x);
        long sb = x.Stride(0), st = x.Stride(1), sh = x.Stride(2);
        ParallelChunks((long)b * t, (long)h * d * 3, (r0, r1) =>
        {
            fixed (T* pc = cos) fixed (T* ps = sin)
            {
                for (long r = r0; r < r1; r++)
                {
                    long bi = r / t; int ti = (int)(r % t);
                    T* c = pc + (long)ti * half, s = ps + (long)ti * half;
                    for (int hi = 0; hi < h; hi++)
                    {
                        T* v = px + bi * sb + ti * st + hi * sh;
                        for (int i = 0; i < half; i++)
                        {
                            T x1 = v[i], x2 = v[i + half];
                            v[i] = x1 * c[i] - x2 * s[i];
                            v[i + half] = x2 * c[i] + x1 * s[i];
                        }
                    }
                }
            }
        });
    }

    /// <inheritdoc/>
    public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor? logSumExp, double scale, int window = 0, double softCap = 0)
    {
        const string op = nameof(AttentionForward);
        var (b, t, h, s, kh, d) = CheckAttention(op, q, k, v);
        RequireWindow(op, window);
        RequireSoftCap(op, softCap);
        RequireShape(op, nameof(output), output, q.Shape);
        RequireDType(op, nameof(output), output, q.DType);
        RequireContiguous(op, nameof(output), output);
        if (logSumExp is not null)
        {
            RequireShape(op, nameof(logSumExp), logSumExp, new Shape(b, h, t));
            RequireDType(op, nameof(logSumExp), logSumExp, q.DType);
            RequireContiguous(op, nameof(logSumExp), logSumExp);
        }
        if (q.DType == DType.F32) AttentionForwardTyped<float>(q, k, v, output, logSumExp, scale, window, softCap);
        else AttentionForwardTyped<double>(q, k, v, output, logSumExp, scale, window, softCap);
        KeepOperandsAlive(q, k, v, output, logSumExp);
    }

    /// <summary>The oldest key a query at position <paramref name="position"/> sees: 0, or position - window + 1 with a
    /// sliding window (transformers' rule: key j is visible when position - window &lt; j &lt;= position).</summary>
    private static int FirstVisibleKey(int position, int window) => window > 0 ? Math.Max(0, position - window + 1) : 0;

    private static void RequireWindow(string op, int window)
    {
        if (window < 0) throw new ArgumentOutOfRangeException(nameof(window), window, $"{op}: sliding window must be 0 (none) or positive");
    }

    private static void RequireSoftCap(string op, double softCap)
    {
        if (!(softCap >= 0) || double.IsInfinity(softCap))
            throw new ArgumentOutOfRangeException(nameof(softCap), softCap, $"{op}: soft cap must be 0 (none) or positive and finite");
    }

    /// <summary>The score of scaled dot product <paramref name="raw"/>: itself, or cap tanh(raw / cap) with a soft cap.</summary>
    private static T Capped<T>(T raw, T cap, T inverseCap) where T : IFloatingPointIeee754<T> =>
        cap == T.Zero ? raw : cap * T.Tanh(raw * inverseCap);

    private void AttentionForwardTyped<T>(Tensor q, Tensor k, Tensor v, Tensor output, Tensor? logSumExp, double scale, int window,
        double softCap) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int b = q.Shape[0], t = q.Shape[1], h = q.Shape[2], d = q.Shape[3], s = k.Shape[1], kh = k.Shape[2];
        int group = h / kh;
        T* pq = Ptr<T>(q), pk = Ptr<T>(k), pv = Ptr<T>(v), po = Ptr<T>(output);
        T* pl = logSumExp is null ? null : Ptr<T>(logSumExp);
        long qb = q.Stride(0), qt = q.Stride(1), qh = q.Stride(2);
        long kb = k.Stride(0), ks = k.Stride(1), khs = k.Stride(2);
        long vb = v.Stride(0), vs = v.Stride(1), vhs = v.Stride(2);
        T sc = T.CreateTruncating(scale);
        T cap = T.CreateTruncating(softCap), inverseCap = softCap > 0 ? T.One / cap : T.Zero;
        if (t >= GemmAttentionMinLength && softCap == 0)   // the GEMM path does not cap; capped scores take the loop
        {
            AttentionForwardGemm(pq, pk, pv, po, pl, b, t, h, s, kh, d, qb, qt, qh, kb, ks, khs, vb, vs, vhs, sc, window);
            return;
        }
        ParallelChunks((long)b * h, (long)t * s * d, (i0, i1) =>
        {
            var scores = new T[s];
            fixed (T* p = scores)
            {
                for (long bh = i0; bh < i1; bh++)
                {
                    long bi = bh / h; int hi = (int)(bh % h), kvh = hi / group;
                    T* kbase = pk + bi * kb + kvh * khs, vbase = pv + bi * vb + kvh * vhs;
                    for (int ti = 0; ti < t; ti++)
                    {
                        T* qr = pq + bi * qb + ti * qt + hi * qh;
                        T* or = po + ((bi * t + ti) * h + hi) * d;
                        int last = s - t + ti; // the newest key this query sees
                        int first = FirstVisibleKey(last, window);
                        T max = T.NegativeInfinity;
                        for (int j = first; j <= last; j++)
                        {
                            T sj = Capped(sc * RowKernels.Dot(qr, kbase + j * ks, d), cap, inverseCap);
                            p[j] = sj;
                            if (sj > max) max = sj;
                        }
                        T sum = RowKernels.ExpShiftedAndSum(p + first, p + first, max, last + 1 - first);
                        T inv = T.One / sum;
                        new Span<T>(or, d).Clear();
                        for (int j = first; j <= last; j++) RowKernels.Axpy(p[j] * inv, vbase + j * vs, or, d);
                        if (pl != null) pl[(bi * h + hi) * t + ti] = max + T.Log(sum);
                    }
                }
            }
        });
    }

    /// <inheritdoc/>
    public void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor dOutput, Tensor logSumExp,
        Tensor dq, Tensor dk, Tensor dv, double scale, int window = 0, Tensor? columnSums = null, double softCap = 0)
    {
        const string op = nameof(AttentionBackward);
        var (b, t, h, s, kh, d) = CheckAttention(op, q, k, v);
        RequireWindow(op, window);
        RequireSoftCap(op, softCap);
        if (s != t) throw new ArgumentException($"{op}: needs S == T (training), got q {q.Shape} and k {k.Shape}", nameof(k));
        foreach (var (name, tensor) in new[] { (nameof(output), output), (nameof(dOutput), dOutput), (nameof(dq), dq) })
        {
            ArgumentNullException.ThrowIfNull(tensor, name);
            RequireShape(op, name, tensor, q.Shape);
            RequireDType(op, name, tensor, q.DType);
            RequireUnitLastStride(op, name, tensor);
        }
        foreach (var (name, tensor) in new[] { (nameof(dk), dk), (nameof(dv), dv) })
        {
            ArgumentNullException.ThrowIfNull(tensor, name);
            RequireShape(op, name, tensor, k.Shape);
            RequireDType(op, name, tensor, q.DType);
            RequireUnitLastStride(op, name, tensor);
        }
        RequireShape(op, nameof(logSumExp), logSumExp, new Shape(b, h, t));
        RequireDType(op, nameof(logSumExp), logSumExp, q.DType);
        RequireContiguous(op, nameof(logSumExp), logSumExp);
        if (columnSums is not null)
        {
            RequireShape(op, nameof(columnSums), columnSums, new Shape((h + 2 * kh) * d));
            if (columnSums.DType is not (DType.F32 or DType.F64))
                throw new ArgumentException($"{op}: columnSums must be F32 or F64, got {columnSums.DType}", nameof(columnSums));
            RequireContiguous(op, nameof(columnSums), columnSums);
        }
        if (q.DType == DType.F32) AttentionBackwardTyped<float>(q, k, v, output, dOutput, logSumExp, dq, dk, dv, scale, window, softCap);
        else AttentionBackwardTyped<double>(q, k, v, output, dOutput, logSumExp, dq, dk, dv, scale, window, softCap);
        if (columnSums is not null)
        {
            if (q.DType == DType.F32 && columnSums.DType == DType.F32) AddHeadColumnSums<float, float>(columnSums, dq, dk, dv);
            else if (q.DType == DType.F32) AddHeadColumnSums<float, double>(columnSums, dq, dk, dv);
            else if (columnSums.DType == DType.F32) AddHeadColumnSums<double, float>(columnSums, dq, dk, dv);
            else AddHeadColumnSums<double, double>(columnSums, dq, dk, dv);
        }
        KeepOperandsAlive(q, k, v, output, dOutput, logSumExp, dq, dk, dv, columnSums);
    }

    /// <summary>sums ((H + 2K) D) += the column sums over (B, T) of dq's (H, D), dk's and dv's (K, D) columns, in that order.</summary>
    private void AddHeadColumnSums<T, TSum>(Tensor sums, params Tensor[] parts)
        where T : unmanaged, IFloatingPointIeee754<T> where TSum : unmanaged, IFloatingPointIeee754<TSum>
    {
        TSum* ps = Ptr<TSum>(sums);
        foreach (var x in parts)
        {
            int b = x.Shape[0], t = x.Shape[1], h = x.Shape[2], d = x.Shape[3];
            T* px = Ptr<T>(x);
            for (int hi = 0; hi < h; hi++)
                for (int di = 0; di < d; di++)
                {
                    T s = T.Zero;
                    for (int bi = 0; bi < b; bi++)
                        for (int ti = 0; ti < t; ti++) s += px[bi * x.Stride(0) + ti * x.Stride(1) + hi * x.Stride(2) + di];
                    ps[hi * d + di] += TSum.CreateTruncating(s);
                }
            ps += h * d;
        }
    }

    private void AttentionBackwardTyped<T>(Tensor q, Tensor k, Tensor v, Tensor output, Tensor dOutput, Tensor logSumExp,
        Tensor dq, Tensor dk, Tensor dv, double scale, int window, double softCap) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int b = q.Shape[0], t = q.Shape[1], h = q.Shape[2], d = q.Shape[3], kh = k.Shape[2];
        int group = h / kh;
        T* pq = Ptr<T>(q), pk = Ptr<T>(k), pv = Ptr<T>(v), po = Ptr<T>(output), pdo = Ptr<T>(dOutput);
        T* pl = Ptr<T>(logSumExp), pdq = Ptr<T>(dq), pdk = Ptr<T>(dk), pdv = Ptr<T>(dv);
        T sc = T.CreateTruncating(scale);
        T cap = T.CreateTruncating(softCap), inverseCap = softCap > 0 ? T.One / cap : T.Zero;
        if (t >= GemmAttentionMinLength && softCap == 0)   // the GEMM path does not cap; capped scores take the loop
        {
            AttentionBackwardGemm(q, k, v, output, dOutput, pq, pk, pv, po, pdo, pl, pdq, pdk, pdv, dq, dk, dv, sc, window);
            return;
        }
        // Work items are (batch, kv head): the query heads of one group add into the same dk, dv rows.
        ParallelChunks((long)b * kh, (long)group * t * t * d * 2, (i0, i1) =>
        {
            var probs = new T[t];
            fixed (T* p = probs)
            {
                for (long bk = i0; bk < i1; bk++)
                {
                    long bi = bk / kh; int kvh = (int)(bk % kh);
                    T* kbase = pk + bi * k.Stride(0) + kvh * k.Stride(2), vbase = pv + bi * v.Stride(0) + kvh * v.Stride(2);
                    T* dkbase = pdk + bi * dk.Stride(0) + kvh * dk.Stride(2), dvbase = pdv + bi * dv.Stride(0) + kvh * dv.Stride(2);
                    long ks = k.Stride(1), vs = v.Stride(1), dks = dk.Stride(1), dvs = dv.Stride(1);
                    for (int j = 0; j < t; j++) { new Span<T>(dkbase + j * dks, d).Clear(); new Span<T>(dvbase + j * dvs, d).Clear(); }
                    for (int hi = kvh * group; hi < (kvh + 1) * group; hi++)
                    {
                        for (int ti = 0; ti < t; ti++)
                        {
                            T* qr = pq + bi * q.Stride(0) + ti * q.Stride(1) + hi * q.Stride(2);
                            T* or = po + bi * output.Stride(0) + ti * output.Stride(1) + hi * output.Stride(2);
                            T* dor = pdo + bi * dOutput.Stride(0) + ti * dOutput.Stride(1) + hi * dOutput.Stride(2);
                            T* dqr = pdq + bi * dq.Stride(0) + ti * dq.Stride(1) + hi * dq.Stride(2);
                            T lse = pl[(bi * h + hi) * t + ti];
                            // delta = sum_j p_j dP_j = dO . O
                            T delta = RowKernels.Dot(dor, or, d);
                            new Span<T>(dqr, d).Clear();
                            for (int j = FirstVisibleKey(ti, window); j <= ti; j++)
                            {
                                T raw = sc * RowKernels.Dot(qr, kbase + j * ks, d);
                                T sj = Capped(raw, cap, inverseCap);
                                T pj = T.Exp(sj - lse);
                                T dpj = RowKernels.Dot(dor, vbase + j * vs, d);
                                // dL/d(raw): softmax's pj (dpj - delta), times the cap's derivative 1 - tanh^2 = 1 - (sj / cap)^2.
                                T dsj = pj * (dpj - delta) * sc;
                                if (cap != T.Zero) dsj *= T.One - sj * inverseCap * (sj * inverseCap);
                                RowKernels.Axpy(dsj, kbase + j * ks, dqr, d);
                                RowKernels.Axpy(dsj, qr, dkbase + j * dks, d);
                                RowKernels.Axpy(pj, dor, dvbase + j * dvs, d);
                            }
                        }
                    }
                }
            }
        });
    }

    /// <summary>Checks q (B,T,H,D), k and v (B,S,K,D) and returns the sizes.</summary>
    private static (int B, int T, int H, int S, int K, int D) CheckAttention(string op, Tensor q, Tensor k, Tensor v)
    {
        ArgumentNullException.ThrowIfNull(q); ArgumentNullException.ThrowIfNull(k); ArgumentNullException.ThrowIfNull(v);
        RequireComputeDType(op, nameof(q), q);
        RequireRank(op, nameof(q), q, 4, "(B,T,H,D)");
        RequireRank(op, nameof(k), k, 4, "(B,S,K,D)");
        RequireDType(op, nameof(k), k, q.DType);
        RequireDType(op, nameof(v), v, q.DType);
        RequireShape(op, nameof(v), v, k.Shape);
        RequireUnitLastStride(op, nameof(q), q);
        RequireUnitLastStride(op, nameof(k), k);
        RequireUnitLastStride(op, nameof(v), v);
        int b = q.Shape[0], t = q.Shape[1], h = q.Shape[2], d = q.Shape[3];
        int s = k.Shape[1], kh = k.Shape[2];
        if (k.Shape[0] != b || k.Shape[3] != d)
            throw new ArgumentException($"{op}: k {k.Shape} must be (B,S,K,D) with B and D of q {q.Shape}", nameof(k));
        if (kh == 0 || h % kh != 0)
            throw new ArgumentException($"{op}: query heads H={h} (q {q.Shape}) must be a multiple of kv heads K={kh} (k {k.Shape})", nameof(k));
        if (s < t)
            throw new ArgumentException($"{op}: key length S={s} (k {k.Shape}) must be at least query length T={t} (q {q.Shape})", nameof(k));
        return (b, t, h, s, kh, d);
    }
}
