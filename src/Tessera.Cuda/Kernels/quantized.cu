// Weight-only int8 quantization: a weight (N, K) stored as int8 values with one fp32 scale per row n.
// dequantize_*: out[n, k] = scales[n] * values[n, k] in the output's type (the product then runs on the
// dequantized copy).

#define DEQUANTIZE(name, t) \
    extern "C" __global__ void dequantize_##name(const signed char* values, const float* scales, t* out, i64 n, int K) \
    { GRID_STRIDE(i, n) out[i] = from_f<t>(scales[i / K] * (float)values[i]); }
FOR_FLOAT_TYPES(DEQUANTIZE)
