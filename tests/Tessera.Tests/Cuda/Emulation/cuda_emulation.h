// A CPU emulation of the CUDA execution model, to check the logic of Tessera's kernels where there is no GPU (see
// KernelEmulationTests.cs): each thread of a block is a std::thread, __syncthreads() a barrier of the block, warp shuffles
// an exchange through memory between two barriers of the warp; blocks run one after another, so a __shared__ variable
// (made static) is the block's shared memory. Inline PTX is compiled away (asm(...) expands to nothing), so only code
// that takes no asm path gives meaningful results: the f32 instantiations (the bf16/f16 conversions and stores use PTX).
// `extern __shared__` arrays are declared extern by the test and defined by the check program.
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>
#include <cstdio>
#include <cstdlib>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define asm(...) ((void)0)
#define __restrict__
using std::sqrt;
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
struct EmuBlock
{
    std::unique_ptr<std::barrier<>> block;
    std::vector<std::unique_ptr<std::barrier<>>> warps;
    std::vector<double> slots;
};
inline EmuBlock* g_block;
inline void __syncthreads() { g_block->block->arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { g_block->warps[threadIdx.x / 32]->arrive_and_wait(); }
inline void __threadfence() {}
template <typename T> T emu_shfl(T v, int src_lane_fn(int, int), int arg)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    double* slot = g_block->slots.data() + warp * 32;
    slot[lane] = (double)v;
    g_block->warps[warp]->arrive_and_wait();
    T r = (T)slot[src_lane_fn(lane, arg)];
    g_block->warps[warp]->arrive_and_wait();
    return r;
}
inline int xor_lane(int lane, int o) { return lane ^ o; }
inline int direct_lane(int, int src) { return src; }
inline int up_lane(int lane, int d) { return lane >= d ? lane - d : lane; }
template <typename T> T __shfl_xor_sync(unsigned, T v, int o, int = 32) { return emu_shfl<T>(v, xor_lane, o); }
template <typename T> T __shfl_sync(unsigned, T v, int src, int = 32) { return emu_shfl<T>(v, direct_lane, src); }
template <typename T> T __shfl_up_sync(unsigned, T v, unsigned d, int = 32) { return emu_shfl<T>(v, up_lane, (int)d); }
inline float atomicAdd(float* p, float v) { float o = *p; *p += v; return o; }
inline int atomicAdd(int* p, int v) { int o = *p; *p += v; return o; }
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { unsigned o = *p; if (o == c) *p = v; return o; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
// Runs kernel(args...) on a grid of `grid` blocks (x, y, z) of `block` threads, the blocks in turn.
template <typename F> void emu_launch(dim3 grid, unsigned block, F kernel)
{
    gridDim = grid; blockDim.x = block;
    for (unsigned b = 0; b < grid.x * grid.y * grid.z; b++)
    {
        EmuBlock eb;
        eb.block = std::make_unique<std::barrier<>>(block);
        for (unsigned w = 0; w < (block + 31) / 32; w++) eb.warps.push_back(std::make_unique<std::barrier<>>(32));
        eb.slots.assign(((block + 31) / 32) * 32, 0.0);
        g_block = &eb;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; t++)
            threads.emplace_back([=] { threadIdx.x = t; blockIdx.x = b % grid.x; blockIdx.y = b / grid.x % grid.y; blockIdx.z = b / (grid.x * grid.y); kernel(); });
        for (auto& th : threads) th.join();
    }
}
template <typename F> void emu_launch(unsigned grid, unsigned block, F kernel) { emu_launch(dim3{grid, 1, 1}, block, kernel); }
