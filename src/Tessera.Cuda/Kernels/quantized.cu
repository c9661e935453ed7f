// Quantized weights: a weight (N, K) stored a byte a weight (int8 values, or FP8 E4M3 codes) with one fp32 scale per row n.
// dequantize_* writes the weight it stands for in the output's type (a product then runs on the dequantized copy).

// The value a stored byte stands for before its row's scale: common.cuh's Int8Code (an int8 value) or Fp8Code (an FP8 E4M3
// code, e4m3_to_f: OCP E4M3 "fn", sign, 4 exponent bits of bias 7, 3 mantissa bits, no infinities, NaN 0x7F/0xFF, largest
// 448), which the quantized KV pools share.

// out[n, k] = scales[n] * value(values[n, k]) in the output's type (the fp32 product rounded once, as the CPU). Rows of a
// multiple of 16 values with both buffers 16-byte aligned: a thread takes 16 values at a time (one 16-byte load, whole
// 16-byte stores, one division for the row), which a prefill step over int8 or FP8 weights does for every weight it
// multiplies; otherwise value by value.
template <typename Code, typename T>
__device__ __forceinline__ void dequantize(const typename Code::Byte* values, const float* scales, T* out, i64 n, int K)
{
    if (K % 16 == 0 && (((unsigned long long)values | (unsigned long long)out) & 15) == 0)
    {
        const int chunks = K / 16;
        GRID_STRIDE(c, n / 16)
        {
            const Bytes16 u = *reinterpret_cast<const Bytes16*>(values + 16 * c);
            const typename Code::Byte* b = reinterpret_cast<const typename Code::Byte*>(&u);
            const float scale = scales[c / chunks];
            float v[16];
#pragma unroll
            for (int j = 0; j < 16; j++) v[j] = scale * Code::value(b[j]);
#pragma unroll
            for (int j = 0; j < 16; j += Vec16<T>::N) store16(out + 16 * c + j, v + j);
        }
        return;
    }
    GRID_STRIDE(i, n) out[i] = from_f<T>(scales[i / K] * Code::value(values[i]));
}

// out[r, c] (+)= scales[l] * value(values[l, c]) with l = ids[r] - row_offset, the lookup of a quantized embedding table
// (V, C). An l outside [0, V) gives NaN (as embedding_forward does), or 0 for a vocabulary shard, whose parts the shards'
// all-reduce sums into the whole lookup.
template <typename Code, typename T>
__device__ __forceinline__ void embedding_quantized(const int* ids, const typename Code::Byte* values, const float* scales, T* out, i64 N,
                                                    int C, int V, int row_offset, int shard, int accumulate)
{
    GRID_STRIDE(i, N * C)
    {
        i64 row = i / C; int c = (int)(i - row * C);
        i64 local = (i64)ids[row] - row_offset;
        float v = (local >= 0 && local < V) ? scales[local] * Code::value(values[local * C + c]) : (shard ? 0.f : QNAN);
        out[i] = from_f<T>(accumulate ? to_f(out[i]) + v : v);
    }
}

// dequantize_* and embedding_q8_*: int8 values; dequantize_fp8_* and embedding_fp8_*: FP8 E4M3 codes.
#define QUANTIZED_TABLES(name, t) \
    extern "C" __global__ void dequantize_##name(const signed char* values, const float* scales, t* out, i64 n, int K) \
    { dequantize<Int8Code, t>(values, scales, out, n, K); } \
    extern "C" __global__ void dequantize_fp8_##name(const unsigned char* values, const float* scales, t* out, i64 n, int K) \
    { dequantize<Fp8Code, t>(values, scales, out, n, K); } \
    extern "C" __global__ void embedding_q8_##name(const int* ids, const signed char* values, const float* scales, t* out, i64 N, int C, \
                                                   int V, int row_offset, int shard, int accumulate) \
    { embedding_quantized<Int8Code, t>(ids, values, scales, out, N, C, V, row_offset, shard, accumulate); } \
    extern "C" __global__ void embedding_fp8_##name(const int* ids, const unsigned char* values, const float* scales, t* out, i64 N, int C, \
                                                    int V, int row_offset, int shard, int accumulate) \
    { embedding_quantized<Fp8Code, t>(ids, values, scales, out, N, C, V, row_offset, shard, accumulate); }
FOR_FLOAT_TYPES(QUANTIZED_TABLES)

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
