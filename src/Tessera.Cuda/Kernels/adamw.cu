// AdamW over F32 master parameters with decoupled weight decay. The clipping factor
// min(1, maxNorm / (sqrt(sum of squares) + 1e-6)) is computed on the device from a scalar, so the
// host never waits for the gradient norm. Optionally writes a bf16 or f16 copy of the result.

template <typename G> __device__ void adamw(float* p, const G* g, float* m, float* v, void* low, int lowKind, i64 n,
                                            float lr, float b1, float b2, float eps, float wd, float bc1, float bc2,
                                            const float* sumsq, float maxNorm)
{
    float clip = 1.f;
    if (sumsq && maxNorm > 0.f)
    {
        // PyTorch's clip_grad_norm_ coefficient: maxNorm / (norm + 1e-6), clamped to 1.
        float coefficient = maxNorm / (sqrtf(*sumsq) + 1e-6f);
        if (coefficient < 1.f) clip = coefficient;
    }
    GRID_STRIDE(i, n)
    {
        float grad = to_f(g[i]) * clip;
        float mi = b1 * m[i] + (1.f - b1) * grad;
        float vi = b2 * v[i] + (1.f - b2) * grad * grad;
        m[i] = mi; v[i] = vi;
        float pi = p[i];
        pi -= lr * ((mi / bc1) / (sqrtf(vi / bc2) + eps) + wd * pi);
        p[i] = pi;
        if (lowKind == 1) ((bf16*)low)[i] = from_f<bf16>(pi);
        else if (lowKind == 2) ((f16*)low)[i] = from_f<f16>(pi);
    }
}

#define ADAMW(n, G)                                                                                          \
    extern "C" __global__ void adamw_##n(float* p, const G* g, float* m, float* v, void* low, int lowKind,   \
                                         i64 count, float lr, float b1, float b2, float eps, float wd,       \
                                         float bc1, float bc2, const float* sumsq, float maxNorm)             \
    {                                                                                                        \
        adamw<G>(p, g, m, v, low, lowKind, count, lr, b1, b2, eps, wd, bc1, bc2, sumsq, maxNorm);            \
    }
FOR_FLOAT_TYPES(ADAMW)
