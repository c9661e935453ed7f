// Matrix-vector products for decoding: y (M, N) = alpha * x (M, K) W^T + bias + beta * y, with W (N, K)
// row-major (nn.Linear's layout) and M <= 4 rows of x. At such M the product is bound by reading W once
// (2 bytes per weight in bf16), and a general GEMM tiles for reuse that is not there.
//
// The weights' storage type Wt is x's type T, or signed char: an int8 weight (weight-only quantization, QuantizedWeight)
// whose row n stands for scales[n] * W[n, ·]. A 16-byte load then holds 16 weights (not 8 bf16), so the same stream reads
// each weight at one byte; the int8 values become fp32 exactly, the sums are over the int8 values, and the row's scale
// multiplies its sum once in the epilogue (LINEAR only). Wt = fp8e4m3 (FP8 weights, W8A8): the same stream of 16 E4M3 codes a
// load, decoded exactly; x's staged rows are quantized to E4M3 in place first (gemv_quantize_x: per row the scale
// max|x| / 448 and x replaced by the value of its code, as quantize_rows_fp8 and the CPU's Fp8Quantization do), and the
// epilogue multiplies row n's sum of code products by scales[n] times row m's scale.
//
// A grid of two CTAs of 8 warps per SM stays resident (persistent); each warp walks its rows (n = its global warp
// index, then every gridDim.x * 8 rows) as a stream of units, a unit being U 16-byte loads per lane (U * 32 chunks
// of one row), and issues unit i + 1's loads before it multiplies unit i: a warp always has a unit in flight,
// across row boundaries too, and no barrier stops it after x is staged (once per CTA, in shared memory; the loads
// bypass L1). fp32 accumulation; one warp reduction per output. Three epilogues share the stream:
//   LINEAR  y = alpha * x W^T + bias + beta * y (beta = 1: the residual add).
//   SWIGLU  y = SiLU(x Wg^T + bg) * (x Wu^T + bu): a "row" is the gate row then the up row of one output.
//   ROPE    a decode step's QKV product (bias, no beta), then RopeAndAppend: a "row" is the pair of rows of one head
//           that one rotation reads (gemv_row_of: n and n + D/2 for whole heads), so the warp holds both halves of it; the q and k heads are rotated at the
//           sequence's device-side position, and the rotated k and the v heads are written into the KV cache: a dense
//           cache (B, S, 2K, D) at the row's position, or with slots a paged pool (Blocks * BlockSize, 2K, D) at the row's
//           slot (serving: row m's position is starts[m], Tn = 1; a negative slot, a padding row, writes nothing).

// 16 bytes of W, read once: no L1 allocation, so x and the other CTAs' rows keep the cache.
__device__ __forceinline__ Bytes16 load_stream16(const void* p)
{
    Bytes16 r;
#ifdef __CUDA_ARCH__
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.w[0]), "=r"(r.w[1]), "=r"(r.w[2]), "=r"(r.w[3]) : "l"(p));
#else   // the host compile of the kernel emulation (tests/Tessera.Tests/Cuda/Emulation)
    r = *reinterpret_cast<const Bytes16*>(p);
#endif
    return r;
}

// 16 int8 weights as fp32, exactly, without the conversion instruction: it gives 16 results a clock per SM (sm_80 and
// sm_90), fewer than the int8 weights an SM's share of the memory bandwidth brings (about 18 a clock on an H200). q's sign
// bit flipped is the byte b = q + 128; placed in the low mantissa bits of 2^23 it makes the float 2^23 + b, and
// subtracting 2^23 + 128 leaves q. One byte extraction (a permute) and one add a weight.
template <> __device__ __forceinline__ void unpack16<signed char>(const Bytes16& u, float* out)
{
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        const unsigned biased = u.w[i] ^ 0x80808080u;
#pragma unroll
        for (int j = 0; j < 4; j++) out[4 * i + j] = __uint_as_float(0x4B000000u | ((biased >> (8 * j)) & 0xFFu)) - 8388736.f;
    }
}

// An FP8 (E4M3) weight code: the weights' storage type of the FP8 form.
struct fp8e4m3 { unsigned char bits; };
template <typename W> struct IsFp8 { static const bool value = false; };
template <> struct IsFp8<fp8e4m3> { static const bool value = true; };

// 16 E4M3 codes as fp32, exactly (e4m3_to_f's values) in a few integer operations a code: the code's byte moved to the top
// of a word keeps its sign in bit 31, and its 7 magnitude bits shifted to bits 20-26 are an fp32 whose exponent and
// mantissa are the code's, 120 below fp32's bias (a denormal for the code's subnormals, e = 0), so 2^120 times it is the
// code's value (an exact multiplication: NVRTC keeps denormals, no -ftz). The NaN codes (0x7F, 0xFF), which this would read
// as 480, are found a word at a time (a byte of 0xFF after setting each byte's top bit) and made NaN on a rare path.
template <> __device__ __forceinline__ void unpack16<fp8e4m3>(const Bytes16& u, float* out)
{
    unsigned nan = 0;
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        const unsigned w = u.w[i], v = ~(w | 0x80808080u);
        nan |= (v - 0x01010101u) & ~v & 0x80808080u;   // a byte of v is 0 where the code is 0x7F or 0xFF
#pragma unroll
        for (int j = 0; j < 4; j++)
        {
            const unsigned t = w << (24 - 8 * j);
            out[4 * i + j] = __uint_as_float((t & 0x80000000u) | ((t >> 4) & 0x07f00000u)) * 0x1p120f;
        }
    }
    if (nan)
    {
#pragma unroll
        for (int i = 0; i < 16; i++)
            if (((u.w[i >> 2] >> (8 * (i & 3))) & 0x7fu) == 0x7fu) out[i] = QNAN;
    }
}

// One 16-byte chunk c of a weight row (Vec16<Wt>::N weights) against the same columns of the M staged rows of x: one
// 16-byte piece of x a row when Wt is T, two (bf16, f16) or four (f32) for int8 weights.
template <typename T, typename Wt, int M>
__device__ __forceinline__ void gemv_chunk(const Bytes16& wraw, const T* sx, int K, int c, float* acc)
{
    constexpr int V = Vec16<Wt>::N, VX = Vec16<T>::N;
    float w[V];
    unpack16<Wt>(wraw, w);
#pragma unroll
    for (int m = 0; m < M; m++)
#pragma unroll
        for (int h = 0; h < V; h += VX)
        {
            float xv[VX];
            load16(sx + (i64)m * K + (i64)c * V + h, xv);
#pragma unroll
            for (int j = 0; j < VX; j++) acc[m] = fmaf(w[h + j], xv[j], acc[m]);
        }
}

// Staging x (M, K) into shared memory once per CTA: every warp of the CTA reads it for its rows. With a norm weight
// nw (K), each row is RMS-normalized on the way (x * rsqrt(mean(x^2) + eps) * nw, rounded to T as the separate norm
// kernel would store it): every CTA recomputes the row's mean square from 2K bytes that the L2 serves, which costs less
// than a launch of its own. unit: the norm's scale is 1 + nw rounded to T (Gemma), as norm.cu's kernels apply it.
template <typename T, int M>
__device__ __forceinline__ void gemv_stage_x(const T* x, i64 ldx, int K, T* sx, const T* nw, float eps, int unit = 0)
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
            for (int j = 0; j < V; j++) v[j] = v[j] * r * norm_scale<T>(w[j], unit);
            store16(sx + (i64)m * K + (i64)c * V, v);
        }
    }
    __syncthreads();
}

// The FP8 form's activation quantization, on the M rows gemv_stage_x left in shared memory (every thread; barriers inside):
// per row m, scale[m] = max_k |x| / 448 (div_rn: an IEEE division; a row of zeros 1; a row holding a NaN or an infinity
// NaN), and each x replaced by the value of e4m3(x / scale) (div_rn, to nearest even, satfinite: e4m3_from_f), which T
// holds exactly (4 significant bits, magnitudes 2^-9 to 448). The quantized values are the CPU's (Fp8Quantization.QuantizeRow
// on x as stored, or on the normalized row rounded to T), and the stream then sums code times code.
template <typename T, int M>
__device__ __forceinline__ void gemv_quantize_x(T* sx, int K, float* scale)
{
    constexpr int V = Vec16<T>::N;
    const int chunks = K / V;
#pragma unroll
    for (int m = 0; m < M; m++)
    {
        T* row = sx + (i64)m * K;
        float amax = 0.f;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x)
        {
            float v[V];
            load16(row + (i64)c * V, v);
#pragma unroll
            for (int j = 0; j < V; j++)   // a NaN or an infinity counts as +inf: the scale becomes NaN
                amax = fmaxf(amax, (__float_as_uint(v[j]) & 0x7f800000u) == 0x7f800000u ? -NEG_INF : fabsf(v[j]));
        }
        amax = block_max(amax);   // barriers inside (its first one also orders the previous row's reads of its partials)
        float s = div_rn(amax, 448.f);
        if (s == 0.f) s = 1.f;
        if (amax == -NEG_INF) s = QNAN;
        if (threadIdx.x == 0) scale[m] = s;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x)
        {
            float v[V];
            load16(row + (i64)c * V, v);
            T* e = row + (i64)c * V;
#pragma unroll
            for (int j = 0; j < V; j++) e[j] = from_f<T>(e4m3_to_f(e4m3_from_f(div_rn(v[j], s))));   // exact in T
        }
    }
    __syncthreads();
}

// ---- The persistent stream ----

template <typename Wt, int U>
__device__ __forceinline__ void gemv_unit_load(const Wt* row, int q, int chunks, int lane, Bytes16* raw)
{
    constexpr int V = Vec16<Wt>::N;
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        const int c = (q * U + u) * 32 + lane;
        if (c < chunks) raw[u] = load_stream16(row + (i64)c * V);
    }
}

template <typename T, typename Wt, int M, int U>
__device__ __forceinline__ void gemv_unit_fma(const Bytes16* raw, const T* sx, int K, int q, int chunks, int lane, float* acc)
{
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        const int c = (q * U + u) * 32 + lane;
        if (c < chunks) gemv_chunk<T, Wt, M>(raw[u], sx, K, c, acc);
    }
}

// Where a warp is in its stream: output (or pair) n, half s of it (0: W0's row, 1: W1's row), unit q of that row.
struct GemvCursor
{
    int n, s, q;
    __device__ __forceinline__ void advance(int units, int halves, int stride)
    {
        if (++q < units) return;
        q = 0;
        if (++s < halves) return;
        s = 0;
        n += stride;
    }
};

enum GemvEpilogue { GEMV_LINEAR = 0, GEMV_SWIGLU = 1, GEMV_ROPE = 2 };

// What the ROPE epilogue needs beyond the product: the qkv layout of one row (H query heads, KH kv heads, head size D;
// rows m = b * Tn + t), the device-side start positions, and the cache (B, S, 2 KH, D) with its strides. With slots (M)
// the cache is a paged pool written at slots[m] * cs + head * ch (cb unused).
template <typename T> struct GemvRope
{
    T* cache;
    const int* starts;
    const int* slots;
    int Tn, H, KH, D;
    i64 cb, cs, ch;
    RopeFreq freq;
};

// The row of W that half s of output (or pair) n reads: for ROPE, pair n = (head hh, i) of heads of D = 2 half channels
// whose first R = 2 rhalf rotate reads rows hh * D + c0 and hh * D + c1, (c0, c1) being rope_pair's channels: (i, i + D / 2)
// for whole heads, (i, i + R / 2) for a rotating pair of a partial one, and two passing channels past R for the rest.
template <int EPI>
__device__ __forceinline__ int gemv_row_of(int n, int s, int half, int rhalf)
{
    if (EPI != GEMV_ROPE) return n;
    const int i = n % half, head = (n / half) * 2 * half;
    if (i < rhalf) return head + i + s * rhalf;
    return head + i + rhalf + s * (half - rhalf);   // R + (i - R / 2) + s (D - R) / 2
}

// The row a cursor's unit reads.
template <typename Wt, int EPI>
__device__ __forceinline__ const Wt* gemv_row_ptr(const Wt* w0, const Wt* w1, i64 ldw, const GemvCursor& c, int half, int rhalf)
{
    return (c.s == 0 ? w0 : w1) + (i64)gemv_row_of<EPI>(c.n, c.s, half, rhalf) * ldw;
}

// The ROPE epilogue's state a lane keeps (lane m < M: row m's position, pool slot and the current pair's angle), and its
// steps, shared by the 16-bit stream and the int4 stream. A pair n (head hh = n / half, i = n % half) is rows n0 and n1 of
// the qkv product (gemv_row_of: hh D + i and hh D + i + D / 2 for whole heads); under partial rotary only pairs i < R / 2
// turn, the rest pass through (rope_pair).
template <typename T, int M>
struct GemvRopeLane
{
    int pos = 0, len = 0, slot = 0;
    double inv_freq = 0.0;
    float cf = 1.f, sf = 0.f;
    // Before the wait: the first pair's frequency from the table, written once, long before (dynamic NTK and LongRoPE, which depend
    // on the positions, recompute it after the wait).
    __device__ __forceinline__ void before_wait(const GemvRope<T>& rope, int first, int N, int half, int lane)
    {
        if (lane < M && first < N && first % half < rope_rotated(rope.freq, rope.D) / 2) inv_freq = rope.freq.inv[first % half];
    }
    // After the wait: row lane's position and slot, and the length dynamic NTK scales by.
    __device__ __forceinline__ void after_wait(const GemvRope<T>& rope, int first, int N, int half, int lane)
    {
        if (lane >= M) return;
        pos = rope.starts[lane / rope.Tn] + lane % rope.Tn;
        if (rope.slots) slot = rope.slots[lane];
        len = rope_length(rope.freq, rope.starts, M / rope.Tn, 0, rope.Tn);
        const int R = rope_rotated(rope.freq, rope.D);
        if (rope_switched(rope.freq, len) && first < N && first % half < R / 2) inv_freq = rope_inv_freq(rope.freq, first % half, R, len);
    }
    // At pair n's first unit: its angle (the rotating pairs of q and k heads only), computed while the pair's first loads fly.
    __device__ __forceinline__ void at_pair(const GemvRope<T>& rope, int n, int first, int half, int lane)
    {
        const int R = rope_rotated(rope.freq, rope.D);
        if (lane < M && (n / half) < rope.H + rope.KH && n % half < R / 2)
            rope_angle_at(pos, n == first ? inv_freq : rope_inv_freq(rope.freq, n % half, R, len), rope.freq.attention, cf, sf);
    }
    // Pair n's sums reduced (every lane holds them; bias over the qkv rows; int8 weights: scales, each row's sum times its
    // scale in one fma, as the plain int8 stream stores it): lane m writes row m, the product rounded to T (as the unfused
    // product stores it), rotated for q and k heads, stored in qkv; k and v heads also into the cache at the row's position
    // (or pool slot; a negative slot writes no cache).
    __device__ __forceinline__ void store(const GemvRope<T>& rope, T* y, i64 ldy, const T* bias, const float* scales, int n, int half,
                                          const float* a0, const float* a1, int lane) const
    {
        const int rhalf = rope_rotated(rope.freq, rope.D) / 2, hh = n / half, i = n % half;
        const int n0 = gemv_row_of<GEMV_ROPE>(n, 0, half, rhalf), n1 = gemv_row_of<GEMV_ROPE>(n, 1, half, rhalf);
        const int c0 = n0 - hh * 2 * half, c1 = n1 - hh * 2 * half;   // the channels within the head
#pragma unroll
        for (int m = 0; m < M; m++)
            if (lane == m)
            {
                const float b0 = bias ? to_f(bias[n0]) : 0.f, b1 = bias ? to_f(bias[n1]) : 0.f;
                T a = from_f<T>(scales ? fmaf(scales[n0], a0[m], b0) : a0[m] + b0);
                T c = from_f<T>(scales ? fmaf(scales[n1], a1[m], b1) : a1[m] + b1);
                if (hh < rope.H + rope.KH && i < rhalf)
                {
                    float y1, y2;
                    rope_rotate(to_f(a), to_f(c), cf, sf, y1, y2);
                    a = from_f<T>(y1);
                    c = from_f<T>(y2);
                }
                y[m * ldy + n0] = a;
                y[m * ldy + n1] = c;
                if (hh >= rope.H && slot >= 0)
                {
                    T* kv = rope.cache + (rope.slots ? (i64)slot * rope.cs : (m / rope.Tn) * rope.cb + (i64)pos * rope.cs)
                        + (i64)(hh - rope.H) * rope.ch;
                    kv[c0] = a;
                    kv[c1] = c;
                }
            }
    }
};

// W0 and W1 (rows ldw weights apart) of storage type Wt; with int8 weights (LINEAR) row n's sum is multiplied by
// scales[n] (null: by 1); with FP8 weights x is quantized once staged, and the sum is multiplied by scales[n] and x's row
// scale (shared memory after x: M floats). LINEAR reads beta's term from c_in (ldc apart): y itself (the residual accumulated in place)
// or another tensor (an addend, beta = 1).
template <typename T, typename Wt, int M, int EPI>
__device__ void gemv_stream(const T* x, const Wt* w0, const Wt* w1, const float* scales, const T* bias0, const T* bias1, T* y,
                            const T* c_in, int N, int K, i64 ldx, i64 ldw, i64 ldy, i64 ldc, float alpha, float beta, const T* nw,
                            float eps, GemvRope<T> rope, int early, const float* scales1 = nullptr, int unit = 0, int gelu = 0)
{
    constexpr int U = M <= 2 ? 8 : 4;
    constexpr int V = Vec16<Wt>::N;
    constexpr int HALVES = EPI == GEMV_LINEAR ? 1 : 2;
    extern __shared__ unsigned char gemv_smem[];
    T* sx = reinterpret_cast<T*>(gemv_smem);
    const int lane = threadIdx.x & 31;
    const int stride = gridDim.x * (blockDim.x >> 5);
    const int chunks = K / V, units = (chunks + 32 * U - 1) / (32 * U);
    const int half = EPI == GEMV_ROPE ? rope.D / 2 : 1, rhalf = EPI == GEMV_ROPE ? rope_rotated(rope.freq, rope.D) / 2 : 1;
    GemvCursor load{blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), 0, 0}, cur = load;
    // ROPE: lanes m < M hold row m's position and angle (GemvRopeLane).
    const int first = load.n;
    GemvRopeLane<T, M> rl;
    if (EPI == GEMV_ROPE) rl.before_wait(rope, first, N, half, lane);
    // Weights are read after pdl_wait unless the host says no earlier kernel still writes them (early): an optimizer step
    // may precede a product. Early, the first unit's loads overlap the previous kernel's tail.
    Bytes16 raw[U];
    if (early && load.n < N)
        gemv_unit_load<Wt, U>(gemv_row_ptr<Wt, EPI>(w0, w1, ldw, load, half, rhalf), load.q, chunks, lane, raw);
    pdl_wait();
    pdl_launch_dependents();
    if (!early && load.n < N)
        gemv_unit_load<Wt, U>(gemv_row_ptr<Wt, EPI>(w0, w1, ldw, load, half, rhalf), load.q, chunks, lane, raw);
    if (EPI == GEMV_ROPE) rl.after_wait(rope, first, N, half, lane);
    gemv_stage_x<T, M>(x, ldx, K, sx, nw, eps, unit);   // every thread: barriers inside; the first unit's loads fly meanwhile
    constexpr bool F8 = IsFp8<Wt>::value;
    float* xscale = reinterpret_cast<float*>(gemv_smem + (i64)M * K * sizeof(T));   // F8: the M rows' scales after x
    if (F8) gemv_quantize_x<T, M>(sx, K, xscale);
    float acc[2][M];
#pragma unroll
    for (int s = 0; s < 2; s++)
#pragma unroll
        for (int m = 0; m < M; m++) acc[s][m] = 0.f;
    while (cur.n < N)
    {
        load.advance(units, HALVES, stride);
        Bytes16 next[U];
        if (load.n < N)
            gemv_unit_load<Wt, U>(gemv_row_ptr<Wt, EPI>(w0, w1, ldw, load, half, rhalf), load.q, chunks, lane, next);
        if (EPI == GEMV_ROPE && cur.s == 0 && cur.q == 0) rl.at_pair(rope, cur.n, first, half, lane);
        if (cur.s == 0) gemv_unit_fma<T, Wt, M, U>(raw, sx, K, cur.q, chunks, lane, acc[0]);
        else gemv_unit_fma<T, Wt, M, U>(raw, sx, K, cur.q, chunks, lane, acc[1]);
        if (cur.q == units - 1 && cur.s == HALVES - 1)   // the output's last unit: reduce, write, start the next one
        {
#pragma unroll
            for (int s = 0; s < HALVES; s++)
#pragma unroll
                for (int m = 0; m < M; m++) acc[s][m] = warp_sum(acc[s][m]);   // every lane holds the sums
            const int n = cur.n;
            if (EPI == GEMV_LINEAR && lane == 0)
            {
                const float b0 = bias0 ? to_f(bias0[n]) : 0.f, a = scales ? alpha * scales[n] : alpha;
#pragma unroll
                for (int m = 0; m < M; m++)
                {
                    float r = fmaf(F8 ? a * xscale[m] : a, acc[0][m], b0);
                    if (beta != 0.f) r += beta * to_f(c_in[m * ldc + n]);
                    y[m * ldy + n] = from_f<T>(r);
                }
            }
            if (EPI == GEMV_SWIGLU && lane == 0)
            {
                const float b0 = bias0 ? to_f(bias0[n]) : 0.f, b1 = bias1 ? to_f(bias1[n]) : 0.f;
                // Int8 weights: each half's sum times its row's scale (the gate's scales, the up weight's scales1).
                const float s0 = scales ? scales[n] : 1.f, s1 = scales1 ? scales1[n] : 1.f;
#pragma unroll
                for (int m = 0; m < M; m++)
                {
                    const float a = (scales ? s0 * acc[0][m] : acc[0][m]) + b0;
                    y[m * ldy + n] = from_f<T>((gelu ? ::gelu(a) : silu(a)) * ((scales1 ? s1 * acc[1][m] : acc[1][m]) + b1));
                }
            }
            if (EPI == GEMV_ROPE) rl.store(rope, y, ldy, bias0, scales, n, half, acc[0], acc[1], lane);
#pragma unroll
            for (int s = 0; s < 2; s++)
#pragma unroll
                for (int m = 0; m < M; m++) acc[s][m] = 0.f;
        }
#pragma unroll
        for (int u = 0; u < U; u++) raw[u] = next[u];
        cur.advance(units, HALVES, stride);
    }
}

#define GEMV_STREAM(n, T, M)                                                                                     \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_##n##_m##M(const T* x, const T* w,          \
        const T* bias, T* y, int N, int K, i64 ldx, i64 ldw, i64 ldy, float alpha, float beta, const T* nw,       \
        float eps, int unit, int early)                                                                           \
    {                                                                                                             \
        gemv_stream<T, T, M, GEMV_LINEAR>(x, w, w, nullptr, bias, bias, y, y, N, K, ldx, ldw, ldy, ldy, alpha, beta, nw, eps, \
                                          {}, early, nullptr, unit);                                              \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_swiglu_##n##_m##M(const T* x, const T* wg,  \
        const T* wu, const T* bg, const T* bu, T* out, int F, int K, i64 ldx, i64 ldw, i64 ldo, const T* nw,     \
        float eps, int unit, int gelu, int early)                                                                 \
    {                                                                                                             \
        gemv_stream<T, T, M, GEMV_SWIGLU>(x, wg, wu, nullptr, bg, bu, out, out, F, K, ldx, ldw, ldo, ldo, 1.f, 0.f, nw, eps, \
                                          {}, early, nullptr, unit, gelu);                                        \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_rope_##n##_m##M(const T* x, const T* w,     \
        const T* bias, T* qkv, int pairs, int K, i64 ldx, i64 ldw, i64 ldy, const T* nw, float eps, int unit,    \
        GemvRope<T> rope, int early)                                                                              \
    {                                                                                                             \
        gemv_stream<T, T, M, GEMV_ROPE>(x, w, w, nullptr, bias, bias, qkv, qkv, pairs, K, ldx, ldw, ldy, ldy, 1.f, 0.f, nw, \
                                        eps, rope, early, nullptr, unit);                                         \
    }
#define GEMV_STREAM_ALL(n, T) GEMV_STREAM(n, T, 1) GEMV_STREAM(n, T, 2) GEMV_STREAM(n, T, 3) GEMV_STREAM(n, T, 4)
FOR_FLOAT_TYPES(GEMV_STREAM_ALL)

// The int8-weight form (CudaBackend.QuantizedMatMul): y (M, N) = scales[n] * (x q_n) + bias[n] + beta * c_in, q (N, K) int8
// with rows ldw bytes apart, scales (N) fp32; c_in is y (beta 0 or 1) or an addend of y's shape (beta 1). K a multiple of 16.
// nw (K, or null): x RMS-normalized as it is staged, as in the 16-bit forms. Its SwiGLU form: y (M, F) = SiLU(sg[o] (x qg_o) +
// bg[o]) * (su[o] (x qu_o) + bu[o]) over two int8 weights of one shape and row stride (CudaBackend.QuantizedMatMulSwiGlu).
// Its ROPE form: qkv over the int8 qkv weight, rotated and appended as gemv_stream_rope_* (CudaBackend.QuantizedMatMulRopeAppend).
#define GEMV_STREAM_Q8(n, T, M)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_q8_##n##_m##M(const T* x,                   \
        const signed char* q, const float* scales, const T* bias, T* y, const T* c_in, int N, int K, i64 ldx,    \
        i64 ldw, i64 ldy, i64 ldc, float beta, const T* nw, float eps, int early)                                 \
    {                                                                                                             \
        gemv_stream<T, signed char, M, GEMV_LINEAR>(x, q, q, scales, bias, bias, y, c_in, N, K, ldx, ldw, ldy, ldc, \
                                                    1.f, beta, nw, eps, {}, early);                               \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_q8_rope_##n##_m##M(const T* x,              \
        const signed char* q, const float* scales, const T* bias, T* qkv, int pairs, int K, i64 ldx, i64 ldw,    \
        i64 ldy, const T* nw, float eps, GemvRope<T> rope, int early)                                             \
    {                                                                                                             \
        gemv_stream<T, signed char, M, GEMV_ROPE>(x, q, q, scales, bias, bias, qkv, qkv, pairs, K, ldx, ldw, ldy, ldy, \
                                                  1.f, 0.f, nw, eps, rope, early);                                \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_q8_swiglu_##n##_m##M(const T* x,            \
        const signed char* gate, const signed char* up, const float* gate_scales, const float* up_scales,        \
        const T* gate_bias, const T* up_bias, T* y, int F, int K, i64 ldx, i64 ldw, i64 ldy, const T* nw,        \
        float eps, int early)                                                                                     \
    {                                                                                                             \
        gemv_stream<T, signed char, M, GEMV_SWIGLU>(x, gate, up, gate_scales, gate_bias, up_bias, y, y, F, K, ldx, ldw, \
                                                    ldy, ldy, 1.f, 0.f, nw, eps, {}, early, up_scales);           \
    }
#define GEMV_STREAM_Q8_ALL(n, T) GEMV_STREAM_Q8(n, T, 1) GEMV_STREAM_Q8(n, T, 2) GEMV_STREAM_Q8(n, T, 3) GEMV_STREAM_Q8(n, T, 4)
FOR_FLOAT_TYPES(GEMV_STREAM_Q8_ALL)

// The FP8-weight form (CudaBackend.QuantizedMatMul with F8E4M3 values, 1 to 4 rows): y (M, N) = sx[m] * scales[n] *
// (e4m3(x_m / sx[m]) . q_n) + bias[n] + beta * c_in, q (N, K) E4M3 codes with rows ldw bytes apart, scales (N) fp32, x's rows
// quantized in shared memory (gemv_quantize_x) after the optional norm; otherwise as gemv_stream_q8_*. Dynamic shared
// memory: x (M, K) of T, then M floats.
#define GEMV_STREAM_F8(n, T, M)                                                                                  \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_f8_##n##_m##M(const T* x,                   \
        const unsigned char* q, const float* scales, const T* bias, T* y, const T* c_in, int N, int K, i64 ldx,  \
        i64 ldw, i64 ldy, i64 ldc, float beta, const T* nw, float eps, int early)                                 \
    {                                                                                                             \
        const fp8e4m3* w = reinterpret_cast<const fp8e4m3*>(q);                                                   \
        gemv_stream<T, fp8e4m3, M, GEMV_LINEAR>(x, w, w, scales, bias, bias, y, c_in, N, K, ldx, ldw, ldy, ldc,   \
                                                1.f, beta, nw, eps, {}, early);                                   \
    }
#define GEMV_STREAM_F8_ALL(n, T) GEMV_STREAM_F8(n, T, 1) GEMV_STREAM_F8(n, T, 2) GEMV_STREAM_F8(n, T, 3) GEMV_STREAM_F8(n, T, 4)
FOR_FLOAT_TYPES(GEMV_STREAM_F8_ALL)

// ---- The group-wise int4 form (QuantizedWeight.Int4; CudaBackend.QuantizedMatMul with int4 weights, 1 to 4 rows) ----
// y (M, N) = x (M, K) W^T + bias + beta * c_in, W[n, k] = scales[n, g] * (q[n, k] - zeros[n, g]), g = k / group: packed (N,
// K / 8) u32 (column 8w + j of a row in bits 4j .. 4j + 3 of its word w), scales (N, G) fp32, zeros (N, G) int8, G = ceil(K / group)
// (the last group may be shorter).
// The same persistent stream as gemv_stream (x staged once per CTA, RMS-normalized on the way when nw is given; a warp walks
// its rows as units of U 16-byte loads per lane, the next unit's loads issued before the current one is multiplied; weights
// loaded before pdl_wait when early), with a 16-byte chunk holding four words, 32 columns. It takes K a multiple of 32 (16-byte
// aligned rows of K / 2 bytes) and group a multiple of 32, so a chunk lies in one group: the unit's loads also fetch each
// chunk's scale and zero (one fp32 and one byte, shared by the 4 to 32 lanes of a group and cached), and the chunk's 32 values
// q - zero are made exactly in fp32 (the nibble in the low mantissa bits of 2^23, minus 2^23 + zero: an or and a subtraction
// a value), summed against x in fp32, and the chunk's sum multiplied by its scale once. Other shapes take int4.cu's gemv_int4.
template <int U>
__device__ __forceinline__ void gemv_int4_unit_load(const unsigned* packed, const float* scales, const signed char* zeros, int n,
                                                    int q, int chunks, int groups, int cpg, int lane, Bytes16* raw, float* sc,
                                                    float* zb)
{
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        const int c = (q * U + u) * 32 + lane;
        if (c < chunks)
        {
            raw[u] = load_stream16(packed + (i64)n * (4 * chunks) + 4 * (i64)c);
            const i64 g = (i64)n * groups + c / cpg;
            sc[u] = scales[g];
            zb[u] = 8388608.f + (float)zeros[g];   // 2^23 + zero: exact
        }
    }
}

template <typename T, int M, int U>
__device__ __forceinline__ void gemv_int4_unit_fma(const Bytes16* raw, const float* sc, const float* zb, const T* sx, int K, int q,
                                                   int chunks, int lane, float* acc)
{
    constexpr int VX = Vec16<T>::N;
#pragma unroll
    for (int u = 0; u < U; u++)
    {
        const int c = (q * U + u) * 32 + lane;
        if (c >= chunks) continue;
        float dot[M];
#pragma unroll
        for (int m = 0; m < M; m++) dot[m] = 0.f;
#pragma unroll
        for (int t = 0; t < 4; t++)
        {
            float w[8];
#pragma unroll
            for (int j = 0; j < 8; j++) w[j] = __uint_as_float(0x4B000000u | ((raw[u].w[t] >> (4 * j)) & 0xFu)) - zb[u];
#pragma unroll
            for (int m = 0; m < M; m++)
#pragma unroll
                for (int h = 0; h < 8; h += VX)
                {
                    float xv[VX];
                    load16(sx + (i64)m * K + (i64)c * 32 + 8 * t + h, xv);
#pragma unroll
                    for (int j = 0; j < VX; j++) dot[m] = fmaf(w[h + j], xv[j], dot[m]);
                }
        }
#pragma unroll
        for (int m = 0; m < M; m++) acc[m] = fmaf(sc[u], dot[m], acc[m]);
    }
}

// One int4 weight's buffers (the SwiGLU form streams two: the gate's and the up weight's).
struct Int4Rows
{
    const unsigned* packed;
    const float* scales;
    const signed char* zeros;
};

// EPI: GEMV_LINEAR (w0 alone, y = x W^T + bias0 + beta c_in), GEMV_SWIGLU (y = SiLU(x W0^T + bias0) * (x W1^T + bias1): a
// warp's output reads the gate row (half 0) then the up row (half 1), as gemv_stream's SwiGLU form; beta 0) or GEMV_ROPE
// (w0 the qkv weight, N its rows' pairs: a warp's pair reads rows n0 and n1 (gemv_row_of), then rotates and appends them as
// gemv_stream's ROPE form, GemvRopeLane).
template <typename T, int M, int EPI>
__device__ void gemv_stream_int4(const T* x, Int4Rows w0, Int4Rows w1, const T* bias0, const T* bias1, T* y, const T* c_in, int N,
                                 int K, int group, i64 ldx, i64 ldy, i64 ldc, float beta, const T* nw, float eps, int early,
                                 GemvRope<T> rope = {})
{
    constexpr int U = M <= 2 ? 4 : 2;
    constexpr int HALVES = EPI == GEMV_LINEAR ? 1 : 2;
    extern __shared__ unsigned char gemv_smem[];
    T* sx = reinterpret_cast<T*>(gemv_smem);
    const int lane = threadIdx.x & 31;
    const int stride = gridDim.x * (blockDim.x >> 5);
    const int chunks = K / 32, units = (chunks + 32 * U - 1) / (32 * U), groups = (K + group - 1) / group, cpg = group / 32;
    const int half = EPI == GEMV_ROPE ? rope.D / 2 : 1, rhalf = EPI == GEMV_ROPE ? rope_rotated(rope.freq, rope.D) / 2 : 1;
    GemvCursor load{blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), 0, 0}, cur = load;
    auto load_unit = [&](const GemvCursor& c, Bytes16* r, float* sc, float* zb) {
        const Int4Rows& w = c.s == 0 || EPI == GEMV_ROPE ? w0 : w1;
        gemv_int4_unit_load<U>(w.packed, w.scales, w.zeros, gemv_row_of<EPI>(c.n, c.s, half, rhalf), c.q, chunks, groups, cpg, lane, r, sc, zb);
    };
    const int first = load.n;
    GemvRopeLane<T, M> rl;
    if (EPI == GEMV_ROPE) rl.before_wait(rope, first, N, half, lane);
    Bytes16 raw[U];
    float sc[U], zb[U];
    if (early && load.n < N) load_unit(load, raw, sc, zb);
    pdl_wait();
    pdl_launch_dependents();
    if (!early && load.n < N) load_unit(load, raw, sc, zb);
    if (EPI == GEMV_ROPE) rl.after_wait(rope, first, N, half, lane);
    gemv_stage_x<T, M>(x, ldx, K, sx, nw, eps);   // every thread: barriers inside; the first unit's loads fly meanwhile
    float acc[HALVES][M];
#pragma unroll
    for (int s = 0; s < HALVES; s++)
#pragma unroll
        for (int m = 0; m < M; m++) acc[s][m] = 0.f;
    while (cur.n < N)
    {
        load.advance(units, HALVES, stride);
        Bytes16 next[U];
        float nsc[U], nzb[U];
        if (load.n < N) load_unit(load, next, nsc, nzb);
        if (EPI == GEMV_ROPE && cur.s == 0 && cur.q == 0) rl.at_pair(rope, cur.n, first, half, lane);
        if (HALVES == 1 || cur.s == 0) gemv_int4_unit_fma<T, M, U>(raw, sc, zb, sx, K, cur.q, chunks, lane, acc[0]);
        else gemv_int4_unit_fma<T, M, U>(raw, sc, zb, sx, K, cur.q, chunks, lane, acc[HALVES - 1]);
        if (cur.q == units - 1 && cur.s == HALVES - 1)   // the output's last unit: reduce, write, start the next one
        {
#pragma unroll
            for (int s = 0; s < HALVES; s++)
#pragma unroll
                for (int m = 0; m < M; m++) acc[s][m] = warp_sum(acc[s][m]);
            const int n = cur.n;
            if (EPI == GEMV_ROPE) rl.store(rope, y, ldy, bias0, nullptr, n, half, acc[0], acc[HALVES - 1], lane);
            else if (lane == 0)
            {
                const float b0 = bias0 ? to_f(bias0[n]) : 0.f, b1 = HALVES == 2 && bias1 ? to_f(bias1[n]) : 0.f;
#pragma unroll
                for (int m = 0; m < M; m++)
                {
                    float r;
                    if (EPI == GEMV_SWIGLU) r = silu(acc[0][m] + b0) * (acc[HALVES - 1][m] + b1);
                    else
                    {
                        r = acc[0][m] + b0;
                        if (beta != 0.f) r += beta * to_f(c_in[m * ldc + n]);
                    }
                    y[m * ldy + n] = from_f<T>(r);
                }
            }
#pragma unroll
            for (int s = 0; s < HALVES; s++)
#pragma unroll
                for (int m = 0; m < M; m++) acc[s][m] = 0.f;
        }
#pragma unroll
        for (int u = 0; u < U; u++) { raw[u] = next[u]; sc[u] = nsc[u]; zb[u] = nzb[u]; }
        cur.advance(units, HALVES, stride);
    }
}

// c_in is y (beta 0 or 1) or an addend of y's shape (beta 1); nw (K, or null): x RMS-normalized as it is staged. The SwiGLU
// form: y (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu) over two int4 weights of one shape and group (CudaBackend.QuantizedMatMulSwiGlu).
// The ROPE form: qkv (M, (H + 2 KH) D) = x W^T + bias over the int4 qkv weight, its q and k heads rotated and its k and v
// heads appended to a dense cache or a paged pool, as gemv_stream_rope_* (CudaBackend.QuantizedMatMulRopeAppend, ..PagedAppend).
#define GEMV_STREAM_INT4(n, T, M)                                                                                \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_int4_##n##_m##M(const T* x,                 \
        const unsigned* packed, const float* scales, const signed char* zeros, const T* bias, T* y, const T* c_in, \
        int N, int K, int group, i64 ldx, i64 ldy, i64 ldc, float beta, const T* nw, float eps, int early)        \
    {                                                                                                             \
        const Int4Rows w{packed, scales, zeros};                                                                  \
        gemv_stream_int4<T, M, GEMV_LINEAR>(x, w, w, bias, nullptr, y, c_in, N, K, group, ldx, ldy, ldc, beta, nw, eps, early); \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_int4_swiglu_##n##_m##M(const T* x,          \
        const unsigned* gate, const float* gate_scales, const signed char* gate_zeros, const unsigned* up,        \
        const float* up_scales, const signed char* up_zeros, const T* gate_bias, const T* up_bias, T* y, int F,   \
        int K, int group, i64 ldx, i64 ldy, const T* nw, float eps, int early)                                   \
    {                                                                                                             \
        gemv_stream_int4<T, M, GEMV_SWIGLU>(x, Int4Rows{gate, gate_scales, gate_zeros}, Int4Rows{up, up_scales, up_zeros}, \
                                            gate_bias, up_bias, y, y, F, K, group, ldx, ldy, ldy, 0.f, nw, eps, early); \
    }                                                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 2) gemv_stream_int4_rope_##n##_m##M(const T* x,            \
        const unsigned* packed, const float* scales, const signed char* zeros, const T* bias, T* y, int pairs,   \
        int K, int group, i64 ldx, i64 ldy, const T* nw, float eps, GemvRope<T> rope, int early)                 \
    {                                                                                                             \
        const Int4Rows w{packed, scales, zeros};                                                                  \
        gemv_stream_int4<T, M, GEMV_ROPE>(x, w, w, bias, nullptr, y, y, pairs, K, group, ldx, ldy, ldy, 0.f, nw, eps, early, rope); \
    }
#define GEMV_STREAM_INT4_ALL(n, T) GEMV_STREAM_INT4(n, T, 1) GEMV_STREAM_INT4(n, T, 2) GEMV_STREAM_INT4(n, T, 3) GEMV_STREAM_INT4(n, T, 4)
FOR_FLOAT_TYPES(GEMV_STREAM_INT4_ALL)
