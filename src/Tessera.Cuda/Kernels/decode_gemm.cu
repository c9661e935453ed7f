// Decode-size products: y (M, N) = alpha * x (M, K) W^T + bias + beta * y, with M <= 8 * MT rows of x (a decode step's
// batch: 5 to 64), W (N, K) row-major (nn.Linear's layout), bf16 or f16, fp32 accumulation. At such M a product reads W
// once and its time is W's bytes plus a kernel's start-up and tail, which no standalone kernel hides (session 20: cuBLASLt
// and a hand-written Triton kernel both need 9-11 us for 8-13 MB). This kernel is launched dependent on its predecessor and
// issues its first stages of W before waiting on it (W is never the predecessor's output; the host passes early = 0 when
// it may be, e.g. after an optimizer step), so its DRAM traffic starts while the predecessor finishes, as gemv.cu's
// matrix-vector kernels do at 1-4 rows.
//
// A CTA of 4 warps owns DG_BN = 64 rows of W (warp w: rows 16w .. 16w + 15) and one of gridDim.y slices of K (ks = K /
// slices columns, a multiple of DG_BK). Per k-tile of DG_BK = 64 columns it stages W's 64 rows and x's 8 MT rows in
// shared memory (cp.async, DG_ST stages, 16-byte chunks swizzled as flash_attention.cu's tiles: chunk c of row r at
// c ^ (r & 7)), then each warp runs mma.sync m16n8k16 with W as the A operand (16 rows of W) and x as B (n8 tiles of
// x's rows): one ldmatrix.x4 gives W's fragment (its matrices reordered: rows 0-7 / 8-15 by k 0-7 / 8-15) and one per two
// n8 tiles gives x's. The accumulator holds W row (16w + g, + 8) by x rows (8j + 2c, + 1).
// One slice: the epilogue writes y. Several: each CTA writes its fp32 tile to partial (slices, 8 MT, gridDim.x * 64),
// then the last CTA of a row block (counters[blockIdx.x], left at zero for the next launch or graph replay) sums the
// slices in order (the same bits whatever the order in which the CTAs finish) and writes y.
// SWIGLU (a decode step's gate/up pair, y (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu), N = F outputs, alpha 1, beta 0): a
// row block is 32 outputs, and warp w's 16 MMA rows are the gate rows (g) and the up rows (g + 8) of outputs 32 b + 8 w + g,
// so a lane holds both halves of an output in registers; the partials keep those "virtual rows" (64 a block) and the last
// CTA pairs them the same way. SiLU as elementwise.cu's, on the fp32 sums (no rounding of gate and up to 16 bits between).
// nw (RMSNorm's weight, K) given: x is RMS-normalized on the way, without a pass of its own. Each staged x tile is scaled
// in shared memory by nw's 64 columns (rounded to T, as the norm kernel's output is) while its squares are summed per row
// (TPR = 128 / (8 MT) threads a row, each the same columns of every tile); the products then carry 1 / rms, applied to the
// fp32 sums: rsqrt(sum of squares / K + eps) from the CTA's own sums with one slice, or, with several, from every slice's sums
// (stored after the partials) by the merging CTA. Not the norm kernel's bits (it rounds x * rstd * w once; here x * w is
// rounded and rstd applied to the sum): within the dtype's tolerance.
#define DG_THREADS 128
#define DG_BN 64
#define DG_BK 64
#define DG_ST 3

__device__ __forceinline__ float dg_silu(float g) { return g / (1.f + expf(-g)); }

template <typename T, int MT, bool SWIGLU>
__device__ void decode_gemm(const T* x, const T* w, const T* w2, const T* bias, const T* bias2, T* y, float* partial,
                            int* counters, int M, int N, int K, i64 ldx, i64 ldw, i64 ldy, float alpha, float beta, int early,
                            const T* nw, float eps)
{
    constexpr int MP = 8 * MT, WT = DG_BN * DG_BK * 2, XT = MP * DG_BK * 2, STAGE = WT + XT, TPR = DG_THREADS / MP;
    static_assert(MT % 2 == 0, "decode_gemm: x's rows in pairs of n8 tiles (one ldmatrix.x4 each)");
    extern __shared__ float dg_shared[];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    const int n0 = blockIdx.x * DG_BN, slices = gridDim.y, slice = blockIdx.y, ks = K / slices, k0 = slice * ks;
    const int tiles = ks / DG_BK;
    const unsigned smem = smem_u32(dg_shared);
    // Thread tid copies 16-byte chunk (tid % 8) of rows tid / 8, + 16, ... of a tile (swizzled).
    const int cr = tid >> 3, cc = tid & 7;
    auto load_w = [&](int stage, int t) {
        const unsigned dst = smem + stage * STAGE;
#pragma unroll
        for (int i = 0; i < DG_BN / 16; i++)
        {
            // Virtual row r: W's row n0 + r, or with SWIGLU the gate (r % 16 < 8) or up row of output o.
            const int r = cr + 16 * i, o = blockIdx.x * (DG_BN / 2) + (r >> 4) * 8 + (r & 7), n = SWIGLU ? o : n0 + r;
            const T* src = SWIGLU && (r & 8) ? w2 : w;
            const bool ok = n < N;
            cp_async16(dst + (unsigned)(r * DG_BK * 2 + ((cc ^ (r & 7)) << 4)), ok ? src + (i64)n * ldw + k0 + t * DG_BK + cc * 8 : w, ok);
        }
    };
    auto load_x = [&](int stage, int t) {
        const unsigned dst = smem + stage * STAGE + WT;
#pragma unroll
        for (int i = 0; i < (MP + 15) / 16; i++)
        {
            const int r = cr + 16 * i;
            if (r >= MP) break;
            const bool ok = r < M;
            cp_async16(dst + (unsigned)(r * DG_BK * 2 + ((cc ^ (r & 7)) << 4)), ok ? x + (i64)r * ldx + k0 + t * DG_BK + cc * 8 : x, ok);
        }
    };
    // Stages 0 .. DG_ST - 2: W before the wait when early, x (the predecessor's output) after it. Commit group s holds
    // stage s's x (and, for s = 0, every early W copy), so "group s complete" still means "stage s complete".
    if (early)
        for (int s = 0; s < DG_ST - 1; s++)
            if (s < tiles) load_w(s, s);
    pdl_wait();
    pdl_launch_dependents();
    for (int s = 0; s < DG_ST - 1; s++)
    {
        if (s < tiles)
        {
            if (!early) load_w(s, s);
            load_x(s, s);
        }
        cp_async_commit();
    }

    float acc[MT][4];
#pragma unroll
    for (int j = 0; j < MT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    float sq = 0.f;                                        // with nw: this thread's share of its row's sum of squares
    const TileOffsets<DG_BK> off(lane);
    for (int t = 0; t < tiles; t++)
    {
        const int ahead = t + DG_ST - 1;
        if (ahead < tiles)
        {
            load_w(ahead % DG_ST, ahead);
            load_x(ahead % DG_ST, ahead);
        }
        cp_async_commit();
        cp_async_wait<DG_ST - 1>();
        __syncthreads();
        if (nw)
        {
            // Row nr's columns nc0 .. nc0 + 64 / TPR of the tile: squares summed, then scaled by nw in place (swizzled).
            unsigned char* xs = reinterpret_cast<unsigned char*>(dg_shared) + (t % DG_ST) * STAGE + WT;
            const int nr = tid / TPR, nc0 = (tid % TPR) * (DG_BK / TPR), kt = k0 + t * DG_BK;
#pragma unroll
            for (int q = 0; q < DG_BK / TPR; q++)
            {
                const int col = nc0 + q;
                T* p = reinterpret_cast<T*>(xs + nr * DG_BK * 2 + (((col >> 3) ^ (nr & 7)) << 4) + (col & 7) * 2);
                const float v = to_f(*p);
                sq += v * v;
                *p = from_f<T>(v * to_f(nw[kt + col]));
            }
            __syncthreads();
        }
        const unsigned tW = smem + (t % DG_ST) * STAGE + warp * 16 * DG_BK * 2, tX = smem + (t % DG_ST) * STAGE + WT;
#pragma unroll
        for (int kk = 0; kk < DG_BK / 16; kk++)
        {
            unsigned m0, m1, m2, m3;
            ldsm_x4(tW + off.rows[kk], m0, m1, m2, m3);   // (rows 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15)
            const unsigned a[4] = {m0, m2, m1, m3};
#pragma unroll
            for (int j = 0; j < MT; j += 2)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4(tX + j * 8 * DG_BK * 2 + off.rows[kk], b0, b1, b2, b3);
                Mma<T>::run(acc[j], a, b0, b1);
                Mma<T>::run(acc[j + 1], a, b2, b3);
            }
        }
        __syncthreads();                                   // this stage is refilled DG_ST - 1 tiles later
    }
    cp_async_wait<0>();
    // With nw: the row sums of squares of this slice of K in dg_rowsq (a row's TPR threads are consecutive lanes).
    __shared__ float dg_rowsq[64];
    if (nw)
    {
#pragma unroll
        for (int off = TPR / 2; off > 0; off >>= 1) sq += __shfl_xor_sync(FULL_MASK, sq, off);
        if (tid % TPR == 0) dg_rowsq[tid / TPR] = sq;
        __syncthreads();
    }
    // 1 / rms of x row m (1 without a norm): from this CTA's sums when it holds all of K.
    auto inv_rms = [&](int m) { return nw ? rsqrtf(dg_rowsq[m] / K + eps) : 1.f; };

    // acc[j][e]: W row n0 + 16 warp + g (+ 8 for e >= 2), x row 8j + 2 c4 + (e & 1); with SWIGLU the gate (e < 2) and
    // the up (e >= 2) sums of output o.
    const int nl = warp * 16 + g, o = blockIdx.x * (DG_BN / 2) + warp * 8 + g;
    if (SWIGLU && slices == 1)
    {
#pragma unroll
        for (int j = 0; j < MT; j++)
#pragma unroll
            for (int e = 0; e < 2; e++)
            {
                const int m = 8 * j + 2 * c4 + e;
                if (m >= M || o >= N) continue;
                const float r = inv_rms(m);
                const float gv = acc[j][e] * r + (bias ? to_f(bias[o]) : 0.f), uv = acc[j][e + 2] * r + (bias2 ? to_f(bias2[o]) : 0.f);
                y[(i64)m * ldy + o] = from_f<T>(dg_silu(gv) * uv);
            }
        return;
    }
    if (slices == 1)
    {
#pragma unroll
        for (int j = 0; j < MT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int m = 8 * j + 2 * c4 + (e & 1), n = n0 + nl + (e >> 1) * 8;
                if (m >= M || n >= N) continue;
                float v = alpha * (acc[j][e] * inv_rms(m));
                if (bias) v += to_f(bias[n]);
                if (beta != 0.f) v += beta * to_f(y[(i64)m * ldy + n]);
                y[(i64)m * ldy + n] = from_f<T>(v);
            }
        return;
    }
    const int Np = gridDim.x * DG_BN;
#pragma unroll
    for (int j = 0; j < MT; j++)
#pragma unroll
        for (int e = 0; e < 4; e++)
        {
            const int m = 8 * j + 2 * c4 + (e & 1), n = n0 + nl + (e >> 1) * 8;
            partial[((i64)slice * MP + m) * Np + n] = acc[j][e];
        }
    // With nw, this slice's row sums of squares after the partials: (row block, slice, 8 MT).
    float* const partial_sq = partial + (i64)slices * MP * Np + (i64)blockIdx.x * slices * MP;
    if (nw && tid < MP) partial_sq[slice * MP + tid] = dg_rowsq[tid];
    __shared__ int last;
    __threadfence();                                       // this CTA's partial is visible before it is counted
    __syncthreads();
    if (tid == 0) last = atomicAdd(counters + blockIdx.x, 1) == slices - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (nw)
    {
        // Every slice's sums, in slice order, into dg_rowsq: inv_rms then covers all of K.
        __syncthreads();
        if (tid < MP)
        {
            float total = 0.f;
            for (int s = 0; s < slices; s++) total += partial_sq[s * MP + tid];
            dg_rowsq[tid] = total;
        }
        __syncthreads();
    }
    if (SWIGLU)
    {
        for (int i = tid; i < MP * (DG_BN / 2); i += DG_THREADS)
        {
            const int m = i / (DG_BN / 2), ol = i % (DG_BN / 2), oo = blockIdx.x * (DG_BN / 2) + ol;
            if (m >= M || oo >= N) continue;
            const int vg = n0 + (ol >> 3) * 16 + (ol & 7);                 // the gate's virtual row; the up's is 8 further
            float gs = 0.f, us = 0.f;
            for (int s = 0; s < slices; s++)
            {
                gs += partial[((i64)s * MP + m) * Np + vg];
                us += partial[((i64)s * MP + m) * Np + vg + 8];
            }
            const float r = inv_rms(m);
            const float gv = gs * r + (bias ? to_f(bias[oo]) : 0.f), uv = us * r + (bias2 ? to_f(bias2[oo]) : 0.f);
            y[(i64)m * ldy + oo] = from_f<T>(dg_silu(gv) * uv);
        }
        if (tid == 0) counters[blockIdx.x] = 0;
        return;
    }
    for (int i = tid; i < MP * DG_BN; i += DG_THREADS)
    {
        const int m = i / DG_BN, n = n0 + i % DG_BN;
        if (m >= M || n >= N) continue;
        float sum = 0.f;
        for (int s = 0; s < slices; s++) sum += partial[((i64)s * MP + m) * Np + n];
        float v = alpha * (sum * inv_rms(m));
        if (bias) v += to_f(bias[n]);
        if (beta != 0.f) v += beta * to_f(y[(i64)m * ldy + n]);
        y[(i64)m * ldy + n] = from_f<T>(v);
    }
    if (tid == 0) counters[blockIdx.x] = 0;
}

#define DECODE_GEMM(name, t, MT)                                                                                          \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) decode_gemm_##name##_m##MT(const t* x, const t* w,           \
        const t* bias, t* y, float* partial, int* counters, int M, int N, int K, i64 ldx, i64 ldw, i64 ldy, float alpha,  \
        float beta, int early, const t* nw, float eps)                                                                    \
    {                                                                                                                     \
        decode_gemm<t, MT, false>(x, w, nullptr, bias, nullptr, y, partial, counters, M, N, K, ldx, ldw, ldy, alpha,      \
                                  beta, early, nw, eps);                                                                  \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) decode_gemm_swiglu_##name##_m##MT(const t* x,               \
        const t* gate, const t* up, const t* gate_bias, const t* up_bias, t* y, float* partial, int* counters, int M,     \
        int F, int K, i64 ldx, i64 ldw, i64 ldy, int early, const t* nw, float eps)                                       \
    {                                                                                                                     \
        decode_gemm<t, MT, true>(x, gate, up, gate_bias, up_bias, y, partial, counters, M, F, K, ldx, ldw, ldy, 1.f, 0.f, \
                                 early, nw, eps);                                                                         \
    }
DECODE_GEMM(bf16, bf16, 2) DECODE_GEMM(bf16, bf16, 4) DECODE_GEMM(bf16, bf16, 8)
DECODE_GEMM(f16, f16, 2) DECODE_GEMM(f16, f16, 4) DECODE_GEMM(f16, f16, 8)
