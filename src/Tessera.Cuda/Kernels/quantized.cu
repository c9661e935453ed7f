// Quantized weights: a weight (N, K) stored a byte a weight (int8 values, or FP8 E4M3 codes below) with one fp32 scale per row n.
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

// ---- FP8 (OCP E4M3 "fn"): sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, NaN 0x7F/0xFF, largest 448.

// e4m3_from_f and e4m3_to_f (the E4M3 code of a float and the value of a code) are in common.cuh: gemv.cu's FP8 form uses them too.

// dequantize_fp8_*: out[n, k] = scales[n] * e4m3(values[n, k]) in the output's type (the fp32 product rounded once, as the CPU).
#define DEQUANTIZE_FP8(name, t) \
    extern "C" __global__ void dequantize_fp8_##name(const unsigned char* values, const float* scales, t* out, i64 n, int K) \
    { GRID_STRIDE(i, n) out[i] = from_f<t>(scales[i / K] * e4m3_to_f(values[i])); }
FOR_FLOAT_TYPES(DEQUANTIZE_FP8)

// embedding_fp8_*: embedding_q8_* over an FP8 table.
#define EMBEDDING_FP8(name, t) \
    extern "C" __global__ void embedding_fp8_##name(const int* ids, const unsigned char* values, const float* scales, t* out, i64 N, int C, \
                                                    int V, int row_offset, int shard, int accumulate) \
    { \
        GRID_STRIDE(i, N * C) \
        { \
            i64 row = i / C; int c = (int)(i - row * C); \
            i64 local = (i64)ids[row] - row_offset; \
            float v = (local >= 0 && local < V) ? scales[local] * e4m3_to_f(values[local * C + c]) : (shard ? 0.f : QNAN); \
            out[i] = from_f<t>(accumulate ? to_f(out[i]) + v : v); \
        } \
    }
FOR_FLOAT_TYPES(EMBEDDING_FP8)

// quantize_rows_fp8_*: the dynamic per-row quantization of an FP8 product's input, one block a row of x (M, K) (row stride
// ldx, unit column stride): codes (M, K) contiguous and scales (M), as Fp8Quantization.QuantizeRow on the CPU: scale =
// max|row| / 448 (an IEEE division), 1 for a row of zeros, NaN (and zero codes) for a row holding a NaN or an infinity;
// codes e4m3(v / scale), an IEEE division. With norm_w, the row is RMS-normalized first as rmsnorm_forward does (x r w in
// fp32, rounded to x's type, which is what the CPU quantizes after its norm into a tensor of x's type).
template <typename T> __device__ __forceinline__ float fp8_input(const T* x, const T* norm_w, float r, int i)
{
    return norm_w ? to_f(from_f<T>(to_f(x[i]) * r * to_f(norm_w[i]))) : to_f(x[i]);
}

template <typename T> __device__ void quantize_rows_fp8(const T* x, const T* norm_w, unsigned char* codes, float* scales, int K, i64 ldx, float eps)
{
    const i64 row = blockIdx.x;
    x += row * ldx; codes += row * (i64)K;
    pdl_wait();   // launched dependent on the kernel that writes x: nothing is read before it has finished
    float r = 1.f;
    if (norm_w)
    {
        float s = 0.f;
        for (int i = threadIdx.x; i < K; i += blockDim.x) { float v = to_f(x[i]); s += v * v; }
        r = rsqrtf(block_sum(s) / K + eps);
    }
    float amax = 0.f, bad = 0.f;
    for (int i = threadIdx.x; i < K; i += blockDim.x)
    {
        float v = fp8_input(x, norm_w, r, i);
        if ((__float_as_uint(v) & 0x7f800000u) == 0x7f800000u) bad += 1.f;
        else amax = fmaxf(amax, fabsf(v));
    }
    amax = block_max(amax);
    bad = block_sum(bad);
    float scale = div_rn(amax, 448.f);
    if (scale == 0.f) scale = 1.f;
    if (bad != 0.f) scale = QNAN;
    for (int i = threadIdx.x; i < K; i += blockDim.x)
        codes[i] = bad != 0.f ? (unsigned char)0 : e4m3_from_f(div_rn(fp8_input(x, norm_w, r, i), scale));
    if (threadIdx.x == 0) scales[row] = scale;
}

#define QUANTIZE_ROWS_FP8(name, t) \
    extern "C" __global__ void quantize_rows_fp8_##name(const t* x, const t* norm_w, unsigned char* codes, float* scales, int K, i64 ldx, float eps) \
    { quantize_rows_fp8<t>(x, norm_w, codes, scales, K, ldx, eps); }
FOR_FLOAT_TYPES(QUANTIZE_ROWS_FP8)
