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
