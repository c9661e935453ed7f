// Decode-size products (the template and its helpers; decode_gemm.cu instantiates it, moe.cu its experts' form):
// y (M, N) = alpha * x (M, K) W^T + bias + beta * y, with M <= 8 * MT rows of x (a decode step's
// batch: 5 to 64), W (N, K) row-major (nn.Linear's layout), bf16 or f16, fp32 accumulation. At such M a product reads W
// once and its time is W's bytes plus a kernel's start-up and tail, which no standalone kernel hides (session 20: cuBLASLt
// and a hand-written Triton kernel both need 9-11 us for 8-13 MB). This kernel is launched dependent on its predecessor and
// issues its first stages of W before waiting on it (W is never the predecessor's output; the host passes early = 0 when
// it may be, e.g. after an optimizer step), so its DRAM traffic starts while the predecessor finishes, as gemv.cu's
// matrix-vector kernels do at 1-4 rows. Measured (session 21, docs/benchmarks.md): about twice cuBLASLt's time at a 64-row
// decode step of llama-1b; compute capability 9.0 runs decode_gemm_hopper.cu (wgmma) instead, the same contract.
//
// A CTA of 4 warps owns DG_BN = 128 rows of W (warp w: rows 32w .. 32w + 31, two m16 tiles) and slice blockIdx.x of
// gridDim.x slices of K (ks = K / slices columns, a multiple of DG_BK); blockIdx.y is the row block. Per k-tile of DG_BK =
// 64 columns it stages W's 128 rows, x's 8 MT rows and, with a norm, the norm weight's 64 columns in shared memory
// (cp.async, DG_ST stages, 16-byte chunks swizzled as flash_attention.cu's tiles: chunk c of row r at c ^ (r & 7)), then
// each warp runs mma.sync m16n8k16 with W as the A operand and x as B (n8 tiles of x's rows): one ldmatrix.x4 gives an
// m16 tile of W (its matrices reordered: rows 0-7 / 8-15 by k 0-7 / 8-15) and one per two n8 tiles gives x's, which
// serve both of the warp's W tiles (session 21: a warp of one W tile read x from shared memory four times per W byte, and
// four warps of 64 W rows left the SMs idle 43 % of the time). acc[h][j] holds W row (32w + 16h + g, + 8) by x rows
// (8j + 2c, + 1).
// One slice: the epilogue writes y from the registers. Several: the slices of a row block are one thread-block cluster
// (gridDim.x CTAs along x); each CTA leaves its fp32 tile in its shared memory, and after the cluster barrier each sums a
// share of the outputs over every CTA's tile, in slice order (the same bits whatever the order in which the CTAs finish),
// through distributed shared memory, and writes y: no partials in global memory, no counters, no last CTA doing all of it
// (session 21: the last-CTA merge of 8 slices left a 30 us serial tail).
// SWIGLU (a decode step's gate/up pair, y (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu), N = F outputs, alpha 1, beta 0): a
// row block is 64 outputs, and each m16 tile of a warp is the gate rows (g) and the up rows (g + 8) of 8 outputs:
// outputs 64 b + 8 (2w + h) + g, so a lane holds both halves of an output in registers; the cluster's tiles keep gate
// and up 64 columns apart. SiLU as elementwise.cu's, on the fp32 sums (no rounding of gate and up to 16 bits between).
// nw (RMSNorm's weight, K) given: x is RMS-normalized on the way, without a pass of its own. x's fragments are scaled by
// nw's (staged with x) in registers, as the norm kernel rounds x * w (one correctly rounded 16-bit multiply: the product
// of two 16-bit floats is exact in fp32), while warp w sums the squares of x's rows of its n8 tiles (w, w + 4); the
// products then carry 1 / rms, applied to the fp32 sums: rsqrt(sum of squares / K + eps) from the CTA's own sums with one
// slice, or, with several, from every slice's sums, read across the cluster. Not the norm kernel's bits (it rounds
// x * rstd * w once; here x * w is rounded and rstd applied to the sum): within the dtype's tolerance.
// Int8 weights (Wt = signed char; CudaBackend.QuantizedMatMul's form, and QuantizedMatMulSwiGlu's): W (N, K) holds int8 values whose
// row n stands for scales[n] * W[n, .]. The stages hold them at one byte (a W tile of 128 rows by 64 columns is 8 KB, not
// 16; the same cp.async 16-byte copies, four chunks a row, unswizzled: a quarter-warp's 16-byte reads below cover two whole
// 64-byte rows, no bank conflicts), and each warp turns its rows into T fragments in registers once per k-tile; x's
// fragments, read from the same bf16/f16 stage, then serve both W tiles as before. Why registers and not a converted shared
// tile that ldmatrix reads: a converted tile is a second pass through shared memory (a write and a barrier per k-tile) for
// bytes each warp reads once, while the registers need no extra traffic, provided each lane can fetch its own weights
// whole. ldmatrix cannot give them (its lane c gets k 2c, 2c + 1 of each 8-column chunk: two bytes of every eight of an
// int8 row), so the product's k is permuted, the same way on both operands: mma.sync pairs A's and B's k by the lane's c
// (A a0 / a2 and B b0 / b1 are k 2c.. and 2c + 8.. of the same lane), so any bijection of k per c is the same sum. Lane c
// takes columns 16c .. 16c + 15 of the k-tile: one 16-byte read a W row (4 words, step kk's word kk: k 16c + 4kk + 0..3,
// the low pair as a0 / a1, the high pair as a2 / a3) and two 16-byte reads of x's row per n8 tile (the same columns,
// b0 / b1 the pairs 16c + 4kk + 0..1 / 2..3) in place of the ldmatrix calls. The int8 values become T exactly (at most 8
// significant bits; see q8_pairs), the sums are fp32 over the int8 values, and the epilogue multiplies each sum by its row's
// scale: y[m, n] = scales[n] * sum + bias[n] + beta * c_in[m, n], c_in being y (beta 0 or 1) or an addend of y's shape.
// With a norm, x's fragments are scaled by its weight in registers as the 16-bit form's (norm_x_columns, shared by the int8,
// int4 and int4-by-group-sums tiles; session 33, before which the host normalized x into scratch for them).
// Group-wise int4 weights (Wt = unsigned, packed words; CudaBackend.QuantizedMatMul over QuantizedWeight.Int4): packed (N, K / 8) u32, column 8w + j of a row in bits 4j .. 4j + 3 of its word w, scales (N, G) fp32 and zeros
// (N, G) int8, w = scale (q - zero) over groups of `group` columns (a multiple of 16). The stages hold the words (a W tile of
// 128 rows by 64 columns is 4 KB; two 16-byte chunks a row, unswizzled), and each lane takes the int8 form's columns 16c ..
// 16c + 15 of the k-tile: one 8-byte read a W row (two words; step kk's four columns are nibbles 4 (kk & 1) .. + 3 of word
// kk / 2), which lie in one group. Each nibble becomes q - zero exactly in fp32 (the nibble in the low mantissa bits of 2^23,
// minus 2^23 + zero), times its group's scale (read from global memory per k-tile, cached: a lane's four rows' scale and
// zero), rounded once to T: the same weight bits as dequantize_int4_* then the 16-bit product, so the sums are fp32 over
// T's weights, and the epilogue adds the bias and beta * c_in as the int8 form does (no scale left to apply).
// The int4 form by group sums (GS; groups a multiple of the 64-column k-tile, so one k-tile lies in one group for every lane,
// as GPTQ's and AWQ's usual 128 and per-channel groups do; CudaBackendOptions.Int4DecodeProductGroupSums): the form above
// spends most of its instructions turning nibbles into scaled 16-bit weights in fp32 (about five a weight) and, worse, reads
// each k-tile's scales and zeros from global memory right before it multiplies (a memory latency a k-tile on the critical
// path). Here the scales and the zeros' words ride in the stage with the weights (cp.async, DG_ST - 1 tiles ahead), and the
// weight fed to the tensor cores is q - zero itself, exact in T: two adjacent nibbles (a byte of a word) placed in the low
// mantissa bits of a pair of T whose exponent makes them 128 + q (bf16) or 1024 + q (f16), one byte permute of the word and
// of the word shifted by 4 (shared by its four bytes) and one and-or, then one paired fma subtracting 128 + zero (1024 +
// zero): three instructions a pair. Each k-tile's products (one group) go into fp32 sums of their own, which the group's
// scale multiplies into the row's sums: y = sum_g scale_g sum_k (q - zero) x, the weights' exact values (not rounded to T as
// the form above rounds them), so the result differs from the dequantized product's in the last bits of T. Lane c4's
// columns are the same 16 (two words); step kk takes bytes 2 (kk & 1) and + 1 of word kk / 2, the int8 form's k order, so
// x's B fragments are its staged pairs as they are (mma_x_columns' order). (Session 32's first form paired nibbles i and
// i + 4 of a word, one shift and an and-or, and permuted x's pairs to match: two byte permutes an n8 tile of x a step, 64
// instructions a k-tile at 64 rows against the 8 shifts here.)
#define DG_THREADS 128
#define DG_BN 128
#define DG_BK 64
#define DG_ST 4
#define DG_RS (DG_BN + 4)   // floats a row of the cluster's fp32 tiles (x row m, W row n at m * DG_RS + n): no bank conflicts

// Four int8 weights (one word, k ascending from its low byte) as two words of T pairs, exactly: lo (bytes 0, 1), hi (2, 3).
// bf16 through fp32 as gemv.cu's unpack16 (the sign-flipped byte in 2^23's low mantissa bits, 2^23 + 128 subtracted), the
// top half of each float being its bf16 exactly; f16 in its own mantissa: the byte b = q + 128 under 1024's exponent is
// 1024 + b, and 1152 subtracted (sub.f16x2) leaves q: a byte permute and a subtraction a pair.
template <typename T> __device__ __forceinline__ void q8_pairs(unsigned q, unsigned& lo, unsigned& hi);
template <> __device__ __forceinline__ void q8_pairs<bf16>(unsigned q, unsigned& lo, unsigned& hi)
{
    const unsigned b = q ^ 0x80808080u;
    unsigned f[4];
#pragma unroll
    for (int i = 0; i < 4; i++) f[i] = __float_as_uint(__uint_as_float(0x4B000000u | ((b >> (8 * i)) & 0xFFu)) - 8388736.f);
    lo = (f[0] >> 16) | (f[1] & 0xFFFF0000u);
    hi = (f[2] >> 16) | (f[3] & 0xFFFF0000u);
}
template <> __device__ __forceinline__ void q8_pairs<f16>(unsigned q, unsigned& lo, unsigned& hi)
{
    lo = hi = 0;   // none on the emulation (its f16 arithmetic is PTX)
#ifdef __CUDA_ARCH__
    const unsigned b = q ^ 0x80808080u;
    unsigned l, h;
    asm("prmt.b32 %0, %1, %2, 0x4140;" : "=r"(l) : "r"(b), "r"(0x64646464u));   // 0x64 b1 0x64 b0: 1024 + b0, 1024 + b1
    asm("prmt.b32 %0, %1, %2, 0x4342;" : "=r"(h) : "r"(b), "r"(0x64646464u));
    asm("sub.f16x2 %0, %1, %2;" : "=r"(lo) : "r"(l), "r"(0x64806480u));
    asm("sub.f16x2 %0, %1, %2;" : "=r"(hi) : "r"(h), "r"(0x64806480u));
#endif
}

// Lane c4's 16 columns of a k-tile (16 c4 .. 16 c4 + 15, the int8 and int4 forms' share) of x's staged row r: its 16-byte
// chunks 2 c4 and 2 c4 + 1, swizzled as load_tile_sw128 stores them (b[0]: columns 16 c4 .. + 7, b[1]: + 8 .. + 15).
__device__ __forceinline__ void lds_x_columns(unsigned tX, int r, int c4, unsigned (&b)[2][4])
{
    lds_u32x4(tX + r * DG_BK * 2 + (((2 * c4) ^ (r & 7)) << 4), b[0]);
    lds_u32x4(tX + r * DG_BK * 2 + (((2 * c4 + 1) ^ (r & 7)) << 4), b[1]);
}

// The same 16 columns of the int4 tile's row r (packed words, 32 bytes a row): two words.
__device__ __forceinline__ void lds_q4_words(unsigned tW, int r, int c4, unsigned (&q)[2])
{
    const unsigned row = tW + r * (DG_BK / 2) + c4 * 8;
    q[0] = lds_u32(row);
    q[1] = lds_u32(row + 4);
}

// With a norm (nw): lane c4's 16 staged columns b of x's row 8 j + g scaled by the norm weight's (tN, its 64 columns of the
// k-tile), each pair rounded once as the norm kernel rounds x * w, and, in warp j % WARPS, their squares added into
// sq[j / WARPS] first (the row's sum of squares, for 1 / rms on the sums).
template <typename T, int WARPS, int SQ>
__device__ __forceinline__ void norm_x_columns(unsigned (&b)[2][4], unsigned tN, int c4, int j, int warp, float (&sq)[SQ])
{
    unsigned wn[2][4];                                     // the norm weight's columns 16 c4 .. 16 c4 + 15 of the tile
    lds_u32x4(tN + c4 * 32, wn[0]);
    lds_u32x4(tN + c4 * 32 + 16, wn[1]);
    const bool mine = j % WARPS == warp;
    float s2 = 0.f;
#pragma unroll
    for (int q = 0; q < 2; q++)
#pragma unroll
        for (int i = 0; i < 4; i++)
        {
            if (mine) s2 += sumsq2<T>(b[q][i]);
            b[q][i] = mul2_rn<T>(b[q][i], wn[q][i]);
        }
    if (mine) sq[j / WARPS] += s2;
}

// acc[h][j] += the warp's two m16 tiles of W (a[h][kk], in the int8 and int4 forms' k order: lane c4's 16 columns) times
// each n8 tile j of x's staged rows, read in the same order (lds_x_columns: b0 / b1 of step kk the pairs 4 (kk & 1) .. of
// chunk kk / 2), normalized on the way when nw (norm_x_columns).
template <typename T, int MT, int WARPS, int SQ>
__device__ __forceinline__ void mma_x_columns(float (&acc)[2][MT][4], const unsigned (&a)[2][DG_BK / 16][4], unsigned tX, int g, int c4,
                                              bool nw, unsigned tN, int warp, float (&sq)[SQ])
{
#pragma unroll
    for (int j = 0; j < MT; j++)
    {
        unsigned b[2][4];
        lds_x_columns(tX, 8 * j + g, c4, b);
        if (nw) norm_x_columns<T, WARPS, SQ>(b, tN, c4, j, warp, sq);
#pragma unroll
        for (int kk = 0; kk < DG_BK / 16; kk++)
#pragma unroll
            for (int h = 0; h < 2; h++) Mma<T>::run(acc[h][j], a[h][kk], b[kk >> 1][2 * (kk & 1)], b[kk >> 1][2 * (kk & 1) + 1]);
    }
}

// Four int4 weights (nibbles 0 .. 3 of `word`, k ascending) as two words of T pairs: scale (q - zero) rounded to T, zb being
// 2^23 + zero (see the file's comment).
template <typename T>
__device__ __forceinline__ void q4_pairs(unsigned word, float scale, float zb, unsigned& lo, unsigned& hi)
{
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; j++) v[j] = scale * (__uint_as_float(0x4B000000u | ((word >> (4 * j)) & 0xFu)) - zb);
    lo = (unsigned)from_f<T>(v[0]).x | ((unsigned)from_f<T>(v[1]).x << 16);
    hi = (unsigned)from_f<T>(v[2]).x | ((unsigned)from_f<T>(v[3]).x << 16);
}

// One k-tile of the int4 form (see the file's comment): warp rows tW (32 rows of 8 packed words, 32 bytes apart), the
// lane's rows' scales sc[h][half] and 2^23 + zero zb[h][half], x's stage tX as the int8 form's.
template <typename T, int MT, int WARPS, int SQ>
__device__ __forceinline__ void decode_tile_q4(float (&acc)[2][MT][4], unsigned tW, unsigned tX, int g, int c4,
                                               const float (&sc)[2][2], const float (&zb)[2][2], bool nw, unsigned tN, int warp,
                                               float (&sq)[SQ])
{
    unsigned a[2][DG_BK / 16][4];                          // [h][kk]: W rows 16h + g (a0, a2) and + 8 (a1, a3)
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            unsigned q[2];
            lds_q4_words(tW, 16 * h + 8 * half + g, c4, q);
#pragma unroll
            for (int kk = 0; kk < DG_BK / 16; kk++)
                q4_pairs<T>(q[kk >> 1] >> (16 * (kk & 1)), sc[h][half], zb[h][half], a[h][kk][half], a[h][kk][2 + half]);
        }
    mma_x_columns<T, MT, WARPS, SQ>(acc, a, tX, g, c4, nw, tN, warp, sq);
}

// Nibbles 2b and 2b + 1 of `word` (its byte b, k ascending), with w4 = word >> 4, as the low four bits of a pair's two 16-bit
// halves: (q_2b, q_2b+1), one byte permute (byte b of word and of w4) and the mask; the pair's columns are adjacent, as x's
// staged pairs are.
__device__ __forceinline__ unsigned q4_byte_pair(unsigned word, unsigned w4, int b)
{
    const unsigned select = (unsigned)(b | (b << 4) | ((4 + b) << 8) | ((4 + b) << 12));   // bytes b, b of word; b, b of w4
#ifdef __CUDA_ARCH__
    unsigned pair;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(pair) : "r"(word), "r"(w4), "r"(select));
    return pair & 0x000F000Fu;
#else
    return __byte_perm(word, w4, select) & 0x000F000Fu;   // the emulation's prmt
#endif
}

// A pair of nibbles (q4_byte_pair) as (128 + q, ..) in T's bit pattern (bf16: exponent of 128, 7 mantissa bits; f16: of
// 1024, 10), minus the pair (128 + zero, ..) given as its negation nz: (q - zero, q' - zero), exact.
template <typename T> __device__ __forceinline__ unsigned q4_exact_pair(unsigned pair, unsigned nz);
template <> __device__ __forceinline__ unsigned q4_exact_pair<bf16>(unsigned pair, unsigned nz)
{
    const unsigned biased = pair | 0x43004300u;
#ifdef __CUDA_ARCH__
    unsigned r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(biased), "r"(0x3F803F80u), "r"(nz));
    return r;
#else
    auto bf = [](unsigned short b) { return __uint_as_float((unsigned)b << 16); };
    const float lo = bf((unsigned short)biased) + bf((unsigned short)nz), hi = bf((unsigned short)(biased >> 16)) + bf((unsigned short)(nz >> 16));
    return (__float_as_uint(lo) >> 16) | (__float_as_uint(hi) & 0xFFFF0000u);   // small integers: exact in bf16
#endif
}
template <> __device__ __forceinline__ unsigned q4_exact_pair<f16>(unsigned pair, unsigned nz)
{
    unsigned r = 0;   // none on the emulation (its f16 arithmetic is PTX)
#ifdef __CUDA_ARCH__
    const unsigned biased = pair | 0x64006400u;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(biased), "r"(0x3C003C00u), "r"(nz));
#endif
    return r;
}
// The negated pair (128 + zero) (bf16) or (1024 + zero) (f16), both halves, for q4_exact_pair.
template <typename T> __device__ __forceinline__ unsigned q4_negated_zero(unsigned zero);
template <> __device__ __forceinline__ unsigned q4_negated_zero<bf16>(unsigned zero) { return (0xC300u | zero) * 0x10001u; }
template <> __device__ __forceinline__ unsigned q4_negated_zero<f16>(unsigned zero) { return (0xE400u | zero) * 0x10001u; }

// One k-tile of the int4 form by group sums (see the file's comment): warp rows tW as decode_tile_q4's, nz[h][half] the
// negated zero pairs of the lane's four rows and sc[h][half] their scales (the tile lies in one group). Each n8 tile of x
// sums the k-tile's products in registers of its own (8), which the scales then multiply into acc: no accumulators a group
// (session 32's first form kept MT x 8 of them, twice acc's registers at 64 rows of x; the scaling now costs 8 fmas a tile
// of x every k-tile rather than every group).
// A warp takes HT m16 tiles of W rows (two; see decode_gemm's WARPS). With nw, x's staged values are scaled by the norm weight's (tN,
// its 64 columns), and warp w of WARPS adds the squares of x's rows of n8 tiles w, w + WARPS, .. (its 16
// columns a tile) into sq, as the 16-bit form does.
// JB n8 tiles of x at once (CudaBackendOptions.Int4DecodeProductXTiles): their fragments and sums held together and the
// steps kk taken across all of them, so that 2 JB mma chains (of DG_BK / 16 dependent steps each) are in flight rather
// than 2 (session 36, ncu on the H100 at 64 rows: one or two warps a scheduler, stalled mostly on fixed-latency
// dependencies between the mma steps of a tile's sums); 8 + 4 JB more registers.
template <typename T, int MT, int HT, int WARPS, int SQ, int JB = 1>
__device__ __forceinline__ void decode_tile_q4_exact(float (&acc)[HT][MT][4], unsigned tW, unsigned tX, int g, int c4,
                                                     const unsigned (&nz)[HT][2], const float (&sc)[HT][2], bool nw, unsigned tN,
                                                     int warp, float (&sq)[SQ])
{
    static_assert(MT % JB == 0, "decode_tile_q4_exact: x's n8 tiles in blocks of JB");
    unsigned a[HT][DG_BK / 16][4];                         // [h][kk]: W rows 16h + g (a0, a2) and + 8 (a1, a3)
#pragma unroll
    for (int h = 0; h < HT; h++)
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            unsigned q[2];
            lds_q4_words(tW, 16 * h + 8 * half + g, c4, q);
            const unsigned q4[2] = {q[0] >> 4, q[1] >> 4};
#pragma unroll
            for (int kk = 0; kk < DG_BK / 16; kk++)
            {
                // Step kk: columns 4 (kk & 1) .. + 3 of word kk / 2, bytes 2 (kk & 1) (a0 / a1) and + 1 (a2 / a3).
                a[h][kk][half] = q4_exact_pair<T>(q4_byte_pair(q[kk >> 1], q4[kk >> 1], 2 * (kk & 1)), nz[h][half]);
                a[h][kk][2 + half] = q4_exact_pair<T>(q4_byte_pair(q[kk >> 1], q4[kk >> 1], 2 * (kk & 1) + 1), nz[h][half]);
            }
        }
#pragma unroll
    for (int j0 = 0; j0 < MT; j0 += JB)
    {
        unsigned b[JB][2][4];
#pragma unroll
        for (int jb = 0; jb < JB; jb++)
        {
            lds_x_columns(tX, 8 * (j0 + jb) + g, c4, b[jb]);
            if (nw) norm_x_columns<T, WARPS, SQ>(b[jb], tN, c4, j0 + jb, warp, sq);
        }
        float part[JB][HT][4] = {};
#pragma unroll
        for (int kk = 0; kk < DG_BK / 16; kk++)
#pragma unroll
            for (int jb = 0; jb < JB; jb++)
            {
                // x's pairs as staged (mma_x_columns' order): columns 4 (kk & 1), + 1 and + 2, + 3 of chunk kk / 2.
                const unsigned b0 = b[jb][kk >> 1][2 * (kk & 1)], b1 = b[jb][kk >> 1][2 * (kk & 1) + 1];
#pragma unroll
                for (int h = 0; h < HT; h++) Mma<T>::run(part[jb][h], a[h][kk], b0, b1);
            }
#pragma unroll
        for (int jb = 0; jb < JB; jb++)
#pragma unroll
            for (int h = 0; h < HT; h++)
            {
                const int j = j0 + jb;
                acc[h][j][0] = fmaf(sc[h][0], part[jb][h][0], acc[h][j][0]);   // part[.][h][0], [1]: row g; [2], [3]: row g + 8
                acc[h][j][1] = fmaf(sc[h][0], part[jb][h][1], acc[h][j][1]);
                acc[h][j][2] = fmaf(sc[h][1], part[jb][h][2], acc[h][j][2]);
                acc[h][j][3] = fmaf(sc[h][1], part[jb][h][3], acc[h][j][3]);
            }
    }
}

// One k-tile of the int8 form (see the file's comment): warp rows tW (32 rows of 64 int8 values, 64 bytes apart), x's
// stage tX (8 MT rows of 64 values of T, swizzled), acc[h][j] as the 16-bit form's. Lane c4 takes the tile's columns
// 16 c4 .. 16 c4 + 15 on both operands.
template <typename T, int MT, int WARPS, int SQ>
__device__ __forceinline__ void decode_tile_q8(float (&acc)[2][MT][4], unsigned tW, unsigned tX, int g, int c4, bool nw, unsigned tN,
                                               int warp, float (&sq)[SQ])
{
    unsigned a[2][DG_BK / 16][4];                          // [h][kk]: W rows 16h + g (a0, a2) and + 8 (a1, a3)
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int half = 0; half < 2; half++)
        {
            unsigned q[4];
            lds_u32x4(tW + (16 * h + 8 * half + g) * DG_BK + c4 * 16, q);
#pragma unroll
            for (int kk = 0; kk < DG_BK / 16; kk++) q8_pairs<T>(q[kk], a[h][kk][half], a[h][kk][2 + half]);
        }
    mma_x_columns<T, MT, WARPS, SQ>(acc, a, tX, g, c4, nw, tN, warp, sq);
}

// Where a decode product's rows of x come from and its rows of y (and c_in) go. DenseRows: row m is row m of both.
struct DenseRows
{
    static constexpr bool dense = true;
    __device__ __forceinline__ i64 x_row(int m) const { return m; }
    __device__ __forceinline__ i64 y_row(int m) const { return m; }
};
// ExpertRows (moe.cu's tensor-core expert products): rows p0 .. of one expert's run of aligned pairs (moe_align's slots, a
// slot being token n k + choice s). Gathered (the gate/up product): x's row m is token slots[p0 + m] / k, y's row p0 + m (the
// pair's hidden row); otherwise (the down product): x's row m is pair p0 + m, y's row its slot, slots[p0 + m].
struct ExpertRows
{
    static constexpr bool dense = false;
    const int* slots;
    int p0, k;
    bool gathered;
    __device__ __forceinline__ i64 x_row(int m) const { return gathered ? slots[p0 + m] / k : p0 + m; }
    __device__ __forceinline__ i64 y_row(int m) const { return gathered ? p0 + m : slots[p0 + m]; }
};

// Wt: W's storage type, T (the 16-bit form), signed char (the int8 form, which takes scales, c_in and ldc, and with SWIGLU
// the up weight's scales2) or unsigned (the int4 form's packed words, ldw in words; it also takes zeros and group; SWIGLU only by
// group sums, with the up weight's scales2 and zeros2). Every form takes nw (x normalized on the way, norm_x_columns). GS:
// the int4 form by group sums (group a multiple of DG_BK). ST: the pipeline's stages (DG_ST; the form by group sums also in
// 8, _s8: its W tile is 4 KB, a quarter of the 16-bit form's, so 4 stages keep a quarter of the bytes in flight a CTA,
// CudaBackendOptions.Int4DecodeProductStages). R: where x's rows come from and y's go (DenseRows, or ExpertRows: x's rows
// gathered, y's scattered; their row indices read once, before the pipeline). JB: the int4 form by group sums' n8 tiles of x
// at once (decode_tile_q4_exact; at most MT).
template <typename T, typename Wt, int MT, bool SWIGLU, bool GS = false, int ST = DG_ST, typename R = DenseRows, int JB = 1>
__device__ void decode_gemm(const T* x, const Wt* w, const Wt* w2, const T* bias, const T* bias2, T* y, int M, int N, int K,
                            i64 ldx, i64 ldw, i64 ldy, float alpha, float beta, int early, const T* nw, float eps,
                            const float* scales, const T* c_in, i64 ldc, const signed char* zeros = nullptr, int group = 0,
                            const float* scales2 = nullptr, const signed char* zeros2 = nullptr, R rows = R{})
{
    constexpr bool Q8 = sizeof(Wt) == 1, Q4 = sizeof(Wt) == 4;
    constexpr int WB = sizeof(Wt), MP = 8 * MT, ROWB = Q4 ? DG_BK / 2 : DG_BK * WB, CPE = Q4 ? 8 : 1;   // a tile row's bytes; columns a Wt
    // A stage: W's tile, x's, the norm weight's 64 columns, and with GS each W row's scale and zero word (4 + 4 bytes).
    constexpr int WT = DG_BN * ROWB, XT = MP * DG_BK * 2, NT = DG_BK * 2, ST4 = GS ? DG_BN * 8 : 0, STAGE = WT + XT + NT + ST4;
    // Warps a CTA, each taking HT m16 tiles of W rows (RPW rows). Four, two tiles a warp, x's fragments serving both. Eight
    // warps of one tile each (the group-sum form's, to hide its latencies with twice the warps) measured slower on the H100
    // at every row count, 5 to 64 (session 32: a layer's four products 55.0 against 48.8 us at 8 rows, 98.0 against 89.0 at
    // 64), with two CTAs an SM at most 128 registers: x's fragments loaded, permuted and used for one tile cost more.
    constexpr int WARPS = DG_THREADS / 32, THREADS = DG_THREADS, HT = DG_BN / (16 * WARPS), RPW = DG_BN / WARPS;
    constexpr int SQ = (MT + WARPS - 1) / WARPS;
    static_assert(!GS || Q4, "decode_gemm: group sums are the int4 form's");

    static_assert(MT % 2 == 0, "decode_gemm: x's rows in pairs of n8 tiles (one ldmatrix.x4 each)");
    static_assert(!(Q4 && SWIGLU && !GS), "decode_gemm: SwiGLU takes 16-bit or int8 weights, or int4 by group sums");
    static_assert((MP * DG_RS + 2 * MP) * 4 <= ST * STAGE, "decode_gemm: the cluster's tiles fit in the stages");
    extern __shared__ float dg_shared[];
    float* const shared = cta_dynamic_shared(dg_shared);
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c4 = lane & 3;
    const int slices = gridDim.x, slice = blockIdx.x, n0 = blockIdx.y * DG_BN, ks = K / slices, k0 = slice * ks;
    const int tiles = ks / DG_BK;
    const unsigned smem = smem_u32(shared);
    // Thread tid copies 16-byte chunk (tid % 8) of rows tid / 8, + 16, ... of a tile (swizzled); int8: chunk (tid % 4) of
    // rows tid / 4, + 32, ... (a row is 4 chunks; unswizzled); int4: chunk (tid % 2) of rows tid / 2, + 64 (unswizzled).
    const int groups = Q4 ? (K + group - 1) / group : 0;
    constexpr int CPR = ROWB / 16, RSTEP = THREADS / CPR;      // 16-byte chunks a W row; rows a pass
    const int cr = tid / CPR, cc = tid % CPR;
    // Virtual row r of a tile: W's row n0 + r, or with SWIGLU the gate (r % 16 < 8) or up (w2's) row of output o.
    auto w_row = [&](int r) { return SWIGLU ? (int)blockIdx.y * (DG_BN / 2) + (r >> 4) * 8 + (r & 7) : n0 + r; };
    auto load_w = [&](int stage, int t) {
        const unsigned dst = smem + stage * STAGE;
#pragma unroll
        for (int i = 0; i < DG_BN / RSTEP; i++)
        {
            const int r = cr + RSTEP * i, n = w_row(r);
            const Wt* src = SWIGLU && (r & 8) ? w2 : w;
            const bool ok = n < N;
            const unsigned at = Q8 || Q4 ? (unsigned)(r * ROWB + cc * 16) : (unsigned)(r * DG_BK * 2 + ((cc ^ (r & 7)) << 4));
            cp_async16(dst + at, ok ? src + (i64)n * ldw + (k0 + t * DG_BK) / CPE + cc * (16 / WB) : w, ok);
        }
        if constexpr (GS)
        {
            // Thread tid also copies virtual row tid's scale of the tile's group and the word holding its zero (bytes of the
            // zeros past the tensor's end zero-filled, not read), the up weight's with SWIGLU for its up rows; with early
            // loads before pdl_wait, as the weights.
            static_assert(DG_BN <= THREADS, "decode_gemm: a thread a W row's scale and zero");
            const unsigned sdst = dst + WT + XT + NT;
            const int n = w_row(tid), gi = (k0 + t * DG_BK) / group;
            const bool second = SWIGLU && (tid & 8);
            const float* sc = second ? scales2 : scales;
            const signed char* zr = second ? zeros2 : zeros;
            if (tid < DG_BN)
            {
            const i64 at = (i64)n * groups + gi, word = at & ~(i64)3, end = (i64)N * groups;
            cp_async4(sdst + 4 * tid, n < N ? (const void*)(sc + at) : (const void*)sc, n < N);
            cp_async4(sdst + 4 * (DG_BN + tid), n < N ? (const void*)(zr + word) : (const void*)zr,
                      n < N ? (int)(end - word < 4 ? end - word : 4) : 0);
            }
        }
    };
    // Gathered rows (R not dense): the rows this thread copies, as load_tile_sw128 assigns them (chunk tid % 8 of rows
    // tid / 8 + 16 i), looked up once; rows at or past M zero-filled.
    constexpr int XCH = DG_BK / 8, XRS = DG_THREADS / XCH, XN = R::dense ? 1 : MP / XRS;
    const T* xsrc[XN];
    if constexpr (!R::dense)
#pragma unroll
        for (int i = 0; i < XN; i++)
        {
            const int r = tid / XCH + XRS * i;
            xsrc[i] = r < M ? x + rows.x_row(r) * ldx + (tid % XCH) * 8 : nullptr;
        }
    auto load_x = [&](int stage, int t) {
        const unsigned dst = smem + stage * STAGE + WT;
        if constexpr (R::dense) load_tile_sw128<DG_BK, MP, DG_THREADS>(dst, x + k0 + t * DG_BK, ldx, 0, M, tid);
        else
        {
            const unsigned d0 = dst + sw128_offset<MP>(tid / XCH, tid % XCH);
#pragma unroll
            for (int i = 0; i < XN; i++) cp_async16(d0 + i * XRS * 128, xsrc[i] ? xsrc[i] + k0 + t * DG_BK : x, xsrc[i] != nullptr);
        }
        if (nw && tid < DG_BK / 8) cp_async16(dst + XT + tid * 16, nw + k0 + t * DG_BK + tid * 8, true);
    };
    prologue_weights_first<ST>(tiles, early, load_w, load_x);

    float acc[HT][MT][4];
#pragma unroll
    for (int h = 0; h < HT; h++)
#pragma unroll
        for (int j = 0; j < MT; j++) acc[h][j][0] = acc[h][j][1] = acc[h][j][2] = acc[h][j][3] = 0.f;
    float sq[SQ];                                          // with nw: this lane's share of the sums of squares of x rows 8 (warp + WARPS i) + g
#pragma unroll
    for (int i = 0; i < SQ; i++) sq[i] = 0.f;
    const TileOffsets<DG_BK> off(lane);
    for (int t = 0; t < tiles; t++)
    {
        // Int4: the scale and zero of this lane's four W rows at its 16 columns of the k-tile (one group), read while the
        // stage's copies land. Rows past N (zero-filled words) get scale 0.
        float sc[2][2], zb[2][2];
        if constexpr (Q4 && !GS)
        {
            const int gi = (k0 + t * DG_BK + 16 * c4) / group;
#pragma unroll
            for (int h = 0; h < 2; h++)
#pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    const int n = n0 + RPW * warp + 16 * h + 8 * half + g;
                    const i64 at = (i64)n * groups + gi;
                    sc[h][half] = n < N ? scales[at] : 0.f;
                    zb[h][half] = 8388608.f + (n < N ? (float)zeros[at] : 0.f);
                }
        }
        const int ahead = t + ST - 1;
        if (ahead < tiles)
        {
            load_w(ahead % ST, ahead);
            load_x(ahead % ST, ahead);
        }
        cp_async_commit();
        cp_async_wait<ST - 1>();
        __syncthreads();
        const unsigned base = smem + (t % ST) * STAGE, tW = base + warp * RPW * ROWB, tX = base + WT, tN = base + WT + XT;
        if constexpr (Q8) decode_tile_q8<T, MT, WARPS, SQ>(acc, tW, tX, g, c4, nw != nullptr, tN, warp, sq);
        else if constexpr (GS)
        {
            // The lane's four rows' zeros (byte (n G + gi) % 4 of each staged word) and scales, from the stage.
            const unsigned tS = base + WT + XT + NT;
            const int gi = (k0 + t * DG_BK) / group;
            unsigned nz[HT][2];
            float sg[HT][2];
#pragma unroll
            for (int h = 0; h < HT; h++)
#pragma unroll
                for (int half = 0; half < 2; half++)
                {
                    const int r = RPW * warp + 16 * h + 8 * half + g;
                    const unsigned zw = lds_u32(tS + 4 * (DG_BN + r));
                    nz[h][half] = q4_negated_zero<T>((zw >> (8 * (int)(((i64)w_row(r) * groups + gi) & 3))) & 0xFFu);
                    sg[h][half] = __uint_as_float(lds_u32(tS + 4 * r));
                }
            decode_tile_q4_exact<T, MT, HT, WARPS, SQ, (JB < MT ? JB : MT)>(acc, tW, tX, g, c4, nz, sg, nw != nullptr, tN, warp, sq);
        }
        else if constexpr (Q4) decode_tile_q4<T, MT, WARPS, SQ>(acc, tW, tX, g, c4, sc, zb, nw != nullptr, tN, warp, sq);
        else
        {
#pragma unroll
            for (int kk = 0; kk < DG_BK / 16; kk++)
            {
                unsigned a[2][4];
#pragma unroll
                for (int h = 0; h < 2; h++)
                {
                    unsigned m0, m1, m2, m3;
                    ldsm_x4(tW + h * 16 * DG_BK * 2 + off.rows[kk], m0, m1, m2, m3);   // (rows 0-7, k 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15)
                    a[h][0] = m0; a[h][1] = m2; a[h][2] = m1; a[h][3] = m3;
                }
                // With nw: its columns kk 16 + 2 c4 (+ 1) and + 8, as b0 / b1 hold x's.
                const unsigned nlo = nw ? lds_u32(tN + kk * 32 + c4 * 4) : 0u, nhi = nw ? lds_u32(tN + kk * 32 + 16 + c4 * 4) : 0u;
#pragma unroll
                for (int j = 0; j < MT; j += 2)
                {
                    unsigned b0, b1, b2, b3;
                    ldsm_x4(tX + j * 8 * DG_BK * 2 + off.rows[kk], b0, b1, b2, b3);   // n8 tile j: b0, b1; tile j + 1: b2, b3
                    if (nw)
                    {
                        if (j % 4 == warp) sq[j / 4] += sumsq2<T>(b0) + sumsq2<T>(b1);
                        if ((j + 1) % 4 == warp) sq[(j + 1) / 4] += sumsq2<T>(b2) + sumsq2<T>(b3);
                        b0 = mul2_rn<T>(b0, nlo); b1 = mul2_rn<T>(b1, nhi); b2 = mul2_rn<T>(b2, nlo); b3 = mul2_rn<T>(b3, nhi);
                    }
#pragma unroll
                    for (int h = 0; h < 2; h++)
                    {
                        Mma<T>::run(acc[h][j], a[h], b0, b1);
                        Mma<T>::run(acc[h][j + 1], a[h], b2, b3);
                    }
                }
            }
        }
        __syncthreads();                                   // this stage is refilled ST - 1 tiles later
    }
    cp_async_wait<0>();
    __syncthreads();                                       // the stages' memory now holds the tiles and the row sums
    float* const tile = shared;                            // (MP, DG_RS) fp32: this CTA's sums, x row by W (virtual) row
    float* const rowsq = shared + MP * DG_RS;              // (MP): this slice's sums of squares of x's rows
    float* const total = rowsq + MP;                       // (MP): every slice's, with several
    if (nw)
    {
#pragma unroll
        for (int i = 0; i < SQ; i++)
        {
            float v = sq[i];
            v += __shfl_xor_sync(FULL_MASK, v, 1);
            v += __shfl_xor_sync(FULL_MASK, v, 2);
            const int jj = warp + WARPS * i;
            if (jj < MT && c4 == 0) rowsq[8 * jj + g] = v;
        }
    }
    // acc[h][j][e]: W (virtual) row 32 warp + 16 h + g (+ 8 for e >= 2), x row 8j + 2 c4 + (e & 1); with SWIGLU the gate
    // (e < 2) and the up (e >= 2) sums of output 64 blockIdx.y + 8 (2 warp + h) + g.
    // Output (m, n) of the plain product from its fp32 sum: the 16-bit form's store_product, or the int8 form's row scale
    // times the sum, the bias, and beta times c_in (y or the addend).
    auto store = [&](int m, int n, float sum) {
        if constexpr (Q8 || Q4)
        {
            float v = Q8 ? scales[n] * sum : sum;
            if (bias) v += to_f(bias[n]);
            if (beta != 0.f) v += beta * to_f(c_in[rows.y_row(m) * ldc + n]);
            y[rows.y_row(m) * ldy + n] = from_f<T>(v);
        }
        else store_product(y, rows.y_row(m) * ldy + n, sum, alpha, bias, n, beta);
    };
    // SWIGLU: output o's gate and up sums (times 1 / rms) to y; int8 weights multiply each by its row's scale first.
    auto store_gated = [&](int m, int o, float g, float u) {
        if constexpr (Q8) { g *= scales[o]; u *= scales2[o]; }
        store_swiglu(y, rows.y_row(m) * ldy + o, g, u, bias, bias2, o);
    };
    if (slices == 1)
    {
        __syncthreads();
        auto inv_rms = [&](int m) { return nw ? rsqrtf(rowsq[m] / K + eps) : 1.f; };
#pragma unroll
        for (int h = 0; h < HT; h++)
#pragma unroll
            for (int j = 0; j < MT; j++)
            {
                if (SWIGLU)
                {
                    const int o = blockIdx.y * (DG_BN / 2) + (HT * warp + h) * 8 + g;
#pragma unroll
                    for (int e = 0; e < 2; e++)
                    {
                        const int m = 8 * j + 2 * c4 + e;
                        if (m >= M || o >= N) continue;
                        const float r = inv_rms(m);
                        store_gated(m, o, acc[h][j][e] * r, acc[h][j][e + 2] * r);
                    }
                }
                else
#pragma unroll
                    for (int e = 0; e < 4; e++)
                    {
                        const int m = 8 * j + 2 * c4 + (e & 1), n = n0 + RPW * warp + 16 * h + g + (e >> 1) * 8;
                        if (m < M && n < N) store(m, n, acc[h][j][e] * inv_rms(m));
                    }
            }
        return;
    }
    // Several slices: this CTA's tile into its shared memory (SWIGLU: output ol's gate at column ol, its up at 64 + ol).
#pragma unroll
    for (int h = 0; h < HT; h++)
#pragma unroll
        for (int j = 0; j < MT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
            {
                const int m = 8 * j + 2 * c4 + (e & 1);
                const int col = SWIGLU ? (e >> 1) * (DG_BN / 2) + (HT * warp + h) * 8 + g : RPW * warp + 16 * h + g + (e >> 1) * 8;
                tile[m * DG_RS + col] = acc[h][j][e];
            }
    cluster_arrive();
    cluster_wait();
    if (nw)
    {
        cluster_sum_rows(rowsq, total, MP, slices, tid, THREADS);      // every slice's sums of squares, in slice order
        __syncthreads();
    }
    auto inv_rms = [&](int m) { return nw ? rsqrtf(total[m] / K + eps) : 1.f; };
    // This CTA's share of the output pairs (x row m, W rows or outputs 2q, 2q + 1), each summed over the slices in order.
    constexpr int PAIRS = SWIGLU ? DG_BN / 4 : DG_BN / 2;
    const int pairs = M * PAIRS, first = (int)((long long)pairs * slice / slices), last = (int)((long long)pairs * (slice + 1) / slices);
    for (int p = first + tid; p < last; p += THREADS)
    {
        const int m = p / PAIRS, q = p % PAIRS;
        float s0, s1, u0 = 0.f, u1 = 0.f;
        cluster_sum2(tile + m * DG_RS + 2 * q, slices, s0, s1);
        if (SWIGLU) cluster_sum2(tile + m * DG_RS + DG_BN / 2 + 2 * q, slices, u0, u1);
        const float r = inv_rms(m);
        if (SWIGLU)
        {
            const int o = blockIdx.y * (DG_BN / 2) + 2 * q;
            if (o < N) store_gated(m, o, s0 * r, u0 * r);
            if (o + 1 < N) store_gated(m, o + 1, s1 * r, u1 * r);
        }
        else
        {
            const int n = n0 + 2 * q;
            if (n < N) store(m, n, s0 * r);
            if (n + 1 < N) store(m, n + 1, s1 * r);
        }
    }
    cluster_arrive();                                      // no CTA leaves while another still reads its tile
    cluster_wait();
}

