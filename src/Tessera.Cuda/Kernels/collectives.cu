// Reductions of the in-process CUDA process group (thread ranks sharing one GPU, CudaInProcessTransport). Element i of
// every rank's input is combined in rank order 0 .. n-1, each operation rounded on its own (add.rn, div.rn: nothing is
// contracted or reassociated): in F32 for F32, BF16 and F16 storage, in F64 for F64, in wrapping 32-bit integers for I32.
// The result is rounded once to the storage type and written to every rank's output (all-reduce) or to the output of the
// rank whose chunk holds the element (reduce-scatter). Every rank therefore gets the same bits, and for F32, F64 and I32
// the bits of InProcessProcessGroup's host reduction (HostCollectives: acc = in_0; acc += in_r; acc /= n; T.Max).
//
// One thread owns element i: it reads in_0[i] .. in_{n-1}[i] before it writes any output's element i, so an in-place
// all-reduce (out_r == in_r) is safe; inputs and outputs of a reduce-scatter do not overlap (ProcessGroup's contract).

#define MAX_RANKS 64
struct RankPointers { const void* in[MAX_RANKS]; void* out[MAX_RANKS]; };

#define OP_SUM 0
#define OP_AVERAGE 1
#define OP_MAX 2

__device__ __forceinline__ float widen(float v) { return v; }
__device__ __forceinline__ float widen(bf16 v) { return to_f(v); }
__device__ __forceinline__ float widen(f16 v) { return to_f(v); }
__device__ __forceinline__ double widen(double v) { return v; }
__device__ __forceinline__ int widen(int v) { return v; }

__device__ __forceinline__ float add_op(float a, float b) { return add_rn(a, b); }
__device__ __forceinline__ double add_op(double a, double b) { double r; asm("add.rn.f64 %0, %1, %2;" : "=d"(r) : "d"(a), "d"(b)); return r; }
__device__ __forceinline__ int add_op(int a, int b) { return (int)((unsigned)a + (unsigned)b); }   // wraps, as C#'s unchecked int

__device__ __forceinline__ float div_op(float a, int n) { return div_rn(a, (float)n); }
__device__ __forceinline__ double div_op(double a, int n) { double r; asm("div.rn.f64 %0, %1, %2;" : "=d"(r) : "d"(a), "d"((double)n)); return r; }
__device__ __forceinline__ int div_op(int a, int n) { return a / n; }   // never reached: the group refuses Average over I32

// .NET's T.Max (IEEE 754-2019 maximum): a NaN operand gives that NaN (the first one), +0 is larger than -0.
__device__ __forceinline__ float max_op(float a, float b)
{
    if (a != a) return a;
    if (b != b) return b;
    if (a == b) return (__float_as_uint(a) >> 31) ? b : a;
    return a > b ? a : b;
}
__device__ __forceinline__ double max_op(double a, double b)
{
    if (a != a) return a;
    if (b != b) return b;
    if (a == b)
    {
        long long bits;
        asm("mov.b64 %0, %1;" : "=l"(bits) : "d"(a));
        return bits < 0 ? b : a;
    }
    return a > b ? a : b;
}
__device__ __forceinline__ int max_op(int a, int b) { return a > b ? a : b; }

// total: elements of each input; chunk: elements of each output of a reduce-scatter, 0 for an all-reduce.
template <typename T, typename A, typename N>
__device__ void reduce_ranks(const RankPointers& p, int ranks, i64 total, i64 chunk, int op, N narrow_to)
{
    GRID_STRIDE(i, total)
    {
        A acc = widen(static_cast<const T*>(p.in[0])[i]);
        for (int r = 1; r < ranks; r++)
        {
            A x = widen(static_cast<const T*>(p.in[r])[i]);
            acc = op == OP_MAX ? max_op(acc, x) : add_op(acc, x);
        }
        if (op == OP_AVERAGE) acc = div_op(acc, ranks);
        T y = narrow_to(acc);
        if (chunk == 0)
            for (int r = 0; r < ranks; r++) static_cast<T*>(p.out[r])[i] = y;
        else
            static_cast<T*>(p.out[i / chunk])[i % chunk] = y;
    }
}

struct NarrowF32 { __device__ float operator()(float v) const { return v; } };
struct NarrowBf16 { __device__ bf16 operator()(float v) const { return from_f<bf16>(v); } };
struct NarrowF16 { __device__ f16 operator()(float v) const { return from_f<f16>(v); } };
struct NarrowF64 { __device__ double operator()(double v) const { return v; } };
struct NarrowI32 { __device__ int operator()(int v) const { return v; } };

#define REDUCE_RANKS(name, T, A, N) \
    extern "C" __global__ void reduce_ranks_##name(RankPointers p, int ranks, i64 total, i64 chunk, int op) \
    { reduce_ranks<T, A>(p, ranks, total, chunk, op, N()); }
REDUCE_RANKS(f32, float, float, NarrowF32)
REDUCE_RANKS(bf16, bf16, float, NarrowBf16)
REDUCE_RANKS(f16, f16, float, NarrowF16)
REDUCE_RANKS(f64, double, double, NarrowF64)
REDUCE_RANKS(i32, int, int, NarrowI32)
