// AdamW over F32 master parameters with decoupled weight decay. The clipping factor
// min(1, maxNorm / (sqrt(sum of squares) + 1e-6)) is computed on the device from a scalar, so the
// host never waits for the gradient norm. Optionally writes a bf16 or f16 copy of the result.

__device__ __forceinline__ float adamw_clip(const float* sumsq, float maxNorm)
{
    if (!sumsq || !(maxNorm > 0.f)) return 1.f;
    // PyTorch's clip_grad_norm_ coefficient: maxNorm / (norm + 1e-6), clamped to 1.
    const float coefficient = maxNorm / (sqrtf(*sumsq) + 1e-6f);
    return coefficient < 1.f ? coefficient : 1.f;
}

// One element's update; m, v and p in place, the new parameter returned.
__device__ __forceinline__ float adamw_one(float grad, float& m, float& v, float p, float b1, float b2, float lr, float eps,
                                           float wd, float bc1, float bc2)
{
    m = b1 * m + (1.f - b1) * grad;
    v = b2 * v + (1.f - b2) * grad * grad;
    return p - lr * ((m / bc1) / (sqrtf(v / bc2) + eps) + wd * p);
}

template <typename G> __device__ void adamw(float* p, const G* g, float* m, float* v, void* low, int lowKind, i64 n,
                                            float lr, float b1, float b2, float eps, float wd, float bc1, float bc2,
                                            const float* sumsq, float maxNorm)
{
    const float clip = adamw_clip(sumsq, maxNorm);
    GRID_STRIDE(i, n)
    {
        float mi = m[i], vi = v[i];
        const float pi = adamw_one(to_f(g[i]) * clip, mi, vi, p[i], b1, b2, lr, eps, wd, bc1, bc2);
        m[i] = mi; v[i] = vi; p[i] = pi;
        if (lowKind == 1) ((bf16*)low)[i] = from_f<bf16>(pi);
        else if (lowKind == 2) ((f16*)low)[i] = from_f<f16>(pi);
    }
}

// The same update four elements at a time (n a multiple of 4; p, m, v 16-byte aligned, g and low aligned to 4 of their
// elements): 16-byte loads and stores of the F32 state instead of 4-byte ones. The arithmetic per element is adamw_one,
// so the results are bitwise those of the scalar kernel.
template <typename G> struct alignas(4 * sizeof(G)) G4 { G e[4]; };
struct alignas(16) f32x4 { float x, y, z, w; };
template <typename G> __device__ void adamw_vec4(float* p, const G* g, float* m, float* v, void* low, int lowKind, i64 n,
                                                 float lr, float b1, float b2, float eps, float wd, float bc1, float bc2,
                                                 const float* sumsq, float maxNorm)
{
    const float clip = adamw_clip(sumsq, maxNorm);
    GRID_STRIDE(q, n / 4)
    {
        const i64 i = q * 4;
        f32x4 pq = *reinterpret_cast<const f32x4*>(p + i), mq = *reinterpret_cast<const f32x4*>(m + i), vq = *reinterpret_cast<const f32x4*>(v + i);
        const G4<G> gq = *reinterpret_cast<const G4<G>*>(g + i);
        float* pe = &pq.x; float* me = &mq.x; float* ve = &vq.x;
#pragma unroll
        for (int j = 0; j < 4; j++) pe[j] = adamw_one(to_f(gq.e[j]) * clip, me[j], ve[j], pe[j], b1, b2, lr, eps, wd, bc1, bc2);
        *reinterpret_cast<f32x4*>(p + i) = pq; *reinterpret_cast<f32x4*>(m + i) = mq; *reinterpret_cast<f32x4*>(v + i) = vq;
        if (lowKind == 1)
        {
            G4<bf16> o;
#pragma unroll
            for (int j = 0; j < 4; j++) o.e[j] = from_f<bf16>(pe[j]);
            *reinterpret_cast<uint2*>((bf16*)low + i) = *reinterpret_cast<const uint2*>(&o);
        }
        else if (lowKind == 2)
        {
            G4<f16> o;
#pragma unroll
            for (int j = 0; j < 4; j++) o.e[j] = from_f<f16>(pe[j]);
            *reinterpret_cast<uint2*>((f16*)low + i) = *reinterpret_cast<const uint2*>(&o);
        }
    }
}

#define ADAMW(n, G)                                                                                          \
    extern "C" __global__ void adamw_##n(float* p, const G* g, float* m, float* v, void* low, int lowKind,   \
                                         i64 count, float lr, float b1, float b2, float eps, float wd,       \
                                         float bc1, float bc2, const float* sumsq, float maxNorm)             \
    {                                                                                                        \
        adamw<G>(p, g, m, v, low, lowKind, count, lr, b1, b2, eps, wd, bc1, bc2, sumsq, maxNorm);            \
    }                                                                                                        \
    extern "C" __global__ void adamw_vec4_##n(float* p, const G* g, float* m, float* v, void* low, int lowKind, \
                                              i64 count, float lr, float b1, float b2, float eps, float wd,  \
                                              float bc1, float bc2, const float* sumsq, float maxNorm)        \
    {                                                                                                        \
        adamw_vec4<G>(p, g, m, v, low, lowKind, count, lr, b1, b2, eps, wd, bc1, bc2, sumsq, maxNorm);       \
    }
FOR_FLOAT_TYPES(ADAMW)
