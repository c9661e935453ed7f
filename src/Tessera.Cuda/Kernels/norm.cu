struct alignas(16) f32x4s { float x, y, z, w; };
// LayerNorm and RMSNorm, forward and backward: one block per row, fp32 statistics.
// Backward adds dx into dx, and writes per-block partial weight (and bias) gradients into a
// scratch matrix (G, 2C) (G = gridDim.x); column_reduce in reduce.cu then adds them to dWeight, dBias.
// The LayerNorm backwards can also sum the columns of the dx they store (the bias gradient of the linear layer whose output
// gradient dx is, issue 18): their rows of scratch are then (G, 3C), the third slice the partial column sums of dx, summed in
// fp32 from the values as stored (rounded to T), so they are exactly the column sums of the tensor the next layer reads.

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

// sums != 0: rows of scratch are (dW, dB, column sums of dx), 3C floats; else (dW, dB), 2C. Thread t owns columns t,
// t + blockDim.x, ... of its block's row of scratch for the whole kernel, so the partials need no synchronization.
template <typename T> __device__ void layernorm_backward(const T* dout, const T* x, const T* w, const float* mean,
                                                         const float* rstd, T* dx, float* scratch, i64 N, int C, int sums)
{
    float* dw = scratch + (i64)blockIdx.x * (sums ? 3 : 2) * C;
    float* db = dw + C;
    float* ds = db + C;                                    // only when sums
    for (int i = threadIdx.x; i < C; i += blockDim.x) { dw[i] = 0.f; db[i] = 0.f; if (sums) ds[i] = 0.f; }
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
            const T stored = from_f<T>(to_f(dxr[i]) + r * (dn - a - xhat * bsum));
            dxr[i] = stored;
            dw[i] += d * xhat;
            db[i] += d;
            if (sums) ds[i] += to_f(stored);
        }
    }
}

// An output element: y = x r scale rounded to T, stored; with accumulate (a post-norm and its residual add) out += y instead,
// rounded once more, as an accumulate kernel after the norm would. add_rn (common.cuh): in f32 (where rounding y to T does
// nothing) a plain add could be contracted with y's product into one fma, which rounds once where the two kernels round twice.
template <typename T> __device__ __forceinline__ T norm_out(float y, const T* out, int accumulate)
{
    return accumulate ? from_f<T>(add_rn(to_f(*out), to_f(from_f<T>(y)))) : from_f<T>(y);
}

// rstd may be null (AccumulateRmsNorm saves nothing).
template <typename T> __device__ void rmsnorm_forward(const T* x, const T* w, T* out, float* rstd, int C, float eps, int unit,
                                                      int accumulate)
{
    i64 row = blockIdx.x;
    x += row * C; out += row * C;
    float s = 0.f;
    for (int i = threadIdx.x; i < C; i += blockDim.x) { float v = to_f(x[i]); s += v * v; }
    float r = rsqrtf(block_sum(s) / C + eps);
    for (int i = threadIdx.x; i < C; i += blockDim.x)
        out[i] = norm_out<T>(to_f(x[i]) * r * norm_scale<T>(to_f(w[i]), unit), out + i, accumulate);
    if (threadIdx.x == 0 && rstd) rstd[row] = r;
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

// LayerNorm forward, one warp per row with the row in registers: each lane loads its K 16-byte vectors of x once
// (C <= 32 K N), and the mean, the variance (two passes over registers) and the output come from them. The loop
// version above reads x three times through L1 and spent its time issuing loads and conversions (ncu, H200: SM 71 %
// busy, DRAM 36 %, 46 us per GPT-2 call).
template <typename T, int K> __device__ void layernorm_forward_rows(const T* x, const T* w, const T* b, T* out, float* mean,
                                                                    float* rstd, i64 rows, int C, float eps)
{
    constexpr int N = Vec16<T>::N;
    const i64 row = (i64)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int lane = threadIdx.x & 31;
    x += row * C; out += row * C;
    Bytes16 raw[K];
#pragma unroll
    for (int k = 0; k < K; k++)
    {
        const int i = (k * 32 + lane) * N;
        if (i < C) raw[k] = *reinterpret_cast<const Bytes16*>(x + i);
    }
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < K; k++)
        if ((k * 32 + lane) * N < C)
        {
            float v[N];
            unpack16<T>(raw[k], v);
#pragma unroll
            for (int j = 0; j < N; j++) s += v[j];
        }
    const float mu = warp_sum(s) / C;
    float var = 0.f;
#pragma unroll
    for (int k = 0; k < K; k++)
        if ((k * 32 + lane) * N < C)
        {
            float v[N];
            unpack16<T>(raw[k], v);
#pragma unroll
            for (int j = 0; j < N; j++) { const float d = v[j] - mu; var += d * d; }
        }
    const float r = rsqrtf(warp_sum(var) / C + eps);
#pragma unroll
    for (int k = 0; k < K; k++)
    {
        const int i = (k * 32 + lane) * N;
        if (i < C)
        {
            float v[N], wv[N], bv[N];
            unpack16<T>(raw[k], v);
            load16(w + i, wv);
            if (b) load16(b + i, bv);
#pragma unroll
            for (int j = 0; j < N; j++) v[j] = (v[j] - mu) * r * wv[j] + (b ? bv[j] : 0.f);
            store16(out + i, v);
        }
    }
    if (lane == 0) { mean[row] = mu; rstd[row] = r; }
}

// Backward, one warp per row (rows gw, gw + W, ... for the W warps of the grid), C <= 32 K N. The row's dout and x stay
// in registers as the 16-byte words loaded (K vectors each: 8 K registers, not the 4 K N floats of unpacked rows), and
// each warp adds its rows' weight and bias gradients into its own slice of shared memory (2C floats, read-modify-
// written with 16-byte accesses); the slices are summed in warp order at the end and the block writes its row of the
// partials scratch (G, 2C), so the result is deterministic. With unpacked rows the kernel held 117 registers, two
// CTAs per SM, and stalled on the shared-memory accumulators (ncu, H200: 88 us per GPT-2 call, DRAM 45 %); the bounds
// ask for three. Dynamic shared memory: warps * 2C floats (3C with Sums).
//
// Sums: the kernel also adds the column sums of the dx it stores into a third slice (dx sums at [2C, 3C) of each warp's
// 3C floats, and of the block's row of scratch (G, 3C)). The sums sit in shared memory like dW and dB rather than in
// registers: a lane's share of a row is K N columns (24 floats for BF16 at C = 768), which on top of the 8 K registers of
// the packed row would pass the 80 registers that three CTAs of 256 threads leave a thread, while the third slice still
// fits three CTAs per SM at C = 768 (3 x (8 warps x 3C x 4 bytes + 1 KB reserved) = 219 KB of the H200's 228 KB). A
// separate instantiation (Sums = false is the kernel as before), so the plain backward keeps its registers and bits.
//
// InRegisters (with Sums): a lane keeps its K N columns' dx sums in registers over all its rows and writes them to the third
// slice once at the end, instead of a read-modify-write of shared memory a row (which cost the kernel 28 us a call at
// gpt2-124m's 65,536 rows, session 23); its bounds ask for two CTAs an SM, to leave the registers room
// (CudaBackendOptions.LayerNormSumsInRegisters).
template <typename T, int K, bool Sums, bool InRegisters = false>
__device__ void layernorm_backward_rows(const T* dout, const T* x, const T* w, const float* mean, const float* rstd, T* dx,
                                        float* scratch, i64 rows, int C)
{
    constexpr int N = Vec16<T>::N;
    constexpr int S = Sums ? 3 : 2;                    // C-float slices per warp and per row of scratch
    static_assert(Sums || !InRegisters, "layernorm_backward_rows: InRegisters keeps the dx sums");
    extern __shared__ float lnacc[];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    float* mine = lnacc + (i64)warp * S * C;           // dW at [0, C), dB at [C, 2C), dx sums at [2C, 3C)
    for (int i = lane * 4; i < S * C; i += 32 * 4) *reinterpret_cast<f32x4s*>(mine + i) = f32x4s{0.f, 0.f, 0.f, 0.f};
    float xs[InRegisters ? K * N : 1];                 // InRegisters: this lane's dx sums, column (k 32 + lane) N + j at k N + j
#pragma unroll
    for (int i = 0; i < (InRegisters ? K * N : 1); i++) xs[i] = 0.f;
    __syncwarp();
    for (i64 row = (i64)blockIdx.x * warps + warp; row < rows; row += (i64)gridDim.x * warps)
    {
        const T* xr = x + row * C; const T* dr = dout + row * C; T* dxr = dx + row * C;
        const float mu = mean[row], r = rstd[row];
        Bytes16 draw[K], xraw[K];
#pragma unroll
        for (int k = 0; k < K; k++)
        {
            const int i = (k * 32 + lane) * N;
            if (i < C) { draw[k] = *reinterpret_cast<const Bytes16*>(dr + i); xraw[k] = *reinterpret_cast<const Bytes16*>(xr + i); }
        }
        float a = 0.f, bsum = 0.f;
#pragma unroll
        for (int k = 0; k < K; k++)
        {
            const int i = (k * 32 + lane) * N;
            if (i < C)
            {
                float dv[N], xh[N], wv[N];
                unpack16<T>(draw[k], dv);
                unpack16<T>(xraw[k], xh);
                load16(w + i, wv);
#pragma unroll
                for (int j = 0; j < N; j++)
                {
                    const float dn = dv[j] * wv[j];
                    a += dn;
                    bsum += dn * ((xh[j] - mu) * r);
                }
            }
        }
        a = warp_sum(a) / C;
        bsum = warp_sum(bsum) / C;
#pragma unroll
        for (int k = 0; k < K; k++)
        {
            const int i = (k * 32 + lane) * N;
            if (i < C)
            {
                float o[N], wv[N], dv[N], xh[N];
                load16(dxr + i, o);
                load16(w + i, wv);
                unpack16<T>(draw[k], dv);
                unpack16<T>(xraw[k], xh);
#pragma unroll
                for (int j = 0; j < N; j++)
                {
                    xh[j] = (xh[j] - mu) * r;
                    o[j] += r * (dv[j] * wv[j] - a - xh[j] * bsum);
                    if (Sums) o[j] = to_f(from_f<T>(o[j]));   // the value stored, which store16 then writes unchanged
                }
                store16(dxr + i, o);
                if (InRegisters)
                {
#pragma unroll
                    for (int j = 0; j < N; j++) xs[k * N + j] += o[j];
                }
                else if (Sums)
                {
#pragma unroll
                    for (int j = 0; j < N; j += 4)
                    {
                        f32x4s* ps = reinterpret_cast<f32x4s*>(mine + 2 * C + i + j);
                        f32x4s gs = *ps;
                        gs.x += o[j]; gs.y += o[j + 1]; gs.z += o[j + 2]; gs.w += o[j + 3];
                        *ps = gs;
                    }
                }
#pragma unroll
                for (int j = 0; j < N; j += 4)
                {
                    f32x4s* pw = reinterpret_cast<f32x4s*>(mine + i + j);
                    f32x4s* pb = reinterpret_cast<f32x4s*>(mine + C + i + j);
                    f32x4s gw = *pw, gb = *pb;
                    gw.x += dv[j] * xh[j]; gw.y += dv[j + 1] * xh[j + 1];
                    gw.z += dv[j + 2] * xh[j + 2]; gw.w += dv[j + 3] * xh[j + 3];
                    gb.x += dv[j]; gb.y += dv[j + 1]; gb.z += dv[j + 2]; gb.w += dv[j + 3];
                    *pw = gw; *pb = gb;
                }
            }
        }
    }
    if (InRegisters)
#pragma unroll
        for (int k = 0; k < K; k++)
        {
            const int i = (k * 32 + lane) * N;
            if (i < C)
#pragma unroll
                for (int j = 0; j < N; j++) mine[2 * C + i + j] = xs[k * N + j];
        }
    __syncthreads();
    for (int i = threadIdx.x; i < S * C; i += blockDim.x)
    {
        float sum = 0.f;
        for (int q = 0; q < warps; q++) sum += lnacc[(i64)q * S * C + i];
        scratch[(i64)blockIdx.x * S * C + i] = sum;
    }
}

// RMSNorm with the row in registers, for the Llama widths (C = 2048 .. 8192 in 16-bit types) that the warp-per-row kernels
// above cannot hold: a block per row, thread t holding the row's 16-byte vector t (C = N * vecs, vecs <= blockDim.x, the
// block rounded up to whole warps), x read once; each block walks rows with a grid stride and keeps its weight vector in
// registers. The loop kernels read x two or three times through L1 with 2-byte loads, and their backward added every
// row's weight gradient into global scratch element by element.
// Each block loads its next row's vectors (raw, unconverted, so nothing waits on them) before the current row's block
// reduction: the loads stay in flight across the barriers instead of each row's load, sum and store running in turn
// (H200, llama-1b rows of 2048: forward 52 us, backward 92 us per call against DRAM floors of 30 and 61 us).
template <typename T> __device__ void rmsnorm_forward_vec(const T* x, const T* w, T* out, float* rstd, i64 rows, int C, float eps,
                                                          int unit, int accumulate)
{
    constexpr int N = Vec16<T>::N;
    const int t = threadIdx.x;
    const bool active = t < C / N;
    float wv[N];
    if (active)
    {
        load16(w + t * N, wv);
#pragma unroll
        for (int j = 0; j < N; j++) wv[j] = norm_scale<T>(wv[j], unit);
    }
    Bytes16 next;
    i64 row = blockIdx.x;
    if (active && row < rows) next = *reinterpret_cast<const Bytes16*>(x + row * C + t * N);
    for (; row < rows; row += gridDim.x)
    {
        float v[N];
        float s = 0.f;
        if (active)
        {
            unpack16<T>(next, v);
            if (row + gridDim.x < rows) next = *reinterpret_cast<const Bytes16*>(x + (row + gridDim.x) * C + t * N);
#pragma unroll
            for (int j = 0; j < N; j++) s += v[j] * v[j];
        }
        const float r = rsqrtf(block_sum(s) / C + eps);
        if (active)
        {
#pragma unroll
            for (int j = 0; j < N; j++) v[j] = v[j] * r * wv[j];
            if (accumulate)
            {
                float a[N];
                load16(out + row * C + t * N, a);
#pragma unroll
                for (int j = 0; j < N; j++) a[j] = add_rn(a[j], to_f(from_f<T>(v[j])));   // no fma with v's product (norm_out)
                store16(out + row * C + t * N, a);
            }
            else store16(out + row * C + t * N, v);
        }
        if (t == 0 && rstd) rstd[row] = r;
    }
}

// Its backward: dx (N, C) += r (dout w - xhat mean(dout w xhat)), xhat = x r; each thread sums the weight gradient of its N
// columns over the block's rows in registers and writes them once into the block's row of the partials scratch (G, 2C)
// (columns [0, C)), which column_reduce adds to dWeight in block order: deterministic. (Loading the next row before the
// reduction, as the forward does, measured slower here: 3.28 against 3.03 ms a llama-1b step on the H200, 2026-12-03.)
template <typename T> __device__ void rmsnorm_backward_vec(const T* dout, const T* x, const T* w, const float* rstd, T* dx,
                                                           float* scratch, i64 rows, int C)
{
    constexpr int N = Vec16<T>::N;
    const int t = threadIdx.x;
    const bool active = t < C / N;
    float wv[N], dw[N];
#pragma unroll
    for (int j = 0; j < N; j++) { wv[j] = 0.f; dw[j] = 0.f; }
    if (active) load16(w + t * N, wv);
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x)
    {
        const float r = rstd[row];
        float d[N], xh[N];
        float s = 0.f;
        if (active)
        {
            load16(dout + row * C + t * N, d);
            load16(x + row * C + t * N, xh);
#pragma unroll
            for (int j = 0; j < N; j++)
            {
                xh[j] *= r;
                s += d[j] * wv[j] * xh[j];
            }
        }
        const float mean = block_sum(s) / C;
        if (active)
        {
            float o[N];
            load16(dx + row * C + t * N, o);
#pragma unroll
            for (int j = 0; j < N; j++)
            {
                o[j] += r * (d[j] * wv[j] - xh[j] * mean);
                dw[j] += d[j] * xh[j];
            }
            store16(dx + row * C + t * N, o);
        }
    }
    if (active)
    {
        float* mine = scratch + (i64)blockIdx.x * 2 * C + t * N;
#pragma unroll
        for (int j = 0; j < N; j++) mine[j] = dw[j];
    }
}

#define NORM(n, T)                                                                                             \
    extern "C" __global__ void layernorm_forward_##n(const T* x, const T* w, const T* b, T* out, float* mean,  \
                                                     float* rstd, int C, float eps)                            \
    {                                                                                                          \
        layernorm_forward<T>(x, w, b, out, mean, rstd, C, eps);                                                \
    }                                                                                                          \
    extern "C" __global__ void layernorm_backward_##n(const T* dout, const T* x, const T* w, const float* mean, \
                                                      const float* rstd, T* dx, float* scratch, i64 N, int C,  \
                                                      int sums)                                                \
    {                                                                                                          \
        layernorm_backward<T>(dout, x, w, mean, rstd, dx, scratch, N, C, sums);                                \
    }                                                                                                          \
    extern "C" __global__ void rmsnorm_forward_##n(const T* x, const T* w, T* out, float* rstd, int C, float eps, \
                                                   int unit, int accumulate)                                   \
    {                                                                                                          \
        rmsnorm_forward<T>(x, w, out, rstd, C, eps, unit, accumulate);                                         \
    }                                                                                                          \
    extern "C" __global__ void rmsnorm_backward_##n(const T* dout, const T* x, const T* w, const float* rstd,  \
                                                    T* dx, float* scratch, i64 N, int C)                       \
    {                                                                                                          \
        rmsnorm_backward<T>(dout, x, w, rstd, dx, scratch, N, C);                                              \
    }
FOR_FLOAT_TYPES(NORM)

#define RMSNORM_VEC(n, T)                                                                                      \
    extern "C" __global__ void rmsnorm_forward_vec_##n(const T* x, const T* w, T* out, float* rstd, i64 rows,  \
                                                       int C, float eps, int unit, int accumulate)              \
    {                                                                                                          \
        rmsnorm_forward_vec<T>(x, w, out, rstd, rows, C, eps, unit, accumulate);                               \
    }                                                                                                          \
    extern "C" __global__ void __launch_bounds__(1024) rmsnorm_backward_vec_##n(const T* dout, const T* x, const T* w, const float* rstd, \
                                                        T* dx, float* scratch, i64 rows, int C)                \
    {                                                                                                          \
        rmsnorm_backward_vec<T>(dout, x, w, rstd, dx, scratch, rows, C);                                       \
    }
FOR_FLOAT_TYPES(RMSNORM_VEC)

// The warp-per-row LayerNorm kernels for K 16-byte vectors per lane (C <= 32 K 16 / sizeof(T)): K = 1..4 both ways,
// 5..8 forward only (the backward's shared-memory slices and registers allow at most 4). The backward comes twice:
// layernorm_backward_warp_* (scratch rows of 2C) and layernorm_backward_warp_sums_* (3C, with the column sums of dx;
// layernorm_backward_warp_sums_regs_* keeps those sums in registers).
#define NORM_ROWS_FORWARD(n, T, K)                                                                             \
    extern "C" __global__ void __launch_bounds__(256) layernorm_forward_warp_##n##_k##K(                       \
        const T* x, const T* w, const T* b, T* out, float* mean, float* rstd, i64 rows, int C, float eps)       \
    {                                                                                                          \
        layernorm_forward_rows<T, K>(x, w, b, out, mean, rstd, rows, C, eps);                                  \
    }
// One backward entry: its name's form (empty, sums_ or sums_regs_), the CTAs an SM its bounds ask for, and the template's switches.
#define NORM_ROWS_BACKWARD(n, T, K, form, ctas, sums, regs)                                                    \
    extern "C" __global__ void __launch_bounds__(256, ctas) layernorm_backward_warp_##form##n##_k##K(          \
        const T* dout, const T* x, const T* w, const float* mean, const float* rstd, T* dx, float* scratch,    \
        i64 N, int C)                                                                                          \
    {                                                                                                          \
        layernorm_backward_rows<T, K, sums, regs>(dout, x, w, mean, rstd, dx, scratch, N, C);                  \
    }
#define NORM_ROWS(n, T, K)                                                                                     \
    NORM_ROWS_FORWARD(n, T, K)                                                                                 \
    NORM_ROWS_BACKWARD(n, T, K, , 3, false, false)                                                             \
    NORM_ROWS_BACKWARD(n, T, K, sums_, 3, true, false)                                                         \
    NORM_ROWS_BACKWARD(n, T, K, sums_regs_, 2, true, true)
#define NORM_ROWS_ALL(n, T) NORM_ROWS(n, T, 1) NORM_ROWS(n, T, 2) NORM_ROWS(n, T, 3) NORM_ROWS(n, T, 4) \
    NORM_ROWS_FORWARD(n, T, 5) NORM_ROWS_FORWARD(n, T, 6) NORM_ROWS_FORWARD(n, T, 7) NORM_ROWS_FORWARD(n, T, 8)
FOR_FLOAT_TYPES(NORM_ROWS_ALL)
