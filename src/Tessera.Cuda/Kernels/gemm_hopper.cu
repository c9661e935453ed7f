// The training products on Hopper (sm_90a): C (M, N) = alpha A (M, K) B (N, K)^T + bias + beta C, A and B 16-bit and
// K-contiguous (an nn.Linear's forward: activations times the weight), fp32 accumulation, C in A's type. cuBLASLt runs these
// at about 86 % of the measured tensor-core peak at llama-1b's shapes (docs/cuda-notes.md); this kernel is the start of a
// product of ours at that rate, which the fusions cuBLASLt cannot do (SwiGLU, RMSNorm's statistics in the epilogue) need.
//
// The design is the one Hopper's fast products share (CUTLASS's warp-specialized persistent kernels, FlashAttention-3):
// - Persistent: one CTA an SM walks the output tiles t = blockIdx.x, + gridDim.x, ...; each tile BM = 128 rows by BN columns
//   (256 or 128). The walk goes down 8 tiles of rows before moving one tile of columns (gh_tile), so the CTAs running at
//   once share B's tiles and A's in L2.
// - Warp-specialized, three warpgroups: warpgroup 0 is the producer (one thread issues the tensor memory accelerator's
//   copies; the warpgroup gives its registers back), warpgroups 1 and 2 the consumers, each the tile's 64 rows 64 (w - 1)
//   on as wgmma m64nBNk16 with A and B read from shared memory (128 accumulators a thread at BN = 256).
// - A ring of ST stages, each A's box (128 rows by 64 columns of K) and B's (BN rows by 64), in the 128-byte swizzle
//   (hopper.cuh). Stage s has two transaction barriers: full[s] (the producer's one arrival announcing the stage's bytes;
//   complete when they have landed) and empty[s] (one arrival by each consumer warpgroup once its products that read the
//   stage are done). The k-tiles of every tile a CTA takes are numbered in one sequence i; k-tile i uses stage i % ST in
//   phase (i / ST) & 1, so the producer runs up to ST k-tiles ahead, across tile boundaries (the next tile's first stages
//   load while the consumers store this one).
// - A consumer issues k-tile i's four k16 products, commits them, then waits until at most one group is in flight: k-tile
//   i - 1's products are done, and it hands stage (i - 1) % ST back. After a tile's last k-tile it waits for all, hands
//   the last stage back, and stores its 64 rows from registers: a lane's fragment pairs (hopper.cuh) as 32-bit stores.
// Boxes past M, N or K arrive as zeros (the tensor map's bounds), so partial tiles need no masks but the stores'.
#define GH_BM 128
#define GH_BK 64
#define GH_THREADS 384
#define GH_GROUP 8   // tiles of rows walked before the next tile of columns

// Tile t of the walk: row tile tm, column tile tn.
__device__ __forceinline__ void gh_tile(int t, int tiles_m, int tiles_n, int& tm, int& tn)
{
    const int per = GH_GROUP * tiles_n, first = t / per * GH_GROUP, rows = min(tiles_m - first, GH_GROUP), r = t % per;
    tm = first + r % rows;
    tn = r / rows;
}

// Output (m, n) and (m, n + 1) from their fp32 sums as store_product writes each: alpha * sum + bias[n] + beta * c, rounded
// to T; one 32-bit store where both exist (n even, the row's start 4-byte aligned: the host's conditions).
template <typename T>
__device__ __forceinline__ void gh_store_pair(T* row, int n, int N, float s0, float s1, float alpha, const T* bias, float beta)
{
    if (n + 1 < N)
    {
        float v0 = alpha * s0, v1 = alpha * s1;
        if (bias) { v0 += to_f(bias[n]); v1 += to_f(bias[n + 1]); }
        if (beta != 0.f) { v0 += beta * to_f(row[n]); v1 += beta * to_f(row[n + 1]); }
        *reinterpret_cast<unsigned*>(row + n) = pack2<T>(v0, v1);
    }
    else if (n < N) store_product(row, n, s0, alpha, bias, n, beta);
}

template <typename T, int BN, int ST>
__device__ void gemm_hopper_nt(const TensorMap* amap, const TensorMap* bmap, const T* bias, T* c, int M, int N, int K, i64 ldc,
                               float alpha, float beta)
{
    constexpr int AT = GH_BM * GH_BK * 2, BT = BN * GH_BK * 2, STAGE = AT + BT;   // bytes; each a multiple of 1,024
    extern __shared__ unsigned char gh_raw[];
    unsigned char* const raw = cta_dynamic_shared(gh_raw);
    const unsigned smem = (smem_u32(raw) + 1023u) & ~1023u;
    auto full = [&](int s) { return smem + ST * STAGE + 8 * s; };
    auto empty = [&](int s) { return smem + ST * STAGE + 8 * (ST + s); };
    const int tid = threadIdx.x, wg = tid / 128;
    const int tiles_m = (M + GH_BM - 1) / GH_BM, tiles_n = (N + BN - 1) / BN, tiles = tiles_m * tiles_n;
    const int ktiles = (K + GH_BK - 1) / GH_BK;
    if (tid == 0)
    {
        for (int s = 0; s < ST; s++)
        {
            mbar_init(full(s), 1);
            mbar_init(empty(s), 2);
        }
        mbar_fence_init();
    }
    __syncthreads();
    if (wg == 0)
    {
        warpgroup_registers_down<40>();
        if (tid != 0) return;
        int i = 0;
        for (int t = blockIdx.x; t < tiles; t += gridDim.x)
        {
            int tm, tn;
            gh_tile(t, tiles_m, tiles_n, tm, tn);
            for (int kt = 0; kt < ktiles; kt++, i++)
            {
                const int s = i % ST;
                mbar_wait(empty(s), ((i / ST) & 1) ^ 1);   // the consumers handed it back (its first use passes at once)
                mbar_arrive_expect_tx(full(s), STAGE);
                tma_load_2d(smem + s * STAGE, amap, kt * GH_BK, tm * GH_BM, full(s));
                tma_load_2d(smem + s * STAGE + AT, bmap, kt * GH_BK, tn * BN, full(s));
            }
        }
        return;
    }
    warpgroup_registers_up<232>();
    const int w = wg - 1, lane = tid & 31, warp = (tid >> 5) & 3, g = lane >> 2, c4 = lane & 3;
    const bool leader = (tid & 127) == 0;
    float acc[BN / 2];
    int i = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x)
    {
        int tm, tn;
        gh_tile(t, tiles_m, tiles_n, tm, tn);
        for (int kt = 0; kt < ktiles; kt++, i++)
        {
            const int s = i % ST;
            mbar_wait(full(s), (i / ST) & 1);
            const unsigned sa = smem + s * STAGE;
            const u64 ad = sw128_descriptor(sa + w * 64 * 128, 16, 1024), bd = sw128_descriptor(sa + AT, 16, 1024);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < GH_BK / 16; kk++)
                Wgmma<T, BN>::ss(acc, desc_plus(ad, kk * 32), desc_plus(bd, kk * 32), kt > 0 || kk > 0);
            wgmma_commit();
            wgmma_wait<1>();                               // k-tile i - 1's products are done: its stage goes back
            if (kt > 0 && leader) mbar_arrive(empty((i - 1) % ST));
        }
        wgmma_wait<0>();
        fence_registers<BN / 2>(acc);
        if (leader) mbar_arrive(empty((i - 1) % ST));
        const int n0 = tn * BN;
#pragma unroll
        for (int r = 0; r < 2; r++)
        {
            const int m = tm * GH_BM + 64 * w + 16 * warp + g + 8 * r;
            if (m >= M) continue;
            T* const row = c + (i64)m * ldc;
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
                gh_store_pair(row, n0 + 8 * j + 2 * c4, N, acc[4 * j + 2 * r], acc[4 * j + 2 * r + 1], alpha, bias, beta);
        }
    }
}

// a (M rows of K) in boxes of 128 rows by 64 columns, b (N rows of K) in boxes of BN rows by 64, both in the 128-byte swizzle.
#define GEMM_HOPPER_NT(name, t, BN, ST)                                                                                   \
    extern "C" __global__ void __launch_bounds__(GH_THREADS, 1) gemm_hopper_nt_##name##_n##BN(                            \
        const __grid_constant__ TensorMap amap, const __grid_constant__ TensorMap bmap, const t* bias, t* c, int M, int N, \
        int K, i64 ldc, float alpha, float beta)                                                                          \
    {                                                                                                                     \
        gemm_hopper_nt<t, BN, ST>(&amap, &bmap, bias, c, M, N, K, ldc, alpha, beta);                                      \
    }
GEMM_HOPPER_NT(bf16, bf16, 256, 4) GEMM_HOPPER_NT(bf16, bf16, 128, 6)
GEMM_HOPPER_NT(f16, f16, 256, 4) GEMM_HOPPER_NT(f16, f16, 128, 6)
