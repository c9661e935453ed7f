// ------------------------------------------------------------------------------------ sampling, a row over a cluster
// Compiled after sampling.cu (KernelLibrary.FilesBefore), whose helpers it uses, as a module of its own: the one-CTA kernels
// of sampling.cu stay loadable (CudaBackendOptions.SamplingClusterCtas=0) whatever becomes of this one.
//
// The same draw (sample_rows's rule, token for token) with each row split over a thread-block cluster of C CTAs (sm_90),
// so that a decode batch of a few dozen rows fills the machine: CTA r of a cluster takes the r-th of C equal runs of the
// row's ids (whole warps of 32), and every reduction of sample_rows becomes the CTA's own followed by an exchange through
// distributed shared memory: the argmax and count, the select's 256-bucket histograms (each CTA adds the C histograms,
// integers, so the order does not matter), the ties' counts (the runs are in id order, so the ties before a CTA's run are
// the counts of the ranks below it) and the Gumbel argmax. Top-p's target (p times the kept mass) comes from its select's
// first histogram, which holds every kept candidate, rather than from a pass of its own. Each exchange writes one of two
// slots and has one cluster barrier: a CTA writes a slot again only two barriers later, when every CTA has read it. The
// clusters walk the rows (the grid is as many clusters as are resident at once).
//
// Survivors (sampling.cu's top): after the first select's first pass each CTA writes the kept candidates of its run at or
// above the bucket found to its own list, and reads that list instead of its run for the rest of the draw; a CTA whose
// survivors do not fit reads its run as before. The choice is the CTA's own: its histograms, tie counts and argmax are the
// same integers and (value, id) pairs either way, so the exchanges do not change. A cluster of C CTAs holds up to C times
// SAMPLE_SURVIVORS. Runs start at multiples of 32 ids, so a CTA reads its run 16 bytes a load wherever the row is aligned.
//
// The histograms' atomics: a near-flat row puts most keys of a warp in the same bucket of the first pass (its top byte is
// the sign and the exponent's high bits), where 32 lanes' shared-memory atomics on one address serialize. The lanes
// sharing the first pending lane's bucket add their weights in registers and one lane adds the sum, twice a warp step;
// the lanes left add alone.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 900
struct SampleClusterShared
{
    SampleShared block;                    // the CTA's own reductions
    unsigned long long hist[2][256];       // this CTA's histogram of a pass, read by the cluster's CTAs (two slots)
    unsigned long long words[2][4];        // this CTA's values of an exchange, read by the cluster's CTAs (two slots)
    unsigned long long total[256];         // the cluster's histogram of the pass
    double target;                         // the select's target, where its first pass finds it
    SampleSurvivors list;                  // this CTA's survivors of the row's first select (sampling.cu's top)
};

// The 64-bit word at local's offset in the shared memory of the cluster's CTA `rank` (distributed shared memory).
__device__ __forceinline__ unsigned long long sample_remote(const unsigned long long* local, unsigned rank)
{
#ifdef __CUDA_ARCH__
    unsigned remote;
    unsigned long long v;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_u32(local)), "r"(rank));
    asm volatile("ld.shared::cluster.u64 %0, [%1];" : "=l"(v) : "r"(remote) : "memory");
    return v;
#else
    return emu_cluster_load_u64(local, rank);
#endif
}

// Every CTA of the cluster here, its shared-memory writes visible to the others.
__device__ __forceinline__ void sample_cluster_sync()
{
    cluster_arrive();
    cluster_wait();
}

// The cluster's argmax of (best, index), the lowest index on ties, and sum of count; every thread of every CTA gets them.
__device__ void sample_cluster_best(float& best, int& index, unsigned long long& count, SampleClusterShared& s, int& slot,
                                    unsigned ctas)
{
    sample_block_argmax(best, index, s.block);
    count = sample_block_sum<unsigned long long>(count, s.block);
    if (threadIdx.x == 0)
    {
        s.words[slot][0] = (unsigned long long)__float_as_uint(best) | ((unsigned long long)(unsigned)index << 32);
        s.words[slot][1] = count;
    }
    sample_cluster_sync();
    count = 0;
    for (unsigned r = 0; r < ctas; r++)
    {
        const unsigned long long w = sample_remote(&s.words[slot][0], r);
        const float b = __uint_as_float((unsigned)w);
        const int i = (int)(unsigned)(w >> 32);
        if (r == 0 || b > best || (b == best && i < index)) { best = b; index = i; }
        count += sample_remote(&s.words[slot][1], r);
    }
    slot ^= 1;
}

// hist[bucket] += w for each lane that takes part (warp-collective: every lane of the warp calls it).
__device__ __forceinline__ void sample_warp_histogram_add(unsigned long long* hist, bool take, unsigned bucket, unsigned long long w)
{
    const int lane = threadIdx.x & 31;
    unsigned pending = __ballot_sync(FULL_MASK, take);
    for (int round = 0; round < 2 && pending != 0; round++)
    {
        const int leader = __ffs((int)pending) - 1;
        const unsigned shared_bucket = __shfl_sync(FULL_MASK, bucket, leader);
        const bool mine = take && bucket == shared_bucket;
        unsigned long long part = mine ? w : 0ull;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(FULL_MASK, part, o);
        if (lane == leader) atomicAdd(&hist[shared_bucket], part);
        if (mine) take = false;
        pending = __ballot_sync(FULL_MASK, take);
    }
    if (take) atomicAdd(&hist[bucket], w);
}

// g(take, v, key, id) for ids [lo, hi) of the row (16 bytes a load where aligned, as sample_each), or for the entries of
// list where given, whole warps a step: every lane of a warp makes the same calls, take false where it has no candidate
// (v and key are then not read), as sample_warp_histogram_add needs.
template <typename T, typename G>
__device__ __forceinline__ void sample_each_warp(const T* row, int lo, int hi, const SampleSurvivors* list, G g)
{
    const int lane = threadIdx.x & 31, first_lane = (int)(threadIdx.x & ~31u);
    if (list)
    {
        for (int base = first_lane; base < list->count; base += blockDim.x)
        {
            const int j = base + lane;
            const bool take = j < list->count;
            const unsigned k = take ? list->key[j] : 0u;
            g(take, sample_value(k), k, take ? list->id[j] : 0);
        }
        return;
    }
    int tail = lo;
    if ((((unsigned long long)(row + lo)) & 15ull) == 0)
    {
        const int N = Vec16<T>::N, first = lo / N, last = hi / N;   // 16-byte vectors [first, last)
        for (int base = first + first_lane; base < last; base += blockDim.x)
        {
            const int q = base + lane;
            float e[Vec16<T>::N] = {};
            if (q < last) load16(row + (i64)q * N, e);
#pragma unroll
            for (int j = 0; j < Vec16<T>::N; j++)
            {
                const bool take = q < last && e[j] == e[j];
                g(take, e[j], take ? sample_key(e[j]) : 0u, q * N + j);
            }
        }
        tail = max(lo, last * N);
    }
    for (int base = tail + first_lane; base < hi; base += blockDim.x)
    {
        const int i = base + lane;
        const float v = i < hi ? to_f(row[i]) : 0.f;
        const bool take = i < hi && v == v;
        g(take, v, take ? sample_key(v) : 0u, i);
    }
}

// Warp 0: the first bucket, from 255 down, at which above plus the running total of s.total reaches target (the serial
// scan of sample_select, each lane taking 8 buckets): s.block.bucket and s.block.above (the total above it), or -1. With
// fraction above 0 (top-p's first pass, whose histogram holds every kept candidate), the target is fraction times the
// histogram's total, written to s.target.
__device__ void sample_find_bucket(SampleClusterShared& s, unsigned long long above, double target, float fraction)
{
    const int lane = threadIdx.x & 31;
    unsigned long long h[8], sum = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) { h[j] = s.total[255 - 8 * lane - j]; sum += h[j]; }
    unsigned long long inclusive = sum;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1)
    {
        const unsigned long long other = __shfl_up_sync(FULL_MASK, inclusive, o);
        if (lane >= o) inclusive += other;
    }
    if (fraction > 0.f)
    {
        target = (double)fraction * (double)__shfl_sync(FULL_MASK, inclusive, 31);   // top-p times the kept mass
        if (lane == 0) s.target = target;
    }
    unsigned long long a = above + inclusive - sum;
    int found = -1;
    unsigned long long found_above = 0;
#pragma unroll
    for (int j = 0; j < 8; j++)
        if (found < 0)
        {
            if ((double)(a + h[j]) >= target) { found = 255 - 8 * lane - j; found_above = a; }
            else a += h[j];
        }
    const unsigned hit = __ballot_sync(FULL_MASK, found >= 0);
    if (hit == 0)
    {
        if (lane == 31) { s.block.bucket = -1; s.block.above = a; }
    }
    else if (lane == __ffs((int)hit) - 1)
    {
        s.block.bucket = found;
        s.block.above = found_above;
    }
}

// sample_select over the cluster: this CTA's ids [lo, hi), the histograms exchanged. With fraction above 0 the target is
// fraction times the total weight of the kept candidates, which the first pass's histogram holds (top-p needs no pass of
// its own for it), and *found_target is set to it. *at = the total weight of the kept candidates of the key found (the
// last pass's bucket): their count times their one weight. Survivors as sample_select's, each CTA its own run's in its
// own list (listed is the CTA's: a CTA whose survivors do not fit reads its run of the row, the others their lists).
template <typename T, typename W>
__device__ bool sample_cluster_select(const T* row, int lo, int hi, bool& listed, const SampleKept& kept, W weight, double target,
                                      float fraction, SampleClusterShared& s, int& slot, unsigned ctas, unsigned* key,
                                      unsigned long long* above, double* found_target, unsigned long long* at)
{
    unsigned prefix = 0, mask = 0;
    unsigned long long total_above = 0;
    for (int shift = 24; shift >= 0; shift -= 8)
    {
        unsigned long long* hist = s.hist[slot];
        for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
        __syncthreads();
        sample_each_warp(row, lo, hi, listed ? &s.list : (const SampleSurvivors*)0, [&](bool take, float v, unsigned k, int i) {
            take = take && (k & mask) == prefix && kept.has(k, i);
            sample_warp_histogram_add(hist, take, take ? (k >> shift) & 255u : 0u, take ? weight(v) : 0ull);
        });
        sample_cluster_sync();
        for (int b = threadIdx.x; b < 256; b += blockDim.x)
        {
            unsigned long long t = 0;
            for (unsigned r = 0; r < ctas; r++) t += sample_remote(&hist[b], r);
            s.total[b] = t;
        }
        slot ^= 1;
        __syncthreads();
        if (threadIdx.x < 32) sample_find_bucket(s, total_above, target, shift == 24 ? fraction : 0.f);
        __syncthreads();
        const int bucket = s.block.bucket;
        total_above = s.block.above;
        if (shift == 24 && fraction > 0.f) target = *found_target = s.target;
        if (shift == 0 && bucket >= 0) *at = s.total[bucket];
        __syncthreads();
        if (bucket < 0)
        {
            listed = false;
            return false;
        }
        // The CTA's survivors (hist, its own histogram of the pass, stays unwritten until the slot's next exchange).
        if (shift == 24 && !listed) listed = sample_survivors(row, lo, hi, kept, weight, bucket, hist, s.list);
        prefix |= (unsigned)bucket << shift;
        mask |= 255u << shift;
    }
    *key = prefix;
    *above = total_above;
    return true;
}

// sample_nth_tie over the cluster: the id of the n-th (from 1) kept candidate of key K in id order, V when there are fewer.
// A listed CTA counts its ties in its list and finds the one it holds by sample_list_nth_tie; the exchanges are the same.
template <typename T>
__device__ int sample_cluster_nth_tie(const T* row, int lo, int hi, int V, bool listed, const SampleKept& kept, unsigned K, int n,
                                      SampleClusterShared& s, int& slot, unsigned ctas, unsigned rank)
{
    if (listed)
    {
        unsigned long long c = 0;
        for (int j = threadIdx.x; j < s.list.count; j += blockDim.x)
            if (s.list.key[j] == K && kept.has(K, s.list.id[j])) c++;
        c = sample_block_sum<unsigned long long>(c, s.block);
        if (threadIdx.x == 0) s.words[slot][0] = c;   // this CTA's count
        sample_cluster_sync();
        int earlier = 0;
        for (unsigned r = 0; r < rank; r++) earlier += (int)sample_remote(&s.words[slot][0], r);
        slot ^= 1;
        const int m = n - earlier;
        const int mine = 0 < m && (unsigned long long)m <= c ? sample_list_nth_tie(s.list, V, kept, K, m, s.block) : V;
        if (threadIdx.x == 0) s.words[slot][0] = (unsigned long long)mine;
        sample_cluster_sync();
        int cut = V;
        for (unsigned r = 0; r < ctas; r++) cut = min(cut, (int)sample_remote(&s.words[slot][0], r));
        slot ^= 1;
        return cut;
    }
    const int length = hi - lo, chunk = (length + (int)blockDim.x - 1) / (int)blockDim.x;
    const int a = lo + min(length, (int)threadIdx.x * chunk), b = lo + min(length, (int)threadIdx.x * chunk + chunk);
    int c = 0;
    for (int i = a; i < b; i++)
    {
        const float v = to_f(row[i]);
        if (v == v && sample_key(v) == K && kept.has(K, i)) c++;
    }
    if (threadIdx.x == 0) s.block.cut = V;
    const int before = sample_exclusive_scan(c, s.block);   // its barriers order the write above before the ones below
    if (threadIdx.x == blockDim.x - 1) s.words[slot][0] = (unsigned long long)(before + c);   // this CTA's count
    sample_cluster_sync();
    int earlier = 0;   // the ties in the runs of the ranks below this one
    for (unsigned r = 0; r < rank; r++) earlier += (int)sample_remote(&s.words[slot][0], r);
    slot ^= 1;
    const int m = n - earlier - before;
    if (0 < m && m <= c)
    {
        int need = m;
        for (int i = a; i < b; i++)
        {
            const float v = to_f(row[i]);
            if (v == v && sample_key(v) == K && kept.has(K, i) && --need == 0) { s.block.cut = i; break; }
        }
    }
    __syncthreads();
    if (threadIdx.x == 0) s.words[slot][0] = (unsigned long long)s.block.cut;
    sample_cluster_sync();
    int cut = V;
    for (unsigned r = 0; r < ctas; r++) cut = min(cut, (int)sample_remote(&s.words[slot][0], r));
    slot ^= 1;
    return cut;
}

template <typename T>
__device__ void sample_rows_cluster(const T* logits, i64 ld, int V, int rows, const int* params, const int* positions, int* ids)
{
#ifdef __CUDA_ARCH__
    __shared__ SampleClusterShared shared_state;
    SampleClusterShared& s = shared_state;
#else
    SampleClusterShared& s = *reinterpret_cast<SampleClusterShared*>(emu_block_shared_floats((int)(sizeof(SampleClusterShared) / 4 + 2)));
#endif
    const unsigned ctas = cluster_ctas(), rank = cluster_rank();
    const int per = ((V + (int)ctas - 1) / (int)ctas + 31) / 32 * 32;
    const int lo = min(V, (int)rank * per), hi = min(V, lo + per);
    int slot = 0;
    for (int r = (int)(blockIdx.x / ctas); r < rows; r += (int)(gridDim.x / ctas))
    {
        const T* row = logits + (i64)r * ld;
        const int* p = params + (i64)r * 5;
        const float temperature = __int_as_float(p[0]), top_p = __int_as_float(p[2]);
        const int top_k = p[1];
        const unsigned long long seed = (unsigned long long)(unsigned)p[3] | ((unsigned long long)(unsigned)p[4] << 32);

        float best = NEG_INF;
        int index = 0x7fffffff;
        unsigned long long count = 0;
        sample_each(row, lo, hi, (const SampleSurvivors*)0, [&](float v, unsigned, int i) {
            count++;
            if (v > best || (v == best && i < index)) { best = v; index = i; }
        });
        sample_cluster_best(best, index, count, s, slot, ctas);
        const int candidates = (int)count;
        const bool infinite = (__float_as_uint(best) & 0x7fffffffu) == 0x7f800000u;
        if (!(temperature > 0) || candidates == 0 || infinite)
        {
            if (rank == 0 && threadIdx.x == 0) ids[r] = candidates == 0 ? 0 : index;
            continue;
        }

        SampleKept kept = {false, false, 0u, 0u, 0, 0};
        bool listed = false;   // whether s.list holds every kept candidate of this CTA's run
        if (top_k > 0 && top_k < candidates)
        {
            unsigned key;
            unsigned long long above;
            unsigned long long ties = 0;
            double unused;
            sample_cluster_select(row, lo, hi, listed, kept, SampleOne{}, (double)top_k, 0.f, s, slot, ctas, &key, &above, &unused, &ties);
            // The ties at the cut: all of them kept (no scan) when the count needs them all, else the first n in id order.
            const int n = top_k - (int)above;
            kept.k_cut = (unsigned long long)n >= ties ? V : sample_cluster_nth_tie(row, lo, hi, V, listed, kept, key, n, s, slot, ctas, rank);
            kept.k_key = key;
            kept.top_k = true;
        }
        if (top_p < 1.f)
        {
            // The target, top-p times the kept mass, comes from the select's first histogram (sample_rows's sum z).
            const SampleMass mass{best, temperature};
            double target = 0;
            unsigned key;
            unsigned long long above, at = 0;
            if (sample_cluster_select(row, lo, hi, listed, kept, mass, 0.0, top_p, s, slot, ctas, &key, &above, &target, &at))
            {
                const unsigned long long w = mass(sample_value(key));
                long long n = w == 0 ? 1 : (long long)((target - (double)above) / (double)w);
                if (n < 1) n = 1;
                while (n > 1 && (double)(above + (unsigned long long)(n - 1) * w) >= target) n--;
                while ((double)(above + (unsigned long long)n * w) < target && n < V) n++;
                // The ties share the weight w, so there are at / w of them (unknown where w is 0); all kept: no scan.
                kept.p_cut = w != 0 && (unsigned long long)n >= at / w ? V : sample_cluster_nth_tie(row, lo, hi, V, listed, kept, key, (int)n, s, slot, ctas, rank);
                kept.p_key = key;
                kept.top_p = true;
            }
        }

        const unsigned long long key = sample_row_key(seed, (long long)positions[r]);
        float top = NEG_INF;
        int chosen = 0x7fffffff;
        sample_each(row, lo, hi, listed ? &s.list : (const SampleSurvivors*)0, [&](float v, unsigned k, int i) {
            if (!kept.has(k, i)) return;
            const float scaled = sub_rn(v, best) / temperature;
            if (chosen != 0x7fffffff && add_rn(scaled, SAMPLE_NOISE_BOUND) < top) return;
            const float score = add_rn(scaled, sample_noise(key, i));
            if (chosen == 0x7fffffff || score > top || (score == top && i < chosen)) { top = score; chosen = i; }
        });
        unsigned long long none = 0;
        sample_cluster_best(top, chosen, none, s, slot, ctas);
        if (rank == 0 && threadIdx.x == 0) ids[r] = chosen == 0x7fffffff ? index : chosen;
    }
    sample_cluster_sync();   // no CTA leaves while another may still read its shared memory
}

#define SAMPLE_ROWS_CLUSTER(n, T)                                                                                 \
    extern "C" __global__ void __launch_bounds__(1024) sample_rows_cluster_##n(                                  \
        const T* logits, i64 ld, int V, int rows, const int* params, const int* positions, int* ids)              \
    {                                                                                                             \
        sample_rows_cluster<T>(logits, ld, V, rows, params, positions, ids);                                      \
    }
FOR_FLOAT_TYPES(SAMPLE_ROWS_CLUSTER)
#endif
