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

// moe_align: one CTA. A thread per expert counts its slots, thread 0 sums the counts into offsets, then each expert's thread
// writes its slots in ascending order (row order). O(E N k / threads) reads of the ids, which sit in L1: meant for the
// decode-size steps that take the device path (N k up to a few thousand). No atomics: the result is one arrangement.
extern "C" __global__ void moe_align(const int* ids, int pairs, int E, int* offsets, int* slots)
{
    for (int e = threadIdx.x; e < E; e += blockDim.x)
    {
        int count = 0;
        for (int i = 0; i < pairs; i++) count += ids[i] == e;
        offsets[e + 1] = count;
    }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        offsets[0] = 0;
        for (int e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x)
    {
        int at = offsets[e];
        for (int i = 0; i < pairs; i++)
            if (ids[i] == e) slots[at++] = i;
    }
}

// The experts' products over a static grid (E experts, output tiles of MOE_FEATURES): a CTA reads its expert's range of
// pairs from offsets and returns at once when it is empty; otherwise each warp takes output features of the tile and, for
// MOE_ROWS of the expert's rows at a time, reads the feature's weight row once (coalesced over the lanes, 16-byte loads
// a lane where aligned) against all of them, F32 accumulation, warp sums. Decode steps give an expert few rows, so every
// weight is read about once: the memory-bound case. The weights come from a table of addresses (IBackend.PrepareMoeExperts): expert e's gate, up, down.
#define MOE_FEATURES 32
#define MOE_ROWS 8

// SWIGLU: out[p, f] = silu(x[slots[p] / k] gate_e[f]) * (x[slots[p] / k] up_e[f]), K = C inputs, O = F outputs.
// Otherwise (down): out[slots[p], f] = in[p] down_e[f], K = F inputs, O = C outputs.
template <typename T, bool SWIGLU> __device__ void moe_expert_product(const T* in, const unsigned long long* table, const int* offsets,
    const int* slots, int k, int K, int O, T* out)
{
    int e = blockIdx.x;
    int begin = offsets[e], end = offsets[e + 1];
    if (begin >= end) return;                                           // no rows routed here: the whole CTA leaves
    const T* w0 = (const T*)table[3 * e + (SWIGLU ? 0 : 2)];
    const T* w1 = SWIGLU ? (const T*)table[3 * e + 1] : w0;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int first = blockIdx.y * MOE_FEATURES, last = min(O, first + MOE_FEATURES);
    // Vector loads where every row of the weights and the input starts 16-byte aligned (K a multiple of 16 bytes, aligned
    // bases: the arena's weights and the step's buffers are); otherwise an element a lane.
    constexpr int V = Vec16<T>::N;
    bool vec = K % V == 0 && aligned16(w0, w1, in);
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
            if (vec)                                                    // 16 bytes a lane: 512 bytes a warp per load
                for (int c = lane * V; c < K; c += 32 * V)
                {
                    float wa[V], wb[V], v[V];
                    load16(a + c, wa);
                    if (SWIGLU) load16(b + c, wb);
#pragma unroll
                    for (int r = 0; r < MOE_ROWS; r++)
                        if (r < rows)
                        {
                            load16(x[r] + c, v);
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
                    float wa = to_f(a[c]), wb = SWIGLU ? to_f(b[c]) : 0.f;
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
#define MOE_EXPERTS(n, T) \
    extern "C" __global__ void moe_expert_swiglu_##n(const T* x, const unsigned long long* table, const int* offsets, const int* slots, \
        int k, int C, int F, T* hidden) \
    { moe_expert_product<T, true>(x, table, offsets, slots, k, C, F, hidden); } \
    extern "C" __global__ void moe_expert_down_##n(const T* hidden, const unsigned long long* table, const int* offsets, const int* slots, \
        int C, int F, T* expert_out) \
    { moe_expert_product<T, false>(hidden, table, offsets, slots, 1, F, C, expert_out); }
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
