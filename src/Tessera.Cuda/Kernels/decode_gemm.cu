// Decode-size products on tensor cores (mma.sync): the kernels. Their template and its helpers are decode_gemm.cuh's (composed
// before this file, KernelLibrary.FilesBefore), which moe.cu's tensor-core expert products share.

#define DECODE_GEMM(name, t, MT)                                                                                          \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) decode_gemm_##name##_m##MT(const t* x, const t* w,           \
        const t* bias, t* y, int M, int N, int K, i64 ldx, i64 ldw, i64 ldy, float alpha, float beta, int early,          \
        const t* nw, float eps)                                                                                           \
    {                                                                                                                     \
        decode_gemm<t, t, MT, false>(x, w, nullptr, bias, nullptr, y, M, N, K, ldx, ldw, ldy, alpha, beta, early, nw, eps, \
                                     nullptr, y, ldy);                                                                    \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) decode_gemm_swiglu_##name##_m##MT(const t* x,               \
        const t* gate, const t* up, const t* gate_bias, const t* up_bias, t* y, int M, int F, int K, i64 ldx, i64 ldw,    \
        i64 ldy, int early, const t* nw, float eps)                                                                       \
    {                                                                                                                     \
        decode_gemm<t, t, MT, true>(x, gate, up, gate_bias, up_bias, y, M, F, K, ldx, ldw, ldy, 1.f, 0.f, early, nw, eps, \
                                    nullptr, y, ldy);                                                                     \
    }
DECODE_GEMM(bf16, bf16, 2) DECODE_GEMM(bf16, bf16, 4) DECODE_GEMM(bf16, bf16, 8)
DECODE_GEMM(f16, f16, 2) DECODE_GEMM(f16, f16, 4) DECODE_GEMM(f16, f16, 8)

// The int8-weight form (CudaBackend.QuantizedMatMul at 5 to 64 rows): y (M, N) = scales[n] * (x q_n) + bias[n] + beta * c_in,
// q (N, K) int8 with rows ldw bytes apart (16-byte aligned), scales (N) fp32; c_in is y (beta 0 or 1) or an addend of y's
// shape (beta 1), ldc apart. K a multiple of 64, as the 16-bit form. Its SwiGLU form: y (M, F) = SiLU(sg[o] (x qg_o) + bg[o])
// * (su[o] (x qu_o) + bu[o]) over two int8 weights of one shape and row stride (CudaBackend.QuantizedMatMulSwiGlu). nw (K, or
// null): x RMS-normalized on the way, as the 16-bit form (session 33; before, x was normalized into scratch first).
#define DECODE_GEMM_Q8(name, t, MT)                                                                                       \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) decode_gemm_q8_##name##_m##MT(const t* x,                   \
        const signed char* q, const float* scales, const t* bias, t* y, const t* c_in, int M, int N, int K, i64 ldx,      \
        i64 ldw, i64 ldy, i64 ldc, float beta, int early, const t* nw, float eps)                                         \
    {                                                                                                                     \
        decode_gemm<t, signed char, MT, false>(x, q, nullptr, bias, nullptr, y, M, N, K, ldx, ldw, ldy, 1.f, beta, early, \
                                               nw, eps, scales, c_in, ldc);                                               \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) decode_gemm_q8_swiglu_##name##_m##MT(const t* x,            \
        const signed char* gate, const signed char* up, const float* gate_scales, const float* up_scales,                \
        const t* gate_bias, const t* up_bias, t* y, int M, int F, int K, i64 ldx, i64 ldw, i64 ldy, int early,           \
        const t* nw, float eps)                                                                                           \
    {                                                                                                                     \
        decode_gemm<t, signed char, MT, true>(x, gate, up, gate_bias, up_bias, y, M, F, K, ldx, ldw, ldy, 1.f, 0.f, early, \
                                              nw, eps, gate_scales, y, ldy, nullptr, 0, up_scales);                       \
    }
DECODE_GEMM_Q8(bf16, bf16, 2) DECODE_GEMM_Q8(bf16, bf16, 4) DECODE_GEMM_Q8(bf16, bf16, 8)
DECODE_GEMM_Q8(f16, f16, 2) DECODE_GEMM_Q8(f16, f16, 4) DECODE_GEMM_Q8(f16, f16, 8)

// The int4-weight form (CudaBackend.QuantizedMatMul over QuantizedWeight.Int4 at 5 to 64 rows): y (M, N) = x W^T + bias[n] +
// beta * c_in, W[n, k] = scales[n, g] (q[n, k] - zeros[n, g]) rounded to t, g = k / group: packed (N, K / 8) u32 with rows
// ldw words apart (16-byte aligned), scales and zeros (N, ceil(K / group)), group a multiple of 16; c_in as the int8 form's.
// K a multiple of 64, as the 16-bit form.
#define DECODE_GEMM_INT4(name, t, MT)                                                                                     \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) decode_gemm_int4_##name##_m##MT(const t* x,                 \
        const unsigned* packed, const float* scales, const signed char* zeros, const t* bias, t* y, const t* c_in, int M,  \
        int N, int K, int group, i64 ldx, i64 ldw, i64 ldy, i64 ldc, float beta, int early, const t* nw, float eps)      \
    {                                                                                                                     \
        decode_gemm<t, unsigned, MT, false>(x, packed, nullptr, bias, nullptr, y, M, N, K, ldx, ldw, ldy, 1.f, beta, early, \
                                            nw, eps, scales, c_in, ldc, zeros, group);                                    \
    }
DECODE_GEMM_INT4(bf16, bf16, 2) DECODE_GEMM_INT4(bf16, bf16, 4) DECODE_GEMM_INT4(bf16, bf16, 8)
DECODE_GEMM_INT4(f16, f16, 2) DECODE_GEMM_INT4(f16, f16, 4) DECODE_GEMM_INT4(f16, f16, 8)

// The int4 form by group sums (see the file's comment; CudaBackendOptions.Int4DecodeProductGroupSums): the same arguments,
// group a multiple of 64, zeros 4-byte aligned; nw (K, or null): x RMS-normalized on the way, as the 16-bit form. Its SwiGLU
// form (CudaBackend.QuantizedMatMulSwiGlu): y (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu) over two int4 weights of one shape,
// group and row stride, each with its scales and zeros, as the 16-bit SwiGLU form (64 outputs a CTA, gate and up rows
// interleaved by 8 in a tile, so each row's scale and zero word ride in the stage as the plain form's). Each in DG_ST
// stages and, named _s8, in 8; and in DG_ST stages with 2 or 4 of x's n8 tiles at once (_j2, _j4: decode_tile_q4_exact's JB,
// CudaBackendOptions.Int4DecodeProductXTiles; _j4 from 32 rows, the 16-row kernels having two tiles).
#define DECODE_GEMM_INT4G(name, t, MT, ST, sfx, JB)                                                                        \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) decode_gemm_int4g_##name##_m##MT##sfx(const t* x,           \
        const unsigned* packed, const float* scales, const signed char* zeros, const t* bias, t* y, const t* c_in, int M,  \
        int N, int K, int group, i64 ldx, i64 ldw, i64 ldy, i64 ldc, float beta, int early, const t* nw, float eps)      \
    {                                                                                                                     \
        decode_gemm<t, unsigned, MT, false, true, ST, DenseRows, JB>(x, packed, nullptr, bias, nullptr, y, M, N, K, ldx, ldw, ldy, 1.f, \
                                                      beta, early, nw, eps, scales, c_in, ldc, zeros, group);             \
    }                                                                                                                     \
    extern "C" __global__ void __launch_bounds__(DG_THREADS) decode_gemm_int4g_swiglu_##name##_m##MT##sfx(const t* x,    \
        const unsigned* gate, const unsigned* up, const float* gate_scales, const float* up_scales,                      \
        const signed char* gate_zeros, const signed char* up_zeros, const t* gate_bias, const t* up_bias, t* y, int M,    \
        int F, int K, int group, i64 ldx, i64 ldw, i64 ldy, int early, const t* nw, float eps)                           \
    {                                                                                                                     \
        decode_gemm<t, unsigned, MT, true, true, ST, DenseRows, JB>(x, gate, up, gate_bias, up_bias, y, M, F, K, ldx, ldw, ldy, 1.f, 0.f, \
                                                     early, nw, eps, gate_scales, y, ldy, gate_zeros, group, up_scales,   \
                                                     up_zeros);                                                           \
    }
DECODE_GEMM_INT4G(bf16, bf16, 2, DG_ST, , 1) DECODE_GEMM_INT4G(bf16, bf16, 4, DG_ST, , 1) DECODE_GEMM_INT4G(bf16, bf16, 8, DG_ST, , 1)
DECODE_GEMM_INT4G(f16, f16, 2, DG_ST, , 1) DECODE_GEMM_INT4G(f16, f16, 4, DG_ST, , 1) DECODE_GEMM_INT4G(f16, f16, 8, DG_ST, , 1)
DECODE_GEMM_INT4G(bf16, bf16, 2, 8, _s8, 1) DECODE_GEMM_INT4G(bf16, bf16, 4, 8, _s8, 1) DECODE_GEMM_INT4G(bf16, bf16, 8, 8, _s8, 1)
DECODE_GEMM_INT4G(f16, f16, 2, 8, _s8, 1) DECODE_GEMM_INT4G(f16, f16, 4, 8, _s8, 1) DECODE_GEMM_INT4G(f16, f16, 8, 8, _s8, 1)
DECODE_GEMM_INT4G(bf16, bf16, 2, DG_ST, _j2, 2) DECODE_GEMM_INT4G(bf16, bf16, 4, DG_ST, _j2, 2) DECODE_GEMM_INT4G(bf16, bf16, 8, DG_ST, _j2, 2)
DECODE_GEMM_INT4G(f16, f16, 2, DG_ST, _j2, 2) DECODE_GEMM_INT4G(f16, f16, 4, DG_ST, _j2, 2) DECODE_GEMM_INT4G(f16, f16, 8, DG_ST, _j2, 2)
DECODE_GEMM_INT4G(bf16, bf16, 4, DG_ST, _j4, 4) DECODE_GEMM_INT4G(bf16, bf16, 8, DG_ST, _j4, 4)
DECODE_GEMM_INT4G(f16, f16, 4, DG_ST, _j4, 4) DECODE_GEMM_INT4G(f16, f16, 8, DG_ST, _j4, 4)
