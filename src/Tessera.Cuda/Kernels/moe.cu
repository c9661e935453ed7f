// ------------------------------------------------------------------------------------ mixture of experts on the device
// Inference's routed experts without a read-back (IBackend.MoeRoute, MoeAlign, MoeExpertSwiGlu, MoeExpertDown, MoeCombine):
// N rows, E experts, k experts a row, C channels, F an expert's hidden width; a slot is n k + s, a pair a position in the
// aligned slot list. Every launch has a grid fixed by (N, E, C, F), so a step that runs them can be recorded as a graph.

// moe_route: one thread a row. The s-th choice is the largest logit after the (s-1)-th in the order (logit descending,
// index ascending), so equal probabilities go to the lower expert index (Tessera's rule, ExpertRouting's) and no list of
// taken experts is kept. Choosing by the logit is choosing by the probability: softmax is monotone. NaN logits: unspecified.
template <typename T> __device__ void moe_route(const T* logits, int N, int E, int k, int normalize, int* ids, float* weights)
{
    GRID_STRIDE(r, N)
    {
        const T* z = logits + r * E;
        float max = NEG_INF;
        for (int e = 0; e < E; e++) max = fmaxf(max, to_f(z[e]));
        float sum = 0.f;
        for (int e = 0; e < E; e++) sum += expf(to_f(z[e]) - max);
        int prev = -1;
        float prev_z = 0.f, chosen = 0.f;
        for (int s = 0; s < k; s++)
        {
            int best = -1;
            float best_z = 0.f;
            for (int e = 0; e < E; e++)
            {
                float v = to_f(z[e]);
                bool after = prev < 0 || v < prev_z || (v == prev_z && e > prev);
                if (after && (best < 0 || v > best_z)) { best = e; best_z = v; }   // strictly greater: the lower index keeps a tie
            }
            float p = expf(best_z - max) / sum;
            ids[r * k + s] = best;
            weights[r * k + s] = p;
            chosen += p;
            prev = best;
            prev_z = best_z;
        }
        if (normalize)
            for (int s = 0; s < k; s++) weights[r * k + s] /= chosen;
    }
}
#define MOE_ROUTE(n, T) \
    extern "C" __global__ void moe_route_##n(const T* logits, int N, int E, int k, int normalize, int* ids, float* weights) \
    { moe_route<T>(logits, N, E, k, normalize, ids, weights); }
FOR_FLOAT_TYPES(MOE_ROUTE)

// moe_align: one CTA of whole warps (CudaBackend launches 1,024 threads). A warp takes the experts warp, warp + warps, ...
// and for each reads the ids 32 at a time, a lane an id: a ballot of the lanes whose pair chose the expert gives its count
// (first pass); thread 0 sums the counts into offsets; then (second pass) each matching lane writes its pair at the expert's
// next slot plus the matches of the lanes below it, so every expert's slots stay in row order. No atomics: the result is
// one arrangement. A warp reads the ids twice for each of its experts: O(E N k / (32 warps)), in L1 and L2. Until session 37
// a thread took an expert and read every id one at a time (32 times the serial reads), which a 4,096-row prefill of
// fine-grained experts (32,768 pairs, 128 experts) now asks of it.
extern "C" __global__ void moe_align(const int* ids, int pairs, int E, int* offsets, int* slots)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int e = warp; e < E; e += warps)
    {
        int count = 0;
        for (int i0 = 0; i0 < pairs; i0 += 32)
        {
            const int i = i0 + lane;
            count += __popc(__ballot_sync(0xffffffffu, i < pairs && ids[i] == e));
        }
        if (lane == 0) offsets[e + 1] = count;
    }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        offsets[0] = 0;
        for (int e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    }
    __syncthreads();
    const unsigned below = (1u << lane) - 1u;                            // the lanes before this one
    for (int e = warp; e < E; e += warps)
    {
        int at = offsets[e];
        for (int i0 = 0; i0 < pairs; i0 += 32)
        {
            const int i = i0 + lane;
            const bool mine = i < pairs && ids[i] == e;
            const unsigned match = __ballot_sync(0xffffffffu, mine);
            if (mine) slots[at + __popc(match & below)] = i;
            at += __popc(match);
        }
    }
}

// The experts' products over a static grid (E experts, output tiles of MOE_FEATURES): a CTA reads its expert's range of
// pairs from offsets and returns at once when it is empty; otherwise each warp takes output features of the tile and, for
// MOE_ROWS of the expert's rows at a time, reads the feature's weight row once (coalesced over the lanes, 16-byte loads
// a lane where aligned) against all of them, F32 accumulation, warp sums. Decode steps give an expert few rows, so every
// weight is read about once; but x's rows are read again for every weight row and the sums run on CUDA cores, so wide
// experts at more than a row or two are bound by those (session 35, H200: Mixtral's experts, 14.3 ms a 64-row step of two
// layers against the host routing's 2.7; SparseMoeFeedForward.DeviceRoutingMaxExpertWeights keeps them on the host).
// The weights come from a table of addresses
// (IBackend.PrepareMoeExperts): floating-point experts (Q = 0) three words an expert, gate, up, down; quantized experts nine,
// each weight's values, scales and zeros (Q = 1: int8, a scale a row, no zeros; Q = 2: group-wise int4, eight nibbles a
// 32-bit word little-nibble first, a scale and a zero point a group of `group` columns), dequantized as they are read in fp32
// (int8 s q, int4 s (q - z)), each lane taking 8 columns (one word of nibbles, 8 bytes of int8) at a time.
#define MOE_FEATURES 32
#define MOE_ROWS 8

// Eight weights of row f at columns c .. c + 7 (c a multiple of 8) of a quantized weight t = {values, scales, zeros}, K
// columns, G groups of `group`, in fp32. int8's values are read as 8 bytes (K a multiple of 8, an aligned base).
template <int Q> __device__ __forceinline__ void moe_dequant8(const unsigned long long* t, i64 f, int c, int K, int G, int group, float* w)
{
    if (Q == 1)
    {
        uint2 u = *reinterpret_cast<const uint2*>((const signed char*)t[0] + f * K + c);
        const signed char* b = reinterpret_cast<const signed char*>(&u);
        float s = ((const float*)t[1])[f];
#pragma unroll
        for (int j = 0; j < 8; j++) w[j] = s * (float)b[j];
    }
    else
    {
        unsigned word = ((const unsigned*)t[0])[f * (K / 8) + c / 8];
        i64 g = f * G + c / group;
        float s = ((const float*)t[1])[g], z = (float)((const signed char*)t[2])[g];
#pragma unroll
        for (int j = 0; j < 8; j++) w[j] = s * ((float)((word >> (4 * j)) & 15u) - z);
    }
}

// One weight of row f at column c, in fp32 (the element-a-lane path).
template <int Q> __device__ __forceinline__ float moe_dequant1(const unsigned long long* t, i64 f, int c, int K, int G, int group)
{
    if (Q == 1) return ((const float*)t[1])[f] * (float)((const signed char*)t[0])[f * K + c];
    unsigned word = ((const unsigned*)t[0])[f * (K / 8) + c / 8];
    i64 g = f * G + c / group;
    return ((const float*)t[1])[g] * ((float)((word >> (4 * (c % 8))) & 15u) - (float)((const signed char*)t[2])[g]);
}

// Eight values of T from p, 16-byte aligned, in fp32.
template <typename T> __device__ __forceinline__ void moe_load8(const T* p, float* v)
{
#pragma unroll
    for (int j = 0; j < 8; j += Vec16<T>::N) load16(p + j, v + j);
}

// SWIGLU: out[p, f] = silu(x[slots[p] / k] gate_e[f]) * (x[slots[p] / k] up_e[f]), K = C inputs, O = F outputs.
// Otherwise (down): out[slots[p], f] = in[p] down_e[f], K = F inputs, O = C outputs.
template <typename T, bool SWIGLU, int Q> __device__ void moe_expert_product(const T* in, const unsigned long long* table, const int* offsets,
    const int* slots, int k, int K, int O, int group, T* out)
{
    int e = blockIdx.x;
    int begin = offsets[e], end = offsets[e + 1];
    if (begin >= end) return;                                           // no rows routed here: the whole CTA leaves
    constexpr int words = Q == 0 ? 3 : 9;                               // table words an expert
    const unsigned long long* t0 = table + words * e + (SWIGLU ? 0 : 2 * words / 3);
    const unsigned long long* t1 = SWIGLU ? table + words * e + words / 3 : t0;
    const T* w0 = (const T*)t0[0];
    const T* w1 = (const T*)t1[0];
    int G = (K + group - 1) / group;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int first = blockIdx.y * MOE_FEATURES, last = min(O, first + MOE_FEATURES);
    // Vector loads where every row of the weights and the input starts 16-byte aligned (K a multiple of 16 bytes, aligned
    // bases: the arena's weights and the step's buffers are); quantized weights: 8 columns a lane where K is a multiple of 8
    // and x's rows 16-byte aligned. Otherwise an element a lane.
    constexpr int V = Q == 0 ? Vec16<T>::N : 8;
    bool vec = Q == 0 ? K % V == 0 && aligned16(w0, w1, in)
                      : K % 8 == 0 && (K * (int)sizeof(T)) % 16 == 0 && aligned16(in, in, in)
                        && (Q == 2 || ((t0[0] | t1[0]) & 7ull) == 0);
    for (int f = first + warp; f < last; f += warps)
    {
        const T* a = w0 + (i64)f * K;
        const T* b = w1 + (i64)f * K;
        for (int p0 = begin; p0 < end; p0 += MOE_ROWS)
        {
            int rows = min(MOE_ROWS, end - p0);
            const T* x[MOE_ROWS];
            float g[MOE_ROWS], u[MOE_ROWS];
#pragma unroll
            for (int r = 0; r < MOE_ROWS; r++)
            {
                x[r] = r < rows ? in + (i64)(SWIGLU ? slots[p0 + r] / k : p0 + r) * K : in;
                g[r] = 0.f;
                u[r] = 0.f;
            }
            if (vec)                                                    // a lane's weights a step: 16 bytes (16-bit), 8 (int8), 4 (int4)
                for (int c = lane * V; c < K; c += 32 * V)
                {
                    float wa[V], wb[V], v[V];
                    if (Q == 0)
                    {
                        load16(a + c, wa);
                        if (SWIGLU) load16(b + c, wb);
                    }
                    else
                    {
                        moe_dequant8<Q == 0 ? 1 : Q>(t0, f, c, K, G, group, wa);
                        if (SWIGLU) moe_dequant8<Q == 0 ? 1 : Q>(t1, f, c, K, G, group, wb);
                    }
#pragma unroll
                    for (int r = 0; r < MOE_ROWS; r++)
                        if (r < rows)
                        {
                            if (Q == 0) load16(x[r] + c, v);
                            else moe_load8(x[r] + c, v);
#pragma unroll
                            for (int j = 0; j < V; j++)
                            {
                                g[r] += wa[j] * v[j];
                                if (SWIGLU) u[r] += wb[j] * v[j];
                            }
                        }
                }
            else
                for (int c = lane; c < K; c += 32)
                {
                    float wa = Q == 0 ? to_f(a[c]) : moe_dequant1<Q == 0 ? 1 : Q>(t0, f, c, K, G, group);
                    float wb = !SWIGLU ? 0.f : Q == 0 ? to_f(b[c]) : moe_dequant1<Q == 0 ? 1 : Q>(t1, f, c, K, G, group);
#pragma unroll
                    for (int r = 0; r < MOE_ROWS; r++)
                        if (r < rows)
                        {
                            float v = to_f(x[r][c]);
                            g[r] += wa * v;
                            if (SWIGLU) u[r] += wb * v;
                        }
                }
#pragma unroll
            for (int r = 0; r < MOE_ROWS; r++)
                if (r < rows)                                           // warp-uniform: the rows that exist only (decode: 1-2 an expert)
                {
                    g[r] = warp_sum(g[r]);
                    if (SWIGLU) u[r] = warp_sum(u[r]);
                }
            if (lane == 0)
                for (int r = 0; r < rows; r++)
                {
                    if (SWIGLU) out[(i64)(p0 + r) * O + f] = from_f<T>(silu(g[r]) * u[r]);
                    else out[(i64)slots[p0 + r] * O + f] = from_f<T>(g[r]);
                }
        }
    }
}
// moe_expert_{swiglu,down}_{T} (floating-point experts of T), moe_expert_{swiglu,down}_q8_{T} (int8), _q4_{T} (int4); the
// rows are T. `group` is the weights' group size (int4; unused otherwise).
#define MOE_EXPERTS_FORM(form, Q, n, T) \
    extern "C" __global__ void moe_expert_swiglu_##form##n(const T* x, const unsigned long long* table, const int* offsets, const int* slots, \
        int k, int C, int F, T* hidden, int group) \
    { moe_expert_product<T, true, Q>(x, table, offsets, slots, k, C, F, group, hidden); } \
    extern "C" __global__ void moe_expert_down_##form##n(const T* hidden, const unsigned long long* table, const int* offsets, const int* slots, \
        int C, int F, T* expert_out, int group) \
    { moe_expert_product<T, false, Q>(hidden, table, offsets, slots, 1, F, C, group, expert_out); }
#define MOE_EXPERTS(n, T) MOE_EXPERTS_FORM(, 0, n, T) MOE_EXPERTS_FORM(q8_, 1, n, T) MOE_EXPERTS_FORM(q4_, 2, n, T)
FOR_FLOAT_TYPES(MOE_EXPERTS)

// moe_combine: out[n, c] += sum over s in order of w[n, s] y[n k + s, c] (then + sigmoid(gate[n]) shared[n, c] when shared is
// given), F32 accumulation, one rounding to T. An element a thread: deterministic, no atomics.
template <typename T> __device__ void moe_combine(const T* y, const float* w, T* out, const T* shared, const T* gate, int N, int k, int C)
{
    GRID_STRIDE(i, (i64)N * C)
    {
        i64 n = i / C, c = i % C;
        float acc = to_f(out[i]);
        for (int s = 0; s < k; s++) acc += w[n * k + s] * to_f(y[(n * k + s) * C + c]);
        if (shared)
        {
            float z = to_f(gate[n]);
            acc += 1.f / (1.f + expf(-z)) * to_f(shared[i]);
        }
        out[i] = from_f<T>(acc);
    }
}
#define MOE_COMBINE(n, T) \
    extern "C" __global__ void moe_combine_##n(const T* y, const float* w, T* out, const T* shared, const T* gate, int N, int k, int C) \
    { moe_combine<T>(y, w, out, shared, gate, N, k, C); }
FOR_FLOAT_TYPES(MOE_COMBINE)

// The experts' products on tensor cores (moe_gemm_*; CudaBackendOptions.MoeExpertTensorCores): decode_gemm.cuh's decode
// product over one expert's rows a CTA column. The grid is (slices of K, row blocks of the outputs, E experts), each row
// block's slices one thread-block cluster as the decode products' (all of a cluster's CTAs take the same expert, so they
// leave or loop together); a CTA reads its expert's run of pairs from offsets and leaves at once when it is empty, else
// takes them 64 at a time: x's rows gathered into the stages (SWIGLU: the pairs' tokens, slots[p] / k; down: the pairs'
// hidden rows), the expert's weight tiles streamed once a chunk through mma.sync, and y's rows scattered (SWIGLU: the
// pairs' hidden rows; down: their slots). x's n8 tiles are chosen at run time from the chunk's rows (16, 32 or 64: the
// three instantiations in one kernel), since a recorded step's grid cannot know how the rows fall. Weights: 16-bit (Wt =
// T; the table's three words an expert), int8 (signed char, a scale a row: the int8 decode product) or int4 in groups of a
// multiple of 64 (unsigned, GS: the decode product by group sums); K a multiple of 64, rows 16-byte aligned (the host's
// checks). Against moe_expert_product above: every weight is read once a chunk as there, but x's rows once a k-tile a CTA
// (not once a weight row) and the products on tensor cores, so wide experts run at their weights' bytes.
template <typename T, typename Wt, bool SWIGLU, bool GS>
__device__ void moe_gemm(const T* in, const unsigned long long* table, const int* offsets, const int* slots, int k, int K, int O, int group, T* out)
{
    constexpr bool Q = sizeof(Wt) != sizeof(T), Q4 = sizeof(Wt) == 4;
    const int e = blockIdx.z, begin = offsets[e], end = offsets[e + 1];
    if (begin >= end) return;                                           // no rows routed here: the whole cluster leaves
    constexpr int words = Q ? 9 : 3;                                    // table words an expert
    const unsigned long long* t0 = table + words * e + (SWIGLU ? 0 : 2 * words / 3);
    const unsigned long long* t1 = SWIGLU ? table + words * e + words / 3 : t0;
    const Wt* w0 = (const Wt*)t0[0];
    const Wt* w1 = SWIGLU ? (const Wt*)t1[0] : nullptr;
    const float* s0 = Q ? (const float*)t0[1] : nullptr;
    const float* s1 = Q && SWIGLU ? (const float*)t1[1] : nullptr;
    const signed char* z0 = Q4 ? (const signed char*)t0[2] : nullptr;
    const signed char* z1 = Q4 && SWIGLU ? (const signed char*)t1[2] : nullptr;
    const i64 ldw = Q4 ? K / 8 : K;                                     // a weight row: K values, K bytes, or K / 8 words
    // offsets and slots (the alignment's output) are read before decode_gemm's pdl_wait: the host launches these kernels
    // without programmatic dependence (CudaBackend.LaunchMoeGemm), so they start after it has finished.
    for (int p0 = begin; p0 < end; p0 += 64)
    {
        const int M = min(64, end - p0);
        const ExpertRows rows{slots, p0, k, SWIGLU};
        if (p0 > begin) __syncthreads();                                // the last chunk's stages are read no more
        if (M <= 16)
            decode_gemm<T, Wt, 2, SWIGLU, GS, DG_ST, ExpertRows>(in, w0, w1, nullptr, nullptr, out, M, O, K, K, ldw, O, 1.f, 0.f, 0,
                                                                 nullptr, 0.f, s0, out, O, z0, group, s1, z1, rows);
        else if (M <= 32)
            decode_gemm<T, Wt, 4, SWIGLU, GS, DG_ST, ExpertRows>(in, w0, w1, nullptr, nullptr, out, M, O, K, K, ldw, O, 1.f, 0.f, 0,
                                                                 nullptr, 0.f, s0, out, O, z0, group, s1, z1, rows);
        else
            decode_gemm<T, Wt, 8, SWIGLU, GS, DG_ST, ExpertRows>(in, w0, w1, nullptr, nullptr, out, M, O, K, K, ldw, O, 1.f, 0.f, 0,
                                                                 nullptr, 0.f, s0, out, O, z0, group, s1, z1, rows);
    }
}
// moe_gemm_{swiglu,down}_{T} (16-bit experts), _q8_{T} (int8), _q4_{T} (int4 by group sums): moe_expert_{swiglu,down}_*'s
// arguments and results (the int4 form's differ in the last bits of T: q - zero is exact and each group's sums are scaled).
#define MOE_GEMM_FORM(form, Wt, GS, n, T) \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) moe_gemm_swiglu_##form##n(const T* x, const unsigned long long* table, \
        const int* offsets, const int* slots, int k, int C, int F, T* hidden, int group) \
    { moe_gemm<T, Wt, true, GS>(x, table, offsets, slots, k, C, F, group, hidden); } \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) moe_gemm_down_##form##n(const T* hidden, const unsigned long long* table, \
        const int* offsets, const int* slots, int C, int F, T* expert_out, int group) \
    { moe_gemm<T, Wt, false, GS>(hidden, table, offsets, slots, 1, F, C, group, expert_out); }
#define MOE_GEMM(n, T) MOE_GEMM_FORM(, T, false, n, T) MOE_GEMM_FORM(q8_, signed char, false, n, T) MOE_GEMM_FORM(q4_, unsigned, true, n, T)
// Compute capability 9.0 and up only (the slices' clusters; the host takes them there alone, CudaBackend.MoeGemmTakes): on
// older devices the module must still compile for the CUDA-core kernels above.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
MOE_GEMM(bf16, bf16)
MOE_GEMM(f16, f16)
#endif
