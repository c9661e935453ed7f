// Reductions: whole-tensor sums (two passes, fp64 partials, deterministic) and column sums.

template <typename T> __device__ void sum_partial(const T* x, i64 n, double* partial, int square)
{
    double s = 0.0;
    GRID_STRIDE(i, n) { double v = to_f(x[i]); s += square ? v * v : v; }
    s = block_sum(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// result = (accumulate ? result : 0) + scale * sum(partial); one block.
extern "C" __global__ void sum_finish(const double* partial, int count, float* result, double scale, int accumulate)
{
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += partial[i];
    s = block_sum(s);
    if (threadIdx.x == 0) result[0] = (float)((accumulate ? (double)result[0] : 0.0) + scale * s);
}

// partial (G, C) row b = sum of rows b, b+G, ... of x (N, C), its rows ld apart.
template <typename T> __device__ void column_partial(const T* x, i64 N, int C, i64 ld, float* partial)
{
    for (int c = threadIdx.x; c < C; c += blockDim.x)
    {
        float s = 0.f;
        for (i64 r = blockIdx.x; r < N; r += gridDim.x) s += to_f(x[r * ld + c]);
        partial[(i64)blockIdx.x * C + c] = s;
    }
}

// The same partials with 16-byte loads (x 16-byte aligned, C and ld multiples of 16 / sizeof(T), blockDim.x <= 256), for the
// `chunk` column vectors of chunk blockIdx.y: thread t reads column vector t % chunk on row lane t / chunk, eight rows at a
// time (eight 16-byte loads in flight a thread), and the row lanes' sums are added in lane order through shared memory
// (deterministic). A chunk is a warp's 32 vectors (512 bytes of a row) when the row's vectors are a multiple of 32, so
// that every thread of the block reads, otherwise up to blockDim.x vectors. Each block streams its rows of one chunk
// without a barrier until the end: walking the chunks in turn inside a block (session 17) drained the loads at every
// chunk, 12 times over GPT-2's 3,072-wide rows, and read at 2.8 TB/s.
template <typename T> __device__ void column_partial_vec(const T* x, i64 N, int C, i64 ld, int chunk, float* partial)
{
    const int V = Vec16<T>::N;
    constexpr int Depth = 8;
    __shared__ float buf[256 * 8];
    const int vecCols = C / V, lanes = blockDim.x / chunk;
    const int tc = threadIdx.x % chunk, rl = threadIdx.x / chunk;
    const int vc = blockIdx.y * chunk + tc;
    const bool active = rl < lanes && vc < vecCols;
    float acc[V];
#pragma unroll
    for (int j = 0; j < V; j++) acc[j] = 0.f;
    if (active)
    {
        const T* column = x + (i64)vc * V;
        const i64 step = (i64)gridDim.x * lanes;
        i64 r = (i64)blockIdx.x * lanes + rl;
        for (; r + (Depth - 1) * step < N; r += Depth * step)
        {
            Bytes16 raw[Depth];
#pragma unroll
            for (int u = 0; u < Depth; u++) raw[u] = *reinterpret_cast<const Bytes16*>(column + (r + u * step) * ld);
#pragma unroll
            for (int u = 0; u < Depth; u++)
            {
                const T* e = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
                for (int j = 0; j < V; j++) acc[j] += to_f(e[j]);
            }
        }
        for (; r < N; r += step)
        {
            float v[V];
            load16(column + r * ld, v);
#pragma unroll
            for (int j = 0; j < V; j++) acc[j] += v[j];
        }
        for (int j = 0; j < V; j++) buf[threadIdx.x * V + j] = acc[j];
    }
    __syncthreads();
    if (active && rl == 0)
    {
        for (int l = 1; l < lanes; l++)
#pragma unroll
            for (int j = 0; j < V; j++) acc[j] += buf[(l * chunk + tc) * V + j];
#pragma unroll
        for (int j = 0; j < V; j++) partial[(i64)blockIdx.x * C + (i64)vc * V + j] = acc[j];
    }
}

// target[c] += sum over rows of partial (rows, stride) column c for c < C; with target2, also target2[c] += column C + c.
// A block takes 32 columns: lane = column (coalesced rows), its warps (up to 32) take rows w, w + warps, ... and their sums
// are added in warp order (deterministic). One thread per column walking all rows was latency-bound: 27.5 us per LayerNorm
// gradient (528 x 768 partials) on the H200, launched twice; with 8 warps per block an RMSNorm gradient of llama-1b (1,056 x
// 2,048 partials: 64 blocks of 132 loads per warp) still took 19 us, so the launcher gives it 32 warps of 33 loads.
template <typename T> __device__ void column_reduce(const float* partial, int rows, i64 stride, int C, T* target, T* target2)
{
    __shared__ float sums[32][33];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int col = blockIdx.x * 32 + lane, cols = target2 ? 2 * C : C;
    float s = 0.f;
    if (col < cols)
    {
#pragma unroll 8
        for (int r = warp; r < rows; r += warps) s += partial[(i64)r * stride + col];
    }
    sums[warp][lane] = s;
    __syncthreads();
    if (warp == 0 && col < cols)
    {
        float t = sums[0][lane];
        for (int q = 1; q < warps; q++) t += sums[q][lane];
        T* dst = col < C ? target + col : target2 + (col - C);
        *dst = from_f<T>(to_f(*dst) + t);
    }
}

#define REDUCE(n, T)                                                                                        \
    extern "C" __global__ void sum_partial_##n(const T* x, i64 count, double* partial, int square)         \
    {                                                                                                       \
        sum_partial<T>(x, count, partial, square);                                                          \
    }                                                                                                       \
    extern "C" __global__ void column_partial_##n(const T* x, i64 N, int C, i64 ld, float* partial)        \
    {                                                                                                       \
        column_partial<T>(x, N, C, ld, partial);                                                            \
    }                                                                                                       \
    extern "C" __global__ void __launch_bounds__(256, 4) column_partial_vec_##n(const T* x, i64 N, int C, i64 ld, \
                                                                                int chunk, float* partial) \
    {                                                                                                       \
        column_partial_vec<T>(x, N, C, ld, chunk, partial);                                                 \
    }                                                                                                       \
    extern "C" __global__ void column_reduce_##n(const float* partial, int rows, i64 stride, int C, T* target, \
                                                 T* target2)                                                \
    {                                                                                                       \
        column_reduce<T>(partial, rows, stride, C, target, target2);                                        \
    }
FOR_FLOAT_TYPES(REDUCE)

// ------------------------------------------------------------------------------------ argmax
// indices[row] = the column of the largest value of row (V columns, rows ld elements apart); the
// lowest column on ties, as the host sampler and PyTorch's argmax; NaN is skipped (0 for an all-NaN row).
// One CTA per row, 16-byte loads where the row allows them.
template <typename T> __device__ void argmax_rows(const T* x, int* indices, int V, i64 ld)
{
    const T* row = x + (i64)blockIdx.x * ld;
    float best = NEG_INF;
    int index = 0x7fffffff;
    constexpr int N = Vec16<T>::N;
    const bool vec = ((size_t)row % 16) == 0;
    int start = 0;
    if (vec)
    {
        const int chunks = V / N;
        for (int c = threadIdx.x; c < chunks; c += blockDim.x)
        {
            float v[N];
            load16(row + (i64)c * N, v);
#pragma unroll
            for (int j = 0; j < N; j++)
                if (v[j] > best || (v[j] == best && c * N + j < index)) { best = v[j]; index = c * N + j; }
        }
        start = chunks * N;
    }
    for (int i = start + threadIdx.x; i < V; i += blockDim.x)
    {
        const float v = to_f(row[i]);
        if (v > best || (v == best && i < index)) { best = v; index = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
    {
        const float ob = __shfl_xor_sync(FULL_MASK, best, o);
        const int oi = __shfl_xor_sync(FULL_MASK, index, o);
        if (ob > best || (ob == best && oi < index)) { best = ob; index = oi; }
    }
    __shared__ float sb[32];
    __shared__ int si[32];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) { sb[warp] = best; si[warp] = index; }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (sb[w] > best || (sb[w] == best && si[w] < index)) { best = sb[w]; index = si[w]; }
        indices[blockIdx.x] = index == 0x7fffffff ? 0 : index;
    }
}
#define ARGMAX(n, T) \
    extern "C" __global__ void argmax_##n(const T* x, int* indices, int V, i64 ld) { argmax_rows<T>(x, indices, V, ld); }
FOR_FLOAT_TYPES(ARGMAX)
