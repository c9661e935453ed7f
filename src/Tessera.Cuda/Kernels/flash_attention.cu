// Causal grouped-query attention on tensor cores, after FlashAttention-2 (Dao, 2023): 16-bit
// inputs (bf16 or f16), fp32 accumulation, mma.sync.m16n8k16 with ldmatrix fragment loads, tiles
// streamed through shared memory with cp.async (double-buffered), online softmax in registers in
// the log2 domain (scale * log2(e) folded into one multiply, exp2f).
//
// Layout: q (B,T,H,D), k/v (B,S,K,D), output (B,T,H,D); row strides in elements (the last
// dimension contiguous, every row 16-byte aligned: the host checks). Query t sits at key position
// S - T + t. Query head h reads kv head h / (H / K). lse (B,H,T) is the natural-log logsumexp.
// Sliding window (Mistral): a query at position p sees keys p - window + 1 .. p; the host passes 1 << 30 for none (sums
// such as key + window stay in int range), and every kernel skips the key blocks left of its queries' windows.
//
// Shared-memory tiles are ROWS x D 16-bit values, a row of D/8 16-byte chunks; chunk c of row r is
// stored at chunk c ^ (r & 7), so the 8 rows that one ldmatrix reads hit 8 different bank groups.
//
// mma.m16n8k16 fragments (g = lane / 4, c = lane % 4):
//   A 16x16 row-major: a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..)
//   B 16x8 col-major:  b0 (k 2c..2c+1, n g), b1 (k 2c+8.., n g)
//   C 16x8 fp32:       c0 c1 (g, 2c..2c+1), c2 c3 (g+8, 2c..2c+1)

struct Strides3 { i64 b, t, h; };
struct alignas(16) u32x4 { unsigned x, y, z, w; };
struct alignas(16) f32x4 { float x, y, z, w; };

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

// smem_u32, cp.async, ldmatrix, Mma<T>, swz and the ldmatrix offsets (TileOffsets) are common.cuh's (shared with
// paged_attention.cu's tensor-core decode).

// Loads ROWS rows of D values (rows row0.. of a (rows, stride) matrix; rows >= limit zero-filled)
// into a swizzled tile at shared address dst, with NT threads. With NT a multiple of the D/8 chunks of a row, each
// thread always copies the same chunk c of rows r, r + NT/(D/8), ...; those rows share r & 7, so the swizzled offset
// is one base plus a constant step, and the source one pointer plus a stride step: a couple of integer operations per
// 16 bytes instead of a division, a swizzle and a 64-bit multiply each (the forward's integer pipe was its busiest).
// At D = 256 (32 chunks a row, 4 rows a pass of 128 threads) a thread's rows alternate between two swizzle phases: the
// offset of its k-th row is computed as such (tile_offset below).
template <int D, int RS> __device__ __forceinline__ unsigned tile_offset(int r, int c, int k)
{
    if constexpr (RS % 8 == 0) return (unsigned)(r * D * 2 + ((c ^ (r & 7)) << 4)) + (unsigned)(k * RS * D * 2);
    else return (unsigned)((r + k * RS) * D * 2 + ((c ^ ((r + k * RS) & 7)) << 4));
}
template <int D, int ROWS, int NT, typename T>
__device__ __forceinline__ void load_tile(unsigned dst, const T* base, i64 stride, int row0, int limit, int tid)
{
    constexpr int CH = D / 8, RS = NT / CH, N = ROWS * CH / NT;
    static_assert(NT % CH == 0 && (ROWS * CH) % NT == 0 && (RS % 8 == 0 || 8 % RS == 0), "load_tile: thread count must tile the rows");
    const int r = tid / CH, c = tid % CH;
    const T* src = base + (i64)(row0 + r) * stride + c * 8;
    const i64 step = (i64)RS * stride;
    if (row0 + ROWS <= limit)
    {
#pragma unroll
        for (int k = 0; k < N; k++) cp_async16(dst + tile_offset<D, RS>(r, c, k), src + k * step, true);
    }
    else
    {
#pragma unroll
        for (int k = 0; k < N; k++)
        {
            const bool ok = row0 + r + k * RS < limit;
            cp_async16(dst + tile_offset<D, RS>(r, c, k), ok ? src + k * step : base, ok);
        }
    }
}

// ------------------------------------------------------------------------------------ forward
// Query m16 tiles per warp in the forward. 2 (128-row CTAs) was measured 20% slower than 1 for
// D = 64 on the H100 (B8/B64 T1024 H12), so 1 for both head sizes; the host's row count must match.
#define FLASH_MT(D) 1

// Where a tile's key or value rows come from. DenseRows: row r of a (.., S, .., D) tensor at base + r * stride.
// PagedRows: position r of a paged KV pool (paged_attention.cu's layout) at slot table[r / block_size] * block_size +
// r % block_size, base + slot * stride (base already at the kv head, stride 2K * D); a tile's rows then come from up to
// 64 / block_size blocks, each thread looking up the block of every row it copies. Rows below first (the oldest key in the
// window of the CTA's first query) are zero-filled without reading the table: their blocks may have gone back to the pool
// (a sliding window), and the tile masks them anyway.
template <typename T> struct DenseRows
{
    const T* base;
    i64 stride;
    template <int D, int ROWS, int NT> __device__ __forceinline__ void load(unsigned dst, int row0, int limit, int tid) const
    {
        load_tile<D, ROWS, NT>(dst, base, stride, row0, limit, tid);
    }
};
// PagedRows (a paged KV pool's rows, through the block table) is common.cuh's.

// CTA: 64 * MT query rows (tile mb) of one query head, 4 warps of 16 * MT rows (MT m16 tiles per warp, so each
// K/V fragment loaded by ldmatrix feeds MT mma); key/value tiles of BN rows, double-buffered. qb, ob: the head's row 0
// (row strides q_t, o_t); keys and values through kr, vr; lse_row: the head's (Tq) log-sum-exps, or null.
// Heads of 256 (Gemma 2 2B/9B, Gemma 3): BN = 32 (the tiles take 96 KB of shared memory, two CTAs an SM) and Q's fragments
// read from shared memory at every key block (held in registers they would take 64 of them beside the 128 of the output).
// cap (Gemma 2's soft cap, 0 for none): each raw score x becomes (cap / scale) tanh(x scale / cap), so that its scaled value
// is cap tanh(scale x / cap), before the mask.
template <typename T, int D, int MT, typename Rows, int BN = 64>
__device__ void flash_forward_tile(const T* qb, i64 q_t, Rows kr, Rows vr, T* ob, i64 o_t, float* lse_row, int Tq, int S, int mb,
    float scale, int window, float cap = 0.f)
{
    constexpr int BM = 64 * MT, NT = 128, KD = D / 16, ND = D / 8;
    constexpr bool QREG = D <= 128;   // Q's fragments in registers for the whole CTA
    extern __shared__ unsigned char smem[];
    const unsigned sQ = smem_u32(smem);
    const unsigned sK = sQ + BM * D * 2;       // 2 stages
    const unsigned sV = sK + 2 * BN * D * 2;   // 2 stages
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    const int m0 = mb * BM, offset = S - Tq, w0 = warp * 16 * MT;
    const int lastKey = min(S - 1, offset + min(Tq - 1, m0 + BM - 1));
    const int nblocks = lastKey / BN + 1;
    // The first key block any of the CTA's queries sees (0 without a window).
    const int nb0 = max(0, offset + m0 - window + 1) / BN;

    load_tile<D, BM, NT>(sQ, qb, q_t, m0, Tq, tid);
    kr.template load<D, BN, NT>(sK, nb0 * BN, S, tid);
    vr.template load<D, BN, NT>(sV, nb0 * BN, S, tid);
    cp_async_commit();

    unsigned qf[MT][QREG ? KD : 1][4];
    float oacc[MT][ND][4];
    float mrow[MT][2], lrow[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
    {
        mrow[mt][0] = mrow[mt][1] = NEG_INF; lrow[mt][0] = lrow[mt][1] = 0.f;
#pragma unroll
        for (int j = 0; j < ND; j++) oacc[mt][j][0] = oacc[mt][j][1] = oacc[mt][j][2] = oacc[mt][j][3] = 0.f;
    }
    const float sl2 = scale * LOG2E;
    const TileOffsets<D> off(lane);

    for (int nb = nb0; nb < nblocks; nb++)
    {
        const int st = (nb - nb0) & 1;
        if (nb + 1 < nblocks)
        {
            kr.template load<D, BN, NT>(sK + (st ^ 1) * BN * D * 2, (nb + 1) * BN, S, tid);
            vr.template load<D, BN, NT>(sV + (st ^ 1) * BN * D * 2, (nb + 1) * BN, S, tid);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (QREG && nb == nb0)
        {
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int kk = 0; kk < (QREG ? KD : 1); kk++)
                    ldsm_x4(sQ + swz<D>(w0 + mt * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8), qf[mt][kk][0], qf[mt][kk][1], qf[mt][kk][2], qf[mt][kk][3]);
        }
        const unsigned tK = sK + st * BN * D * 2, tV = sV + st * BN * D * 2;
        float sacc[MT][BN / 8][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int j = 0; j < BN / 8; j++) sacc[mt][j][0] = sacc[mt][j][1] = sacc[mt][j][2] = sacc[mt][j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < KD; kk++)
        {
            if constexpr (!QREG)
            {
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                    ldsm_x4(sQ + swz<D>(w0 + mt * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8), qf[mt][0][0], qf[mt][0][1], qf[mt][0][2], qf[mt][0][3]);
            }
#pragma unroll
            for (int j2 = 0; j2 < BN / 16; j2++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4(tK + off.rows[kk] + j2 * 16 * D * 2, b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                {
                    Mma<T>::run(sacc[mt][2 * j2], qf[mt][QREG ? kk : 0], b0, b1);
                    Mma<T>::run(sacc[mt][2 * j2 + 1], qf[mt][QREG ? kk : 0], b2, b3);
                }
            }
        }
        if (cap > 0.f)
        {
            // (x scale) / cap, not x (scale / cap): with a tiny cap the latter is 0 times infinity at x = 0.
            const float out = cap / scale;
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int j = 0; j < BN / 8; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) sacc[mt][j][e] = out * tanhf(sacc[mt][j][e] * scale / cap);
        }
        const int n0 = nb * BN;
        // Masking needed: keys past a row's position, past S, or (window) before the oldest key the warp's last row sees.
        const bool mask = n0 + BN - 1 > offset + m0 + w0 || n0 + BN > S || n0 <= offset + m0 + w0 + 16 * MT - 1 - window;
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
        {
            const int qpos0 = offset + m0 + w0 + mt * 16 + g; // key position of this thread's first row; second is +8
#pragma unroll
            for (int j = 0; j < BN / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (mask)
                    {
                        int key = n0 + j * 8 + 2 * c4 + (e & 1), qp = qpos0 + (e >> 1) * 8;
                        if (key > qp || key >= S || key <= qp - window) sacc[mt][j][e] = NEG_INF;
                    }
#pragma unroll
            for (int r = 0; r < 2; r++)
            {
                // The max over raw scores (the scale is positive); the scale joins in one FFMA per score below.
                float mx = NEG_INF;
#pragma unroll
                for (int j = 0; j < BN / 8; j++) mx = fmaxf(mx, fmaxf(sacc[mt][j][2 * r], sacc[mt][j][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, 2));
                mx = fmaxf(mrow[mt][r], mx * sl2);   // log2 domain
                const float mu = mx == NEG_INF ? 0.f : mx;
                const float corr = fast_exp2(mrow[mt][r] - mu);
                mrow[mt][r] = mx;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < BN / 8; j++)
                {
                    float p0 = fast_exp2(fmaf(sacc[mt][j][2 * r], sl2, -mu)), p1 = fast_exp2(fmaf(sacc[mt][j][2 * r + 1], sl2, -mu));
                    sacc[mt][j][2 * r] = p0; sacc[mt][j][2 * r + 1] = p1;
                    sum += p0 + p1;
                }
                lrow[mt][r] = lrow[mt][r] * corr + sum;
#pragma unroll
                for (int j = 0; j < ND; j++) { oacc[mt][j][2 * r] *= corr; oacc[mt][j][2 * r + 1] *= corr; }
            }
        }
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++)
        {
            unsigned pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
            {
                pa[mt][0] = Mma<T>::pack(sacc[mt][2 * kk][0], sacc[mt][2 * kk][1]);
                pa[mt][1] = Mma<T>::pack(sacc[mt][2 * kk][2], sacc[mt][2 * kk][3]);
                pa[mt][2] = Mma<T>::pack(sacc[mt][2 * kk + 1][0], sacc[mt][2 * kk + 1][1]);
                pa[mt][3] = Mma<T>::pack(sacc[mt][2 * kk + 1][2], sacc[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int j2 = 0; j2 < D / 16; j2++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(tV + off.cols[j2] + kk * 16 * D * 2, b0, b1, b2, b3);
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
                {
                    Mma<T>::run(oacc[mt][2 * j2], pa[mt], b0, b1);
                    Mma<T>::run(oacc[mt][2 * j2 + 1], pa[mt], b2, b3);
                }
            }
        }
        __syncthreads(); // this stage is refilled by the next-but-one iteration
    }
    cp_async_wait<0>();
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++)
        {
            float l = lrow[mt][r];
            l += __shfl_xor_sync(FULL_MASK, l, 1);
            l += __shfl_xor_sync(FULL_MASK, l, 2);
            const int t = m0 + w0 + mt * 16 + g + r * 8;
            if (t < Tq)
            {
                const float inv = 1.f / l;
                T* orow = ob + (i64)t * o_t;
#pragma unroll
                for (int j = 0; j < ND; j++)
                    *(unsigned*)(orow + j * 8 + 2 * c4) = Mma<T>::pack(oacc[mt][j][2 * r] * inv, oacc[mt][j][2 * r + 1] * inv);
                if (lse_row && c4 == 0) lse_row[t] = (mrow[mt][r] + log2f(l)) * LN2;
            }
        }
}

// Dense: grid (query tiles, H, B), the last tiles (the most keys) first.
template <typename T, int D, int MT, int BN = 64>
__device__ void flash_forward(const T* q, const T* k, const T* v, T* o, float* lse, int Tq, int S, int H, int KH,
    Strides3 qs, Strides3 ks, Strides3 vs, Strides3 os, float scale, int window, float cap)
{
    const int mb = gridDim.x - 1 - blockIdx.x, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KH);
    const DenseRows<T> kr{k + b * ks.b + (i64)kvh * ks.h, ks.t}, vr{v + b * vs.b + (i64)kvh * vs.h, vs.t};
    flash_forward_tile<T, D, MT, DenseRows<T>, BN>(q + b * qs.b + (i64)h * qs.h, qs.t, kr, vr, o + b * os.b + (i64)h * os.h, os.t,
                                                   lse ? lse + ((i64)b * H + h) * Tq : nullptr, Tq, S, mb, scale, window, cap);
}

// Paged prefill (serving): the chunked-prefill rows of a flattened batch (paged_attention.cu's layouts: q (N, H, D) with
// row stride q_n and head stride q_h, out (N, H, D) contiguous, tables (B, max_blocks), starts (B + 1), lengths (B)) on
// tensor cores. Sequence b's rows starts[b] .. starts[b + 1] - 1 are its queries at positions lengths[b] - rows .. lengths[b] - 1,
// the dense kernel's Tq = rows and S = lengths[b]; only sequences of at least min_rows rows are computed here (the others,
// decode rows, by paged_decode). Grid (tiles, H): blockIdx.x enumerates the 64 * MT-row query tiles of those sequences in
// order (the host launches an upper bound; CTAs past the last tile return), found by common.cuh's find_prefill_tile (warp
// 0's prefix sum over the sequences' tile counts, 32 sequences at a time). window: as in flash_forward (1 << 30 for none);
// the key blocks left of the tile's first query's window are neither loaded nor looked up in the table.
// Over a quantized pool (P = signed char or unsigned char, with its scales): the same tile over common.cuh's
// PagedRowsQuantized, which dequantizes the pool's rows into the 16-bit K and V tiles.
template <typename T, int D, typename P = T>
__device__ void paged_prefill(const T* q, const P* pool, T* out, const int* tables, const int* starts, const int* lengths, int B,
    int H, int K, int block_size, int max_blocks, i64 q_n, i64 q_h, float scale, int min_rows, int window, const float* scales = nullptr)
{
    constexpr int BM = 64 * FLASH_MT(D);
    const PrefillTile tile = find_prefill_tile<BM>(starts, B, min_rows);   // common.cuh
    const int b = tile.sequence, tile_index = tile.index;
    if (b < 0) return;
    const int h = blockIdx.y, kvh = h / (H / K), start = starts[b], rows = starts[b + 1] - start;
    const i64 stride = (i64)2 * K * D;
    const int* table = tables + (i64)b * max_blocks;
    const int first = max(0, lengths[b] - rows + tile_index * BM - window + 1);
    const auto kr = pool_rows<T>(pool + (i64)kvh * D, scales, kvh, 2 * K, table, block_size, stride, first);
    const auto vr = pool_rows<T>(pool + (i64)(K + kvh) * D, scales, K + kvh, 2 * K, table, block_size, stride, first);
    flash_forward_tile<T, D, FLASH_MT(D)>(q + (i64)start * q_n + (i64)h * q_h, q_n, kr, vr, out + ((i64)start * H + h) * D, (i64)H * D,
                                          nullptr, rows, lengths[b], tile_index, scale, window);
}

// ------------------------------------------------------------------------------------ decode
// Key steps of flash_decode whose rows are loaded together (each a K and a V row of 16 bytes a thread).
#define FD_BATCH 4

// Split-K (flash-decoding) for few query rows and many keys. CTA (split, h, b) scores keys
// [split * keysPerSplit, ...) for every query row; D/8 threads hold one key row (16-byte loads),
// 128/(D/8) such groups stride over the keys, each with its own online softmax, merged in shared
// memory. Writes unnormalised partial outputs; flash_decode_combine merges the splits.
// part (B, H, Tq, splits, D + 2): o[0..D), m (log2 domain), l.
template <typename T, int D>
__device__ void flash_decode(const T* q, const T* k, const T* v, float* part, int Tq, int S, int H, int KH,
    Strides3 qs, Strides3 ks, Strides3 vs, float scale, int keysPerSplit, int lo, int window, float cap)
{
    constexpr int TPR = D / 8, NG = 128 / TPR;
    __shared__ float red[NG][D + 2];
    const int tid = threadIdx.x, grp = tid / TPR, sub = tid % TPR;
    const int split = blockIdx.x, splits = gridDim.x, h = blockIdx.y, b = blockIdx.z, kvh = h / (H / KH);
    const T* kb = k + b * ks.b + (i64)kvh * ks.h + sub * 8;
    const T* vb = v + b * vs.b + (i64)kvh * vs.h + sub * 8;
    const float sl2 = scale * LOG2E, cap2 = cap * LOG2E;   // scores in base 2, and the soft cap with them (common.cuh)
    const int s0 = lo + split * keysPerSplit;   // the splits share keys lo .. S - 1 (lo: the oldest key in any window)
    for (int t = 0; t < Tq; t++)
    {
        const int end = min(s0 + keysPerSplit, S - Tq + t + 1);
        const int begin = max(s0, S - Tq + t - window + 1);
        float qv[8];
        {
            u32x4 raw = *(const u32x4*)(q + b * qs.b + (i64)t * qs.t + (i64)h * qs.h + sub * 8);
            const T* e = (const T*)&raw;
#pragma unroll
            for (int i = 0; i < 8; i++) qv[i] = to_f(e[i]) * sl2;
        }
        float m = NEG_INF, l = 0.f, acc[8];
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] = 0.f;
        // The loop count is uniform over the warp (the shuffles need every lane); keys past the end score nothing.
        // A batch of FD_BATCH keys a group (their K and V rows, 2 x FD_BATCH 16-byte loads a thread) is loaded before any
        // is scored, so that many round trips to memory overlap; the keys are then scored one at a time in key order, as
        // before the batching (the same online softmax, so the same bits).
        for (int base = begin; base < end; base += NG * FD_BATCH)
        {
            u32x4 kr[FD_BATCH], vr[FD_BATCH];
#pragma unroll
            for (int u = 0; u < FD_BATCH; u++)
            {
                const int s = base + u * NG + grp;
                kr[u] = {0u, 0u, 0u, 0u}; vr[u] = {0u, 0u, 0u, 0u};
                if (s < end) { kr[u] = *(const u32x4*)(kb + (i64)s * ks.t); vr[u] = *(const u32x4*)(vb + (i64)s * vs.t); }
            }
#pragma unroll
            for (int u = 0; u < FD_BATCH; u++)
            {
                if (base + u * NG >= end) break;   // uniform over the CTA: no group has a key in this step or later ones
                const bool ok = base + u * NG + grp < end;
                const T* ke = (const T*)&kr[u];
                const T* ve = (const T*)&vr[u];
                float x = 0.f;
#pragma unroll
                for (int i = 0; i < 8; i++) x += qv[i] * to_f(ke[i]);
#pragma unroll
                for (int o = TPR / 2; o > 0; o >>= 1) x += __shfl_xor_sync(FULL_MASK, x, o);
                x = soft_cap(x, cap2);
                if (ok)
                {
                    const float mn = fmaxf(m, x), corr = exp2f(m - mn), p = exp2f(x - mn);
                    l = l * corr + p;
#pragma unroll
                    for (int i = 0; i < 8; i++) acc[i] = acc[i] * corr + p * to_f(ve[i]);
                    m = mn;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < 8; i++) red[grp][sub * 8 + i] = acc[i];
        if (sub == 0) { red[grp][D] = m; red[grp][D + 1] = l; }
        __syncthreads();
        float* out = part + ((((i64)b * H + h) * Tq + t) * splits + split) * (D + 2);
        for (int d = tid; d < D + 2; d += blockDim.x)
        {
            float M = NEG_INF;
            for (int i = 0; i < NG; i++) M = fmaxf(M, red[i][D]);
            float r = 0.f;
            if (d == D) r = M;
            else if (M != NEG_INF)
                for (int i = 0; i < NG; i++) r += red[i][d == D + 1 ? D + 1 : d] * exp2f(red[i][D] - M);
            out[d] = r;
        }
        __syncthreads();
    }
}

// A device-wide fence, as inline PTX (no CUDA headers under NVRTC); the L2-coherent load_cg is common.cuh's.
__device__ __forceinline__ void fence_gpu()
{
#ifdef __CUDA_ARCH__
    asm volatile("membar.gl;" ::: "memory");
#else
    std::atomic_thread_fence(std::memory_order_seq_cst);   // the CPU emulation (KernelEmulationTests)
#endif
}

// Most key splits of one decode launch (the host clamps to it): the merge keeps a weight per (row, split) in shared memory.
#define DECODE_MAX_SPLITS 64
#define DECODE_MAX_ROWS 16

// Merges the split partials of `rows` query rows with the CTA's threads: row r is (b, hbase + r % G, t0 + r / G), its
// partials at part (B, H, Tq, splits, D + 2). Partials are read with ld.global.cg (other CTAs wrote them during this
// kernel and L1 is not coherent), every thread's loads issued before their first use: loads that each wait for the
// previous one's product cost a round trip to L2 apiece, which is what the merge used to be made of. A warp per row
// reduces the splits' maxima and sums (lse written then), and stores each split's weight exp2(m - M) / L in shared
// memory; then every (row, d) output is a weighted sum of its splits, 8 loads in flight at a time.
template <typename T, int D>
__device__ void decode_merge(const float* part, T* o, float* lse, int b, int hbase, int G, int t0, int rows, int Tq,
    int H, int splits, Strides3 os)
{
    __shared__ float weight[DECODE_MAX_ROWS][DECODE_MAX_SPLITS];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int r = warp; r < rows; r += warps)
    {
        const int t = t0 + r / G, h = hbase + r % G;
        const float* p = part + (((i64)b * H + h) * Tq + t) * splits * (D + 2);
        float mv[DECODE_MAX_SPLITS / 32], lv[DECODE_MAX_SPLITS / 32];
#pragma unroll
        for (int u = 0; u < DECODE_MAX_SPLITS / 32; u++)
        {
            const int sp = lane + 32 * u;
            mv[u] = sp < splits ? load_cg(p + sp * (D + 2) + D) : NEG_INF;
            lv[u] = sp < splits ? load_cg(p + sp * (D + 2) + D + 1) : 0.f;
        }
        float M = NEG_INF;
#pragma unroll
        for (int u = 0; u < DECODE_MAX_SPLITS / 32; u++) M = fmaxf(M, mv[u]);
        M = warp_max(M);
        float L = 0.f;
#pragma unroll
        for (int u = 0; u < DECODE_MAX_SPLITS / 32; u++)
        {
            mv[u] = mv[u] == NEG_INF ? 0.f : exp2f(mv[u] - M);
            L += lv[u] * mv[u];
        }
        L = warp_sum(L);
#pragma unroll
        for (int u = 0; u < DECODE_MAX_SPLITS / 32; u++)
            if (lane + 32 * u < splits) weight[r][lane + 32 * u] = mv[u] / L;
        if (lse && lane == 0) lse[((i64)b * H + h) * Tq + t] = (M + log2f(L)) * LN2;
    }
    __syncthreads();
    // Two outputs per thread per pass and 16 splits of each in flight: one L2 round trip per 16 splits of two outputs.
    for (int i0 = threadIdx.x; i0 < rows * D; i0 += 2 * blockDim.x)
    {
        const float* p[2];
        float acc[2] = {0.f, 0.f};
#pragma unroll
        for (int k = 0; k < 2; k++)
        {
            const int i = min(i0 + k * (int)blockDim.x, rows * D - 1), r = i / D, d = i % D;
            p[k] = part + (((i64)b * H + hbase + r % G) * Tq + t0 + r / G) * splits * (D + 2) + d;
        }
        for (int s0 = 0; s0 < splits; s0 += 16)
        {
            float v[2][16];
#pragma unroll
            for (int k = 0; k < 2; k++)
#pragma unroll
                for (int u = 0; u < 16; u++) v[k][u] = s0 + u < splits ? load_cg(p[k] + (s0 + u) * (D + 2)) : 0.f;
#pragma unroll
            for (int k = 0; k < 2; k++)
            {
                const int r = min(i0 + k * (int)blockDim.x, rows * D - 1) / D;
#pragma unroll
                for (int u = 0; u < 16; u++)
                    if (s0 + u < splits) acc[k] += v[k][u] * weight[r][s0 + u];
            }
        }
#pragma unroll
        for (int k = 0; k < 2; k++)
        {
            const int i = i0 + k * (int)blockDim.x;
            if (i >= rows * D) break;
            const int r = i / D, d = i % D, t = t0 + r / G, h = hbase + r % G;
            o[b * os.b + (i64)t * os.t + (i64)h * os.h + d] = from_f<T>(acc[k]);
        }
    }
}

// One CTA of D threads per (b, h, t) row: merges the splits, writes the output row and lse.
template <typename T, int D>
__device__ void flash_decode_combine(const float* part, T* o, float* lse, int Tq, int H, int splits, Strides3 os)
{
    const int row = blockIdx.x;
    const int t = row % Tq, h = (row / Tq) % H, b = row / (Tq * H);
    decode_merge<T, D>(part, o, lse, b, h, 1, t, 1, Tq, H, splits, os);
}

// The combine folded into the split kernel: the last CTA of a (b, h) to finish (a counter per (b, h), reset by that
// CTA so the next launch, or graph replay, finds it zero) merges every split. One launch per layer fewer when decoding.
template <typename T, int D>
__device__ void flash_decode_finish(const float* part, int* counters, T* o, float* lse, int Tq, int H, Strides3 os)
{
    __shared__ int last;
    const int splits = gridDim.x, h = blockIdx.y, b = blockIdx.z;
    fence_gpu();                             // this CTA's partials are visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counters + b * H + h, 1) == splits - 1;
    __syncthreads();
    if (!last) return;
    fence_gpu();
    decode_merge<T, D>(part, o, lse, b, h, 1, 0, Tq, Tq, H, splits, os);
    if (threadIdx.x == 0) counters[b * H + h] = 0;
}

// ------------------------------------------------------------------------------------ decode, grouped
// Split-K decoding for grouped-query heads: CTA (split, kv head, b) serves all R = (H / KH) * Tq query rows that read
// its kv head, so each key and value row of the cache is read from memory once, not H / KH times. The split's keys
// stream through shared memory in chunks of CH rows (cp.async, two stages, 16-byte chunks swizzled as in the forward).
// Warp w owns rows w, w + 4, ... (RPW of them, q staged in shared memory as fp32 in the log2 domain); lane j scores
// keys j, j + 32, ... of a chunk against its rows (conflict-free: the 8 lanes reading one logical chunk of 8 rows hit
// 8 physical chunks), keeps each row's online softmax, and accumulates the D / 32 output columns it owns from the
// chunk's values, each key's probability broadcast by a shuffle. Partials go to part (B, H, Tq, splits, D + 2) as in
// flash_decode; the last CTA of a (b, kv head) to finish merges the splits of its rows (counters[b * KH + kvh]).
template <typename T, int D, int RPW>
__device__ void flash_decode_gqa(const T* q, const T* k, const T* v, float* part, int* counters, T* o, float* lse,
    int Tq, int S, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 os, float scale, const int* starts,
    int window)
{
    constexpr int CH = D == 64 ? 64 : 32, NT = 128, CPL = D / 32, KPL = CH / 32, NC = D / 8;
    __shared__ u32x4 tile_store[4 * CH * D * 2 / 16]; // K then V, two stages each (u32x4: 16-byte aligned)
    __shared__ f32x4 q_store[4 * RPW * D / 4];
    unsigned char* const tiles = (unsigned char*)tile_store;
    float (*const sq)[D] = (float (*)[D])q_store;
    __shared__ int last;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int split = blockIdx.x, splits = gridDim.x, kvh = blockIdx.y, b = blockIdx.z, G = H / KH, R = G * Tq;
    pdl_wait();
    pdl_launch_dependents();
    const int len = starts ? starts[b] + Tq : S; // keys the last query row sees
    const int lo = max(0, len - Tq - window + 1); // the oldest key the first query row's window holds
    const int per = (len - lo + splits - 1) / splits, s0 = min(len, lo + split * per), s1 = min(len, s0 + per);
    const T* kb = k + b * ks.b + (i64)kvh * ks.h;
    const T* vb = v + b * vs.b + (i64)kvh * vs.h;
    const unsigned sK = smem_u32(tiles), sV = sK + 2 * CH * D * 2;
    const unsigned char* const pK = tiles;
    const unsigned char* const pV = tiles + 2 * CH * D * 2;
    const int nchunks = (s1 - s0 + CH - 1) / CH;
    if (nchunks > 0)
    {
        load_tile<D, CH, NT>(sK, kb, ks.t, s0, s1, tid);
        load_tile<D, CH, NT>(sV, vb, vs.t, s0, s1, tid);
    }
    cp_async_commit();
    const float sl2 = scale * LOG2E;
    for (int i = tid; i < 4 * RPW * NC; i += NT)
    {
        const int r = i / NC, c = i % NC;
        float* dst = sq[r] + c * 8;
        if (r < R)
        {
            const int t = r / G, h = kvh * G + r % G;
            u32x4 raw = *(const u32x4*)(q + b * qs.b + (i64)t * qs.t + (i64)h * qs.h + c * 8);
            const T* e = (const T*)&raw;
#pragma unroll
            for (int x = 0; x < 8; x++) dst[x] = to_f(e[x]) * sl2;
        }
        else
        {
#pragma unroll
            for (int x = 0; x < 8; x++) dst[x] = 0.f;
        }
    }
    float m[RPW], l[RPW], acc[RPW][CPL];
#pragma unroll
    for (int rr = 0; rr < RPW; rr++)
    {
        m[rr] = NEG_INF; l[rr] = 0.f;
#pragma unroll
        for (int e = 0; e < CPL; e++) acc[rr][e] = 0.f;
    }
    for (int ci = 0; ci < nchunks; ci++)
    {
        const int st = ci & 1;
        if (ci + 1 < nchunks)
        {
            load_tile<D, CH, NT>(sK + (st ^ 1) * CH * D * 2, kb, ks.t, s0 + (ci + 1) * CH, s1, tid);
            load_tile<D, CH, NT>(sV + (st ^ 1) * CH * D * 2, vb, vs.t, s0 + (ci + 1) * CH, s1, tid);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads(); // the chunk (and, the first time, sq) is visible to every warp
        const unsigned char* tK = pK + st * CH * D * 2;
        const unsigned char* tV = pV + st * CH * D * 2;
        const int c0 = s0 + ci * CH;
        float x[RPW][KPL];
#pragma unroll
        for (int rr = 0; rr < RPW; rr++)
#pragma unroll
            for (int i = 0; i < KPL; i++) x[rr][i] = 0.f;
#pragma unroll
        for (int c = 0; c < NC; c++)
#pragma unroll
            for (int i = 0; i < KPL; i++)
            {
                const u32x4 kr = *(const u32x4*)(tK + swz<D>(lane + 32 * i, c * 8));
                const T* ke = (const T*)&kr;
#pragma unroll
                for (int rr = 0; rr < RPW; rr++)
                {
                    const float* qr = sq[warp + 4 * rr] + c * 8;
#pragma unroll
                    for (int e = 0; e < 8; e++) x[rr][i] += qr[e] * to_f(ke[e]);
                }
            }
        float p[RPW][KPL];
#pragma unroll
        for (int rr = 0; rr < RPW; rr++)
        {
            const int r = warp + 4 * rr;
            const int lim = len - Tq + min(r, R - 1) / G; // last key position row r sees
            float mx = NEG_INF;
#pragma unroll
            for (int i = 0; i < KPL; i++)
            {
                const int key = c0 + lane + 32 * i;
                if (key >= s1 || key > lim || key <= lim - window) x[rr][i] = NEG_INF;
                mx = fmaxf(mx, x[rr][i]);
            }
            mx = warp_max(mx);
            const float mn = fmaxf(m[rr], mx), mu = mn == NEG_INF ? 0.f : mn;
            const float corr = exp2f(m[rr] - mu);
            m[rr] = mn;
            float sum = 0.f;
#pragma unroll
            for (int i = 0; i < KPL; i++) { p[rr][i] = exp2f(x[rr][i] - mu); sum += p[rr][i]; }
            l[rr] = l[rr] * corr + sum;
#pragma unroll
            for (int e = 0; e < CPL; e++) acc[rr][e] *= corr;
        }
        // Two accumulators per column (even and odd keys), so the chain of dependent FMAs is half as long.
        float acc2[RPW][CPL];
#pragma unroll
        for (int rr = 0; rr < RPW; rr++)
#pragma unroll
            for (int e = 0; e < CPL; e++) acc2[rr][e] = 0.f;
#pragma unroll
        for (int j = 0; j < CH; j++)
        {
            // This lane's CPL columns of value row j (zero-filled past s1, so 0 * 0 there).
            const T* vrow = (const T*)(tV + swz<D>(j, lane * CPL) + (lane * CPL % 8) * 2);
            float vv[CPL];
#pragma unroll
            for (int e = 0; e < CPL; e++) vv[e] = to_f(vrow[e]);
#pragma unroll
            for (int rr = 0; rr < RPW; rr++)
            {
                const float pj = __shfl_sync(FULL_MASK, p[rr][j / 32], j % 32);
#pragma unroll
                for (int e = 0; e < CPL; e++)
                {
                    if (j & 1) acc2[rr][e] = fmaf(pj, vv[e], acc2[rr][e]);
                    else acc[rr][e] = fmaf(pj, vv[e], acc[rr][e]);
                }
            }
        }
#pragma unroll
        for (int rr = 0; rr < RPW; rr++)
#pragma unroll
            for (int e = 0; e < CPL; e++) acc[rr][e] += acc2[rr][e];
        __syncthreads(); // this stage is refilled by the next-but-one chunk
    }
    cp_async_wait<0>();
#pragma unroll
    for (int rr = 0; rr < RPW; rr++)
    {
        const int r = warp + 4 * rr;
        const float lsum = warp_sum(l[rr]);
        if (r >= R) continue;
        const int t = r / G, h = kvh * G + r % G;
        float* out = part + ((((i64)b * H + h) * Tq + t) * splits + split) * (D + 2);
#pragma unroll
        for (int e = 0; e < CPL; e++) out[lane * CPL + e] = acc[rr][e];
        if (lane == 0) { out[D] = m[rr]; out[D + 1] = lsum; }
    }
    if (!counters) return;
    fence_gpu();                             // this CTA's partials are visible before it is counted
    __syncthreads();
    if (tid == 0) last = atomicAdd(counters + b * KH + kvh, 1) == splits - 1;
    __syncthreads();
    if (!last) return;
    fence_gpu();
    decode_merge<T, D>(part, o, lse, b, kvh * G, G, 0, R, Tq, H, splits, os);
    if (tid == 0) counters[b * KH + kvh] = 0;
}

// ------------------------------------------------------------------------------------ decode with the output product
// One query row a sequence (Tq = 1): its attention and the output product behind it in one launch, added to the residual
// stream, y[b] += Wo (attention(q[b]) rounded to T) + bias, as AttentionForwardCached then the output projection's
// product with beta = 1 give it. Grid (segments, KH, B) in thread-block clusters of `ctas` CTAs along x (1 to
// FDO_MAX_CLUSTER; segments a multiple of it). CTA (segment s, kv head g, b) of FDO_WARPS warps owns output rows
// s rows .. s rows + rows - 1 and the columns of Wo that kv head g's R = H / KH query heads meet (g R D .. g R D + R D - 1);
// it copies those weights into shared memory (cp.async) before the wait on the kernel in front when `early` is set, so
// their bytes overlap that kernel's tail and the attention. A cluster's CTAs attend g's R heads together: rank c takes the
// c-th of `ctas` equal spans of the keys lo .. len - 1, its warps the span's chunks of 32 keys (warp w: chunks w,
// w + FDO_WARPS, ...; lane j scores key j of a chunk against the R heads with q staged as fp32 in the log2 domain, an
// online softmax a head per warp, the chunk's probabilities through the warp's row of shared memory, each lane
// accumulating the D / 32 output columns it owns, a chunk's keys and values requested before any is used). The warps'
// states merge into the CTA's (unnormalized outputs, max, sum) in shared memory; across the cluster barrier each CTA reads
// every rank's state through distributed shared memory and merges them in rank order, so every CTA of the cluster holds
// the same attention output, rounded to T. (Session 51's form gave each CTA the whole cache: 30-33 us a layer on an H100
// against 18 for the two ops, its warps issuing about 8,800 instructions each at 8 warps an SM.) Product: a warp a row of
// the segment, the lanes over its 16-byte chunks, into part (B, KH, C) as fp32. The last CTA of (s, b) to finish
// (counters[b gridDim.x + s], left zero for the next launch or graph replay) adds the KH partials in kv-head order (so a
// replay gives the same bits), the bias and y, rounding once. Dynamic shared memory: rows R D values of T, then
// (R D + FDO_WARPS R 32 + FDO_WARPS R (D + 2) + R D + R (D + 2) + 1) floats. R at most FDO_MAX_R; R D a multiple of 8;
// Wo's rows 16-byte aligned (ldo a multiple of 8).
#define FDO_WARPS 8
#define FDO_MAX_R 8
#define FDO_MAX_CLUSTER 8

// N (2 or 4) consecutive 16-bit values kept as raw words (one 4- or 8-byte load, p aligned to it), and as fp32.
template <int N> struct alignas(2 * N) HalfWords { unsigned w[N / 2]; };
template <typename T, int N>
__device__ __forceinline__ HalfWords<N> load_half_words(const T* p)
{
    static_assert(N == 2 || N == 4, "2 or 4 values");
    return *reinterpret_cast<const HalfWords<N>*>(p);
}
template <typename T, int N>
__device__ __forceinline__ void unpack_half_words(const HalfWords<N>& u, float* out)
{
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int i = 0; i < N; i++) out[i] = to_f(e[i]);
}

template <typename T, int D>
__device__ void flash_decode_out(const T* q, const T* k, const T* v, const int* starts, int S, const T* wo, const T* bias, T* y,
    float* part, int* counters, int H, int KH, int C, int rows, Strides3 qs, Strides3 ks, Strides3 vs, i64 ldo, i64 ldy,
    float scale, int window, int early)
{
    constexpr int V = 8, DPL = D / 32;   // T values in 16 bytes; output columns a lane owns
    extern __shared__ unsigned char smem[];
    unsigned char* const base = cta_dynamic_shared(smem);   // the CTA's own memory on the emulation's clusters
    const int R = H / KH, seg = blockIdx.x, g = blockIdx.y, b = blockIdx.z, ctas = (int)cluster_ctas(), rank = (int)cluster_rank();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = seg * rows, nrows = min(rows, C - n0), width = R * D, chunks = width / V;   // nrows <= 0: a pad segment
    T* ws = reinterpret_cast<T*>(base);                                             // (rows, R D)
    float* qsm = reinterpret_cast<float*>(base + (i64)rows * width * sizeof(T));   // (R, D), scaled to the log2 domain
    float* psm = qsm + width;                                                       // (FDO_WARPS, R, 32)
    float* red = psm + FDO_WARPS * R * 32;                                          // (FDO_WARPS, R, D + 2)
    float* osm = red + FDO_WARPS * R * (D + 2);                                     // (R, D)
    float* st = osm + width;                       // (R, D + 2): this CTA's outputs (unnormalized), max, sum; read by the cluster
    int* last = reinterpret_cast<int*>(st + R * (D + 2));
    auto stage_weights = [&] {
        const T* src = wo + (i64)n0 * ldo + (i64)g * width;
        for (int i = tid; i < nrows * chunks; i += blockDim.x)
        {
            const int r = i / chunks, c = i % chunks;
            cp_async16(smem_u32(ws + (i64)r * width + c * V), src + (i64)r * ldo + c * V, true);
        }
        cp_async_commit();
    };
    if (early) stage_weights();
    pdl_wait();
    pdl_launch_dependents();
    if (!early) stage_weights();

    // The cache's valid length is read here, so one launch (and a captured graph) serves every length. This rank's keys:
    // the c-th of `ctas` equal spans of lo .. len - 1 (empty for the last ranks of a short cache).
    const int total = starts ? starts[b] + 1 : S, first = max(0, total - window), span = (total - first + ctas - 1) / ctas;
    const int lo = first + rank * span, len = min(total, lo + span);
    const float sl2 = scale * LOG2E;
    for (int i = tid; i < width; i += blockDim.x)
        qsm[i] = to_f(q[b * qs.b + (i64)(g * R + i / D) * qs.h + i % D]) * sl2;
    // Row n0 + tid's residual and bias, read with q so that the segment's last CTA does not wait for them at the end.
    float ypre = 0.f, bpre = 0.f;
    if (tid < nrows)
    {
        ypre = to_f(y[b * ldy + n0 + tid]);
        if (bias) bpre = to_f(bias[n0 + tid]);
    }
    __syncthreads();

    const T* kb = k + b * ks.b + (i64)g * ks.h;
    const T* vb = v + b * vs.b + (i64)g * vs.h + lane * DPL;
    float* pw = psm + warp * R * 32;
    float m[FDO_MAX_R], l[FDO_MAX_R], acc[FDO_MAX_R][DPL];
#pragma unroll
    for (int r = 0; r < FDO_MAX_R; r++)
    {
        m[r] = NEG_INF; l[r] = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; i++) acc[r][i] = 0.f;
    }
    // A chunk costs one round trip to memory, not one per key: the lane's key row and the warp's value columns of the
    // chunk's first VB keys are all requested before any is used (the values do not depend on the scores). Keys past
    // the cache's length read lane 0's row (valid) and score -inf; values past it are zeros, so 0 x garbage adds nothing.
    constexpr int VB = D == 64 ? 32 : 16;   // value rows in flight a lane (D 128: two rounds, for registers)
    for (int c0 = lo + warp * 32; c0 < len; c0 += FDO_WARPS * 32)   // uniform over the warp
    {
        const int s = c0 + lane, n = min(32, len - c0);
        const bool ok = s < len;
        Bytes16 kraw[D / V];
        HalfWords<DPL> vraw[VB];
        const T* kr = kb + (i64)(ok ? s : c0) * ks.t;
#pragma unroll
        for (int j = 0; j < D / V; j++) kraw[j] = *reinterpret_cast<const Bytes16*>(kr + j * V);
        auto load_values = [&](int j0) {
#pragma unroll
            for (int j = 0; j < VB; j++)
                vraw[j] = j0 + j < n ? load_half_words<T, DPL>(vb + (i64)(c0 + j0 + j) * vs.t) : HalfWords<DPL>{};
        };
        load_values(0);
        float sc[FDO_MAX_R];
#pragma unroll
        for (int r = 0; r < FDO_MAX_R; r++) sc[r] = 0.f;
#pragma unroll
        for (int j = 0; j < D / V; j++)
        {
            float kv[V];
            unpack16<T>(kraw[j], kv);
#pragma unroll
            for (int r = 0; r < FDO_MAX_R; r++)
                if (r < R)
#pragma unroll
                    for (int e = 0; e < V; e++) sc[r] = fmaf(qsm[r * D + j * V + e], kv[e], sc[r]);
        }
#pragma unroll
        for (int r = 0; r < FDO_MAX_R; r++)
        {
            if (r >= R) break;
            const float x = ok ? sc[r] : NEG_INF;
            const float mn = fmaxf(m[r], warp_max(x));   // finite: lane 0's key is valid
            const float corr = exp2f(m[r] - mn), p = ok ? exp2f(x - mn) : 0.f;
            l[r] = l[r] * corr + p;
            pw[r * 32 + lane] = p;
#pragma unroll
            for (int i = 0; i < DPL; i++) acc[r][i] *= corr;
            m[r] = mn;
        }
        __syncwarp();
#pragma unroll
        for (int j0 = 0; j0 < 32; j0 += VB)
        {
            if (j0 > 0)
            {
                if (j0 >= n) break;
                load_values(j0);
            }
#pragma unroll
            for (int j = 0; j < VB; j++)
            {
                float vv[DPL];
                unpack_half_words<T, DPL>(vraw[j], vv);
#pragma unroll
                for (int r = 0; r < FDO_MAX_R; r++)
                    if (r < R)
                    {
                        const float p = pw[r * 32 + j0 + j];   // 0 past the cache's length
#pragma unroll
                        for (int i = 0; i < DPL; i++) acc[r][i] = fmaf(p, vv[i], acc[r][i]);
                    }
            }
        }
        __syncwarp();
    }
#pragma unroll
    for (int r = 0; r < FDO_MAX_R; r++)
    {
        if (r >= R) break;
        const float lw = warp_sum(l[r]);
        float* rr = red + (warp * R + r) * (D + 2);
#pragma unroll
        for (int i = 0; i < DPL; i++) rr[lane * DPL + i] = acc[r][i];
        if (lane == 0) { rr[D] = m[r]; rr[D + 1] = lw; }
    }
    __syncthreads();
    for (int i = tid; i < width; i += blockDim.x)   // the warps' states into the CTA's, unnormalized
    {
        const int r = i / D, d = i % D;
        float M = NEG_INF;
        for (int w = 0; w < FDO_WARPS; w++) M = fmaxf(M, red[(w * R + r) * (D + 2) + D]);
        float L = 0.f, o = 0.f;
        for (int w = 0; w < FDO_WARPS; w++)
        {
            const float* rr = red + (w * R + r) * (D + 2);
            const float e = rr[D] == NEG_INF ? 0.f : exp2f(rr[D] - M);   // a warp without keys adds nothing
            L += rr[D + 1] * e;
            o += rr[d] * e;
        }
        float* sr = st + r * (D + 2);
        sr[d] = o;
        if (d == 0) { sr[D] = M; sr[D + 1] = L; }
    }
    cluster_arrive();   // release: this CTA's state is visible to the cluster
    cluster_wait();
    // Every rank's state, merged in rank order (the same bits in every CTA of the cluster): two columns a thread.
    for (int i = tid; i < width / 2; i += blockDim.x)
    {
        const int r = 2 * i / D, d = 2 * i % D;
        const float* sr = st + r * (D + 2);
        float mc[FDO_MAX_CLUSTER], lc[FDO_MAX_CLUSTER], o0[FDO_MAX_CLUSTER], o1[FDO_MAX_CLUSTER];
#pragma unroll
        for (int c = 0; c < FDO_MAX_CLUSTER; c++)
            if (c < ctas)
            {
                cluster_load2(sr + D, c, mc[c], lc[c]);
                cluster_load2(sr + d, c, o0[c], o1[c]);
            }
        float M = NEG_INF;
#pragma unroll
        for (int c = 0; c < FDO_MAX_CLUSTER; c++)
            if (c < ctas) M = fmaxf(M, mc[c]);
        float L = 0.f, a0 = 0.f, a1 = 0.f;
#pragma unroll
        for (int c = 0; c < FDO_MAX_CLUSTER; c++)
            if (c < ctas)
            {
                const float e = mc[c] == NEG_INF ? 0.f : exp2f(mc[c] - M);   // a rank without keys adds nothing
                L += lc[c] * e;
                a0 += o0[c] * e;
                a1 += o1[c] * e;
            }
        osm[r * D + d] = to_f(from_f<T>(a0 / L));   // the attention output as AttentionForwardCached stores it
        osm[r * D + d + 1] = to_f(from_f<T>(a1 / L));
    }
    cluster_arrive();   // this CTA has read the others' states; it waits before it leaves (below)
    cp_async_wait<0>();
    __syncthreads();

    // Lane j's chunks of a row are j, j + 32, ... (at most FDO_MAX_R D / 256 of them): their outputs held in registers.
    constexpr int CPL = FDO_MAX_R * D / (32 * V);
    float ov[CPL][V];
#pragma unroll
    for (int u = 0; u < CPL; u++)
#pragma unroll
        for (int e = 0; e < V; e++) ov[u][e] = lane + 32 * u < chunks ? osm[(lane + 32 * u) * V + e] : 0.f;
#pragma unroll 4
    for (int r = warp; r < nrows; r += FDO_WARPS)   // unrolled so that four rows' shuffle trees interleave
    {
        float sum = 0.f;
#pragma unroll
        for (int u = 0; u < CPL; u++)
        {
            const int c = lane + 32 * u;
            if (c >= chunks) break;
            float w[V];
            unpack16<T>(*reinterpret_cast<const Bytes16*>(ws + (i64)r * width + c * V), w);
#pragma unroll
            for (int e = 0; e < V; e++) sum = fmaf(w[e], ov[u][e], sum);
        }
        sum = warp_sum(sum);
        if (lane == 0) part[((i64)b * KH + g) * C + n0 + r] = sum;
    }

    cluster_wait();   // no CTA leaves while another may still read its state
    fence_gpu();   // this CTA's partials are visible before it is counted
    __syncthreads();
    int* counter = counters + b * gridDim.x + seg;
    if (tid == 0) *last = atomicAdd(counter, 1) == KH - 1;
    __syncthreads();
    if (!*last) return;
    fence_gpu();
    for (int r = tid; r < nrows; r += blockDim.x)
    {
        const int n = n0 + r;
        float sum = 0.f;
        for (int j = 0; j < KH; j++) sum += load_cg(part + ((i64)b * KH + j) * C + n);
        const bool pre = r == tid;   // read at the start
        if (bias) sum += pre ? bpre : to_f(bias[n]);
        T* yn = y + b * ldy + n;
        *yn = from_f<T>((pre ? ypre : to_f(*yn)) + sum);
    }
    if (tid == 0) *counter = 0;
}

// ------------------------------------------------------------------------------------ backward
// One thread's 8 columns (sub) of the (b, t, h) row `row` of the first pass: its share of dO·O (returned), the dq
// accumulator's 8 zeroed, and with cs, dO's 8 values added to cs.
template <typename T, int D>
__device__ __forceinline__ float flash_backward_pre_part(const T* o, const T* dout, float* dqacc, i64 row, int b, int t, int h,
    int sub, Strides3 os, Strides3 ds, float* cs)
{
    u32x4 a = *(const u32x4*)(o + b * os.b + (i64)t * os.t + (i64)h * os.h + sub * 8);
    u32x4 c = *(const u32x4*)(dout + b * ds.b + (i64)t * ds.t + (i64)h * ds.h + sub * 8);
    const T* ae = (const T*)&a;
    const T* ce = (const T*)&c;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < 8; i++)
    {
        const float dv = to_f(ce[i]);
        s += to_f(ae[i]) * dv;
        if (cs) cs[i] += dv;
    }
    f32x4 z = {0.f, 0.f, 0.f, 0.f};
    f32x4* dst = (f32x4*)(dqacc + row * D + sub * 8);
    dst[0] = z; dst[1] = z;
    return s;
}

// Preprocess: delta (B,H,T) = rowsum(dO * O); zeroes the fp32 dq accumulator (B,T,H,D) contiguous.
// D/8 threads per (b, t, h) row.
template <typename T, int D>
__device__ void flash_backward_pre(const T* o, const T* dout, float* delta, float* dqacc, int B, int Tq, int H,
    Strides3 os, Strides3 ds)
{
    constexpr int TPR = D / 8;
    const i64 gt = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const i64 row = gt / TPR;
    const int sub = (int)(gt % TPR);
    const bool ok = row < (i64)B * Tq * H;
    const int h = (int)(row % H), t = (int)((row / H) % Tq), b = (int)(row / ((i64)H * Tq));
    float s = ok ? flash_backward_pre_part<T, D>(o, dout, dqacc, row, b, t, h, sub, os, ds, nullptr) : 0.f;
#pragma unroll
    for (int off = TPR / 2; off > 0; off >>= 1) s += __shfl_xor_sync(FULL_MASK, s, off);
    if (ok && sub == 0) delta[((i64)b * H + h) * Tq + t] = s;
}

// The same, and the column sums of dO: the bias gradient of the product that made v (each key's dV is the sum of its
// probabilities times dO, and a query's probabilities sum to 1, so the column sums of dV over every key equal those of dO
// over every query, its heads summed over their kv head's group). A grid stride that is a multiple of H D / 8 threads, so
// that a thread keeps one (head, 8 columns) for all its rows and sums them in registers; then the block's threads add theirs
// into shared memory (H D floats: at most 12 KB for 24 heads of 128) and the block writes its partial row (colsum: gridDim.x
// rows of H D floats), which the host sums.
template <typename T, int D>
__device__ void flash_backward_pre_sums(const T* o, const T* dout, float* delta, float* dqacc, int B, int Tq, int H,
    Strides3 os, Strides3 ds, float* colsum)
{
    constexpr int TPR = D / 8;
    extern __shared__ float pre_sums[];                    // (H D)
    for (int i = threadIdx.x; i < H * D; i += blockDim.x) pre_sums[i] = 0.f;
    __syncthreads();
    const i64 rows = (i64)B * Tq * H, stride = (i64)gridDim.x * blockDim.x;
    const i64 first = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const int sub = (int)(first % TPR), h = (int)(first / TPR % H);   // fixed over the thread's rows (stride % (H TPR) == 0)
    float cs[8];
#pragma unroll
    for (int i = 0; i < 8; i++) cs[i] = 0.f;
    // Every lane runs the same number of iterations (rows are padded to a whole number of the grid's passes), so that the
    // shuffles below see full warps.
    const i64 passes = (rows * TPR + stride - 1) / stride;
    for (i64 p = 0; p < passes; p++)
    {
        const i64 gt = first + p * stride, row = gt / TPR;
        const bool ok = row < rows;
        const int t = (int)((row / H) % Tq), b = (int)(row / ((i64)H * Tq));
        float s = ok ? flash_backward_pre_part<T, D>(o, dout, dqacc, row, b, t, h, sub, os, ds, cs) : 0.f;
#pragma unroll
        for (int off = TPR / 2; off > 0; off >>= 1) s += __shfl_xor_sync(FULL_MASK, s, off);
        if (ok && sub == 0) delta[((i64)b * H + h) * Tq + t] = s;
    }
#pragma unroll
    for (int i = 0; i < 8; i++) atomicAdd(&pre_sums[h * D + sub * 8 + i], cs[i]);
    __syncthreads();
    for (int i = threadIdx.x; i < H * D; i += blockDim.x) colsum[(i64)blockIdx.x * H * D + i] = pre_sums[i];
}

// dq (strided, T) = dqacc (fp32, contiguous (B,T,H,D)); 8 values per thread.
template <typename T, int D>
__device__ void flash_backward_dq_cast(const float* dqacc, T* dq, int B, int Tq, int H, Strides3 dqs)
{
    constexpr int TPR = D / 8;
    const i64 gt = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    const i64 row = gt / TPR;
    const int sub = (int)(gt % TPR);
    if (row >= (i64)B * Tq * H) return;
    const int h = (int)(row % H), t = (int)((row / H) % Tq), b = (int)(row / ((i64)H * Tq));
    const f32x4* src = (const f32x4*)(dqacc + row * D + sub * 8);
    f32x4 x = src[0], y = src[1];
    u32x4 r;
    r.x = Mma<T>::pack(x.x, x.y); r.y = Mma<T>::pack(x.z, x.w);
    r.z = Mma<T>::pack(y.x, y.y); r.w = Mma<T>::pack(y.z, y.w);
    *(u32x4*)(dq + b * dqs.b + (i64)t * dqs.t + (i64)h * dqs.h + sub * 8) = r;
}

// Main backward (S = T). CTA (key block of 64, kv head, b), 4 warps of 16 keys. For each query head
// of the group and each query block of 64 at or after the key block: S^T = K Q^T, P^T = exp(S^T - lse),
// dP^T = V dO^T, dS^T = P^T (dP^T - delta); dV += P^T dO, dK += dS^T Q in registers;
// dQ += dS K through shared memory (dS^T tile) and fp32 atomics. Q/dO/lse/delta double-buffered.
template <typename T, int D>
__device__ void flash_backward(const T* q, const T* k, const T* v, const T* dout, const float* lse, const float* delta,
    float* dqacc, T* dk, T* dv, int Tq, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds,
    Strides3 dks, Strides3 dvs, float scale, int window)
{
    constexpr int BM = 64, BN = 64, NT = 128, KD = D / 16, ND = D / 8;
    extern __shared__ unsigned char smem[];
    const unsigned sK = smem_u32(smem);
    const unsigned sV = sK + BN * D * 2;
    const unsigned sQ = sV + BN * D * 2;        // 2 stages
    const unsigned sdO = sQ + 2 * BM * D * 2;   // 2 stages
    const unsigned sdS = sdO + 2 * BM * D * 2;  // BN x BM, swizzled rows of 64
    float* sL = (float*)(smem + (sdS + BN * BM * 2 - sK)); // 2 stages x BM lse (log2 domain after load), then 2 x BM delta
    float* sDel = sL + 2 * BM;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    const TileOffsets<D> off(lane);
    const unsigned dsoff = ldsm_offset_rows<BM>(lane, warp); // the dS^T tile: rows of BM, the warp's 16 columns
    const int nb = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z, group = H / KH;
    const int n0 = nb * BN;
    // Query blocks that see this key block: from the diagonal to the last query within the window of its newest key.
    const int mStart = n0 / BM, nQB = min((Tq + BM - 1) / BM, (n0 + BN - 1 + window - 1) / BM + 1);
    const int per = nQB - mStart, iters = per * group;
    const float sl2 = scale * LOG2E;

    load_tile<D, BN, NT>(sK, k + b * ks.b + (i64)kvh * ks.h, ks.t, n0, Tq, tid);
    load_tile<D, BN, NT>(sV, v + b * vs.b + (i64)kvh * vs.h, vs.t, n0, Tq, tid);

    auto issue = [&](int it, int st) {
        const int hh = kvh * group + it / per, m0 = (mStart + it % per) * BM;
        load_tile<D, BM, NT>(sQ + st * BM * D * 2, q + b * qs.b + (i64)hh * qs.h, qs.t, m0, Tq, tid);
        load_tile<D, BM, NT>(sdO + st * BM * D * 2, dout + b * ds.b + (i64)hh * ds.h, ds.t, m0, Tq, tid);
        const i64 rowBase = ((i64)b * H + hh) * Tq;
        if (tid < 32)
        {
            // 16 chunks of 4 floats for lse, 16 for delta; rows beyond T read as 0 (masked anyway).
            const int which = tid >> 4, c = tid & 15, t = m0 + c * 4;
            const float* src = (which ? delta : lse) + rowBase + t;
            float* dst = (which ? sDel : sL) + st * BM + c * 4;
            // lse/delta rows are not 16-byte aligned in general (T arbitrary): 4-byte copies.
#pragma unroll
            for (int i = 0; i < 4; i++)
            {
                bool ok = t + i < Tq;
#ifdef __CUDA_ARCH__
                asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(smem_u32(dst + i)), "l"(ok ? src + i : src - t), "r"(ok ? 4 : 0));
#else
                dst[i] = ok ? src[i] : 0.f;
#endif
            }
        }
    };

    float dkacc[ND][4], dvacc[ND][4];
#pragma unroll
    for (int j = 0; j < ND; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) { dkacc[j][e] = 0.f; dvacc[j][e] = 0.f; }

    issue(0, 0);
    cp_async_commit();
    // The warp's K and V rows as MMA A fragments, loaded from shared memory once (after the first wait below) instead
    // of at every query block: the backward is bound by shared-memory loads (ncu, H200: L1/shared pipe 79 % busy,
    // tensor 28 %), and these were 8 of its 92 ldmatrix per warp and block. D = 64 only: at 128 the 64 registers
    // they take would spill.
    constexpr bool HOIST = D <= 64;
    unsigned ka[HOIST ? KD : 1][4], va[HOIST ? KD : 1][4];
    for (int it = 0; it < iters; it++)
    {
        const int st = it & 1;
        if (it + 1 < iters) issue(it + 1, st ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if (HOIST && it == 0)
#pragma unroll
            for (int kk = 0; kk < (HOIST ? KD : 0); kk++)
            {
                ldsm_x4(sK + swz<D>(warp * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8), ka[kk][0], ka[kk][1], ka[kk][2], ka[kk][3]);
                ldsm_x4(sV + swz<D>(warp * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8), va[kk][0], va[kk][1], va[kk][2], va[kk][3]);
            }
        const int hh = kvh * group + it / per, m0 = (mStart + it % per) * BM;
        const unsigned tQ = sQ + st * BM * D * 2, tdO = sdO + st * BM * D * 2;
        const float* tL = sL + st * BM;
        const float* tDel = sDel + st * BM;

        // S^T (16 keys x 64 queries per warp) and dP^T
        float sacc[BM / 8][4], pacc[BM / 8][4];
#pragma unroll
        for (int j = 0; j < BM / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) { sacc[j][e] = 0.f; pacc[j][e] = 0.f; }
#pragma unroll
        for (int kk = 0; kk < KD; kk++)
        {
            const unsigned* kf = ka[HOIST ? kk : 0];
            const unsigned* vf = va[HOIST ? kk : 0];
            if constexpr (!HOIST)
            {
                ldsm_x4(sK + swz<D>(warp * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8), ka[0][0], ka[0][1], ka[0][2], ka[0][3]);
                ldsm_x4(sV + swz<D>(warp * 16 + (lane & 15), kk * 16 + (lane >> 4) * 8), va[0][0], va[0][1], va[0][2], va[0][3]);
            }
#pragma unroll
            for (int j2 = 0; j2 < BM / 16; j2++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4(tQ + off.rows[kk] + j2 * 16 * D * 2, b0, b1, b2, b3);
                Mma<T>::run(sacc[2 * j2], kf, b0, b1);
                Mma<T>::run(sacc[2 * j2 + 1], kf, b2, b3);
                ldsm_x4(tdO + off.rows[kk] + j2 * 16 * D * 2, b0, b1, b2, b3);
                Mma<T>::run(pacc[2 * j2], vf, b0, b1);
                Mma<T>::run(pacc[2 * j2 + 1], vf, b2, b3);
            }
        }
        const bool mask = m0 < n0 + BN || m0 + BM > Tq || m0 + BM - 1 - n0 >= window;
#pragma unroll
        for (int j = 0; j < BM / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int qc = j * 8 + 2 * c4 + (e & 1), key = n0 + warp * 16 + g + (e >> 1) * 8, t = m0 + qc;
                float p = fast_exp2(fmaf(sacc[j][e], sl2, -tL[qc] * LOG2E));
                if (mask && (key > t || t >= Tq || t - key >= window)) p = 0.f;
                sacc[j][e] = p;
                pacc[j][e] = p * (pacc[j][e] - tDel[qc]);
            }
        // dV += P^T dO, dK += dS^T Q (k = query)
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++)
        {
            unsigned pa[4], sa[4];
            pa[0] = Mma<T>::pack(sacc[2 * kk][0], sacc[2 * kk][1]);
            pa[1] = Mma<T>::pack(sacc[2 * kk][2], sacc[2 * kk][3]);
            pa[2] = Mma<T>::pack(sacc[2 * kk + 1][0], sacc[2 * kk + 1][1]);
            pa[3] = Mma<T>::pack(sacc[2 * kk + 1][2], sacc[2 * kk + 1][3]);
            sa[0] = Mma<T>::pack(pacc[2 * kk][0], pacc[2 * kk][1]);
            sa[1] = Mma<T>::pack(pacc[2 * kk][2], pacc[2 * kk][3]);
            sa[2] = Mma<T>::pack(pacc[2 * kk + 1][0], pacc[2 * kk + 1][1]);
            sa[3] = Mma<T>::pack(pacc[2 * kk + 1][2], pacc[2 * kk + 1][3]);
            // dS^T to shared memory for dQ: row key (warp*16 + g (+8)), columns queries 16kk + 2c4 (+8)
            {
                char* base = (char*)smem + (sdS - sK);
                const int r0 = warp * 16 + g, r1 = r0 + 8, cA = kk * 16 + 2 * c4, cB = cA + 8;
                *(unsigned*)(base + swz<BM>(r0, cA & ~7) + (cA & 7) * 2) = sa[0];
                *(unsigned*)(base + swz<BM>(r1, cA & ~7) + (cA & 7) * 2) = sa[1];
                *(unsigned*)(base + swz<BM>(r0, cB & ~7) + (cB & 7) * 2) = sa[2];
                *(unsigned*)(base + swz<BM>(r1, cB & ~7) + (cB & 7) * 2) = sa[3];
            }
#pragma unroll
            for (int j2 = 0; j2 < D / 16; j2++)
            {
                unsigned b0, b1, b2, b3;
                ldsm_x4_t(tdO + off.cols[j2] + kk * 16 * D * 2, b0, b1, b2, b3);
                Mma<T>::run(dvacc[2 * j2], pa, b0, b1);
                Mma<T>::run(dvacc[2 * j2 + 1], pa, b2, b3);
                ldsm_x4_t(tQ + off.cols[j2] + kk * 16 * D * 2, b0, b1, b2, b3);
                Mma<T>::run(dkacc[2 * j2], sa, b0, b1);
                Mma<T>::run(dkacc[2 * j2 + 1], sa, b2, b3);
            }
        }
        __syncthreads();
        // dQ (16 queries per warp x D) = dS (16 x 64 keys) K (64 keys x D); A from the dS^T tile, transposed.
        {
            float qacc[ND][4];
#pragma unroll
            for (int j = 0; j < ND; j++) qacc[j][0] = qacc[j][1] = qacc[j][2] = qacc[j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < BN / 16; kk++)
            {
                unsigned a[4];
                ldsm_x4_t(sdS + dsoff + kk * 16 * BM * 2, a[0], a[1], a[2], a[3]);
#pragma unroll
                for (int j2 = 0; j2 < D / 16; j2++)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4_t(sK + off.cols[j2] + kk * 16 * D * 2, b0, b1, b2, b3);
                    Mma<T>::run(qacc[2 * j2], a, b0, b1);
                    Mma<T>::run(qacc[2 * j2 + 1], a, b2, b3);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; r++)
            {
                const int t = m0 + warp * 16 + g + r * 8;
                if (t < Tq)
                {
                    float* dst = dqacc + (((i64)b * Tq + t) * H + hh) * D + 2 * c4;
#pragma unroll
                    for (int j = 0; j < ND; j++)
                    {
                        // one 8-byte reduction per adjacent pair (sm_90), fire-and-forget
#ifdef __CUDA_ARCH__
                        asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(dst + j * 8), "f"(qacc[j][2 * r] * scale),
                                     "f"(qacc[j][2 * r + 1] * scale) : "memory");
#else
                        atomicAdd(dst + j * 8, qacc[j][2 * r] * scale);
                        atomicAdd(dst + j * 8 + 1, qacc[j][2 * r + 1] * scale);
#endif
                    }
                }
            }
        }
        __syncthreads(); // sdS and this stage are rewritten next
    }
    cp_async_wait<0>();
#pragma unroll
    for (int r = 0; r < 2; r++)
    {
        const int s = n0 + warp * 16 + g + r * 8;
        if (s < Tq)
        {
            T* krow = dk + b * dks.b + (i64)s * dks.t + (i64)kvh * dks.h;
            T* vrow = dv + b * dvs.b + (i64)s * dvs.t + (i64)kvh * dvs.h;
#pragma unroll
            for (int j = 0; j < ND; j++)
            {
                *(unsigned*)(krow + j * 8 + 2 * c4) = Mma<T>::pack(dkacc[j][2 * r] * scale, dkacc[j][2 * r + 1] * scale);
                *(unsigned*)(vrow + j * 8 + 2 * c4) = Mma<T>::pack(dvacc[j][2 * r], dvacc[j][2 * r + 1]);
            }
        }
    }
}


// Grouped decode, RPW query rows per warp (R = H / KH * Tq <= 4 * RPW).
#define FLASH_GQA(n, T, D, RPW)                                                                                 \
    extern "C" __global__ void __launch_bounds__(128) flash_decode_gqa_##n##_d##D##_r##RPW(const T* q,        \
        const T* k, const T* v, float* part, int* counters, T* o, float* lse, int Tq, int S, int H, int KH,     \
        Strides3 qs, Strides3 ks, Strides3 vs, Strides3 os, float scale, const int* starts, int window)         \
    {                                                                                                           \
        flash_decode_gqa<T, D, RPW>(q, k, v, part, counters, o, lse, Tq, S, H, KH, qs, ks, vs, os, scale,       \
                                    starts, window);                                                            \
    }

// Over a quantized pool (its code's module only, KernelLibrary.QuantizedKvModule: 16-bit caches and training never compile
// it): paged_prefill_<code>_<type>_d<D> (code i8 or f8), the same arguments with the pool's codes and its scales last.
#define PAGED_PREFILL_Q_ONE(code, P, n, T, D)                                                                   \
    extern "C" __global__ void __launch_bounds__(128) paged_prefill_##code##_##n##_d##D(const T* q,           \
        const P* pool, T* out, const int* tables, const int* starts, const int* lengths, int B, int H,         \
        int K, int block_size, int max_blocks, i64 q_n, i64 q_h, float scale, int min_rows, int window,         \
        const float* scales)                                                                                    \
    {                                                                                                           \
        paged_prefill<T, D, P>(q, pool, out, tables, starts, lengths, B, H, K, block_size, max_blocks,          \
                               q_n, q_h, scale, min_rows, window, scales);                                      \
    }

// The forward: key tiles of BN rows (64, or 32 at heads of 256); cap: Gemma 2's soft cap, 0 for none.
#define FLASH_FORWARD(n, T, D, BN)                                                                              \
    extern "C" __global__ void __launch_bounds__(128) flash_forward_##n##_d##D(const T* q, const T* k,          \
        const T* v, T* o, float* lse, int Tq, int S, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs,      \
        Strides3 os, float scale, const int* starts, int window, float cap)                                     \
    {                                                                                                           \
        /* KV cache: sequence b has starts[b] + Tq valid keys of the S the cache holds. */                      \
        if (starts) S = starts[blockIdx.z] + Tq;                                                                \
        flash_forward<T, D, FLASH_MT(D), BN>(q, k, v, o, lse, Tq, S, H, KH, qs, ks, vs, os, scale, window, cap); \
    }

#define FLASH(n, T, D)                                                                                          \
    FLASH_FORWARD(n, T, D, 64)                                                                                  \
    FLASH_GQA(n, T, D, 1) FLASH_GQA(n, T, D, 2) FLASH_GQA(n, T, D, 4)                                         \
    extern "C" __global__ void __launch_bounds__(128) paged_prefill_##n##_d##D(const T* q, const T* pool, T* out,  \
        const int* tables, const int* starts, const int* lengths, int B, int H, int K, int block_size,          \
        int max_blocks, i64 q_n, i64 q_h, float scale, int min_rows, int window)                                \
    {                                                                                                           \
        paged_prefill<T, D>(q, pool, out, tables, starts, lengths, B, H, K, block_size, max_blocks, q_n, q_h,   \
                            scale, min_rows, window);                                                           \
    }                                                                                                           \
    extern "C" __global__ void flash_backward_pre_##n##_d##D(const T* o, const T* dout, float* delta,          \
        float* dqacc, int B, int Tq, int H, Strides3 os, Strides3 ds)                                           \
    {                                                                                                           \
        flash_backward_pre<T, D>(o, dout, delta, dqacc, B, Tq, H, os, ds);                                      \
    }                                                                                                           \
    extern "C" __global__ void flash_backward_pre_sums_##n##_d##D(const T* o, const T* dout, float* delta,     \
        float* dqacc, int B, int Tq, int H, Strides3 os, Strides3 ds, float* colsum)                            \
    {                                                                                                           \
        flash_backward_pre_sums<T, D>(o, dout, delta, dqacc, B, Tq, H, os, ds, colsum);                         \
    }                                                                                                           \
    extern "C" __global__ void flash_backward_dq_cast_##n##_d##D(const float* dqacc, T* dq, int B, int Tq,     \
        int H, Strides3 dqs)                                                                                    \
    {                                                                                                           \
        flash_backward_dq_cast<T, D>(dqacc, dq, B, Tq, H, dqs);                                                 \
    }                                                                                                           \
    extern "C" __global__ void __launch_bounds__(128) flash_backward_##n##_d##D(const T* q, const T* k,         \
        const T* v, const T* dout, const float* lse, const float* delta, float* dqacc, T* dk, T* dv, int Tq,    \
        int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs, Strides3 ds, Strides3 dks, Strides3 dvs,          \
        float scale, int window)                                                                                \
    {                                                                                                           \
        flash_backward<T, D>(q, k, v, dout, lse, delta, dqacc, dk, dv, Tq, H, KH, qs, ks, vs, ds, dks, dvs,     \
                             scale, window);                                                                    \
    }

// The per-query-head split decode and its combine: CUDA cores only, so every head size whose rows are whole 16-byte
// chunks could take it; instantiated at 64 and 128 beside the tensor-core kernels and at 256 (Gemma 2 2B/9B, Gemma 3) alone.
// cap: Gemma 2's soft cap (0 for none); the forward applies it too, the grouped decode and the backward do not.
#define FLASH_DECODE(n, T, D)                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) flash_decode_##n##_d##D(const T* q, const T* k,           \
        const T* v, float* part, int Tq, int S, int H, int KH, Strides3 qs, Strides3 ks, Strides3 vs,           \
        float scale, int keysPerSplit, const int* starts, int* counters, T* o, float* lse, Strides3 os,         \
        int window, float cap)                                                                                  \
    {                                                                                                           \
        /* A dependent launch (CudaBackend.FlashDecode): what it reads may come from the kernel in front. */    \
        pdl_wait();                                                                                             \
        pdl_launch_dependents();                                                                                \
        /* KV cache: the valid length is read here, so one launch (and a captured graph) serves every length. */ \
        /* The splits share keys lo .. S - 1: those in the first query's window (all of them without one). */   \
        if (starts) S = starts[blockIdx.z] + Tq;                                                                \
        const int lo = max(0, S - Tq - window + 1);                                                             \
        if (starts) keysPerSplit = (S - lo + gridDim.x - 1) / gridDim.x;                                        \
        flash_decode<T, D>(q, k, v, part, Tq, S, H, KH, qs, ks, vs, scale, keysPerSplit, lo, window, cap);      \
        if (counters) flash_decode_finish<T, D>(part, counters, o, lse, Tq, H, os);                             \
    }                                                                                                           \
    extern "C" __global__ void flash_decode_combine_##n##_d##D(const float* part, T* o, float* lse, int Tq,    \
        int H, int splits, Strides3 os)                                                                         \
    {                                                                                                           \
        flash_decode_combine<T, D>(part, o, lse, Tq, H, splits, os);                                            \
    }

FLASH(bf16, bf16, 64)
FLASH(bf16, bf16, 128)
FLASH(f16, f16, 64)
FLASH(f16, f16, 128)
FLASH_FORWARD(bf16, bf16, 256, 32)
FLASH_FORWARD(f16, f16, 256, 32)
FLASH_DECODE(bf16, bf16, 64)
FLASH_DECODE(bf16, bf16, 128)
FLASH_DECODE(bf16, bf16, 256)
FLASH_DECODE(f16, f16, 64)
FLASH_DECODE(f16, f16, 128)
FLASH_DECODE(f16, f16, 256)

// The decode attention with the output product behind it (flash_decode_out above), FDO_WARPS warps a CTA.
#define FLASH_DECODE_OUT(n, T, D)                                                                               \
    extern "C" __global__ void __launch_bounds__(FDO_WARPS * 32) flash_decode_out_##n##_d##D(const T* q,       \
        const T* k, const T* v, const int* starts, int S, const T* wo, const T* bias, T* y, float* part,        \
        int* counters, int H, int KH, int C, int rows, Strides3 qs, Strides3 ks, Strides3 vs, i64 ldo, i64 ldy, \
        float scale, int window, int early)                                                                     \
    {                                                                                                           \
        flash_decode_out<T, D>(q, k, v, starts, S, wo, bias, y, part, counters, H, KH, C, rows, qs, ks, vs, ldo, \
                               ldy, scale, window, early);                                                      \
    }
FLASH_DECODE_OUT(bf16, bf16, 64)
FLASH_DECODE_OUT(bf16, bf16, 128)
FLASH_DECODE_OUT(f16, f16, 64)
FLASH_DECODE_OUT(f16, f16, 128)

#define PAGED_PREFILL_Q(code, P) PAGED_PREFILL_Q_ONE(code, P, bf16, bf16, 64) PAGED_PREFILL_Q_ONE(code, P, bf16, bf16, 128) \
    PAGED_PREFILL_Q_ONE(code, P, f16, f16, 64) PAGED_PREFILL_Q_ONE(code, P, f16, f16, 128)
FOR_KV_CODES(PAGED_PREFILL_Q)
