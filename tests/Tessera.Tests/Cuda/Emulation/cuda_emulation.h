// A CPU emulation of the CUDA execution model, to check the logic of Tessera's kernels where there is no GPU (see
// KernelEmulationTests.cs): each thread of a block is a fiber on the calling OS thread (its own stack; switched only where a
// CUDA thread could wait, by a few instructions on x86-64, else by swapcontext), __syncthreads() a barrier of the block, warp
// shuffles an exchange through memory between two barriers of the warp; a barrier that some threads never reach aborts with
// the count. Blocks run one after another, so a __shared__ variable (made static) is the block's shared memory. Inline PTX
// is compiled away (asm(...) expands to nothing), so only code that takes no asm path gives meaningful results: the f32
// instantiations (the bf16/f16 conversions and stores use PTX).
// `extern __shared__` arrays are declared extern by the test and defined by the check program. The tensor-core helpers of
// common.cuh (cp.async, ldmatrix, mma.sync m16n8k16) have warp-collective stand-ins below with the PTX's fragment layouts,
// so a kernel built on them runs here too (bf16 only: the f16 conversions are PTX), and so does wgmma m64nNk16 with A from
// registers or shared memory through 128-byte-swizzle descriptors, K- or MN-major (emu_wgmma, the warpgroup's 128 threads
// together; hopper.cuh calls it; the training products' two-descriptor form, WgmmaSs, is queued and run when a
// wgmma.wait_group retires its group, as late as the hardware may run it). Transaction barriers and the tensor memory
// accelerator's copies (2-D boxes in the 128-byte swizzle, their multicast into a cluster's CTAs, and tensor stores, which
// read their shared source only when a bulk wait retires their group) are emulated too; shared-memory addresses are byte
// offsets from emu_shared_base, which the check program points at its dynamic shared memory. Thread-block clusters
// (emu_launch_cluster): the CTAs of a cluster run together, with a barrier over all their threads for the cluster
// barrier, and each CTA's shared floats (CLUSTER_SHARED_FLOATS, or its dynamic shared memory: cta_dynamic_shared) in its
// own memory, which cluster_load2 reads across CTAs.
#include <algorithm>
#include <atomic>
#include <optional>
#include <cmath>
#include <cstring>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <sys/mman.h>
#include <ucontext.h>
#include <vector>
#include <cstdio>
#include <cstdlib>
struct dim3 { unsigned x = 1, y = 1, z = 1; };
struct alignas(8) uint2 { unsigned x, y; };   // CUDA's vector type (adamw.cu stores four 16-bit copies as one)
// The emulated threads' own variables are plain globals that the scheduler swaps with each fiber's copy as it switches
// to it and back (EmuFiberLocals, at the end of this file, lists them).
inline dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#define __grid_constant__
#define asm(...) ((void)0)
#define __restrict__
using std::sqrt;
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int u; std::memcpy(&u, &f, 4); return u; }
inline float __int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
// ---- fibers: the emulated threads of one block (or cluster) on the calling OS thread
struct EmuFiberLocals;
inline EmuFiberLocals* emu_new_locals();
inline void emu_delete_locals(EmuFiberLocals* locals);
inline void emu_swap_locals(EmuFiberLocals* locals);
// A switch between fibers saves the callee-saved registers on the stack it leaves and loads them from the one it enters
// (x86-64 System V: rbx, rbp, r12-r15; the stack pointer is kept in the fiber), with no system call; elsewhere ucontext's
// swapcontext does it (and where EMU_FIBER_UCONTEXT is defined, to check that path).
#if defined(__x86_64__) && defined(__ELF__) && !defined(EMU_FIBER_UCONTEXT)
#define EMU_FIBER_ASM 1
extern "C" void emu_switch_stack(void** save, void* load);
__asm__(R"(
    .text
    .globl emu_switch_stack
    .type emu_switch_stack, @function
emu_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_stack, .-emu_switch_stack
)");
#endif
struct EmuFiber
{
#ifdef EMU_FIBER_ASM
    void* sp = nullptr;
#else
    ucontext_t context;
#endif
    std::function<void()> body;
    EmuFiberLocals* locals = nullptr;
    bool done = false;
    bool polled = false;   // it last gave way polling (an mbarrier), not at a barrier or its end
    const unsigned long long* wait_on = nullptr;   // blocked while *wait_on == wait_while
    unsigned long long wait_while = 0;
};
#ifdef EMU_FIBER_ASM
inline void* emu_scheduler_sp = nullptr;
#else
inline ucontext_t emu_scheduler_context;
#endif
inline EmuFiber* emu_self = nullptr;
// Stacks of 1 MB (pages committed only as touched), each above a guard page, kept for the program's life and reused.
constexpr size_t EMU_STACK_BYTES = 1 << 20, EMU_GUARD_BYTES = 1 << 16;
inline std::vector<char*> emu_stacks;
inline char* emu_stack(size_t i)
{
    while (emu_stacks.size() <= i)
    {
        void* p = mmap(nullptr, EMU_STACK_BYTES + EMU_GUARD_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) { std::fprintf(stderr, "emulation: no memory for %zu thread stacks\n", i + 1); std::abort(); }
        mprotect(p, EMU_GUARD_BYTES, PROT_NONE);
        emu_stacks.push_back((char*)p + EMU_GUARD_BYTES);
    }
    return emu_stacks[i];
}
// Back to the scheduler; the fiber runs on when it is picked again (at once, unless it waits on a barrier's phase).
inline void emu_yield()
{
    if (!emu_self) { std::fprintf(stderr, "emulation: a thread's wait outside a launch\n"); std::abort(); }
#ifdef EMU_FIBER_ASM
    emu_switch_stack(&emu_self->sp, emu_scheduler_sp);
#else
    swapcontext(&emu_self->context, &emu_scheduler_context);
#endif
}
// Back to the scheduler from a poll: the fiber stays runnable, but its turn did not count as progress.
inline void emu_poll_yield()
{
    if (emu_self) emu_self->polled = true;
    emu_yield();
}
inline void emu_fiber_entry()
{
    emu_self->body();
    emu_self->done = true;
#ifdef EMU_FIBER_ASM
    emu_yield();   // never resumed
    std::abort();
#endif
}   // (ucontext: returning resumes the scheduler, the fiber's uc_link)
// A new fiber on stack `stack`: its first resumption starts emu_fiber_entry.
inline void emu_fiber_start(EmuFiber& f, char* stack)
{
#ifdef EMU_FIBER_ASM
    // emu_switch_stack's epilogue pops six registers and returns: to emu_fiber_entry, whose frame then looks called (the stack
    // pointer 8 past a 16-byte boundary) with a zero return address above it.
    void** top = (void**)(stack + EMU_STACK_BYTES);
    *--top = nullptr;
    *--top = (void*)&emu_fiber_entry;
    for (int r = 0; r < 6; r++) *--top = nullptr;
    f.sp = top;
#else
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = stack;
    f.context.uc_stack.ss_size = EMU_STACK_BYTES;
    f.context.uc_link = &emu_scheduler_context;
    makecontext(&f.context, emu_fiber_entry, 0);
#endif
}
inline void emu_resume(EmuFiber& f)
{
#ifdef EMU_FIBER_ASM
    emu_switch_stack(&emu_scheduler_sp, f.sp);
#else
    swapcontext(&emu_scheduler_context, &f.context);
#endif
}
// Runs thread(t) for t < count, each on a fiber of its own, until all return. The threads come in groups of `group` (a
// cluster's CTAs; by default one group). A pass takes the groups in turn, forward and backward on alternate passes, and runs
// each group as far as it goes alone: its fibers in turn, again and again, until none of them can go on but by polling.
// So one CTA of a cluster runs ahead of the others wherever the kernel lets it, up to its end, as a CTA may on the GPU. A
// pass in which every unfinished fiber waits on a barrier no fiber can complete is a deadlock, which aborts.
template <typename F> void emu_run_threads(unsigned count, F thread, unsigned group = 0)
{
    if (group == 0 || group > count) group = count;
    const unsigned groups = (count + group - 1) / group;
    std::vector<EmuFiber> fibers(count);
    for (unsigned t = 0; t < count; t++)
    {
        EmuFiber& f = fibers[t];
        f.body = [&thread, t] { thread(t); };
        f.locals = emu_new_locals();
        emu_fiber_start(f, emu_stack(t));
    }
    size_t left = count;
    for (bool forward = true; left > 0; forward = !forward)
    {
        bool ran = false;
        for (unsigned gi = 0; gi < groups; gi++)
        {
            const unsigned lo = (forward ? gi : groups - 1 - gi) * group, hi = std::min(count, lo + group);
            for (bool progressed = true; progressed;)
            {
                progressed = false;
                for (unsigned k = lo; k < hi; k++)
                {
                    EmuFiber& f = fibers[forward ? k : hi - 1 - (k - lo)];
                    if (f.done || (f.wait_on && *f.wait_on == f.wait_while)) continue;
                    ran = true;
                    f.wait_on = nullptr;
                    f.polled = false;
                    emu_self = &f;
                    emu_swap_locals(f.locals);
                    emu_resume(f);
                    emu_swap_locals(f.locals);
                    emu_self = nullptr;
                    if (!f.polled) progressed = true;
                    if (f.done) left--;
                }
            }
        }
        if (!ran) { std::fprintf(stderr, "emulation: deadlock: %zu of %u threads wait at barriers that the others never reach\n", left, count); std::abort(); }
    }
    for (auto& f : fibers) emu_delete_locals(f.locals);
}
// A barrier of `expected` threads (a block, a warp, a warpgroup, a cluster): arrive returns the phase arrived in, and wait
// returns once that phase has completed.
struct EmuThreadBarrier { unsigned expected = 0, arrived = 0; unsigned long long phase = 0; };
inline unsigned long long emu_arrive(EmuThreadBarrier& b)
{
    const unsigned long long phase = b.phase;
    if (++b.arrived == b.expected) { b.arrived = 0; b.phase++; }
    return phase;
}
inline void emu_wait(EmuThreadBarrier& b, unsigned long long phase)
{
    while (b.phase == phase)
    {
        emu_self->wait_on = &b.phase;
        emu_self->wait_while = phase;
        emu_yield();
    }
}
inline void emu_arrive_and_wait(EmuThreadBarrier& b) { emu_wait(b, emu_arrive(b)); }

struct EmuBlock
{
    EmuThreadBarrier block;
    std::vector<EmuThreadBarrier> warps;
    std::vector<EmuThreadBarrier> warpgroups;   // 128 threads each, where the block is whole warpgroups
    std::vector<double> slots;
    std::vector<unsigned> words;   // 8 a lane: the operands of a warp-collective ldmatrix or mma
    std::vector<float> shared_floats;   // this CTA's own shared floats (256 KB, zeroed when first asked for): emu_own_shared
};
inline float* emu_own_shared(EmuBlock& b)
{
    if (b.shared_floats.empty()) b.shared_floats.assign(65536, 0.f);
    return b.shared_floats.data();
}
inline EmuBlock* g_block;
inline void __syncthreads() { emu_arrive_and_wait(g_block->block); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu_arrive_and_wait(g_block->warps[threadIdx.x / 32]); }
inline void __threadfence() {}
template <typename T> T emu_shfl(T v, int src_lane_fn(int, int), int arg)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    double* slot = g_block->slots.data() + warp * 32;
    static_assert(sizeof(T) <= sizeof(double), "a shuffled value fits a slot");
    std::memcpy(&slot[lane], &v, sizeof(T));   // the bits, so 64-bit integers pass exactly
    emu_arrive_and_wait(g_block->warps[warp]);
    T r;
    std::memcpy(&r, &slot[src_lane_fn(lane, arg)], sizeof(T));
    emu_arrive_and_wait(g_block->warps[warp]);
    return r;
}
inline int xor_lane(int lane, int o) { return lane ^ o; }
inline int direct_lane(int, int src) { return src; }
inline int up_lane(int lane, int d) { return lane >= d ? lane - d : lane; }
inline int down_lane(int lane, int d) { return lane + d < 32 ? lane + d : lane; }
template <typename T> T __shfl_xor_sync(unsigned, T v, int o, int = 32) { return emu_shfl<T>(v, xor_lane, o); }
template <typename T> T __shfl_sync(unsigned, T v, int src, int = 32) { return emu_shfl<T>(v, direct_lane, src); }
template <typename T> T __shfl_up_sync(unsigned, T v, unsigned d, int = 32) { return emu_shfl<T>(v, up_lane, (int)d); }
template <typename T> T __shfl_down_sync(unsigned, T v, unsigned d, int = 32) { return emu_shfl<T>(v, down_lane, (int)d); }
// The warp's predicates as a mask (every lane of the warp takes part), and the lowest set bit's position from 1.
inline unsigned __ballot_sync(unsigned, int predicate)
{
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    double* slot = g_block->slots.data() + warp * 32;
    slot[lane] = predicate ? 1.0 : 0.0;
    emu_arrive_and_wait(g_block->warps[warp]);
    unsigned mask = 0;
    for (int l = 0; l < 32; l++) if (slot[l] != 0.0) mask |= 1u << l;
    emu_arrive_and_wait(g_block->warps[warp]);
    return mask;
}
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
// prmt.b32's default mode: byte i of the result is byte (s >> 4i) & 7 of the eight bytes y:x (x's bytes 0-3, y's 4-7).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s)
{
    const unsigned long long both = (unsigned long long)y << 32 | x;
    unsigned r = 0;
    for (int i = 0; i < 4; i++) r |= (unsigned)((both >> (8 * ((s >> (4 * i)) & 7))) & 0xFFu) << (8 * i);
    return r;
}
// Atomics under one lock (the fibers of a launch share one OS thread, but a check program may run launches on several).
inline std::mutex& emu_atomic_lock() { static std::mutex m; return m; }
inline float atomicAdd(float* p, float v) { std::lock_guard<std::mutex> g(emu_atomic_lock()); float o = *p; *p += v; return o; }
inline int atomicAdd(int* p, int v) { std::lock_guard<std::mutex> g(emu_atomic_lock()); int o = *p; *p += v; return o; }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { std::lock_guard<std::mutex> g(emu_atomic_lock()); unsigned long long o = *p; *p += v; return o; }
inline unsigned atomicCAS(unsigned* p, unsigned c, unsigned v) { std::lock_guard<std::mutex> g(emu_atomic_lock()); unsigned o = *p; if (o == c) *p = v; return o; }
// Counters a kernel bumps where the path it took matters to a test and shows in no output (sampling.cu: rows whose survivors
// fit its shared list, 0, and rows that went on over the whole row, 1); the check program reads and resets them.
inline std::atomic<long long> emu_tallies[4];
inline void emu_tally(int what) { emu_tallies[what]++; }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
// Runs kernel(args...) on a grid of `grid` blocks (x, y, z) of `block` threads, the blocks in turn.
inline void emu_init_block(EmuBlock& eb, unsigned block)
{
    eb.block.expected = block;
    eb.warps.assign((block + 31) / 32, EmuThreadBarrier{32});
    if (block % 128 == 0) eb.warpgroups.assign(block / 128, EmuThreadBarrier{128});
    eb.slots.assign(((block + 31) / 32) * 32, 0.0);
    eb.words.assign(((block + 31) / 32) * 32 * 8, 0u);
}
template <typename F> void emu_launch(dim3 grid, unsigned block, F kernel)
{
    gridDim = grid; blockDim.x = block;
    for (unsigned b = 0; b < grid.x * grid.y * grid.z; b++)
    {
        EmuBlock eb;
        emu_init_block(eb, block);
        emu_run_threads(block, [&](unsigned t) { g_block = &eb; threadIdx.x = t; blockIdx.x = b % grid.x; blockIdx.y = b / grid.x % grid.y; blockIdx.z = b / (grid.x * grid.y); kernel(); });
    }
}
template <typename F> void emu_launch(unsigned grid, unsigned block, F kernel) { emu_launch(dim3{grid, 1, 1}, block, kernel); }

// ---- thread-block clusters of `ctas` CTAs along x (grid a multiple of it); the clusters in turn, a cluster's CTAs together
struct EmuCluster
{
    std::vector<EmuBlock> blocks;
    EmuThreadBarrier barrier;   // every thread of every CTA of the cluster
    std::vector<unsigned> finished;   // each CTA's threads that have returned: all of them, and the CTA has left
};
inline EmuCluster* g_cluster;
inline unsigned char* emu_cta_shared = nullptr;   // in a cluster: the CTA's own memory as its dynamic shared memory
inline unsigned g_cluster_rank;
inline std::optional<unsigned long long> g_cluster_token;
// A CTA's shared memory is gone once the CTA has left: reading it, copying or arriving into it then is what a missing
// cluster wait allows, and aborts.
inline void emu_cluster_peer_present(unsigned rank, const char* what)
{
    if (g_cluster->finished[rank] == blockDim.x)
    {
        std::fprintf(stderr, "emulation: CTA %u of the cluster %s CTA %u's shared memory after that CTA left (a cluster wait missing?)\n", g_cluster_rank, what, rank);
        std::abort();
    }
}
inline unsigned emu_cluster_rank() { return g_cluster_rank; }
inline unsigned emu_cluster_ctas() { return (unsigned)g_cluster->blocks.size(); }
inline void emu_cluster_arrive() { g_cluster_token.emplace(emu_arrive(g_cluster->barrier)); }
inline void emu_cluster_wait() { emu_wait(g_cluster->barrier, *g_cluster_token); g_cluster_token.reset(); }
inline float* emu_block_shared_floats(int n)
{
    float* own = emu_own_shared(*g_block);
    if ((size_t)n > g_block->shared_floats.size()) { fprintf(stderr, "emulation: %d shared floats asked, %zu held\n", n, g_block->shared_floats.size()); std::abort(); }
    return own;
}
// The two floats at `local`'s offset in CTA `rank`'s shared floats.
inline void emu_cluster_load2(const float* local, unsigned rank, float& a, float& b)
{
    emu_cluster_peer_present(rank, "read");
    const size_t at = (size_t)(local - emu_own_shared(*g_block));
    const float* remote = emu_own_shared(g_cluster->blocks[rank]) + at;
    a = remote[0]; b = remote[1];
}
// The 64-bit word at `local`'s offset in CTA `rank`'s shared memory (a shared::cluster load).
inline unsigned long long emu_cluster_load_u64(const unsigned long long* local, unsigned rank)
{
    emu_cluster_peer_present(rank, "read");
    const size_t at = (size_t)((const unsigned char*)local - (const unsigned char*)emu_own_shared(*g_block));
    unsigned long long v;
    std::memcpy(&v, (const unsigned char*)emu_own_shared(g_cluster->blocks[rank]) + at, 8);
    return v;
}
// A grid (x, y, z) of clusters of `ctas` CTAs along x (grid.x a multiple of it).
template <typename F> void emu_launch_cluster(dim3 grid, unsigned ctas, unsigned block, F kernel)
{
    if (grid.x % ctas != 0) { fprintf(stderr, "emulation: a grid of %u CTAs in clusters of %u\n", grid.x, ctas); std::abort(); }
    gridDim = grid; blockDim.x = block;
    for (unsigned cz = 0; cz < grid.z; cz++)
    for (unsigned cy = 0; cy < grid.y; cy++)
        for (unsigned c = 0; c < grid.x / ctas; c++)
        {
            EmuCluster cluster;
            cluster.blocks.resize(ctas);
            for (auto& eb : cluster.blocks) { emu_init_block(eb, block); emu_own_shared(eb); }
            cluster.barrier.expected = ctas * block;
            cluster.finished.assign(ctas, 0);
            emu_run_threads(ctas * block, [&](unsigned i)
            {
                const unsigned r = i / block, t = i % block;
                g_cluster = &cluster; g_cluster_rank = r; g_block = &cluster.blocks[r];
                emu_cta_shared = (unsigned char*)emu_own_shared(*g_block);
                threadIdx.x = t; blockIdx.x = c * ctas + r; blockIdx.y = cy; blockIdx.z = cz;
                kernel();
                cluster.finished[r]++;
            }, block);
        }
}
template <typename F> void emu_launch_cluster(unsigned grid, unsigned ctas, unsigned block, F kernel) { emu_launch_cluster(dim3{grid, 1, 1}, ctas, block, kernel); }

// ---- tensor-core stand-ins (common.cuh calls these where it has no PTX)
inline unsigned char* emu_shared_base = nullptr;
// Shared-space addresses are offsets from the CTA's own memory in a cluster, else from emu_shared_base.
inline unsigned char* emu_shared() { return emu_cta_shared ? emu_cta_shared : emu_shared_base; }
template <typename T> T* emu_cta_dynamic_shared(T* declared) { return emu_cta_shared ? (T*)emu_cta_shared : declared; }
inline unsigned emu_smem_u32(const void* p) { return (unsigned)((const unsigned char*)p - emu_shared()); }
inline unsigned emu_lds_u32(unsigned addr) { unsigned r; std::memcpy(&r, emu_shared() + addr, 4); return r; }
inline void emu_sts(unsigned addr, const void* src, int bytes) { std::memcpy(emu_shared() + addr, src, bytes); }

// Tessera.Tensors.Int8Quantization.QuantizeRow in C++, what the emulated int8 paged KV kernels are checked against:
// scale = max|x| / 127 and round-to-nearest-even of x * (127 / max) clamped to [-127, 127], in float; zeros (scale 0) for a
// zero row; a NaN scale and zeros for a row with a value that is not finite.
inline float emu_quantize_row(const float* x, signed char* q, int D)
{
    float big = 0;
    bool finite = true;
    for (int d = 0; d < D; d++) { finite &= std::isfinite(x[d]); big = std::max(big, std::abs(x[d])); }
    if (!finite) { std::fill(q, q + D, (signed char)0); return NAN; }
    const float scale = big / 127.f;
    if (scale == 0.f) { std::fill(q, q + D, (signed char)0); return 0.f; }
    const float inverse = 127.f / big;
    for (int d = 0; d < D; d++) q[d] = (signed char)std::clamp(std::nearbyint(x[d] * inverse), -127.f, 127.f);
    return scale;
}

// OCP E4M3 from the format's definition, independently of common.cuh's bit operations: the value of code c (sign, 4
// exponent bits of bias 7, 3 mantissa bits; exponent 0 subnormal; S.1111.111 NaN), and the code nearest v by a search over
// every code (ties to the even code, saturating at +-448, NaN to 0x7F, the sign of a zero kept).
inline double emu_e4m3_definition(int c)
{
    int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    if (e == 15 && m == 7) return NAN;
    double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1 + m / 8.0, e - 7);
    return s ? -v : v;
}
inline unsigned char emu_e4m3_nearest(float v)
{
    if (std::isnan(v)) return 0x7f;
    double t = std::fmin(std::fmax((double)v, -448.0), 448.0);
    int best = 0; double bd = INFINITY;
    for (int c = 0; c < 256; c++)
    {
        if ((c & 0x7f) == 0x7f) continue;
        double d = std::fabs(emu_e4m3_definition(c) - t);
        if (d < bd || (d == bd && (c & 1) == 0 && (c & 0x7f) != 0)) { best = c; bd = d; }
    }
    if (std::signbit(v) && best == 0) best = 0x80;
    if (!std::signbit(v) && best == 0x80) best = 0;
    return (unsigned char)best;
}

// Tessera.Tensors.Fp8Quantization.QuantizeKvRow in C++ (the codes by emu_e4m3_nearest), what the emulated FP8 paged KV
// kernels are checked against: scale = max|x| / 448 and codes e4m3(x / scale), in float; zeros (scale 0, +0 codes) for a
// row whose scale is 0; a NaN scale and zeros for a row with a value that is not finite.
inline float emu_quantize_row_fp8(const float* x, unsigned char* q, int D)
{
    float big = 0;
    bool finite = true;
    for (int d = 0; d < D; d++) { finite &= std::isfinite(x[d]); big = std::max(big, std::abs(x[d])); }
    if (!finite) { std::fill(q, q + D, (unsigned char)0); return NAN; }
    const float scale = big / 448.f;
    if (scale == 0.f) { std::fill(q, q + D, (unsigned char)0); return 0.f; }
    for (int d = 0; d < D; d++) q[d] = emu_e4m3_nearest(x[d] / scale);
    return scale;
}

// A quantized KV pool's code (Tessera.Tensors.PagedKvPool): none (a pool of T), int8 values, or E4M3 codes; a row of D
// floats quantized as the pool's append does (into bytes), and what a byte stands for before the row's scale.
enum class EmuKv { None, Int8, Fp8 };
inline const char* emu_kv_name(EmuKv code) { return code == EmuKv::Int8 ? " int8" : code == EmuKv::Fp8 ? " fp8" : ""; }
inline float emu_quantize_kv_row(EmuKv code, const float* x, unsigned char* q, int D)
{
    return code == EmuKv::Int8 ? emu_quantize_row(x, reinterpret_cast<signed char*>(q), D) : emu_quantize_row_fp8(x, q, D);
}
inline float emu_kv_value(EmuKv code, unsigned char b) { return code == EmuKv::Int8 ? (float)(signed char)b : (float)emu_e4m3_definition(b); }

// cp.async: done at once (the copy lands no later than the wait would let it).
inline void emu_cp_async16(unsigned dst, const void* src, bool valid)
{
    if (valid) std::memcpy(emu_shared() + dst, src, 16);
    else std::memset(emu_shared() + dst, 0, 16);
}
// Transaction barriers (mbarrier) and the tensor memory accelerator's copies, for the decode products' tensor-map form.
// A barrier's state lives beside the CTA's memory (keyed by it and the shared address): the arrivals a phase still waits
// for, the transaction bytes announced and not yet delivered, and the phase's parity. The copies are done at once, then
// credit their bytes, so a wait returns only once the phase's arrival and every byte it announced have come.
struct EmuBarrier { unsigned expected = 0, pending = 0; long long tx = 0; unsigned phase = 0; };
inline std::mutex emu_barrier_lock;
inline std::map<std::pair<unsigned char*, unsigned>, EmuBarrier> emu_barriers;
inline EmuBarrier& emu_barrier(unsigned bar) { return emu_barriers[{emu_shared(), bar}]; }
inline EmuBarrier& emu_barrier_in(unsigned char* memory, unsigned bar) { return emu_barriers[{memory, bar}]; }
inline void emu_barrier_settle(EmuBarrier& b)
{
    if (b.pending == 0 && b.tx == 0) { b.phase ^= 1u; b.pending = b.expected; }
}
inline void emu_mbar_init(unsigned bar, unsigned count)
{
    std::lock_guard<std::mutex> hold(emu_barrier_lock);
    emu_barrier(bar) = EmuBarrier{count, count, 0, 0};
}
inline void emu_mbar_arrive_expect_tx(unsigned bar, unsigned bytes)
{
    std::lock_guard<std::mutex> hold(emu_barrier_lock);
    auto& b = emu_barrier(bar);
    if (b.expected == 0) { std::fprintf(stderr, "mbarrier at %u used before its init\n", bar); std::abort(); }
    if (b.pending == 0) { std::fprintf(stderr, "mbarrier at %u: more arrivals than its count in one phase\n", bar); std::abort(); }
    b.tx += bytes;
    b.pending--;
    if (b.tx < 0 && b.pending == 0) { std::fprintf(stderr, "mbarrier at %u: %lld bytes delivered past those announced\n", bar, -b.tx); std::abort(); }
    emu_barrier_settle(b);
}
// mbarrier.arrive (no transaction bytes): a consumer handing a stage back.
inline void emu_mbar_arrive(unsigned bar)
{
    std::lock_guard<std::mutex> hold(emu_barrier_lock);
    auto& b = emu_barrier(bar);
    if (b.expected == 0) { std::fprintf(stderr, "mbarrier at %u used before its init\n", bar); std::abort(); }
    if (b.pending == 0) { std::fprintf(stderr, "mbarrier at %u: more arrivals than its count in one phase\n", bar); std::abort(); }
    b.pending--;
    emu_barrier_settle(b);
}
// Bytes may land before the arrival that announces them (a peer's multicast copy ahead of this CTA's producer): the count
// goes negative while the phase still waits for that arrival. Past every arrival, bytes beyond those announced are an error.
inline void emu_complete_tx_locked(EmuBarrier& b, unsigned bar, unsigned bytes)
{
    b.tx -= bytes;
    if (b.tx < 0 && b.pending == 0) { std::fprintf(stderr, "mbarrier at %u: %lld bytes delivered past those announced\n", bar, -b.tx); std::abort(); }
    emu_barrier_settle(b);
}
inline void emu_mbar_complete_tx(unsigned bar, unsigned bytes)
{
    std::lock_guard<std::mutex> hold(emu_barrier_lock);
    emu_complete_tx_locked(emu_barrier(bar), bar, bytes);
}
// CTA `rank`'s shared memory in this thread's cluster (this CTA's own outside a cluster, where rank must be 0).
inline unsigned char* emu_cta_memory(unsigned rank)
{
    if (!g_cluster)
    {
        if (rank != 0) { std::fprintf(stderr, "emulation: CTA %u of a cluster named outside a cluster\n", rank); std::abort(); }
        return emu_shared();
    }
    if (rank >= g_cluster->blocks.size()) { std::fprintf(stderr, "emulation: CTA %u of a cluster of %zu\n", rank, g_cluster->blocks.size()); std::abort(); }
    emu_cluster_peer_present(rank, "named");
    return (unsigned char*)emu_own_shared(g_cluster->blocks[rank]);
}
// mbarrier.arrive.shared::cluster on the barrier at the same address in CTA `rank`.
inline void emu_mbar_arrive_remote(unsigned bar, unsigned rank)
{
    std::lock_guard<std::mutex> hold(emu_barrier_lock);
    auto& b = emu_barrier_in(emu_cta_memory(rank), bar);
    if (b.expected == 0) { std::fprintf(stderr, "mbarrier at %u of CTA %u used before its init\n", bar, rank); std::abort(); }
    if (b.pending == 0) { std::fprintf(stderr, "mbarrier at %u of CTA %u: more arrivals than its count in one phase\n", bar, rank); std::abort(); }
    b.pending--;
    emu_barrier_settle(b);
}
// try_wait.parity: true once the phase of that parity has completed (the barrier's parity differs from it).
inline void emu_mbar_wait(unsigned bar, unsigned parity)
{
    auto start = std::chrono::steady_clock::now();
    for (;;)
    {
        {
            std::lock_guard<std::mutex> hold(emu_barrier_lock);
            if (emu_barrier(bar).phase != (parity & 1u)) return;
        }
        if (std::chrono::steady_clock::now() - start > std::chrono::seconds(20))
        {
            std::fprintf(stderr, "mbarrier at %u: phase %u never completed (a copy or an arrival missing)\n", bar, parity);
            std::abort();
        }
        emu_poll_yield();
    }
}
// The emulation's tensor map (written by emu_tensor_map_2d into a TensorMap's 128 bytes): a 2-D row-major tensor of
// dims[1] rows of dims[0] elements, its rows stride_bytes apart, copied in boxes of box[1] rows of box[0] elements whose rows
// are as long as the swizzle's span: 128 bytes in the 128-byte swizzle (16-byte chunk c of box row r at c ^ (r & 7), the
// destination 1,024-byte aligned) or 64 in the 64-byte swizzle (chunk c of row r at c ^ ((r >> 1) & 3): the address bits
// [7, 9) into [4, 6), the destination 512-byte aligned).
// A 3-D map (emu_tensor_map_3d) adds dims[2] planes of those rows, plane_bytes apart, its boxes one plane deep; a 2-D map is
// one plane.
struct EmuTensorMap2d { const unsigned char* base; unsigned long long dims[3], stride_bytes, plane_bytes; unsigned box[2], element_bytes, swizzle; };
inline void emu_tensor_map_2d(void* map, const void* base, unsigned long long cols, unsigned long long rows, unsigned long long stride_bytes,
                              unsigned box_cols, unsigned box_rows, unsigned element_bytes, unsigned swizzle_bytes = 128)
{
    static_assert(sizeof(EmuTensorMap2d) <= 128, "the emulated tensor map fits a CUtensorMap");
    EmuTensorMap2d m{(const unsigned char*)base, {cols, rows, 1}, stride_bytes, 0, {box_cols, box_rows}, element_bytes, swizzle_bytes};
    std::memcpy(map, &m, sizeof m);
}
inline void emu_tensor_map_3d(void* map, const void* base, unsigned long long cols, unsigned long long rows, unsigned long long planes,
                              unsigned long long stride_bytes, unsigned long long plane_bytes, unsigned box_cols, unsigned box_rows,
                              unsigned element_bytes, unsigned swizzle_bytes = 128)
{
    EmuTensorMap2d m{(const unsigned char*)base, {cols, rows, planes}, stride_bytes, plane_bytes, {box_cols, box_rows}, element_bytes, swizzle_bytes};
    std::memcpy(map, &m, sizeof m);
}
// A box's row length must be its swizzle's span and its shared tile aligned to the swizzle's period; the byte offset of
// 16-byte chunk c of box row r in that tile.
inline void emu_check_box(const EmuTensorMap2d& m, unsigned shared_address, const char* what)
{
    const unsigned row_bytes = m.box[0] * m.element_bytes;
    if ((m.swizzle != 128 && m.swizzle != 64) || row_bytes != m.swizzle || shared_address % (8 * m.swizzle) != 0)
    {
        std::fprintf(stderr, "%s: box rows of the swizzle's span (64 or 128 bytes) into a tile aligned to its period only\n", what);
        std::abort();
    }
}
inline unsigned emu_swizzled(const EmuTensorMap2d& m, unsigned r, unsigned c)
{
    return m.swizzle == 128 ? r * 128 + ((c ^ (r & 7)) << 4) : r * 64 + ((c ^ ((r >> 1) & 3)) << 4);
}
// cp.async.bulk.tensor.2d ... .mbarrier::complete_tx: the box at element (c0, c1), elements past the tensor zero-filled (by
// 16-byte chunks here: a chunk that crosses the last column is zeroed whole, which the hardware does element by element; the
// decode products' K is a multiple of 64), then its bytes credited to the barrier (the whole box's, as the hardware counts them).
// The box at element (c0, c1) into `memory` + dst in the 128-byte swizzle, zero-filled past the tensor; returns its bytes.
inline unsigned emu_tma_box_into(unsigned char* memory, unsigned dst, const void* map_bytes, int c0, int c1, const char* what, int c2 = 0)
{
    EmuTensorMap2d m;
    std::memcpy(&m, map_bytes, sizeof m);
    const unsigned row_bytes = m.box[0] * m.element_bytes, per_chunk = 16 / m.element_bytes;
    emu_check_box(m, dst, what);
    for (unsigned r = 0; r < m.box[1]; r++)
        for (unsigned c = 0; c < row_bytes / 16; c++)
        {
            unsigned char* to = memory + dst + emu_swizzled(m, r, c);
            const unsigned long long row = (unsigned long long)c1 + r, col = (unsigned long long)c0 + c * per_chunk;
            if (row < m.dims[1] && col + per_chunk <= m.dims[0] && c2 >= 0 && (unsigned long long)c2 < m.dims[2])
                std::memcpy(to, m.base + (unsigned long long)c2 * m.plane_bytes + row * m.stride_bytes + col * m.element_bytes, 16);
            else std::memset(to, 0, 16);
        }
    return row_bytes * m.box[1];
}
inline void emu_tma_load_2d(unsigned dst, const void* map_bytes, int c0, int c1, unsigned bar)
{
    emu_mbar_complete_tx(bar, emu_tma_box_into(emu_shared(), dst, map_bytes, c0, c1, "emu_tma_load_2d"));
}
// cp.async.bulk.tensor.3d: the box at element (c0, c1) of plane c2, rows past the plane's zero-filled.
inline void emu_tma_load_3d(unsigned dst, const void* map_bytes, int c0, int c1, int c2, unsigned bar)
{
    emu_mbar_complete_tx(bar, emu_tma_box_into(emu_shared(), dst, map_bytes, c0, c1, "emu_tma_load_3d", c2));
}
// The multicast form: the box into the same address of each CTA in the mask, each CTA's barrier at bar credited.
inline void emu_tma_load_2d_multicast(unsigned dst, const void* map_bytes, int c0, int c1, unsigned bar, unsigned short ctas)
{
    for (unsigned rank = 0; rank < 16; rank++)
    {
        if (!(ctas >> rank & 1u)) continue;
        unsigned char* memory = emu_cta_memory(rank);
        const unsigned bytes = emu_tma_box_into(memory, dst, map_bytes, c0, c1, "emu_tma_load_2d_multicast");
        std::lock_guard<std::mutex> hold(emu_barrier_lock);
        emu_complete_tx_locked(emu_barrier_in(memory, bar), bar, bytes);
    }
}
// cp.async.bulk.tensor.2d.global.shared::cta: the box from its swizzled shared tile into the tensor at element (c0, c1), rows
// and 16-byte chunks past the tensor not written. Queued in the thread's open bulk group and done (its source read then) when
// a wait retires the group: the latest moment the hardware may read it, so a buffer rewritten too early shows.
inline void emu_tma_store_2d_now(const void* map_bytes, int c0, int c1, unsigned src, unsigned char* shared);
struct EmuPendingStore { unsigned char map[128]; int c0, c1; unsigned src; unsigned char* shared; };
inline std::vector<EmuPendingStore> emu_open_group;
inline std::vector<std::vector<EmuPendingStore>> emu_bulk_groups;
inline void emu_tma_store_2d(const void* map_bytes, int c0, int c1, unsigned src)
{
    EmuPendingStore p; std::memcpy(p.map, map_bytes, 128); p.c0 = c0; p.c1 = c1; p.src = src; p.shared = emu_shared();
    emu_open_group.push_back(p);
}
inline void emu_bulk_commit() { emu_bulk_groups.push_back(std::move(emu_open_group)); emu_open_group.clear(); }
// The latest legal moment a group reads its source: when a wait retires it.
inline void emu_bulk_wait(int n)
{
    while ((int)emu_bulk_groups.size() > n)
    {
        for (auto& p : emu_bulk_groups.front()) emu_tma_store_2d_now(p.map, p.c0, p.c1, p.src, p.shared);
        emu_bulk_groups.erase(emu_bulk_groups.begin());
    }
}
inline void emu_tma_store_2d_now(const void* map_bytes, int c0, int c1, unsigned src, unsigned char* shared)
{
    EmuTensorMap2d m;
    std::memcpy(&m, map_bytes, sizeof m);
    const unsigned row_bytes = m.box[0] * m.element_bytes, per_chunk = 16 / m.element_bytes;
    emu_check_box(m, src, "emu_tma_store_2d");
    for (unsigned r = 0; r < m.box[1]; r++)
        for (unsigned c = 0; c < row_bytes / 16; c++)
        {
            const unsigned long long row = (unsigned long long)c1 + r, col = (unsigned long long)c0 + c * per_chunk;
            if (row >= m.dims[1] || col >= m.dims[0]) continue;
            if (col + per_chunk > m.dims[0])
            {
                std::fprintf(stderr, "emu_tma_store_2d: a 16-byte chunk across the tensor's last column (an H100 wrote it whole; the host keeps N a multiple of 8)\n");
                std::abort();
            }
            std::memcpy((unsigned char*)m.base + row * m.stride_bytes + col * m.element_bytes, shared + src + emu_swizzled(m, r, c), 16);
        }
}
// cp.async.bulk (1-D) ... .mbarrier::complete_tx.
inline void emu_bulk_load(unsigned dst, const void* src, unsigned bytes, unsigned bar)
{
    std::memcpy(emu_shared() + dst, src, bytes);
    emu_mbar_complete_tx(bar, bytes);
}
// cp.async of 4 bytes, the first `bytes` (0 to 4) read and the rest zero-filled (the Hopper backward's lse and delta rows; the
// int4 decode product's scales and zero words).
inline void emu_cp_async4(unsigned dst, const void* src, int bytes)
{
    std::memset(emu_shared() + dst, 0, 4);
    if (bytes > 0) std::memcpy(emu_shared() + dst, src, (size_t)bytes);
}
// cp.reduce.async.bulk .add.f32 of `bytes` from shared address src into global dst, done at once (atomically: other threads
// of the block run beside it).
inline void emu_bulk_reduce_add_f32(float* dst, unsigned src, unsigned bytes)
{
    for (unsigned i = 0; i < bytes / 4; i++)
    {
        float v;
        std::memcpy(&v, emu_shared() + src + 4 * i, 4);
        std::atomic_ref<float>(dst[i]).fetch_add(v);
    }
}
// red.global.add.v2.f32: the block's threads run at once here, so the adds are atomic.
inline void emu_red_add2(float* dst, float a, float b)
{
    std::atomic_ref<float>(dst[0]).fetch_add(a);
    std::atomic_ref<float>(dst[1]).fetch_add(b);
}
inline unsigned* emu_warp_words() { return g_block->words.data() + (threadIdx.x / 32) * 32 * 8; }
inline void emu_warp_sync() { emu_arrive_and_wait(g_block->warps[threadIdx.x / 32]); }
// ldmatrix.m8n8.x4 (.trans): lanes 8i..8i+7 give the row addresses of matrix i; lane l receives, for each matrix, the
// 16-bit pair (row l/4, columns 2(l%4), 2(l%4)+1), or with trans (rows 2(l%4), 2(l%4)+1, column l/4), the lower index in
// the low half.
inline void emu_ldsm_x4(unsigned addr, unsigned* r, bool trans)
{
    const int lane = threadIdx.x % 32;
    unsigned* w = emu_warp_words();
    w[lane * 8] = addr;
    emu_warp_sync();
    for (int i = 0; i < 4; i++)
        if (!trans) std::memcpy(&r[i], emu_shared() + w[(8 * i + lane / 4) * 8] + (lane % 4) * 4, 4);
        else
        {
            unsigned short lo, hi;
            std::memcpy(&lo, emu_shared() + w[(8 * i + 2 * (lane % 4)) * 8] + (lane / 4) * 2, 2);
            std::memcpy(&hi, emu_shared() + w[(8 * i + 2 * (lane % 4) + 1) * 8] + (lane / 4) * 2, 2);
            r[i] = lo | ((unsigned)hi << 16);
        }
    emu_warp_sync();
}
inline float emu_bf16_bits(unsigned short b) { return __uint_as_float((unsigned)b << 16); }
// mma.sync.m16n8k16.row.col, fp32 accumulators (g = lane / 4, c = lane % 4): A a0 (g, 2c..), a1 (g + 8, 2c..),
// a2 (g, 2c + 8..), a3 (g + 8, 2c + 8..); B b0 (k 2c.., n g), b1 (k 2c + 8.., n g); C c0 c1 (g, 2c..), c2 c3 (g + 8, 2c..).
inline void emu_mma_m16n8k16(float* c, const unsigned* a, unsigned b0, unsigned b1, float (*element)(unsigned short))
{
    const int lane = threadIdx.x % 32;
    unsigned* w = emu_warp_words();
    for (int i = 0; i < 4; i++) w[lane * 8 + i] = a[i];
    w[lane * 8 + 4] = b0;
    w[lane * 8 + 5] = b1;
    emu_warp_sync();
    float A[16][16], Bm[16][8];
    for (int t = 0; t < 32; t++)
    {
        const int g = t / 4, cc = t % 4;
        for (int e = 0; e < 2; e++)
        {
            auto half = [&](int word) { return element((unsigned short)(w[t * 8 + word] >> (16 * e))); };
            A[g][2 * cc + e] = half(0);
            A[g + 8][2 * cc + e] = half(1);
            A[g][2 * cc + 8 + e] = half(2);
            A[g + 8][2 * cc + 8 + e] = half(3);
            Bm[2 * cc + e][g] = half(4);
            Bm[2 * cc + 8 + e][g] = half(5);
        }
    }
    emu_warp_sync();
    const int g = lane / 4, cc = lane % 4;
    for (int r = 0; r < 2; r++)
        for (int e = 0; e < 2; e++)
        {
            float sum = 0.f;
            for (int k = 0; k < 16; k++) sum += A[g + 8 * r][k] * Bm[k][2 * cc + e];
            c[2 * r + e] += sum;
        }
}

// wgmma.mma_async.m64nNk16, fp32 accumulators, the warpgroup's 128 threads together (hopper.cuh calls it). A: from the
// threads' registers (`a`, each warp's m16 fragment as mma.m16n8k16's: warp w holds rows 16w ..) or through its
// descriptor; B through its descriptor. A descriptor gives the start address in bits [0,14), the leading byte offset in
// [16,30) and the stride byte offset in [32,46), each >> 4. Element (mn, k) of a K-major operand (rows of k) sits at the
// logical address start + (mn / 8) stride + (mn % 8) 128 + 2k; of an MN-major one (rows of mn) at start + (mn / 64)
// leading + (k / 8) stride + (k % 8) 128 + 2 (mn % 64); the 128-byte swizzle stores it at that address with bits [4,7)
// XORed by bits [7,10). D: register 4j + e holds row 16w + g + 8 (e >> 1), column 8j + 2c + (e & 1); accumulate false
// overwrites it.
inline void emu_warpgroup_sync() { emu_arrive_and_wait(g_block->warpgroups[threadIdx.x / 128]); }
inline float emu_descriptor_element(unsigned long long desc, bool mn_major, int mn, int k, float (*element)(unsigned short))
{
    const size_t start = (size_t)(desc & 0x3FFF) << 4, leading = (size_t)((desc >> 16) & 0x3FFF) << 4, stride = (size_t)((desc >> 32) & 0x3FFF) << 4;
    const size_t logical = mn_major ? start + (size_t)(mn / 64) * leading + (size_t)(k / 8) * stride + (size_t)(k % 8) * 128 + (size_t)(mn % 64) * 2
                                    : start + (size_t)(mn / 8) * stride + (size_t)(mn % 8) * 128 + (size_t)k * 2;
    unsigned short v;
    std::memcpy(&v, emu_shared() + (logical ^ (((logical >> 7) & 7) << 4)), 2);
    return element(v);
}
inline void emu_wgmma(float* d, int N, const unsigned* a, unsigned long long adesc, bool a_mn_major, unsigned long long bdesc,
                      bool b_mn_major, bool accumulate, float (*element)(unsigned short))
{
    if (g_block->warpgroups.empty()) { fprintf(stderr, "emulation: wgmma in a block that is not whole warpgroups\n"); std::abort(); }
    const int t = threadIdx.x, group = t / 128 * 128, lane = t % 32, w = t % 128 / 32, g = lane / 4, c = lane % 4;
    unsigned* words = g_block->words.data();   // 8 a thread
    if (a)
        for (int i = 0; i < 4; i++) words[t * 8 + i] = a[i];
    emu_warpgroup_sync();
    auto A = [&](int row, int k) {   // the warpgroup's A (64 x 16)
        if (!a) return emu_descriptor_element(adesc, a_mn_major, row, k, element);
        const int rr = row % 16, word = rr / 8 + 2 * (k / 8), owner = group + 32 * (row / 16) + 4 * (rr % 8) + (k % 8) / 2;
        return element((unsigned short)(words[owner * 8 + word] >> (16 * (k % 2))));
    };
    for (int j = 0; j < N / 8; j++)
        for (int e = 0; e < 4; e++)
        {
            const int row = 16 * w + g + 8 * (e >> 1), col = 8 * j + 2 * c + (e & 1);
            float sum = 0.f;
            for (int k = 0; k < 16; k++) sum += A(row, k) * emu_descriptor_element(bdesc, b_mn_major, col, k, element);
            d[4 * j + e] = (accumulate ? d[4 * j + e] : 0.f) + sum;
        }
    emu_warpgroup_sync();
}

// wgmma from two descriptors, deferred (the training products' WgmmaSs): each thread queues its part, the warpgroup having
// met at the issue, and the queued products run when a wgmma.wait_group retires their group, as late as the hardware may run
// them (a stage handed back before the wait shows as a wrong sum). Groups are each thread's own, as on the hardware.
struct EmuPendingMma { float* d; int N; unsigned long long a, b; bool ta, tb, acc; float (*el)(unsigned short); };
inline std::vector<EmuPendingMma> emu_mma_open;
inline std::vector<std::vector<EmuPendingMma>> emu_mma_groups;
inline void emu_wgmma_defer(float* d, int N, unsigned long long a, bool ta, unsigned long long b, bool tb, bool acc, float (*el)(unsigned short))
{ emu_warpgroup_sync(); emu_mma_open.push_back({d, N, a, b, ta, tb, acc, el}); }
inline void emu_wgmma_commit() { emu_mma_groups.push_back(std::move(emu_mma_open)); emu_mma_open.clear(); }
inline void emu_wgmma_wait(int n)
{
    while ((int)emu_mma_groups.size() > n)
    {
        for (auto& m : emu_mma_groups.front()) emu_wgmma(m.d, m.N, nullptr, m.a, m.ta, m.b, m.tb, m.acc, m.el);
        emu_mma_groups.erase(emu_mma_groups.begin());
    }
}

// ---- each emulated thread's own copy of the variables above that CUDA makes per thread (or per CTA, for a cluster's)
struct EmuFiberLocals
{
    dim3 thread_idx, block_idx;
    EmuBlock* block = nullptr;
    EmuCluster* cluster = nullptr;
    unsigned char* cta_shared = nullptr;
    unsigned cluster_rank = 0;
    std::optional<unsigned long long> cluster_token;
    std::vector<EmuPendingStore> open_group;
    std::vector<std::vector<EmuPendingStore>> bulk_groups;
    std::vector<EmuPendingMma> mma_open;
    std::vector<std::vector<EmuPendingMma>> mma_groups;
};
inline EmuFiberLocals* emu_new_locals() { return new EmuFiberLocals(); }
inline void emu_delete_locals(EmuFiberLocals* locals) { delete locals; }
inline void emu_swap_locals(EmuFiberLocals* l)
{
    std::swap(threadIdx, l->thread_idx);
    std::swap(blockIdx, l->block_idx);
    std::swap(g_block, l->block);
    std::swap(g_cluster, l->cluster);
    std::swap(emu_cta_shared, l->cta_shared);
    std::swap(g_cluster_rank, l->cluster_rank);
    std::swap(g_cluster_token, l->cluster_token);
    std::swap(emu_open_group, l->open_group);
    std::swap(emu_bulk_groups, l->bulk_groups);
    std::swap(emu_mma_open, l->mma_open);
    std::swap(emu_mma_groups, l->mma_groups);
}
