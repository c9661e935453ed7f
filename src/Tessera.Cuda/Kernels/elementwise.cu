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
    extern "C" __global__ void swiglu_forward_##n(const T* gate, const T* up, T* out, i64 count) \
    {                                                                                            \
        GRID_STRIDE(i, count)                                                                    \
        {                                                                                        \
            float g = to_f(gate[i]);                                                             \
            out[i] = from_f<T>(g / (1.f + expf(-g)) * to_f(up[i]));                              \
        }                                                                                        \
    }                                                                                            \
    extern "C" __global__ void swiglu_backward_##n(const T* gate, const T* up, const T* dout,    \
                                                   T* dgate, T* dup, i64 count)                  \
    {                                                                                            \
        GRID_STRIDE(i, count)                                                                    \
        {                                                                                        \
            float g = to_f(gate[i]), u = to_f(up[i]), d = to_f(dout[i]);                         \
            float sig = 1.f / (1.f + expf(-g));                                                  \
            dgate[i] = from_f<T>(d * u * sig * (1.f + g * (1.f - sig)));                         \
            dup[i] = from_f<T>(d * g * sig);                                                     \
        }                                                                                        \
    }

// GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
__device__ __forceinline__ float gelu(float x)
{
    const float c = 0.7978845608028654f;
    return 0.5f * x * (1.f + tanhf(c * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float gelu_grad(float x)
{
    const float c = 0.7978845608028654f;
    float u = c * (x + 0.044715f * x * x * x);
    float t = tanhf(u);
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * c * (1.f + 3.f * 0.044715f * x * x);
}

FOR_FLOAT_TYPES(ELEMENTWISE)

// accumulator += alpha * x, with the accumulator possibly wider than x (f32 gradients from bf16).
#define ACCUMULATE(an, at, xn, xt)                                                              \
    extern "C" __global__ void accumulate_##an##_##xn(at* acc, const xt* x, float alpha, i64 count) \
    {                                                                                            \
        GRID_STRIDE(i, count) acc[i] = from_f<at>(to_f(acc[i]) + alpha * to_f(x[i]));            \
    }
ACCUMULATE(f32, float, f32, float) ACCUMULATE(bf16, bf16, bf16, bf16) ACCUMULATE(f16, f16, f16, f16)
ACCUMULATE(f32, float, bf16, bf16) ACCUMULATE(f32, float, f16, f16)
