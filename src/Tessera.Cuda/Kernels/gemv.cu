// Matrix-vector products for decoding: y (M, N) = alpha * x (M, K) W^T + bias + beta * y, with W (N, K)
// row-major (nn.Linear's layout) and M <= 4 rows of x. At such M the product is bound by reading W once
// (2 bytes per weight in bf16), and a general GEMM tiles for reuse that is not there; here every warp
// streams whole rows of W with 16-byte loads that bypass L1, four in flight per lane, against x staged
// once per CTA in shared memory. fp32 accumulation; one warp reduction per output.

// 16 bytes of W, read once: no L1 allocation, so x and the other CTAs' rows keep the cache.
__device__ __forceinline__ Bytes16 load_stream16(const void* p)
{
    Bytes16 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3]) : "l"(p));
    return r;
}

template <typename T, int M>
__device__ __forceinline__ void gemv_chunk(const Bytes16& wraw, const T* sx, int K, int c, float* acc)
{
    constexpr int V = Vec16<T>::N;
    float w[V];
    unpack16<T>(wraw, w);
#pragma unroll
    for (int m = 0; m < M; m++)
    {
        float xv[V];
        load16(sx + (i64)m * K + (i64)c * V, xv);
#pragma unroll
        for (int j = 0; j < V; j++) acc[m] = fmaf(w[j], xv[j], acc[m]);
    }
}

// Staging x (M, K) into shared memory once per CTA: every warp of the CTA reads it for its rows. With a norm weight
// nw (K), each row is RMS-normalized on the way (x * rsqrt(mean(x^2) + eps) * nw, rounded to T as the separate norm
// kernel would store it): every CTA recomputes the row's mean square from 2K bytes that the L2 serves, which costs less
// than a launch of its own.
template <typename T, int M>
__device__ __forceinline__ void gemv_stage_x(const T* x, i64 ldx, int K, T* sx, const T* nw, float eps)
{
    constexpr int V = Vec16<T>::N;
    const int chunks = K / V;
    for (int i = threadIdx.x; i < M * chunks; i += blockDim.x)
    {
        const int m = i / chunks, c = i % chunks;
        *reinterpret_cast<Bytes16*>(sx + (i64)m * K + (i64)c * V) = *reinterpret_cast<const Bytes16*>(x + m * ldx + (i64)c * V);
    }
    __syncthreads();
    if (!nw) return;
#pragma unroll
    for (int m = 0; m < M; m++)
    {
        float ss = 0.f;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x)
        {
            float v[V];
            load16(sx + (i64)m * K + (i64)c * V, v);
#pragma unroll
            for (int j = 0; j < V; j++) ss += v[j] * v[j];
        }
        const float r = rsqrtf(block_sum(ss) / K + eps);
        __syncthreads();   // every thread has read the row's squares before it is overwritten
        for (int c = threadIdx.x; c < chunks; c += blockDim.x)
        {
            float v[V], w[V];
            load16(sx + (i64)m * K + (i64)c * V, v);
            load16(nw + (i64)c * V, w);
#pragma unroll
            for (int j = 0; j < V; j++) v[j] = v[j] * r * w[j];
            store16(sx + (i64)m * K + (i64)c * V, v);
        }
    }
    __syncthreads();
}

// Warms the L2 with the first loads of a lane's slice of a row of W (up to 8 chunks of 16 bytes), before pdl_wait:
// the weights never depend on the previous kernel, so their first DRAM round trip overlaps its tail.
template <typename T>
__device__ __forceinline__ void gemv_prefetch(const T* row, int c0, int c1, int lane)
{
    constexpr int V = Vec16<T>::N;
#pragma unroll
    for (int u = 0; u < 8; u++)
    {
        const int c = c0 + lane + u * 32;
        if (c < c1) asm volatile("prefetch.global.L2 [%0];" ::"l"(row + (i64)c * V));
    }
}

// acc[m] += W[row] . x[m] over chunks [c0, c1) (16 bytes each) of the row, lanes striding by 32: U loads issued
// before their products, so each lane keeps U * 16 bytes of W in flight.
template <typename T, int M, int U>
__device__ __forceinline__ void gemv_row(const T* row, const T* sx, int K, int c0, int c1, int lane, float* acc)
{
    constexpr int V = Vec16<T>::N;
    int c = c0 + lane;
    for (; c + (U - 1) * 32 < c1; c += U * 32)
    {
        Bytes16 raw[U];
#pragma unroll
        for (int u = 0; u < U; u++) raw[u] = load_stream16(row + (i64)(c + u * 32) * V);
#pragma unroll
        for (int u = 0; u < U; u++) gemv_chunk<T, M>(raw[u], sx, K, c + u * 32, acc);
    }
    if (U > 4)   // a slice of 4 to 7 chunks per lane still issues 4 loads at once
        for (; c + 3 * 32 < c1; c += 4 * 32)
        {
            Bytes16 raw[4];
#pragma unroll
            for (int u = 0; u < 4; u++) raw[u] = load_stream16(row + (i64)(c + u * 32) * V);
#pragma unroll
            for (int u = 0; u < 4; u++) gemv_chunk<T, M>(raw[u], sx, K, c + u * 32, acc);
        }
    for (; c < c1; c += 32) gemv_chunk<T, M>(load_stream16(row + (i64)c * V), sx, K, c, acc);
}

// KS warps share each output column n, each over a K / KS slice of its row, so that narrow products (N = 2048 on a
// 132-SM GPU) still have enough warps, and bytes in flight, to stream W at full bandwidth; the partial sums meet in
// shared memory. The CTA's 8 warps cover 8 / KS columns per iteration, grid-strided. x (M, K) in dynamic shared memory.
// K is a multiple of 16 / sizeof(T); x's and W's rows are 16-byte aligned (the host checks).
template <typename T, int M, int KS>
__device__ void gemv(const T* x, const T* w, const T* bias, T* y, int N, int K, i64 ldx, i64 ldw, i64 ldy,
                     float alpha, float beta, const T* nw, float eps)
{
    extern __shared__ unsigned char gemv_smem[];
    __shared__ float partial[8][M];
    T* sx = reinterpret_cast<T*>(gemv_smem);
    constexpr int RPC = 8 / KS;                                  // columns per CTA iteration (blockDim.x = 256)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, part = warp % KS;
    const int chunks = K / Vec16<T>::N, c0 = chunks * part / KS, c1 = chunks * (part + 1) / KS;
    if (blockIdx.x * RPC + warp / KS < N) gemv_prefetch<T>(w + (i64)(blockIdx.x * RPC + warp / KS) * ldw, c0, c1, lane);
    pdl_wait();
    pdl_launch_dependents();
    gemv_stage_x<T, M>(x, ldx, K, sx, nw, eps);
    for (int base = blockIdx.x * RPC; base < N; base += gridDim.x * RPC)   // uniform over the CTA: barriers inside
    {
        const int n = base + warp / KS;
        // The L2 fetches this warp's slice of its next row while it streams this one (a bubble of loads otherwise sits
        // between rows: the reduction, and the CTA's barriers when KS > 1).
        if (n + gridDim.x * RPC < N) gemv_prefetch<T>(w + (i64)(n + gridDim.x * RPC) * ldw, c0, c1, lane);
        float acc[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = 0.f;
        if (n < N) gemv_row<T, M, 8>(w + (i64)n * ldw, sx, K, c0, c1, lane, acc);
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = warp_sum(acc[m]);
        if (KS > 1)
        {
            if (lane == 0)
#pragma unroll
                for (int m = 0; m < M; m++) partial[warp][m] = acc[m];
            __syncthreads();
            if (part == 0)
#pragma unroll
                for (int m = 0; m < M; m++)
                {
                    float s = 0.f;
#pragma unroll
                    for (int j = 0; j < KS; j++) s += partial[warp + j][m];
                    acc[m] = s;
                }
            __syncthreads();
        }
        if (lane == 0 && part == 0 && n < N)
        {
            const float b = bias ? to_f(bias[n]) : 0.f;
#pragma unroll
            for (int m = 0; m < M; m++)
            {
                T* out = y + m * ldy + n;
                float r = alpha * acc[m] + b;
                if (beta != 0.f) r += beta * to_f(*out);
                *out = from_f<T>(r);
            }
        }
    }
}

// Llama's MLP up to its last product: out (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu), the gate and up rows of
// one output streamed by the same warp (twice the loads in flight), no (M, F) intermediates written.
template <typename T, int M>
__device__ void gemv_swiglu(const T* x, const T* wg, const T* wu, const T* bg, const T* bu, T* out, int F, int K,
                            i64 ldx, i64 ldw, i64 ldo, const T* nw, float eps)
{
    extern __shared__ unsigned char gemv_smem[];
    T* sx = reinterpret_cast<T*>(gemv_smem);
    const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    {
        const int n = blockIdx.x * warps + (threadIdx.x >> 5), chunks = K / Vec16<T>::N;
        if (n < F) { gemv_prefetch<T>(wg + (i64)n * ldw, 0, min(chunks, 8 * 32), lane); gemv_prefetch<T>(wu + (i64)n * ldw, 0, min(chunks, 8 * 32), lane); }
    }
    pdl_wait();
    pdl_launch_dependents();
    gemv_stage_x<T, M>(x, ldx, K, sx, nw, eps);
    for (int n = blockIdx.x * warps + (threadIdx.x >> 5); n < F; n += gridDim.x * warps)
    {
        const int next = n + gridDim.x * warps, chunks = K / Vec16<T>::N;
        if (next < F)
        {
            gemv_prefetch<T>(wg + (i64)next * ldw, 0, min(chunks, 8 * 32), lane);
            gemv_prefetch<T>(wu + (i64)next * ldw, 0, min(chunks, 8 * 32), lane);
        }
        float g[M], u[M];
#pragma unroll
        for (int m = 0; m < M; m++) { g[m] = 0.f; u[m] = 0.f; }
        gemv_row<T, M, 4>(wg + (i64)n * ldw, sx, K, 0, chunks, lane, g);
        gemv_row<T, M, 4>(wu + (i64)n * ldw, sx, K, 0, chunks, lane, u);
#pragma unroll
        for (int m = 0; m < M; m++) { g[m] = warp_sum(g[m]); u[m] = warp_sum(u[m]); }
        if (lane == 0)
        {
            const float gb = bg ? to_f(bg[n]) : 0.f, ub = bu ? to_f(bu[n]) : 0.f;
#pragma unroll
            for (int m = 0; m < M; m++)
            {
                const float a = g[m] + gb;
                out[m * ldo + n] = from_f<T>(a / (1.f + expf(-a)) * (u[m] + ub));
            }
        }
    }
}

#define GEMV_KS(n, T, M, KS)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256) gemv_##n##_m##M##_k##KS(const T* x, const T* w,             \
        const T* bias, T* y, int N, int K, i64 ldx, i64 ldw, i64 ldy, float alpha, float beta, const T* nw,       \
        float eps)                                                                                                \
    {                                                                                                             \
        gemv<T, M, KS>(x, w, bias, y, N, K, ldx, ldw, ldy, alpha, beta, nw, eps);                                 \
    }
#define GEMV(n, T, M)                                                                                            \
    GEMV_KS(n, T, M, 1) GEMV_KS(n, T, M, 2) GEMV_KS(n, T, M, 4) GEMV_KS(n, T, M, 8)                              \
    extern "C" __global__ void __launch_bounds__(256) gemv_swiglu_##n##_m##M(const T* x, const T* wg,            \
        const T* wu, const T* bg, const T* bu, T* out, int F, int K, i64 ldx, i64 ldw, i64 ldo, const T* nw,     \
        float eps)                                                                                                \
    {                                                                                                             \
        gemv_swiglu<T, M>(x, wg, wu, bg, bu, out, F, K, ldx, ldw, ldo, nw, eps);                                 \
    }
#define GEMV_ALL(n, T) GEMV(n, T, 1) GEMV(n, T, 2) GEMV(n, T, 3) GEMV(n, T, 4)
FOR_FLOAT_TYPES(GEMV_ALL)
