// Causal grouped-query attention forward for Hopper (sm_90a), after FlashAttention-3 (Shah et al., 2024): the matrix
// products on warpgroup MMA (wgmma.mma_async, 64 rows per warpgroup, operands read from shared memory through matrix
// descriptors), fp32 accumulation, online softmax in registers in the log2 domain as flash_attention.cu does.
// Compiled only for compute capability 9.0, with the architecture-specific target (the host passes sm_90a for this file).
//
// The contract is flash_attention.cu's flash_forward: q (B,T,H,D), k/v (B,S,K,D), output (B,T,H,D), row strides in
// elements (last dimension contiguous, rows 16-byte aligned); query t sits at key position S - T + t; query head h reads
// kv head h / (H / K); lse (B,H,T) natural-log log-sum-exp, or null; starts (B) device lengths of a KV cache, or null.
// No sliding window (the host sends windowed calls to flash_attention.cu). The same tile serves serving's chunked prefill
// (paged_prefill_hopper: flash_attention.cu's paged_prefill contract), its keys and values read through a block table; the
// tile is generic over where its K/V rows come from (common.cuh's DenseRowsSw128 / PagedRowsSw128).
//
// CTA: 128 query rows of one head, two warpgroups of 64; key/value blocks of 128 rows staged by all 256 threads with
// cp.async into a two-stage ring (the next block loads while this one is computed).
//   S (64 x 128) = Q K^T:  wgmma m64n128k16, A = Q and B = K both K-major (rows of D) in shared memory;
//   P = exp2(S * scale * log2 e - m) rounded to 16 bits, kept in registers as the A operand of
//   O (64 x D) += P V:     wgmma m64nDk16, B = V read N-major (V's rows are keys = k, its columns D = n).
//
// Shared-memory tiles, descriptors and fragments are hopper.cuh's (the 128-byte swizzle, K-major Q and K, N-major V: its
// k16 step j, 16 keys, starts 2,048 j bytes in); the S accumulator of 16 keys packs straight into P's A registers.

struct Strides3 { i64 b, t, h; };
#define LN2 0.6931471805599453f

// u64, the wgmma helpers (fences, descriptors, Wgmma / WgmmaT) and pack2 are hopper.cuh's.

// load_tile_sw128 (and _bounded), the row sources DenseRowsSw128 / PagedRowsSw128 and find_prefill_tile are common.cuh's.

// cp_async4 (the backward's lse and delta rows, which are not 16-byte aligned in general) is common.cuh's.
// warpgroup_barrier, bulk_commit, bulk_wait_read and bulk_wait are hopper.cuh's.
// dst[0] += a and dst[1] += b in global memory, atomically (dQ's reductions into its fp32 accumulator).
__device__ __forceinline__ void red_add2(float* dst, float a, float b)
{
#ifdef __CUDA_ARCH__
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(dst), "f"(a), "f"(b) : "memory");
#else
    emu_red_add2(dst, a, b);
#endif
}

// One S block of the forward (BN keys from n0, this thread's two rows of the wgmma fragment): the causal and length mask
// (keys past the warp's first row's position or past S get -inf; uniform over the block's common case, where none does).
template <int BN>
__device__ __forceinline__ void forward_mask_block(float* s, int n0, int qpos0, int g, int c4, int S)
{
    if (n0 + BN - 1 > qpos0 - g || n0 + BN > S)
    {
#pragma unroll
        for (int j = 0; j < BN / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int key = n0 + j * 8 + 2 * c4 + (e & 1), qp = qpos0 + (e >> 1) * 8;
                if (key > qp || key >= S) s[4 * j + e] = NEG_INF;
            }
    }
}

// The online softmax of one S block in the log2 domain: s becomes P = 2^(s scale log2e - m) in fp32, mrow and lrow (max
// and sum) advance, and corr[r] is the factor by which row r's output accumulated so far must be scaled.
template <int BN>
__device__ __forceinline__ void forward_softmax_block(float* s, float* mrow, float* lrow, float* corr, float sl2)
{
#pragma unroll
    for (int r = 0; r < 2; r++)
    {
        // The max over raw scores (the scale is positive); the scale joins in one FFMA per score below.
        float mx = NEG_INF;
#pragma unroll
        for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * r], s[4 * j + 2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
        mx = fmaxf(mrow[r], mx * sl2);   // log2 domain
        const float mu = mx == NEG_INF ? 0.f : mx;
        corr[r] = fast_exp2(mrow[r] - mu);
        mrow[r] = mx;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < BN / 8; j++)
        {
            const float p0 = fast_exp2(fmaf(s[4 * j + 2 * r], sl2, -mu)), p1 = fast_exp2(fmaf(s[4 * j + 2 * r + 1], sl2, -mu));
            s[4 * j + 2 * r] = p0; s[4 * j + 2 * r + 1] = p1;
            sum += p0 + p1;
        }
        lrow[r] = lrow[r] * corr[r] + sum;
    }
}

// The output accumulator's rows scaled by corr (row r: registers 4 j + 2 r and 4 j + 2 r + 1).
template <int D>
__device__ __forceinline__ void forward_rescale(float* oacc, const float* corr)
{
#pragma unroll
    for (int r = 0; r < 2; r++)
#pragma unroll
        for (int j = 0; j < D / 8; j++) { oacc[4 * j + 2 * r] *= corr[r]; oacc[4 * j + 2 * r + 1] *= corr[r]; }
}

// An fp32 accumulator fragment of N columns (P or dS) rounded to 16 bits as wgmma's A fragments from registers, 16
// columns a k16 step: the S accumulator of 16 keys packs straight into their A registers (hopper.cuh's fragments).
template <typename T, int N>
__device__ __forceinline__ void pack_a_fragments(const float* s, unsigned (*p)[4])
{
#pragma unroll
    for (int kk = 0; kk < N / 16; kk++)
    {
        p[kk][0] = pack2<T>(s[8 * kk + 0], s[8 * kk + 1]);
        p[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
        p[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
        p[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
    }
}

// The forward's end: this thread's two rows of O divided by their sums (the quad's lanes' partial sums added) and stored,
// and their natural-log log-sum-exp when lse_row is given.
template <typename T, int D>
__device__ __forceinline__ void forward_store_rows(const float* oacc, const float* mrow, const float* lrow, T* ob, i64 o_t,
    float* lse_row, int Tq, int r0, int warp, int g, int c4)
{
#pragma unroll
    for (int r = 0; r < 2; r++)
    {
        float l = lrow[r];
        l += __shfl_xor_sync(FULL_MASK, l, 1);
        l += __shfl_xor_sync(FULL_MASK, l, 2);
        const int t = r0 + warp * 16 + g + r * 8;
        if (t < Tq)
        {
            const float inv = 1.f / l;
            T* orow = ob + (i64)t * o_t;
#pragma unroll
            for (int j = 0; j < D / 8; j++)
                *(unsigned*)(orow + j * 8 + 2 * c4) = pack2<T>(oacc[4 * j + 2 * r] * inv, oacc[4 * j + 2 * r + 1] * inv);
            if (lse_row && c4 == 0) lse_row[t] = (mrow[r] + log2f(l)) * LN2;
        }
    }
}

// The tensor-map builds' two stage barriers at full0 and full0 + 8 (one arrival each: the issuing thread's, with the bytes),
// initialized by thread 0 and visible to the CTA before any thread waits on them.
__device__ __forceinline__ void init_two_stages(unsigned full0, int tid)
{
    if (tid == 0)
    {
        mbar_init(full0, 1);
        mbar_init(full0 + 8, 1);
        mbar_fence_init();
    }
    __syncthreads();
}

// One key block of BN keys from n0 for a warpgroup's 64 query rows (Q at qdesc, in a tile of BM rows; the block's K and V tiles
// at sKb and sVb): S = Q K^T from shared memory, the causal and length mask, the online softmax, O += P V with P from registers.
template <typename T, int D, int BM, int BN>
__device__ __forceinline__ void forward_key_block(float* oacc, float* mrow, float* lrow, u64 qdesc, unsigned sKb, unsigned sVb,
    int n0, int qpos0, int g, int c4, int S, float sl2)
{
    constexpr int KD = D / 16;
    const u64 kdesc = sw128_descriptor(sKb, 16, 1024);
    const u64 vdesc = sw128_descriptor(sVb, BN * 128, 1024);
    float s[BN / 2];
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < KD; kk++)
    {
        // column block kk / 4 of 64 values, 16 values (32 bytes) into its rows per step
        Wgmma<T, BN>::ss(s, desc_plus(qdesc, (kk >> 2) * BM * 128 + (kk & 3) * 32),
                         desc_plus(kdesc, (kk >> 2) * BN * 128 + (kk & 3) * 32), kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers<BN / 2>(s);
    forward_mask_block<BN>(s, n0, qpos0, g, c4, S);
    float corr[2];
    forward_softmax_block<BN>(s, mrow, lrow, corr, sl2);
    forward_rescale<D>(oacc, corr);
    unsigned p[BN / 16][4];
    pack_a_fragments<T, BN>(s, p);
    fence_registers<D / 2>(oacc);
    fence_registers<BN / 4>(&p[0][0]);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; kk++) Wgmma<T, D>::rs_nmajor(oacc, p[kk], desc_plus(vdesc, kk * 16 * 128));
    wgmma_commit();
    wgmma_wait<0>();
    fence_registers<D / 2>(oacc);
    fence_registers<BN / 4>(&p[0][0]);   // P stays live until the products that read it are done
}

// WGS warpgroups (1 or 2) of 64 query rows per CTA: query tile mb (64 WGS rows) of one head. qb, ob: the head's row 0
// (row strides q_t, o_t); keys and values through kr, vr (DenseRowsSw128 or PagedRowsSw128); lse_row: the head's (Tq)
// log-sum-exps, or null. 128 WGS threads; dynamic shared memory 1,024 (alignment) + 64 WGS D 2 (Q) + 4 * 128 D 2 (two
// stages of K and V) bytes.
// TMA (flash_forward_hopper_*_t): each key/value block comes by the tensor memory accelerator instead of every thread's
// cp.async copies (ncu: about 150 of the ~712 instructions a warp issues a key block went to them), one thread issuing the
// block's boxes onto its stage's mbarrier (16 bytes after the V stages). kmap and vmap: k and v as 3D (B planes of S rows of
// KH D values) in boxes of 128 rows by 64 values, the 128-byte swizzle; this head's keys are plane kplane from column kcol.
// A block's rows past S arrive as zeros, as the cp.async copies' do (not the next sequence's: a NaN there stays there).
template <typename T, int D, int WGS, bool TMA = false, typename Rows>
__device__ void hopper_forward_tile(const T* qb, i64 q_t, Rows kr, Rows vr, T* ob, i64 o_t, float* lse_row, int Tq, int S,
    int mb, float scale, const TensorMap* kmap = nullptr, const TensorMap* vmap = nullptr, int kplane = 0, int kcol = 0)
{
    constexpr int BM = 64 * WGS, BN = 128, NT = 128 * WGS;
    extern __shared__ unsigned char smem_raw[];
    const unsigned sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const unsigned sK = sQ + BM * D * 2;       // 2 stages
    const unsigned sV = sK + 2 * BN * D * 2;   // 2 stages
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    const int m0 = mb * BM, offset = S - Tq;
    const int lastKey = min(S - 1, offset + min(Tq - 1, m0 + BM - 1));
    const int nblocks = lastKey / BN + 1;

    const unsigned full0 = sV + 2 * BN * D * 2;   // TMA: stage st's K and V complete on the mbarrier at full0 + 8 st
    auto issue = [&](int nb, int st) {   // key/value block nb into stage st
        if constexpr (TMA)
        {
            if (tid == 0)
            {
                mbar_arrive_expect_tx(full0 + 8 * st, 2 * BN * D * 2);
#pragma unroll
                for (int h = 0; h < D / 64; h++)   // 64-value column blocks, BN rows of 128 bytes each
                {
                    tma_load_3d(sK + st * BN * D * 2 + h * BN * 128, kmap, kcol + 64 * h, nb * BN, kplane, full0 + 8 * st);
                    tma_load_3d(sV + st * BN * D * 2 + h * BN * 128, vmap, kcol + 64 * h, nb * BN, kplane, full0 + 8 * st);
                }
            }
        }
        else
        {
            kr.template load<D, BN, NT>(sK + st * BN * D * 2, nb * BN, S, tid);
            vr.template load<D, BN, NT>(sV + st * BN * D * 2, nb * BN, S, tid);
        }
    };
    if constexpr (TMA) init_two_stages(full0, tid);
    load_tile_sw128_bounded<D, BM, NT>(sQ, qb, q_t, m0, Tq, tid);
    issue(0, 0);
    cp_async_commit();

    // This warpgroup's rows r0 .. r0 + 63; the last key any of them sees; this thread's two rows' key positions.
    const int r0 = m0 + wg * 64, wgLastKey = offset + r0 + 63;
    const int qpos0 = offset + r0 + warp * 16 + g;
    const bool active = r0 < Tq;   // a warpgroup wholly past T (the last tile) only keeps the barriers
    float oacc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) oacc[i] = 0.f;
    float mrow[2] = {NEG_INF, NEG_INF}, lrow[2] = {0.f, 0.f};
    const float sl2 = scale * LOG2E;
    const u64 qdesc = sw128_descriptor(sQ + wg * 64 * 128, 16, 1024);

    for (int nb = 0; nb < nblocks; nb++)
    {
        const int st = nb & 1;
        if (nb + 1 < nblocks) issue(nb + 1, st ^ 1);
        if constexpr (TMA)
        {
            cp_async_wait<0>();                        // Q (the only cp.async copies)
            mbar_wait(full0 + 8 * st, (nb >> 1) & 1);  // the stage's (nb >> 1)-th fill
        }
        else
        {
            cp_async_commit();
            cp_async_wait<1>();
        }
        fence_async_shared();
        __syncthreads();
        const int n0 = nb * BN;
        if (active && n0 <= wgLastKey)   // uniform over the warpgroup, as wgmma requires
            forward_key_block<T, D, BM, BN>(oacc, mrow, lrow, qdesc, sK + st * BN * D * 2, sV + st * BN * D * 2, n0, qpos0, g, c4, S, sl2);
        __syncthreads();   // this stage is refilled by the next-but-one iteration
    }
    cp_async_wait<0>();
    forward_store_rows<T, D>(oacc, mrow, lrow, ob, o_t, lse_row, Tq, r0, warp, g, c4);
}

// Dense (training, the KV-cache prefill): grid (query tiles of 64 WGS rows, H, B), the last tiles (the most keys) first.
template <typename T, int D, int WGS>
__device__ void hopper_forward(const T* q, const T* k, const T* v, T* o, float* lse, int Tq, int S, int H, int KH,
    Strides3 qs, Strides3 ks, Strides3 vs, Strides3 os, float scale)
{
    const int mb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KH);
    const DenseRowsSw128<T> kr{k + b * ks.b + (i64)kvh * ks.h, ks.t}, vr{v + b * vs.b + (i64)kvh * vs.h, vs.t};
    hopper_forward_tile<T, D, WGS>(q + b * qs.b + (i64)h * qs.h, qs.t, kr, vr, o + b * os.b + (i64)h * os.h, os.t,
                                   lse ? lse + ((i64)b * H + h) * Tq : nullptr, Tq, S, mb, scale);
}

// The dense forward with K and V by the tensor memory accelerator (kmap, vmap: see hopper_forward_tile's TMA); q, o and lse as
// hopper_forward's. No KV cache (starts): the host keeps those calls on hopper_forward.
template <typename T, int D, int WGS>
__device__ void hopper_forward_tma(const TensorMap* kmap, const TensorMap* vmap, const T* q, T* o, float* lse, int Tq, int S,
    int H, int KH, Strides3 qs, Strides3 os, float scale)
{
    const int mb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KH);
    const DenseRowsSw128<T> unused{nullptr, 0};
    hopper_forward_tile<T, D, WGS, true>(q + b * qs.b + (i64)h * qs.h, qs.t, unused, unused, o + b * os.b + (i64)h * os.h, os.t,
                                         lse ? lse + ((i64)b * H + h) * Tq : nullptr, Tq, S, mb, scale, kmap, vmap, b, kvh * D);
}

// The warp-specialized dense forward (flash_forward_hopper_ws_*, after FlashAttention-3): a CTA of NC consumer warpgroups
// (64 query rows each, BM = 64 NC rows of one head) and one producer warpgroup whose first thread issues every copy by the
// tensor memory accelerator: the Q tile once, then each key/value block into a ring of ST stages, so that the NC warpgroups
// share each block's K and V (one copy from L2 for BM query rows, where the one-warpgroup tile copies them once per 64).
// Stage s: full[s] (the producer's arrival with the block's bytes) and empty[s] (one arrival per consumer warpgroup once
// its products that read the stage are done); block nb uses stage nb % ST, its (nb / ST)-th fill. Every consumer warpgroup
// waits for and hands back every block of the CTA's, past its own last key too, so that no arrival of a later fill can
// complete an earlier phase. The producer's registers go to the consumers (setmaxnreg). qmap: q as 3D (B planes of Tq rows
// of H D values) in boxes of BM rows by 64 values; kmap, vmap: as hopper_forward_tile's TMA (boxes of 128 rows); a box's
// rows past a sequence's end arrive as zeros. Shared memory: 1,024 (alignment) + BM D 2 (Q) + ST 2 128 D 2 (K and V) +
// 8 (2 ST + 1) (barriers) bytes.
template <typename T, int D, int NC, int ST, int REG>
__device__ void hopper_forward_ws(const TensorMap* qmap, const TensorMap* kmap, const TensorMap* vmap, T* o, float* lse,
    int Tq, int S, int H, int KH, Strides3 os, float scale)
{
    constexpr int BM = 64 * NC, BN = 128;
    constexpr unsigned KV = BN * D * 2;   // one K or V tile (bytes)
    extern __shared__ unsigned char smem_raw[];
    const unsigned sQ = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const unsigned sKV = sQ + BM * D * 2;   // stage s: K at sKV + 2 KV s, V after it
    const unsigned bars = sKV + ST * 2 * KV;
    auto full = [&](int st) { return bars + 8u * st; };
    auto empty = [&](int st) { return bars + 8u * (ST + st); };
    const unsigned qfull = bars + 16u * ST;
    const int tid = threadIdx.x, wg = tid >> 7;
    const int mb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KH);
    const int m0 = mb * BM, offset = S - Tq;
    const int lastKey = min(S - 1, offset + min(Tq - 1, m0 + BM - 1));
    const int nblocks = lastKey / BN + 1;
    if (tid == 0)
    {
        for (int st = 0; st < ST; st++)
        {
            mbar_init(full(st), 1);
            mbar_init(empty(st), NC);
        }
        mbar_init(qfull, 1);
        mbar_fence_init();
    }
    __syncthreads();
    if (wg == NC)
    {
        warpgroup_registers_down<24>();
        if ((tid & 127) == 0)
        {
            mbar_arrive_expect_tx(qfull, BM * D * 2);
#pragma unroll
            for (int c = 0; c < D / 64; c++) tma_load_3d(sQ + c * BM * 128, qmap, h * D + 64 * c, m0, b, qfull);
            for (int nb = 0; nb < nblocks; nb++)
            {
                const int st = nb % ST;
                mbar_wait(empty(st), ((nb / ST) & 1) ^ 1);   // its first fill passes at once
                mbar_arrive_expect_tx(full(st), 2 * KV);
                const unsigned sK = sKV + st * 2 * KV;
#pragma unroll
                for (int c = 0; c < D / 64; c++)
                {
                    tma_load_3d(sK + c * BN * 128, kmap, kvh * D + 64 * c, nb * BN, b, full(st));
                    tma_load_3d(sK + KV + c * BN * 128, vmap, kvh * D + 64 * c, nb * BN, b, full(st));
                }
            }
        }
        return;
    }
    warpgroup_registers_up<REG>();
    const int warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    const int r0 = m0 + wg * 64, wgLastKey = offset + r0 + 63;
    const int qpos0 = offset + r0 + warp * 16 + g;
    const bool active = r0 < Tq;
    float oacc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) oacc[i] = 0.f;
    float mrow[2] = {NEG_INF, NEG_INF}, lrow[2] = {0.f, 0.f};
    const float sl2 = scale * LOG2E;
    const u64 qdesc = sw128_descriptor(sQ + wg * 64 * 128, 16, 1024);
    mbar_wait(qfull, 0);
    for (int nb = 0; nb < nblocks; nb++)
    {
        const int st = nb % ST, n0 = nb * BN;
        mbar_wait(full(st), (nb / ST) & 1);
        if (active && n0 <= wgLastKey)   // uniform over the warpgroup, as wgmma requires
            forward_key_block<T, D, BM, BN>(oacc, mrow, lrow, qdesc, sKV + st * 2 * KV, sKV + st * 2 * KV + KV, n0, qpos0, g, c4, S, sl2);
        if ((tid & 127) == 0) mbar_arrive(empty(st));   // this warpgroup's products that read the stage are done
    }
    if (!active) return;
    forward_store_rows<T, D>(oacc, mrow, lrow, o + b * os.b + (i64)h * os.h, os.t, lse ? lse + ((i64)b * H + h) * Tq : nullptr,
                             Tq, r0, warp, g, c4);
}

// Paged prefill (serving) on this tile: flash_attention.cu's paged_prefill contract and arguments (q (N, H, D) with row
// stride q_n and head stride q_h, out (N, H, D) contiguous, tables (B, max_blocks), starts (B + 1), lengths (B); sequence
// b's rows are its queries at positions lengths[b] - rows .. lengths[b] - 1; only sequences of at least min_rows rows), and
// its tile-finding prologue (find_prefill_tile) over tiles of 64 WGS rows. K and V through the block table
// (PagedRowsSw128). window must be none (1 << 30): the host sends windowed calls to paged_prefill, as this tile masks no
// window.
// Over a quantized pool (P = signed char or unsigned char, with its scales): common.cuh's PagedRowsSw128Quantized
// dequantizes the rows into the same swizzled 16-bit tiles.
template <typename T, int D, int WGS, typename P = T>
__device__ void paged_prefill_hopper(const T* q, const P* pool, T* out, const int* tables, const int* starts, const int* lengths,
    int B, int H, int K, int block_size, int max_blocks, i64 q_n, i64 q_h, float scale, int min_rows, const float* scales = nullptr)
{
    const PrefillTile tile = find_prefill_tile<64 * WGS>(starts, B, min_rows);
    const int b = tile.sequence;
    if (b < 0) return;
    const int h = blockIdx.y, kvh = h / (H / K), start = starts[b], rows = starts[b + 1] - start;
    const i64 stride = (i64)2 * K * D;
    const int* table = tables + (i64)b * max_blocks;
    const auto kr = pool_rows_sw128<T>(pool + (i64)kvh * D, scales, kvh, 2 * K, table, block_size, stride);
    const auto vr = pool_rows_sw128<T>(pool + (i64)(K + kvh) * D, scales, K + kvh, 2 * K, table, block_size, stride);
    hopper_forward_tile<T, D, WGS>(q + (i64)start * q_n + (i64)h * q_h, q_n, kr, vr, out + ((i64)start * H + h) * D, (i64)H * D,
                                   nullptr, rows, lengths[b], tile.index, scale);
}

// CTAs of one warpgroup per SM the compiler plans registers for: three at D = 64 (their shared memory fits three times;
// at most 170 registers a thread), one at D = 128 (no bound).
#define HOPPER_WG1_CTAS(D) ((D) == 64 ? 3 : 1)

// One entry point of the dense forward: WGS warpgroups a CTA, CTAS CTAs an SM planned for.
#define HOPPER_FORWARD_ENTRY(name, T, D, WGS, CTAS)                                                             \
    extern "C" __global__ void __launch_bounds__(128 * WGS, CTAS) name(const T* q, const T* k, const T* v,     \
        T* o, float* lse, int Tq, int S, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 os,    \
        float scale, const int* starts)                                                                         \
    {                                                                                                           \
        /* KV cache: sequence b has starts[b] + Tq valid keys of the S the cache holds. */                      \
        if (starts) S = starts[blockIdx.z] + Tq;                                                                \
        hopper_forward<T, D, WGS>(q, k, v, o, lse, Tq, S, H, KH, qs, ks, vs, os, scale);                        \
    }

// The tensor-map entry (K and V by the TMA) of the dense forward, at the warpgroups the host takes by default for D.
#define HOPPER_FORWARD_TMA_ENTRY(name, T, D, WGS, CTAS)                                                         \
    extern "C" __global__ void __launch_bounds__(128 * WGS, CTAS) name(const __grid_constant__ TensorMap kmap, \
        const __grid_constant__ TensorMap vmap, const T* q, T* o, float* lse, int Tq, int S, int H, int KH,    \
        Strides3 qs, Strides3 os, float scale)                                                                  \
    {                                                                                                           \
        hopper_forward_tma<T, D, WGS>(&kmap, &vmap, q, o, lse, Tq, S, H, KH, qs, os, scale);                    \
    }

// The warp-specialized entry: NC consumer warpgroups and a producer, ST stages, REG registers a consumer thread.
#define HOPPER_FORWARD_WS_ENTRY(name, T, D, NC, ST, REG)                                                        \
    extern "C" __global__ void __launch_bounds__(128 * (NC + 1), 1) name(const __grid_constant__ TensorMap qmap, \
        const __grid_constant__ TensorMap kmap, const __grid_constant__ TensorMap vmap, T* o, float* lse, int Tq, \
        int S, int H, int KH, Strides3 os, float scale)                                                         \
    {                                                                                                           \
        hopper_forward_ws<T, D, NC, ST, REG>(&qmap, &kmap, &vmap, o, lse, Tq, S, H, KH, os, scale);             \
    }

#define HOPPER_FORWARD(n, T, D)                                                                                 \
    HOPPER_FORWARD_ENTRY(flash_forward_hopper_##n##_d##D, T, D, 2, 1)                                          \
    HOPPER_FORWARD_ENTRY(flash_forward_hopper_wg1_##n##_d##D, T, D, 1, HOPPER_WG1_CTAS(D))                     \
    HOPPER_FORWARD_TMA_ENTRY(flash_forward_hopper_##n##_d##D##_t, T, D, (D == 64 ? 1 : 2), (D == 64 ? HOPPER_WG1_CTAS(D) : 1)) \
    HOPPER_FORWARD_WS_ENTRY(flash_forward_hopper_ws_##n##_d##D, T, D, (D == 64 ? 3 : 2), (D == 64 ? 4 : 2), (D == 64 ? 160 : 240))

HOPPER_FORWARD(bf16, bf16, 64)
HOPPER_FORWARD(bf16, bf16, 128)
HOPPER_FORWARD(f16, f16, 64)
HOPPER_FORWARD(f16, f16, 128)

// Serving's prefill chunks (CudaBackend.PagedAttention): paged_prefill's argument list (window unused, see
// paged_prefill_hopper), launched as a dependent kernel (find_prefill_tile waits for the predecessor first). Two warpgroups
// and one, with the dense forward's launch bounds.
#define PAGED_PREFILL_HOPPER(n, T, D)                                                                           \
    extern "C" __global__ void __launch_bounds__(256, 1) paged_prefill_hopper_##n##_d##D(const T* q,          \
        const T* pool, T* out, const int* tables, const int* starts, const int* lengths, int B, int H, int K,  \
        int block_size, int max_blocks, i64 q_n, i64 q_h, float scale, int min_rows, int window)               \
    {                                                                                                           \
        paged_prefill_hopper<T, D, 2>(q, pool, out, tables, starts, lengths, B, H, K, block_size, max_blocks,  \
                                      q_n, q_h, scale, min_rows);                                               \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(128, HOPPER_WG1_CTAS(D)) paged_prefill_hopper_wg1_##n##_d##D( \
        const T* q, const T* pool, T* out, const int* tables, const int* starts, const int* lengths, int B,     \
        int H, int K, int block_size, int max_blocks, i64 q_n, i64 q_h, float scale, int min_rows, int window) \
    {                                                                                                           \
        paged_prefill_hopper<T, D, 1>(q, pool, out, tables, starts, lengths, B, H, K, block_size, max_blocks,  \
                                      q_n, q_h, scale, min_rows);                                               \
    }

PAGED_PREFILL_HOPPER(bf16, bf16, 64)
PAGED_PREFILL_HOPPER(bf16, bf16, 128)
PAGED_PREFILL_HOPPER(f16, f16, 64)
PAGED_PREFILL_HOPPER(f16, f16, 128)

// Over a quantized pool: paged_prefill_hopper[_wg1]_<code>_<type>_d<D> (code i8 or f8, each in its own module:
// FOR_KV_CODES), the same arguments with the pool's codes and its scales last.
#define PAGED_PREFILL_HOPPER_Q_ONE(code, P, n, T, D)                                                            \
    extern "C" __global__ void __launch_bounds__(256, 1) paged_prefill_hopper_##code##_##n##_d##D(const T* q, \
        const P* pool, T* out, const int* tables, const int* starts, const int* lengths, int B, int H,         \
        int K, int block_size, int max_blocks, i64 q_n, i64 q_h, float scale, int min_rows, int window,         \
        const float* scales)                                                                                    \
    {                                                                                                           \
        paged_prefill_hopper<T, D, 2, P>(q, pool, out, tables, starts, lengths, B, H, K, block_size,            \
                                         max_blocks, q_n, q_h, scale, min_rows, scales);                        \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(128, HOPPER_WG1_CTAS(D)) paged_prefill_hopper_wg1_##code##_##n##_d##D( \
        const T* q, const P* pool, T* out, const int* tables, const int* starts, const int* lengths,            \
        int B, int H, int K, int block_size, int max_blocks, i64 q_n, i64 q_h, float scale, int min_rows,       \
        int window, const float* scales)                                                                        \
    {                                                                                                           \
        paged_prefill_hopper<T, D, 1, P>(q, pool, out, tables, starts, lengths, B, H, K, block_size,            \
                                         max_blocks, q_n, q_h, scale, min_rows, scales);                        \
    }
#define PAGED_PREFILL_HOPPER_Q(code, P) PAGED_PREFILL_HOPPER_Q_ONE(code, P, bf16, bf16, 64)                      \
    PAGED_PREFILL_HOPPER_Q_ONE(code, P, bf16, bf16, 128) PAGED_PREFILL_HOPPER_Q_ONE(code, P, f16, f16, 64)      \
    PAGED_PREFILL_HOPPER_Q_ONE(code, P, f16, f16, 128)
FOR_KV_CODES(PAGED_PREFILL_HOPPER_Q)

// ------------------------------------------------------------------------------------ backward
// flash_attention.cu's flash_backward contract (S = T, no window): lse and delta (B,H,T) fp32 (delta = rowsum(dO o O),
// from flash_backward_pre, which also zeroes dqacc); dqacc (B,T,H,D) fp32 receives dQ by reductions (flash_backward_dq_cast
// rounds it into dq); dk, dv (B,T,K,D) written whole. CTA: 64 WGS keys of one kv head, WGS warpgroups of 64 keys; it walks
// the query blocks of 64 rows that see its keys, for every query head of its group, Q and dO (and their lse, delta)
// double-buffered by cp.async. Per warpgroup and query block, with its keys as the M dimension:
//   S^T = K Q^T, dP^T = V dO^T               (wgmma m64n64k16, A and B K-major from shared memory)
//   P^T = exp2(S^T scale log2 e - lse log2 e), dS^T = P^T o (dP^T - delta), both rounded to 16 bits in registers
//   dV += P^T dO, dK += dS^T Q                 (wgmma m64nDk16, A from registers, B = dO / Q read N-major)
//   dQ (64 queries x D) = dS K_w               (wgmma m64n64k16 per 64 columns: A = dS^T written to shared memory,
//                                               read M-major; B = K read N-major), added to dqacc by red.global.add
// Dynamic shared memory: 1,024 + K, V (64 WGS D 2 each) + 2 stages of Q, dO (64 D 2 each) + dS^T (64 WGS x 64 x 2) + 2
// stages of lse and delta (64 floats each).
template <typename T, int D, int WGS>
__device__ void hopper_backward(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
    float* dqacc, T* dk, T* dv, int Tq, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds,
    Strides3 dks, Strides3 dvs, float scale)
{
    constexpr int BM = 64, BN = 64 * WGS, KD = D / 16, NT = 128 * WGS;
    extern __shared__ unsigned char smem_raw[];
    const unsigned sK = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const unsigned sV = sK + BN * D * 2;
    const unsigned sQ = sV + BN * D * 2;        // 2 stages
    const unsigned sdO = sQ + 2 * BM * D * 2;   // 2 stages
    const unsigned sdS = sdO + 2 * BM * D * 2;  // per warpgroup 64 keys x 64 queries
    float* sL = (float*)(smem_raw + (sdS + BN * BM * 2 - smem_u32(smem_raw)));   // 2 stages of lse, then 2 of delta
    float* sDel = sL + 2 * BM;
    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    const int nb = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, group = H / KH;
    const int n0 = nb * BN, nw = n0 + wg * 64;   // the CTA's first key, this warpgroup's
    const int mStart = n0 / BM, per = (Tq + BM - 1) / BM - mStart, iters = per * group;
    const float sl2 = scale * LOG2E;

    load_tile_sw128_bounded<D, BN, NT>(sK, k + b * ks.b + (i64)kvh * ks.h, ks.t, n0, Tq, tid);
    load_tile_sw128_bounded<D, BN, NT>(sV, v + b * vs.b + (i64)kvh * vs.h, vs.t, n0, Tq, tid);

    auto issue = [&](int it, int st) {
        const int hh = kvh * group + it / per, m0 = (mStart + it % per) * BM;
        load_tile_sw128<D, BM, NT>(sQ + st * BM * D * 2, q + b * qs.b + (i64)hh * qs.h, qs.t, m0, Tq, tid);
        load_tile_sw128<D, BM, NT>(sdO + st * BM * D * 2, dout + b * ds.b + (i64)hh * ds.h, ds.t, m0, Tq, tid);
        if (tid < 2 * BM)
        {
            // lse and delta rows are not 16-byte aligned in general (T arbitrary): one 4-byte copy per thread; rows past T
            // read as 0 (their P is masked).
            const int which = tid / BM, c = tid % BM, t = m0 + c;
            const float* src = (which ? delta : lse) + ((i64)b * H + hh) * Tq;
            const bool ok = t < Tq;
            cp_async4(smem_u32((which ? sDel : sL) + st * BM + c), ok ? src + t : src, ok);
        }
    };

    float dkacc[D / 2], dvacc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) { dkacc[i] = 0.f; dvacc[i] = 0.f; }
    issue(0, 0);
    cp_async_commit();
    const u64 kdesc = sw128_descriptor(sK + wg * 64 * 128, 16, 1024);
    const u64 vdesc = sw128_descriptor(sV + wg * 64 * 128, 16, 1024);
    const unsigned sdSw = sdS + wg * 64 * BM * 2;
    // This thread's key rows (g and g + 8 of its warp's 16) of the warpgroup's 64.
    const int key0 = nw + warp * 16 + g;

    for (int it = 0; it < iters; it++)
    {
        const int st = it & 1;
        if (it + 1 < iters) issue(it + 1, st ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        fence_async_shared();
        __syncthreads();
        const int hh = kvh * group + it / per, m0 = (mStart + it % per) * BM;
        // A warpgroup whose keys all come after the block's last query, or lie past T, has nothing to add.
        if (m0 + BM - 1 >= nw && nw < Tq)
        {
            const unsigned tQ = sQ + st * BM * D * 2, tdO = sdO + st * BM * D * 2;
            const float* tL = sL + st * BM;
            const float* tDel = sDel + st * BM;
            const u64 qdesc = sw128_descriptor(tQ, 16, 1024), odesc = sw128_descriptor(tdO, 16, 1024);
            float s[BM / 2], dp[BM / 2];
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < KD; kk++)
            {
                const unsigned ka = (kk >> 2) * BN * 128 + (kk & 3) * 32, qa = (kk >> 2) * BM * 128 + (kk & 3) * 32;
                Wgmma<T, BM>::ss(s, desc_plus(kdesc, ka), desc_plus(qdesc, qa), kk > 0);
                Wgmma<T, BM>::ss(dp, desc_plus(vdesc, ka), desc_plus(odesc, qa), kk > 0);
            }
            wgmma_commit();
            wgmma_wait<0>();
            fence_registers<BM / 2>(s);
            fence_registers<BM / 2>(dp);
            const bool mask = m0 < nw + 64 || m0 + BM > Tq;
            unsigned pa[BM / 16][4], sa[BM / 16][4];
#pragma unroll
            for (int j = 0; j < BM / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    const int qc = j * 8 + 2 * c4 + (e & 1), key = key0 + (e >> 1) * 8, t = m0 + qc;
                    float p = fast_exp2(fmaf(s[4 * j + e], sl2, -tL[qc] * LOG2E));
                    if (mask && (key > t || t >= Tq)) p = 0.f;
                    s[4 * j + e] = p;
                    dp[4 * j + e] = p * (dp[4 * j + e] - tDel[qc]);
                }
            pack_a_fragments<T, BM>(s, pa);
            pack_a_fragments<T, BM>(dp, sa);
            // dV += P^T dO, dK += dS^T Q (k = the block's queries; dO and Q read N-major, their rows being queries)
            fence_registers<D / 2>(dvacc);
            fence_registers<D / 2>(dkacc);
            fence_registers<BM / 4>(&pa[0][0]);
            fence_registers<BM / 4>(&sa[0][0]);
            wgmma_fence();
            const u64 odescN = sw128_descriptor(tdO, BM * 128, 1024), qdescN = sw128_descriptor(tQ, BM * 128, 1024);
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++)
            {
                Wgmma<T, D>::rs_nmajor(dvacc, pa[kk], desc_plus(odescN, kk * 16 * 128));
                Wgmma<T, D>::rs_nmajor(dkacc, sa[kk], desc_plus(qdescN, kk * 16 * 128));
            }
            wgmma_commit();
            // Meanwhile dS^T to shared memory for dQ: rows = the warpgroup's keys (16 warp + g, + 8), 128-byte rows of 64
            // queries (16 kk + 2 c4, + 8: 16-byte chunks 2 kk and 2 kk + 1), swizzled.
            {
                char* base = (char*)smem_raw + (sdSw - smem_u32(smem_raw));
                const int r0 = warp * 16 + g, r1 = r0 + 8;
#pragma unroll
                for (int kk = 0; kk < BM / 16; kk++)
                {
                    const int cA = 2 * kk, cB = 2 * kk + 1;
                    *(unsigned*)(base + r0 * 128 + ((cA ^ (r0 & 7)) << 4) + c4 * 4) = sa[kk][0];
                    *(unsigned*)(base + r1 * 128 + ((cA ^ (r1 & 7)) << 4) + c4 * 4) = sa[kk][1];
                    *(unsigned*)(base + r0 * 128 + ((cB ^ (r0 & 7)) << 4) + c4 * 4) = sa[kk][2];
                    *(unsigned*)(base + r1 * 128 + ((cB ^ (r1 & 7)) << 4) + c4 * 4) = sa[kk][3];
                }
            }
            // The tile (generic stores) is read by wgmma next: fence, then the warpgroup's own barrier.
            fence_async_shared();
            warpgroup_barrier(wg);
            // dQ is issued behind dV and dK without waiting for them (groups complete in order); the first wait below
            // covers all three, and only then are their registers free.
            const u64 sdesc = sw128_descriptor(sdSw, 64 * 128, 1024);
#pragma unroll
            for (int half = 0; half < D / 64; half++)
            {
                float qacc[32];
                // K_w as B: rows = keys (k), 64 columns of D (n) from column block `half`
                const u64 kdescN = sw128_descriptor(sK + half * BN * 128 + wg * 64 * 128, BN * 128, 1024);
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < 4; kk++)
                    WgmmaT<T>::ss_mn(qacc, desc_plus(sdesc, kk * 16 * 128), desc_plus(kdescN, kk * 16 * 128), kk > 0);
                wgmma_commit();
                wgmma_wait<0>();
                fence_registers<32>(qacc);
                if (half == 0)
                {
                    fence_registers<D / 2>(dvacc);
                    fence_registers<D / 2>(dkacc);
                    fence_registers<BM / 4>(&pa[0][0]);
                    fence_registers<BM / 4>(&sa[0][0]);
                }
#pragma unroll
                for (int r = 0; r < 2; r++)
                {
                    const int t = m0 + warp * 16 + g + r * 8;
                    if (t < Tq)
                    {
                        float* dst = dqacc + (((i64)b * Tq + t) * H + hh) * D + half * 64 + 2 * c4;
#pragma unroll
                        for (int j = 0; j < 8; j++)
                            red_add2(dst + j * 8, qacc[4 * j + 2 * r] * scale, qacc[4 * j + 2 * r + 1] * scale);
                    }
                }
            }
        }
        __syncthreads();   // this stage, and the dS^T tile, are rewritten next
    }
    cp_async_wait<0>();
#pragma unroll
    for (int r = 0; r < 2; r++)
    {
        const int s = key0 + r * 8;
        if (s < Tq)
        {
            T* krow = dk + b * dks.b + (i64)s * dks.t + (i64)kvh * dks.h;
            T* vrow = dv + b * dvs.b + (i64)s * dvs.t + (i64)kvh * dvs.h;
#pragma unroll
            for (int j = 0; j < D / 8; j++)
            {
                *(unsigned*)(krow + j * 8 + 2 * c4) = pack2<T>(dkacc[4 * j + 2 * r] * scale, dkacc[4 * j + 2 * r + 1] * scale);
                *(unsigned*)(vrow + j * 8 + 2 * c4) = pack2<T>(dvacc[4 * j + 2 * r], dvacc[4 * j + 2 * r + 1]);
            }
        }
    }
}

#define HOPPER_BACKWARD(n, T, D)                                                                                \
    extern "C" __global__ void __launch_bounds__(256, 1) flash_backward_hopper_##n##_d##D(const T* q,        \
        const T* k, const T* v, const T* dout, const float* lse, const float* delta, float* dqacc, T* dk,      \
        T* dv, int Tq, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds, Strides3 dks,        \
        Strides3 dvs, float scale)                                                                              \
    {                                                                                                           \
        hopper_backward<T, D, 2>(q, k, v, dout, lse, delta, dqacc, dk, dv, Tq, H, KH, qs, ks, vs, ds, dks, dvs, \
                                 scale);                                                                        \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(128, HOPPER_WG1_CTAS(D)) flash_backward_hopper_wg1_##n##_d##D( \
        const T* q,                                                                                             \
        const T* k, const T* v, const T* dout, const float* lse, const float* delta, float* dqacc, T* dk,      \
        T* dv, int Tq, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds, Strides3 dks,        \
        Strides3 dvs, float scale)                                                                              \
    {                                                                                                           \
        hopper_backward<T, D, 1>(q, k, v, dout, lse, delta, dqacc, dk, dv, Tq, H, KH, qs, ks, vs, ds, dks, dvs, \
                                 scale);                                                                        \
    }

HOPPER_BACKWARD(bf16, bf16, 64)
HOPPER_BACKWARD(bf16, bf16, 128)
HOPPER_BACKWARD(f16, f16, 64)
HOPPER_BACKWARD(f16, f16, 128)

// ------------------------------------------------------------------------------------ backward, second kernel (v2)
// The same contract and products as hopper_backward with one warpgroup of 64 keys, reordered so that the tensor cores and
// the elementwise work overlap within the CTA, plus switches in `flags` (CudaBackendOptions.HopperBackwardVariant):
//   - The products of a query block go as four commit groups: S^T, then dP^T (both issued at once); P = exp(...) is
//     computed as soon as S^T is done while dP^T still runs, and dV += P^T dO is issued before waiting for dP^T; dS^T is
//     computed while dV runs and stored to shared memory, dK += dS^T Q is issued, and dQ = dS K behind it. dS takes P from
//     a copy of its 16-bit A fragment (pa, which dV's product owns until waited for), not from a second fp32 copy: 16
//     registers fewer at the peak (dK and dV accumulators, pa, dP^T in flight).
//   - flags & 1, largest work first: the CTA of linear index i takes key block i / (KH B) (key block 0 sees every query
//     block, the last one the fewest), so the longest CTAs start in the first wave instead of in the last.
//   - flags & 32 (without 1), largest work first within windows of W = flags >> 8 (kv head, batch) pairs: the windows in
//     order, each window's CTAs key block 0 first. The CTAs running at once then belong to about W pairs, which share their
//     Q and dO in L2 (as in the launch order), and each window still starts its longest CTAs first.
//   - flags & 2, dQ by one bulk reduction per query block: the dQ accumulators (fp32) are stored to shared memory over
//     this block's Q and dO stage (free once dV and dK are done), and one thread issues cp.reduce.async.bulk .add.f32 of
//     the whole 64 x D tile into dqacc, which is then laid out in tiles: tile (b, h, query block) of 64 D floats at
//     ((b H + h) nQB + block) 64 D, each in fragment order: float4 c * 128 + tid holds thread tid's registers 4 c' .. 4 c' + 3
//     of the dQ product of column half c / 8 (c' = c % 8), i.e. rows 16 w + g and + 8, columns 64 (c / 8) + 8 c' + 2 c4
//     and + 1 (w, g, c4 of tid). hopper_dq_cast_tiles rounds it into dq. Without the flag: red.global.add into (B,T,H,D).
//   - flags & 4 (reductions per element only), dQ first: dQ's product is issued before dK's and its reductions go out while
//     dK runs (dK is waited for at the end of the block, before its stage is refilled).
//   - flags & 8 with flags & 2, head size 64 only (sep): the dQ tile gets its own 16 KB buffer after lse/delta, so dQ's
//     product goes before dK's, the tile is stored and sent while dK runs, and dK is waited for only in the next block,
//     behind that block's S^T and dP^T, before the stage dK reads is refilled.
// Flags 4 and 8 are compiled only into the EXTRA build (flash_backward_hopper_v2x); the v2 build has flags 1, 2 and 32.
// Shared memory: as hopper_backward's with one warpgroup, the two stages laid [Q | dO] each (2 64 D 2 bytes = one fp32
// tile of 64 x D).

// cp.reduce.async.bulk .add.f32: `bytes` (a multiple of 16) from shared address src added to global dst, tracked by the
// issuing thread's bulk groups; shared memory written by ordinary stores must be fenced (fence_async_shared) first.
__device__ __forceinline__ void bulk_reduce_add_f32(float* dst, unsigned src, unsigned bytes)
{
    HOPPER_ASM("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], %2;" ::"l"(dst), "r"(src), "r"(bytes)
                 : "memory");
#ifndef __CUDA_ARCH__
    emu_bulk_reduce_add_f32(dst, src, bytes);   // done at once: the waits below have nothing left to wait for
#endif
}
// Four floats to shared address dst (16-byte aligned) in one store.
__device__ __forceinline__ void sts_f32x4(unsigned dst, float a, float b, float c, float d)
{
#ifdef __CUDA_ARCH__
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};" ::"r"(dst), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
#else
    const float v[4] = {a, b, c, d};
    std::memcpy(emu_shared() + dst, v, 16);
#endif
}

// unpack_lo and unpack_hi are hopper.cuh's.

// TMA (flash_backward_hopper_v2t, not with EXTRA): each query block's Q and dO tiles come by the tensor memory accelerator,
// one thread issuing them, instead of every thread's cp.async copies (ncu: 172 instructions a warp a block, a fifth of the
// kernel's). qmap and dmap: q and dout as 2D (B Tq rows of H D values, rows qs.t and ds.t apart: the host takes this path
// only where heads are D apart and batches Tq rows apart) in boxes of 64 rows by 64 values, the 128-byte swizzle. Rows past
// Tq are the next sequence's (or zeros past the last): their scores are masked, so they add nothing, as the zeros did, unless
// they hold a NaN or Inf (0 x NaN): the forward's maps are 3D for that reason, but in the backward a non-finite gradient of
// any sequence already reaches every weight gradient, and the 3D form cost the f16 build its wgmma overlap (ptxas C7513).
template <typename T, int D, bool EXTRA, bool TMA = false>
__device__ void hopper_backward_v2(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
    float* dqacc, T* dk, T* dv, int Tq, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds,
    Strides3 dks, Strides3 dvs, float scale, int flags, const TensorMap* qmap = nullptr, const TensorMap* dmap = nullptr)
{
    static_assert(!(TMA && EXTRA), "hopper_backward_v2: the tensor-map copies are built without the v2x variants");
    constexpr int BM = 64, BN = 64, KD = D / 16, NT = 128;
    constexpr unsigned TILE = BM * D * 2;   // one Q or dO tile (bytes); a stage is [Q | dO]
    extern __shared__ unsigned char smem_raw[];
    const unsigned sK = (smem_u32(smem_raw) + 1023u) & ~1023u;
    const unsigned sV = sK + BN * D * 2;
    const unsigned sStage = sV + BN * D * 2;   // 2 stages
    const unsigned sdS = sStage + 4 * TILE;    // 64 keys x 64 queries
    float* sL = (float*)(smem_raw + (sdS + BN * BM * 2 - smem_u32(smem_raw)));   // 2 stages of lse, then 2 of delta
    float* sDel = sL + 2 * BM;
    // sep: the dQ tile in its own buffer after lse/delta (head size 64 only: 16 KB more, three CTAs still fit an SM).
    // EXTRA: the kernel with flags 4 and 8 (flash_backward_hopper_v2x); without it they are compiled out, so that the
    // other variants' code and registers stay those of the kernel measured first.
    const bool bulk = (flags & 2) != 0, sep = EXTRA && (flags & 8) != 0 && bulk && D == 64;
    const bool dqFirst = EXTRA && (((flags & 4) != 0 && !bulk) || sep);
    const unsigned sdQ = sdS + BN * BM * 2 + 4 * BM * 4;
    const unsigned full0 = sdQ;   // TMA: stage st's Q and dO tiles complete on the mbarrier at full0 + 8 st (8-byte aligned)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    int nb = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
    if (flags & 1)
    {
        const int heads = gridDim.y * gridDim.z, lin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
        nb = lin / heads;
        kvh = lin % heads % gridDim.y;
        b = lin % heads / gridDim.y;
    }
    else if (flags & 32)
    {
        // Largest work first within windows of W = flags >> 8 (kv head, batch) pairs, the windows in order: the CTAs running
        // at once are the key blocks of about W pairs (they share those heads' Q and dO in L2, as in the launch order), and
        // within a window the key blocks that see every query block start first (the causal tail of largest-first).
        const int heads = gridDim.y * gridDim.z, window = max(1, flags >> 8), lin = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
        const int first = lin / (window * gridDim.x) * window, count = min(window, heads - first), within = lin - first * gridDim.x;
        nb = within / count;
        const int head = first + within % count;
        kvh = head % gridDim.y;
        b = head / gridDim.y;
    }
    const int group = H / KH, n0 = nb * BN, nQB = (Tq + BM - 1) / BM;
    const int mStart = n0 / BM, per = nQB - mStart, iters = per * group;
    const float sl2 = scale * LOG2E;

    load_tile_sw128_bounded<D, BN, NT>(sK, k + b * ks.b + (i64)kvh * ks.h, ks.t, n0, Tq, tid);
    load_tile_sw128_bounded<D, BN, NT>(sV, v + b * vs.b + (i64)kvh * vs.h, vs.t, n0, Tq, tid);

    if constexpr (TMA) init_two_stages(full0, tid);
    auto issue = [&](int it, int st) {
        const int hh = kvh * group + it / per, m0 = (mStart + it % per) * BM;
        const unsigned tQ = sStage + st * 2 * TILE;
        if constexpr (TMA)
        {
            if (tid == 0)
            {
                mbar_arrive_expect_tx(full0 + 8 * st, 2 * TILE);
#pragma unroll
                for (int h = 0; h < D / 64; h++)   // 64-value column blocks, BM rows of 128 bytes each
                {
                    tma_load_2d(tQ + h * BM * 128, qmap, hh * D + 64 * h, b * Tq + m0, full0 + 8 * st);
                    tma_load_2d(tQ + TILE + h * BM * 128, dmap, hh * D + 64 * h, b * Tq + m0, full0 + 8 * st);
                }
            }
        }
        else
        {
            load_tile_sw128<D, BM, NT>(tQ, q + b * qs.b + (i64)hh * qs.h, qs.t, m0, Tq, tid);
            load_tile_sw128<D, BM, NT>(tQ + TILE, dout + b * ds.b + (i64)hh * ds.h, ds.t, m0, Tq, tid);
        }
        if (tid < 2 * BM)
        {
            const int which = tid / BM, c = tid % BM, t = m0 + c;
            const float* src = (which ? delta : lse) + ((i64)b * H + hh) * Tq;
            const bool ok = t < Tq;
            cp_async4(smem_u32((which ? sDel : sL) + st * BM + c), ok ? src + t : src, ok);
        }
    };

    float dkacc[D / 2], dvacc[D / 2];
#pragma unroll
    for (int i = 0; i < D / 2; i++) { dkacc[i] = 0.f; dvacc[i] = 0.f; }
    issue(0, 0);
    cp_async_commit();
    const u64 kdesc = sw128_descriptor(sK, 16, 1024);
    const u64 vdesc = sw128_descriptor(sV, 16, 1024);
    const u64 sdesc = sw128_descriptor(sdS, 64 * 128, 1024);
    // This thread's key rows (g and g + 8 of its warp's 16).
    const int key0 = n0 + warp * 16 + g;
    unsigned sa[BM / 16][4];   // dS^T's A fragments: with sep, dK's product still reads them into the next block
#pragma unroll
    for (int kk = 0; kk < BM / 16; kk++) sa[kk][0] = sa[kk][1] = sa[kk][2] = sa[kk][3] = 0u;

    for (int it = 0; it < iters; it++)
    {
        const int st = it & 1;
        const int hh = kvh * group + it / per, mb = mStart + it % per, m0 = mb * BM;
        const unsigned tQ = sStage + st * 2 * TILE, tdO = tQ + TILE;
        cp_async_wait<0>();
        if constexpr (TMA) mbar_wait(full0 + 8 * st, (it >> 1) & 1);   // the stage's (it >> 1)-th fill
        fence_async_shared();
        __syncthreads();   // this stage landed; every thread is past the previous block (its dS^T tile, its stage)

        const u64 qdesc = sw128_descriptor(tQ, 16, 1024), odesc = sw128_descriptor(tdO, 16, 1024);
        float s[BM / 2], dp[BM / 2];
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < KD; kk++)
        {
            const unsigned ka = (kk >> 2) * BN * 128 + (kk & 3) * 32, qa = (kk >> 2) * BM * 128 + (kk & 3) * 32;
            Wgmma<T, BM>::ss(s, desc_plus(kdesc, ka), desc_plus(qdesc, qa), kk > 0);
        }
        wgmma_commit();
#pragma unroll
        for (int kk = 0; kk < KD; kk++)
        {
            const unsigned ka = (kk >> 2) * BN * 128 + (kk & 3) * 32, qa = (kk >> 2) * BM * 128 + (kk & 3) * 32;
            Wgmma<T, BM>::ss(dp, desc_plus(vdesc, ka), desc_plus(odesc, qa), kk > 0);
        }
        wgmma_commit();

        // The next block into the other stage: its last readers were the previous block's products (waited for, except
        // dK's with sep, waited for here) and, with the bulk reduction over the stage, that block's dQ tile going out.
        if (sep)
        {
            wgmma_wait<2>();   // all but S^T and dP^T: the previous block's dK
            fence_registers<D / 2>(dkacc);
            fence_registers<BM / 4>(&sa[0][0]);
            __syncthreads();
        }
        else if (bulk)
        {
            if (tid == 0) bulk_wait_read<0>();
            __syncthreads();
        }
        if (it + 1 < iters) issue(it + 1, st ^ 1);
        cp_async_commit();

        const float* tL = sL + st * BM;
        const float* tDel = sDel + st * BM;
        const bool mask = m0 < n0 + BN || m0 + BM > Tq;
        wgmma_wait<1>();   // S^T done; dP^T may still run
        fence_registers<BM / 2>(s);
        unsigned pa[BM / 16][4];
#pragma unroll
        for (int j = 0; j < BM / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int qc = j * 8 + 2 * c4 + (e & 1), key = key0 + (e >> 1) * 8, t = m0 + qc;
                float p = fast_exp2(fmaf(s[4 * j + e], sl2, -tL[qc] * LOG2E));
                if (mask && (key > t || t >= Tq)) p = 0.f;
                s[4 * j + e] = p;
            }
        pack_a_fragments<T, BM>(s, pa);
        // dS below needs P while dV's product still reads pa (the A registers of an in-flight wgmma may not be touched until
        // it is waited for): a copy, kept apart by the register fence that follows.
        unsigned pc[BM / 16][4];
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++)
#pragma unroll
            for (int x = 0; x < 4; x++) pc[kk][x] = pa[kk][x];
        // dV += P^T dO (k = the block's queries; dO read N-major, its rows being queries)
        fence_registers<D / 2>(dvacc);
        fence_registers<BM / 4>(&pa[0][0]);
        wgmma_fence();
        const u64 odescN = sw128_descriptor(tdO, BM * 128, 1024), qdescN = sw128_descriptor(tQ, BM * 128, 1024);
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++) Wgmma<T, D>::rs_nmajor(dvacc, pa[kk], desc_plus(odescN, kk * 16 * 128));
        wgmma_commit();

        wgmma_wait<1>();   // dP^T done; dV may still run
        fence_registers<BM / 2>(dp);
        // dS^T = P^T o (dP^T - delta), P from its 16-bit fragment: element 4 j + e is half (e & 1) of word (e >> 1) + 2 (j & 1)
        // of pa[j / 2].
#pragma unroll
        for (int j = 0; j < BM / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int qc = j * 8 + 2 * c4 + (e & 1);
                const unsigned w = pc[j >> 1][(e >> 1) + 2 * (j & 1)];
                const float p = (e & 1) ? unpack_hi<T>(w) : unpack_lo<T>(w);
                dp[4 * j + e] = p * (dp[4 * j + e] - tDel[qc]);
            }
        pack_a_fragments<T, BM>(dp, sa);
        // dS^T to shared memory for dQ (its last reader, the previous block's dQ product, was waited for), before dK's
        // product takes sa: rows = keys (16 warp + g, + 8), 128-byte rows of 64 queries, swizzled.
        {
            char* base = (char*)smem_raw + (sdS - smem_u32(smem_raw));
            const int r0 = warp * 16 + g, r1 = r0 + 8;
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++)
            {
                const int cA = 2 * kk, cB = 2 * kk + 1;
                *(unsigned*)(base + r0 * 128 + ((cA ^ (r0 & 7)) << 4) + c4 * 4) = sa[kk][0];
                *(unsigned*)(base + r1 * 128 + ((cA ^ (r1 & 7)) << 4) + c4 * 4) = sa[kk][1];
                *(unsigned*)(base + r0 * 128 + ((cB ^ (r0 & 7)) << 4) + c4 * 4) = sa[kk][2];
                *(unsigned*)(base + r1 * 128 + ((cB ^ (r1 & 7)) << 4) + c4 * 4) = sa[kk][3];
            }
        }
        fence_async_shared();
        // dK += dS^T Q: here, or (dqFirst) right behind dQ's first product so that dQ is stored while dK runs.
        auto issue_dk = [&]() {
            fence_registers<D / 2>(dkacc);
            fence_registers<BM / 4>(&sa[0][0]);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < BM / 16; kk++) Wgmma<T, D>::rs_nmajor(dkacc, sa[kk], desc_plus(qdescN, kk * 16 * 128));
            wgmma_commit();
        };
        if (!dqFirst) issue_dk();
        if (sep && tid == 0) bulk_wait_read<0>();   // the previous dQ tile has left its buffer
        __syncthreads();   // the dS^T tile is whole
#pragma unroll
        for (int half = 0; half < D / 64; half++)
        {
            float qacc[32];
            // K as B: rows = keys (k), 64 columns of D (n) from column block `half`
            const u64 kdescN = sw128_descriptor(sK + half * BN * 128, BN * 128, 1024);
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
                WgmmaT<T>::ss_mn(qacc, desc_plus(sdesc, kk * 16 * 128), desc_plus(kdescN, kk * 16 * 128), kk > 0);
            wgmma_commit();
            if (dqFirst && half == 0)
            {
                issue_dk();
                wgmma_wait<1>();   // dV and this dQ product done; dK may still run
            }
            else
                wgmma_wait<0>();
            fence_registers<32>(qacc);
            if (half == 0)
            {
                fence_registers<D / 2>(dvacc);
                fence_registers<BM / 4>(&pa[0][0]);
                if (!dqFirst)
                {
                    fence_registers<D / 2>(dkacc);
                    fence_registers<BM / 4>(&sa[0][0]);
                }
            }
            if (bulk)
            {
                // Over this stage's Q and dO, once every warp's dV and dK products (their readers) are done; or (sep) into
                // its own buffer, while dK runs.
                if (half == 0 && !sep) __syncthreads();
#pragma unroll
                for (int j = 0; j < 8; j++)
                {
                    const unsigned dst = (sep ? sdQ : tQ) + (unsigned)(((half * 8 + j) * 128 + tid) * 16);
                    sts_f32x4(dst, qacc[4 * j] * scale, qacc[4 * j + 1] * scale, qacc[4 * j + 2] * scale, qacc[4 * j + 3] * scale);
                }
            }
            else
            {
#pragma unroll
                for (int r = 0; r < 2; r++)
                {
                    const int t = m0 + warp * 16 + g + r * 8;
                    if (t < Tq)
                    {
                        float* dst = dqacc + (((i64)b * Tq + t) * H + hh) * D + half * 64 + 2 * c4;
#pragma unroll
                        for (int j = 0; j < 8; j++)
                            red_add2(dst + j * 8, qacc[4 * j + 2 * r] * scale, qacc[4 * j + 2 * r + 1] * scale);
                    }
                }
            }
        }
        if (dqFirst && !sep)
        {
            wgmma_wait<0>();   // dK, the last reader of this stage's Q, before the stage is refilled
            fence_registers<D / 2>(dkacc);
            fence_registers<BM / 4>(&sa[0][0]);
        }
        if (bulk)
        {
            fence_async_shared();
            __syncthreads();
            if (tid == 0)
            {
                bulk_reduce_add_f32(dqacc + (((i64)b * H + hh) * nQB + mb) * (BM * D), sep ? sdQ : tQ, BM * D * 4);
                bulk_commit();
            }
        }
    }
    if constexpr (EXTRA)
    {
        wgmma_wait<0>();   // (sep) the last block's dK
        fence_registers<D / 2>(dkacc);
        fence_registers<BM / 4>(&sa[0][0]);
    }
    cp_async_wait<0>();
    if (bulk && tid == 0) bulk_wait<0>();   // the last reductions finish before the CTA (their source) goes
#pragma unroll
    for (int r = 0; r < 2; r++)
    {
        const int s = key0 + r * 8;
        if (s < Tq)
        {
            T* krow = dk + b * dks.b + (i64)s * dks.t + (i64)kvh * dks.h;
            T* vrow = dv + b * dvs.b + (i64)s * dvs.t + (i64)kvh * dvs.h;
#pragma unroll
            for (int j = 0; j < D / 8; j++)
            {
                *(unsigned*)(krow + j * 8 + 2 * c4) = pack2<T>(dkacc[4 * j + 2 * r] * scale, dkacc[4 * j + 2 * r + 1] * scale);
                *(unsigned*)(vrow + j * 8 + 2 * c4) = pack2<T>(dvacc[4 * j + 2 * r], dvacc[4 * j + 2 * r + 1]);
            }
        }
    }
}

// dq (strided, T) from dqacc laid in fragment-order tiles (hopper_backward_v2 with flags & 2). One thread per float4 of a
// tile, in tile order (c fastest, then tid' = 32 w + 4 g of the lane quads... see below): thread (tile, w, g, c) reads the
// four float4 of lanes 4 g .. 4 g + 3 of warp w in chunk c (64 contiguous bytes), i.e. rows 16 w + g and + 8, columns
// 64 (c / 8) + 8 (c % 8) .. + 7, and writes 8 values to each row (rows past T skipped).
struct alignas(16) Float4 { float x, y, z, w; };
struct alignas(16) Word4 { unsigned x, y, z, w; };

//
// With colsum (the bias gradient's partial rows: (B, query blocks, D / 64) rows of H D floats), also the column sums of the
// tile's rows from the same loads, fp32 before the rounding to T: a thread's two rows of its 8 columns, its warp's (the
// lanes CH apart hold the same chunk: xor), then the block's 8 warps through shared memory in warp order. A block of 256
// threads is one tile at D = 64 and half of one at D = 128 (rows 0-31 or 32-63: w / 2), each half its own partial row; the
// host launches exactly the tiles' threads, and none leaves before the barrier.
template <typename T, int D>
__device__ void hopper_dq_cast_tiles(const float* dqacc, T* dq, int B, int Tq, int H, Strides3 dqs, float* colsum)
{
    constexpr int CH = D / 8;   // chunks of a tile
    const int nQB = (Tq + 63) / 64;
    const i64 gt = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const int c = (int)(gt % CH), gg = (int)(gt / CH % 8), w = (int)(gt / (CH * 8) % 4);
    const i64 tile = gt / (CH * 32);
    const bool in = tile < (i64)B * H * nQB;
    if (!in && !colsum) return;
    const int mb = (int)(tile % nQB), h = (int)(tile / nQB % H), b = (int)(tile / ((i64)nQB * H));
    const int t0 = mb * 64 + 16 * w + gg;
    const bool r0 = in && t0 < Tq, r1 = in && t0 + 8 < Tq;
    Float4 x[4] = {};
    if (in)
    {
        const Float4* src = (const Float4*)(dqacc + tile * 64 * D) + c * 128 + 32 * w + 4 * gg;
#pragma unroll
        for (int i = 0; i < 4; i++) x[i] = src[i];
    }
    T* base = dq + b * dqs.b + (i64)h * dqs.h + c * 8;
    if (r0)
    {
        Word4 r;
        r.x = pack2<T>(x[0].x, x[0].y); r.y = pack2<T>(x[1].x, x[1].y); r.z = pack2<T>(x[2].x, x[2].y); r.w = pack2<T>(x[3].x, x[3].y);
        *(Word4*)(base + (i64)t0 * dqs.t) = r;
    }
    if (r1)
    {
        Word4 r;
        r.x = pack2<T>(x[0].z, x[0].w); r.y = pack2<T>(x[1].z, x[1].w); r.z = pack2<T>(x[2].z, x[2].w); r.w = pack2<T>(x[3].z, x[3].w);
        *(Word4*)(base + (i64)(t0 + 8) * dqs.t) = r;
    }
    if (!colsum) return;
    // Column 8 c + 2 i (+ 1) of rows t0 and t0 + 8: float4 i's .x (.y) and .z (.w), as the stores above pair them.
    __shared__ float red[8][D];
    float sums[8];
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        sums[2 * i] = (r0 ? x[i].x : 0.f) + (r1 ? x[i].z : 0.f);
        sums[2 * i + 1] = (r0 ? x[i].y : 0.f) + (r1 ? x[i].w : 0.f);
    }
#pragma unroll
    for (int o = CH; o < 32; o <<= 1)
#pragma unroll
        for (int i = 0; i < 8; i++) sums[i] += __shfl_xor_sync(FULL_MASK, sums[i], o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane < CH)
#pragma unroll
        for (int i = 0; i < 8; i++) red[warp][8 * c + i] = sums[i];
    __syncthreads();
    if (in && threadIdx.x < D)
    {
        float t = 0.f;
#pragma unroll
        for (int q = 0; q < 8; q++) t += red[q][threadIdx.x];
        const i64 row = ((i64)b * nQB + mb) * (D / 64) + (D == 128 ? w / 2 : 0);
        colsum[row * H * D + (i64)h * D + threadIdx.x] = t;
    }
}

#define HOPPER_BACKWARD_V2(n, T, D)                                                                             \
    extern "C" __global__ void __launch_bounds__(128, HOPPER_WG1_CTAS(D)) flash_backward_hopper_v2_##n##_d##D(  \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, float* dqacc,  \
        T* dk, T* dv, int Tq, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds, Strides3 dks,  \
        Strides3 dvs, float scale, int flags)                                                                   \
    {                                                                                                           \
        hopper_backward_v2<T, D, false>(q, k, v, dout, lse, delta, dqacc, dk, dv, Tq, H, KH, qs, ks, vs, ds,    \
                                        dks, dvs, scale, flags);                                                \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(128, HOPPER_WG1_CTAS(D)) flash_backward_hopper_v2x_##n##_d##D( \
        const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta, float* dqacc,  \
        T* dk, T* dv, int Tq, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds, Strides3 dks,  \
        Strides3 dvs, float scale, int flags)                                                                   \
    {                                                                                                           \
        hopper_backward_v2<T, D, true>(q, k, v, dout, lse, delta, dqacc, dk, dv, Tq, H, KH, qs, ks, vs, ds,     \
                                       dks, dvs, scale, flags);                                                 \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(128, HOPPER_WG1_CTAS(D)) flash_backward_hopper_v2t_##n##_d##D( \
        const __grid_constant__ TensorMap qmap, const __grid_constant__ TensorMap dmap, const T* k, const T* v, \
        const float* lse, const float* delta, float* dqacc, T* dk, T* dv, int Tq, int H, int KH, Strides3 ks,   \
        Strides3 vs, Strides3 dks, Strides3 dvs, float scale, int flags)                                        \
    {                                                                                                           \
        hopper_backward_v2<T, D, false, true>(nullptr, k, v, nullptr, lse, delta, dqacc, dk, dv, Tq, H, KH, {},  \
                                              ks, vs, {}, dks, dvs, scale, flags, &qmap, &dmap);                \
    }                                                                                                           \
    extern "C" __global__ void flash_backward_hopper_dq_cast_##n##_d##D(const float* dqacc, T* dq, int B,       \
        int Tq, int H, Strides3 dqs, float* colsum)                                                             \
    {                                                                                                           \
        hopper_dq_cast_tiles<T, D>(dqacc, dq, B, Tq, H, dqs, colsum);                                           \
    }

HOPPER_BACKWARD_V2(bf16, bf16, 64)
HOPPER_BACKWARD_V2(bf16, bf16, 128)
HOPPER_BACKWARD_V2(f16, f16, 64)
HOPPER_BACKWARD_V2(f16, f16, 128)
