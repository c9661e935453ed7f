// Elementwise ops over contiguous tensors: storage type T, fp32 math.

#define ELEMENTWISE(n, T)                                                                        \
    extern "C" __global__ void add_##n(const T* a, const T* b, T* out, i64 count)              \
    {                                                                                            \
        const int N = Vec16<T>::N;                                                               \
        i64 vecs = aligned16(a, b, out) ? count / N : 0;                                         \
        GRID_STRIDE(k, vecs)                                                                     \
        {                                                                                        \
            float x[N], y[N];                                                                    \
            load16(a + k * N, x); load16(b + k * N, y);                                          \
            for (int j = 0; j < N; j++) x[j] += y[j];                                            \
            store16(out + k * N, x);                                                             \
        }                                                                                        \
        GRID_STRIDE(t, count - vecs * N)                                                         \
        {                                                                                        \
            i64 i = vecs * N + t;                                                                \
            out[i] = from_f<T>(to_f(a[i]) + to_f(b[i]));                                         \
        }                                                                                        \
    }                                                                                            \
    extern "C" __global__ void scale_##n(T* x, float factor, i64 count)                          \
    {                                                                                            \
        GRID_STRIDE(i, count) x[i] = from_f<T>(to_f(x[i]) * factor);                             \
    }                                                                                            \
    extern "C" __global__ void multiply_##n(const T* a, const T* b, T* out, i64 count)         \
    {                                                                                            \
        GRID_STRIDE(i, count) out[i] = from_f<T>(to_f(a[i]) * to_f(b[i]));                       \
    }                                                                                            \
    extern "C" __global__ void gelu_forward_##n(const T* x, T* out, i64 count)                   \
    {                                                                                            \
        const int N = Vec16<T>::N;                                                               \
        i64 vecs = aligned16(x, x, out) ? count / N : 0;                                         \
        GRID_STRIDE(k, vecs)                                                                     \
        {                                                                                        \
            float v[N];                                                                          \
            load16(x + k * N, v);                                                                \
            for (int j = 0; j < N; j++) v[j] = gelu(v[j]);                                       \
            store16(out + k * N, v);                                                             \
        }                                                                                        \
        GRID_STRIDE(t, count - vecs * N)                                                         \
        {                                                                                        \
            i64 i = vecs * N + t;                                                                \
            out[i] = from_f<T>(gelu(to_f(x[i])));                                                \
        }                                                                                        \
    }                                                                                            \
    extern "C" __global__ void gelu_backward_##n(const T* x, const T* dout, T* dx, i64 count)    \
    {                                                                                            \
        const int N = Vec16<T>::N;                                                               \
        i64 vecs = aligned16(x, dout, dx) ? count / N : 0;                                       \
        GRID_STRIDE(k, vecs)                                                                     \
        {                                                                                        \
            float v[N], d[N];                                                                    \
            load16(x + k * N, v); load16(dout + k * N, d);                                       \
            for (int j = 0; j < N; j++) v[j] = gelu_grad(v[j]) * d[j];                           \
            store16(dx + k * N, v);                                                              \
        }                                                                                        \
        GRID_STRIDE(t, count - vecs * N)                                                         \
        {                                                                                        \
            i64 i = vecs * N + t;                                                                \
            dx[i] = from_f<T>(gelu_grad(to_f(x[i])) * to_f(dout[i]));                            \
        }                                                                                        \
    }                                                                                            \
    /* Gemma 2's final-logit soft cap in place, x = cap tanh(x / cap), and its backward from the */ \
    /* capped values, dy *= 1 - (y / cap)^2 (common.cuh's soft_cap and soft_cap_slope).          */ \
    extern "C" __global__ void soft_cap_##n(T* x, float cap, i64 count)                          \
    {                                                                                            \
        const int N = Vec16<T>::N;                                                               \
        i64 vecs = aligned16(x, x, x) ? count / N : 0;                                           \
        GRID_STRIDE(k, vecs)                                                                     \
        {                                                                                        \
            float v[N];                                                                          \
            load16(x + k * N, v);                                                                \
            for (int j = 0; j < N; j++) v[j] = soft_cap(v[j], cap);                              \
            store16(x + k * N, v);                                                               \
        }                                                                                        \
        GRID_STRIDE(t, count - vecs * N)                                                         \
        {                                                                                        \
            i64 i = vecs * N + t;                                                                \
            x[i] = from_f<T>(soft_cap(to_f(x[i]), cap));                                         \
        }                                                                                        \
    }                                                                                            \
    extern "C" __global__ void soft_cap_backward_##n(const T* y, T* dy, float cap, i64 count)    \
    {                                                                                            \
        const int N = Vec16<T>::N;                                                               \
        i64 vecs = aligned16(y, dy, dy) ? count / N : 0;                                         \
        GRID_STRIDE(k, vecs)                                                                     \
        {                                                                                        \
            float v[N], d[N];                                                                    \
            load16(y + k * N, v); load16(dy + k * N, d);                                         \
            for (int j = 0; j < N; j++) d[j] *= soft_cap_slope(v[j], cap);                       \
            store16(dy + k * N, d);                                                              \
        }                                                                                        \
        GRID_STRIDE(t, count - vecs * N)                                                         \
        {                                                                                        \
            i64 i = vecs * N + t;                                                                \
            dy[i] = from_f<T>(to_f(dy[i]) * soft_cap_slope(to_f(y[i]), cap));                    \
        }                                                                                        \
    }

// SwiGLU, silu(gate) * up, over (rows, cols) views whose rows are contiguous, row strides in elements: the two halves of
// a fused gate/up product are read (and their gradients written) in place. 16-byte vectors when every row start is 16-byte
// aligned and cols is a multiple of the vector; one element per thread otherwise. fp32 math, as the CPU backend's formulas.

// Item k of rows x per items as (row, column); 32-bit division when the count fits (the usual case).
__device__ __forceinline__ void split_item(i64 k, i64 per, i64 total, i64& r, i64& c)
{
    if (total <= 0xffffffffll)
    {
        unsigned kk = (unsigned)k, pp = (unsigned)per, rr = kk / pp;
        r = rr; c = kk - rr * pp;
    }
    else { r = k / per; c = k - r * per; }
}

#define SWIGLU_ROWS(n, T)                                                                        \
    extern "C" __global__ void swiglu_forward_rows_##n(const T* gate, i64 gs, const T* up, i64 us, T* out, i64 os, \
                                                       i64 rows, i64 cols)                       \
    {                                                                                            \
        const int N = Vec16<T>::N;                                                               \
        const bool vec = cols % N == 0 && aligned16(gate, up, out) && (gs % N | us % N | os % N) == 0; \
        const i64 per = vec ? cols / N : cols, total = rows * per;                              \
        GRID_STRIDE(k, total)                                                                    \
        {                                                                                        \
            i64 r, c;                                                                            \
            split_item(k, per, total, r, c);                                                     \
            if (vec)                                                                             \
            {                                                                                    \
                c *= N;                                                                          \
                float g[N], u[N];                                                                \
                load16(gate + r * gs + c, g); load16(up + r * us + c, u);                        \
                for (int j = 0; j < N; j++) g[j] = silu(g[j]) * u[j];                            \
                store16(out + r * os + c, g);                                                    \
            }                                                                                    \
            else out[r * os + c] = from_f<T>(silu(to_f(gate[r * gs + c])) * to_f(up[r * us + c])); \
        }                                                                                        \
    }                                                                                            \
    extern "C" __global__ void swiglu_backward_rows_##n(const T* gate, i64 gs, const T* up, i64 us, const T* dout, i64 ds, \
                                                        T* dgate, i64 dgs, T* dup, i64 dus, i64 rows, i64 cols) \
    {                                                                                            \
        const int N = Vec16<T>::N;                                                               \
        const bool vec = cols % N == 0 && aligned16(gate, up, dout) && aligned16(dgate, dup, dup) \
            && (gs % N | us % N | ds % N | dgs % N | dus % N) == 0;                              \
        const i64 per = vec ? cols / N : cols, total = rows * per;                              \
        GRID_STRIDE(k, total)                                                                    \
        {                                                                                        \
            i64 r, c;                                                                            \
            split_item(k, per, total, r, c);                                                     \
            if (vec)                                                                             \
            {                                                                                    \
                c *= N;                                                                          \
                float g[N], u[N], d[N], dg[N];                                                   \
                load16(gate + r * gs + c, g); load16(up + r * us + c, u); load16(dout + r * ds + c, d); \
                for (int j = 0; j < N; j++) swiglu_grad(d[j], g[j], u[j], dg[j], u[j]);         \
                store16(dgate + r * dgs + c, dg); store16(dup + r * dus + c, u);                 \
            }                                                                                    \
            else                                                                                 \
            {                                                                                    \
                float dg, du;                                                                    \
                swiglu_grad(to_f(dout[r * ds + c]), to_f(gate[r * gs + c]), to_f(up[r * us + c]), dg, du); \
                dgate[r * dgs + c] = from_f<T>(dg);                                              \
                dup[r * dus + c] = from_f<T>(du);                                                \
            }                                                                                    \
        }                                                                                        \
    }

// gelu (GPT-2's gelu_new) is in common.cuh, shared with the matrix-vector kernels' GeGLU epilogue.
__device__ __forceinline__ float gelu_grad(float x)
{
    const float c = 0.7978845608028654f;
    float u = c * (x + 0.044715f * x * x * x);
    float t = tanhf(u);
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * c * (1.f + 3.f * 0.044715f * x * x);
}

FOR_FLOAT_TYPES(ELEMENTWISE)
FOR_FLOAT_TYPES(SWIGLU_ROWS)

// accumulator += alpha * x, with the accumulator possibly wider than x (f32 gradients from bf16), or narrower (a 16-bit
// gradient plus f32 sums: one rounding, as when the sums are reduced into it directly).
#define ACCUMULATE(an, at, xn, xt)                                                              \
    extern "C" __global__ void accumulate_##an##_##xn(at* acc, const xt* x, float alpha, i64 count) \
    {                                                                                            \
        GRID_STRIDE(i, count) acc[i] = from_f<at>(to_f(acc[i]) + alpha * to_f(x[i]));            \
    }
ACCUMULATE(f32, float, f32, float) ACCUMULATE(bf16, bf16, bf16, bf16) ACCUMULATE(f16, f16, f16, f16)
ACCUMULATE(f32, float, bf16, bf16) ACCUMULATE(f32, float, f16, f16)
ACCUMULATE(bf16, bf16, f32, float) ACCUMULATE(f16, f16, f32, float)
