// Token embedding: gather rows of a table, and scatter-add their gradients.
// An id outside [0, V) writes NaN so the error shows in the loss instead of reading other memory.

#define EMBEDDING(n, T)                                                                                   \
    extern "C" __global__ void embedding_forward_##n(const int* ids, const T* table, T* out, i64 N, int C, \
                                                     int V, int accumulate)                              \
    {                                                                                                     \
        GRID_STRIDE(i, N * C)                                                                             \
        {                                                                                                 \
            i64 row = i / C; int c = (int)(i - row * C);                                                  \
            int id = ids[row];                                                                            \
            float v = (id >= 0 && id < V) ? to_f(table[(i64)id * C + c]) : QNAN;                          \
            out[i] = from_f<T>(accumulate ? to_f(out[i]) + v : v);                                        \
        }                                                                                                 \
    }                                                                                                     \
    extern "C" __global__ void embedding_backward_##n(const int* ids, const T* dout, T* dtable, i64 N,     \
                                                      int C, int V)                                       \
    {                                                                                                     \
        GRID_STRIDE(i, N * C)                                                                             \
        {                                                                                                 \
            i64 row = i / C; int c = (int)(i - row * C);                                                  \
            int id = ids[row];                                                                            \
            if (id >= 0 && id < V) atomic_add(&dtable[(i64)id * C + c], to_f(dout[i]));                   \
        }                                                                                                 \
    }
FOR_FLOAT_TYPES(EMBEDDING)

// The same with 16 bytes a thread (C a multiple of 16 / sizeof(T), every row 16-byte aligned): the gather reads and writes
// whole vectors (the one-element kernels moved GPT-2's 100 MB of embeddings at about 1 TB/s on the H200), and the
// scatter-add of BF16 gradients uses sm_90's packed red.global.add.noftz.bf16x2, two elements an instruction with the one
// rounding of the compare-and-swap loop it replaces (each gradient value is a BF16 number already, so the sum of two is
// rounded once either way).
template <typename T> __device__ __forceinline__ void red_add16(T* dst, const Bytes16& u)
{
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < Vec16<T>::N; j++) atomic_add(dst + j, to_f(e[j]));
}
template <> __device__ __forceinline__ void red_add16<bf16>(bf16* dst, const Bytes16& u)
{
#if __CUDA_ARCH__ >= 900
#pragma unroll
    for (int w = 0; w < 4; w++) asm volatile("red.global.add.noftz.bf16x2 [%0], %1;" ::"l"(dst + 2 * w), "r"(u.w[w]) : "memory");
#else
    const bf16* e = reinterpret_cast<const bf16*>(&u);
#pragma unroll
    for (int j = 0; j < 8; j++) atomic_add(dst + j, to_f(e[j]));
#endif
}

template <typename T>
__device__ void embedding_forward_vec(const int* ids, const T* table, T* out, i64 N, int C, int V, int accumulate)
{
    constexpr int W = Vec16<T>::N;
    const int vecs = C / W;
    GRID_STRIDE(i, N * vecs)
    {
        const i64 row = i / vecs;
        const int c = (int)(i - row * vecs) * W;
        const int id = ids[row];
        float v[W];
        if (id >= 0 && id < V) load16(table + (i64)id * C + c, v);
        else
        {
#pragma unroll
            for (int j = 0; j < W; j++) v[j] = QNAN;
        }
        T* o = out + row * C + c;
        if (accumulate)
        {
            float a[W];
            load16(o, a);
#pragma unroll
            for (int j = 0; j < W; j++) v[j] = a[j] + v[j];
        }
        store16(o, v);
    }
}

template <typename T> __device__ void embedding_backward_vec(const int* ids, const T* dout, T* dtable, i64 N, int C, int V)
{
    constexpr int W = Vec16<T>::N;
    const int vecs = C / W;
    GRID_STRIDE(i, N * vecs)
    {
        const i64 row = i / vecs;
        const int c = (int)(i - row * vecs) * W;
        const int id = ids[row];
        if (id < 0 || id >= V) continue;
        red_add16(dtable + (i64)id * C + c, *reinterpret_cast<const Bytes16*>(dout + row * C + c));
    }
}

#define EMBEDDING_VEC(n, T)                                                                                     \
    extern "C" __global__ void embedding_forward_vec_##n(const int* ids, const T* table, T* out, i64 N, int C,  \
                                                         int V, int accumulate)                                 \
    {                                                                                                           \
        embedding_forward_vec<T>(ids, table, out, N, C, V, accumulate);                                         \
    }                                                                                                           \
    extern "C" __global__ void embedding_backward_vec_##n(const int* ids, const T* dout, T* dtable, i64 N, int C, \
                                                          int V)                                                \
    {                                                                                                           \
        embedding_backward_vec<T>(ids, dout, dtable, N, C, V);                                                  \
    }
FOR_FLOAT_TYPES(EMBEDDING_VEC)
