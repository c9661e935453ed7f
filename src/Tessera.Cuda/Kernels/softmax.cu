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

// Merges the (max, sum) pairs of a warp's 32 lanes (sums relative to each lane's max; lanes without one hold (-inf, 0)) into
// lane 0: the max over the lanes, then each sum rescaled to it and added in a fixed tree, so the bits depend only on the
// pairs and their lanes. Every lane must call it.
__device__ __forceinline__ void warp_merge_ordered(float& m, float& s)
{
    const float mm = warp_max(m);
    float r = m == NEG_INF ? 0.f : s * fast_exp2((m - mm) * LOG2E);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) r += __shfl_down_sync(FULL_MASK, r, o);
    m = mm; s = r;
}

template <typename T, int K> __device__ __forceinline__ void cluster_row_load(Bytes16 (&raw)[K], const T* x, int first, int end)
{
#pragma unroll
    for (int k = 0; k < K; k++)
    {
        const int q = first + (int)threadIdx.x + k * (int)blockDim.x;
        if (q < end) raw[k] = *reinterpret_cast<const Bytes16*>(x + (i64)q * Vec16<T>::N);
    }
}

// The same loss and gradient with each row split over a cluster of C CTAs (sm_90 thread-block clusters): CTA r of a
// cluster takes the r-th of C equal runs of the row's whole 16-byte vectors, the last one also the V % N tail elements. Each
// thread keeps its K vectors of the row in registers; the CTAs' (max, sum) statistics meet through distributed shared
// memory, where warp 0 of each CTA merges them in a fixed tree (warp_merge_ordered), so every CTA of the row gets the same
// bits; the gradient is written from the registers. The clusters are persistent (grid = clusters * C, as many as are
// resident at once): a cluster walks rows row0, row0 + clusters, ..., and loads its next row's vectors into a second set of
// registers before working on the current one, so that the loads stay in flight across the row's reductions and barriers.
// The one-CTA kernel above reads a row twice (its second read mostly from L2): a row of 128,256 BF16 logits outgrows what a
// CTA can hold beside enough others on its SM to keep DRAM busy. Rows and strides 16-byte aligned; a CTA's share of a row
// at most K * blockDim.x vectors. A negative target ignores the row (loss 0, gradient 0; every CTA of the cluster skips the
// row's barriers), a target >= V gives a NaN loss.
template <typename T, int K> __device__ void cross_entropy_cluster_rows(const T* x0, i64 xs, const int* targets, float* losses,
                                                                       T* dl0, i64 ds, i64 rows, int V, float scale)
{
    constexpr int N = Vec16<T>::N;
    CLUSTER_SHARED_FLOATS(stats, 68);   // [0, 64): the warps' (max, sum); [64, 66): this CTA's, read by the others; [66, 68): the row's
    const unsigned ctas = cluster_ctas(), rank = cluster_rank();
    const i64 clusters = gridDim.x / ctas;
    const int vecs = V / N, per = (vecs + (int)ctas - 1) / (int)ctas;
    const int first = (int)rank * per, end = min(first + per, vecs);
    const int ti = vecs * N + threadIdx.x;
    const bool tail = rank == ctas - 1 && ti < V;   // at most N - 1 threads, one element each
    i64 row = blockIdx.x / ctas;
    Bytes16 cur[K], nxt[K];
    if (row < rows) cluster_row_load<T, K>(cur, x0 + row * xs, first, end);
    for (; row < rows; row += clusters)
    {
        const T* x = x0 + row * xs;
        T* dl = dl0 ? dl0 + row * ds : nullptr;
        if (row + clusters < rows) cluster_row_load<T, K>(nxt, x + clusters * xs, first, end);
        const int target = targets[row];
        if (target < 0)
        {
            if (rank == 0 && threadIdx.x == 0) losses[row] = 0.f;
            if (dl)
            {
                float z[N];
#pragma unroll
                for (int j = 0; j < N; j++) z[j] = 0.f;
                for (int q = first + threadIdx.x; q < end; q += blockDim.x) store16(dl + (i64)q * N, z);
                if (tail) dl[ti] = from_f<T>(0.f);
            }
        }
        else
        {
            const bool inRange = target < V;
            // Read before the first cluster barrier: no CTA writes the gradient (which may alias x) before every CTA has arrived.
            const float xt = rank == 0 && threadIdx.x == 0 && inRange ? to_f(x[target]) : 0.f;
            const float tv = tail ? to_f(x[ti]) : NEG_INF;
            // The warp's max first, so that each thread sums against it and the warp's sum is a plain sum (no rescaling per
            // thread); the warps' (max, sum) pairs are merged by warp 0, and the cluster's CTAs' pairs likewise (warp_merge_ordered).
            float m = tv;
#pragma unroll
            for (int k = 0; k < K; k++)
                if (first + (int)threadIdx.x + k * (int)blockDim.x < end)
                {
                    float a[N];
                    unpack16<T>(cur[k], a);
#pragma unroll
                    for (int j = 0; j < N; j++) m = fmaxf(m, a[j]);
                }
            m = warp_max(m);
            float s = 0.f;
            if (m != NEG_INF)
            {
                const float ml = m * LOG2E;
#pragma unroll
                for (int k = 0; k < K; k++)
                    if (first + (int)threadIdx.x + k * (int)blockDim.x < end)
                    {
                        float a[N];
                        unpack16<T>(cur[k], a);
#pragma unroll
                        for (int j = 0; j < N; j++) s += fast_exp2(fmaf(a[j], LOG2E, -ml));
                    }
                if (tail) s += fast_exp2(fmaf(tv, LOG2E, -ml));
            }
            s = warp_sum(s);
            if ((threadIdx.x & 31) == 0) { stats[2 * (threadIdx.x >> 5)] = m; stats[2 * (threadIdx.x >> 5) + 1] = s; }
            __syncthreads();
            if (threadIdx.x < 32)
            {
                const int lane = threadIdx.x, warps = blockDim.x >> 5;
                float wm = lane < warps ? stats[2 * lane] : NEG_INF, ws = lane < warps ? stats[2 * lane + 1] : 0.f;
                warp_merge_ordered(wm, ws);
                if (lane == 0) { stats[64] = wm; stats[65] = ws; }
            }
            cluster_arrive();   // release: stats[64, 66) and the row's reads of x come before any CTA of the row goes on
            cluster_wait();
            if (threadIdx.x < 32)
            {
                const int lane = threadIdx.x;
                float cm = NEG_INF, cs = 0.f;
                if (lane < (int)ctas) cluster_load2(stats + 64, lane, cm, cs);
                warp_merge_ordered(cm, cs);
                if (lane == 0) { stats[66] = cm; stats[67] = cs; }
            }
            cluster_arrive();   // done reading the others' statistics; the wait below keeps this CTA's until they are too
            __syncthreads();
            m = stats[66]; s = stats[67];
            if (rank == 0 && threadIdx.x == 0) losses[row] = inRange ? logf(s) + m - xt : QNAN;
            if (dl)
            {
                const float c = m * LOG2E + log2f(s);
#pragma unroll
                for (int k = 0; k < K; k++)
                {
                    const int q = first + (int)threadIdx.x + k * (int)blockDim.x;
                    if (q < end)
                    {
                        float v[N];
                        unpack16<T>(cur[k], v);
#pragma unroll
                        for (int j = 0; j < N; j++) v[j] = fast_exp2(fmaf(v[j], LOG2E, -c)) * scale;
                        const int at = q * N;
                        if ((unsigned)(target - at) < (unsigned)N)
#pragma unroll
                            for (int j = 0; j < N; j++) if (at + j == target) v[j] -= scale;
                        store16(dl + at, v);
                    }
                }
                if (tail)
                {
                    const float p = expf(tv - m) / s;
                    dl[ti] = from_f<T>((p - (ti == target ? 1.f : 0.f)) * scale);
                }
            }
            cluster_wait();     // every CTA has read this row's statistics: the next row may overwrite them
        }
#pragma unroll
        for (int k = 0; k < K; k++) cur[k] = nxt[k];
    }
}

// K = 4 or 8 16-byte vectors a thread (twice that held with the next row's), in CTAs of up to 1,024 or 512 threads: a CTA
// holds up to 4,096 vectors of a row, so a cluster of 8 takes rows of up to 262,144 BF16 logits. More vectors a thread
// spread each row's fixed work (the target, the reductions, the barriers) over more elements, in fewer threads.
#define CROSS_ENTROPY_CLUSTER(n, T, K, B)                                                                               \
    extern "C" __global__ void __launch_bounds__(B) cross_entropy_cluster_##n##_v##K(                                 \
        const T* x, i64 xs, const int* targets, float* losses, T* dl, i64 ds, i64 rows, int V, float scale)           \
    {                                                                                                                  \
        cross_entropy_cluster_rows<T, K>(x, xs, targets, losses, dl, ds, rows, V, scale);                              \
    }
#define CROSS_ENTROPY_CLUSTERS(n, T) CROSS_ENTROPY_CLUSTER(n, T, 4, 1024) CROSS_ENTROPY_CLUSTER(n, T, 8, 512)
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
FOR_FLOAT_TYPES(CROSS_ENTROPY_CLUSTERS)
#endif

#define SOFTMAX(n, T)                                                                                  \
    extern "C" __global__ void softmax_##n(const T* x, T* out, int V) { softmax_row<T>(x, out, V); }  \
    extern "C" __global__ void cross_entropy_##n(const T* x, i64 xs, const int* targets, float* losses, \
                                                 T* dl, i64 ds, int V, float scale, int aligned,       \
                                                 int staged)                                            \
    {                                                                                                  \
        cross_entropy_row<T>(x, xs, targets, losses, dl, ds, V, scale, aligned, staged);               \
    }
FOR_FLOAT_TYPES(SOFTMAX)
