// Decode-size products on Hopper's warpgroup MMA (sm_90a): decode_gemm.cu's contract, y (M, N) = alpha * x (M, K) W^T +
// bias + beta * y with M <= 8 * MT rows of x (5 to 64), W (N, K) row-major, bf16 or f16, fp32 accumulation; its SwiGLU form
// and its RMSNorm on the way. decode_gemm.cu's mma.sync kernel measured 2x cuBLASLt's time at 64 rows (session 21: one
// warp an SM sub-partition exposing every ldmatrix and MMA latency, x's fragments read from shared memory once per warp
// per W tile); here the tensor cores read W from shared memory themselves and x's fragments are loaded once per warp.
// Measured (session 21, k-tiles of 64): 15-41 us a product against cuBLASLt's 9-31 (norm and SwiGLU kernels counted);
// each CTA takes about 3,000 cycles a k-tile whether or not it shares its SM, so DRAM throughput (13-36 %) follows the CTAs
// an SM holds.
//
// Operands swapped ("swap AB"): x is wgmma's A operand, m64 = x's rows (padded to 64: a warp whose 16 rows lie past
// 8 MT passes zeros), from registers (ldmatrix of the staged x tile; with a norm, scaled there by the norm weight's
// fragment as decode_gemm.cu does); W is the B operand, n128 = 128 rows of W (SWIGLU: 64 outputs' gate rows, then
// their up rows, so that column i is output i's gate and 64 + i its up, as decode_gemm.cu lays them), K-major from shared memory in the 128-byte
// swizzle (hopper.cuh). A CTA is one warpgroup: 128 rows of W (blockIdx.y) and slice blockIdx.x of gridDim.x slices of K;
// per k-tile of BK = 64 columns (each W row's 128 contiguous bytes, one block of the swizzle) it stages W's 128 rows, x's
// 8 MT rows and the norm weight's 64 columns (cp.async, 4 stages; W's first stages issued before pdl_wait when early, as
// decode_gemm.cu; in the tensor-map form, TMA box copies by one thread against the stage's transaction barrier), then issues
// 4 m64n128k16 wgmma. (Session 22 measured k-tiles of 128 and 256 columns, 4 and 2 stages,
// and 64 W rows a CTA with m64n64k16: each slower, the step 2.60-2.63 and 1.99 ms against 1.89; docs/benchmarks.md.)
// The accumulator (hopper.cuh's fragment) holds x row 16 w + g + 8 (e >> 1) by W column 8 j + 2 c + (e & 1), so a lane
// holds pairs of adjacent outputs, and with SWIGLU an output's gate sum (n8 tile j < 8) and its up sum (tile j + 8). With a norm, a lane also sums the squares
// of its x rows' fragments, so the rows it writes are the rows whose sums it holds.
// Several slices: a thread-block cluster (gridDim.x CTAs along x), each CTA's fp32 tile left in its shared memory and
// summed over the cluster in slice order through distributed shared memory by the CTA that owns each share of the outputs,
// as decode_gemm.cu does.
#define DH_THREADS 128
#define DH_BN 128
#define DH_RS (DH_BN + 8)   // floats a row of the cluster's fp32 tiles (x row m, W column n at m * DH_RS + n)

template <typename T, int MT, bool SWIGLU, bool TMA = false>
__device__ void decode_gemm_hopper(const T* x, const T* w, const T* w2, const T* bias, const T* bias2, T* y, int M, int N, int K,
                                   i64 ldx, i64 ldw, i64 ldy, float alpha, float beta, int early, const T* nw, float eps,
                                   const TensorMap* wmap = nullptr, const TensorMap* xmap = nullptr, const TensorMap* w2map = nullptr)
{
    constexpr int BK = 64, MP = 8 * MT, WT = DH_BN * BK * 2, XT = MP * BK * 2, STAGE = WT + XT + 1024;   // 1,024-byte aligned tiles
    constexpr int ST = 4, CH = BK / 8, RPP = DH_THREADS / CH;   // stages; 16-byte chunks a row; rows a pass
    static_assert((MP * DH_RS + 2 * MP) * 4 <= ST * STAGE, "decode_gemm_hopper: the cluster's tiles fit in the stages");
    extern __shared__ unsigned char dh_raw[];
    unsigned char* const raw = cta_dynamic_shared(dh_raw);
    const unsigned smem = (smem_u32(raw) + 1023u) & ~1023u;
    float* const aligned = reinterpret_cast<float*>(raw + (smem - smem_u32(raw)));
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    const int slices = gridDim.x, slice = blockIdx.x, n0 = blockIdx.y * DH_BN, ks = K / slices, k0 = slice * ks;
    const int tiles = ks / BK;
    const bool rows = 16 * warp < MP;                      // this warp's 16 x rows exist in the tile
    const int cr = tid / CH, cc = tid % CH;                // thread tid copies chunk tid % CH of rows tid / CH, + RPP, ...
    // TMA: stage s's transaction barrier, 512 bytes into the 1,024 that follow its x tile (its norm weight takes the first 128).
    auto bar = [&](int stage) { return smem + stage * STAGE + WT + XT + 512; };
    if constexpr (TMA)
    {
        if (tid == 0)
        {
            for (int s = 0; s < ST; s++) mbar_init(bar(s), 1);
            mbar_fence_init();
        }
        __syncthreads();
    }
    auto load_w = [&](int stage, int t) {
        const unsigned dst = smem + stage * STAGE;
        if constexpr (TMA)
        {
            // One thread: the stage's one arrival announcing all its bytes (W, x, the norm weight), then W's box of 128 rows,
            // or with SWIGLU the gate's and the up weight's boxes of 64 (rows past N arrive as zeros). x's copies follow in
            // load_x, after pdl_wait when early.
            if (tid == 0)
            {
                mbar_arrive_expect_tx(bar(stage), WT + XT + (nw ? BK * 2 : 0));
                if constexpr (SWIGLU)
                {
                    const int o0 = blockIdx.y * (DH_BN / 2);
                    tma_load_2d(dst, wmap, k0 + t * BK, o0, bar(stage));
                    tma_load_2d(dst + WT / 2, w2map, k0 + t * BK, o0, bar(stage));   // 64 rows on: the swizzle's phase kept
                }
                else tma_load_2d(dst, wmap, k0 + t * BK, n0, bar(stage));
            }
            return;
        }
#pragma unroll
        for (int i = 0; i < DH_BN / RPP; i++)
        {
            // Column r of the product: W's row n0 + r, or with SWIGLU output r % 64's gate row (r < 64) or its up row.
            const int r = cr + RPP * i, n = SWIGLU ? blockIdx.y * (DH_BN / 2) + (r & (DH_BN / 2 - 1)) : n0 + r;
            const T* src = SWIGLU && r >= DH_BN / 2 ? w2 : w;
            const bool ok = n < N;
            cp_async16(dst + sw128_offset<DH_BN>(r, cc), ok ? src + (i64)n * ldw + k0 + t * BK + cc * 8 : w, ok);
        }
    };
    auto load_x = [&](int stage, int t) {
        const unsigned dst = smem + stage * STAGE + WT;
        if constexpr (TMA)
        {
            if (tid == 0)
            {
                tma_load_2d(dst, xmap, k0 + t * BK, 0, bar(stage));        // MP rows from row 0: rows past M arrive as zeros
                if (nw) bulk_load(dst + XT, nw + k0 + t * BK, BK * 2, bar(stage));
            }
            return;
        }
        load_tile_sw128_bounded<BK, MP, DH_THREADS>(dst, x + k0 + t * BK, ldx, 0, M, tid);
        if (nw && tid < CH) cp_async16(dst + XT + tid * 16, nw + k0 + t * BK + tid * 8, true);
    };
    prologue_weights_first<ST>(tiles, early, load_w, load_x);

    float acc[DH_BN / 2];
#pragma unroll
    for (int i = 0; i < DH_BN / 2; i++) acc[i] = 0.f;
    float sq0 = 0.f, sq1 = 0.f;                            // with nw: this lane's share of x rows 16 warp + g and + 8
    const TileOffsets<64> off(lane);                       // within a 64-column block
    for (int t = 0; t < tiles; t++)
    {
        const int ahead = t + ST - 1;
        if (ahead < tiles)
        {
            load_w(ahead % ST, ahead);
            load_x(ahead % ST, ahead);
        }
        if constexpr (TMA) mbar_wait(bar(t % ST), (t / ST) & 1);   // the copies' bytes are visible to every thread and wgmma
        else
        {
            cp_async_commit();
            cp_async_wait<ST - 1>();
            fence_async_shared();                          // the staged W becomes visible to wgmma
            __syncthreads();
        }
        const unsigned sb = smem + (t % ST) * STAGE, sx = sb + WT + warp * 16 * 128, sn = sb + WT + XT;
        unsigned a[BK / 16][4];
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++)
        {
            if (!rows) { a[kk][0] = a[kk][1] = a[kk][2] = a[kk][3] = 0u; continue; }
            unsigned m0, m1, m2, m3;
            // k16 step kk of the tile's 128-byte rows: (rows 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15)
            ldsm_x4(sx + off.rows[kk], m0, m1, m2, m3);
            a[kk][0] = m0; a[kk][1] = m2; a[kk][2] = m1; a[kk][3] = m3;
            if (nw)
            {
                sq0 += sumsq2<T>(a[kk][0]) + sumsq2<T>(a[kk][2]);
                sq1 += sumsq2<T>(a[kk][1]) + sumsq2<T>(a[kk][3]);
                const unsigned nlo = lds_u32(sn + kk * 32 + c4 * 4), nhi = lds_u32(sn + kk * 32 + 16 + c4 * 4);
                a[kk][0] = mul2_rn<T>(a[kk][0], nlo); a[kk][1] = mul2_rn<T>(a[kk][1], nlo);
                a[kk][2] = mul2_rn<T>(a[kk][2], nhi); a[kk][3] = mul2_rn<T>(a[kk][3], nhi);
            }
        }
        const u64 wdesc = sw128_descriptor(sb, 16, 1024);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) Wgmma<T, DH_BN>::rs_kmajor(acc, a[kk], desc_plus(wdesc, kk * 32));
        wgmma_commit();
        wgmma_wait<0>();
        fence_registers<DH_BN / 2>(acc);
        __syncthreads();                                   // this stage is refilled ST - 1 tiles later
    }
    cp_async_wait<0>();
    if constexpr (TMA)
        if (tid == 0)
            for (int s = 0; s < ST; s++) mbar_inval(bar(s));   // the stages' memory holds the cluster's tiles next
    __syncthreads();
    if (nw)
    {
        sq0 += __shfl_xor_sync(FULL_MASK, sq0, 1);
        sq0 += __shfl_xor_sync(FULL_MASK, sq0, 2);
        sq1 += __shfl_xor_sync(FULL_MASK, sq1, 1);
        sq1 += __shfl_xor_sync(FULL_MASK, sq1, 2);
    }
    const int mrow = 16 * warp + g;                        // this lane's x rows: mrow and mrow + 8
    if (slices == 1)
    {
        if (!rows) return;
#pragma unroll
        for (int r = 0; r < 2; r++)
        {
            const int m = mrow + 8 * r;
            if (m >= M) continue;
            const float inv = nw ? rsqrtf((r ? sq1 : sq0) / K + eps) : 1.f;
#pragma unroll
            for (int j = 0; j < DH_BN / 8; j++)
            {
                const float v0 = acc[4 * j + 2 * r] * inv, v1 = acc[4 * j + 2 * r + 1] * inv;
                if (SWIGLU)
                {
                    // Columns 8 j + 2 c4 (+ 1) of the first 64 are outputs' gate sums; the same 64 on, their up sums.
                    if (j >= DH_BN / 16) continue;
                    const float u0 = acc[4 * (j + DH_BN / 16) + 2 * r] * inv, u1 = acc[4 * (j + DH_BN / 16) + 2 * r + 1] * inv;
                    const int o = blockIdx.y * (DH_BN / 2) + 8 * j + 2 * c4;
                    if (o < N) store_swiglu(y, (i64)m * ldy + o, v0, u0, bias, bias2, o);
                    if (o + 1 < N) store_swiglu(y, (i64)m * ldy + o + 1, v1, u1, bias, bias2, o + 1);
                }
                else
                {
                    const int n = n0 + 8 * j + 2 * c4;
                    if (n < N) store_product(y, (i64)m * ldy + n, v0, alpha, bias, n, beta);
                    if (n + 1 < N) store_product(y, (i64)m * ldy + n + 1, v1, alpha, bias, n + 1, beta);
                }
            }
        }
        return;
    }
    // Several slices: this CTA's tile and row sums into its shared memory, then the cluster's sums of this CTA's share.
    float* const tile = aligned;                           // (MP, DH_RS)
    float* const rowsq = aligned + MP * DH_RS;             // (MP): this slice's sums of squares of x's rows
    float* const total = rowsq + MP;                       // (MP): every slice's
    if (rows)
    {
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
            for (int j = 0; j < DH_BN / 8; j++)
            {
                float* p = tile + (mrow + 8 * r) * DH_RS + 8 * j + 2 * c4;
                p[0] = acc[4 * j + 2 * r];
                p[1] = acc[4 * j + 2 * r + 1];
            }
        if (nw && c4 == 0) { rowsq[mrow] = sq0; rowsq[mrow + 8] = sq1; }
    }
    cluster_arrive();
    cluster_wait();
    if (nw)
    {
        cluster_sum_rows(rowsq, total, MP, slices, tid, DH_THREADS);   // every slice's sums of squares, in slice order
        __syncthreads();
    }
    // Pair q of x row m: columns 2q and 2q + 1 (W rows n0 + 2q, + 1; or with SWIGLU outputs 2q and 2q + 1, their gate sums
    // there and their up sums 64 columns on).
    constexpr int PAIRS = SWIGLU ? DH_BN / 4 : DH_BN / 2;
    const int pairs = M * PAIRS, first = (int)((long long)pairs * slice / slices), last = (int)((long long)pairs * (slice + 1) / slices);
    for (int p = first + tid; p < last; p += DH_THREADS)
    {
        const int m = p / PAIRS, q = p % PAIRS;
        float s0, s1, u0 = 0.f, u1 = 0.f;
        cluster_sum2(tile + m * DH_RS + 2 * q, slices, s0, s1);
        if (SWIGLU) cluster_sum2(tile + m * DH_RS + DH_BN / 2 + 2 * q, slices, u0, u1);
        const float inv = nw ? rsqrtf(total[m] / K + eps) : 1.f;
        if (SWIGLU)
        {
            const int o = blockIdx.y * (DH_BN / 2) + 2 * q;
            if (o < N) store_swiglu(y, (i64)m * ldy + o, s0 * inv, u0 * inv, bias, bias2, o);
            if (o + 1 < N) store_swiglu(y, (i64)m * ldy + o + 1, s1 * inv, u1 * inv, bias, bias2, o + 1);
        }
        else
        {
            const int n = n0 + 2 * q;
            if (n < N) store_product(y, (i64)m * ldy + n, s0 * inv, alpha, bias, n, beta);
            if (n + 1 < N) store_product(y, (i64)m * ldy + n + 1, s1 * inv, alpha, bias, n + 1, beta);
        }
    }
    cluster_arrive();                                      // no CTA leaves while another still reads its tile
    cluster_wait();
}

#define DECODE_GEMM_HOPPER(name, t, MT)                                                                                   \
    extern "C" __global__ void __launch_bounds__(DH_THREADS) decode_gemm_hopper_##name##_m##MT(const t* x, const t* w,    \
        const t* bias, t* y, int M, int N, int K, i64 ldx, i64 ldw, i64 ldy, float alpha, float beta, int early,          \
        const t* nw, float eps)                                                                                           \
    {                                                                                                                     \
        decode_gemm_hopper<t, MT, false>(x, w, nullptr, bias, nullptr, y, M, N, K, ldx, ldw, ldy, alpha, beta, early, nw, \
                                         eps);                                                                            \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(DH_THREADS) decode_gemm_hopper_swiglu_##name##_m##MT(const t* x,         \
        const t* gate, const t* up, const t* gate_bias, const t* up_bias, t* y, int M, int F, int K, i64 ldx, i64 ldw,    \
        i64 ldy, int early, const t* nw, float eps)                                                                       \
    {                                                                                                                     \
        decode_gemm_hopper<t, MT, true>(x, gate, up, gate_bias, up_bias, y, M, F, K, ldx, ldw, ldy, 1.f, 0.f, early, nw,  \
                                        eps);                                                                             \
    }
// The plain product with W's and x's tiles copied by the tensor memory accelerator (CudaBackendOptions.DecodeProductTensorMaps):
// wmap is W as (N rows, K columns) in boxes of 128 rows by 64 columns, xmap x as (M, K) in boxes of 8 MT rows by 64, both in
// the 128-byte swizzle; the SwiGLU form's gmap and umap the gate and up weights (F rows each) in boxes of 64 rows.
#define DECODE_GEMM_HOPPER_TMA(name, t, MT)                                                                               \
    extern "C" __global__ void __launch_bounds__(DH_THREADS) decode_gemm_hopper_tma_##name##_m##MT(const t* x,            \
        const t* w, const t* bias, t* y, int M, int N, int K, i64 ldx, i64 ldw, i64 ldy, float alpha, float beta,         \
        int early, const t* nw, float eps, const __grid_constant__ TensorMap wmap, const __grid_constant__ TensorMap xmap) \
    {                                                                                                                     \
        decode_gemm_hopper<t, MT, false, true>(x, w, nullptr, bias, nullptr, y, M, N, K, ldx, ldw, ldy, alpha, beta,      \
                                               early, nw, eps, &wmap, &xmap);                                             \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(DH_THREADS) decode_gemm_hopper_tma_swiglu_##name##_m##MT(const t* x,     \
        const t* gate, const t* up, const t* gate_bias, const t* up_bias, t* y, int M, int F, int K, i64 ldx, i64 ldw,    \
        i64 ldy, int early, const t* nw, float eps, const __grid_constant__ TensorMap gmap,                               \
        const __grid_constant__ TensorMap umap, const __grid_constant__ TensorMap xmap)                                   \
    {                                                                                                                     \
        decode_gemm_hopper<t, MT, true, true>(x, gate, up, gate_bias, up_bias, y, M, F, K, ldx, ldw, ldy, 1.f, 0.f, early,\
                                              nw, eps, &gmap, &xmap, &umap);                                              \
    }
DECODE_GEMM_HOPPER(bf16, bf16, 2) DECODE_GEMM_HOPPER(bf16, bf16, 4) DECODE_GEMM_HOPPER(bf16, bf16, 8)
DECODE_GEMM_HOPPER(f16, f16, 2) DECODE_GEMM_HOPPER(f16, f16, 4) DECODE_GEMM_HOPPER(f16, f16, 8)
DECODE_GEMM_HOPPER_TMA(bf16, bf16, 2) DECODE_GEMM_HOPPER_TMA(bf16, bf16, 4) DECODE_GEMM_HOPPER_TMA(bf16, bf16, 8)
DECODE_GEMM_HOPPER_TMA(f16, f16, 2) DECODE_GEMM_HOPPER_TMA(f16, f16, 4) DECODE_GEMM_HOPPER_TMA(f16, f16, 8)
