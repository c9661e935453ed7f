// Group-wise int4 weights (QuantizedWeight.Int4, GPTQ's and AWQ's weights after loading): a weight (N, K) held as
//   packed (N, K / 8) u32: word w of row n holds columns 8w .. 8w + 7, column 8w + j in bits 4j .. 4j + 3 (unsigned nibbles q),
//   scales (N, G) fp32 and zeros (N, G) int8 (0 .. 15), G = ceil(K / group) groups of `group` consecutive columns,
// standing for w[n, k] = scales[n, k / group] * (q[n, k] - zeros[n, k / group]). K and group are multiples of 8, so a word
// never straddles two groups. Two kernels: the weight dequantized into a tensor of the output's type (for products of many
// rows: the product then runs on the copy), and a matrix-vector product for 1 to 4 rows of x (decoding), which reads each
// packed word once and dequantizes it in registers: the bytes read are what 4 bits buy.

// The eight values a word stands for, in fp32: scale * (q - zero), exact for the integer and rounded once by the product.
__device__ __forceinline__ void int4_word(unsigned word, float scale, int zero, float* out)
{
#pragma unroll
    for (int j = 0; j < 8; j++) out[j] = scale * (float)((int)((word >> (4 * j)) & 0xFu) - zero);
}

// out (N, K) = the weight, in the output's type. One thread a packed word: its eight outputs are out[8 i ..] (K is a multiple
// of 8), 16-byte aligned when out is, and then stored whole (one 16-byte store for a 16-bit type, two for fp32): a warp
// writes 512 contiguous bytes an instruction, where eight 2-byte stores a thread each touched every 16th pair of bytes of
// them (a prefill step of int4 weights dequantizes every weight it multiplies). Otherwise value by value.
template <typename T>
__device__ __forceinline__ void dequantize_int4(const unsigned* packed, const float* scales, const signed char* zeros, T* out,
                                                i64 N, int K, int group)
{
    const int words = K / 8, groups = (K + group - 1) / group;
    const bool whole = ((unsigned long long)out & 15) == 0;
    GRID_STRIDE(i, N * words)
    {
        i64 n = i / words; int w = (int)(i - n * words);
        i64 g = n * groups + (8 * w) / group;
        float v[8];
        int4_word(packed[i], scales[g], zeros[g], v);
        T* o = out + 8 * i;
        if (whole)
        {
#pragma unroll
            for (int j = 0; j < 8; j += Vec16<T>::N) store16(o + j, v + j);
        }
        else
        {
#pragma unroll
            for (int j = 0; j < 8; j++) o[j] = from_f<T>(v[j]);
        }
    }
}

// sum[m] += x[m, 0 .. 7] (row stride ldx) times the eight values of one word.
template <typename T, int M>
__device__ __forceinline__ void int4_dot(unsigned word, float scale, int zero, const T* x, i64 ldx, float* sum)
{
    float v[8];
    int4_word(word, scale, zero, v);
#pragma unroll
    for (int m = 0; m < M; m++)
    {
        const T* xm = x + m * ldx;
#pragma unroll
        for (int j = 0; j < 8; j++) sum[m] += to_f(xm[j]) * v[j];
    }
}

// y (M, N) = x (M, K) W^T + bias + beta c, M <= 4 (M a template argument), one warp an output row n (grid-stride over rows):
// each lane takes 16-byte quads of words q = lane, lane + 32, ... of the row (coalesced 512-byte reads a warp; single words
// when K is not a multiple of 32 or the buffer not 16-byte aligned), dequantizes each word's eight values in registers and
// accumulates x[m, 8w + j] times them into M fp32 sums; the warp's sums are reduced by shuffles and
// lane 0 writes y[m, n] = sum + bias[n] + beta c[m, n] (beta 0: c is not read) in y's type. x, c and y have unit column
// strides and row strides ldx, ldc, ldy; c may be y (beta's term) or an addend. No shared memory, no allocation.
template <typename T, int M>
__device__ __forceinline__ void gemv_int4(const T* x, const unsigned* packed, const float* scales, const signed char* zeros,
                                          const T* bias, T* y, const T* c, int N, int K, int group, i64 ldx, i64 ldy, i64 ldc, float beta)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int words = K / 8, groups = (K + group - 1) / group;
    // Whole 16-byte quads of words when a row is a multiple of four words and the buffer is 16-byte aligned (then every row is).
    const bool quads = words % 4 == 0 && ((unsigned long long)packed & 15) == 0;
    for (i64 n = (i64)blockIdx.x * warps + warp; n < N; n += (i64)gridDim.x * warps)
    {
        float sum[M];
#pragma unroll
        for (int m = 0; m < M; m++) sum[m] = 0.f;
        const unsigned* row = packed + n * words;
        if (quads)
        {
            // 16-byte loads: four words (32 columns) a lane, a warp reading 512 contiguous bytes of the row at a time.
            for (int v4 = lane; v4 < words / 4; v4 += 32)
            {
                Bytes16 u = reinterpret_cast<const Bytes16*>(row)[v4];
                const int first = 4 * v4;
                int gq = (8 * first) / group;                  // a group of a multiple of 32 columns holds the whole quad
#pragma unroll
                for (int t = 0; t < 4; t++)
                {
                    const int w = first + t;
                    const i64 g = n * groups + (group % 32 == 0 ? gq : (8 * w) / group);
                    int4_dot<T, M>(u.w[t], scales[g], zeros[g], x + 8 * w, ldx, sum);
                }
            }
        }
        else
            for (int w = lane; w < words; w += 32)
            {
                const i64 g = n * groups + (8 * w) / group;
                int4_dot<T, M>(row[w], scales[g], zeros[g], x + 8 * w, ldx, sum);
            }
#pragma unroll
        for (int m = 0; m < M; m++) sum[m] = warp_sum(sum[m]);
        if (lane == 0)
        {
            float b = bias ? to_f(bias[n]) : 0.f;
#pragma unroll
            for (int m = 0; m < M; m++)
            {
                float v = sum[m] + b;
                if (beta != 0.f) v += beta * to_f(c[m * ldc + n]);
                y[m * ldy + n] = from_f<T>(v);
            }
        }
    }
}

#define INT4_KERNELS(name, t) \
    extern "C" __global__ void dequantize_int4_##name(const unsigned* packed, const float* scales, const signed char* zeros, t* out, \
                                                      i64 N, int K, int group) \
    { dequantize_int4<t>(packed, scales, zeros, out, N, K, group); } \
    INT4_GEMV(name, t, 1) INT4_GEMV(name, t, 2) INT4_GEMV(name, t, 3) INT4_GEMV(name, t, 4)
#define INT4_GEMV(name, t, m) \
    extern "C" __global__ void gemv_int4_##name##_m##m(const t* x, const unsigned* packed, const float* scales, const signed char* zeros, \
                                                       const t* bias, t* y, const t* c, int N, int K, int group, i64 ldx, i64 ldy, \
                                                       i64 ldc, float beta) \
    { gemv_int4<t, m>(x, packed, scales, zeros, bias, y, c, N, K, group, ldx, ldy, ldc, beta); }
FOR_FLOAT_TYPES(INT4_KERNELS)
