// Causal grouped-query attention, a simple correct version (not yet FlashAttention-2 on tensor
// cores). A block of WARPS warps serves WARPS consecutive query rows of one (batch, head); key and
// value tiles of TILE rows are staged in shared memory (rows padded by one float against bank
// conflicts); each lane scores one key of the tile, the warp keeps an online softmax, and each
// lane owns head dimensions lane, lane + 32, ... of the output. D <= MAXD.
// Strides are in elements for (b, t, h); the last dimension is contiguous. Sliding window: a query at position p sees
// keys p - window + 1 .. p (the host passes 1 << 30 for none); tiles left of every window are skipped.
// Soft cap (Gemma 2's attn_logit_softcapping; 0 for none): the score scale q.k becomes cap tanh(scale q.k / cap) before the
// mask and the softmax, and the backward multiplies dS by the cap's slope 1 - (capped / cap)^2, as the CPU backend does.
// These kernels take every head size up to MAXD and every capped call: the backward of capped or 256-wide attention, F32, and
// head sizes the tensor-core kernels (64, 128 and, forward only, 256) do not take.
#define WARPS 4
#define TILE 32
#define MAXD 256
#define DPL (MAXD / 32)

struct Strides3 { i64 b, t, h; };

template <typename T> __device__ void attention_forward(const T* q, const T* k, const T* v, T* o, float* lse,
    int Tq, int S, int H, int KH, int D, Strides3 qs_, Strides3 ks_, Strides3 vs_, Strides3 os_, float scale, int window,
    float cap)
{
    extern __shared__ float smem[];
    const int ld = D + 1;
    float* ks = smem;
    float* vs = ks + TILE * ld;
    float* qs = vs + TILE * ld;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int b = blockIdx.z, h = blockIdx.y, g = h / (H / KH);
    int t0 = blockIdx.x * WARPS, t = t0 + warp;
    int offset = S - Tq;
    bool valid = t < Tq;
    if (valid)
    {
        const T* qrow = q + b * qs_.b + (i64)t * qs_.t + (i64)h * qs_.h;
        for (int d = lane; d < D; d += 32) qs[warp * D + d] = to_f(qrow[d]) * scale;
    }
    const T* kb = k + b * ks_.b + (i64)g * ks_.h;
    const T* vb = v + b * vs_.b + (i64)g * vs_.h;
    int lastKey = min(S - 1, offset + min(Tq - 1, t0 + WARPS - 1));
    int firstKey = max(0, offset + t0 - window + 1);
    float m = NEG_INF, l = 0.f;
    float acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.f;
    for (int s0 = firstKey / TILE * TILE; s0 <= lastKey; s0 += TILE)
    {
        __syncthreads();
        for (int idx = threadIdx.x; idx < TILE * D; idx += blockDim.x)
        {
            int r = idx / D, d = idx - r * D, s = s0 + r;
            ks[r * ld + d] = s < S ? to_f(kb[(i64)s * ks_.t + d]) : 0.f;
            vs[r * ld + d] = s < S ? to_f(vb[(i64)s * vs_.t + d]) : 0.f;
        }
        __syncthreads();
        if (!valid) continue;
        int s = s0 + lane;
        float score = NEG_INF;
        if (s < S && s <= offset + t && s > offset + t - window)
        {
            float dot = 0.f;
            const float* qq = qs + warp * D; const float* kk = ks + lane * ld;
            for (int d = 0; d < D; d++) dot += qq[d] * kk[d];
            score = soft_cap(dot, cap);
        }
        float mnew = fmaxf(m, warp_max(score));
        if (mnew == NEG_INF) continue; // no visible key yet (uniform over the warp)
        float p = expf(score - mnew);
        float corr = expf(m - mnew);
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[i] *= corr;
        for (int j = 0; j < TILE; j++)
        {
            float pj = __shfl_sync(FULL_MASK, p, j);
#pragma unroll
            for (int i = 0; i < DPL; i++) { int d = lane + 32 * i; if (d < D) acc[i] += pj * vs[j * ld + d]; }
        }
        m = mnew;
    }
    if (valid)
    {
        float inv = 1.f / l;
        T* orow = o + b * os_.b + (i64)t * os_.t + (i64)h * os_.h;
#pragma unroll
        for (int i = 0; i < DPL; i++) { int d = lane + 32 * i; if (d < D) orow[d] = from_f<T>(acc[i] * inv); }
        if (lane == 0 && lse) lse[((i64)b * H + h) * Tq + t] = m + logf(l);
    }
}

// delta (B, H, T) = rowsum(dO * O): one warp per (b, t, h).
template <typename T> __device__ void attention_backward_delta(const T* o, const T* dout, float* delta,
    int B, int Tq, int H, int D, Strides3 os_, Strides3 ds_)
{
    i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= (i64)B * Tq * H) return;
    int h = (int)(row % H); i64 r = row / H; int t = (int)(r % Tq); int b = (int)(r / Tq);
    const T* orow = o + b * os_.b + (i64)t * os_.t + (i64)h * os_.h;
    const T* drow = dout + b * ds_.b + (i64)t * ds_.t + (i64)h * ds_.h;
    float s = 0.f;
    for (int d = lane; d < D; d += 32) s += to_f(orow[d]) * to_f(drow[d]);
    s = warp_sum(s);
    if (lane == 0) delta[((i64)b * H + h) * Tq + t] = s;
}

// dq for query rows, as the forward: P = exp(scale q.k - lse), dS = P (dO.v - delta), dq = scale dS k.
template <typename T> __device__ void attention_backward_dq(const T* q, const T* k, const T* v, const T* dout,
    const float* lse, const float* delta, T* dq, int Tq, int H, int KH, int D,
    Strides3 qs_, Strides3 ks_, Strides3 vs_, Strides3 ds_, Strides3 dqs_, float scale, int window, float cap)
{
    extern __shared__ float smem[];
    const int ld = D + 1;
    float* ks = smem;
    float* vs = ks + TILE * ld;
    float* qs = vs + TILE * ld;
    float* dos = qs + WARPS * D;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int b = blockIdx.z, h = blockIdx.y, g = h / (H / KH);
    int t0 = blockIdx.x * WARPS, t = t0 + warp;
    bool valid = t < Tq;
    float lse_t = 0.f, delta_t = 0.f;
    if (valid)
    {
        const T* qrow = q + b * qs_.b + (i64)t * qs_.t + (i64)h * qs_.h;
        const T* drow = dout + b * ds_.b + (i64)t * ds_.t + (i64)h * ds_.h;
        for (int d = lane; d < D; d += 32) { qs[warp * D + d] = to_f(qrow[d]); dos[warp * D + d] = to_f(drow[d]); }
        lse_t = lse[((i64)b * H + h) * Tq + t];
        delta_t = delta[((i64)b * H + h) * Tq + t];
    }
    const T* kb = k + b * ks_.b + (i64)g * ks_.h;
    const T* vb = v + b * vs_.b + (i64)g * vs_.h;
    int lastKey = min(Tq - 1, t0 + WARPS - 1);
    int firstKey = max(0, t0 - window + 1);
    float acc[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) acc[i] = 0.f;
    for (int s0 = firstKey / TILE * TILE; s0 <= lastKey; s0 += TILE)
    {
        __syncthreads();
        for (int idx = threadIdx.x; idx < TILE * D; idx += blockDim.x)
        {
            int r = idx / D, d = idx - r * D, s = s0 + r;
            ks[r * ld + d] = s < Tq ? to_f(kb[(i64)s * ks_.t + d]) : 0.f;
            vs[r * ld + d] = s < Tq ? to_f(vb[(i64)s * vs_.t + d]) : 0.f;
        }
        __syncthreads();
        if (!valid) continue;
        int s = s0 + lane;
        float ds = 0.f;
        if (s <= t && s > t - window)
        {
            float qk = 0.f, dv = 0.f;
            const float* qq = qs + warp * D; const float* dd = dos + warp * D;
            const float* kk = ks + lane * ld; const float* vv = vs + lane * ld;
            for (int d = 0; d < D; d++) { qk += qq[d] * kk[d]; dv += dd[d] * vv[d]; }
            const float y = soft_cap(qk * scale, cap);
            float p = expf(y - lse_t);
            ds = p * (dv - delta_t) * soft_cap_slope(y, cap);
        }
        for (int j = 0; j < TILE; j++)
        {
            float dsj = __shfl_sync(FULL_MASK, ds, j);
#pragma unroll
            for (int i = 0; i < DPL; i++) { int d = lane + 32 * i; if (d < D) acc[i] += dsj * ks[j * ld + d]; }
        }
    }
    if (valid)
    {
        T* row = dq + b * dqs_.b + (i64)t * dqs_.t + (i64)h * dqs_.h;
#pragma unroll
        for (int i = 0; i < DPL; i++) { int d = lane + 32 * i; if (d < D) row[d] = from_f<T>(acc[i] * scale); }
    }
}

// dk, dv for key rows of kv head g, summing over the query heads of its group and the queries
// that see the key: dv = sum P dO, dk = scale sum dS q.
template <typename T> __device__ void attention_backward_dkdv(const T* q, const T* k, const T* v, const T* dout,
    const float* lse, const float* delta, T* dk, T* dv, int Tq, int H, int KH, int D,
    Strides3 qs_, Strides3 ks_, Strides3 vs_, Strides3 ds_, Strides3 dks_, Strides3 dvs_, float scale, int window,
    float cap)
{
    extern __shared__ float smem[];
    const int ld = D + 1;
    float* qs = smem;
    float* dos = qs + TILE * ld;
    float* lses = dos + TILE * ld;
    float* deltas = lses + TILE;
    float* kw = deltas + TILE;
    float* vw = kw + WARPS * D;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int b = blockIdx.z, g = blockIdx.y;
    int s0 = blockIdx.x * WARPS, s = s0 + warp;
    bool valid = s < Tq;
    if (valid)
    {
        const T* krow = k + b * ks_.b + (i64)s * ks_.t + (i64)g * ks_.h;
        const T* vrow = v + b * vs_.b + (i64)s * vs_.t + (i64)g * vs_.h;
        for (int d = lane; d < D; d += 32) { kw[warp * D + d] = to_f(krow[d]); vw[warp * D + d] = to_f(vrow[d]); }
    }
    float accK[DPL], accV[DPL];
#pragma unroll
    for (int i = 0; i < DPL; i++) { accK[i] = 0.f; accV[i] = 0.f; }
    int group = H / KH;
    for (int h = g * group; h < (g + 1) * group; h++)
    {
        // Queries that see keys s0 .. s0 + WARPS - 1: from s0 to the newest key's window end.
        const int tEnd = min(Tq, s0 + WARPS - 1 + window);
        for (int t0 = s0; t0 < tEnd; t0 += TILE)
        {
            __syncthreads();
            for (int idx = threadIdx.x; idx < TILE * D; idx += blockDim.x)
            {
                int r = idx / D, d = idx - r * D, t = t0 + r;
                qs[r * ld + d] = t < Tq ? to_f(q[b * qs_.b + (i64)t * qs_.t + (i64)h * qs_.h + d]) : 0.f;
                dos[r * ld + d] = t < Tq ? to_f(dout[b * ds_.b + (i64)t * ds_.t + (i64)h * ds_.h + d]) : 0.f;
            }
            for (int r = threadIdx.x; r < TILE; r += blockDim.x)
            {
                int t = t0 + r;
                lses[r] = t < Tq ? lse[((i64)b * H + h) * Tq + t] : 0.f;
                deltas[r] = t < Tq ? delta[((i64)b * H + h) * Tq + t] : 0.f;
            }
            __syncthreads();
            if (!valid) continue;
            int t = t0 + lane;
            float p = 0.f, ds = 0.f;
            if (t < Tq && t >= s && t - s < window)
            {
                float qk = 0.f, dv_ = 0.f;
                const float* qq = qs + lane * ld; const float* dd = dos + lane * ld;
                const float* kk = kw + warp * D; const float* vv = vw + warp * D;
                for (int d = 0; d < D; d++) { qk += qq[d] * kk[d]; dv_ += dd[d] * vv[d]; }
                const float y = soft_cap(qk * scale, cap);
                p = expf(y - lses[lane]);
                ds = p * (dv_ - deltas[lane]) * soft_cap_slope(y, cap);
            }
            for (int j = 0; j < TILE; j++)
            {
                float pj = __shfl_sync(FULL_MASK, p, j), dsj = __shfl_sync(FULL_MASK, ds, j);
#pragma unroll
                for (int i = 0; i < DPL; i++)
                {
                    int d = lane + 32 * i;
                    if (d < D) { accV[i] += pj * dos[j * ld + d]; accK[i] += dsj * qs[j * ld + d]; }
                }
            }
        }
    }
    if (valid)
    {
        T* krow = dk + b * dks_.b + (i64)s * dks_.t + (i64)g * dks_.h;
        T* vrow = dv + b * dvs_.b + (i64)s * dvs_.t + (i64)g * dvs_.h;
#pragma unroll
        for (int i = 0; i < DPL; i++)
        {
            int d = lane + 32 * i;
            if (d < D) { krow[d] = from_f<T>(accK[i] * scale); vrow[d] = from_f<T>(accV[i]); }
        }
    }
}

#define ATTENTION(n, T)                                                                                        \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) attention_forward_##n(const T* q, const T* k,     \
        const T* v, T* o, float* lse, int Tq, int S, int H, int KH, int D, Strides3 qs, Strides3 ks,           \
        Strides3 vs, Strides3 os, float scale, const int* starts, int window, float cap)                       \
    {                                                                                                          \
        if (starts) S = starts[blockIdx.z] + Tq; /* KV cache: valid keys of sequence b */                      \
        attention_forward<T>(q, k, v, o, lse, Tq, S, H, KH, D, qs, ks, vs, os, scale, window, cap);            \
    }                                                                                                          \
    extern "C" __global__ void attention_backward_delta_##n(const T* o, const T* dout, float* delta, int B,     \
        int Tq, int H, int D, Strides3 os, Strides3 ds)                                                        \
    {                                                                                                          \
        attention_backward_delta<T>(o, dout, delta, B, Tq, H, D, os, ds);                                      \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) attention_backward_dq_##n(const T* q, const T* k, \
        const T* v, const T* dout, const float* lse, const float* delta, T* dq, int Tq, int H, int KH, int D,  \
        Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds, Strides3 dqs, float scale, int window, float cap)  \
    {                                                                                                          \
        attention_backward_dq<T>(q, k, v, dout, lse, delta, dq, Tq, H, KH, D, qs, ks, vs, ds, dqs, scale,      \
                                 window, cap);                                                                 \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(WARPS * 32) attention_backward_dkdv_##n(const T* q,           \
        const T* k, const T* v, const T* dout, const float* lse, const float* delta, T* dk, T* dv, int Tq,     \
        int H, int KH, int D, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds, Strides3 dks, Strides3 dvs,  \
        float scale, int window, float cap)                                                                    \
    {                                                                                                          \
        attention_backward_dkdv<T>(q, k, v, dout, lse, delta, dk, dv, Tq, H, KH, D, qs, ks, vs, ds, dks, dvs,  \
                                   scale, window, cap);                                                        \
    }
FOR_FLOAT_TYPES(ATTENTION)
