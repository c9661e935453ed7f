// Hopper (sm_90a) helpers shared by the architecture-specific kernel files (KernelLibrary.ArchitectureSpecificFiles,
// compiled after common.cuh): warpgroup MMA (wgmma.mma_async) with its fences and shared-memory matrix descriptors.
//
// Shared-memory tiles use the 128-byte swizzle that wgmma's descriptors name (mode 1): a tile of ROWS x D 16-bit values
// is D/64 column blocks of ROWS x 64 values; row r of a block is 128 bytes at r * 128, its 16-byte chunk c stored at
// chunk c ^ (r & 7) (common.cuh's swizzled tiles), and the hardware applies the XOR to address bits [4,7) from bits [7,10),
// so every tile starts on a 1,024-byte boundary. Descriptors: start address >> 4 in bits [0,14), leading byte offset >> 4
// in [16,30), stride byte offset >> 4 in [32,46), swizzle mode in [62,64). K-major operands: stride offset 1,024 (from one
// 8-row group to the next), leading offset unused (16); the k16 step j of a block starts 32 j bytes into its rows. N-major:
// stride offset 1,024 (8 k rows to the next 8), leading offset ROWS * 128 (from one 64-column block to the next); the k16
// step j starts 2,048 j bytes in.
//
// wgmma accumulator fragment (m64nN, f32), warp w of the warpgroup, g = lane / 4, c = lane % 4: register 4 j + e holds
// row 16 w + g + 8 (e >> 1), column 8 j + 2 c + (e & 1). The A fragment from registers (m64k16) is mma.m16n8k16's per
// warp: a0 (g, 2c..2c+1), a1 (g+8, 2c..), a2 (g, 2c+8..), a3 (g+8, 2c+8..).
typedef unsigned long long u64;


// smem_u32 and the cp.async helpers are common.cuh's. On the CPU emulation (cuda_emulation.h) the inline PTX compiles
// away (HOPPER_ASM is its asm there, which expands to nothing), the fences with it, and the bf16 wgmma run the emulation's
// warpgroup stand-in (emu_wgmma: each operand from registers or through its descriptor, K- or MN-major); WgmmaSs's products
// and the tensor stores run there when a wait retires their group (see wgmma_commit and bulk_commit below).
#ifdef __CUDA_ARCH__
#define HOPPER_ASM asm volatile
#else
#define HOPPER_ASM asm
#endif

// Shared memory written by ordinary (generic-proxy) stores, cp.async included, becomes visible to wgmma (the async
// proxy) only after this fence by the writing thread, before the barrier that orders it with the readers.
__device__ __forceinline__ void fence_async_shared() { HOPPER_ASM("fence.proxy.async.shared::cta;" ::: "memory"); }

// wgmma ordering: fence before the first wgmma that reads registers written by other instructions (accumulators, A);
// commit closes a group of issued wgmma; wait<N> returns when at most N groups are still running.
__device__ __forceinline__ void wgmma_fence() { HOPPER_ASM("wgmma.fence.sync.aligned;" ::: "memory"); }
// On the CPU emulation the training products' wgmma (WgmmaSs) run when a wait retires their group, as late as the hardware
// may run them, so a stage handed back before its products are waited for shows there.
__device__ __forceinline__ void wgmma_commit()
{
    HOPPER_ASM("wgmma.commit_group.sync.aligned;" ::: "memory");
#ifndef __CUDA_ARCH__
    emu_wgmma_commit();
#endif
}
template <int N> __device__ __forceinline__ void wgmma_wait()
{
    HOPPER_ASM("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#ifndef __CUDA_ARCH__
    emu_wgmma_wait(N);
#endif
}

// Keeps the compiler from moving reads or writes of accumulator registers across the asynchronous wgmma (which
// reads and writes them after its asm statement has "returned"): an empty asm that claims to modify each one.
template <int N> __device__ __forceinline__ void fence_registers(float* r)
{
#pragma unroll
    for (int i = 0; i < N; i++) HOPPER_ASM("" : "+f"(r[i])::"memory");
}
template <int N> __device__ __forceinline__ void fence_registers(unsigned* r)
{
#pragma unroll
    for (int i = 0; i < N; i++) HOPPER_ASM("" : "+r"(r[i])::"memory");
}

// Warp-specialized kernels: a warpgroup gives registers back (a producer) or takes them (the consumers); every thread of the
// warpgroup executes it, and the counts (multiples of 8, 24 to 256) must fit the register file with the CTA's other warpgroups.
template <int R> __device__ __forceinline__ void warpgroup_registers_down() { HOPPER_ASM("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(R)); }
template <int R> __device__ __forceinline__ void warpgroup_registers_up() { HOPPER_ASM("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(R)); }

// The tensor memory accelerator (TMA) and transaction barriers. A CUtensorMap is passed to a kernel by value
// (const __grid_constant__ TensorMap) and a copy names it by its address; on the CPU emulation its 128 bytes hold the fields
// that emu_tensor_map_2d writes. An mbarrier is 8 bytes of shared memory at a shared-space address; a phase completes when
// its arrivals have come and every byte they announced (expect_tx) has been delivered by the copies that name it.
struct alignas(64) TensorMap { unsigned long long opaque[16]; };
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned arrivals)
{
    HOPPER_ASM("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(arrivals) : "memory");
#ifndef __CUDA_ARCH__
    emu_mbar_init(bar, arrivals);
#endif
}
// Before the barrier's memory serves anything else (every phase waited for, no copy in flight).
__device__ __forceinline__ void mbar_inval(unsigned bar) { HOPPER_ASM("mbarrier.inval.shared::cta.b64 [%0];" ::"r"(bar) : "memory"); }
// After the inits, before the barrier that publishes them: makes them visible to the async proxy and the cluster.
__device__ __forceinline__ void mbar_fence_init() { HOPPER_ASM("fence.mbarrier_init.release.cluster;" ::: "memory"); }
// One arrival announcing `bytes` that copies will deliver in the same phase.
__device__ __forceinline__ void mbar_arrive_expect_tx(unsigned bar, unsigned bytes)
{
    HOPPER_ASM("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
#ifndef __CUDA_ARCH__
    emu_mbar_arrive_expect_tx(bar, bytes);
#endif
}
// One arrival without transaction bytes (a consumer handing a stage back to its producer).
__device__ __forceinline__ void mbar_arrive(unsigned bar)
{
    HOPPER_ASM("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(bar) : "memory");
#ifndef __CUDA_ARCH__
    emu_mbar_arrive(bar);
#endif
}
// One arrival on the barrier at the same shared address in CTA `cta` of the cluster (this CTA's own included).
__device__ __forceinline__ void mbar_arrive_cluster(unsigned bar, unsigned cta)
{
    HOPPER_ASM("{ .reg .b32 remote; mapa.shared::cluster.u32 remote, %0, %1; mbarrier.arrive.shared::cluster.b64 _, [remote]; }"
               ::"r"(bar), "r"(cta) : "memory");
#ifndef __CUDA_ARCH__
    emu_mbar_arrive_remote(bar, cta);
#endif
}
// Returns once the phase of this parity has completed.
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity)
{
#ifdef __CUDA_ARCH__
    unsigned done;
    do
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    while (!done);
#else
    emu_mbar_wait(bar, parity);
#endif
}
// The box of `map` at element (c0, c1) (c0 along the contiguous dimension) into the 1,024-byte aligned shared tile dst, in
// the map's swizzle; its bytes complete on bar. Elements past the tensor arrive as zeros.
__device__ __forceinline__ void tma_load_2d(unsigned dst, const TensorMap* map, int c0, int c1, unsigned bar)
{
    HOPPER_ASM("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];"
               ::"r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(bar) : "memory");
#ifndef __CUDA_ARCH__
    emu_tma_load_2d(dst, map, c0, c1, bar);
#endif
}
// The box of a 3-D map (planes of rows, the box one plane deep) at element (c0, c1) of plane c2: rows past the plane arrive as
// zeros, not as the next plane's.
__device__ __forceinline__ void tma_load_3d(unsigned dst, const TensorMap* map, int c0, int c1, int c2, unsigned bar)
{
    HOPPER_ASM("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
               ::"r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
#ifndef __CUDA_ARCH__
    emu_tma_load_3d(dst, map, c0, c1, c2, bar);
#endif
}
// tma_load_2d's box into the same shared address of every CTA of the cluster in `ctas` (a bit a rank), its bytes completing
// on the barrier at bar's address in each of them.
__device__ __forceinline__ void tma_load_2d_multicast(unsigned dst, const TensorMap* map, int c0, int c1, unsigned bar, unsigned short ctas)
{
    HOPPER_ASM("cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, %3}], [%4], %5;"
               ::"r"(dst), "l"(map), "r"(c0), "r"(c1), "r"(bar), "h"(ctas) : "memory");
#ifndef __CUDA_ARCH__
    emu_tma_load_2d_multicast(dst, map, c0, c1, bar, ctas);
#endif
}
// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global src to shared dst; they complete on bar.
__device__ __forceinline__ void bulk_load(unsigned dst, const void* src, unsigned bytes, unsigned bar)
{
    HOPPER_ASM("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];"
               ::"r"(dst), "l"(src), "r"(bytes), "r"(bar) : "memory");
#ifndef __CUDA_ARCH__
    emu_bulk_load(dst, src, bytes, bar);
#endif
}

// The shared-memory tile at src (1,024-byte aligned, in the map's swizzle) into `map`'s box at element (c0, c1), as one bulk
// group's copy (bulk_commit closes the group); the box's parts past the tensor are not written.
__device__ __forceinline__ void tma_store_2d(const TensorMap* map, int c0, int c1, unsigned src)
{
    HOPPER_ASM("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];" ::"l"(map), "r"(c0), "r"(c1), "r"(src)
               : "memory");
#ifndef __CUDA_ARCH__
    emu_tma_store_2d(map, c0, c1, src);
#endif
}
// On the CPU emulation a TMA store reads its shared-memory source when a wait retires its group (as late as the hardware
// may read it), so a buffer rewritten before its store is waited for shows there.
__device__ __forceinline__ void bulk_commit()
{
    HOPPER_ASM("cp.async.bulk.commit_group;" ::: "memory");
#ifndef __CUDA_ARCH__
    emu_bulk_commit();
#endif
}
// Until at most N bulk groups of this thread are still reading their shared-memory source.
template <int N> __device__ __forceinline__ void bulk_wait_read()
{
    HOPPER_ASM("cp.async.bulk.wait_group.read %0;" ::"n"(N) : "memory");
#ifndef __CUDA_ARCH__
    emu_bulk_wait(N);
#endif
}
// Until at most N bulk groups of this thread are incomplete (their global writes done).
template <int N> __device__ __forceinline__ void bulk_wait()
{
    HOPPER_ASM("cp.async.bulk.wait_group %0;" ::"n"(N) : "memory");
#ifndef __CUDA_ARCH__
    emu_bulk_wait(N);
#endif
}
// The barrier of warpgroup wg's 128 threads alone (named barrier 1 + wg; 0 is __syncthreads').
__device__ __forceinline__ void warpgroup_barrier(int wg)
{
#ifdef __CUDA_ARCH__
    asm volatile("bar.sync %0, 128;" ::"r"(1 + wg) : "memory");
#else
    emu_warpgroup_sync();
#endif
}

// A shared-memory matrix descriptor with the 128-byte swizzle (see the header).
__device__ __forceinline__ u64 sw128_descriptor(unsigned address, unsigned leading, unsigned stride)
{
    return (u64)((address & 0x3FFFFu) >> 4) | ((u64)(leading >> 4) << 16) | ((u64)(stride >> 4) << 32) | (1ull << 62);
}
// The same descriptor moved by bytes (a multiple of 16, within the 14-bit address field).
__device__ __forceinline__ u64 desc_plus(u64 desc, unsigned bytes) { return desc + (u64)(bytes >> 4); }

// Packs two floats into 16-bit pairs (lo in the low half).
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi);
template <> __device__ __forceinline__ unsigned pack2<bf16>(float lo, float hi) { return Mma<bf16>::pack(lo, hi); }
template <> __device__ __forceinline__ unsigned pack2<f16>(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// The two 16-bit values of a pack2 word as floats (lo = the low half).
template <typename T> __device__ __forceinline__ float unpack_lo(unsigned w);
template <typename T> __device__ __forceinline__ float unpack_hi(unsigned w);
template <> __device__ __forceinline__ float unpack_lo<bf16>(unsigned w) { return __uint_as_float(w << 16); }
template <> __device__ __forceinline__ float unpack_hi<bf16>(unsigned w) { return __uint_as_float(w & 0xffff0000u); }
template <> __device__ __forceinline__ float unpack_lo<f16>(unsigned w)
{
    float f;
    asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, l; }" : "=f"(f) : "r"(w));
    return f;
}
template <> __device__ __forceinline__ float unpack_hi<f16>(unsigned w)
{
    float f;
    asm("{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, h; }" : "=f"(f) : "r"(w));
    return f;
}

// wgmma m64nNk16 with fp32 accumulators for 16-bit inputs. The accumulate flag is a predicate operand (scale-d: 0
// overwrites d), set from a register; imm-scale-a/b 1, transposes as each name says.
template <typename T, int N> struct Wgmma;
#define WG_F8(d, i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_F32(d, i) WG_F8(d, i), WG_F8(d, i + 8), WG_F8(d, i + 16), WG_F8(d, i + 24)
#define WG_ACC64(d) WG_F32(d, 0)
#define WG_ACC128(d) WG_F32(d, 0), WG_F32(d, 32)
#define WG_ACC256(d) WG_F32(d, 0), WG_F32(d, 32), WG_F32(d, 64), WG_F32(d, 96)
#define WG_REGS64 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define WG_REGS256 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define WG_REGS128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"

template <> struct Wgmma<bf16, 64>
{
    // d (64 x 64) = a (64 x 16, shared, K-major) * b (16 x 64, shared, K-major) (+ d when accumulate)
    static __device__ __forceinline__ void ss(float* d, u64 a, u64 b, int accumulate)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %34, 0; "
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_REGS64 ", %32, %33, p, 1, 1, 0, 0; }"
                     : WG_ACC64(d) : "l"(a), "l"(b), "r"(accumulate));
#ifndef __CUDA_ARCH__
        emu_wgmma(d, 64, nullptr, a, false, b, false, accumulate != 0, emu_bf16_bits);
#endif
    }
    // d (64 x 64) += a (64 x 16, registers) * b (16 x 64, shared, N-major: the tile is stored as rows of k)
    static __device__ __forceinline__ void rs_nmajor(float* d, const unsigned* a, u64 b)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %37, 0; "
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_REGS64 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1; }"
                     : WG_ACC64(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#ifndef __CUDA_ARCH__
        emu_wgmma(d, 64, a, 0, false, b, true, true, emu_bf16_bits);
#endif
    }
};
template <> struct Wgmma<bf16, 128>
{
    // d (64 x 128) = a (64 x 16, shared, K-major) * b (16 x 128, shared, K-major) (+ d when accumulate)
    static __device__ __forceinline__ void ss(float* d, u64 a, u64 b, int accumulate)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %66, 0; "
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_REGS128 ", %64, %65, p, 1, 1, 0, 0; }"
                     : WG_ACC128(d) : "l"(a), "l"(b), "r"(accumulate));
#ifndef __CUDA_ARCH__
        emu_wgmma(d, 128, nullptr, a, false, b, false, accumulate != 0, emu_bf16_bits);
#endif
    }
    // d (64 x 128) += a (64 x 16, registers) * b (16 x 128, shared, N-major: the tile is stored as rows of k)
    static __device__ __forceinline__ void rs_nmajor(float* d, const unsigned* a, u64 b)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %69, 0; "
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_REGS128 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1; }"
                     : WG_ACC128(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#ifndef __CUDA_ARCH__
        emu_wgmma(d, 128, a, 0, false, b, true, true, emu_bf16_bits);
#endif
    }
    // d (64 x 128) += a (64 x 16, registers) * b (16 x 128, shared, K-major: the tile is stored as rows of n)
    static __device__ __forceinline__ void rs_kmajor(float* d, const unsigned* a, u64 b)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %69, 0; "
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " WG_REGS128 ", {%64, %65, %66, %67}, %68, p, 1, 1, 0; }"
                     : WG_ACC128(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#ifndef __CUDA_ARCH__
        emu_wgmma(d, 128, a, 0, false, b, false, true, emu_bf16_bits);
#endif
    }
};
template <> struct Wgmma<f16, 64>
{
    // d (64 x 64) = a (64 x 16, shared, K-major) * b (16 x 64, shared, K-major) (+ d when accumulate)
    static __device__ __forceinline__ void ss(float* d, u64 a, u64 b, int accumulate)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %34, 0; "
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " WG_REGS64 ", %32, %33, p, 1, 1, 0, 0; }"
                     : WG_ACC64(d) : "l"(a), "l"(b), "r"(accumulate));
    }
    // d (64 x 64) += a (64 x 16, registers) * b (16 x 64, shared, N-major: the tile is stored as rows of k)
    static __device__ __forceinline__ void rs_nmajor(float* d, const unsigned* a, u64 b)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %37, 0; "
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " WG_REGS64 ", {%32, %33, %34, %35}, %36, p, 1, 1, 1; }"
                     : WG_ACC64(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
    }
};
template <> struct Wgmma<f16, 128>
{
    // d (64 x 128) = a (64 x 16, shared, K-major) * b (16 x 128, shared, K-major) (+ d when accumulate)
    static __device__ __forceinline__ void ss(float* d, u64 a, u64 b, int accumulate)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %66, 0; "
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " WG_REGS128 ", %64, %65, p, 1, 1, 0, 0; }"
                     : WG_ACC128(d) : "l"(a), "l"(b), "r"(accumulate));
    }
    // d (64 x 128) += a (64 x 16, registers) * b (16 x 128, shared, N-major: the tile is stored as rows of k)
    static __device__ __forceinline__ void rs_nmajor(float* d, const unsigned* a, u64 b)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %69, 0; "
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " WG_REGS128 ", {%64, %65, %66, %67}, %68, p, 1, 1, 1; }"
                     : WG_ACC128(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
    }
    // d (64 x 128) += a (64 x 16, registers) * b (16 x 128, shared, K-major: the tile is stored as rows of n)
    static __device__ __forceinline__ void rs_kmajor(float* d, const unsigned* a, u64 b)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %69, 0; "
                     "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 " WG_REGS128 ", {%64, %65, %66, %67}, %68, p, 1, 1, 0; }"
                     : WG_ACC128(d) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
    }
};

// wgmma m64nNk16 (N 128 or 256) from two shared-memory operands, each K-major or MN-major (TA, TB: stored as rows of k, read
// transposed), fp32 accumulators (the training products, gemm_hopper.cu).
template <typename T, int N> struct WgmmaSs;
#define WGMMA_SS(T, ptx, N, ACC, REGS, A, B, P, TA_, TB_)                                                                 \
    template <> struct WgmmaSs<T, N>                                                                                      \
    {                                                                                                                     \
        template <bool TA, bool TB> static __device__ __forceinline__ void run(float* d, u64 a, u64 b, int accumulate)    \
        {                                                                                                                 \
            HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %" P ", 0; wgmma.mma_async.sync.aligned.m64n" #N "k16.f32." ptx "." ptx " " \
                       REGS ", %" A ", %" B ", p, 1, 1, %" TA_ ", %" TB_ "; }"                                              \
                       : ACC(d) : "l"(a), "l"(b), "r"(accumulate), "n"(TA ? 1 : 0), "n"(TB ? 1 : 0));                     \
            WGMMA_SS_EMULATED(T, N)                                                                                       \
        }                                                                                                                 \
    };
#ifndef __CUDA_ARCH__
#define WGMMA_SS_EMULATED(T, N) if (sizeof(T) == 2 && emu_is_bf16<T>()) emu_wgmma_defer(d, N, a, TA, b, TB, accumulate != 0, emu_bf16_bits);
template <typename T> constexpr bool emu_is_bf16() { return false; }
template <> constexpr bool emu_is_bf16<bf16>() { return true; }
#else
#define WGMMA_SS_EMULATED(T, N)
#endif
WGMMA_SS(bf16, "bf16", 256, WG_ACC256, WG_REGS256, "128", "129", "130", "131", "132")
WGMMA_SS(f16, "f16", 256, WG_ACC256, WG_REGS256, "128", "129", "130", "131", "132")
WGMMA_SS(bf16, "bf16", 128, WG_ACC128, WG_REGS128, "64", "65", "66", "67", "68")
WGMMA_SS(f16, "f16", 128, WG_ACC128, WG_REGS128, "64", "65", "66", "67", "68")

// The dQ product of the backward: both operands transposed (stored as rows of k), N = 64.
template <typename T> struct WgmmaT;
template <> struct WgmmaT<bf16>
{
    // d (64 x 64) = a (64 x 16, shared, M-major: stored as rows of k) * b (16 x 64, shared, N-major: rows of k) (+ d)
    static __device__ __forceinline__ void ss_mn(float* d, u64 a, u64 b, int accumulate)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %34, 0; "
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_REGS64 ", %32, %33, p, 1, 1, 1, 1; }"
                     : WG_ACC64(d) : "l"(a), "l"(b), "r"(accumulate));
#ifndef __CUDA_ARCH__
        emu_wgmma(d, 64, nullptr, a, true, b, true, accumulate != 0, emu_bf16_bits);
#endif
    }
};
template <> struct WgmmaT<f16>
{
    // d (64 x 64) = a (64 x 16, shared, M-major: stored as rows of k) * b (16 x 64, shared, N-major: rows of k) (+ d)
    static __device__ __forceinline__ void ss_mn(float* d, u64 a, u64 b, int accumulate)
    {
        HOPPER_ASM("{ .reg .pred p; setp.ne.b32 p, %34, 0; "
                     "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " WG_REGS64 ", %32, %33, p, 1, 1, 1, 1; }"
                     : WG_ACC64(d) : "l"(a), "l"(b), "r"(accumulate));
    }
};

