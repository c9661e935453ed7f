// Strided copies (rank <= 4) with casts, and fills.
struct Layout4 { i64 size[4]; i64 src[4]; i64 dst[4]; };

__device__ __forceinline__ void offsets(const Layout4& L, i64 i, i64& s, i64& d)
{
    s = 0; d = 0;
#pragma unroll
    for (int k = 3; k >= 0; k--)
    {
        i64 c = i % L.size[k];
        i /= L.size[k];
        s += c * L.src[k];
        d += c * L.dst[k];
    }
}

template <typename S, typename D> __device__ void copy_cast(const S* src, D* dst, Layout4 L, i64 n)
{
    GRID_STRIDE(i, n) { i64 s, d; offsets(L, i, s, d); dst[d] = from_f<D>(to_f(src[s])); }
}
template <typename W> __device__ void copy_same(const W* src, W* dst, Layout4 L, i64 n)
{
    GRID_STRIDE(i, n) { i64 s, d; offsets(L, i, s, d); dst[d] = src[s]; }
}

// Contiguous casts skip the index arithmetic (64-bit div/mod per element halves the bandwidth).
#define CAST(sn, st, dn, dt) \
    extern "C" __global__ void copy_##sn##_to_##dn(const st* src, dt* dst, Layout4 L, i64 n) { copy_cast<st, dt>(src, dst, L, n); } \
    extern "C" __global__ void cast_##sn##_to_##dn(const st* src, dt* dst, i64 n) { GRID_STRIDE(i, n) dst[i] = from_f<dt>(to_f(src[i])); }
CAST(f32, float, bf16, bf16) CAST(f32, float, f16, f16) CAST(bf16, bf16, f32, float)
CAST(bf16, bf16, f16, f16) CAST(f16, f16, f32, float) CAST(f16, f16, bf16, bf16)
CAST(f64, double, f32, float) CAST(f32, float, f64, double) CAST(f64, double, bf16, bf16) CAST(bf16, bf16, f64, double)

#define SAME(name, wt) \
    extern "C" __global__ void copy_##name(const wt* src, wt* dst, Layout4 L, i64 n) { copy_same<wt>(src, dst, L, n); }
SAME(b1, unsigned char) SAME(b2, unsigned short) SAME(b4, unsigned int) SAME(b8, unsigned long long)

#define FILL(name, t) \
    extern "C" __global__ void fill_##name(t* p, i64 n, float v) { t x = from_f<t>(v); GRID_STRIDE(i, n) p[i] = x; }
FOR_FLOAT_TYPES(FILL)
extern "C" __global__ void fill_f64(double* p, i64 n, double v) { GRID_STRIDE(i, n) p[i] = v; }
extern "C" __global__ void fill_i32(int* p, i64 n, int v) { GRID_STRIDE(i, n) p[i] = v; }

// dst (M, J)[m, j] = src (M, K)[m, idx[j]], src's rows ld apart: x's columns in a quantized weight's input order (GPTQ's act
// order) before the product over its stored columns, and a dequantized act-order weight's columns back in the inputs' order.
template <typename W> __device__ void gather_columns(const W* src, W* dst, const int* idx, i64 M, int J, i64 ld)
{
    GRID_STRIDE(i, M * J)
    {
        const i64 m = i / J;
        const int j = (int)(i % J);
        dst[i] = src[m * ld + idx[j]];
    }
}
#define GATHER_COLUMNS(name, wt) \
    extern "C" __global__ void gather_columns_##name(const wt* src, wt* dst, const int* idx, i64 M, int J, i64 ld) { gather_columns<wt>(src, dst, idx, M, J, ld); }
GATHER_COLUMNS(b2, unsigned short) GATHER_COLUMNS(b4, unsigned int) GATHER_COLUMNS(b8, unsigned long long)

// ------------------------------------------------------------------------------ KV cache writes
// dst[b, starts[b] + t, r, :] = src[b, t, r, :] for src (B, T, R, D) and dst (B, S, R, D), both with a
// contiguous last dimension (src is typically the k and v heads of a fused QKV activation). The start
// positions live on the device, so the same launch (or captured graph) appends at any cache length.
struct Strides3 { i64 b, t, h; };
template <typename W> __device__ void copy_at_positions(const W* src, W* dst, const int* starts, int B, int Tn, int R, int D,
                                                         Strides3 ss, Strides3 ds)
{
    const i64 n = (i64)B * Tn * R * D;
    GRID_STRIDE(i, n)
    {
        i64 r = i;
        const int d = (int)(r % D); r /= D;
        const int h = (int)(r % R); r /= R;
        const int t = (int)(r % Tn);
        const int b = (int)(r / Tn);
        dst[b * ds.b + (i64)(starts[b] + t) * ds.t + h * ds.h + d] = src[b * ss.b + (i64)t * ss.t + h * ss.h + d];
    }
}
#define AT_POSITIONS(name, wt)                                                                                     \
    extern "C" __global__ void copy_at_positions_##name(const wt* src, wt* dst, const int* starts, int B, int Tn, \
                                                        int R, int D, Strides3 ss, Strides3 ds)                   \
    {                                                                                                              \
        copy_at_positions<wt>(src, dst, starts, B, Tn, R, D, ss, ds);                                              \
    }
AT_POSITIONS(b2, unsigned short) AT_POSITIONS(b4, unsigned int) AT_POSITIONS(b8, unsigned long long)

// positions (B, T) = starts[b] + t: GPT-2's learned-position ids after a KV cache's filled length.
extern "C" __global__ void fill_positions(const int* starts, int* positions, int B, int Tn)
{
    GRID_STRIDE(i, (i64)B * Tn) positions[i] = starts[i / Tn] + (int)(i % Tn);
}

// counters += amount (I32): advances a KV cache's lengths on the device.
extern "C" __global__ void increment_i32(int* counters, i64 n, int amount)
{
    GRID_STRIDE(i, n) counters[i] += amount;
}

// Asynchronous scheduling: a step's input ids whose tokens the previous step sampled on the device (ids[n] = -1 - row of
// that step's argmax), read from it in place before the embedding.
extern "C" __global__ void resolve_sampled_ids(int* ids, const int* sampled, i64 n)
{
    GRID_STRIDE(i, n)
    {
        const int id = ids[i];
        if (id < 0) ids[i] = sampled[-id - 1];
    }
}
