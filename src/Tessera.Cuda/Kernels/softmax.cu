// Row softmax and fused softmax cross-entropy: one block per row, fp32 math.

template <typename T> __device__ void softmax_row(const T* x, T* out, int V)
{
    i64 row = blockIdx.x;
    x += row * V; out += row * V;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, to_f(x[i]));
    m = block_max(m);
    float s = 0.f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(to_f(x[i]) - m);
    s = block_sum(s);
    float inv = 1.f / s;
    for (int i = threadIdx.x; i < V; i += blockDim.x) out[i] = from_f<T>(expf(to_f(x[i]) - m) * inv);
}

// losses[row] = logsumexp(x) - x[target]; dlogits (may alias logits) = (softmax - onehot) * scale.
// Rows are xs (logits) and ds (dlogits) elements apart; the V columns of a row are contiguous.
// One read for the statistics (online max and sum), one read and one write for the gradient;
// 16-byte loads and stores when `aligned` (row starts and strides 16-byte aligned).
// With `staged` > 0 (aligned rows only) the first `staged` 16-byte vectors of the row are kept, as read, in dynamic shared
// memory (staged_row) during the first read, and the gradient pass takes them from there: a row of 128,256 BF16 logits is
// 256 KiB, and without staging its second read comes from DRAM again (the blocks in flight stream more than the L2 holds
// between a row's two reads). The arithmetic is the same either way, so are the bits.
// A negative target ignores the row (loss 0, gradient 0); a target >= V gives a NaN loss.
extern __shared__ Bytes16 staged_row[];
template <typename T> __device__ void cross_entropy_row(const T* x, i64 xs, const int* targets, float* losses, T* dl,
                                                        i64 ds, int V, float scale, int aligned, int staged)
{
    const int N = Vec16<T>::N;
    i64 row = blockIdx.x;
    x += row * xs;
    if (dl) dl += row * ds;
    int target = targets[row];
    if (target < 0)
    {
        if (threadIdx.x == 0) losses[row] = 0.f;
        if (dl) for (int i = threadIdx.x; i < V; i += blockDim.x) dl[i] = from_f<T>(0.f);
        return;
    }
    bool inRange = target < V;
    float xt = inRange ? to_f(x[target]) : 0.f; // read before any thread overwrites (dl may alias x)
    int vecEnd = aligned ? V / N * N : 0;
    // Statistics in the log2 domain: s = sum 2^(x log2e - ml) with ml = m log2e, each term one FFMA and one ex2.approx
    // (expf costs a multiply and range handling around the same instruction). Two vectors in flight per iteration,
    // one rescale check per pair.
    float m = NEG_INF, ml = NEG_INF, s = 0.f;
    // The next pair's loads are issued before this pair's arithmetic (four vectors in flight per thread: a staged row
    // leaves room for one block of 1,024 threads per SM, whose loads alone must cover the DRAM latency).
    const int stride = blockDim.x * N;
    int i = threadIdx.x * N;
    Bytes16 na, nb;
    if (i + stride < vecEnd)
    {
        na = *reinterpret_cast<const Bytes16*>(x + i);
        nb = *reinterpret_cast<const Bytes16*>(x + i + stride);
    }
    for (; i + stride < vecEnd; i += 2 * stride)
    {
        float a[N], b[N];
        const Bytes16 ra = na, rb = nb;
        if (i + 3 * stride < vecEnd)
        {
            na = *reinterpret_cast<const Bytes16*>(x + i + 2 * stride);
            nb = *reinterpret_cast<const Bytes16*>(x + i + 3 * stride);
        }
        const int qa = i / N, qb = qa + blockDim.x;   // the two vectors' indices in the row
        if (qa < staged) staged_row[qa] = ra;
        if (qb < staged) staged_row[qb] = rb;
        unpack16<T>(ra, a);
        unpack16<T>(rb, b);
        float vm = fmaxf(a[0], b[0]);
#pragma unroll
        for (int j = 1; j < N; j++) vm = fmaxf(vm, fmaxf(a[j], b[j]));
        if (vm > m) { s *= fast_exp2(ml - vm * LOG2E); m = vm; ml = vm * LOG2E; }
        if (m != NEG_INF)
        {
            float s0 = 0.f, s1 = 0.f;
#pragma unroll
            for (int j = 0; j < N; j++) { s0 += fast_exp2(fmaf(a[j], LOG2E, -ml)); s1 += fast_exp2(fmaf(b[j], LOG2E, -ml)); }
            s += s0 + s1;
        }
    }
    if (i < vecEnd)
    {
        float a[N];
        const Bytes16 ra = *reinterpret_cast<const Bytes16*>(x + i);
        if (i / N < staged) staged_row[i / N] = ra;
        unpack16<T>(ra, a);
        float vm = a[0];
#pragma unroll
        for (int j = 1; j < N; j++) vm = fmaxf(vm, a[j]);
        if (vm > m) { s *= fast_exp2(ml - vm * LOG2E); m = vm; ml = vm * LOG2E; }
        if (m != NEG_INF)
#pragma unroll
            for (int j = 0; j < N; j++) s += fast_exp2(fmaf(a[j], LOG2E, -ml));
    }
    for (int k = vecEnd + threadIdx.x; k < V; k += blockDim.x) online_add(m, s, to_f(x[k]));
    block_online(m, s); // its barriers also order every read above before the writes below
    if (threadIdx.x == 0) losses[row] = inRange ? logf(s) + m - xt : QNAN;
    if (dl)
    {
        // softmax * scale = 2^(x log2e - (m log2e + log2 s)) * scale: one FFMA, one ex2.approx and one multiply per
        // element; the target's -scale is applied only in the vector that holds it.
        const float c = m * LOG2E + log2f(s);
        for (int k = threadIdx.x * N; k < vecEnd; k += stride)
        {
            float v[N];
            const int q = k / N;
            unpack16<T>(q < staged ? staged_row[q] : *reinterpret_cast<const Bytes16*>(x + k), v);
#pragma unroll
            for (int j = 0; j < N; j++) v[j] = fast_exp2(fmaf(v[j], LOG2E, -c)) * scale;
            if ((unsigned)(target - k) < (unsigned)N)
#pragma unroll
                for (int j = 0; j < N; j++) if (k + j == target) v[j] -= scale;
            store16(dl + k, v);
        }
        float inv = 1.f / s;
        for (int k = vecEnd + threadIdx.x; k < V; k += blockDim.x)
        {
            float p = expf(to_f(x[k]) - m) * inv;
            dl[k] = from_f<T>((p - (k == target ? 1.f : 0.f)) * scale);
        }
    }
}

#define SOFTMAX(n, T)                                                                                  \
    extern "C" __global__ void softmax_##n(const T* x, T* out, int V) { softmax_row<T>(x, out, V); }  \
    extern "C" __global__ void cross_entropy_##n(const T* x, i64 xs, const int* targets, float* losses, \
                                                 T* dl, i64 ds, int V, float scale, int aligned,       \
                                                 int staged)                                            \
    {                                                                                                  \
        cross_entropy_row<T>(x, xs, targets, losses, dl, ds, V, scale, aligned, staged);               \
    }
FOR_FLOAT_TYPES(SOFTMAX)
