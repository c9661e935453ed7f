// AdamW over F32 master parameters with decoupled weight decay. The clipping factor
// min(1, maxNorm / (sqrt(sum of squares) + 1e-6)) is computed on the device from a scalar, so the
// host never waits for the gradient norm. Optionally writes a bf16 or f16 copy of the result.

// mul_rn, add_rn, ... (common.cuh): the update below is the CPU backend's (OptimizerKernels.AdamW) operation for
// operation, so the two backends agree bitwise on the same inputs.

__device__ __forceinline__ float adamw_clip(const float* sumsq, float maxNorm)
{
    if (!sumsq || !(maxNorm > 0.f)) return 1.f;
    // PyTorch's clip_grad_norm_ coefficient: maxNorm / (norm + 1e-6), clamped to 1, in double like the CPU backend.
    const double coefficient = (double)maxNorm / (sqrt_rn((double)*sumsq) + 1e-6);
    return coefficient < 1.0 ? (float)coefficient : 1.f;
}

// One element's update; m, v in place, the new parameter returned. ob1 = 1 - beta1 and ob2 = 1 - beta2 rounded from
// double, c1 = 1 / (1 - beta1^t) and c2 = 1 / (1 - beta2^t) likewise (the host computes them as the CPU backend does).
__device__ __forceinline__ float adamw_one(float grad, float& m, float& v, float p, float b1, float ob1, float b2, float ob2,
                                           float lr, float eps, float wd, float c1, float c2)
{
    m = add_rn(mul_rn(b1, m), mul_rn(ob1, grad));
    v = add_rn(mul_rn(b2, v), mul_rn(mul_rn(ob2, grad), grad));
    const float mHat = mul_rn(m, c1), vHat = mul_rn(v, c2);
    return sub_rn(p, mul_rn(lr, add_rn(div_rn(mHat, add_rn(sqrt_rn(vHat), eps)), mul_rn(wd, p))));
}

template <typename G> __device__ void adamw(float* p, const G* g, float* m, float* v, void* low, int lowKind, i64 n,
                                            float lr, float b1, float ob1, float b2, float ob2, float eps, float wd,
                                            float c1, float c2, const float* sumsq, float maxNorm)
{
    const float clip = adamw_clip(sumsq, maxNorm);
    GRID_STRIDE(i, n)
    {
        float mi = m[i], vi = v[i];
        const float pi = adamw_one(mul_rn(to_f(g[i]), clip), mi, vi, p[i], b1, ob1, b2, ob2, lr, eps, wd, c1, c2);
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
// Elements i .. i + 3 of adamw_vec4 (below) and adamw_items: i a multiple of 4, p, m, v 16-byte aligned, g and low aligned to
// 4 of their elements.
template <typename G> __device__ __forceinline__ void adamw_vec4_at(i64 i, float* p, const G* g, float* m, float* v, void* low,
    int lowKind, float lr, float b1, float ob1, float b2, float ob2, float eps, float wd, float c1, float c2, float clip)
{
    f32x4 pq = *reinterpret_cast<const f32x4*>(p + i), mq = *reinterpret_cast<const f32x4*>(m + i), vq = *reinterpret_cast<const f32x4*>(v + i);
    const G4<G> gq = *reinterpret_cast<const G4<G>*>(g + i);
    float* pe = &pq.x; float* me = &mq.x; float* ve = &vq.x;
#pragma unroll
    for (int j = 0; j < 4; j++) pe[j] = adamw_one(mul_rn(to_f(gq.e[j]), clip), me[j], ve[j], pe[j], b1, ob1, b2, ob2, lr, eps, wd, c1, c2);
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

template <typename G> __device__ void adamw_vec4(float* p, const G* g, float* m, float* v, void* low, int lowKind, i64 n,
                                                 float lr, float b1, float ob1, float b2, float ob2, float eps, float wd,
                                                 float c1, float c2, const float* sumsq, float maxNorm)
{
    const float clip = adamw_clip(sumsq, maxNorm);
    GRID_STRIDE(q, n / 4) adamw_vec4_at<G>(q * 4, p, g, m, v, low, lowKind, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, clip);
}

// Several ranges of the same flat arrays in one launch (IBackend.AdamWRanges: the parameter arena's runs of decayed and
// undecayed parameters, 98 launches a step for GPT-2 otherwise). items[2 w] is work item w's first element and
// items[2 w + 1] its element count times 2, plus 1 when its range is decayed; starts and counts are multiples of 4 (the host
// splits ranges into items of at most a fixed size, so the blocks share the work evenly). Block b takes items b,
// b + gridDim.x, ...; an item's weight decay is wd or 0, as the per-range launches pass it, so every element's update is
// adamw_vec4's bit for bit.
template <typename G> __device__ void adamw_items(const i64* items, int count, float* p, const G* g, float* m, float* v, void* low,
                                                  int lowKind, float lr, float b1, float ob1, float b2, float ob2, float eps,
                                                  float wd, float c1, float c2, const float* sumsq, float maxNorm)
{
    const float clip = adamw_clip(sumsq, maxNorm);
    for (int w = blockIdx.x; w < count; w += gridDim.x)
    {
        const i64 start = items[2 * w], packed = items[2 * w + 1];
        const float wdi = (packed & 1) ? wd : 0.f;
        const i64 end = start + (packed >> 1);
        for (i64 i = start + 4 * (i64)threadIdx.x; i < end; i += 4 * (i64)blockDim.x)
            adamw_vec4_at<G>(i, p, g, m, v, low, lowKind, lr, b1, ob1, b2, ob2, eps, wdi, c1, c2, clip);
    }
}

#define ADAMW(n, G)                                                                                          \
    extern "C" __global__ void adamw_##n(float* p, const G* g, float* m, float* v, void* low, int lowKind,   \
                                         i64 count, float lr, float b1, float ob1, float b2, float ob2,      \
                                         float eps, float wd, float c1, float c2, const float* sumsq,        \
                                         float maxNorm)                                                      \
    {                                                                                                        \
        adamw<G>(p, g, m, v, low, lowKind, count, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, sumsq, maxNorm);    \
    }                                                                                                        \
    extern "C" __global__ void adamw_vec4_##n(float* p, const G* g, float* m, float* v, void* low, int lowKind, \
                                              i64 count, float lr, float b1, float ob1, float b2, float ob2, \
                                              float eps, float wd, float c1, float c2, const float* sumsq,   \
                                              float maxNorm)                                                 \
    {                                                                                                        \
        adamw_vec4<G>(p, g, m, v, low, lowKind, count, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, sumsq, maxNorm); \
    }                                                                                                        \
    extern "C" __global__ void adamw_items_##n(const i64* items, int itemCount, float* p, const G* g, float* m, \
                                               float* v, void* low, int lowKind, float lr, float b1, float ob1, \
                                               float b2, float ob2, float eps, float wd, float c1, float c2,  \
                                               const float* sumsq, float maxNorm)                            \
    {                                                                                                        \
        adamw_items<G>(items, itemCount, p, g, m, v, low, lowKind, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, sumsq, maxNorm); \
    }
FOR_FLOAT_TYPES(ADAMW)

// Split F32 masters (IBackend.SplitMasters): a master's bits u = (hi << 16) + (int16)lo mod 2^32, hi the BF16 value the
// layers read (u rounded half away from zero in magnitude), lo the signed 16-bit remainder. The same integer steps as
// the CPU backend's OptimizerKernels.Split and Join, so the two agree bitwise.
__device__ __forceinline__ void split_master(float p, unsigned short& hi, unsigned short& lo)
{
    const unsigned u = __float_as_uint(p);
    const unsigned h = (u + 0x8000u) >> 16;
    hi = (unsigned short)h;
    lo = (unsigned short)(u - (h << 16));
}

__device__ __forceinline__ float join_master(unsigned short hi, unsigned short lo)
{
    return __uint_as_float(((unsigned)hi << 16) + (unsigned)(int)(short)lo);
}

// AdamW over split masters: join, adamw_one (bitwise the update of adamw above), split. hi and lo in place.
template <typename G> __device__ void adamw_split(unsigned short* hi, unsigned short* lo, const G* g, float* m, float* v, i64 n,
                                                  float lr, float b1, float ob1, float b2, float ob2, float eps, float wd,
                                                  float c1, float c2, const float* sumsq, float maxNorm)
{
    const float clip = adamw_clip(sumsq, maxNorm);
    GRID_STRIDE(i, n)
    {
        float mi = m[i], vi = v[i];
        const float pi = adamw_one(mul_rn(to_f(g[i]), clip), mi, vi, join_master(hi[i], lo[i]), b1, ob1, b2, ob2, lr, eps, wd, c1, c2);
        m[i] = mi; v[i] = vi;
        unsigned short h, l;
        split_master(pi, h, l);
        hi[i] = h; lo[i] = l;
    }
}

// Four elements per thread (n a multiple of 4; m, v 16-byte aligned; hi, lo 8-byte aligned; g aligned to 4 of its
// elements): the same per-element arithmetic as adamw_split.
struct alignas(8) u16x4 { unsigned short e[4]; };
template <typename G> __device__ void adamw_split_vec4(unsigned short* hi, unsigned short* lo, const G* g, float* m, float* v, i64 n,
                                                       float lr, float b1, float ob1, float b2, float ob2, float eps, float wd,
                                                       float c1, float c2, const float* sumsq, float maxNorm)
{
    const float clip = adamw_clip(sumsq, maxNorm);
    GRID_STRIDE(q, n / 4)
    {
        const i64 i = q * 4;
        u16x4 hq = *reinterpret_cast<const u16x4*>(hi + i), lq = *reinterpret_cast<const u16x4*>(lo + i);
        f32x4 mq = *reinterpret_cast<const f32x4*>(m + i), vq = *reinterpret_cast<const f32x4*>(v + i);
        const G4<G> gq = *reinterpret_cast<const G4<G>*>(g + i);
        float* me = &mq.x; float* ve = &vq.x;
#pragma unroll
        for (int j = 0; j < 4; j++)
        {
            const float pj = adamw_one(mul_rn(to_f(gq.e[j]), clip), me[j], ve[j], join_master(hq.e[j], lq.e[j]), b1, ob1, b2, ob2, lr, eps, wd, c1, c2);
            split_master(pj, hq.e[j], lq.e[j]);
        }
        *reinterpret_cast<f32x4*>(m + i) = mq; *reinterpret_cast<f32x4*>(v + i) = vq;
        *reinterpret_cast<u16x4*>(hi + i) = hq; *reinterpret_cast<u16x4*>(lo + i) = lq;
    }
}

#define ADAMW_SPLIT(n, G)                                                                                    \
    extern "C" __global__ void adamw_split_##n(unsigned short* hi, unsigned short* lo, const G* g, float* m, \
                                               float* v, i64 count, float lr, float b1, float ob1, float b2, \
                                               float ob2, float eps, float wd, float c1, float c2,           \
                                               const float* sumsq, float maxNorm)                            \
    {                                                                                                        \
        adamw_split<G>(hi, lo, g, m, v, count, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, sumsq, maxNorm);       \
    }                                                                                                        \
    extern "C" __global__ void adamw_split_vec4_##n(unsigned short* hi, unsigned short* lo, const G* g,      \
                                                    float* m, float* v, i64 count, float lr, float b1,       \
                                                    float ob1, float b2, float ob2, float eps, float wd,      \
                                                    float c1, float c2, const float* sumsq, float maxNorm)   \
    {                                                                                                        \
        adamw_split_vec4<G>(hi, lo, g, m, v, count, lr, b1, ob1, b2, ob2, eps, wd, c1, c2, sumsq, maxNorm);  \
    }
ADAMW_SPLIT(f32, float)
ADAMW_SPLIT(bf16, bf16)

extern "C" __global__ void split_masters(const float* p, unsigned short* hi, unsigned short* lo, i64 n)
{
    GRID_STRIDE(i, n)
    {
        unsigned short h, l;
        split_master(p[i], h, l);
        hi[i] = h; lo[i] = l;
    }
}

extern "C" __global__ void join_masters(const unsigned short* hi, const unsigned short* lo, float* p, i64 n)
{
    GRID_STRIDE(i, n) p[i] = join_master(hi[i], lo[i]);
}
