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

template <typename T> __device__ __forceinline__ void unpack16(const Bytes16& u, float* out)
{
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < Vec16<T>::N; j++) out[j] = to_f(e[j]);
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

// Staging x (M, K) into shared memory once per CTA: every warp of the CTA reads it for its rows.
template <typename T, int M>
__device__ __forceinline__ void gemv_stage_x(const T* x, i64 ldx, int K, T* sx)
{
    constexpr int V = Vec16<T>::N;
    const int chunks = K / V;
    for (int i = threadIdx.x; i < M * chunks; i += blockDim.x)
    {
        const int m = i / chunks, c = i % chunks;
        *reinterpret_cast<Bytes16*>(sx + (i64)m * K + (i64)c * V) = *reinterpret_cast<const Bytes16*>(x + m * ldx + (i64)c * V);
    }
    __syncthreads();
}

// acc[m] += W[row] . x[m] over the lane's chunks: U 16-byte loads issued before their products, so each lane keeps
// U * 16 bytes of W in flight (K = 2048 bf16 is one round of 8 per lane).
template <typename T, int M, int U>
__device__ __forceinline__ void gemv_row(const T* row, const T* sx, int K, int lane, float* acc)
{
    constexpr int V = Vec16<T>::N;
    const int chunks = K / V;
    int c = lane;
    for (; c + (U - 1) * 32 < chunks; c += U * 32)
    {
        Bytes16 raw[U];
#pragma unroll
        for (int u = 0; u < U; u++) raw[u] = load_stream16(row + (i64)(c + u * 32) * V);
#pragma unroll
        for (int u = 0; u < U; u++) gemv_chunk<T, M>(raw[u], sx, K, c + u * 32, acc);
    }
    for (; c < chunks; c += 32) gemv_chunk<T, M>(load_stream16(row + (i64)c * V), sx, K, c, acc);
}

// Grid-stride over output columns n, one warp each; x (M, K) in dynamic shared memory.
// K is a multiple of 16 / sizeof(T); x's and W's rows are 16-byte aligned (the host checks).
template <typename T, int M>
__device__ void gemv(const T* x, const T* w, const T* bias, T* y, int N, int K, i64 ldx, i64 ldw, i64 ldy,
                     float alpha, float beta)
{
    extern __shared__ unsigned char gemv_smem[];
    T* sx = reinterpret_cast<T*>(gemv_smem);
    gemv_stage_x<T, M>(x, ldx, K, sx);
    const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    for (int n = blockIdx.x * warps + (threadIdx.x >> 5); n < N; n += gridDim.x * warps)
    {
        float acc[M];
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = 0.f;
        gemv_row<T, M, 8>(w + (i64)n * ldw, sx, K, lane, acc);
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = warp_sum(acc[m]);
        if (lane == 0)
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
                            i64 ldx, i64 ldw, i64 ldo)
{
    extern __shared__ unsigned char gemv_smem[];
    T* sx = reinterpret_cast<T*>(gemv_smem);
    gemv_stage_x<T, M>(x, ldx, K, sx);
    const int warps = blockDim.x >> 5, lane = threadIdx.x & 31;
    for (int n = blockIdx.x * warps + (threadIdx.x >> 5); n < F; n += gridDim.x * warps)
    {
        float g[M], u[M];
#pragma unroll
        for (int m = 0; m < M; m++) { g[m] = 0.f; u[m] = 0.f; }
        gemv_row<T, M, 4>(wg + (i64)n * ldw, sx, K, lane, g);
        gemv_row<T, M, 4>(wu + (i64)n * ldw, sx, K, lane, u);
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

#define GEMV(n, T, M)                                                                                            \
    extern "C" __global__ void __launch_bounds__(256) gemv_##n##_m##M(const T* x, const T* w, const T* bias, T* y, \
        int N, int K, i64 ldx, i64 ldw, i64 ldy, float alpha, float beta)                                         \
    {                                                                                                             \
        gemv<T, M>(x, w, bias, y, N, K, ldx, ldw, ldy, alpha, beta);                                              \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256) gemv_swiglu_##n##_m##M(const T* x, const T* wg,            \
        const T* wu, const T* bg, const T* bu, T* out, int F, int K, i64 ldx, i64 ldw, i64 ldo)                  \
    {                                                                                                             \
        gemv_swiglu<T, M>(x, wg, wu, bg, bu, out, F, K, ldx, ldw, ldo);                                          \
    }
#define GEMV_ALL(n, T) GEMV(n, T, 1) GEMV(n, T, 2) GEMV(n, T, 3) GEMV(n, T, 4)
FOR_FLOAT_TYPES(GEMV_ALL)
