// The shard-local halves of Megatron's vocabulary-parallel embedding and cross-entropy (CpuBackend.VocabularyParallel.cs is
// the reference). Each rank holds V rows of the table (columns of the logits) starting at `offset` of the whole vocabulary.

// Lookup of the ids that fall in this shard; every other id reads a zero row (the all-reduce over shards adds them up).
#define EMBEDDING_SHARD(n, T)                                                                                   \
    extern "C" __global__ void embedding_shard_forward_##n(const int* ids, const T* table, T* out, i64 N, int C, \
                                                           int V, int offset)                                  \
    {                                                                                                           \
        GRID_STRIDE(i, N * C)                                                                                   \
        {                                                                                                       \
            i64 row = i / C; int c = (int)(i - row * C);                                                        \
            int local = ids[row] - offset;                                                                      \
            out[i] = (local >= 0 && local < V) ? table[(i64)local * C + c] : from_f<T>(0.f);                    \
        }                                                                                                       \
    }                                                                                                           \
    extern "C" __global__ void embedding_shard_backward_##n(const int* ids, const T* dout, T* dtable, i64 N,    \
                                                            int C, int V, int offset)                          \
    {                                                                                                           \
        GRID_STRIDE(i, N * C)                                                                                   \
        {                                                                                                       \
            i64 row = i / C; int c = (int)(i - row * C);                                                        \
            int local = ids[row] - offset;                                                                      \
            if (local >= 0 && local < V) atomic_add(&dtable[(i64)local * C + c], to_f(dout[i]));                 \
        }                                                                                                       \
    }
FOR_FLOAT_TYPES(EMBEDDING_SHARD)

// Per row of this shard's logits (one block per row): the maximum of the first `valid` columns, the sum of exp(x - max)
// over them, and the target's logit when it lies in them (else 0), into stats[row] = (m, s, t) in fp32.
template <typename T> __device__ void ce_statistics_row(const T* x, i64 xs, const int* targets, float* stats, int valid, int offset)
{
    i64 row = blockIdx.x;
    x += row * xs;
    float m = NEG_INF, s = 0.f;
    for (int i = threadIdx.x; i < valid; i += blockDim.x) online_add(m, s, to_f(x[i]));
    block_online(m, s);
    if (threadIdx.x == 0)
    {
        int local = targets[row] - offset;
        stats[row * 3] = m;
        stats[row * 3 + 1] = s;
        stats[row * 3 + 2] = (targets[row] >= 0 && local >= 0 && local < valid) ? to_f(x[local]) : 0.f;
    }
}

// dlogits (may alias logits) = (exp(x - lse) - onehot) * scale on the valid columns, 0 on the padding and on ignored rows.
template <typename T> __device__ void ce_gradient_row(const T* x, i64 xs, const int* targets, const float* lse, T* dl, i64 ds,
                                                      int V, int valid, int offset, float scale)
{
    i64 row = blockIdx.x;
    x += row * xs; dl += row * ds;
    int target = targets[row];
    int local = target - offset;
    float l = lse[row];
    for (int i = threadIdx.x; i < V; i += blockDim.x)
    {
        float g = 0.f;
        if (target >= 0 && i < valid)
        {
            g = expf(to_f(x[i]) - l) * scale;
            if (i == local) g -= scale;
        }
        dl[i] = from_f<T>(g);
    }
}

#define CE_SHARD(n, T)                                                                                              \
    extern "C" __global__ void cross_entropy_statistics_##n(const T* x, i64 xs, const int* targets, float* stats,    \
                                                            int valid, int offset)                                   \
    {                                                                                                                \
        ce_statistics_row<T>(x, xs, targets, stats, valid, offset);                                                  \
    }                                                                                                                \
    extern "C" __global__ void cross_entropy_gradient_##n(const T* x, i64 xs, const int* targets, const float* lse,  \
                                                          T* dl, i64 ds, int V, int valid, int offset, float scale)  \
    {                                                                                                                \
        ce_gradient_row<T>(x, xs, targets, lse, dl, ds, V, valid, offset, scale);                                   \
    }
FOR_FLOAT_TYPES(CE_SHARD)

// The shards' statistics (P, N, 3), in shard order, into the whole vocabulary's log-sum-exp and loss per row.
extern "C" __global__ void cross_entropy_combine(const float* stats, const int* targets, float* losses, float* lse, int P, i64 N)
{
    GRID_STRIDE(row, N)
    {
        float m = NEG_INF, s = 0.f, t = 0.f;
        for (int p = 0; p < P; p++) m = fmaxf(m, stats[(p * N + row) * 3]);
        for (int p = 0; p < P; p++)
        {
            const float* st = stats + (p * N + row) * 3;
            if (st[1] > 0.f) s += st[1] * expf(st[0] - m);
            t += st[2];
        }
        float e = m + logf(s);
        lse[row] = e;
        losses[row] = targets[row] < 0 ? 0.f : e - t;
    }
}
