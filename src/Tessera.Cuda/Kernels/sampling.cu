// ------------------------------------------------------------------------------------ sampling on the device
// ids[r] = the token drawn from row r of the logits by Tessera.Tensors.TokenSampling's rule (its remarks state it):
// temperature, top-k, top-p, then the Gumbel-max trick with noise hashed from (seed, position, token), so no state
// passes from one draw to the next and only the ids go back to the host. One CTA a row.
//
// The kept set is found without sorting. Top-k: a radix select of the k-th largest logit over the floats' 32-bit
// order-preserving keys (four passes of 256-bucket histograms over the keys that share the prefix found so far), the
// ties at it kept lowest id first. Top-p: the same select weighted by each candidate's probability, held as an integer
// of 2^40 times exp((logit - max) / temperature) so that the sums do not depend on the order of the atomics (a draw is
// reproducible). The host sums the same probabilities in double, so the two keep different sets only where a cumulative
// probability lies within about 1e-7 of p.
//
// params: (rows, 5) I32: temperature's float bits, top-k, top-p's float bits, the seed's low and high 32 bits.
// positions: (rows) I32, the position each drawn token takes in its sequence (the noise's counter).

#define SAMPLE_FIXED 1099511627776.0   // 2^40: a probability's fixed-point scale
#define SAMPLE_NOISE_BOUND 16.7f       // TokenSampling.NoiseBound: above every noise value (the largest is 16.64)

__device__ __forceinline__ unsigned long long sample_mix(unsigned long long z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// TokenSampling.RowKey and TokenSampling.Noise.
__device__ __forceinline__ unsigned long long sample_row_key(unsigned long long seed, long long position)
{
    return sample_mix(seed + 0x9E3779B97F4A7C15ull * (unsigned long long)(position + 1));
}
__device__ __forceinline__ float sample_noise(unsigned long long key, int token)
{
    const unsigned long long h = sample_mix(key ^ (0xD1B54A32D192ED03ull * (unsigned long long)(token + 1)));
    const float u = (float)(2u * (unsigned)(h >> 41) + 1u) * 5.9604644775390625e-8f;   // (2k + 1) 2^-24, exact
    return -logf(-logf(u));
}

// A float's key: larger floats have larger keys (NaN excluded by the callers).
__device__ __forceinline__ unsigned sample_key(float v)
{
    const unsigned b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float sample_value(unsigned key)
{
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

// Which candidates the filters found so far keep: above a cut key, or at it with an id up to the cut id.
struct SampleKept
{
    bool top_k, top_p;
    unsigned k_key, p_key;
    int k_cut, p_cut;
    __device__ bool has(unsigned key, int i) const
    {
        return (!top_k || key > k_key || (key == k_key && i <= k_cut)) && (!top_p || key > p_key || (key == p_key && i <= p_cut));
    }
};

struct SampleShared
{
    unsigned long long hist[256];
    unsigned long long sums[32];
    float best[32];
    int index[32];
    int scan[32];
    int bucket, cut;
    unsigned long long above;
};

// A candidate's weight in the top-p select: its unnormalized probability in fixed point.
struct SampleMass
{
    float max, temperature;
    __device__ unsigned long long operator()(float v) const
    {
        return (unsigned long long)((double)expf((v - max) / temperature) * SAMPLE_FIXED);
    }
};
struct SampleOne
{
    __device__ unsigned long long operator()(float) const { return 1ull; }
};

// The block's sum of a 64-bit value (an integer, or a double added in the threads' fixed order); every thread gets it.
template <typename U> __device__ U sample_block_sum(U v, SampleShared& s)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    U* sums = reinterpret_cast<U*>(s.sums);
    if (lane == 0) sums[warp] = v;
    __syncthreads();
    U total = 0;
    for (int w = 0; w < warps; w++) total += sums[w];
    __syncthreads();
    return total;
}

// The block's argmax of (value, index), the lowest index on ties; every thread gets it.
__device__ void sample_block_argmax(float& best, int& index, SampleShared& s)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        const float ob = __shfl_xor_sync(FULL_MASK, best, o);
        const int oi = __shfl_xor_sync(FULL_MASK, index, o);
        if (ob > best || (ob == best && oi < index)) { best = ob; index = oi; }
    }
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    if (lane == 0) { s.best[warp] = best; s.index[warp] = index; }
    __syncthreads();
    best = s.best[0];
    index = s.index[0];
    for (int w = 1; w < warps; w++)
        if (s.best[w] > best || (s.best[w] == best && s.index[w] < index)) { best = s.best[w]; index = s.index[w]; }
    __syncthreads();
}

// The sum of c over the threads before this one (thread order).
__device__ int sample_exclusive_scan(int c, SampleShared& s)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int inclusive = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1)
    {
        const int other = __shfl_sync(FULL_MASK, inclusive, lane >= o ? lane - o : 0);
        if (lane >= o) inclusive += other;
    }
    if (lane == 31) s.scan[warp] = inclusive;
    __syncthreads();
    int before = 0;
    for (int w = 0; w < warp; w++) before += s.scan[w];
    __syncthreads();
    return before + inclusive - c;
}

// The key at which the running total of weight(v) over the kept candidates, taken from the largest key down, first
// reaches target; *above = the total of the kept keys above it. False when the whole total stays below target.
template <typename T, typename W>
__device__ bool sample_select(const T* row, int V, const SampleKept& kept, W weight, double target, SampleShared& s,
                              unsigned* key, unsigned long long* above)
{
    unsigned prefix = 0, mask = 0;
    unsigned long long total_above = 0;
    for (int shift = 24; shift >= 0; shift -= 8)
    {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) s.hist[b] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += blockDim.x)
        {
            const float v = to_f(row[i]);
            if (v != v) continue;
            const unsigned k = sample_key(v);
            if ((k & mask) != prefix || !kept.has(k, i)) continue;
            atomicAdd(&s.hist[(k >> shift) & 255u], weight(v));
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            int b = 255;
            unsigned long long a = total_above;
            for (; b >= 0; b--)
            {
                if ((double)(a + s.hist[b]) >= target) break;
                a += s.hist[b];
            }
            s.bucket = b;
            s.above = a;
        }
        __syncthreads();
        const int bucket = s.bucket;
        total_above = s.above;
        __syncthreads();
        if (bucket < 0) return false;
        prefix |= (unsigned)bucket << shift;
        mask |= 255u << shift;
    }
    *key = prefix;
    *above = total_above;
    return true;
}

// The id of the n-th (from 1) kept candidate of key K in id order; V when there are fewer (keeps them all). Each thread
// counts a contiguous range of ids, so that the ranges' order is the ids' order.
template <typename T>
__device__ int sample_nth_tie(const T* row, int V, const SampleKept& kept, unsigned K, int n, SampleShared& s)
{
    const int chunk = (V + (int)blockDim.x - 1) / (int)blockDim.x;
    const int lo = min(V, (int)threadIdx.x * chunk), hi = min(V, lo + chunk);
    int c = 0;
    for (int i = lo; i < hi; i++)
    {
        const float v = to_f(row[i]);
        if (v == v && sample_key(v) == K && kept.has(K, i)) c++;
    }
    if (threadIdx.x == 0) s.cut = V;
    const int before = sample_exclusive_scan(c, s);   // its barriers order the write above before the one below
    if (before < n && n <= before + c)
    {
        int need = n - before;
        for (int i = lo; i < hi; i++)
        {
            const float v = to_f(row[i]);
            if (v == v && sample_key(v) == K && kept.has(K, i) && --need == 0) { s.cut = i; break; }
        }
    }
    __syncthreads();
    const int cut = s.cut;
    __syncthreads();
    return cut;
}

template <typename T>
__device__ void sample_rows(const T* logits, i64 ld, int V, const int* params, const int* positions, int* ids)
{
    __shared__ SampleShared s;
    const T* row = logits + (i64)blockIdx.x * ld;
    const int* p = params + (i64)blockIdx.x * 5;
    const float temperature = __int_as_float(p[0]), top_p = __int_as_float(p[2]);
    const int top_k = p[1];
    const unsigned long long seed = (unsigned long long)(unsigned)p[3] | ((unsigned long long)(unsigned)p[4] << 32);

    // The argmax (the lowest id among the largest, NaN skipped) and the number of candidates (the non-NaN logits).
    float best = NEG_INF;
    int index = 0x7fffffff, count = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
    {
        const float v = to_f(row[i]);
        if (v != v) continue;
        count++;
        if (v > best || (v == best && i < index)) { best = v; index = i; }
    }
    sample_block_argmax(best, index, s);
    const int candidates = (int)sample_block_sum<unsigned long long>((unsigned long long)count, s);
    const bool infinite = (__float_as_uint(best) & 0x7fffffffu) == 0x7f800000u;
    if (!(temperature > 0) || candidates == 0 || infinite)
    {
        if (threadIdx.x == 0) ids[blockIdx.x] = candidates == 0 ? 0 : index;
        return;
    }

    SampleKept kept = {false, false, 0u, 0u, 0, 0};
    if (top_k > 0 && top_k < candidates)
    {
        unsigned key;
        unsigned long long above;
        sample_select(row, V, kept, SampleOne{}, (double)top_k, s, &key, &above);
        kept.k_cut = sample_nth_tie(row, V, kept, key, top_k - (int)above, s);
        kept.k_key = key;
        kept.top_k = true;
    }
    if (top_p < 1.f)
    {
        const SampleMass mass{best, temperature};
        unsigned long long z = 0;
        for (int i = threadIdx.x; i < V; i += blockDim.x)
        {
            const float v = to_f(row[i]);
            if (v == v && kept.has(sample_key(v), i)) z += mass(v);
        }
        z = sample_block_sum<unsigned long long>(z, s);
        const double target = (double)top_p * (double)z;
        unsigned key;
        unsigned long long above;
        if (sample_select(row, V, kept, mass, target, s, &key, &above))
        {
            // The ties at the cut key share one weight; keep the fewest of them (lowest ids first) that reach the target.
            const unsigned long long w = mass(sample_value(key));
            long long n = w == 0 ? 1 : (long long)((target - (double)above) / (double)w);   // then moved to the exact count
            if (n < 1) n = 1;
            while (n > 1 && (double)(above + (unsigned long long)(n - 1) * w) >= target) n--;
            while ((double)(above + (unsigned long long)n * w) < target && n < V) n++;
            kept.p_cut = sample_nth_tie(row, V, kept, key, (int)n, s);
            kept.p_key = key;
            kept.top_p = true;
        }
    }

    // The Gumbel-max draw among the kept candidates.
    const unsigned long long key = sample_row_key(seed, (long long)positions[blockIdx.x]);
    float top = NEG_INF;
    int chosen = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
    {
        const float v = to_f(row[i]);
        if (v != v || !kept.has(sample_key(v), i)) continue;
        const float scaled = sub_rn(v, best) / temperature;
        if (chosen != 0x7fffffff && add_rn(scaled, SAMPLE_NOISE_BOUND) < top) continue;   // cannot win: no noise draw needed
        const float score = add_rn(scaled, sample_noise(key, i));
        if (chosen == 0x7fffffff || score > top || (score == top && i < chosen)) { top = score; chosen = i; }
    }
    sample_block_argmax(top, chosen, s);
    if (threadIdx.x == 0) ids[blockIdx.x] = chosen == 0x7fffffff ? index : chosen;
}

#define SAMPLE_ROWS(n, T)                                                                                         \
    extern "C" __global__ void sample_rows_##n(const T* logits, i64 ld, int V, const int* params, const int* positions, \
                                               int* ids)                                                           \
    {                                                                                                             \
        sample_rows<T>(logits, ld, V, params, positions, ids);                                                    \
    }
FOR_FLOAT_TYPES(SAMPLE_ROWS)

// ------------------------------------------------------------------------------------ log-probabilities
// logprobs[r, 0] = log softmax(row r)[ids[r]]; for j < count, top_ids[r, j] = the column of the row's (j+1)-th largest logit
// (the lower column first on ties) and logprobs[r, 1 + j] its log-probability: Tessera.Tensors.LogProbabilities's
// definition (NaN skipped), which the host computes in double. Here each thread sums its exponentials in float and the
// block adds them in double in a fixed order (about 1e-7 relative of the host's); the top columns are one block argmax a
// rank, each among the logits below the previous one in (logit descending, column ascending) order. One CTA a row.
template <typename T>
__device__ void token_logprobs(const T* logits, i64 ld, int V, const int* ids, int count, float* logprobs, int* top_ids)
{
    __shared__ SampleShared s;
    const T* row = logits + (i64)blockIdx.x * ld;
    float best = NEG_INF;
    int index = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x)
    {
        const float v = to_f(row[i]);
        if (v != v) continue;
        if (v > best || (v == best && i < index)) { best = v; index = i; }
    }
    sample_block_argmax(best, index, s);
    double partial = 0;
    if (best > NEG_INF)
    {
        float sum = 0.f;
        for (int i = threadIdx.x; i < V; i += blockDim.x)
        {
            const float v = to_f(row[i]);
            if (v == v) sum += expf(v - best);
        }
        partial = sum;
    }
    const double lse = (double)best + log(sample_block_sum<double>(partial, s));
    float* out = logprobs + (i64)blockIdx.x * (1 + count);
    if (threadIdx.x == 0) out[0] = (float)((double)to_f(row[ids[blockIdx.x]]) - lse);
    float previous = __int_as_float(0x7f800000);   // +inf: every logit lies below it in the order
    int previous_index = -1;
    for (int j = 0; j < count; j++)
    {
        float b = NEG_INF;
        int bi = 0x7fffffff;
        for (int i = threadIdx.x; i < V; i += blockDim.x)
        {
            const float v = to_f(row[i]);
            if (v != v || !(v < previous || (v == previous && i > previous_index))) continue;
            if (v > b || (v == b && i < bi)) { b = v; bi = i; }
        }
        sample_block_argmax(b, bi, s);
        if (threadIdx.x == 0)
        {
            top_ids[(i64)blockIdx.x * count + j] = bi == 0x7fffffff ? 0 : bi;
            out[1 + j] = bi == 0x7fffffff ? NEG_INF : (float)((double)b - lse);
        }
        previous = b;
        previous_index = bi;
    }
}

#define TOKEN_LOGPROBS(n, T)                                                                                      \
    extern "C" __global__ void token_logprobs_##n(const T* logits, i64 ld, int V, const int* ids, int count,     \
                                                  float* logprobs, int* top_ids)                                 \
    {                                                                                                             \
        token_logprobs<T>(logits, ld, V, ids, count, logprobs, top_ids);                                          \
    }
FOR_FLOAT_TYPES(TOKEN_LOGPROBS)

// ------------------------------------------------------------------------------------ penalties and logit bias
// x[r, columns[e]] += values[e] for e in [starts[r], starts[r + 1]): a row's columns are distinct, so its entries are
// added in parallel, each once in fp32 as the host adds them. One CTA a row.
extern "C" __global__ void add_to_columns(float* x, i64 ld, const int* starts, const int* columns, const float* values)
{
    float* row = x + (i64)blockIdx.x * ld;
    for (int e = starts[blockIdx.x] + threadIdx.x; e < starts[blockIdx.x + 1]; e += blockDim.x) row[columns[e]] += values[e];
}
