// Paged KV cache (serving): the append of a step's keys and values to their slots, and causal grouped-query attention
// of a flattened batch of sequences (prefill chunks and decode tokens together) reading each sequence's keys and values
// through its block table. Layouts (see Tessera.Tensors.PagedBatch):
//   pool   (Blocks, BlockSize, 2K, D): per position K key heads then K value heads, slot = block * BlockSize + offset
//   tables (B, MaxBlocks) I32, starts (B + 1) I32 (first row of each sequence), lengths (B) I32 (cached positions after
//   the step), slots (N) I32 (where row n's keys and values go; negative: padding, nothing written).

// ------------------------------------------------------------------------------ append
// pool[slots[n], r, d] = kv[n, r, d] for kv (N, R, D) with row stride kv_n and head stride kv_r (last dimension contiguous).
template <typename W> __device__ void paged_append(const W* kv, W* pool, const int* slots, int N, int R, int D, i64 kv_n, i64 kv_r)
{
    pdl_wait();
    const i64 n = (i64)N * R * D;
    GRID_STRIDE(i, n)
    {
        const int d = (int)(i % D);
        const i64 rest = i / D;
        const int r = (int)(rest % R);
        const int row = (int)(rest / R);
        const int slot = slots[row];
        if (slot >= 0) pool[((i64)slot * R + r) * D + d] = kv[row * kv_n + r * kv_r + d];
    }
}
#define PAGED_APPEND(name, wt)                                                                                         \
    extern "C" __global__ void paged_append_##name(const wt* kv, wt* pool, const int* slots, int N, int R, int D,     \
                                                   i64 kv_n, i64 kv_r)                                                 \
    {                                                                                                                  \
        paged_append<wt>(kv, pool, slots, N, R, D, kv_n, kv_r);                                                        \
    }
PAGED_APPEND(b2, unsigned short) PAGED_APPEND(b4, unsigned int) PAGED_APPEND(b8, unsigned long long)

// A quantized pool (common.cuh's quantized paged KV pools; Code Int8Code or Fp8Code): each (row n, head r) of kv quantized
// into pool[slots[n], r, :] with its scale in scales[slots[n], r]: scale = max|x| / Code::levels (127 or 448) by an IEEE
// fp32 division, then each code Code::encode(x, Code::row_factor(max|x|, scale)) with single fp32 roundings: for int8 the
// round-to-nearest-even of x * (127 / max|x|) clamped to [-127, 127], for E4M3 e4m3(x / scale) (Tessera.Tensors.PagedKvPool.
// QuantizeRow's operations, so the CPU backend writes the same bytes); a row of zeros gets scale 0 and zero codes, a row with
// a value that is not finite a NaN scale and zero codes. A warp per (row, head), grid-stride over them.
template <typename T, typename Code>
__device__ void paged_append_q(const T* kv, typename Code::Byte* pool, float* scales, const int* slots, int N, int R, int D, i64 kv_n, i64 kv_r)
{
    pdl_wait();
    const int lane = threadIdx.x & 31, warps_per_cta = blockDim.x >> 5;
    const i64 heads = (i64)N * R, stride = (i64)gridDim.x * warps_per_cta;
    for (i64 w = (i64)blockIdx.x * warps_per_cta + (threadIdx.x >> 5); w < heads; w += stride)
    {
        const int row = (int)(w / R), r = (int)(w % R);
        const int slot = slots[row];
        if (slot < 0) continue;                                    // warp-uniform: padding writes nothing
        const T* x = kv + row * kv_n + r * kv_r;
        float big = 0.f, bad = 0.f;
        for (int d = lane; d < D; d += 32)
        {
            const float v = to_f(x[d]);
            if ((__float_as_uint(v) & 0x7f800000u) == 0x7f800000u) bad = 1.f;
            big = fmaxf(big, fabsf(v));
        }
        big = warp_max(big);
        bad = warp_max(bad);
        const float scale = bad != 0.f ? QNAN : div_rn(big, Code::levels);
        const bool zeros = bad != 0.f || scale == 0.f;
        const float factor = zeros ? 0.f : Code::row_factor(big, scale);
        typename Code::Byte* q = pool + ((i64)slot * R + r) * D;
        for (int d = lane; d < D; d += 32)
            q[d] = zeros ? (typename Code::Byte)0 : Code::encode(to_f(x[d]), factor);
        if (lane == 0) scales[(i64)slot * R + r] = scale;
    }
}
// paged_append_<code>_<type> (code i8 or f8, in its own module: FOR_KV_CODES).
#define PAGED_APPEND_Q_TYPE(code, P, name, t)                                                                          \
    extern "C" __global__ void paged_append_##code##_##name(const t* kv, P* pool, float* scales, const int* slots,    \
                                                            int N, int R, int D, i64 kv_n, i64 kv_r)                   \
    {                                                                                                                  \
        paged_append_q<t, KvCode<P>::type>(kv, pool, scales, slots, N, R, D, kv_n, kv_r);                              \
    }
#define PAGED_APPEND_Q(code, P) FOR_FLOAT_TYPES_OF(PAGED_APPEND_Q_TYPE, code, P)
FOR_KV_CODES(PAGED_APPEND_Q)

// ------------------------------------------------------------------------------ attention
// Grid (N, H / G, splits): one CTA per new row, group of G query heads that share one kv head (G <= PA_MAX_G, so the group
// reads each key and value once), and split of the row's visible keys (flash-decoding: a few rows with long contexts would
// otherwise leave most SMs idle; the host picks splits from the row count and the table width). PA_WARPS warps divide the
// CTA's keys (warp w takes keys begin + w, begin + w + PA_WARPS, ...); for each key the 32 lanes hold D / 32 elements of the
// head (lane + 32 i: coalesced loads), a warp reduction gives the G scores, and each warp keeps an online softmax (running
// max m, sum l, accumulator) per head in base 2 (q pre-scaled by scale * log2 e). The warps' states merge through shared
// memory. With one split the CTA writes out = acc / l; with several it writes its state (acc, m, l) to
// partial (splits, N, H, D + 2) and paged_attention_combine merges the splits:
// out = sum_s acc_s 2^(m_s - M) / sum_s l_s 2^(m_s - M), M = max_s m_s. Rows before position 0 (padding) get zeros.
// window (Mistral's sliding window; 1 << 30 for none): the row at position pos sees keys pos - window + 1 .. pos only, and the
// splits divide those keys, so a block wholly left of the window is never looked up in the table nor read (a bounded cache
// returns such blocks to the pool and leaves their table entries stale).
// cap (Gemma 2's attn_logit_softcapping, 0 for none): each score becomes cap tanh(score / cap) before the softmax. Only this
// kernel caps; the host sends every capped call here.
#define PA_WARPS 4
#define PA_MAX_G 8
#define PA_MAX_DPL 8   // D <= 256

template <typename T, typename P = T>
__device__ void paged_attention(const T* q, const P* pool, T* out, float* partial, const int* tables, const int* starts,
                                const int* lengths, int B, int N, int H, int K, int D, int G, int block_size, int max_blocks,
                                i64 q_n, i64 q_h, float scale, int window, float cap, const float* scales = nullptr)
{
    extern __shared__ float pa_shared[];                           // (PA_WARPS, G, D + 2): acc, then m and l
    const int n = blockIdx.x, h0 = blockIdx.y * G, kvh = h0 / (H / K), split = blockIdx.z, splits = gridDim.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int dpl = (D + 31) / 32;
    pdl_wait();

    // The sequence that owns row n: the largest b with starts[b] <= n (starts[B] = N > n, so b < B and it is non-empty).
    int lo = 0, hi = B;
    while (lo < hi)
    {
        const int mid = (lo + hi + 1) >> 1;
        if (starts[mid] <= n) lo = mid; else hi = mid - 1;
    }
    const int b = lo;
    const int rows = starts[b + 1] - starts[b];
    const int pos = lengths[b] - rows + (n - starts[b]);
    const int first = max(0, pos - window + 1);                    // the oldest key in the row's window
    const int keys = pos + 1 - first;                              // positions first .. pos; none for padding rows
    const int chunk = keys > 0 ? (keys + splits - 1) / splits : 0;
    const int begin = first + split * chunk, end = min(pos + 1, begin + chunk);

    float qv[PA_MAX_G][PA_MAX_DPL], acc[PA_MAX_G][PA_MAX_DPL], m[PA_MAX_G], l[PA_MAX_G];
    const float qscale = scale * LOG2E, cap2 = cap * LOG2E;   // scores in base 2, and the soft cap with them (common.cuh)
#pragma unroll
    for (int g = 0; g < PA_MAX_G; g++)
    {
        m[g] = NEG_INF;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < PA_MAX_DPL; i++)
        {
            const int d = lane + 32 * i;
            qv[g][i] = (g < G && i < dpl && d < D) ? to_f(q[(i64)n * q_n + (i64)(h0 + g) * q_h + d]) * qscale : 0.f;
            acc[g][i] = 0.f;
        }
    }

    const i64 position_stride = (i64)2 * K * D;
    const int* table = tables + (i64)b * max_blocks;
    for (int j = begin + warp; j < end; j += PA_WARPS)
    {
        const i64 slot = (i64)table[j / block_size] * block_size + j % block_size;
        const P* kp = pool + slot * position_stride + (i64)kvh * D;
        const P* vp = kp + (i64)K * D;
        const float ks = kv_scale<P>(scales, slot * 2 * K + kvh), vs = kv_scale<P>(scales, slot * 2 * K + K + kvh);
        float kd[PA_MAX_DPL], vd[PA_MAX_DPL];
#pragma unroll
        for (int i = 0; i < PA_MAX_DPL; i++)
        {
            const int d = lane + 32 * i;
            const bool in = i < dpl && d < D;
            kd[i] = in ? kv_value(kp[d], ks) : 0.f;
            vd[i] = in ? kv_value(vp[d], vs) : 0.f;
        }
#pragma unroll
        for (int g = 0; g < PA_MAX_G; g++)
        {
            if (g >= G) break;
            float s = 0.f;
#pragma unroll
            for (int i = 0; i < PA_MAX_DPL; i++) s += qv[g][i] * kd[i];
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
            s = soft_cap(s, cap2);
            const float m_new = fmaxf(m[g], s);
            const float correction = fast_exp2(m[g] - m_new), p = fast_exp2(s - m_new);
            l[g] = l[g] * correction + p;
#pragma unroll
            for (int i = 0; i < PA_MAX_DPL; i++) acc[g][i] = acc[g][i] * correction + p * vd[i];
            m[g] = m_new;
        }
    }

    // Merge the warps' softmax states.
    const int row_floats = D + 2;
#pragma unroll
    for (int g = 0; g < PA_MAX_G; g++)
    {
        if (g >= G) break;
        float* s = pa_shared + ((i64)warp * G + g) * row_floats;
#pragma unroll
        for (int i = 0; i < PA_MAX_DPL; i++)
        {
            const int d = lane + 32 * i;
            if (i < dpl && d < D) s[d] = acc[g][i];
        }
        if (lane == 0) { s[D] = m[g]; s[D + 1] = l[g]; }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * D; e += blockDim.x)
    {
        const int g = e / D, d = e % D;
        float big = NEG_INF;
        for (int w = 0; w < PA_WARPS; w++) big = fmaxf(big, pa_shared[((i64)w * G + g) * row_floats + D]);
        float sum = 0.f, value = 0.f;
        if (big != NEG_INF)
            for (int w = 0; w < PA_WARPS; w++)
            {
                const float* s = pa_shared + ((i64)w * G + g) * row_floats;
                const float f = s[D] == NEG_INF ? 0.f : fast_exp2(s[D] - big);
                sum += s[D + 1] * f;
                value += s[d] * f;
            }
        if (splits == 1)
            out[(i64)n * H * D + (i64)(h0 + g) * D + d] = from_f<T>(sum > 0.f ? value / sum : 0.f);
        else
        {
            float* state = partial + (((i64)split * N + n) * H + h0 + g) * row_floats;
            state[d] = value;
            if (d == 0) { state[D] = big; state[D + 1] = sum; }
        }
    }
}
#define PAGED_ATTENTION(name, t)                                                                                          \
    extern "C" __global__ void __launch_bounds__(PA_WARPS * 32) paged_attention_##name(                                   \
        const t* q, const t* pool, t* out, float* partial, const int* tables, const int* starts, const int* lengths,      \
        int B, int N, int H, int K, int D, int G, int block_size, int max_blocks, i64 q_n, i64 q_h, float scale,         \
        int window, float cap)                                                                                            \
    {                                                                                                                     \
        paged_attention<t>(q, pool, out, partial, tables, starts, lengths, B, N, H, K, D, G, block_size, max_blocks,     \
                           q_n, q_h, scale, window, cap);                                                                 \
    }
FOR_FLOAT_TYPES(PAGED_ATTENTION)
// Over a quantized pool: paged_attention_<code>_<type> (code i8 or f8), the same arguments with the pool's codes and its
// scales last.
#define PAGED_ATTENTION_Q_TYPE(code, P, name, t)                                                                          \
    extern "C" __global__ void __launch_bounds__(PA_WARPS * 32) paged_attention_##code##_##name(                          \
        const t* q, const P* pool, t* out, float* partial, const int* tables, const int* starts,                          \
        const int* lengths, int B, int N, int H, int K, int D, int G, int block_size, int max_blocks, i64 q_n, i64 q_h,   \
        float scale, int window, float cap, const float* scales)                                                          \
    {                                                                                                                     \
        paged_attention<t, P>(q, pool, out, partial, tables, starts, lengths, B, N, H, K, D, G, block_size, max_blocks,   \
                              q_n, q_h, scale, window, cap, scales);                                                      \
    }
#define PAGED_ATTENTION_Q(code, P) FOR_FLOAT_TYPES_OF(PAGED_ATTENTION_Q_TYPE, code, P)
FOR_KV_CODES(PAGED_ATTENTION_Q)

// ------------------------------------------------------------------------------ rows left to the CUDA cores
// Row x of the batch's rows that belong to sequences of at most max_rows rows (every row when max_rows >= N; the others
// are paged_prefill's): its row index n and sequence b, or b = -1 when there are fewer than x + 1 such rows. Lets a grid
// over an upper bound of those rows skip the tensor-core rows without a CTA for each. Called by every thread of the CTA
// (it synchronizes when max_rows < N): warp 0 finds it (common.cuh's warp_find_item).
__device__ void paged_short_row(int x, const int* starts, int B, int N, int max_rows, int& n, int& b)
{
    if (max_rows >= N)
    {
        int lo = 0, hi = B;                                        // the largest b with starts[b] <= x (starts[B] = N > x)
        while (lo < hi)
        {
            const int mid = (lo + hi + 1) >> 1;
            if (starts[mid] <= x) lo = mid; else hi = mid - 1;
        }
        n = x;
        b = lo;
        return;
    }
    __shared__ int short_n, short_b;
    if (threadIdx.x == 0) short_b = -1;
    __syncthreads();
    int sb, index;
    if (threadIdx.x < 32 && warp_find_item(starts, B, x, [=](int rows) { return rows <= max_rows ? rows : 0; }, sb, index))
    {
        short_b = sb;
        short_n = starts[sb] + index;
    }
    __syncthreads();
    n = short_n;
    b = short_b;
}

// Where a decode kernel's CTA works: row x of those the kernel computes (paged_short_row: its row n and sequence b), and
// split `split` of the row's visible keys: positions [begin, end) of its window, and how many of the splits hold keys.
// At least min_chunk keys a split: a short row fills only the first splits; the others find begin >= end, store an empty
// state (m = -inf) and still count towards the merge. False for a CTA past the last such row (the whole CTA returns).
struct PagedDecodeKeys
{
    int n, b, begin, end, active;
};
__device__ __forceinline__ bool paged_decode_keys(int x, const int* starts, const int* lengths, int B, int N, int max_rows,
                                                  int window, int min_chunk, int split, int splits, PagedDecodeKeys& r)
{
    paged_short_row(x, starts, B, N, max_rows, r.n, r.b);
    if (r.b < 0) return false;
    const int rows = starts[r.b + 1] - starts[r.b];
    const int pos = lengths[r.b] - rows + (r.n - starts[r.b]);
    const int first = max(0, pos - window + 1);                    // the oldest key in the row's window
    const int keys = pos + 1 - first;
    const int chunk = keys > 0 ? max(min_chunk, (keys + splits - 1) / splits) : 0;
    r.begin = first + split * chunk;
    r.end = min(pos + 1, r.begin + chunk);
    r.active = chunk > 0 ? min(splits, (keys + chunk - 1) / chunk) : 0;   // the splits that hold keys
    return true;
}

// ------------------------------------------------------------------------------ attention, vectorized
// The same computation for the common shapes (D = 64 or 128, 16-byte aligned rows), laid out for memory-level parallelism:
// grid (X, H / G, splits), PD_THREADS threads, block x computing row x of those this kernel owns (paged_short_row: every row,
// or with max_rows < N only the rows of sequences of at most max_rows rows, X an upper bound of their count); TPK = D / VE lanes hold one key row as 16-byte loads (VE = 16 / sizeof(T)
// elements each), so a warp reads 32 / TPK keys (and their values) per instruction and the CTA's NG = PD_THREADS / TPK lane
// groups stride over the keys two at a time (both keys' loads in flight before either is used). Per key the G scores are
// reduced over the group's TPK lanes (log2 TPK shuffles), and each group keeps an online softmax per head in base 2;
// the groups merge through shared memory (NG, G, D + 2) as in paged_attention. GM >= G is the compile-time bound of the
// group's query heads (registers: GM x VE for q and for the accumulator). Rows of sequences with more than max_rows rows
// are left to paged_prefill (flash_attention.cu), which runs them on tensor cores. With splits, the states go to
// partial (splits, X, H, D + 2) for paged_attention_combine, or with counters (X, H / G) the last split CTA merges them.
// window as in paged_attention: only the row's window is read.
#define PD_THREADS 128


// The combine folded into paged_decode (flash_decode_finish's scheme): the last of a (row x, head group) column's split
// CTAs to finish (a counter per column, reset by that CTA so the next launch or graph replay finds it zero) merges the
// states of the splits that hold keys (active <= 32; the others stored none) for its G heads: a warp per head reads
// the splits' maxima and sums a lane each, and turns them into weights in shared memory; then every thread sums its
// output columns over the splits. One launch per layer fewer when decoding.
// batched (CudaBackendOptions.PagedDecodeBatchedMerge): a thread takes two outputs a pass and issues the loads of up to 16
// splits of both before it uses any (decode_merge's scheme in flash_attention.cu), so the pass costs one L2 round trip per
// 16 splits; otherwise each split's load sits behind a branch on its weight and is used at once, one round trip per split
// and output (at batch 1, ~10 splits and two outputs a thread: ~20 in a row). Both sum the same products in the same
// order and skip the same zero weights: the same output bit for bit (KernelEmulationTests checks it).
#define PD_MERGE_BATCH 16
template <typename T>
__device__ void paged_decode_finish(const float* partial, int* counters, T* out, int x, int X, int n, int H, int h0, int G,
                                    int D, int active, int batched)
{
    __shared__ int last;
    __shared__ float weight[8][32];                                // (head of the group, split): exp2(m_s - M) / L
    const int splits = gridDim.z, row_floats = D + 2, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int* counter = counters + (i64)x * gridDim.y + blockIdx.y;
    __threadfence();                                               // this CTA's states are visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1) == splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    for (int g = warp; g < G; g += PD_THREADS / 32)
    {
        const float* state = partial + (((i64)lane * X + x) * H + h0 + g) * row_floats;
        const float ms = lane < active ? load_cg(state + D) : NEG_INF;
        const float ls = lane < active ? load_cg(state + D + 1) : 0.f;
        const float big = warp_max(ms);
        const float w = ms == NEG_INF ? 0.f : fast_exp2(ms - big);
        const float sum = warp_sum(ls * w);
        weight[g][lane] = sum > 0.f ? w / sum : 0.f;
    }
    __syncthreads();
    if (batched)
    {
        const i64 split_stride = (i64)X * H * row_floats;
        for (int e0 = threadIdx.x; e0 < G * D; e0 += 2 * blockDim.x)
        {
            const float* p[2];
            int gk[2];
            float value[2] = {0.f, 0.f};
#pragma unroll
            for (int k = 0; k < 2; k++)
            {
                const int e = min(e0 + k * (int)blockDim.x, G * D - 1);   // a clamped second output is computed, not stored
                gk[k] = e / D;
                p[k] = partial + ((i64)x * H + h0 + e / D) * row_floats + e % D;
            }
            for (int s0 = 0; s0 < active; s0 += PD_MERGE_BATCH)
            {
                float v[2][PD_MERGE_BATCH];
#pragma unroll
                for (int k = 0; k < 2; k++)
#pragma unroll
                    for (int u = 0; u < PD_MERGE_BATCH; u++) v[k][u] = s0 + u < active ? load_cg(p[k] + (s0 + u) * split_stride) : 0.f;
#pragma unroll
                for (int k = 0; k < 2; k++)
#pragma unroll
                    for (int u = 0; u < PD_MERGE_BATCH; u++)
                    {
                        if (s0 + u >= active) break;
                        const float w = weight[gk[k]][s0 + u];
                        if (w != 0.f) value[k] += w * v[k][u];
                    }
            }
#pragma unroll
            for (int k = 0; k < 2; k++)
            {
                const int e = e0 + k * (int)blockDim.x;
                if (e < G * D) out[((i64)n * H + h0 + e / D) * D + e % D] = from_f<T>(value[k]);
            }
        }
        if (threadIdx.x == 0) *counter = 0;
        return;
    }
    for (int e = threadIdx.x; e < G * D; e += blockDim.x)
    {
        const int h = h0 + e / D, d = e % D;
        float value = 0.f;
        for (int s = 0; s < active; s++)
        {
            const float w = weight[e / D][s];
            if (w != 0.f) value += w * load_cg(partial + (((i64)s * X + x) * H + h) * row_floats + d);
        }
        out[((i64)n * H + h) * D + d] = from_f<T>(value);
    }
    if (threadIdx.x == 0) *counter = 0;
}
#define PD_MIN_CTAS(GM) ((GM) <= 4 ? 4 : 2)   // CTAs per SM that the registers must allow (128 registers a thread up to 4 heads: no spills)

// The second half of the decode kernels' end: the NG online-softmax states (acc, m, l) of each of the G heads, stored in
// shared memory (NG, G, D + 2) and synchronized, merged; then the row's output (one split) or the split's state (acc, m, l)
// in partial and, with counters, the last CTA's merge of the row's splits.
template <typename T, int D, int NG>
__device__ __forceinline__ void paged_decode_merge_store(const float* pd_shared, int tid, T* out, float* partial, int* counters,
                                                         int n, int x, int X, int H, int h0, int G, int split, int splits,
                                                         int active, int batched_merge)
{
    const int row_floats = D + 2;
    for (int e = tid; e < G * D; e += PD_THREADS)
    {
        const int g = e / D, d = e % D;
        float big = NEG_INF;
        for (int w = 0; w < NG; w++) big = fmaxf(big, pd_shared[((i64)w * G + g) * row_floats + D]);
        float sum = 0.f, value = 0.f;
        if (big != NEG_INF)
            for (int w = 0; w < NG; w++)
            {
                const float* st = pd_shared + ((i64)w * G + g) * row_floats;
                const float f = st[D] == NEG_INF ? 0.f : fast_exp2(st[D] - big);
                sum += st[D + 1] * f;
                value += st[d] * f;
            }
        if (splits == 1)
            out[(i64)n * H * D + (i64)(h0 + g) * D + d] = from_f<T>(sum > 0.f ? value / sum : 0.f);
        else
        {
            float* state = partial + (((i64)split * X + x) * H + h0 + g) * row_floats;
            state[d] = value;
            if (d == 0) { state[D] = big; state[D + 1] = sum; }
        }
    }
    if (splits > 1 && counters) paged_decode_finish<T>(partial, counters, out, x, X, n, H, h0, G, D, active, batched_merge);
}

// The end of paged_decode and paged_decode_tiled: each lane group's online-softmax state (acc, m, l) of the G heads stored in
// shared memory (NG, G, D + 2), then merged over the CTA's NG groups (paged_decode_merge_store).
template <typename T, int D, int GM, int VE, int NG>
__device__ __forceinline__ void paged_decode_store(const float (&acc)[GM][VE], const float (&m)[GM], const float (&l)[GM], float* pd_shared,
                                   int grp, int sub, int tid, T* out, float* partial, int* counters, int n, int x, int X,
                                   int H, int h0, int G, int split, int splits, int active, int batched_merge)
{
    const int row_floats = D + 2;
#pragma unroll
    for (int g = 0; g < GM; g++)
    {
        if (g >= G) break;
        float* st = pd_shared + ((i64)grp * G + g) * row_floats;
#pragma unroll
        for (int i = 0; i < VE; i++) st[sub * VE + i] = acc[g][i];
        if (sub == 0) { st[D] = m[g]; st[D + 1] = l[g]; }
    }
    __syncthreads();
    paged_decode_merge_store<T, D, NG>(pd_shared, tid, out, partial, counters, n, x, X, H, h0, G, split, splits, active, batched_merge);
}

template <typename T, int D, int GM, typename P = T>
__device__ void paged_decode(const T* q, const P* pool, T* out, float* partial, int* counters, const int* tables,
                             const int* starts, const int* lengths, int B, int N, int H, int K, int G, int block_size,
                             int max_blocks, i64 q_n, i64 q_h, float scale, int max_rows, int window, int min_chunk,
                             int batched_merge, const float* scales = nullptr)
{
    constexpr int VE = 16 / sizeof(T), TPK = D / VE, NG = PD_THREADS / TPK, GPW = 32 / TPK;
    static_assert(D % VE == 0 && 32 % TPK == 0, "paged_decode: a key row must be a power-of-two part of a warp");
    extern __shared__ float pd_shared[];                           // (NG, G, D + 2): acc, then m and l
    const int x = blockIdx.x, X = gridDim.x, h0 = blockIdx.y * G, kvh = h0 / (H / K), split = blockIdx.z, splits = gridDim.z;
    const int tid = threadIdx.x, grp = tid / TPK, sub = tid % TPK, warp = tid >> 5;
    // The step's metadata (starts, lengths, tables) was copied before the step's first kernel, so it is read before
    // pdl_wait, overlapping the predecessor's tail: under programmatic dependent launch this kernel starts only after its
    // predecessor passed its own wait, i.e. after everything before that predecessor finished. q and the pool (the step's
    // keys and values were just appended) are read after the wait.

    PagedDecodeKeys span;                                          // row x of those this kernel computes, its keys
    if (!paged_decode_keys(x, starts, lengths, B, N, max_rows, window, min_chunk, split, splits, span)) return;
    const int n = span.n, b = span.b, begin = span.begin, end = span.end, active = span.active;
    // A split past the row's keys merged by its last CTA stores nothing (the merge reads only the active splits): it is
    // only counted. (The combine kernel reads every split, so without counters each stores its empty state.)
    const int* table = tables + (i64)b * max_blocks;
    const int step = 2 * NG, lag = grp - warp * GPW;
    int ja = begin + warp * GPW + lag;                             // this lane group's first key a; key b is ja + NG
    auto entry = [&](int j) { return j < end ? table[j / block_size] : 0; };
    const int ea = entry(ja), eb = entry(ja + NG);                 // the first two iterations' blocks, before the wait
    int na = entry(ja + step), nb = entry(ja + step + NG);
    pdl_wait();
    pdl_launch_dependents();                                       // the output product may start loading its weights
    if (splits > 1 && counters && split >= active)
    {
        paged_decode_finish<T>(partial, counters, out, x, X, n, H, h0, G, D, active, batched_merge);
        return;
    }

    float qv[GM][VE], acc[GM][VE], m[GM], l[GM];
    const float qscale = scale * LOG2E;
#pragma unroll
    for (int g = 0; g < GM; g++)
    {
        m[g] = NEG_INF;
        l[g] = 0.f;
        if (g < G) load16(q + (i64)n * q_n + (i64)(h0 + g) * q_h + sub * VE, qv[g]);
#pragma unroll
        for (int i = 0; i < VE; i++)
        {
            qv[g][i] = g < G ? qv[g][i] * qscale : 0.f;
            acc[g][i] = 0.f;
        }
    }

    const i64 position_stride = (i64)2 * K * D;
    const P* base = pool + (i64)kvh * D + sub * VE;
    // Warp-uniform trip count (the shuffles need every lane): key j = j0 + grp (and j + NG), valid when below end. Software
    // pipelined two deep: while an iteration computes, the next one's keys and values are in flight and the table entries
    // of the one after are, so neither the table read nor the pool read waits in the loop (one round trip an iteration
    // instead of two dependent ones, none of them exposed once the pipeline runs).
    auto fetch = [&](int j, int blk, KvVec<T, P>& kr, KvVec<T, P>& vr) {
        if (j < end)
        {
            const i64 slot = (i64)blk * block_size + j % block_size;
            const P* kp = base + slot * position_stride;
            kr.load(kp, scales, slot * 2 * K + kvh);
            vr.load(kp + (i64)K * D, scales, slot * 2 * K + K + kvh);
        }
    };
    KvVec<T, P> ka, va16, kb, vb16;                                // raw until used: 4 registers each (16-bit pools)
    fetch(ja, ea, ka, va16);
    fetch(ja + NG, eb, kb, vb16);
    for (int j0 = begin + warp * GPW; j0 < end; j0 += step, ja += step)
    {
        KvVec<T, P> nka, nva, nkb, nvb;
        fetch(ja + step, na, nka, nva);
        fetch(ja + step + NG, nb, nkb, nvb);
        na = entry(ja + 2 * step);
        nb = entry(ja + 2 * step + NG);
        const bool va = ja < end, vb = ja + NG < end;
#pragma unroll
        for (int two = 0; two < 2; two++)
        {
            const bool valid = two == 0 ? va : vb;
            float kd[VE], vd[VE];
            (two == 0 ? ka : kb).unpack(kd);
            (two == 0 ? va16 : vb16).unpack(vd);
#pragma unroll
            for (int g = 0; g < GM; g++)
            {
                if (g >= G) break;
                float s = 0.f;
#pragma unroll
                for (int i = 0; i < VE; i++) s += qv[g][i] * kd[i];
#pragma unroll
                for (int o = TPK / 2; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
                if (valid)
                {
                    const float m_new = fmaxf(m[g], s);
                    const float correction = fast_exp2(m[g] - m_new), p = fast_exp2(s - m_new);
                    l[g] = l[g] * correction + p;
#pragma unroll
                    for (int i = 0; i < VE; i++) acc[g][i] = acc[g][i] * correction + p * vd[i];
                    m[g] = m_new;
                }
            }
        }
        ka = nka; va16 = nva; kb = nkb; vb16 = nvb;
    }

    paged_decode_store<T, D, GM, VE, NG>(acc, m, l, pd_shared, grp, sub, tid, out, partial, counters, n, x, X, H, h0, G, split,
                                         splits, active, batched_merge);
}
// The exported kernels of both decode templates (kernel = paged_decode or paged_decode_tiled): <kernel>_<type>_d<D>_g<GM>.
#define PAGED_DECODE_ONE(kernel, name, t, D, GM)                                                                          \
    extern "C" __global__ void __launch_bounds__(PD_THREADS, PD_MIN_CTAS(GM)) kernel##_##name##_d##D##_g##GM(             \
        const t* q, const t* pool, t* out, float* partial, int* counters, const int* tables, const int* starts,            \
        const int* lengths, int B, int N, int H, int K, int G, int block_size, int max_blocks, i64 q_n, i64 q_h,          \
        float scale, int max_rows, int window, int min_chunk, int batched_merge)                                          \
    {                                                                                                                     \
        kernel<t, D, GM>(q, pool, out, partial, counters, tables, starts, lengths, B, N, H, K, G, block_size, max_blocks, \
                         q_n, q_h, scale, max_rows, window, min_chunk, batched_merge);                                    \
    }
#define PAGED_DECODE_D(kernel, name, t, D) PAGED_DECODE_ONE(kernel, name, t, D, 1) PAGED_DECODE_ONE(kernel, name, t, D, 2) \
    PAGED_DECODE_ONE(kernel, name, t, D, 4) PAGED_DECODE_ONE(kernel, name, t, D, 8)
#define PAGED_DECODE(name, t) PAGED_DECODE_D(paged_decode, name, t, 64) PAGED_DECODE_D(paged_decode, name, t, 128)
FOR_FLOAT_TYPES(PAGED_DECODE)
// Over a quantized pool: <kernel>_<code>_<type>_d<D>_g<GM> (code i8 or f8), the same arguments with the pool's codes and
// its scales last.
#define PAGED_DECODE_ONE_Q(code, P, kernel, name, t, D, GM)                                                               \
    extern "C" __global__ void __launch_bounds__(PD_THREADS, PD_MIN_CTAS(GM)) kernel##_##code##_##name##_d##D##_g##GM(    \
        const t* q, const P* pool, t* out, float* partial, int* counters, const int* tables, const int* starts,            \
        const int* lengths, int B, int N, int H, int K, int G, int block_size, int max_blocks, i64 q_n, i64 q_h,          \
        float scale, int max_rows, int window, int min_chunk, int batched_merge, const float* scales)                     \
    {                                                                                                                     \
        kernel<t, D, GM, P>(q, pool, out, partial, counters, tables, starts, lengths, B, N, H, K, G, block_size,          \
                            max_blocks, q_n, q_h, scale, max_rows, window, min_chunk, batched_merge, scales);             \
    }
#define PAGED_DECODE_D_Q(code, P, kernel, name, t, D) PAGED_DECODE_ONE_Q(code, P, kernel, name, t, D, 1)                   \
    PAGED_DECODE_ONE_Q(code, P, kernel, name, t, D, 2) PAGED_DECODE_ONE_Q(code, P, kernel, name, t, D, 4)                 \
    PAGED_DECODE_ONE_Q(code, P, kernel, name, t, D, 8)
#define PAGED_DECODE_Q_TYPE(code, P, name, t)                                                                             \
    PAGED_DECODE_D_Q(code, P, paged_decode, name, t, 64) PAGED_DECODE_D_Q(code, P, paged_decode, name, t, 128)
#define PAGED_DECODE_Q(code, P) FOR_FLOAT_TYPES_OF(PAGED_DECODE_Q_TYPE, code, P)
FOR_KV_CODES(PAGED_DECODE_Q)

// ------------------------------------------------------------------------------ attention, vectorized and tiled
// paged_decode's computation (same grid, rows, splits, window, partial layout and last-CTA merge) with the keys walked in
// tiles, for memory-level parallelism at large batches (CudaBackendOptions.PagedDecodeTiled): each lane group of TPK lanes
// takes PD_TILE keys a tile (keys j0 + lag + GPW u, u < PD_TILE, the warp's GPW groups interleaved), issues the 16-byte loads
// of all of their keys and values before it uses any (PD_TILE x 32 bytes a lane in flight, against 2 keys in paged_decode),
// reduces the tile's G x PD_TILE scores over the group's lanes together (independent shuffles), and updates each head's
// online softmax once a tile: m' = max(m, max_u s_u), acc = acc 2^(m - m') + sum_u 2^(s_u - m') v_u (PD_TILE + 1 exponentials
// instead of 2 PD_TILE). Keys past the split's end load nothing (zeros) and get score -inf, weight 0. The warps take tiles in
// turn: warp w's tiles start at begin + w GPW PD_TILE, stepping by NG PD_TILE.
#define PD_TILE 4

template <typename T, int D, int GM, typename P = T>
__device__ void paged_decode_tiled(const T* q, const P* pool, T* out, float* partial, int* counters, const int* tables,
                                   const int* starts, const int* lengths, int B, int N, int H, int K, int G, int block_size,
                                   int max_blocks, i64 q_n, i64 q_h, float scale, int max_rows, int window, int min_chunk,
                                   int batched_merge, const float* scales = nullptr)
{
    constexpr int VE = 16 / sizeof(T), TPK = D / VE, NG = PD_THREADS / TPK, GPW = 32 / TPK, U = PD_TILE, STEP = NG * U;
    static_assert(D % VE == 0 && 32 % TPK == 0, "paged_decode_tiled: a key row must be a power-of-two part of a warp");
    extern __shared__ float pd_shared[];                           // (NG, G, D + 2): acc, then m and l
    const int x = blockIdx.x, X = gridDim.x, h0 = blockIdx.y * G, kvh = h0 / (H / K), split = blockIdx.z, splits = gridDim.z;
    const int tid = threadIdx.x, grp = tid / TPK, sub = tid % TPK, warp = tid >> 5, lag = grp - warp * GPW;

    PagedDecodeKeys span;                                          // row x of those this kernel computes, its keys
    if (!paged_decode_keys(x, starts, lengths, B, N, max_rows, window, min_chunk, split, splits, span)) return;
    const int n = span.n, b = span.b, begin = span.begin, end = span.end, active = span.active;
    const int* table = tables + (i64)b * max_blocks;
    int blk[U];                                                    // the current tile's table entries (read before the wait)
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        const int j = begin + warp * GPW * U + lag + u * GPW;
        blk[u] = j < end ? table[j / block_size] : 0;
    }
    pdl_wait();
    pdl_launch_dependents();
    if (splits > 1 && counters && split >= active)
    {
        paged_decode_finish<T>(partial, counters, out, x, X, n, H, h0, G, D, active, batched_merge);
        return;
    }

    float qv[GM][VE], acc[GM][VE], m[GM], l[GM];
    const float qscale = scale * LOG2E;
#pragma unroll
    for (int g = 0; g < GM; g++)
    {
        m[g] = NEG_INF;
        l[g] = 0.f;
        if (g < G) load16(q + (i64)n * q_n + (i64)(h0 + g) * q_h + sub * VE, qv[g]);
#pragma unroll
        for (int i = 0; i < VE; i++)
        {
            qv[g][i] = g < G ? qv[g][i] * qscale : 0.f;
            acc[g][i] = 0.f;
        }
    }

    const i64 position_stride = (i64)2 * K * D;
    const P* base = pool + (i64)kvh * D + sub * VE;
    // Warp-uniform trip count (the shuffles need every lane); a lane group's key j0 + lag + GPW u is valid below end.
    for (int j0 = begin + warp * GPW * U; j0 < end; j0 += STEP)
    {
        const int j = j0 + lag;
        KvVec<T, P> kr[U], vr[U];
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            kr[u].clear();
            vr[u].clear();
            if (j + u * GPW < end)
            {
                const i64 slot = (i64)blk[u] * block_size + (j + u * GPW) % block_size;
                const P* kp = base + slot * position_stride;
                kr[u].load(kp, scales, slot * 2 * K + kvh);
                vr[u].load(kp + (i64)K * D, scales, slot * 2 * K + K + kvh);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++)                                // the next tile's entries, while the loads fly
        {
            const int jn = j + STEP + u * GPW;
            blk[u] = jn < end ? table[jn / block_size] : 0;
        }
        float s[GM][U];                                            // scores, then weights 2^(s - m')
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            float kd[VE];
            kr[u].unpack(kd);
#pragma unroll
            for (int g = 0; g < GM; g++)
            {
                s[g][u] = 0.f;
                if (g >= G) continue;
#pragma unroll
                for (int i = 0; i < VE; i++) s[g][u] += qv[g][i] * kd[i];
            }
        }
#pragma unroll
        for (int o = TPK / 2; o > 0; o >>= 1)
#pragma unroll
            for (int g = 0; g < GM; g++)
            {
                if (g >= G) break;
#pragma unroll
                for (int u = 0; u < U; u++) s[g][u] += __shfl_xor_sync(FULL_MASK, s[g][u], o);
            }
#pragma unroll
        for (int g = 0; g < GM; g++)
        {
            if (g >= G) break;
            float tile_max = NEG_INF;
#pragma unroll
            for (int u = 0; u < U; u++)
            {
                if (j + u * GPW >= end) s[g][u] = NEG_INF;
                tile_max = fmaxf(tile_max, s[g][u]);
            }
            const float m_new = fmaxf(m[g], tile_max);
            if (m_new == NEG_INF)                                  // no key yet for this group: nothing to add
            {
#pragma unroll
                for (int u = 0; u < U; u++) s[g][u] = 0.f;
                continue;
            }
            const float correction = fast_exp2(m[g] - m_new);      // 2^-inf = 0 for the first keys
            float tile_sum = 0.f;
#pragma unroll
            for (int u = 0; u < U; u++)
            {
                s[g][u] = fast_exp2(s[g][u] - m_new);
                tile_sum += s[g][u];
            }
            l[g] = l[g] * correction + tile_sum;
#pragma unroll
            for (int i = 0; i < VE; i++) acc[g][i] *= correction;
            m[g] = m_new;
        }
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            float vd[VE];
            vr[u].unpack(vd);
#pragma unroll
            for (int g = 0; g < GM; g++)
            {
                if (g >= G) break;
#pragma unroll
                for (int i = 0; i < VE; i++) acc[g][i] += s[g][u] * vd[i];
            }
        }
    }

    paged_decode_store<T, D, GM, VE, NG>(acc, m, l, pd_shared, grp, sub, tid, out, partial, counters, n, x, X, H, h0, G, split,
                                         splits, active, batched_merge);
}
#define PAGED_DECODE_TILED(name, t)                                                                                       \
    PAGED_DECODE_D(paged_decode_tiled, name, t, 64) PAGED_DECODE_D(paged_decode_tiled, name, t, 128)
FOR_FLOAT_TYPES(PAGED_DECODE_TILED)
#define PAGED_DECODE_TILED_Q_TYPE(code, P, name, t)                                                                       \
    PAGED_DECODE_D_Q(code, P, paged_decode_tiled, name, t, 64) PAGED_DECODE_D_Q(code, P, paged_decode_tiled, name, t, 128)
#define PAGED_DECODE_TILED_Q(code, P) FOR_FLOAT_TYPES_OF(PAGED_DECODE_TILED_Q_TYPE, code, P)
FOR_KV_CODES(PAGED_DECODE_TILED_Q)

// ------------------------------------------------------------------------------ attention on tensor cores
// paged_decode's computation (same arguments, grid, rows, splits, window, partial layout and last-CTA merge) with the two
// products on tensor cores (CudaBackendOptions.PagedDecodeTensorCores; bf16 and f16), after FlashInfer's grouped-query
// decode: the CTA's G query heads (G <= 8, the heads of one kv head that the host groups) are the rows of an m16n8k16 A tile,
// rows G..15 zero queries that are never stored. The split's keys [begin, end) stream through shared memory in tiles of
// PM_KEYS positions, K and V each a swizzled tile (common.cuh) filled by cp.async through the block table (PagedRows: keys
// at or past end zero-filled, nothing read), PM_STAGES tiles in flight. Warp w takes keys 16 w .. 16 w + 15 of every
// tile: S (16 x 16) = Q K^T from ldmatrix fragments of K (row-major in shared memory: the B operand as is), scores past end
// -inf, an online softmax in base 2 per query row on the accumulator fragment (lane 4 g + c holds row g's keys 2c, 2c + 1,
// 8 + 2c, 9 + 2c; the row maximum over the 4 lanes of g), P rounded to 16 bits in registers as the A operand of
// O += P V (ldmatrix.trans of V). The 4 warps' states (acc, m, l) merge as paged_decode's lane groups do
// (paged_decode_merge_store over (4, G, D + 2) in the tile memory). Dynamic shared memory: PM_STAGES x 2 tiles of
// PM_KEYS x D values (48 KB at D = 64, 96 KB at D = 128), and with a staged table max_blocks ints after them.
// flags: bit 0 the batched merge (paged_decode's batched_merge); bit 1 the staged table
// (CudaBackendOptions.PagedDecodeStagedTable): the CTA first copies the block-table entries of its split's keys into shared
// memory, so that each tile's row copies look their blocks up there instead of in global memory (a dependent load ahead
// of every cp.async otherwise). The same rows come from the same slots either way: the same bits.
#define PM_KEYS 64
#define PM_STAGES 3
// CTAs per SM that the shared memory allows (48 KB of tiles at D = 64, 96 KB at 128); the registers must not limit it further.
// At D = 64, 4 a SM make the 512 CTAs of a 64-sequence llama-1b decode grid one wave on 132 SMs.
#define PM_MIN_CTAS(D) ((D) == 64 ? 4 : 2)

template <typename T, int D, typename P = T>
__device__ void paged_decode_mma(const T* q, const P* pool, T* out, float* partial, int* counters, const int* tables,
                                 const int* starts, const int* lengths, int B, int N, int H, int K, int G, int block_size,
                                 int max_blocks, i64 q_n, i64 q_h, float scale, int max_rows, int window, int min_chunk,
                                 int flags, const float* scales = nullptr)
{
    constexpr int NT = PD_THREADS, BN = PM_KEYS, KD = D / 16, ND = D / 8, S = PM_STAGES, TILE = BN * D * 2;
    const int batched_merge = flags & 1;
    const bool staged_table = (flags & 2) != 0;
    static_assert(NT == 128 && BN == 16 * (NT / 32), "paged_decode_mma: 4 warps of 16 keys a tile");
    extern __shared__ float pd_shared[];                           // S x (K tile, V tile); at the end (4, G, D + 2)
    const int x = blockIdx.x, X = gridDim.x, h0 = blockIdx.y * G, kvh = h0 / (H / K), split = blockIdx.z, splits = gridDim.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;

    PagedDecodeKeys span;                                          // row x of those this kernel computes, its keys
    if (!paged_decode_keys(x, starts, lengths, B, N, max_rows, window, min_chunk, split, splits, span)) return;
    const int n = span.n, b = span.b, begin = span.begin, end = span.end, active = span.active;
    const int tiles = end > begin ? (end - begin + BN - 1) / BN : 0;
    pdl_wait();
    pdl_launch_dependents();
    if (splits > 1 && counters && split >= active)
    {
        paged_decode_finish<T>(partial, counters, out, x, X, n, H, h0, G, D, active, batched_merge);
        return;
    }

    const i64 position_stride = (i64)2 * K * D;
    const int* table = tables + (i64)b * max_blocks;
    int table_first = 0;
    if (staged_table)
    {
        // The split's blocks [begin / block_size, (end - 1) / block_size], after the K/V tiles (uniform branch).
        int* staged = reinterpret_cast<int*>(reinterpret_cast<unsigned char*>(pd_shared) + S * 2 * TILE);
        table_first = begin / block_size;
        const int last = end > begin ? (end - 1) / block_size : table_first - 1;
        for (int i = table_first + tid; i <= last; i += NT) staged[i - table_first] = table[i];
        __syncthreads();
        table = staged;
    }
    // The rows of the pool (PagedRows, or PagedRowsQuantized dequantizing a quantized pool into the same tiles).
    const auto kr = pool_rows<T>(pool + (i64)kvh * D, scales, kvh, 2 * K, table, block_size, position_stride, begin, table_first);
    const auto vr = pool_rows<T>(pool + (i64)(K + kvh) * D, scales, K + kvh, 2 * K, table, block_size, position_stride, begin, table_first);
    const unsigned smem = smem_u32(pd_shared);
#pragma unroll
    for (int st = 0; st < S - 1; st++)
    {
        if (st < tiles)
        {
            kr.template load<D, BN, NT>(smem + st * 2 * TILE, begin + st * BN, end, tid);
            vr.template load<D, BN, NT>(smem + st * 2 * TILE + TILE, begin + st * BN, end, tid);
        }
        cp_async_commit();                                         // a group per stage, empty or not: wait_group counts them
    }

    // Query row g (head h0 + g) as A fragments, 16 bits as stored; rows g + 8 and g >= G are zero.
    unsigned qf[KD][4];
    const T* qrow = q + (i64)n * q_n + (i64)(h0 + min(g, G - 1)) * q_h + 2 * c4;
#pragma unroll
    for (int kk = 0; kk < KD; kk++)
    {
        qf[kk][0] = g < G ? *reinterpret_cast<const unsigned*>(qrow + kk * 16) : 0u;
        qf[kk][2] = g < G ? *reinterpret_cast<const unsigned*>(qrow + kk * 16 + 8) : 0u;
        qf[kk][1] = qf[kk][3] = 0u;
    }
    float oacc[ND][4];
#pragma unroll
    for (int j = 0; j < ND; j++) oacc[j][0] = oacc[j][1] = oacc[j][2] = oacc[j][3] = 0.f;
    float m = NEG_INF, l = 0.f;                                    // row g's state (l: this lane's keys only)
    const float sl2 = scale * LOG2E;
    const TileOffsets<D> off(lane);

    for (int t = 0; t < tiles; t++)
    {
        const int ahead = t + S - 1;
        if (ahead < tiles)
        {
            const unsigned dst = smem + (ahead % S) * 2 * TILE;
            kr.template load<D, BN, NT>(dst, begin + ahead * BN, end, tid);
            vr.template load<D, BN, NT>(dst + TILE, begin + ahead * BN, end, tid);
        }
        cp_async_commit();
        cp_async_wait<S - 1>();                                    // tile t has landed (this thread's copies) ...
        __syncthreads();                                           // ... and every thread's
        const unsigned tK = smem + (t % S) * 2 * TILE + warp * 16 * D * 2, tV = tK + TILE;
        float sc[2][4];
#pragma unroll
        for (int j = 0; j < 2; j++) sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++)
        {
            unsigned b0, b1, b2, b3;
            ldsm_x4(tK + off.rows[kk], b0, b1, b2, b3);
            Mma<T>::run(sc[0], qf[kk], b0, b1);
            Mma<T>::run(sc[1], qf[kk], b2, b3);
        }
        // Row g's scores sc[j][e], e < 2: key begin + t BN + 16 warp + 8 j + 2 c4 + e.
        const int key0 = begin + t * BN + warp * 16 + 2 * c4;
        float mx = NEG_INF;
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                if (key0 + 8 * j + e >= end) sc[j][e] = NEG_INF;
                mx = fmaxf(mx, sc[j][e]);
            }
        mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
        const float m_new = fmaxf(m, mx * sl2);                    // base 2, as paged_decode's scores (the scale is positive)
        const float mu = m_new == NEG_INF ? 0.f : m_new;           // no key yet: weights 2^-inf = 0, nothing rescaled
        const float correction = fast_exp2(m - mu);
        m = m_new;
        float p[2][2], sum = 0.f;
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                p[j][e] = fast_exp2(fmaf(sc[j][e], sl2, -mu));
                sum += p[j][e];
            }
        l = l * correction + sum;
#pragma unroll
        for (int j = 0; j < ND; j++) { oacc[j][0] *= correction; oacc[j][1] *= correction; }
        unsigned pa[4];                                            // P as the A operand: row g, keys 2c4.. and 8 + 2c4..
        pa[0] = Mma<T>::pack(p[0][0], p[0][1]);
        pa[2] = Mma<T>::pack(p[1][0], p[1][1]);
        pa[1] = pa[3] = 0u;
#pragma unroll
        for (int j2 = 0; j2 < D / 16; j2++)
        {
            unsigned b0, b1, b2, b3;
            ldsm_x4_t(tV + off.cols[j2], b0, b1, b2, b3);
            Mma<T>::run(oacc[2 * j2], pa, b0, b1);
            Mma<T>::run(oacc[2 * j2 + 1], pa, b2, b3);
        }
        __syncthreads();                                           // this stage is refilled S - 1 tiles later
    }
    cp_async_wait<0>();
    __syncthreads();                                               // the tiles' memory becomes the warps' states

    l += __shfl_xor_sync(FULL_MASK, l, 1);
    l += __shfl_xor_sync(FULL_MASK, l, 2);
    if (g < G)
    {
        float* st = pd_shared + ((i64)warp * G + g) * (D + 2);
#pragma unroll
        for (int j = 0; j < ND; j++) { st[8 * j + 2 * c4] = oacc[j][0]; st[8 * j + 2 * c4 + 1] = oacc[j][1]; }
        if (c4 == 0) { st[D] = m; st[D + 1] = l; }
    }
    __syncthreads();
    paged_decode_merge_store<T, D, NT / 32>(pd_shared, tid, out, partial, counters, n, x, X, H, h0, G, split, splits, active,
                                            batched_merge);
}
#define PAGED_DECODE_MMA(name, t, D)                                                                                      \
    extern "C" __global__ void __launch_bounds__(PD_THREADS, PM_MIN_CTAS(D)) paged_decode_mma_##name##_d##D(               \
        const t* q, const t* pool, t* out, float* partial, int* counters, const int* tables, const int* starts,            \
        const int* lengths, int B, int N, int H, int K, int G, int block_size, int max_blocks, i64 q_n, i64 q_h,          \
        float scale, int max_rows, int window, int min_chunk, int flags)                                                  \
    {                                                                                                                     \
        paged_decode_mma<t, D>(q, pool, out, partial, counters, tables, starts, lengths, B, N, H, K, G, block_size,        \
                               max_blocks, q_n, q_h, scale, max_rows, window, min_chunk, flags);                          \
    }
PAGED_DECODE_MMA(bf16, bf16, 64) PAGED_DECODE_MMA(bf16, bf16, 128) PAGED_DECODE_MMA(f16, f16, 64) PAGED_DECODE_MMA(f16, f16, 128)
// Over a quantized pool: paged_decode_mma_<code>_<type>_d<D> (code i8 or f8), the same arguments with the pool's codes and
// its scales last.
#define PAGED_DECODE_MMA_Q_ONE(code, P, name, t, D)                                                                       \
    extern "C" __global__ void __launch_bounds__(PD_THREADS, PM_MIN_CTAS(D)) paged_decode_mma_##code##_##name##_d##D(      \
        const t* q, const P* pool, t* out, float* partial, int* counters, const int* tables, const int* starts,            \
        const int* lengths, int B, int N, int H, int K, int G, int block_size, int max_blocks, i64 q_n, i64 q_h,          \
        float scale, int max_rows, int window, int min_chunk, int flags, const float* scales)                             \
    {                                                                                                                     \
        paged_decode_mma<t, D, P>(q, pool, out, partial, counters, tables, starts, lengths, B, N, H, K, G, block_size,     \
                                  max_blocks, q_n, q_h, scale, max_rows, window, min_chunk, flags, scales);               \
    }
#define PAGED_DECODE_MMA_Q(code, P) PAGED_DECODE_MMA_Q_ONE(code, P, bf16, bf16, 64) PAGED_DECODE_MMA_Q_ONE(code, P, bf16, bf16, 128) \
    PAGED_DECODE_MMA_Q_ONE(code, P, f16, f16, 64) PAGED_DECODE_MMA_Q_ONE(code, P, f16, f16, 128)
FOR_KV_CODES(PAGED_DECODE_MMA_Q)

// out[n, h, :] from the splits' states; grid (X, H), one thread per element of the head. Block x merges the states of row x
// of the kernel that wrote them: partial (splits, X, H, D + 2), its row n and sequence found as that kernel found them
// (paged_short_row with the same max_rows; X = N and x = n for the generic kernel, which computes every row).
template <typename T> __device__ void paged_attention_combine(const float* partial, T* out, int splits, int N, int H, int D,
                                                              const int* starts, int B, int max_rows)
{
    pdl_wait();
    const int x = blockIdx.x, X = gridDim.x, h = blockIdx.y, row_floats = D + 2;
    int n, b;
    paged_short_row(x, starts, B, N, max_rows, n, b);
    if (b < 0) return;
    for (int d = threadIdx.x; d < D; d += blockDim.x)
    {
        float big = NEG_INF;
        for (int s = 0; s < splits; s++) big = fmaxf(big, partial[(((i64)s * X + x) * H + h) * row_floats + D]);
        float sum = 0.f, value = 0.f;
        if (big != NEG_INF)
            for (int s = 0; s < splits; s++)
            {
                const float* state = partial + (((i64)s * X + x) * H + h) * row_floats;
                if (state[D] == NEG_INF) continue;                    // a split past the row's keys
                const float f = fast_exp2(state[D] - big);
                sum += state[D + 1] * f;
                value += state[d] * f;
            }
        out[((i64)n * H + h) * D + d] = from_f<T>(sum > 0.f ? value / sum : 0.f);
    }
}
#define PAGED_COMBINE(name, t)                                                                                            \
    extern "C" __global__ void paged_attention_combine_##name(const float* partial, t* out, int splits, int N, int H, int D, \
                                                              const int* starts, int B, int max_rows)                    \
    {                                                                                                                     \
        paged_attention_combine<t>(partial, out, splits, N, H, D, starts, B, max_rows);                                   \
    }
FOR_FLOAT_TYPES(PAGED_COMBINE)
