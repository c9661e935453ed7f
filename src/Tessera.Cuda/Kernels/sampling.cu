// ------------------------------------------------------------------------------------ sampling on the device
// ids[r] = the token drawn from row r of the logits by Tessera.Tensors.TokenSampling's rule (its remarks state it):
// temperature, top-k, top-p, then the Gumbel-max trick with noise hashed from (seed, position, token), so no state
// passes from one draw to the next and only the ids go back to the host. One CTA a row.
//
// The kept set is found without sorting. Top-k: a radix select of the k-th largest logit over the floats' 32-bit
// order-preserving keys (four passes of 256-bucket histograms over the keys that share the prefix found so far), the
// ties at it kept lowest id first. Top-p: the same select weighted by each candidate's probability, held as an integer
// of 2^40 times exp((logit - max) / temperature) so that the sums do not depend on the order of the atomics (a draw is
// reproducible); its target, p times the kept mass, comes from the first pass's histogram, which holds every kept
// candidate. The host sums the same probabilities in double, so the two keep different sets only where a cumulative
// probability lies within about 1e-7 of p.
//
// Survivors: after the first pass of the first select, only the kept candidates whose key's top byte is at or above the
// bucket it found can still be kept (every later pass, tie count and the Gumbel draw look at no other), and on a served
// row they are few (a peaked row's top-p 0.95 keeps a handful of buckets' worth; top-k 50, about 50). One more pass over
// the row writes them, (key, id), to shared memory (SampleSurvivors, SAMPLE_SURVIVORS of them), and the rest of the draw
// reads that list instead of the row: the H100 spent 634 us on 64 rows of 128,256 BF16 logits at top-p 0.95 with four
// select passes, the tie scan and the draw over the row, against 15 us for a copy of the logits (docs/benchmarks.md,
// session 31). Where they do not fit (a near-flat row at top-p 0.95 keeps most of it) the draw goes on over the row as
// before (top-p after such a top-k tries again at its own first pass); top-k knows its count from the histogram and skips
// the writing pass where they would not fit. The list is in no particular order
// (the atomics' order): the histograms are integer sums, the Gumbel argmax takes the lowest id on ties, and the n-th tie
// in id order is a radix select over the ties' ids, so the draw is the same token either way.
//
// The row is read 16 bytes a load where its start is 16-byte aligned (every row of a contiguous BF16 (M, 128,256)), the
// tail element by element; a thread's elements then come in another order, which nothing above depends on.
//
// params: (rows, 5) I32: temperature's float bits, top-k, top-p's float bits, the seed's low and high 32 bits.
// positions: (rows) I32, the position each drawn token takes in its sequence (the noise's counter).

#define SAMPLE_FIXED 1099511627776.0   // 2^40: a probability's fixed-point scale
#define SAMPLE_NOISE_BOUND 16.7f       // TokenSampling.NoiseBound: above every noise value (the largest is 16.64)
#ifndef SAMPLE_SURVIVORS
#define SAMPLE_SURVIVORS 4096          // (key, id) pairs a CTA keeps in shared memory: 32 KiB (the emulation builds it smaller too)
#endif

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
    double target;
};

// The survivors of a select's first pass (see the top): count of them written; above SAMPLE_SURVIVORS they did not fit.
struct SampleSurvivors
{
    unsigned key[SAMPLE_SURVIVORS];
    int id[SAMPLE_SURVIVORS];
    int count;
};

// A candidate's weight in the top-p select: its unnormalized probability in fixed point.
struct SampleMass
{
    static const bool counts = false;   // a histogram of these weights does not count the candidates
    float max, temperature;
    __device__ unsigned long long operator()(float v) const
    {
        return (unsigned long long)((double)expf((v - max) / temperature) * SAMPLE_FIXED);
    }
};
struct SampleOne
{
    static const bool counts = true;
    __device__ unsigned long long operator()(float) const { return 1ull; }
};

// f(v, key, id) for every candidate (the non-NaN logits) of ids [lo, hi) of the row, or for every entry of list where
// given (which holds the kept ones); each thread takes its share, in no particular order. lo a multiple of 8.
template <typename T, typename F>
__device__ __forceinline__ void sample_each(const T* row, int lo, int hi, const SampleSurvivors* list, F f)
{
    if (list)
    {
        for (int j = threadIdx.x; j < list->count; j += blockDim.x)
        {
            const unsigned k = list->key[j];
            f(sample_value(k), k, list->id[j]);
        }
        return;
    }
    int tail = lo;
    if ((((unsigned long long)(row + lo)) & 15ull) == 0)
    {
        const int N = Vec16<T>::N, first = lo / N, last = hi / N;   // 16-byte vectors [first, last)
        for (int q = first + (int)threadIdx.x; q < last; q += blockDim.x)
        {
            float e[Vec16<T>::N];
            load16(row + (i64)q * N, e);
#pragma unroll
            for (int j = 0; j < Vec16<T>::N; j++)
                if (e[j] == e[j]) f(e[j], sample_key(e[j]), q * N + j);
        }
        tail = max(lo, last * N);
    }
    for (int i = tail + (int)threadIdx.x; i < hi; i += blockDim.x)
    {
        const float v = to_f(row[i]);
        if (v == v) f(v, sample_key(v), i);
    }
}

// Writes the kept candidates of ids [lo, hi) whose key's top byte is at least bucket to list; true when they fit. A
// thread adds while the count has not passed the capacity, so the count passes it exactly when they do not fit.
template <typename T>
__device__ bool sample_compact(const T* row, int lo, int hi, const SampleKept& kept, int bucket, SampleSurvivors& list)
{
    if (threadIdx.x == 0) list.count = 0;
    __syncthreads();
    const unsigned floor = (unsigned)bucket << 24;
    sample_each(row, lo, hi, (const SampleSurvivors*)0, [&](float, unsigned k, int i) {
        if (k < floor || !kept.has(k, i) || *(volatile int*)&list.count > SAMPLE_SURVIVORS) return;
        const int at = atomicAdd(&list.count, 1);
        if (at < SAMPLE_SURVIVORS) { list.key[at] = k; list.id[at] = i; }
    });
    __syncthreads();
    const bool fits = list.count <= SAMPLE_SURVIVORS;
    __syncthreads();
    return fits;
}

// After the first pass of a select found bucket (hist: this CTA's histogram of that pass): whether the CTA's kept candidates
// at or above it are now in list. Where the weights count the candidates the histogram says how many there are, and a list
// too small for them is not written.
template <typename T, typename W>
__device__ bool sample_survivors(const T* row, int lo, int hi, const SampleKept& kept, W, int bucket,
                                 const unsigned long long* hist, SampleSurvivors& list)
{
    bool fits;
    if (W::counts)
    {
        unsigned long long n = 0;
        for (int b = bucket; b < 256; b++) n += hist[b];
        __syncthreads();   // every thread has read hist before the next pass clears it
        fits = n <= SAMPLE_SURVIVORS && sample_compact(row, lo, hi, kept, bucket, list);
    }
    else fits = sample_compact(row, lo, hi, kept, bucket, list);
#ifndef __CUDA_ARCH__
    if (threadIdx.x == 0) emu_tally(fits ? 0 : 1);   // the emulated tests count the rows that took each path
#endif
    return fits;
}

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
// reaches target (with fractional, target is fraction times the total, which the first pass's histogram holds; written to
// *found_target); *above = the total of the kept keys above it. False when the whole total stays below target. Without
// listed, the first pass writes the survivors to list and sets listed where they fit; with it, every pass reads the list.
template <typename T, typename W>
__device__ bool sample_select(const T* row, int V, SampleSurvivors& list, bool& listed, const SampleKept& kept, W weight,
                              double target, bool fractional, float fraction, SampleShared& s, unsigned* key,
                              unsigned long long* above, double* found_target)
{
    unsigned prefix = 0, mask = 0;
    unsigned long long total_above = 0;
    for (int shift = 24; shift >= 0; shift -= 8)
    {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) s.hist[b] = 0;
        __syncthreads();
        sample_each(row, 0, V, listed ? &list : (const SampleSurvivors*)0, [&](float v, unsigned k, int i) {
            if ((k & mask) == prefix && kept.has(k, i)) atomicAdd(&s.hist[(k >> shift) & 255u], weight(v));
        });
        __syncthreads();
        if (threadIdx.x == 0)
        {
            if (shift == 24 && fractional)
            {
                unsigned long long total = 0;
                for (int b = 0; b < 256; b++) total += s.hist[b];
                s.target = (double)fraction * (double)total;   // p times the kept mass
            }
            else s.target = target;
            int b = 255;
            unsigned long long a = total_above;
            for (; b >= 0; b--)
            {
                if ((double)(a + s.hist[b]) >= s.target) break;
                a += s.hist[b];
            }
            s.bucket = b;
            s.above = a;
        }
        __syncthreads();
        const int bucket = s.bucket;
        total_above = s.above;
        target = s.target;
        if (shift == 24 && fractional) *found_target = target;
        __syncthreads();
        if (bucket < 0)
        {
            listed = false;   // never after the first pass (each later pass's histogram sums to the bucket it refines)
            return false;
        }
        if (shift == 24 && !listed) listed = sample_survivors(row, 0, V, kept, weight, bucket, s.hist, list);
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

// sample_nth_tie over a survivors' list (every kept candidate of key K is in it): a radix select of the n-th smallest id
// among the list's kept entries of key K, 8 bits of the id a pass from the highest that V needs; V when there are fewer.
__device__ int sample_list_nth_tie(const SampleSurvivors& list, int V, const SampleKept& kept, unsigned K, int n, SampleShared& s)
{
    if (n < 1) return V;
    int top = 0;
    while (((unsigned)(V - 1) >> top) > 255u) top += 8;
    unsigned prefix = 0, mask = 0;
    for (int shift = top; shift >= 0; shift -= 8)
    {
        for (int b = threadIdx.x; b < 256; b += blockDim.x) s.hist[b] = 0;
        __syncthreads();
        for (int j = threadIdx.x; j < list.count; j += blockDim.x)
        {
            const unsigned i = (unsigned)list.id[j];
            if (list.key[j] == K && (i & mask) == prefix && kept.has(K, (int)i)) atomicAdd(&s.hist[(i >> shift) & 255u], 1ull);
        }
        __syncthreads();
        if (threadIdx.x == 0)
        {
            int b = 0;
            unsigned long long below = 0;
            for (; b < 256; b++)
            {
                if (below + s.hist[b] >= (unsigned long long)n) break;
                below += s.hist[b];
            }
            s.bucket = b < 256 ? b : -1;
            s.above = below;
        }
        __syncthreads();
        const int bucket = s.bucket;
        n -= (int)s.above;
        __syncthreads();
        if (bucket < 0) return V;
        prefix |= (unsigned)bucket << shift;
        mask |= 255u << shift;
    }
    return (int)prefix;
}

template <typename T>
__device__ void sample_rows(const T* logits, i64 ld, int V, const int* params, const int* positions, int* ids)
{
    __shared__ SampleShared s;
    __shared__ SampleSurvivors list;
    const T* row = logits + (i64)blockIdx.x * ld;
    const int* p = params + (i64)blockIdx.x * 5;
    const float temperature = __int_as_float(p[0]), top_p = __int_as_float(p[2]);
    const int top_k = p[1];
    const unsigned long long seed = (unsigned long long)(unsigned)p[3] | ((unsigned long long)(unsigned)p[4] << 32);

    // The argmax (the lowest id among the largest, NaN skipped) and the number of candidates (the non-NaN logits).
    float best = NEG_INF;
    int index = 0x7fffffff, count = 0;
    sample_each(row, 0, V, (const SampleSurvivors*)0, [&](float v, unsigned, int i) {
        count++;
        if (v > best || (v == best && i < index)) { best = v; index = i; }
    });
    sample_block_argmax(best, index, s);
    const int candidates = (int)sample_block_sum<unsigned long long>((unsigned long long)count, s);
    const bool infinite = (__float_as_uint(best) & 0x7fffffffu) == 0x7f800000u;
    if (!(temperature > 0) || candidates == 0 || infinite)
    {
        if (threadIdx.x == 0) ids[blockIdx.x] = candidates == 0 ? 0 : index;
        return;
    }

    SampleKept kept = {false, false, 0u, 0u, 0, 0};
    bool listed = false;   // whether list holds every kept candidate (the first select's first pass writes it)
    if (top_k > 0 && top_k < candidates)
    {
        unsigned key;
        unsigned long long above;
        double unused;
        sample_select(row, V, list, listed, kept, SampleOne{}, (double)top_k, false, 0.f, s, &key, &above, &unused);
        const int n = top_k - (int)above;
        kept.k_cut = listed ? sample_list_nth_tie(list, V, kept, key, n, s) : sample_nth_tie(row, V, kept, key, n, s);
        kept.k_key = key;
        kept.top_k = true;
    }
    if (top_p < 1.f)
    {
        const SampleMass mass{best, temperature};
        double target = 0;
        unsigned key;
        unsigned long long above;
        if (sample_select(row, V, list, listed, kept, mass, 0.0, true, top_p, s, &key, &above, &target))
        {
            // The ties at the cut key share one weight; keep the fewest of them (lowest ids first) that reach the target.
            const unsigned long long w = mass(sample_value(key));
            long long n = w == 0 ? 1 : (long long)((target - (double)above) / (double)w);   // then moved to the exact count
            if (n < 1) n = 1;
            while (n > 1 && (double)(above + (unsigned long long)(n - 1) * w) >= target) n--;
            while ((double)(above + (unsigned long long)n * w) < target && n < V) n++;
            kept.p_cut = listed ? sample_list_nth_tie(list, V, kept, key, (int)n, s) : sample_nth_tie(row, V, kept, key, (int)n, s);
            kept.p_key = key;
            kept.top_p = true;
        }
    }

    // The Gumbel-max draw among the kept candidates.
    const unsigned long long key = sample_row_key(seed, (long long)positions[blockIdx.x]);
    float top = NEG_INF;
    int chosen = 0x7fffffff;
    sample_each(row, 0, V, listed ? &list : (const SampleSurvivors*)0, [&](float v, unsigned k, int i) {
        if (!kept.has(k, i)) return;
        const float scaled = sub_rn(v, best) / temperature;
        if (chosen != 0x7fffffff && add_rn(scaled, SAMPLE_NOISE_BOUND) < top) return;   // cannot win: no noise draw needed
        const float score = add_rn(scaled, sample_noise(key, i));
        if (chosen == 0x7fffffff || score > top || (score == top && i < chosen)) { top = score; chosen = i; }
    });
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
