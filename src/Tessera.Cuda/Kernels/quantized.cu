// Weight-only int8 quantization: a weight (N, K) stored as int8 values with one fp32 scale per row n.
// dequantize_*: out[n, k] = scales[n] * values[n, k] in the output's type (the product then runs on the
// dequantized copy).

#define DEQUANTIZE(name, t) \
    extern "C" __global__ void dequantize_##name(const signed char* values, const float* scales, t* out, i64 n, int K) \
    { GRID_STRIDE(i, n) out[i] = from_f<t>(scales[i / K] * (float)values[i]); }
FOR_FLOAT_TYPES(DEQUANTIZE)

// embedding_q8_*: out[r, c] (+)= scales[l] * values[l, c] with l = ids[r] - row_offset, the lookup of an int8 embedding
// table (V, C). An l outside [0, V) gives NaN (as embedding_forward does), or 0 for a vocabulary shard, whose parts the
// shards' all-reduce sums into the whole lookup.
#define EMBEDDING_Q8(name, t) \
    extern "C" __global__ void embedding_q8_##name(const int* ids, const signed char* values, const float* scales, t* out, i64 N, int C, \
                                                   int V, int row_offset, int shard, int accumulate) \
    { \
        GRID_STRIDE(i, N * C) \
        { \
            i64 row = i / C; int c = (int)(i - row * C); \
            i64 local = (i64)ids[row] - row_offset; \
            float v = (local >= 0 && local < V) ? scales[local] * (float)values[local * C + c] : (shard ? 0.f : QNAN); \
            out[i] = from_f<t>(accumulate ? to_f(out[i]) + v : v); \
        } \
    }
FOR_FLOAT_TYPES(EMBEDDING_Q8)
