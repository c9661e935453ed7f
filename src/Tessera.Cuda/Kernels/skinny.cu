// Skinny products for the serving decode step: y (M, N) = alpha * x (M, K) W^T + bias + beta * r, with 5 <= M <= 64 rows
// of x (the batch), W (N, K) row-major (nn.Linear's layout), bf16 or f16, fp32 accumulation. At such M the product is
// bound by reading W once; the tensor cores keep the arithmetic off the critical path (gemv.cu's FMA stream re-reads x
// from shared memory per 16 bytes of W and is shared-memory bound past 4 rows).
//
// mma.sync m16n8k16 with the roles swapped: W is the A operand (the MMA's M = 16 rows of W), x the B operand (its N = 8
// rows of the batch, NT tiles of 8: M padded to 8 NT). A lane (g = lane / 4, c = lane % 4) loads 16 bytes of W row g and
// of row g + 8 (k = kb + 8c .. kb + 8c + 7 of a 32-wide k-block) straight from global memory, and 16 bytes of x row
// 8j + g at the same k from shared memory; the k order inside the block is permuted the same way for both operands
// (MMA h of the block's two takes, as its k 2c, 2c+1 / 2c+8, 2c+9, the lane's elements 4h, 4h+1 / 4h+2, 4h+3), which the
// sum does not see. So neither operand needs ldmatrix, and W is read in 16-byte pieces that cover whole 32-byte sectors.
//
// Split-K over a persistent grid (gridDim.y = S slices of ks columns of K, gridDim.x = P CTAs a slice): a CTA stages its
// slice of x (8 NT rows x ks, rows >= M and columns >= K zero) in shared memory once (row stride ks + 32: the 16-byte
// reads of a quarter-warp hit distinct banks), then walks the row blocks of 64 rows of W (4 warps x 16) p, p + P, ...;
// each warp loads its W one unit (4 k-blocks: 128 bytes a lane) ahead of its MMAs, across row blocks too.
// With S = 1 each warp applies the epilogue to its tile itself; otherwise it writes its fp32 partial (S, 8 NT, Npad) and
// the last CTA of a row block (a counter per row block, left at zero, as paged_decode_finish counts its splits) sums the
// S partials in slice order (deterministic) and applies the epilogue. Host side: CudaBackend.Skinny.cs.
//
// SwiGLU (the decode step's gate/up pair, y = SiLU(x Wg^T) * (x Wu^T), N = F outputs): a row block is 32 outputs, warp w's
// 16 MMA rows are the gate rows (g) and the up rows (g + 8) of outputs 32 rb + 8w + g, so a lane holds both halves of an
// output; its partials are kept in those "virtual rows" (64 a row block) and the last CTA pairs them the same way.

#define SK_THREADS 128
#define SK_ROWS 64          // rows of W a row block (4 warps x 16)
#define SK_KB 32            // k-block: one 16-byte load a lane per row
#define SK_KU 4             // k-blocks whose W loads are in flight together (ks is a multiple of SK_KB * SK_KU)
#define SK_PAD 32           // elements of padding a staged x row

// SiLU as elementwise.cu computes it.
__device__ __forceinline__ float sk_silu(float g) { return g / (1.f + expf(-g)); }

// 16 bytes of W, read once (no L1 allocation); zero when !valid. Not volatile (as gemv.cu's load_stream16): W is read-only
// here, so the compiler may schedule the loads ahead of the MMAs.
__device__ __forceinline__ Bytes16 sk_load_w(const void* p, bool valid)
{
    Bytes16 r = {{0u, 0u, 0u, 0u}};
    if (!valid) return r;
#ifdef __CUDA_ARCH__
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3]) : "l"(p));
#else
    r = *reinterpret_cast<const Bytes16*>(p);
#endif
    return r;
}

template <typename T>
__device__ __forceinline__ void sk_store(T* y, const T* bias, const T* res, int m, int n, i64 ldy, i64 ldr, float alpha, float beta, float acc)
{
    float v = alpha * acc;
    if (bias) v += to_f(bias[n]);
    if (beta != 0.f) v += beta * to_f(res[(i64)m * ldr + n]);
    y[(i64)m * ldy + n] = from_f<T>(v);
}

// One unit of a warp's W stream: SK_KU k-blocks (k = k0 + kb ..) of its two MMA row groups in row block rb (zero past N and K).
template <typename T, bool SWIGLU>
__device__ __forceinline__ void sk_load_unit(const T* w, const T* w2, int rb, int kb, int k0, int N, int K, i64 ldw, int warp, int g, int c,
                                             Bytes16* lo, Bytes16* hi)
{
    // Virtual rows: the warp's 16 MMA rows. Linear: W rows r_lo, r_hi. SwiGLU: output o's gate row and up row.
    const int r_lo = rb * SK_ROWS + warp * 16 + g, r_hi = r_lo + 8, o = rb * (SK_ROWS / 2) + warp * 8 + g;
    const T* w_lo = SWIGLU ? w + (i64)o * ldw + k0 + kb + 8 * c : w + (i64)r_lo * ldw + k0 + kb + 8 * c;
    const T* w_hi = SWIGLU ? w2 + (i64)o * ldw + k0 + kb + 8 * c : w + (i64)r_hi * ldw + k0 + kb + 8 * c;
    const bool v_lo = SWIGLU ? o < N : r_lo < N, v_hi = SWIGLU ? o < N : r_hi < N;
#pragma unroll
    for (int u = 0; u < SK_KU; u++)
    {
        const bool kin = k0 + kb + u * SK_KB + 8 * c < K;
        lo[u] = sk_load_w(w_lo + u * SK_KB, kin && v_lo);
        hi[u] = sk_load_w(w_hi + u * SK_KB, kin && v_hi);
    }
}

extern __shared__ Bytes16 skinny_shared[];

template <typename T, int NT, bool SWIGLU>
__device__ __forceinline__ void skinny_product(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ w2, const T* bias, const T* res, T* y,
                               float* partial, int* counters, int M, int N, int K, i64 ldx, i64 ldw, i64 ldr, i64 ldy,
                               int ks, float alpha, float beta)
{
    constexpr int MP = 8 * NT;
    T* sx = reinterpret_cast<T*>(skinny_shared);                 // (MP, ks + SK_PAD): the CTA's slice of x
    const int S = gridDim.y, s = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, c = lane & 3;
    const int sx_ld = ks + SK_PAD, k0 = s * ks;
    const int RB = SWIGLU ? (N + SK_ROWS / 2 - 1) / (SK_ROWS / 2) : (N + SK_ROWS - 1) / SK_ROWS, Npad = RB * SK_ROWS;

    // Stage the slice of x: 16-byte chunks (row m, chunk q); zero past M and past K (K % 8 == 0).
    const int chunks = ks / 8;
    for (int e = tid; e < MP * chunks; e += SK_THREADS)
    {
        const int m = e / chunks, q = e % chunks, k = k0 + 8 * q;
        const bool ok = m < M && k < K;
        cp_async16(smem_u32(sx + (i64)m * sx_ld + 8 * q), ok ? x + (i64)m * ldx + k : x, ok);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    // The warp's W stream is a sequence of units (row block, k-block group), loaded one unit ahead of the MMAs, across row
    // blocks too: the next row block's first loads are in flight during this one's epilogue and reduction.
    Bytes16 lo[SK_KU], hi[SK_KU], next_lo[SK_KU], next_hi[SK_KU];
    if (blockIdx.x < RB) sk_load_unit<T, SWIGLU>(w, w2, blockIdx.x, 0, k0, N, K, ldw, warp, g, c, next_lo, next_hi);
    for (int rb = blockIdx.x; rb < RB; rb += gridDim.x)
    {
        const int r_lo = rb * SK_ROWS + warp * 16 + g, r_hi = r_lo + 8, o = rb * (SK_ROWS / 2) + warp * 8 + g;
        float acc[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
        for (int kb = 0; kb < ks; kb += SK_KB * SK_KU)
        {
#pragma unroll
            for (int u = 0; u < SK_KU; u++) { lo[u] = next_lo[u]; hi[u] = next_hi[u]; }
            const bool last_unit = kb + SK_KB * SK_KU >= ks;
            const int next_rb = last_unit ? rb + gridDim.x : rb, next_kb = last_unit ? 0 : kb + SK_KB * SK_KU;
            if (next_rb < RB) sk_load_unit<T, SWIGLU>(w, w2, next_rb, next_kb, k0, N, K, ldw, warp, g, c, next_lo, next_hi);
#pragma unroll
            for (int u = 0; u < SK_KU; u++)
#pragma unroll
                for (int j = 0; j < NT; j++)
                {
                    const Bytes16 xb = *reinterpret_cast<const Bytes16*>(sx + (i64)(8 * j + g) * sx_ld + kb + u * SK_KB + 8 * c);
#pragma unroll
                    for (int h = 0; h < 2; h++)
                    {
                        const unsigned a[4] = {lo[u].w[2 * h], hi[u].w[2 * h], lo[u].w[2 * h + 1], hi[u].w[2 * h + 1]};
                        Mma<T>::run(acc[j], a, xb.w[2 * h], xb.w[2 * h + 1]);
                    }
                }
        }
        // acc[j]: (W row r_lo, batch rows 8j + 2c, 8j + 2c + 1), then (W row r_hi, the same batch rows).
        if (S == 1 && SWIGLU)
        {
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                {
                    const int m = 8 * j + 2 * c + e;
                    if (m < M && o < N) y[(i64)m * ldy + o] = from_f<T>(sk_silu(acc[j][e]) * acc[j][e + 2]);
                }
            continue;
        }
        if (S == 1)
        {
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    const int m = 8 * j + 2 * c + (e & 1), n = e < 2 ? r_lo : r_hi;
                    if (m < M && n < N) sk_store(y, bias, res, m, n, ldy, ldr, alpha, beta, acc[j][e]);
                }
            continue;
        }
        // (S, MP, Npad) partials at the virtual rows; rows past N are zero (their W was), never stored.
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int m = 8 * j + 2 * c + (e & 1), n = e < 2 ? r_lo : r_hi;
                partial[((i64)s * MP + m) * Npad + n] = acc[j][e];
            }
        __shared__ int last;
        __threadfence();                                      // this CTA's partial is visible before it is counted
        __syncthreads();
        if (tid == 0) last = atomicAdd(counters + rb, 1) == S - 1;
        __syncthreads();
        if (!last) continue;
        __threadfence();
        if (SWIGLU)
        {
            for (int e = tid; e < M * (SK_ROWS / 2); e += SK_THREADS)
            {
                const int m = e / (SK_ROWS / 2), ol = e % (SK_ROWS / 2), on = rb * (SK_ROWS / 2) + ol;
                if (on >= N) continue;
                const int vr = rb * SK_ROWS + (ol / 8) * 16 + ol % 8;
                float gate = 0.f, up = 0.f;
                for (int t = 0; t < S; t++)
                {
                    gate += load_cg(partial + ((i64)t * MP + m) * Npad + vr);
                    up += load_cg(partial + ((i64)t * MP + m) * Npad + vr + 8);
                }
                y[(i64)m * ldy + on] = from_f<T>(sk_silu(gate) * up);
            }
        }
        else
            for (int e = tid; e < M * SK_ROWS; e += SK_THREADS)
            {
                const int m = e / SK_ROWS, n = rb * SK_ROWS + e % SK_ROWS;
                if (n >= N) continue;
                float sum = 0.f;
                for (int t = 0; t < S; t++) sum += load_cg(partial + ((i64)t * MP + m) * Npad + n);
                sk_store(y, bias, res, m, n, ldy, ldr, alpha, beta, sum);
            }
        if (tid == 0) counters[rb] = 0;                      // ready for the next product
    }
}

#define SKINNY(n, T, MP)                                                                                                  \
    extern "C" __global__ void __launch_bounds__(SK_THREADS) skinny_##n##_m##MP(                                          \
        const T* x, const T* w, const T* bias, const T* res, T* y, float* partial, int* counters, int M, int N, int K,   \
        i64 ldx, i64 ldw, i64 ldr, i64 ldy, int ks, float alpha, float beta)                                              \
    { skinny_product<T, MP / 8, false>(x, w, nullptr, bias, res, y, partial, counters, M, N, K, ldx, ldw, ldr, ldy, ks, alpha, beta); } \
    extern "C" __global__ void __launch_bounds__(SK_THREADS) skinny_swiglu_##n##_m##MP(                                   \
        const T* x, const T* wg, const T* wu, T* y, float* partial, int* counters, int M, int F, int K, i64 ldx, i64 ldw,  \
        i64 ldy, int ks)                                                                                                  \
    { skinny_product<T, MP / 8, true>(x, wg, wu, nullptr, nullptr, y, partial, counters, M, F, K, ldx, ldw, 0, ldy, ks, 1.f, 0.f); }
#define SKINNY_ALL(n, T) SKINNY(n, T, 8) SKINNY(n, T, 16) SKINNY(n, T, 32) SKINNY(n, T, 64)
SKINNY_ALL(bf16, bf16)
SKINNY_ALL(f16, f16)
