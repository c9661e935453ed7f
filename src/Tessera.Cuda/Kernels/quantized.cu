// Weight-only int8 quantization: a weight (N, K) stored as int8 values with one fp32 scale per row n.
// dequantize_*: out[n, k] = scales[n] * values[n, k] in the output's type (the product then runs on the
// dequantized copy).

#define DEQUANTIZE(name, t) \
    extern "C" __global__ void dequantize_##name(const signed char* values, const float* scales, t* out, i64 n, int K) \
    { GRID_STRIDE(i, n) out[i] = from_f<t>(scales[i / K] * (float)values[i]); }
FOR_FLOAT_TYPES(DEQUANTIZE)

// embedding_q8_*: out[r, c] (+)= scales[ids[r]] * values[ids[r], c], the lookup of an int8 embedding table (V, C); an id
// outside [0, V) gives NaN, as embedding_forward does.
#define EMBEDDING_Q8(name, t) \
    extern "C" __global__ void embedding_q8_##name(const int* ids, const signed char* values, const float* scales, t* out, i64 N, int C, \
                                                   int V, int accumulate) \
    { \
        GRID_STRIDE(i, N * C) \
        { \
            i64 row = i / C; int c = (int)(i - row * C); \
            int id = ids[row]; \
            float v = (id >= 0 && id < V) ? scales[id] * (float)values[(i64)id * C + c] : QNAN; \
            out[i] = from_f<t>(accumulate ? to_f(out[i]) + v : v); \
        } \
    }
FOR_FLOAT_TYPES(EMBEDDING_Q8)

// embedding_shard_q8_*: out[r, c] = scales[l] * values[l, c] with l = ids[r] - row_offset when l is one of this shard's V rows,
// else 0: one rank's part of a vocabulary-parallel int8 table's lookup (the shards' parts sum to the whole).
#define EMBEDDING_SHARD_Q8(name, t) \
    extern "C" __global__ void embedding_shard_q8_##name(const int* ids, const signed char* values, const float* scales, t* out, i64 N, \
                                                         int C, int V, int row_offset) \
    { \
        GRID_STRIDE(i, N * C) \
        { \
            i64 row = i / C; int c = (int)(i - row * C); \
            i64 local = (i64)ids[row] - row_offset; \
            float v = (local >= 0 && local < V) ? scales[local] * (float)values[local * C + c] : 0.f; \
            out[i] = from_f<t>(v); \
        } \
    }
FOR_FLOAT_TYPES(EMBEDDING_SHARD_Q8)
