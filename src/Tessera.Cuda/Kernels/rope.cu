// Rotary position embedding in place on x (B, T, H, D), last dimension contiguous; Hugging Face
// Llama's "rotate half" pairs (i, i + D/2). Angles in fp64 so long positions keep their precision; the frequencies come
// from a RopeFreq (common.cuh): a table, YaRN's cos/sin factor, dynamic NTK's per-call rule.
// Row (b, t) sits at position start + t, or starts[b] + t when starts (B) is given (a KV cache's lengths,
// read on the device so that a captured decode step serves every position).

template <typename T> __device__ void rope(T* x, int B, int Tn, int H, int D, i64 sb, i64 st, i64 sh, int start,
                                           RopeFreq f, int inverse, const int* starts)
{
    int half = D / 2;
    const int len = rope_length(f, starts, B, start, Tn);
    i64 n = (i64)B * Tn * H * half;
    GRID_STRIDE(idx, n)
    {
        i64 r = idx;
        int i = (int)(r % half); r /= half;
        int h = (int)(r % H); r /= H;
        int t = (int)(r % Tn); r /= Tn;
        int b = (int)r;
        float cf, sf, y1, y2;
        rope_angle_at((starts ? starts[b] : start) + t, rope_inv_freq(f, i, D, len), f.attention, cf, sf);
        if (inverse) sf = -sf;
        T* p = x + b * sb + (i64)t * st + (i64)h * sh;
        rope_rotate(to_f(p[i]), to_f(p[i + half]), cf, sf, y1, y2);
        p[i] = from_f<T>(y1);
        p[i + half] = from_f<T>(y2);
    }
}

#define ROPE(n, T)                                                                                      \
    extern "C" __global__ void rope_##n(T* x, int B, int Tn, int H, int D, i64 sb, i64 st, i64 sh,    \
                                        int start, RopeFreq f, int inverse, const int* starts)         \
    {                                                                                                   \
        rope<T>(x, B, Tn, H, D, sb, st, sh, start, f, inverse, starts);                                 \
    }
FOR_FLOAT_TYPES(ROPE)

// The same rotation from a table of angles: cs holds (cos, sin) as two floats per (position, pair), computed once per
// frequency description by rope_angles below with the same double arithmetic (rope_angle_at), so the result is bit for bit
// the one of rope above. Used where positions are known on the host (training, a prefill from a host start) and the
// frequencies do not depend on the call's length. A block per row (b, t), its threads over the row's H x D/2 pairs: no
// 64-bit division and no sincos per element.
// 16-byte vectors where the layout allows (D/2 a multiple of the vector, strides too, x aligned: Llama's training qkv): each
// work item rotates N pairs, (x[i..i+N), x[i+D/2..i+D/2+N)) of one head of one row, with two vector loads and stores instead
// of 2N two-byte ones; the items of all rows are one grid-stride range, so no thread idles on a row of H D/2N items. The
// arithmetic is the element path's (rope_rotate on the same floats), so both give the same bits.
template <typename T, typename I> __device__ void rope_rows_vec(T* x, I rows, int Tn, int H, int half, i64 sb, i64 st, i64 sh,
                                                                int start, const float* cs, int inverse)
{
    constexpr int N = Vec16<T>::N;
    const I per = half / N, items = H * per, total = rows * items;
    for (I k = (I)blockIdx.x * blockDim.x + threadIdx.x; k < total; k += (I)gridDim.x * blockDim.x)
    {
        const I row = k / items, j = k - row * items;
        const int h = (int)(j / per), i = (int)(j - h * per) * N;
        const int b = (int)(row / Tn), t = (int)(row - (I)b * Tn);
        const float* c = cs + 2 * ((i64)(start + t) * half + i);
        T* p = x + b * sb + (i64)t * st + (i64)h * sh + i;
        float x1[N], x2[N];
        load16(p, x1);
        load16(p + half, x2);
#pragma unroll
        for (int e = 0; e < N; e++)
        {
            const float cf = c[2 * e];
            const float sf = inverse ? -c[2 * e + 1] : c[2 * e + 1];
            float y1, y2;
            rope_rotate(x1[e], x2[e], cf, sf, y1, y2);
            x1[e] = y1;
            x2[e] = y2;
        }
        store16(p, x1);
        store16(p + half, x2);
    }
}

template <typename T> __device__ void rope_rows(T* x, int rows, int Tn, int H, int half, i64 sb, i64 st, i64 sh, int start,
                                                const float* cs, int inverse)
{
    constexpr int N = Vec16<T>::N;
    if (half % N == 0 && (sb % N | st % N | sh % N) == 0 && aligned16(x, x, x))
    {
        if ((i64)rows * H * (half / N) < (1ll << 31)) rope_rows_vec<T, int>(x, rows, Tn, H, half, sb, st, sh, start, cs, inverse);
        else rope_rows_vec<T, i64>(x, (i64)rows, Tn, H, half, sb, st, sh, start, cs, inverse);
        return;
    }
    const int pairs = H * half;
    for (int row = blockIdx.x; row < rows; row += gridDim.x)
    {
        const int b = row / Tn, t = row - b * Tn;
        const float* c = cs + 2 * ((i64)(start + t) * half);
        T* base = x + b * sb + (i64)t * st;
        for (int j = threadIdx.x; j < pairs; j += blockDim.x)
        {
            const int h = j / half, i = j - h * half;
            const float cf = c[2 * i];
            const float sf = inverse ? -c[2 * i + 1] : c[2 * i + 1];
            T* p = base + (i64)h * sh;
            float y1, y2;
            rope_rotate(to_f(p[i]), to_f(p[i + half]), cf, sf, y1, y2);
            p[i] = from_f<T>(y1);
            p[i + half] = from_f<T>(y2);
        }
    }
}

#define ROPE_ROWS(n, T)                                                                                         \
    extern "C" __global__ void rope_rows_##n(T* x, int rows, int Tn, int H, int half, i64 sb, i64 st, i64 sh,  \
                                             int start, const float* cs, int inverse)                           \
    {                                                                                                           \
        rope_rows<T>(x, rows, Tn, H, half, sb, st, sh, start, cs, inverse);                                     \
    }
FOR_FLOAT_TYPES(ROPE_ROWS)

// The (cos, sin) table of positions [0, positions) for rope_rows: entry (pos, i) at cs[2 * (pos * D/2 + i)].
extern "C" __global__ void rope_angles(float* cs, int positions, int D, RopeFreq f)
{
    const int half = D / 2;
    const i64 n = (i64)positions * half;
    GRID_STRIDE(idx, n)
    {
        const int pos = (int)(idx / half), i = (int)(idx - (i64)pos * half);
        float cf, sf;
        rope_angle_at(pos, rope_inv_freq(f, i, D, 0), f.attention, cf, sf);
        cs[2 * idx] = cf;
        cs[2 * idx + 1] = sf;
    }
}

// Rope and KV append in one launch (a decode step's attention prologue, and serving's prefill chunks): qkv (B, T, H + 2K, D)
// holds the q, k and v heads of each row; the q and k heads are rotated in place at position starts[b] + t (as rope above),
// and the rotated k and the v heads are written to the cache (B, S, 2K, D) at that position (k heads first, as in qkv).
// One work item per pair of ROPE_APPEND_HEADS consecutive heads of one row (rope_pair's channels: (i, i + D/2) for whole
// heads; under partial rotary (i, i + R/2) turning, or two passing channels past R): the pair's angle (a double sincos)
// is computed once for all of them. With one item per head, the angles cost more than the copy: an 8,192-row prefill chunk
// of llama-1b (48 heads of 32 pairs) took 134 us on the H200, 5x the time of its 110 MB of traffic. Consecutive items are
// consecutive pairs of one head, so a warp's loads and stores stay contiguous.
// slots (B T), when given: a paged pool instead of a dense cache (serving; B = the step's rows, T = 1, starts = their
// positions): row r's keys and values go to cache + slots[r] * cs + head * ch, and a negative slot (padding) writes
// nothing. The rotation is rope's (the same angles and arithmetic), the copy paged_append's: the same bits as those two
// launches.
#define ROPE_APPEND_HEADS 8
template <typename T> __device__ void rope_append(T* qkv, T* cache, const int* starts, int B, int Tn, int H, int K, int D,
    i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, RopeFreq f, const int* slots)
{
    const int half = D / 2, heads = H + 2 * K, groups = (heads + ROPE_APPEND_HEADS - 1) / ROPE_APPEND_HEADS;
    const i64 n = (i64)B * Tn * groups * half;
    pdl_wait();
    pdl_launch_dependents();
    const int len = rope_length(f, starts, B, 0, Tn), R = rope_rotated(f, D);
    GRID_STRIDE(idx, n)
    {
        i64 r = idx;
        const int i = (int)(r % half); r /= half;
        const int g = (int)(r % groups); r /= groups;
        const int t = (int)(r % Tn);
        const int b = (int)(r / Tn);
        const int pos = starts[b] + t, h0 = g * ROPE_APPEND_HEADS;
        const bool turns = i < R / 2;                                  // partial rotary: the pairs past R / 2 pass through
        int c0, c1;
        rope_pair(i, D, R, c0, c1);
        float cf = 1.f, sf = 0.f;
        if (h0 < H + K && turns) rope_angle_at(pos, rope_inv_freq(f, i, R, len), f.attention, cf, sf);
        const i64 slot = h0 + ROPE_APPEND_HEADS > H ? (slots ? (i64)slots[(i64)b * Tn + t] : (i64)pos) : -1;
        T* row = qkv + b * sb + (i64)t * st;
#pragma unroll
        for (int j = 0; j < ROPE_APPEND_HEADS; j++)
        {
            const int hh = h0 + j;
            if (hh >= heads) break;
            T* p = row + (i64)hh * sh;
            T a = p[c0], c = p[c1];
            if (hh < H + K && turns)
            {
                float y1, y2;
                rope_rotate(to_f(a), to_f(c), cf, sf, y1, y2);
                a = from_f<T>(y1);
                c = from_f<T>(y2);
                p[c0] = a;
                p[c1] = c;
            }
            if (hh >= H && slot >= 0)
            {
                T* q = cache + (slots ? 0 : b * cb) + slot * cs + (i64)(hh - H) * ch;
                q[c0] = a;
                q[c1] = c;
            }
        }
    }
}

// rope_append with a CTA per row (b, t), for calls of up to CudaBackendOptions.RopeAppendRowKernelMaxRows rows (decode
// steps): the row's R/2 angles are computed once, by its first R/2 threads, into shared memory; then each thread loads all of
// its pairs (up to ROPE_ROW_PAIRS, strided by the block; ROPE_ROW_THREADS is the host's block) before it stores any, so a
// thread waits on memory once per batch instead of once per head (the item kernel above
// loads a head after storing the previous one: qkv and the cache may alias as far as the compiler knows). A decode step's
// 64 rows of llama-1b took 9.5 us in the item kernel under ncu, for 0.4 MB of traffic (profiled per op on the H200: 6.9 us
// here against 8.3; at 8,192 rows 104 against 68, so large calls stay on the item kernel). Same angles, same rotation, same
// stores: the same bits as rope_append.
#define ROPE_ROW_THREADS 256
#define ROPE_ROW_PAIRS 8
extern __shared__ float rope_row_angles[];   // cos of the row's R/2 turning pairs, then (from D/2 on) their sin

// The CTA-per-row kernels' start: the wait on the kernel in front, then row (b, t)'s position, returned, and its R/2 angles
// in rope_row_angles (read after a barrier).
__device__ __forceinline__ int rope_row_angles_at(const int* starts, int B, int Tn, int D, const RopeFreq& f, int b, int t)
{
    pdl_wait();
    pdl_launch_dependents();
    const int len = rope_length(f, starts, B, 0, Tn), R = rope_rotated(f, D), half = D / 2;
    const int pos = starts[b] + t;
    for (int i = threadIdx.x; i < R / 2; i += blockDim.x)
    {
        float cf, sf;
        rope_angle_at(pos, rope_inv_freq(f, i, R, len), f.attention, cf, sf);
        rope_row_angles[i] = cf;
        rope_row_angles[half + i] = sf;
    }
    return pos;
}

template <typename T> __device__ void rope_append_rows(T* qkv, T* cache, const int* starts, int B, int Tn, int H, int K, int D,
    i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, RopeFreq f, const int* slots)
{
    const int half = D / 2, rotated = (H + K) * half, items = (H + 2 * K) * half;
    const int b = blockIdx.x / Tn, t = blockIdx.x % Tn;
    const int pos = rope_row_angles_at(starts, B, Tn, D, f, b, t), R = rope_rotated(f, D);
    const i64 slot = slots ? (i64)slots[(i64)b * Tn + t] : (i64)pos;
    __syncthreads();
    T* row = qkv + b * sb + (i64)t * st;
    const i64 kv = (slots ? 0 : b * cb) + slot * cs;                 // key or value head hh >= H at cache + kv + (hh - H) ch
    for (int first = threadIdx.x; first < items; first += blockDim.x * ROPE_ROW_PAIRS)
    {
        T a[ROPE_ROW_PAIRS], c[ROPE_ROW_PAIRS];
#pragma unroll
        for (int u = 0; u < ROPE_ROW_PAIRS; u++)
        {
            const int e = first + u * blockDim.x, hh = e / half, i = e - hh * half;
            if (e < items)
            {
                int c0, c1;
                rope_pair(i, D, R, c0, c1);
                a[u] = row[(i64)hh * sh + c0];
                c[u] = row[(i64)hh * sh + c1];
            }
        }
#pragma unroll
        for (int u = 0; u < ROPE_ROW_PAIRS; u++)
        {
            const int e = first + u * blockDim.x, hh = e / half, i = e - hh * half;
            if (e >= items) break;
            int c0, c1;
            rope_pair(i, D, R, c0, c1);
            if (e < rotated && i < R / 2)                            // a q or k head's rotating pair
            {
                float y1, y2;
                rope_rotate(to_f(a[u]), to_f(c[u]), rope_row_angles[i], rope_row_angles[half + i], y1, y2);
                a[u] = from_f<T>(y1);
                c[u] = from_f<T>(y2);
                row[(i64)hh * sh + c0] = a[u];
                row[(i64)hh * sh + c1] = c[u];
            }
            if (hh >= H && slot >= 0)
            {
                cache[kv + (i64)(hh - H) * ch + c0] = a[u];
                cache[kv + (i64)(hh - H) * ch + c1] = c[u];
            }
        }
    }
}

// rope_append_rows after per-head RMS norms (Qwen3's and Gemma 3's q_norm and k_norm), one CTA per row (b, t): the row's
// H + 2K heads are staged in shared memory after the angles (16-byte vectors); a warp per q or k head normalizes it there,
// lane l holding the head's 16-byte vectors l and l + 32 as threads l and l + 32 of rmsnorm_forward_vec hold a row's (the same
// squares summed in the same order, the same scale rounding: unit for Gemma's 1 + w), rounded to T; then each pair is rotated
// as rope_append_rows rotates it, the normalized q and k heads written back and the k and v heads appended. The same bits as
// the norm kernel on each head, then rope_append_rows. D / V <= 64 vectors a head (D <= 512 in 16-bit types, 256 in f32).
template <typename T> __device__ void norm_rope_append_rows(T* qkv, T* cache, const int* starts, int B, int Tn, int H, int K,
    int D, i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, RopeFreq f, const int* slots, const T* qw, const T* kw, float qeps,
    float keps, int qunit, int kunit)
{
    constexpr int V = Vec16<T>::N;
    const int half = D / 2, heads = H + 2 * K, vecs = D / V, rotated = (H + K) * half, items = heads * half;
    const int b = blockIdx.x / Tn, t = blockIdx.x % Tn;
    T* srow = reinterpret_cast<T*>(rope_row_angles + D);            // the row's heads, (heads, D), after the D angle floats
    const int pos = rope_row_angles_at(starts, B, Tn, D, f, b, t), R = rope_rotated(f, D);
    T* row = qkv + b * sb + (i64)t * st;
    for (int e = threadIdx.x; e < heads * vecs; e += blockDim.x)
    {
        const int hh = e / vecs, c = e - hh * vecs;
        *reinterpret_cast<Bytes16*>(srow + (i64)hh * D + c * V) = *reinterpret_cast<const Bytes16*>(row + (i64)hh * sh + c * V);
    }
    __syncthreads();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int hh = warp; hh < H + K; hh += warps)
    {
        const bool query = hh < H;
        const T* w = query ? qw : kw;
        const int unit = query ? qunit : kunit;
        T* p = srow + (i64)hh * D;
        float v0[V], v1[V];
        float s0 = 0.f, s1 = 0.f;
        if (lane < vecs)
        {
            load16(p + lane * V, v0);
#pragma unroll
            for (int j = 0; j < V; j++) s0 += v0[j] * v0[j];
        }
        if (lane + 32 < vecs)
        {
            load16(p + (lane + 32) * V, v1);
#pragma unroll
            for (int j = 0; j < V; j++) s1 += v1[j] * v1[j];
        }
        float ss = warp_sum(s0);
        if (vecs > 32) ss += warp_sum(s1);
        const float r = rsqrtf(ss / D + (query ? qeps : keps));
        if (lane < vecs)
        {
            float wv[V];
            load16(w + lane * V, wv);
#pragma unroll
            for (int j = 0; j < V; j++) v0[j] = v0[j] * r * norm_scale<T>(wv[j], unit);
            store16(p + lane * V, v0);
        }
        if (lane + 32 < vecs)
        {
            float wv[V];
            load16(w + (lane + 32) * V, wv);
#pragma unroll
            for (int j = 0; j < V; j++) v1[j] = v1[j] * r * norm_scale<T>(wv[j], unit);
            store16(p + (lane + 32) * V, v1);
        }
    }
    const i64 slot = slots ? (i64)slots[(i64)b * Tn + t] : (i64)pos;
    __syncthreads();
    const i64 kv = (slots ? 0 : b * cb) + slot * cs;
    for (int e = threadIdx.x; e < items; e += blockDim.x)
    {
        const int hh = e / half, i = e - hh * half;
        int c0, c1;
        rope_pair(i, D, R, c0, c1);
        T a = srow[(i64)hh * D + c0], c = srow[(i64)hh * D + c1];
        if (e < rotated && i < R / 2)
        {
            float y1, y2;
            rope_rotate(to_f(a), to_f(c), rope_row_angles[i], rope_row_angles[half + i], y1, y2);
            a = from_f<T>(y1);
            c = from_f<T>(y2);
        }
        if (hh < H + K)
        {
            row[(i64)hh * sh + c0] = a;
            row[(i64)hh * sh + c1] = c;
        }
        if (hh >= H && slot >= 0)
        {
            cache[kv + (i64)(hh - H) * ch + c0] = a;
            cache[kv + (i64)(hh - H) * ch + c1] = c;
        }
    }
}

#define ROPE_APPEND(n, T)                                                                                       \
    extern "C" __global__ void rope_append_rows_##n(T* qkv, T* cache, const int* starts, int B, int Tn, int H,  \
        int K, int D, i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, RopeFreq f, const int* slots)             \
    {                                                                                                           \
        rope_append_rows<T>(qkv, cache, starts, B, Tn, H, K, D, sb, st, sh, cb, cs, ch, f, slots);              \
    }                                                                                                           \
    extern "C" __global__ void rope_append_##n(T* qkv, T* cache, const int* starts, int B, int Tn, int H, int K,  \
        int D, i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, RopeFreq f, const int* slots)                    \
    {                                                                                                           \
        rope_append<T>(qkv, cache, starts, B, Tn, H, K, D, sb, st, sh, cb, cs, ch, f, slots);                   \
    }                                                                                                           \
    extern "C" __global__ void norm_rope_append_rows_##n(T* qkv, T* cache, const int* starts, int B, int Tn,    \
        int H, int K, int D, i64 sb, i64 st, i64 sh, i64 cb, i64 cs, i64 ch, RopeFreq f, const int* slots,     \
        const T* qw, const T* kw, float qeps, float keps, int qunit, int kunit)                                 \
    {                                                                                                           \
        norm_rope_append_rows<T>(qkv, cache, starts, B, Tn, H, K, D, sb, st, sh, cb, cs, ch, f, slots, qw, kw,  \
                                 qeps, keps, qunit, kunit);                                                     \
    }
FOR_FLOAT_TYPES(ROPE_APPEND)
