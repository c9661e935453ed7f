// The training products on Hopper (sm_90a): C (M, N) = alpha op(A) op(B) + bias + beta C_in, A and B 16-bit, fp32
// accumulation, C in A's type, C_in C itself or an addend of its layout (the residual). Three layouts, an nn.Linear's three
// products: nt, the forward (A (M, K) the activations, B (N, K) the weight, both K-contiguous); nn, the input's gradient (A
// (M, K) the output's gradient, B (K, N) the weight: N-contiguous, "MN-major"); tn, the weight's gradient (A stored (K, M),
// the output's gradient, and B (K, N) the input: both MN-major). cuBLASLt runs these
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
// - A ring of ST stages, each A's tile (128 rows by 64 of K) and B's (BN by 64), in the 128-byte swizzle (hopper.cuh): a
//   K-major operand as one box of 128-byte rows of K, an MN-major one as boxes of 64 K rows by 64 of M (or N), one 8 KB
//   block per 64, which wgmma reads transposed (the descriptor's leading offset from one block to the next). Stage s has two transaction barriers: full[s] (the producer's one arrival announcing the stage's bytes;
//   complete when they have landed) and empty[s] (one arrival by each consumer warpgroup once its products that read the
//   stage are done). The k-tiles of every tile a CTA takes are numbered in one sequence i; k-tile i uses stage i % ST in
//   phase (i / ST) & 1, so the producer runs up to ST k-tiles ahead, across tile boundaries (the next tile's first stages
//   load while the consumers store this one).
// - A consumer issues k-tile i's four k16 products, commits them, then waits until at most one group is in flight: k-tile
//   i - 1's products are done, and it hands stage (i - 1) % ST back. After a tile's last k-tile it waits for all, hands
//   the last stage back, and stores its 64 rows: staged (C's rows 16-byte aligned), 64 columns at a time into one of two
//   swizzled 64 x 64 buffers of its own, each stored by the tensor memory accelerator while the warpgroup goes on (with
//   staged = 2, rounded to pairs in registers and stored a chunk after each of the next tile's first k-tiles is issued);
//   otherwise a lane's fragment pairs (hopper.cuh) straight to global memory as 32-bit stores.
// - Clusters of two (the _mc kernels): see the macro below.
// Boxes past M, N or K arrive as zeros (the tensor map's bounds), so partial tiles need no masks but the stores'.
#define GH_BM 128
#define GH_BK 64
#define GH_THREADS 384
#define GH_GROUP 8   // tiles of rows walked before the next tile of columns
// Lambdas inlined where called, as CUTLASS's device lambdas are: a chunk index known at compile time keeps a register array
// in registers (left a call, the compiler indexes it at run time, in local memory).
#define GH_INLINE __attribute__((always_inline))

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
__device__ __forceinline__ void gh_store_pair(T* row, const T* in, int n, int N, float s0, float s1, float alpha, const T* bias, float beta)
{
    if (n >= N) return;
    float v0 = alpha * s0, v1 = alpha * s1;
    if (bias) { v0 += to_f(bias[n]); if (n + 1 < N) v1 += to_f(bias[n + 1]); }
    if (beta != 0.f) { v0 += beta * to_f(in[n]); if (n + 1 < N) v1 += beta * to_f(in[n + 1]); }
    if (n + 1 < N) *reinterpret_cast<unsigned*>(row + n) = pack2<T>(v0, v1);
    else row[n] = from_f<T>(v0);
}

// The forms: GH_PLAIN, the product with the epilogue inputs above; GH_SWIGLU and GH_DSWIGLU, the Llama MLP's SwiGLU in the
// epilogue (staged stores, alpha 1, beta 0, no bias, 256 columns a tile).
// - GH_SWIGLU (the gate/up forward, nt): b is a stacked [Wg; Wu] (2N rows of K), a tile's BN accumulator columns are N's
//   BN / 2 outputs' gate sums then their up sums (B's tile as BN / 2 gate rows and the same outputs' up rows), and the
//   epilogue stores the gate and up values to gu (cmap: its first N columns; inmap: its last N) and SiLU(gate) * up, from
//   the rounded gate and up as SwiGluForward computes it, to omap.
// - GH_DSWIGLU (the down product's input gradient, nn): the tile's sums are dA (the gradient of SiLU(g) u) for BN of the N =
//   F outputs; the epilogue reads g and u (inmap: gu, 2F columns, in boxes of 64 rows by 32 columns in the 64-byte swizzle,
//   both into one epilogue buffer), forms dg and du from the rounded dA as SwiGluBackward does, in place, and stores them to
//   cmap (dgu's first F columns) and omap (its last F), 32 columns at a time.
#define GH_PLAIN 0
#define GH_SWIGLU 1
#define GH_DSWIGLU 2
template <typename T, int BN, int ST, int CL, bool TA, bool TB, int FORM = GH_PLAIN>
__device__ void gemm_hopper(const TensorMap* amap, const TensorMap* bmap, const TensorMap* cmap, const TensorMap* inmap, const TensorMap* omap,
                            const T* bias, T* c, const T* cin, int M, int N, int K, i64 ldc, float alpha, float beta, int staged)
{
    constexpr bool SW = FORM == GH_SWIGLU, DS = FORM == GH_DSWIGLU;
    static_assert(!SW || (!TA && !TB && BN == 256), "gemm_hopper: the SwiGLU form is the forward's layout at 256 columns");
    static_assert(!DS || (!TA && TB && BN == 256), "gemm_hopper: the SwiGLU gradient form is the input gradient's layout at 256 columns");
    constexpr int AT = GH_BM * GH_BK * 2, BT = BN * GH_BK * 2, STAGE = AT + BT;   // bytes; each a multiple of 1,024
    constexpr int EP = 64 * 64 * 2;                        // an epilogue buffer: 64 rows by 64 columns, two a consumer warpgroup
    extern __shared__ unsigned char gh_raw[];
    unsigned char* const raw = cta_dynamic_shared(gh_raw);
    const unsigned smem = (smem_u32(raw) + 1023u) & ~1023u;
    auto full = [&](int s) { return smem + ST * STAGE + 4 * EP + 8 * s; };
    auto empty = [&](int s) { return smem + ST * STAGE + 4 * EP + 8 * (ST + s); };
    // Staged with beta: C_in's 64 x 64 box loaded into epilogue buffer b of consumer warpgroup w completes on in_bar(w, b).
    auto in_bar = [&](int w, int b) { return smem + ST * STAGE + 4 * EP + 8 * (2 * ST + 2 * w + b); };
    const int tid = threadIdx.x, wg = tid / 128;
    const unsigned rank = CL > 1 ? cluster_rank() : 0u;
    // The walk is over units of CL row tiles by one column tile: a cluster's CTAs take the unit's row tiles in rank order.
    constexpr int OUT = SW ? BN / 2 : BN;                  // output columns a tile
    const int tiles_m = (M + GH_BM - 1) / GH_BM, tiles_n = (N + OUT - 1) / OUT, units_m = (tiles_m + CL - 1) / CL;
    const int units = units_m * tiles_n, first = blockIdx.x / CL, step = gridDim.x / CL;
    const int ktiles = (K + GH_BK - 1) / GH_BK;
    if (tid == 0)
    {
        for (int s = 0; s < ST; s++)
        {
            mbar_init(full(s), 1);
            mbar_init(empty(s), 2 * CL);                   // each consumer warpgroup of each CTA that reads the stage's B
        }
        for (int b = 0; b < 4; b++) mbar_init(in_bar(b / 2, b % 2), 1);
        mbar_fence_init();
    }
    if constexpr (CL > 1)
    {
        cluster_arrive();                                  // every CTA's barriers exist before any copy or arrival names them
        cluster_wait();
    }
    else __syncthreads();
    if (wg == 0)
    {
        warpgroup_registers_down<40>();
        if (tid == 0)
        {
            int i = 0;
            for (int u = first; u < units; u += step)
            {
                int um, tn;
                gh_tile(u, units_m, tiles_n, um, tn);
                const int tm = um * CL + rank;             // past M: its A box arrives as zeros and nothing is stored
                for (int kt = 0; kt < ktiles; kt++, i++)
                {
                    const int s = i % ST;
                    // Handed back by the consumers of every CTA this stage's B copy lands in (its first use passes at once).
                    mbar_wait(empty(s), ((i / ST) & 1) ^ 1);
                    mbar_arrive_expect_tx(full(s), STAGE);
                    const unsigned sa = smem + s * STAGE, sb = sa + AT + rank * (BT / CL);   // B: this CTA's share
                    if constexpr (!TA) tma_load_2d(sa, amap, kt * GH_BK, tm * GH_BM, full(s));
                    else
#pragma unroll
                        for (int h = 0; h < GH_BM / 64; h++) tma_load_2d(sa + h * 8192, amap, tm * GH_BM + 64 * h, kt * GH_BK, full(s));
                    // This CTA's share of B's BN columns (all of them alone), into every CTA of the cluster.
                    const int n0 = tn * BN + rank * (BN / CL);
                    constexpr unsigned short everyone = (unsigned short)((1u << CL) - 1);
                    if constexpr (SW)
                    {
                        // B's tile in two boxes of BN / 2 rows, the gate rows then the up rows of the same outputs (a
                        // cluster's CTA r copies box r); the host encodes b's map in boxes of BN / 2 rows.
#pragma unroll
                        for (int h = rank * 2 / CL; h < (int)(rank + 1) * 2 / CL; h++)
                        {
                            const unsigned dst = sa + AT + h * (BT / 2);
                            const int row = (h ? N : 0) + tn * OUT;
                            if constexpr (CL == 1) tma_load_2d(dst, bmap, kt * GH_BK, row, full(s));
                            else tma_load_2d_multicast(dst, bmap, kt * GH_BK, row, full(s), everyone);
                        }
                    }
                    else if constexpr (!TB)
                    {
                        if constexpr (CL == 1) tma_load_2d(sb, bmap, kt * GH_BK, n0, full(s));
                        else tma_load_2d_multicast(sb, bmap, kt * GH_BK, n0, full(s), everyone);
                    }
                    else
#pragma unroll
                        for (int h = 0; h < BN / CL / 64; h++)
                        {
                            if constexpr (CL == 1) tma_load_2d(sb + h * 8192, bmap, n0 + 64 * h, kt * GH_BK, full(s));
                            else tma_load_2d_multicast(sb + h * 8192, bmap, n0 + 64 * h, kt * GH_BK, full(s), everyone);
                        }
                }
            }
        }
    }
    else
    {
        warpgroup_registers_up<232>();
        const int w = wg - 1, lane = tid & 31, warp = (tid >> 5) & 3, g = lane >> 2, c4 = lane & 3;
        const bool leader = (tid & 127) == 0;
        auto hand_back = [&](int s) {
            if (!leader) return;
            if constexpr (CL == 1) mbar_arrive(empty(s));
            else
                for (int r = 0; r < CL; r++) mbar_arrive_cluster(empty(s), r);
        };
        const bool load_in = DS || (staged && beta != 0.f);   // C_in (or g and u) read through the epilogue buffers
        const unsigned ep = smem + ST * STAGE + w * 2 * EP;   // this warpgroup's two epilogue buffers
        unsigned in_phase = 0;                             // bit b: the phase of in_bar(w, b) to wait for next
        float acc[BN / 2];
        // Staged = 2 (the plain form without C_in): a tile's epilogue is deferred into the next tile's main loop. Its outputs,
        // alpha and the bias applied and rounded to T, wait in `packed` (a lane's pairs, BN / 4 registers), and chunk q goes to
        // shared memory and the tensor memory accelerator right after the next tile's k-tile q's products are issued, while
        // they run (those k-tiles unrolled, so no register of `packed` is live in the steady main loop); the last tile a CTA
        // takes stores as before.
        // The SwiGLU form likewise, its six chunks (gate, up, activation for each 64 outputs) from the rounded gate and up; and
        // the SwiGLU gradient form, its eight chunks of 32 columns from dA and the g and u loaded two chunks ahead, where a
        // tile has more k-tiles than chunks (the next tile's first two g and u loads, at its k-tile ktiles - 2, then come after
        // the pending tile's last chunk has been stored: with 8 k-tiles they would overwrite its g and u before it is read).
        constexpr int CHUNKS = SW ? 3 * (BN / 2 / 64) : DS ? BN / 32 : BN / 64;   // a tile's stores: 64 x 64 (DS: 64 x 32 twice)
        const bool overlap = staged == 2 && (DS ? ktiles > CHUNKS : !load_in);
        // C_in's columns 64 q .. of the rows mw .. of the tile at column n0 into buffer q & 1 (the leader, once no store still
        // reads it); GH_DSWIGLU: g's and u's columns 32 q .. (two 4 KB boxes) instead.
        auto load_in_chunk = [&](int q, int n0, int mw) {
            mbar_arrive_expect_tx(in_bar(w, q & 1), EP);
            if constexpr (DS)
            {
                tma_load_2d(ep + (q & 1) * EP, inmap, n0 + 32 * q, mw, in_bar(w, q & 1));
                tma_load_2d(ep + (q & 1) * EP + EP / 2, inmap, N + n0 + 32 * q, mw, in_bar(w, q & 1));
            }
            else tma_load_2d(ep + (q & 1) * EP, inmap, n0 + 64 * q, mw, in_bar(w, q & 1));
        };
        unsigned packed[BN / 4];
        bool pending = false;                              // packed holds a tile not yet stored
        int pn0 = 0, pmw = 0;                              // its first output column and this warpgroup's first row
        auto store_packed = [&](int e) GH_INLINE {         // chunk e (a compile-time constant where called) of the pending tile
            const unsigned buf = ep + (e & 1) * EP;
            if constexpr (DS)
            {
                // The buffer holds g's 64 x 32 box then u's: a thread reads the g and u of its dA pairs, writes dg and du over
                // them, and the leader stores both boxes, then loads chunk e + 2's g and u into the buffer once they have read it.
                mbar_wait(in_bar(w, e & 1), (in_phase >> (e & 1)) & 1u);
                in_phase ^= 1u << (e & 1);
#pragma unroll
                for (int jj = 0; jj < 4; jj++)
#pragma unroll
                    for (int r = 0; r < 2; r++)
                    {
                        const int j = 4 * e + jj, row = 16 * warp + g + 8 * r;
                        // columns 8 jj + 2 c4 (+ 1) of the box: bytes 16 jj + 4 c4 of its 64-byte row, in the 64-byte
                        // swizzle (16-byte chunk jj of row r at jj ^ ((r >> 1) & 3))
                        const unsigned at = buf + row * 64 + ((jj ^ ((row >> 1) & 3)) << 4) + c4 * 4;
                        const unsigned gate = lds_u32(at), up = lds_u32(at + EP / 2), d = packed[2 * j + r];   // d: dA as stored
                        float dg0, du0, dg1, du1;
                        swiglu_grad(unpack_lo<T>(d), unpack_lo<T>(gate), unpack_lo<T>(up), dg0, du0);
                        swiglu_grad(unpack_hi<T>(d), unpack_hi<T>(gate), unpack_hi<T>(up), dg1, du1);
                        sts_u32(at, pack2<T>(dg0, dg1));
                        sts_u32(at + EP / 2, pack2<T>(du0, du1));
                    }
                fence_async_shared();
                warpgroup_barrier(wg);
                if (leader)
                {
                    tma_store_2d(cmap, pn0 + 32 * e, pmw, buf);            // dg; clipped at F and M
                    tma_store_2d(omap, pn0 + 32 * e, pmw, buf + EP / 2);   // du
                    bulk_commit();
                    if (e + 2 < CHUNKS)
                    {
                        bulk_wait_read<0>();               // both stores have read this buffer: chunk e + 2's g and u go into it
                        load_in_chunk(e + 2, pn0, pmw);
                    }
                }
                return;
            }
            const int q = SW ? e / 3 : e, what = SW ? e % 3 : 0;   // SwiGLU: 64 outputs' gate, up or activation
            if (leader) bulk_wait_read<1>();               // the store that last read this buffer (two chunks ago) has read it
            warpgroup_barrier(wg);
#pragma unroll
            for (int jj = 0; jj < 8; jj++)
#pragma unroll
                for (int r = 0; r < 2; r++)
                {
                    const int row = 16 * warp + g + 8 * r;
                    unsigned v = packed[2 * (8 * q + jj) + r];
                    if constexpr (SW)
                    {
                        const unsigned up = packed[2 * (8 * q + jj + BN / 16) + r];
                        v = what == 0 ? v : what == 1 ? up
                            : pack2<T>(silu(unpack_lo<T>(v)) * unpack_lo<T>(up), silu(unpack_hi<T>(v)) * unpack_hi<T>(up));
                    }
                    sts_u32(buf + row * 128 + ((jj ^ (row & 7)) << 4) + c4 * 4, v);
                }
            fence_async_shared();
            warpgroup_barrier(wg);
            if (leader)
            {
                tma_store_2d(what == 0 ? cmap : what == 1 ? inmap : omap, pn0 + 64 * q, pmw, buf);
                bulk_commit();
            }
        };
        int i = 0;
        for (int u = first; u < units; u += step)
        {
            int um, tn;
            gh_tile(u, units_m, tiles_n, um, tn);
            const int tm = um * CL + rank;
            const int n0 = tn * BN, mw = tm * GH_BM + 64 * w;   // this warpgroup's rows: mw ..
            // K-tile kt's products issued once its stage has landed; then retired: k-tile i - 1's products are done and its
            // stage goes back (with C_in, the first two chunks' loads go under the last k-tiles).
            auto issue = [&](int kt) GH_INLINE {
                const int s = i % ST;
                mbar_wait(full(s), (i / ST) & 1);
                const unsigned sa = smem + s * STAGE;
                // K-major: this warpgroup's 64 rows from row 64 w, a k16 step 32 bytes along the rows; MN-major: its 8 KB block
                // w, blocks 8 KB apart, a k16 step 16 rows of 128 bytes down.
                const u64 ad = TA ? sw128_descriptor(sa + w * 8192, 8192, 1024) : sw128_descriptor(sa + w * 64 * 128, 16, 1024);
                const u64 bd = TB ? sw128_descriptor(sa + AT, 8192, 1024) : sw128_descriptor(sa + AT, 16, 1024);
                constexpr unsigned astep = TA ? 2048 : 32, bstep = TB ? 2048 : 32;
                wgmma_fence();
#pragma unroll
                for (int kk = 0; kk < GH_BK / 16; kk++)
                    WgmmaSs<T, BN>::template run<TA, TB>(acc, desc_plus(ad, kk * astep), desc_plus(bd, kk * bstep), kt > 0 || kk > 0);
                wgmma_commit();
            };
            auto retire = [&](int kt) GH_INLINE {
                wgmma_wait<1>();                           // k-tile i - 1's products are done: its stage goes back
                if (kt > 0) hand_back((i - 1) % ST);
                if (load_in && leader && kt == (ktiles > 1 ? ktiles - 2 : 0))
                {
                    bulk_wait_read<0>();                   // the last tile's stores have read both buffers
                    load_in_chunk(0, n0, mw);              // the first two chunks' C_in load under the last k-tiles
                    load_in_chunk(1, n0, mw);
                }
                i++;
            };
            int kt = 0;
            if (pending)
            {
                // The last tile's chunks, chunk e right after k-tile e's products are issued, while they run (unrolled, so
                // each chunk's registers are named at compile time and free once it is stored); those past this tile's
                // k-tiles after them.
#pragma unroll
                for (int e = 0; e < CHUNKS; e++)
                {
                    const bool mma = e < ktiles;
                    if (mma) issue(e);
                    store_packed(e);
                    if (mma) retire(e);
                }
                kt = min(ktiles, CHUNKS);
                pending = false;
            }
            for (; kt < ktiles; kt++)
            {
                issue(kt);
                retire(kt);
            }
            wgmma_wait<0>();
            fence_registers<BN / 2>(acc);
            hand_back((i - 1) % ST);
            // The epilogues that store rounded pairs (the SwiGLU forms; a plain product staged without C_in): the outputs,
            // alpha and the bias applied, packed to T's pairs, then stored a chunk at a time through the two buffers in turn
            // (store_packed), now or, with a tile to follow under the overlap, during its first k-tiles.
            if (SW || DS || (FORM == GH_PLAIN && staged && !load_in))
            {
#pragma unroll
                for (int j = 0; j < BN / 8; j++)
#pragma unroll
                    for (int r = 0; r < 2; r++)
                    {
                        const int n = n0 + 8 * j + 2 * c4;
                        float v0 = alpha * acc[4 * j + 2 * r], v1 = alpha * acc[4 * j + 2 * r + 1];
                        if (bias)
                        {
                            if (n < N) v0 += to_f(bias[n]);
                            if (n + 1 < N) v1 += to_f(bias[n + 1]);
                        }
                        packed[2 * j + r] = pack2<T>(v0, v1);
                    }
                fence_registers<BN / 4>(packed);           // packed from the accumulators before the next tile's products
                pn0 = SW ? tn * OUT : n0;
                pmw = mw;
                if (overlap && u + step < units)           // a tile follows: this one's outputs wait in registers
                {
                    pending = true;
                    continue;
                }
#pragma unroll
                for (int e = 0; e < CHUNKS; e++) store_packed(e);
            }
            else if (staged)
            {
                // With beta: C_in's 64 x 64 boxes (loaded by the tensor memory accelerator two chunks ahead, the first two
                // under the last k-tiles) in the two buffers in turn; each thread reads C_in at the addresses it then writes
                // with alpha sum + bias + beta C_in, and the leader stores the chunk.
#pragma unroll
                for (int q = 0; q < BN / 64; q++)
                {
                    const unsigned buf = ep + (q & 1) * EP;
                    mbar_wait(in_bar(w, q & 1), (in_phase >> (q & 1)) & 1u);
                    in_phase ^= 1u << (q & 1);
#pragma unroll
                    for (int jj = 0; jj < 8; jj++)
#pragma unroll
                        for (int r = 0; r < 2; r++)
                        {
                            const int j = 8 * q + jj, row = 16 * warp + g + 8 * r, n = n0 + 8 * j + 2 * c4;
                            float v0 = alpha * acc[4 * j + 2 * r], v1 = alpha * acc[4 * j + 2 * r + 1];
                            if (bias)
                            {
                                if (n < N) v0 += to_f(bias[n]);
                                if (n + 1 < N) v1 += to_f(bias[n + 1]);
                            }
                            // columns 8 jj + 2 c4 (+ 1) of the chunk: bytes 16 jj + 4 c4 of the row, chunk jj swizzled by the row
                            const unsigned at = buf + row * 128 + ((jj ^ (row & 7)) << 4) + c4 * 4;
                            const unsigned old = lds_u32(at);   // zeros past M and N (the box's fill)
                            v0 += beta * unpack_lo<T>(old);
                            v1 += beta * unpack_hi<T>(old);
                            sts_u32(at, pack2<T>(v0, v1));
                        }
                    fence_async_shared();                  // the buffer's writes become visible to the tensor memory accelerator
                    warpgroup_barrier(wg);
                    if (leader)
                    {
                        tma_store_2d(cmap, n0 + 64 * q, mw, buf);   // rows past M and columns past N are not written
                        bulk_commit();
                        if (q + 2 < BN / 64)
                        {
                            bulk_wait_read<0>();           // the store has read this buffer: chunk q + 2's C_in goes into it
                            load_in_chunk(q + 2, n0, mw);
                        }
                    }
                }
            }
            else
            {
                // A lane's fragment pairs straight to global memory.
#pragma unroll
                for (int r = 0; r < 2; r++)
                {
                    const int m = mw + 16 * warp + g + 8 * r;
                    if (m >= M) continue;
                    T* const row = c + (i64)m * ldc;
                    const T* const in = cin + (i64)m * ldc;
#pragma unroll
                    for (int j = 0; j < BN / 8; j++)
                        gh_store_pair(row, in, n0 + 8 * j + 2 * c4, N, acc[4 * j + 2 * r], acc[4 * j + 2 * r + 1], alpha, bias, beta);
                }
            }
            // No tile is pending here, so `packed` is written (values never read) to end its registers' life: the next tile's
            // read of them under `if (pending)` would otherwise keep them live from their last write through every main loop
            // and the C_in epilogue, 64 registers beside the 128 accumulators (NVRTC 12.4's assembler spilled in the C_in
            // epilogue of the 256-column plain kernels).
#pragma unroll
            for (int p = 0; p < BN / 4; p++) packed[p] = 0u;
        }
        if ((staged || DS) && leader) bulk_wait<0>();              // the last stores are done before the CTA (their source) goes
    }
    if constexpr (CL > 1)
    {
        cluster_arrive();                                  // no CTA leaves while a peer may still copy into it or arrive on it
        cluster_wait();
    }
}

// The kernels gemm_hopper_{nt,nn,tn}[_mc]_{bf16,f16}_n{256,128}. Tensor maps, all in the 128-byte swizzle: a as stored, (M
// rows of K) in boxes of 128 rows by 64 columns (nt, nn) or (K rows of M) in boxes of 64 by 64 (tn); b as stored, (N rows of K)
// in boxes of BN / CL rows by 64 (nt) or (K rows of N) in boxes of 64 by 64 (nn, tn); c (M rows of N) in boxes of 64 rows by
// 64 columns and inmap C_in likewise (read only when staged is nonzero; C_in's only with beta; staged = 2 defers each tile's
// stores into the next tile's main loop: the plain form without C_in, the SwiGLU forms). The _mc kernels run in thread-block clusters of 2 CTAs along x (the host
// launches them so, gridDim.x even): the pair's CTAs take two adjacent row tiles of one column tile, and each copies half of
// B's tile into both (multicast), so each B tile crosses from L2 once for two CTAs (each k-tile's L2 traffic 32 KB a CTA
// instead of 48 at 256 columns).
#define GEMM_HOPPER(layout, TA, TB, name, t, BN, ST, CL, tag, FORM)                                                       \
    extern "C" __global__ void __launch_bounds__(GH_THREADS, 1) gemm_hopper_##layout##tag##_##name##_n##BN(               \
        const __grid_constant__ TensorMap amap, const __grid_constant__ TensorMap bmap,                                   \
        const __grid_constant__ TensorMap cmap, const __grid_constant__ TensorMap inmap,                                  \
        const __grid_constant__ TensorMap omap, const t* bias, t* c, const t* cin, int M, int N, int K, i64 ldc,          \
        float alpha, float beta, int staged)                                                                              \
    {                                                                                                                     \
        gemm_hopper<t, BN, ST, CL, TA, TB, FORM>(&amap, &bmap, &cmap, &inmap, &omap, bias, c, cin, M, N, K, ldc, alpha,    \
                                               beta, staged);                                                             \
    }
#define GEMM_HOPPER_LAYOUT(layout, TA, TB, name, t)                                                                       \
    GEMM_HOPPER(layout, TA, TB, name, t, 256, 4, 1, , GH_PLAIN) GEMM_HOPPER(layout, TA, TB, name, t, 256, 4, 2, _mc, GH_PLAIN) \
    GEMM_HOPPER(layout, TA, TB, name, t, 128, 6, 1, , GH_PLAIN) GEMM_HOPPER(layout, TA, TB, name, t, 128, 6, 2, _mc, GH_PLAIN)
GEMM_HOPPER_LAYOUT(nt, false, false, bf16, bf16) GEMM_HOPPER_LAYOUT(nn, false, true, bf16, bf16) GEMM_HOPPER_LAYOUT(tn, true, true, bf16, bf16)
GEMM_HOPPER_LAYOUT(nt, false, false, f16, f16) GEMM_HOPPER_LAYOUT(nn, false, true, f16, f16) GEMM_HOPPER_LAYOUT(tn, true, true, f16, f16)
// The SwiGLU form: gemm_hopper_swiglu[_mc]_{bf16,f16}_n256 (N = F, the outputs; b = [Wg; Wu] in boxes of 128 rows; cmap and inmap
// gu's two halves, omap the activation, each (M rows of F) in boxes of 64 by 64).
GEMM_HOPPER(swiglu, false, false, bf16, bf16, 256, 4, 1, , GH_SWIGLU) GEMM_HOPPER(swiglu, false, false, bf16, bf16, 256, 4, 2, _mc, GH_SWIGLU)
GEMM_HOPPER(swiglu, false, false, f16, f16, 256, 4, 1, , GH_SWIGLU) GEMM_HOPPER(swiglu, false, false, f16, f16, 256, 4, 2, _mc, GH_SWIGLU)
// The SwiGLU gradient form: gemm_hopper_dswiglu[_mc]_{bf16,f16}_n256 (a = dy (M rows of C) and b = the down weight (C rows of
// F) as the nn layout's; N = F; inmap gu (M rows of 2F) and cmap and omap dgu's two halves (M rows of F each), all in boxes
// of 64 rows by 32 columns in the 64-byte swizzle).
GEMM_HOPPER(dswiglu, false, true, bf16, bf16, 256, 4, 1, , GH_DSWIGLU) GEMM_HOPPER(dswiglu, false, true, bf16, bf16, 256, 4, 2, _mc, GH_DSWIGLU)
GEMM_HOPPER(dswiglu, false, true, f16, f16, 256, 4, 1, , GH_DSWIGLU) GEMM_HOPPER(dswiglu, false, true, f16, f16, 256, 4, 2, _mc, GH_DSWIGLU)
