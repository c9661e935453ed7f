// Shared by every kernel file (prepended before compilation). No CUDA headers: NVRTC compiles
// this alone, so bf16 and f16 are 16-bit wrappers with explicit conversions; all math is fp32.
typedef long long i64;
struct bf16 { unsigned short x; };
struct f16 { unsigned short x; };

#define FULL_MASK 0xffffffffu
#define NEG_INF __int_as_float(0xff800000)
#define QNAN __int_as_float(0x7fc00000)

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(double v) { return (float)v; }
__device__ __forceinline__ float to_f(bf16 v) { return __uint_as_float(((unsigned)v.x) << 16); }
__device__ __forceinline__ float to_f(f16 v) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.x)); return f; }

template <typename T> __device__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_f<double>(float v) { return (double)v; }
// Round to nearest even, NaN kept quiet: the same rule as Tessera.Tensors.BFloat16 on the host.
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v)
{
    unsigned u = __float_as_uint(v);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) { r.x = (unsigned short)((u >> 16) | 0x40u); return r; }
    u += 0x7fffu + ((u >> 16) & 1u);
    r.x = (unsigned short)(u >> 16);
    return r;
}
template <> __device__ __forceinline__ f16 from_f<f16>(float v)
{
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.x) : "f"(v));
    return r;
}

// 2^x on the special-function unit, subnormal results flushed to zero (exp2f without fast math adds a scaling
// around the same instruction to keep them); 2^-inf = 0. Relative error about 2^-22.
__device__ __forceinline__ float fast_exp2(float x)
{
#ifdef __CUDA_ARCH__
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#else
    return exp2f(x);   // the host compile of the kernel emulation (tests/Tessera.Tests/Cuda/Emulation)
#endif
}
#define LOG2E 1.4426950408889634f

// Gemma 2's soft cap of an attention score or a logit: cap tanh(x / cap), x itself when cap is 0 (no cap). A score kept in
// base 2 (x log2 e) is capped the same way with cap log2 e, since log2e cap tanh(x / cap) = (cap log2e) tanh(x log2e / (cap log2e)).
__device__ __forceinline__ float soft_cap(float x, float cap) { return cap > 0.f ? cap * tanhf(x / cap) : x; }
// The cap's derivative at a capped value y = cap tanh(x / cap): 1 - tanh^2 = 1 - (y / cap)^2 (1 without a cap).
__device__ __forceinline__ float soft_cap_slope(float y, float cap)
{
    if (cap <= 0.f) return 1.f;
    const float u = y / cap;
    return 1.f - u * u;
}

// Rounded single operations that the compiler may not fuse into FMAs (nvrtc contracts a * b + c by default), for
// kernels that must agree bitwise with the CPU backend's C# arithmetic, which never contracts.
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float mul_rn(float a, float b) { float r; asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
__device__ __forceinline__ float add_rn(float a, float b) { float r; asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
__device__ __forceinline__ float sub_rn(float a, float b) { float r; asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
#else   // the host compile of the kernel emulation (ISO C++ does not contract across these calls)
__device__ __forceinline__ float mul_rn(float a, float b) { return a * b; }
__device__ __forceinline__ float add_rn(float a, float b) { return a + b; }
__device__ __forceinline__ float sub_rn(float a, float b) { return a - b; }
#endif
#ifdef __CUDA_ARCH__
__device__ __forceinline__ float div_rn(float a, float b) { float r; asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
__device__ __forceinline__ float sqrt_rn(float a) { float r; asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(a)); return r; }
__device__ __forceinline__ double sqrt_rn(double a) { double r; asm("sqrt.rn.f64 %0, %1;" : "=d"(r) : "d"(a)); return r; }
#else   // the kernel emulation: IEEE division and square root, correctly rounded as the PTX instructions are
__device__ __forceinline__ float div_rn(float a, float b) { return a / b; }
__device__ __forceinline__ float sqrt_rn(float a) { return std::sqrt(a); }
__device__ __forceinline__ double sqrt_rn(double a) { return std::sqrt(a); }
#endif

// RoPE (rotate-half pairing): the angle of pair i of a head of size D at position pos, pos * (inverse frequency i) in
// double, its cosine and sine (times the attention factor) rounded to float; then the pair (x1, x2) = (x[i], x[i + D/2]) becomes
// (x1 cos - x2 sin, x2 cos + x1 sin), each product and sum rounded on its own as the CPU backend computes it. One rule
// for every kernel that rotates (rope.cu, the fused QKV product in gemv.cu).
// RoPE frequencies (CudaBackend's RopeArgs, field for field): a device table of the D/2 inverse frequencies (doubles from
// RopeFrequencies.At on the host, so both backends read the same values), the factor on cos and sin (YaRN, LongRoPE), and
// the two rules that depend on the length len a call reaches (rope_length). Dynamic NTK (dyn_factor 0: off): past
// dyn_original positions the base becomes theta ((dyn_factor len / dyn_original) - (dyn_factor - 1))^(D / (D - 2)), as
// RopeFrequencies.DynamicBase computes it. LongRoPE (inv_long null: off): past long_original positions the frequencies are
// the second table's (transformers' longrope), for every position of the call. rot: the channels of a head that rotate
// (partial rotary: the first rot; 0 for the whole head); the tables and the rules are then over rot channels (rot / 2 pairs).
struct RopeFreq
{
    const double* inv;
    const double* inv_long;
    double attention, theta, dyn_factor;
    int dyn_original, long_original, rot, pad;
};
// The channels of a head of D that rotate.
__device__ __forceinline__ int rope_rotated(const RopeFreq& f, int D) { return f.rot > 0 ? f.rot : D; }
// The channels (c0, c1) of pair i (0 <= i < D / 2) of a head of D channels of which the first R rotate: pairs below R / 2
// are RoPE's (i, i + R / 2) and turn by frequency i; the rest pass through, as the pairs (R + j, R + j + (D - R) / 2) for
// j = i - R / 2. For whole heads (R = D) it is (i, i + D / 2).
__device__ __forceinline__ void rope_pair(int i, int D, int R, int& c0, int& c1)
{
    const int hr = R / 2;
    if (i < hr) { c0 = i; c1 = i + hr; }
    else { const int j = i - hr; c0 = R + j; c1 = R + j + (D - R) / 2; }
}
// Whether a call reaching len positions leaves the table inv (dynamic NTK past its length, or LongRoPE's long table).
__device__ __forceinline__ bool rope_switched(const RopeFreq& f, int len)
{
    return (f.dyn_factor > 0.0 && len > f.dyn_original) || (f.inv_long && len > f.long_original);
}
__device__ __forceinline__ double rope_inv_freq(const RopeFreq& f, int i, int D, int len)
{
    if (f.dyn_factor > 0.0 && len > f.dyn_original)
    {
        const double base = f.theta * pow(f.dyn_factor * len / f.dyn_original - (f.dyn_factor - 1.0), (double)D / (D - 2));
        return pow(base, -2.0 * i / D);
    }
    if (f.inv_long && len > f.long_original) return f.inv_long[i];
    return f.inv[i];
}
// The length a call reaches (what dynamic NTK and LongRoPE read; 0 when neither is on): start + Tn, or the longest
// starts[b] + Tn of the batch (read on the device).
__device__ __forceinline__ int rope_length(const RopeFreq& f, const int* starts, int B, int start, int Tn)
{
    if (!(f.dyn_factor > 0.0) && !f.inv_long) return 0;
    if (!starts) return start + Tn;
    int m = 0;
    for (int b = 0; b < B; b++) m = max(m, starts[b]);
    return m + Tn;
}
// cos and sin in double, scaled by the attention factor in double, rounded to float once: the CPU backend's arithmetic.
__device__ __forceinline__ void rope_angle_at(int pos, double inv_freq, double attention, float& cf, float& sf)
{
    double s, c;
    sincos((double)pos * inv_freq, &s, &c);
    cf = (float)(c * attention);
    sf = (float)(s * attention);
}
__device__ __forceinline__ void rope_rotate(float x1, float x2, float cf, float sf, float& y1, float& y2)
{
    y1 = sub_rn(mul_rn(x1, cf), mul_rn(x2, sf));
    y2 = add_rn(mul_rn(x2, cf), mul_rn(x1, sf));
}

// Programmatic dependent launch (sm_90+). A kernel launched with the attribute (CudaBackend's dependent launches) may
// start while its predecessor in the stream still runs: it calls pdl_wait() before it reads or writes anything the
// predecessor touches (that waits for the predecessor's completion and its memory), then pdl_launch_dependents() so
// that its own successor may start once every CTA of this grid is running. Both are no-ops for a normal launch.
__device__ __forceinline__ void pdl_wait()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents()
{
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32), returned to every thread; deterministic.
template <typename A> __device__ A block_sum(A v)
{
    __shared__ A partial[32];
    __syncthreads(); // a previous call may still be reading partial
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    A r = 0;
    int warps = blockDim.x >> 5;
    for (int i = 0; i < warps; i++) r += partial[i];
    return r;
}
__device__ float block_max(float v)
{
    __shared__ float partial[32];
    __syncthreads();
    v = warp_max(v);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = NEG_INF;
    int warps = blockDim.x >> 5;
    for (int i = 0; i < warps; i++) r = fmaxf(r, partial[i]);
    return r;
}

// Online softmax statistics: (m, s) with s = sum exp(x - m), merged pairwise.
__device__ __forceinline__ void online_add(float& m, float& s, float v)
{
    if (v > m) { s = s * expf(m - v) + 1.f; m = v; }
    else if (v != NEG_INF) s += expf(v - m); // a -inf logit adds nothing (and -inf - -inf would be NaN)
}
__device__ __forceinline__ void online_merge(float& m, float& s, float m2, float s2)
{
    float mm = fmaxf(m, m2);
    if (mm == NEG_INF) return;
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}
__device__ void block_online(float& m, float& s)
{
    __shared__ float pm[32], ps[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        float m2 = __shfl_xor_sync(FULL_MASK, m, o), s2 = __shfl_xor_sync(FULL_MASK, s, o);
        online_merge(m, s, m2, s2);
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) { pm[threadIdx.x >> 5] = m; ps[threadIdx.x >> 5] = s; }
    __syncthreads();
    m = NEG_INF; s = 0.f;
    int warps = blockDim.x >> 5;
    for (int i = 0; i < warps; i++) online_merge(m, s, pm[i], ps[i]);
}

__device__ __forceinline__ void atomic_add(float* address, float v) { atomicAdd(address, v); }
// 16-bit atomics by compare-and-swap on the aligned 32-bit word that holds the element.
template <typename H> __device__ void atomic_add_half(H* address, float v)
{
    unsigned* word = (unsigned*)((size_t)address & ~(size_t)3);
    bool high = ((size_t)address & 2) != 0;
    unsigned old = *word, assumed;
    do
    {
        assumed = old;
        H cur; cur.x = high ? (unsigned short)(assumed >> 16) : (unsigned short)(assumed & 0xffffu);
        unsigned short next = from_f<H>(to_f(cur) + v).x;
        unsigned updated = high ? ((assumed & 0x0000ffffu) | ((unsigned)next << 16)) : ((assumed & 0xffff0000u) | next);
        old = atomicCAS(word, assumed, updated);
    } while (assumed != old);
}
__device__ __forceinline__ void atomic_add(bf16* address, float v) { atomic_add_half(address, v); }
__device__ __forceinline__ void atomic_add(f16* address, float v) { atomic_add_half(address, v); }

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// Instantiates MACRO(suffix, type) for every floating-point storage type.
#define FOR_FLOAT_TYPES(MACRO) MACRO(f32, float) MACRO(bf16, bf16) MACRO(f16, f16)

// 16 bytes of T as fp32 values (VEC = 16 / sizeof(T)); p 16-byte aligned.
struct alignas(16) Bytes16 { unsigned w[4]; };
template <typename T> struct Vec16 { static const int N = 16 / sizeof(T); };
template <typename T> __device__ __forceinline__ void load16(const T* p, float* out)
{
    Bytes16 u = *reinterpret_cast<const Bytes16*>(p);
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < Vec16<T>::N; j++) out[j] = to_f(e[j]);
}
template <typename T> __device__ __forceinline__ void store16(T* p, const float* in)
{
    Bytes16 u;
    T* e = reinterpret_cast<T*>(&u);
#pragma unroll
    for (int j = 0; j < Vec16<T>::N; j++) e[j] = from_f<T>(in[j]);
    *reinterpret_cast<Bytes16*>(p) = u;
}
// bf16 vectors through the hardware's round-to-nearest-even pair conversion (one instruction per two values instead
// of from_f's integer rounding); finite values round as from_f does, a NaN comes out as the canonical quiet NaN.
template <> __device__ __forceinline__ void store16<bf16>(bf16* p, const float* in)
{
    Bytes16 u;
#pragma unroll
    for (int j = 0; j < 4; j++) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(u.w[j]) : "f"(in[2 * j + 1]), "f"(in[2 * j]));
    *reinterpret_cast<Bytes16*>(p) = u;
}
// Unpacks 16 bytes already loaded (kept in registers as raw words).
template <typename T> __device__ __forceinline__ void unpack16(const Bytes16& u, float* out)
{
    const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
    for (int j = 0; j < Vec16<T>::N; j++) out[j] = to_f(e[j]);
}
// Whether three pointers are all 16-byte aligned (the vectorized element-wise paths).
__device__ __forceinline__ bool aligned16(const void* a, const void* b, const void* c)
{
    return (((unsigned long long)a | (unsigned long long)b | (unsigned long long)c) & 15ull) == 0;
}

// ------------------------------------------------------------------------------ tensor-core building blocks
// Shared by flash_attention.cu, flash_attention_hopper.cu and paged_attention.cu: shared-memory addresses, cp.async
// copies, ldmatrix fragment loads and mma.sync.m16n8k16 (bf16/f16 in, fp32 accumulators), the swizzled tile layout
// below, and the paged pool's row loader. The inline PTX is device-only; the host compile of the kernel emulation
// (tests/Tessera.Tests/Cuda/Emulation/cuda_emulation.h) calls its warp-collective stand-ins (bf16; f16's mma has none).
//
// mma.m16n8k16 fragments (g = lane / 4, c = lane % 4):
//   A 16x16 row-major: a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..)
//   B 16x8 col-major:  b0 (k 2c..2c+1, n g), b1 (k 2c+8.., n g)
//   C 16x8 fp32:       c0 c1 (g, 2c..2c+1), c2 c3 (g+8, 2c..2c+1)
// Swizzled tiles: ROWS x D 16-bit values, a row of D/8 16-byte chunks; chunk c of row r is stored at chunk c ^ (r & 7),
// so the 8 rows that one ldmatrix reads hit 8 different bank groups.
// A float another CTA wrote (split partials merged by the last CTA): through L2, not a stale L1 line (inline PTX: no CUDA
// headers under NVRTC; a plain load on the CPU emulation, which has no L1).
__device__ __forceinline__ float load_cg(const float* p)
{
#ifdef __CUDA_ARCH__
    float r;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(r) : "l"(p));
    return r;
#else
    return *p;
#endif
}
#ifdef __CUDA_ARCH__
__device__ __forceinline__ unsigned smem_u32(const void* p)
{
    unsigned r;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(r) : "l"(p));
    return r;
}
// 16 bytes global -> shared, asynchronously; zero-filled when !valid (src is then not read). The "memory" clobber is the
// Hopper file's own helper's, so its measured kernels compile from the same text as before the helpers moved here.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid)
{
    int n = valid ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }
__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
}
// One 32-bit word of shared memory at a shared-space address (as smem_u32 gives).
__device__ __forceinline__ unsigned lds_u32(unsigned addr)
{
    unsigned r;
    asm volatile("ld.shared.u32 %0, [%1];" : "=r"(r) : "r"(addr));
    return r;
}
// Four words (16 bytes, 16-byte aligned) of shared memory at a shared-space address.
__device__ __forceinline__ void lds_u32x4(unsigned addr, unsigned (&r)[4])
{
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}
// A kernel's dynamic shared memory (its extern __shared__ array; on the emulation, the CTA's own memory when its cluster's
// CTAs run together).
template <typename T> __device__ __forceinline__ T* cta_dynamic_shared(T* declared) { return declared; }
#else   // the host compile of the kernel emulation: its warp-collective stand-ins (cuda_emulation.h)
__device__ __forceinline__ unsigned smem_u32(const void* p) { return emu_smem_u32(p); }
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) { emu_cp_async16(dst, src, valid); }
__device__ __forceinline__ void cp_async_commit() {}
template <int N> __device__ __forceinline__ void cp_async_wait() {}
__device__ __forceinline__ void ldsm_x4(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    unsigned r[4];
    emu_ldsm_x4(addr, r, false);
    r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3];
}
__device__ __forceinline__ void ldsm_x4_t(unsigned addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    unsigned r[4];
    emu_ldsm_x4(addr, r, true);
    r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3];
}
__device__ __forceinline__ unsigned lds_u32(unsigned addr) { return emu_lds_u32(addr); }
__device__ __forceinline__ void lds_u32x4(unsigned addr, unsigned (&r)[4])
{
    for (int i = 0; i < 4; i++) r[i] = emu_lds_u32(addr + 4 * i);
}
template <typename T> __device__ __forceinline__ T* cta_dynamic_shared(T* declared) { return emu_cta_dynamic_shared(declared); }
#endif

// Per 16-bit type: the mma instruction (c += a b) and packing two floats (lo in the low half).
template <typename T> struct Mma;
template <> struct Mma<bf16>
{
    static __device__ __forceinline__ void run(float* c, const unsigned* a, unsigned b0, unsigned b1)
    {
#ifdef __CUDA_ARCH__
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
        emu_mma_m16n8k16(c, a, b0, b1, emu_bf16_bits);
#endif
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi)
    {
#ifdef __CUDA_ARCH__
        unsigned r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
#else
        return from_f<bf16>(lo).x | ((unsigned)from_f<bf16>(hi).x << 16);   // the same rounding for finite values
#endif
    }
};
template <> struct Mma<f16>
{
    static __device__ __forceinline__ void run(float* c, const unsigned* a, unsigned b0, unsigned b1)
    {
#ifdef __CUDA_ARCH__
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
    static __device__ __forceinline__ unsigned pack(float lo, float hi)
    {
        unsigned r = 0;   // none on the emulation (its f16 conversions are PTX)
#ifdef __CUDA_ARCH__
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#endif
        return r;
    }
};

// An RMSNorm's scale element (norm.cu, the matrix-vector kernels' staging, the head norms of rope.cu): w, or with unit
// (Gemma's norms) 1 + w rounded to T, the bits of a scale formed in a tensor of its own (a fill and an accumulate).
template <typename T> __device__ __forceinline__ float norm_scale(float w, int unit) { return unit ? to_f(from_f<T>(1.f + w)) : w; }

// 1 / x on the special-function unit (rcp.approx.ftz: within 1 ulp; 1 / inf = 0), 1.f / x on the host.
__device__ __forceinline__ float fast_rcp(float x)
{
#ifdef __CUDA_ARCH__
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#else
    return 1.f / x;
#endif
}
// The logistic sigmoid 1 / (1 + e^-g) from the special-function unit's 2^x and 1 / x: two instructions and a multiply-add
// where expf and an IEEE division take some twenty (the SwiGLU epilogues of gemm_hopper.cu issue one or two a product
// element, and ncu put 47 % of the SwiGLU gradient form's consumer time in its epilogue). Relative error below 2^-21 + |g|
// 2^-24 (the rounding of g log2 e), some 1e-6 for |g| < 16: under the 2^-9 of the 16-bit outputs and the 1e-5 norm-wise
// check of fp32 ones; 0 for g below about -88 (2^+inf = inf), 1 above about 17.
__device__ __forceinline__ float sigmoid(float g) { return fast_rcp(1.f + fast_exp2(-g * LOG2E)); }
// SiLU as the SwiGLU kernels apply it (elementwise.cu, gemv.cu, the decode products), in fp32.
__device__ __forceinline__ float silu(float g) { return g * sigmoid(g); }
// SwiGLU's gradient as its backward kernels form it (elementwise.cu, gemm_hopper.cu's SwiGLU gradient form), in fp32: from d,
// the gradient of SiLU(g) u, dg = d u SiLU'(g) and du = d SiLU(g), SiLU'(g) = s (1 + g (1 - s)) for s the sigmoid of g.
__device__ __forceinline__ void swiglu_grad(float d, float g, float u, float& dg, float& du)
{
    const float sig = sigmoid(g);
    dg = d * u * sig * (1.f + g * (1.f - sig));
    du = d * g * sig;
}
// GPT-2's gelu_new: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
__device__ __forceinline__ float gelu(float x)
{
    const float c = 0.7978845608028654f;
    return 0.5f * x * (1.f + tanhf(c * (x + 0.044715f * x * x * x)));
}

// The decode products' output element (decode_gemm.cu, decode_gemm_hopper.cu): alpha * sum + bias[n] + beta * y[at] (the
// residual), rounded to T; with SwiGLU, SiLU(gate + bg[o]) * (up + bu[o]).
template <typename T>
__device__ __forceinline__ void store_product(T* y, i64 at, float sum, float alpha, const T* bias, int n, float beta)
{
    float v = alpha * sum;
    if (bias) v += to_f(bias[n]);
    if (beta != 0.f) v += beta * to_f(y[at]);
    y[at] = from_f<T>(v);
}
template <typename T>
__device__ __forceinline__ void store_swiglu(T* y, i64 at, float gate, float up, const T* gate_bias, const T* up_bias, int o)
{
    y[at] = from_f<T>(silu(gate + (gate_bias ? to_f(gate_bias[o]) : 0.f)) * (up + (up_bias ? to_f(up_bias[o]) : 0.f)));
}

// Two 16-bit values of T in a word times two others, each correctly rounded to T (fma with -0: the exact product rounded
// once, as from_f(to_f(a) * to_f(b)), whose fp32 product of two 16-bit floats is exact).
template <typename T> __device__ __forceinline__ unsigned mul2_rn(unsigned a, unsigned b);
template <> __device__ __forceinline__ unsigned mul2_rn<bf16>(unsigned a, unsigned b)
{
#ifdef __CUDA_ARCH__
    unsigned r;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
    return r;
#else
    const bf16 al{(unsigned short)(a & 0xffff)}, ah{(unsigned short)(a >> 16)}, bl{(unsigned short)(b & 0xffff)}, bh{(unsigned short)(b >> 16)};
    return from_f<bf16>(to_f(al) * to_f(bl)).x | ((unsigned)from_f<bf16>(to_f(ah) * to_f(bh)).x << 16);
#endif
}
template <> __device__ __forceinline__ unsigned mul2_rn<f16>(unsigned a, unsigned b)
{
    unsigned r = 0;   // none on the emulation (its f16 conversions are PTX)
#ifdef __CUDA_ARCH__
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
#endif
    return r;
}
// The squares of a word's two 16-bit values of T.
template <typename T> __device__ __forceinline__ float sumsq2(unsigned v)
{
    const float lo = to_f(T{(unsigned short)(v & 0xffff)}), hi = to_f(T{(unsigned short)(v >> 16)});
    return lo * lo + hi * hi;
}

// Byte offset of element (r, col) (col a multiple of 8) in a swizzled tile of rows of D values.
template <int D> __device__ __forceinline__ unsigned swz(int r, int col)
{
    return (unsigned)(r * D * 2 + ((((col >> 3) ^ (r & 7))) << 4));
}

// Per-lane ldmatrix offsets into a swizzled tile of rows of D 16-bit values. Every row a lane addresses has r & 7 = lane & 7,
// so a swizzled offset is a per-lane base for each 16-column step plus a compile-time row offset that folds into the
// instruction. ldsm_offset_rows: x4 over 16 rows x 16 columns at step c as two n8 B fragments (K as the B operand of QK^T);
// ldsm_offset_cols: the .trans x4 over 16 rows (keys) x 16 columns at step c (V as the B operand of PV).
template <int D> __device__ __forceinline__ unsigned ldsm_offset_rows(int lane, int c)
{
    return (unsigned)(((lane & 7) + ((lane >> 4) << 3)) * D * 2 + (((2 * c + ((lane >> 3) & 1)) ^ (lane & 7)) << 4));
}
template <int D> __device__ __forceinline__ unsigned ldsm_offset_cols(int lane, int c)
{
    return (unsigned)(((lane & 7) + ((lane >> 3) & 1) * 8) * D * 2 + (((2 * c + (lane >> 4)) ^ (lane & 7)) << 4));
}
template <int D> struct TileOffsets
{
    unsigned rows[D / 16], cols[D / 16];
    __device__ __forceinline__ explicit TileOffsets(int lane)
    {
#pragma unroll
        for (int c = 0; c < D / 16; c++) { rows[c] = ldsm_offset_rows<D>(lane, c); cols[c] = ldsm_offset_cols<D>(lane, c); }
    }
};

// Rows of a paged KV pool (paged_attention.cu's layout): position p at slot table[p / block_size] * block_size +
// p % block_size, base + slot * stride (base already at the kv head, stride 2K * D); a tile's rows come from up to
// ROWS / block_size blocks, each thread looking up the block of every row it copies. Rows at or past limit, or below
// first, are zero-filled without reading the table (a block left of a sliding window may have gone back to the pool).
// table_first: the block index of table[0] (0 for a sequence's whole table in global memory; a copy of part of it, e.g.
// paged_decode_mma's staged table in shared memory, starts at its first block).
template <typename T> struct PagedRows
{
    const T* base;
    const int* table;
    int block_size;
    i64 stride;
    int first;
    int table_first = 0;
    template <int D, int ROWS, int NT> __device__ __forceinline__ void load(unsigned dst, int row0, int limit, int tid) const
    {
        constexpr int CH = D / 8, RS = NT / CH, N = ROWS * CH / NT;
        static_assert(NT % CH == 0 && (ROWS * CH) % NT == 0 && RS % 8 == 0, "PagedRows::load: thread count must tile the rows");
        const int r = tid / CH, c = tid % CH;
        const unsigned d0 = dst + (unsigned)(r * D * 2 + ((c ^ (r & 7)) << 4));
#pragma unroll
        for (int k = 0; k < N; k++)
        {
            const int p = row0 + r + k * RS;
            const bool ok = p < limit && p >= first;
            const T* src = ok ? base + ((i64)table[p / block_size - table_first] * block_size + p % block_size) * stride + c * 8 : base;
            cp_async16(d0 + k * RS * D * 2, src, ok);
        }
    }
};

// ---- the 128-byte swizzle of wgmma's shared-memory operands (flash_attention_hopper.cu's tiles)
// A tile of ROWS x D 16-bit values is D/64 column blocks of ROWS x 64 values; row r of a block is 128 bytes at r * 128, its
// 16-byte chunk c stored at chunk c ^ (r & 7). Byte offset of chunk c (values 8c .. 8c + 7) of row r:
template <int ROWS> __device__ __forceinline__ unsigned sw128_offset(int r, int c)
{
    return (unsigned)((c >> 3) * ROWS * 128 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

// Loads ROWS rows of D values (rows row0.. of a (rows, stride) matrix; rows >= limit zero-filled) into a swizzled tile
// at shared address dst (1,024-byte aligned), with the CTA's NT threads. Each thread copies one chunk c of rows
// r, r + RS, ...: RS is a multiple of 8, so all its rows share r & 7 and one swizzled base plus a constant step serves.
// Every copy checked against limit: for the tiles a kernel loads once (load_tile_sw128 for those it loads in a loop).
template <int D, int ROWS, int NT, typename T>
__device__ __forceinline__ void load_tile_sw128_bounded(unsigned dst, const T* base, i64 stride, int row0, int limit, int tid)
{
    constexpr int CH = D / 8, RS = NT / CH, N = ROWS * CH / NT;
    static_assert(RS % 8 == 0 && (ROWS * CH) % NT == 0, "load_tile_sw128: NT threads must tile the rows, 8 rows a pass at least");
    const int r = tid / CH, c = tid % CH;
    const unsigned d0 = dst + sw128_offset<ROWS>(r, c);
    const T* src = base + (i64)(row0 + r) * stride + c * 8;
    const i64 step = (i64)RS * stride;
#pragma unroll
    for (int k = 0; k < N; k++)
    {
        const bool ok = row0 + r + k * RS < limit;
        cp_async16(d0 + k * RS * 128, ok ? src + k * step : base, ok);
    }
}
// The same, with a path without bounds where every row is inside (all but a sequence's last tile; uniform over the CTA):
// one pointer stepped along. ncu counted about 9 instructions a copy on the bounded path, a fifth of the attention
// forward's instructions; this path takes about 4. For the tiles of a kernel's main loop: the second path costs registers,
// so the tiles loaded once take load_tile_sw128_bounded (the fp8 paged prefill spilled 28 bytes with this one for Q).
template <int D, int ROWS, int NT, typename T>
__device__ __forceinline__ void load_tile_sw128(unsigned dst, const T* base, i64 stride, int row0, int limit, int tid)
{
    if (row0 + ROWS > limit)
    {
        load_tile_sw128_bounded<D, ROWS, NT>(dst, base, stride, row0, limit, tid);
        return;
    }
    constexpr int CH = D / 8, RS = NT / CH, N = ROWS * CH / NT;
    const int r = tid / CH, c = tid % CH;
    const unsigned d0 = dst + sw128_offset<ROWS>(r, c);
    const T* src = base + (i64)(row0 + r) * stride + c * 8;
    const i64 step = (i64)RS * stride;
#pragma unroll
    for (int k = 0; k < N; k++, src += step) cp_async16(d0 + k * RS * 128, src, true);
}

// 4 bytes global -> shared, asynchronously: the first `bytes` (0 to 4) of the word at src, the rest zero-filled (src is not
// read past them; 0: not read at all). src 4-byte aligned.
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, int bytes)
{
#ifdef __CUDA_ARCH__
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(dst), "l"(src), "r"(bytes) : "memory");
#else
    emu_cp_async4(dst, src, bytes);
#endif
}
__device__ __forceinline__ void cp_async4(unsigned dst, const void* src, bool valid) { cp_async4(dst, src, valid ? 4 : 0); }

// The first ST - 1 stages of a cp.async ring whose weight tiles no earlier kernel writes (the decode products): with early,
// load_w(s, s) for every stage before pdl_wait (the predecessor may still be running), load_x(s, s), the activations, after
// it; without, both after. Commit group s holds stage s's activations (and, for s = 0, every early weight copy), so "group
// s complete" still means "stage s complete". Stages past `tiles` commit empty groups.
template <int ST, typename W, typename X>
__device__ __forceinline__ void prologue_weights_first(int tiles, int early, W load_w, X load_x)
{
    if (early)
        for (int s = 0; s < ST - 1; s++)
            if (s < tiles) load_w(s, s);
    pdl_wait();
    pdl_launch_dependents();
    for (int s = 0; s < ST - 1; s++)
    {
        if (s < tiles)
        {
            if (!early) load_w(s, s);
            load_x(s, s);
        }
        cp_async_commit();
    }
}

// Where the Hopper forward's key or value rows come from, into the 128-byte-swizzled layout (as flash_attention.cu's
// DenseRows / PagedRows are for its own swizzle). DenseRowsSw128: row r of a (.., S, .., D) tensor at base + r * stride
// (load_tile_sw128, the training kernels' code). PagedRowsSw128: position r of a paged KV pool (paged_attention.cu's
// layout) at slot table[r / block_size] * block_size + r % block_size, base + slot * stride (base already at the kv head,
// stride 2K * D); the same thread-to-chunk map, each thread looking up the block of every row it copies. Rows at or past
// limit are zero-filled without reading the table. No window: every position below limit has its block.
template <typename T> struct DenseRowsSw128
{
    const T* base;
    i64 stride;
    template <int D, int ROWS, int NT> __device__ __forceinline__ void load(unsigned dst, int row0, int limit, int tid) const
    {
        load_tile_sw128<D, ROWS, NT>(dst, base, stride, row0, limit, tid);
    }
};
template <typename T> struct PagedRowsSw128
{
    const T* base;
    const int* table;
    int block_size;
    i64 stride;
    template <int D, int ROWS, int NT> __device__ __forceinline__ void load(unsigned dst, int row0, int limit, int tid) const
    {
        constexpr int CH = D / 8, RS = NT / CH, N = ROWS * CH / NT;
        static_assert(RS % 8 == 0 && (ROWS * CH) % NT == 0, "PagedRowsSw128::load: NT threads must tile the rows");
        const int r = tid / CH, c = tid % CH;
        const unsigned d0 = dst + sw128_offset<ROWS>(r, c);
#pragma unroll
        for (int k = 0; k < N; k++)
        {
            const int p = row0 + r + k * RS;
            const bool ok = p < limit;
            const T* src = ok ? base + ((i64)table[p / block_size] * block_size + p % block_size) * stride + c * 8 : base;
            cp_async16(d0 + k * RS * 128, src, ok);
        }
    }
};

// ---- quantized paged KV pools (Tessera.Tensors.PagedKvPool): a byte a value, int8 values or FP8 E4M3 codes
// A pool of bytes (Blocks, BlockSize, 2K, D) with one fp32 scale per (position, head) in scales (Blocks, BlockSize, 2K):
// head r of slot s stands for scales[s * 2K + r] * Code::value(pool[(s * 2K + r) * D + d]), the code being the pool's
// (KvCode: Int8Code for a pool of signed char, Fp8Code for one of unsigned char). paged_append_q writes them (symmetric:
// scale = max|row| / Code::levels, a row of zeros scale 0); every attention kernel that reads a pool of T is also
// instantiated over P = signed char and P = unsigned char, reading these helpers instead of T's loads: KvVec for the
// CUDA-core kernels' registers, PagedRowsQuantized / PagedRowsSw128Quantized for the tensor-core kernels' shared-memory
// tiles (the row sources' loaders, dequantizing into the 16-bit tile the kernel's ldmatrix or wgmma reads: the tile and
// everything after it are the 16-bit kernel's own). For P = T every helper is the kernel's former code.
// Each code's instantiations sit in a module of their own (KernelLibrary.QuantizedKvModule): FOR_KV_CODES below.

// x rounded to the nearest integer, ties to even (the CPU's MidpointRounding.ToEven).
__device__ __forceinline__ float round_even(float x)
{
#ifdef __CUDA_ARCH__
    float r;
    asm("cvt.rni.f32.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
#else
    return std::nearbyint(x);   // the emulation: the default rounding mode, to nearest even
#endif
}

// ---- FP8 (OCP E4M3 "fn"): sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities, NaN 0x7F/0xFF, largest 448.
// Shared by quantized.cu (dequantization, lookups, the row quantizer) and gemv.cu (the FP8 matrix-vector form).

// The E4M3 code of v: round to nearest, ties to even; magnitudes above 448 (infinities too) saturate to +-448; NaN gives
// 0x7F. Bit for bit Float8E4M3.FromSingle (the CPU's), and what cvt.rn.satfinite.e4m3x2.f32 does on sm_89+; written out so
// that every architecture and the CPU emulation compute the same codes.
__device__ __forceinline__ unsigned char e4m3_from_f(float v)
{
    const unsigned bits = __float_as_uint(v), sign = (bits >> 24) & 0x80u, mag = bits & 0x7fffffffu;
    if (mag > 0x7f800000u) return 0x7f;
    if (mag > 0x43e00000u) return (unsigned char)(sign | 0x7eu);              // above 448
    if (mag < 0x3c800000u)                                                     // below 2^-6: steps of 2^-9, v 2^9 exact
        return (unsigned char)(sign | (unsigned)round_even(__uint_as_float(mag) * 512.f));
    unsigned code = (((mag >> 23) - 120u) << 3) | ((mag >> 20) & 7u);         // exponent rebiased 127 -> 7, 3 mantissa bits
    const unsigned dropped = mag & 0xfffffu;
    if (dropped > 0x80000u || (dropped == 0x80000u && (code & 1u))) code++;    // a carry moves into the exponent
    return (unsigned char)(sign | (code < 0x7eu ? code : 0x7eu));
}

// The value of an E4M3 code (exact in fp32).
__device__ __forceinline__ float e4m3_to_f(unsigned char c)
{
    const unsigned sign = (unsigned)(c & 0x80u) << 24, e = (c >> 3) & 15u, m = c & 7u;
    if ((c & 0x7fu) == 0x7fu) return QNAN;
    if (e == 0) return __uint_as_float(sign | __float_as_uint((float)m * 0.001953125f));   // m 2^-9
    return __uint_as_float(sign | ((e + 120u) << 23) | (m << 20));
}

// The value a stored byte stands for before its row's scale, and how a quantizing append writes it (the KV cache's
// paged_append_q; Tessera.Tensors.PagedKvPool.QuantizeRow on the CPU, the same fp32 operations): with big = max|row| > 0
// and scale = div_rn(big, levels), encode(x, row_factor(big, scale)) is the code of x. Shared by quantized.cu (the
// quantized weights' dequantization and lookups) and the quantized KV pools.
// Int8Code: an int8 value; x (127 / big) rounded to nearest even, clamped to [-127, 127] (Int8Quantization.QuantizeRow).
struct Int8Code
{
    typedef signed char Byte;
    static constexpr float levels = 127.f;
    __device__ __forceinline__ static float value(signed char b) { return (float)b; }
    __device__ __forceinline__ static float row_factor(float big, float) { return div_rn(127.f, big); }
    __device__ __forceinline__ static signed char encode(float x, float factor)
    {
        return (signed char)fminf(fmaxf(round_even(mul_rn(x, factor)), -127.f), 127.f);
    }
};
// Fp8Code: an OCP E4M3 code (e4m3_to_f); e4m3(x / scale), an IEEE division (Fp8Quantization.QuantizeKvRow).
struct Fp8Code
{
    typedef unsigned char Byte;
    static constexpr float levels = 448.f;
    __device__ __forceinline__ static float value(unsigned char b) { return e4m3_to_f(b); }
    __device__ __forceinline__ static float row_factor(float, float scale) { return scale; }
    __device__ __forceinline__ static unsigned char encode(float x, float scale) { return e4m3_from_f(div_rn(x, scale)); }
};

// The code of a quantized pool's element type P (a pool of T has none: the primary template is empty, which takes the
// row sources' overloads for quantized pools out of a 16-bit pool's overload set).
template <typename P> struct KvCode {};
template <> struct KvCode<signed char> { typedef Int8Code type; };
template <> struct KvCode<unsigned char> { typedef Fp8Code type; };

// The quantized pool codes a module holds kernels for, each as MACRO(code, P): i8 (int8 values, P = signed char) in the
// module compiled with TESSERA_INT8_KV, f8 (E4M3 codes, P = unsigned char) in the one with TESSERA_FP8_KV; none in a plain
// module (KernelLibrary.QuantizedKvModule: a 16-bit cache and training never compile them).
#ifdef TESSERA_INT8_KV
#define KV_CODE_I8(MACRO) MACRO(i8, signed char)
#else
#define KV_CODE_I8(MACRO)
#endif
#ifdef TESSERA_FP8_KV
#define KV_CODE_F8(MACRO) MACRO(f8, unsigned char)
#else
#define KV_CODE_F8(MACRO)
#endif
#define FOR_KV_CODES(MACRO) KV_CODE_I8(MACRO) KV_CODE_F8(MACRO)
// MACRO(code, P, name, t) for each floating-point type, as FOR_FLOAT_TYPES, within a FOR_KV_CODES expansion.
#define FOR_FLOAT_TYPES_OF(MACRO, code, P) MACRO(code, P, f32, float) MACRO(code, P, bf16, bf16) MACRO(code, P, f16, f16)

// N bytes (4 or 8) loaded as one access.
template <int N> struct alignas(N) BytesN { unsigned w[N / 4]; };
// Byte j of v decoded by Code, as fp32.
template <typename Code, int N> __device__ __forceinline__ float code_at(const BytesN<N>& v, int j)
{
    return Code::value((typename Code::Byte)((v.w[j >> 2] >> (8 * (j & 3))) & 0xffu));
}

// The scale of value (or key) head row `at` of a pool of P (1 for a floating-point pool, never read), and an element of
// it as fp32.
template <typename P> __device__ __forceinline__ float kv_scale(const float*, i64) { return 1.f; }
template <> __device__ __forceinline__ float kv_scale<signed char>(const float* scales, i64 at) { return scales[at]; }
template <> __device__ __forceinline__ float kv_scale<unsigned char>(const float* scales, i64 at) { return scales[at]; }
template <typename P> __device__ __forceinline__ float kv_value(P v, float) { return to_f(v); }
__device__ __forceinline__ float kv_value(signed char v, float scale) { return Int8Code::value(v) * scale; }
__device__ __forceinline__ float kv_value(unsigned char v, float scale) { return Fp8Code::value(v) * scale; }

// 16 / sizeof(T) consecutive elements of one head row of a pool of P, as the vectorized decode kernels hold them in
// registers between the load and the use: the 16 raw bytes of T, or as many one-byte codes (KvCode<P>) and the row's scale.
template <typename T, typename P> struct KvVec
{
    typedef typename KvCode<P>::type Code;
    static constexpr int VE = 16 / sizeof(T);
    BytesN<VE> raw;
    float scale;
    __device__ __forceinline__ void load(const P* p, const float* scales, i64 at)
    {
        raw = *reinterpret_cast<const BytesN<VE>*>(p);
        scale = scales[at];
    }
    __device__ __forceinline__ void clear() { raw = BytesN<VE>{}; scale = 0.f; }
    __device__ __forceinline__ void unpack(float* out) const
    {
#pragma unroll
        for (int j = 0; j < VE; j++) out[j] = code_at<Code>(raw, j) * scale;
    }
};
template <typename T> struct KvVec<T, T>
{
    Bytes16 raw;
    __device__ __forceinline__ void load(const T* p, const float*, i64) { raw = *reinterpret_cast<const Bytes16*>(p); }
    __device__ __forceinline__ void clear() { raw = Bytes16{}; }
    __device__ __forceinline__ void unpack(float* out) const { unpack16<T>(raw, out); }
};

// 4 bytes to shared memory at a shared-space address.
__device__ __forceinline__ void sts_u32(unsigned addr, unsigned v)
{
#ifdef __CUDA_ARCH__
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
#else
    emu_sts(addr, &v, 4);
#endif
}
// 16 bytes to shared memory at a shared-space address.
__device__ __forceinline__ void sts_u32x4(unsigned addr, const unsigned (&r)[4])
{
#ifdef __CUDA_ARCH__
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" ::"r"(addr), "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]) : "memory");
#else
    emu_sts(addr, r, 16);
#endif
}

// Eight codes times their row's scale, as four words of two T each (T bf16 or f16: Mma<T>::pack's rounding).
template <typename T, typename Code> __device__ __forceinline__ void dequantize8(const BytesN<8>& v, float scale, unsigned (&w)[4])
{
#pragma unroll
    for (int j = 0; j < 4; j++) w[j] = Mma<T>::pack(code_at<Code>(v, 2 * j) * scale, code_at<Code>(v, 2 * j + 1) * scale);
}

// Dequantizes N chunks of 8 codes into shared memory: chunk k comes from pool slot slot_of(k) (negative: zeros, nothing
// read), codes at base + slot * stride + c * 8 with the scale at scales[slot * scale_stride], and goes to the shared-space
// address dst_of(k) as 8 values of T. Every chunk's loads are issued before any is converted and stored.
template <typename T, typename Code, int N, typename SlotOf, typename DstOf>
__device__ __forceinline__ void dequantize_chunks(const typename Code::Byte* base, const float* scales, i64 stride, int scale_stride, int c,
                                                  SlotOf slot_of, DstOf dst_of)
{
    BytesN<8> v[N];
    float s[N];
#pragma unroll
    for (int k = 0; k < N; k++)
    {
        const i64 slot = slot_of(k);
        v[k] = BytesN<8>{};
        s[k] = 0.f;
        if (slot >= 0)
        {
            v[k] = *reinterpret_cast<const BytesN<8>*>(base + slot * stride + c * 8);
            s[k] = scales[slot * scale_stride];
        }
    }
#pragma unroll
    for (int k = 0; k < N; k++)
    {
        unsigned w[4];
        dequantize8<T, Code>(v[k], s[k], w);
        sts_u32x4(dst_of(k), w);
    }
}

// PagedRows over a quantized pool of Code: the same rows, table lookups, limits and swizzled 16-bit tile, each thread's
// 16-byte chunk (8 values) dequantized from 8 codes and the row's scale and stored (not copied asynchronously: the
// kernels' cp_async_wait and __syncthreads before a tile is read cover plain stores too, and the stage a load refills has
// been released by the same barriers). A thread issues all its rows' loads before it converts and stores any.
template <typename T, typename Code> struct PagedRowsQuantized
{
    const typename Code::Byte* base;   // at the kv head
    const float* scales;               // at the kv head: position slot's scale at scales[slot * scale_stride]
    const int* table;
    int block_size;
    i64 stride;                        // 2K * D
    int scale_stride;                  // 2K
    int first;
    int table_first = 0;
    template <int D, int ROWS, int NT> __device__ __forceinline__ void load(unsigned dst, int row0, int limit, int tid) const
    {
        constexpr int CH = D / 8, RS = NT / CH, N = ROWS * CH / NT;
        static_assert(NT % CH == 0 && (ROWS * CH) % NT == 0 && RS % 8 == 0, "PagedRowsQuantized::load: thread count must tile the rows");
        const int r = tid / CH, c = tid % CH;
        const unsigned d0 = dst + (unsigned)(r * D * 2 + ((c ^ (r & 7)) << 4));
        dequantize_chunks<T, Code, N>(base, scales, stride, scale_stride, c,
            [&](int k) {
                const int p = row0 + r + k * RS;
                return p < limit && p >= first ? (i64)table[p / block_size - table_first] * block_size + p % block_size : (i64)-1;
            },
            [&](int k) { return d0 + k * RS * D * 2; });
    }
};

// PagedRowsSw128 over a quantized pool (flash_attention_hopper.cu's tiles), as PagedRowsQuantized is PagedRows'.
template <typename T, typename Code> struct PagedRowsSw128Quantized
{
    const typename Code::Byte* base;
    const float* scales;
    const int* table;
    int block_size;
    i64 stride;
    int scale_stride;
    template <int D, int ROWS, int NT> __device__ __forceinline__ void load(unsigned dst, int row0, int limit, int tid) const
    {
        constexpr int CH = D / 8, RS = NT / CH, N = ROWS * CH / NT;
        static_assert(RS % 8 == 0 && (ROWS * CH) % NT == 0, "PagedRowsSw128Quantized::load: NT threads must tile the rows");
        const int r = tid / CH, c = tid % CH;
        const unsigned d0 = dst + sw128_offset<ROWS>(r, c);
        dequantize_chunks<T, Code, N>(base, scales, stride, scale_stride, c,
            [&](int k) {
                const int p = row0 + r + k * RS;
                return p < limit ? (i64)table[p / block_size] * block_size + p % block_size : (i64)-1;
            },
            [&](int k) { return d0 + k * RS * 128; });
    }
};

// The row source of kv head `head` of a paged pool of T or of a quantized pool (overloaded on the pool's pointer; the
// quantized overloads exist only for a P with a KvCode): base is the pool at that head; scales the pool's scales (unused
// for T).
template <typename T>
__device__ __forceinline__ PagedRows<T> pool_rows(const T* base, const float*, int, int, const int* table, int block_size, i64 stride,
                                                  int first, int table_first = 0)
{
    return PagedRows<T>{base, table, block_size, stride, first, table_first};
}
template <typename T, typename P>
__device__ __forceinline__ PagedRowsQuantized<T, typename KvCode<P>::type> pool_rows(const P* base, const float* scales, int head, int scale_stride,
                                                                                     const int* table, int block_size, i64 stride, int first,
                                                                                     int table_first = 0)
{
    return PagedRowsQuantized<T, typename KvCode<P>::type>{base, scales + head, table, block_size, stride, scale_stride, first, table_first};
}
template <typename T>
__device__ __forceinline__ PagedRowsSw128<T> pool_rows_sw128(const T* base, const float*, int, int, const int* table, int block_size, i64 stride)
{
    return PagedRowsSw128<T>{base, table, block_size, stride};
}
template <typename T, typename P>
__device__ __forceinline__ PagedRowsSw128Quantized<T, typename KvCode<P>::type> pool_rows_sw128(const P* base, const float* scales, int head,
                                                                                                int scale_stride, const int* table,
                                                                                                int block_size, i64 stride)
{
    return PagedRowsSw128Quantized<T, typename KvCode<P>::type>{base, scales + head, table, block_size, stride, scale_stride};
}

// ---- serving's flattened batches: which sequence holds the x-th item
// Called by the 32 lanes of one warp: item x of those that sequences 0 .. B-1 hold in order, items(rows) of a sequence of
// `rows` rows (starts (B + 1): sequence b's rows are starts[b] .. starts[b + 1] - 1). The lane that finds it returns true
// with the sequence b and x's index among that sequence's items; the others return false (all, when there are fewer than
// x + 1 items). A prefix sum by shuffles over 32 sequences at a time, stopping at the group that holds x.
template <typename Items> __device__ __forceinline__ bool warp_find_item(const int* starts, int B, int x, Items items, int& b, int& index)
{
    const int lane = threadIdx.x & 31;
    bool found = false;
    int before = 0;                                                // items of the sequences before this group of 32
    for (int b0 = 0; b0 < B && before <= x; b0 += 32)
    {
        const int sb = b0 + lane;
        const int count = sb < B ? items(starts[sb + 1] - starts[sb]) : 0;
        int inclusive = count;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1)
        {
            const int y = __shfl_up_sync(FULL_MASK, inclusive, o);
            if (lane >= o) inclusive += y;
        }
        const int first = before + inclusive - count;
        if (count > 0 && x >= first && x < first + count) { b = sb; index = x - first; found = true; }
        before += __shfl_sync(FULL_MASK, inclusive, 31);
    }
    return found;
}

// ---- serving's chunked prefill on query tiles (paged_prefill in flash_attention.cu, paged_prefill_hopper)
// The query tile of this CTA in a flattened batch (starts (B + 1): sequence b's rows starts[b] .. starts[b + 1] - 1): CTA
// blockIdx.x takes the blockIdx.x-th tile of BM rows, counting the tiles of the sequences with at least min_rows rows in
// order; sequence -1 for a CTA past the last tile (the host launches an upper bound). Warp 0 finds it (warp_find_item over
// the sequences' tile counts). Waits for the predecessor kernel (pdl_wait) before it reads starts.
// Every thread of the CTA must call it (it holds two barriers).
struct PrefillTile { int sequence, index; };
template <int BM> __device__ __forceinline__ PrefillTile find_prefill_tile(const int* starts, int B, int min_rows)
{
    __shared__ int tile_sequence, tile_index;
    if (threadIdx.x == 0) tile_sequence = -1;
    pdl_wait();
    __syncthreads();
    int b, index;
    if (threadIdx.x < 32
        && warp_find_item(starts, B, blockIdx.x, [=](int rows) { return rows >= min_rows ? (rows + BM - 1) / BM : 0; }, b, index))
    {
        tile_sequence = b;
        tile_index = index;
    }
    __syncthreads();
    return PrefillTile{tile_sequence, tile_index};
}

// Thread-block clusters (sm_90): the CTA's rank in its cluster of cluster_ctas() CTAs (one-dimensional clusters), the
// cluster barrier split into its arrive (release: this CTA's shared-memory writes become visible) and its wait (acquire),
// and a read of two floats at the same shared-memory address in another CTA of the cluster (distributed shared memory).
// Every thread of every CTA in the cluster must take part in each barrier (.aligned). On the CPU emulation a cluster's CTAs
// run together and the helpers are cuda_emulation.h's.
#ifdef __CUDA_ARCH__
__device__ __forceinline__ unsigned cluster_rank() { unsigned r; asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r)); return r; }
__device__ __forceinline__ unsigned cluster_ctas() { unsigned r; asm volatile("mov.u32 %0, %%cluster_nctarank;" : "=r"(r)); return r; }
__device__ __forceinline__ void cluster_arrive() { asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory"); }
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory"); }
// A CTA's own shared floats for the cluster kernels' statistics (a static __shared__ array on the device; the emulation
// runs a cluster's CTAs together, so each gets its own block of memory there instead of one static array).
#define CLUSTER_SHARED_FLOATS(name, n) __shared__ float name[n]
__device__ __forceinline__ void cluster_load2(const float* local, unsigned rank, float& a, float& b)
{
    unsigned remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(remote) : "r"(smem_u32(local)), "r"(rank));
    asm volatile("ld.shared::cluster.v2.f32 {%0, %1}, [%2];" : "=f"(a), "=f"(b) : "r"(remote) : "memory");
}
#else
#define CLUSTER_SHARED_FLOATS(name, n) float* name = emu_block_shared_floats(n)
__device__ __forceinline__ unsigned cluster_rank() { return emu_cluster_rank(); }
__device__ __forceinline__ unsigned cluster_ctas() { return emu_cluster_ctas(); }
__device__ __forceinline__ void cluster_arrive() { emu_cluster_arrive(); }
__device__ __forceinline__ void cluster_wait() { emu_cluster_wait(); }
__device__ __forceinline__ void cluster_load2(const float* local, unsigned rank, float& a, float& b) { emu_cluster_load2(local, rank, a, b); }
#endif
// K split over a thread-block cluster of at most 8 CTAs (the decode products): the sums, in rank order, of the two floats at
// `local`'s offset in every CTA's shared memory, the loads issued together; and total[m] for m < n (n even) so summed from
// part[m], by `threads` threads (the caller synchronizes before reading total).
__device__ __forceinline__ void cluster_sum2(const float* local, int ctas, float& a, float& b)
{
    float pa[8], pb[8];
#pragma unroll
    for (int s = 0; s < 8; s++)
        if (s < ctas) cluster_load2(local, s, pa[s], pb[s]);
    a = 0.f;
    b = 0.f;
#pragma unroll
    for (int s = 0; s < 8; s++)
        if (s < ctas) { a += pa[s]; b += pb[s]; }
}
__device__ __forceinline__ void cluster_sum_rows(const float* part, float* total, int n, int ctas, int tid, int threads)
{
    for (int m = 2 * tid; m < n; m += 2 * threads) cluster_sum2(part + m, ctas, total[m], total[m + 1]);
}
