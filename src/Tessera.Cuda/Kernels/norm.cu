// LayerNorm and RMSNorm, forward and backward: one block per row, fp32 statistics.
// Backward adds dx into dx, and writes per-block partial weight (and bias) gradients into a
// scratch matrix (G, 2C) (G = gridDim.x); column_reduce in reduce.cu then adds them to dWeight, dBias.

template <typename T> __device__ void layernorm_forward(const T* x, const T* w, const T* b, T* out, float* mean,
                                                        float* rstd, int C, float eps)
{
    i64 row = blockIdx.x;
    x += row * C; out += row * C;
    float s = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) s += to_f(x[i]);
    float mu = block_sum(s) / C;
    float v = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) { float d = to_f(x[i]) - mu; v += d * d; }
    float r = rsqrtf(block_sum(v) / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x)
    {
        float y = (to_f(x[i]) - mu) * r * to_f(w[i]);
        if (b) y += to_f(b[i]);
        out[i] = from_f<T>(y);
    }
    if (threadIdx.x == 0) { mean[row] = mu; rstd[row] = r; }
}

template <typename T> __device__ void layernorm_backward(const T* dout, const T* x, const T* w, const float* mean,
                                                         const float* rstd, T* dx, float* scratch, i64 N, int C)
{
    float* dw = scratch + (i64)blockIdx.x * 2 * C;
    float* db = dw + C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) { dw[i] = 0.f; db[i] = 0.f; }
    for (i64 row = blockIdx.x; row < N; row += gridDim.x)
    {
        const T* xr = x + row * C; const T* dr = dout + row * C; T* dxr = dx + row * C;
        float mu = mean[row], r = rstd[row];
        float a = 0.f, bsum = 0.f;
        for (int i = threadIdx.x; i < C; i += blockDim.x)
        {
            float dn = to_f(dr[i]) * to_f(w[i]);
            a += dn;
            bsum += dn * (to_f(xr[i]) - mu) * r;
        }
        a = block_sum(a) / C;
        bsum = block_sum(bsum) / C;
        for (int i = threadIdx.x; i < C; i += blockDim.x)
        {
            float d = to_f(dr[i]);
            float xhat = (to_f(xr[i]) - mu) * r;
            float dn = d * to_f(w[i]);
            dxr[i] = from_f<T>(to_f(dxr[i]) + r * (dn - a - xhat * bsum));
            dw[i] += d * xhat;
            db[i] += d;
        }
    }
}

template <typename T> __device__ void rmsnorm_forward(const T* x, const T* w, T* out, float* rstd, int C, float eps)
{
    i64 row = blockIdx.x;
    x += row * C; out += row * C;
    float s = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) { float v = to_f(x[i]); s += v * v; }
    float r = rsqrtf(block_sum(s) / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x) out[i] = from_f<T>(to_f(x[i]) * r * to_f(w[i]));
    if (threadIdx.x == 0) rstd[row] = r;
}

template <typename T> __device__ void rmsnorm_backward(const T* dout, const T* x, const T* w, const float* rstd,
                                                       T* dx, float* scratch, i64 N, int C)
{
    float* dw = scratch + (i64)blockIdx.x * 2 * C;
    for (int i = threadIdx.x; i < C; i += blockDim.x) dw[i] = 0.f;
    for (i64 row = blockIdx.x; row < N; row += gridDim.x)
    {
        const T* xr = x + row * C; const T* dr = dout + row * C; T* dxr = dx + row * C;
        float r = rstd[row];
        float bsum = 0.f;
        for (int i = threadIdx.x; i < C; i += blockDim.x) bsum += to_f(dr[i]) * to_f(w[i]) * to_f(xr[i]) * r;
        bsum = block_sum(bsum) / C;
        for (int i = threadIdx.x; i < C; i += blockDim.x)
        {
            float d = to_f(dr[i]);
            float xhat = to_f(xr[i]) * r;
            dxr[i] = from_f<T>(to_f(dxr[i]) + r * (d * to_f(w[i]) - xhat * bsum));
            dw[i] += d * xhat;
        }
    }
}

#define NORM(n, T)                                                                                             \
    extern "C" __global__ void layernorm_forward_##n(const T* x, const T* w, const T* b, T* out, float* mean,  \
                                                     float* rstd, int C, float eps)                            \
    {                                                                                                          \
        layernorm_forward<T>(x, w, b, out, mean, rstd, C, eps);                                                \
    }                                                                                                          \
    extern "C" __global__ void layernorm_backward_##n(const T* dout, const T* x, const T* w, const float* mean, \
                                                      const float* rstd, T* dx, float* scratch, i64 N, int C)  \
    {                                                                                                          \
        layernorm_backward<T>(dout, x, w, mean, rstd, dx, scratch, N, C);                                      \
    }                                                                                                          \
    extern "C" __global__ void rmsnorm_forward_##n(const T* x, const T* w, T* out, float* rstd, int C, float eps) \
    {                                                                                                          \
        rmsnorm_forward<T>(x, w, out, rstd, C, eps);                                                           \
    }                                                                                                          \
    extern "C" __global__ void rmsnorm_backward_##n(const T* dout, const T* x, const T* w, const float* rstd,  \
                                                    T* dx, float* scratch, i64 N, int C)                       \
    {                                                                                                          \
        rmsnorm_backward<T>(dout, x, w, rstd, dx, scratch, N, C);                                              \
    }
FOR_FLOAT_TYPES(NORM)
