using System.Diagnostics;
using Tessera.Cuda;
using Tessera.Cuda.Compilation;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Kernels run without a GPU: the embedded sources (common.cuh, elementwise.cu, norm.cu, rope.cu, reduce.cu, softmax.cu, paged_attention.cu, moe.cu,
/// adamw.cu, decode_gemm.cu, gemv.cu, quantized.cu, and with hopper.cuh decode_gemm_hopper.cu and flash_attention_hopper.cu, exactly as NVRTC gets them) compiled
/// as C++ for the host against a CPU emulation of the CUDA execution model (Emulation/cuda_emulation.h: a fiber per
/// CUDA thread on one OS thread, barriers for __syncthreads and the warp shuffles, blocks in turn; a barrier some threads never
/// reach aborts the program with the count), then Emulation/row_kernels.cpp runs the
/// f32 instantiations of the SwiGLU row kernels, the row-in-registers RMSNorm kernels (and both RMSNorm kernels with Gemma's unit
/// offset and the accumulate of AccumulateRmsNorm), the head norms with RoPE and the append (norm_rope_append_rows, against a double
/// reference and bit for bit against the norm kernel on each head then rope_append_rows), RoPE from a table, RoPE with the KV append to a paged pool (rope_append, and rope_append_rows giving its bits; with LongRoPE's long table past its length and the short one at it, and with partial rotary), the column sums of the norms' gradient partials, the LayerNorm backward's warp and block kernels with the column sums of dx, the fused cross-entropy with its row staged, and its cluster form (a row shared by the CTAs of a thread-block cluster, the clusters walking the rows; emulated with the cluster's CTAs run together) against double references (its
/// tolerances are stated there) and exits with the number of failures; Emulation/paged_kernels.cpp does the same for serving's
/// paged attention kernels. It checks the kernels' indexing, strides, grid-stride
/// loops, block reductions and partial sums; not the bf16/f16 conversions (inline PTX, compiled away), not timing, not the
/// memory model. The GPU tests (<see cref="CudaOpTests"/>, <see cref="CudaNormTests"/>) remain the proof on the device.
/// Skips, saying why, where no C++20 compiler (g++ or clang++) is found.
/// </summary>
public sealed class KernelEmulationTests
{
    [Fact]
    public void RowKernelsGiveTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["elementwise.cu", "norm.cu", "rope.cu", "reduce.cu", "softmax.cu"], "row_kernels",
            ["swiglu fwd rows=37 F=264 off=0", "swiglu bwd rows=37 F=261 off=0", "swiglu bwd rows=37 F=264 off=1",
             "rmsnorm dx rows=37 C=1000", "rmsnorm dW rows=9 C=4096", "rmsnorm fwd rows=3 C=64 grid=7",
             "rmsnorm unit accumulate rows=5 C=1152 vec", "rmsnorm unit accumulate rows=5 C=1001 loop",
             "norm_rope_append B=2 T=3 H=4 K=2 D=16 unit=1 qkv", "norm_rope_append B=2 T=3 H=4 K=2 D=16 unit=1 cache",
             "norm_rope_append D=16 unit=1 = norm + rope_append_rows", "norm_rope_append B=1 T=2 H=8 K=4 D=64 unit=0 qkv",
             "norm_rope_append D=64 unit=0 = norm + rope_append_rows", "norm_rope_append B=2 T=1 H=1 K=1 D=256 unit=1 cache",
             "norm_rope_append D=256 unit=1 = norm + rope_append_rows",
             "rope rows B=2 T=5 H=4 K=2 D=16 inv=0", "rope rows B=3 T=7 H=2 K=1 D=8 inv=1", "rope rows vector = element path",
             "rope_append rows=11 H=8 K=2 D=16 qkv", "rope_append rows=11 H=8 K=2 D=16 pool", "rope_append rows=6 H=2 K=2 D=8 qkv", "rope_append rows=6 H=2 K=2 D=8 pool",
             "rope_append_rows rows=11 H=8 K=2 D=16 = items", "rope_append_rows rows=6 H=2 K=2 D=8 = items",
             "rope_append rows=11 H=8 K=2 D=16 longrope 200 qkv", "rope_append rows=11 H=8 K=2 D=16 longrope 200 pool",
             "rope_append_rows rows=11 H=8 K=2 D=16 longrope 200 = items", "rope_append rows=6 H=2 K=2 D=8 longrope 186 qkv",
             "rope_append rows=6 H=2 K=2 D=8 longrope 186 pool", "rope_append_rows rows=6 H=2 K=2 D=8 longrope 186 = items",
             "rope_append rows=11 H=8 K=2 D=16 rotary 12 qkv", "rope_append rows=11 H=8 K=2 D=16 rotary 12 pool",
             "rope_append_rows rows=11 H=8 K=2 D=16 rotary 12 = items", "rope_append rows=6 H=2 K=2 D=8 longrope 100 rotary 6 qkv",
             "rope_append rows=6 H=2 K=2 D=8 longrope 100 rotary 6 pool", "rope_append_rows rows=6 H=2 K=2 D=8 longrope 100 rotary 6 = items",
             "layernorm sums warp k3 rows=37 C=384 sums", "layernorm sums warp k3 rows=50 C=300 dW", "layernorm sums warp k4 rows=9 C=512 dx",
             "layernorm sums block k0 rows=37 C=771 sums", "layernorm sums block k0 rows=37 C=771 dB",
             "layernorm sums warp regs k3 rows=37 C=384 sums", "layernorm sums warp regs k2 rows=50 C=200 = ref",
             "column_reduce rows=1056 C=40 warps=32", "column_reduce rows=37 C=20 warps=2",
             "cross_entropy V=1000 staged=250 = unstaged", "cross_entropy V=1000 staged=37 grad", "cross_entropy V=1003 staged=100 loss",
             "cross_entropy_cluster V=1000 xs=1000 ctas=4 clusters=5 v4 grad", "cross_entropy_cluster V=1003 xs=1008 ctas=4 clusters=2 v4 loss",
             "cross_entropy_cluster V=1003 ctas=4 = one CTA", "cross_entropy_cluster V=40 xs=40 ctas=8 clusters=1 v4 grad",
             "cross_entropy_cluster V=2003 xs=2008 ctas=2 clusters=2 v8 grad", "target = V gives a NaN loss"]);

    /// <summary>
    /// The decode-size products (decode_gemm.cu: x of 5 to 64 rows times an nn.Linear weight on tensor cores, K in slices
    /// that form a thread-block cluster and sum each other's tiles through distributed shared memory (the cluster's CTAs run
    /// together); its SwiGLU form over a gate/up pair; RMSNorm applied on the way) in bf16 on the emulation's stand-ins of cp.async, ldmatrix and mma.sync, against
    /// a double reference (Emulation/decode_gemm.cpp states the cases and the tolerance, 8e-3 for a bf16 output), the weights
    /// loaded before the wait on the predecessor giving the same bits as after it, the output's row padding untouched. And its
    /// int8-weight form (<c>decode_gemm_q8_bf16_*</c>, <see cref="CudaBackend.QuantizedMatMul"/> at 5 to 64 rows: int8 tiles
    /// staged at one byte, turned into bf16 fragments in registers with k permuted alike on both operands, the row scale in the
    /// epilogue) at 5, 17, 33 and 64 rows, against scales[n] * q[n, k] in double: N short of and past the 128-row block, one
    /// slice and clusters of 2, 4 and 8, bias, beta = 1 and an addend, a row of scale 0. And its int4-weight form
    /// (<c>decode_gemm_int4_bf16_*</c>, group-wise int4 weights at 5 to 64 rows: packed words staged, each lane's nibbles made
    /// scale (q - zero) in bf16 in registers) at 5, 17, 33 and 64 rows against those bf16 weights in double (8e-3): groups of
    /// 32, 64, 128 and a whole row, K = 320 (not a multiple of 128), clusters of 4, 5 and 8 slices, bias, beta = 1, an addend;
    /// and the int4 form by group sums (<c>decode_gemm_int4g_bf16_*</c>: scales and zero words staged, q - zero exact in
    /// bf16, each group's sums scaled) against the exact weights scale (q - zero) in double (8e-3): a group a k-tile, two, a
    /// whole row, groups straddling slices, two groups a slice, the last zero word read in part, and RMSNorm on the way (one
    /// slice and clusters of 3, 4 and 8); its SwiGLU form over two int4 weights (<c>decode_gemm_int4g_swiglu_bf16_*</c>) at
    /// four shapes; and both in 8 stages (<c>_s8</c>) at four more, with more k-tiles a slice than stages and fewer; the int8
    /// form's SwiGLU form, and the int8 and the first int4 form with RMSNorm on the way.
    /// </summary>
    [Fact]
    public void DecodeProductsGiveTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["decode_gemm.cuh", "decode_gemm.cu"], "decode_gemm",
            ["decode_gemm M=5 N=100 K=256 slices=1 bias=1 beta=0", "decode_gemm M=64 N=300 K=512 slices=4 bias=0 beta=1",
             "decode_gemm M=17 N=64 K=128 slices=2 bias=1 beta=1", "decode_gemm M=32 N=130 K=64 slices=1 bias=0 beta=0", "decode_gemm M=48 N=128 K=1024 slices=8 bias=1 beta=1",
             "decode_gemm M=40 N=129 K=256 slices=2 bias=1 beta=0", "decode_gemm M=64 N=300 K=512 slices=4 bias=0 beta=1: early = late, pads",
             "decode_gemm swiglu M=17 F=100 K=256 slices=1 bias=1", "decode_gemm swiglu M=64 F=64 K=512 slices=4 bias=0",
             "decode_gemm swiglu M=5 F=40 K=128 slices=2 bias=1", "decode_gemm M=64 N=128 K=512 slices=4 bias=1 beta=0 norm",
             "decode_gemm M=9 N=64 K=256 slices=1 bias=0 beta=1 norm", "decode_gemm swiglu M=33 F=65 K=256 slices=2 bias=0 norm",
             "decode_gemm_q8 M=5 N=100 K=256 slices=1 bias=1 beta=0", "decode_gemm_q8 M=17 N=300 K=512 slices=4 bias=1 beta=1",
             "decode_gemm_q8 M=64 N=129 K=1024 slices=8 bias=0 addend", "decode_gemm_q8 M=64 N=200 K=512 slices=1 bias=1 addend",
             "decode_gemm_q8 M=33 N=130 K=128 slices=2 bias=0 beta=1", "decode_gemm_q8 M=64 N=129 K=1024 slices=8 bias=0 addend: early = late, pads",
             "decode_gemm_q8 swiglu M=17 F=100 K=256 slices=1 bias=1", "decode_gemm_q8 swiglu M=64 F=65 K=512 slices=4 bias=0",
             "decode_gemm_q8 swiglu M=5 F=130 K=1024 slices=8 bias=1",
             "decode_gemm_q8 M=9 N=100 K=256 slices=1 bias=1 beta=0 norm: early = late, pads", "decode_gemm_q8 M=64 N=129 K=1024 slices=8 bias=0 addend norm: early = late, pads",
             "decode_gemm_q8 swiglu M=33 F=65 K=512 slices=4 bias=1 norm",
             "decode_gemm_int4 M=17 N=300 K=512 group=32 slices=4 bias=1 beta=1 norm: early = late, pads",
             "decode_gemm_int4 M=40 N=64 K=768 group=48 slices=1 bias=0 addend norm: early = late, pads",
             "decode_gemm_int4 M=5 N=100 K=256 group=128 slices=1 bias=1 beta=0", "decode_gemm_int4 M=17 N=300 K=512 group=32 slices=4 bias=1 beta=1",
             "decode_gemm_int4 M=64 N=129 K=1024 group=128 slices=8 bias=0 addend", "decode_gemm_int4 M=64 N=200 K=320 group=64 slices=1 bias=1 addend",
             "decode_gemm_int4 M=33 N=130 K=320 group=320 slices=5 bias=0 beta=1",
             "decode_gemm_int4 M=64 N=129 K=1024 group=128 slices=8 bias=0 addend: early = late, pads",
             "decode_gemm_int4g M=5 N=100 K=256 group=128 slices=1 bias=1 beta=0", "decode_gemm_int4g M=17 N=300 K=512 group=64 slices=4 bias=1 beta=1",
             "decode_gemm_int4g M=64 N=129 K=1024 group=128 slices=8 bias=0 addend", "decode_gemm_int4g M=64 N=129 K=320 group=320 slices=1 bias=1 addend",
             "decode_gemm_int4g M=33 N=130 K=768 group=256 slices=4 bias=0 beta=1", "decode_gemm_int4g M=48 N=200 K=1024 group=256 slices=2 bias=1 beta=0",
             "decode_gemm_int4g M=64 N=300 K=1024 group=128 slices=8 bias=1 beta=0 norm", "decode_gemm_int4g M=9 N=129 K=512 group=128 slices=1 bias=0 beta=1 norm",
             "decode_gemm_int4g M=40 N=64 K=768 group=256 slices=3 bias=0 addend norm",
             "decode_gemm_int4g M=17 N=300 K=512 group=64 slices=4 bias=1 beta=1 norm",
             "decode_gemm_int4g swiglu M=17 F=100 K=256 group=128 slices=1 bias=1", "decode_gemm_int4g swiglu M=64 F=64 K=512 group=64 slices=4 bias=0 norm",
             "decode_gemm_int4g swiglu M=5 F=65 K=768 group=256 slices=3 bias=1 norm", "decode_gemm_int4g swiglu M=40 F=130 K=1024 group=128 slices=8 bias=0",
             "decode_gemm_int4g M=64 N=300 K=2048 group=128 slices=1 bias=1 beta=0 norm s8: early = late, pads",
             "decode_gemm_int4g M=9 N=129 K=512 group=64 slices=2 bias=0 beta=1 s8: early = late, pads",
             "decode_gemm_int4g M=33 N=130 K=1024 group=256 slices=1 bias=0 addend s8: early = late, pads",
             "decode_gemm_int4g swiglu M=17 F=100 K=2048 group=128 slices=2 bias=1 norm s8",
             "decode_gemm_int4g M=64 N=129 K=1024 group=128 slices=8 bias=0 addend: early = late, pads"]);

    /// <summary>
    /// The decode products on warpgroup MMA (decode_gemm_hopper.cu, with hopper.cuh): the same checks as
    /// <see cref="DecodeProductsGiveTheReferenceResultsOnTheCpuEmulation"/> (Emulation/decode_gemm.cpp built with -DHOPPER),
    /// plus five more shapes (more k-tiles than stages, in one slice and in two), on the emulation's warpgroup stand-in of wgmma
    /// m64n128k16 (A from the threads' registers, B read through its 128-byte-swizzle descriptor as the hardware reads it), and
    /// the tensor-map form at four shapes and its SwiGLU form at three (the tensor memory accelerator's boxes, zero fill and swizzle, and the stages'
    /// transaction barriers, emulated; a wrong coordinate, byte count or phase parity fails or aborts there). The stand-in's
    /// wgmma layout is the one the GPU tests proved (<see cref="CudaDecodeProductTests"/>, sessions 21 and 22).
    /// </summary>
    [Fact]
    public void HopperDecodeProductsGiveTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["hopper.cuh", "decode_gemm_hopper.cu"], "decode_gemm",
            ["decode_gemm_hopper M=5 N=100 K=256 slices=1 bias=1 beta=0", "decode_gemm_hopper M=64 N=300 K=512 slices=4 bias=0 beta=1: early = late, pads",
             "decode_gemm_hopper M=48 N=128 K=1024 slices=8 bias=1 beta=1", "decode_gemm_hopper M=40 N=129 K=256 slices=2 bias=1 beta=0",
             "decode_gemm_hopper swiglu M=64 F=64 K=512 slices=4 bias=0", "decode_gemm_hopper M=64 N=128 K=512 slices=4 bias=1 beta=0 norm",
             "decode_gemm_hopper swiglu M=33 F=65 K=256 slices=2 bias=0 norm", "decode_gemm_hopper M=64 N=300 K=1024 slices=2 bias=1 beta=1 norm",
             "decode_gemm_hopper M=9 N=130 K=512 slices=1 bias=0 beta=0", "decode_gemm_hopper M=48 N=128 K=1024 slices=2 bias=0 beta=1 norm",
             "decode_gemm_hopper swiglu M=64 F=100 K=512 slices=2 bias=1 norm", "decode_gemm_hopper swiglu M=17 F=64 K=512 slices=1 bias=0",
             "decode_gemm_hopper M=5 N=100 K=256 slices=1 bias=1 beta=0 tma: early = late, pads", "decode_gemm_hopper M=64 N=300 K=512 slices=4 bias=0 beta=1 tma",
             "decode_gemm_hopper M=48 N=128 K=1024 slices=8 bias=1 beta=1 norm tma", "decode_gemm_hopper M=9 N=130 K=1024 slices=1 bias=0 beta=0 norm tma",
             "decode_gemm_hopper swiglu M=17 F=100 K=256 slices=1 bias=1 tma", "decode_gemm_hopper swiglu M=64 F=64 K=512 slices=4 bias=0 norm tma",
             "decode_gemm_hopper swiglu M=33 F=65 K=1024 slices=2 bias=1 norm tma"],
            "HOPPER");

    /// <summary>
    /// The training products' Hopper kernel (gemm_hopper.cu, with hopper.cuh) in an nn.Linear's three layouts (the forward's
    /// K-major operands; the input gradient's B and the weight gradient's A and B MN-major, read transposed by wgmma; the
    /// residual as an addend): persistent CTAs, a producer warpgroup filling a
    /// ring of stages through the tensor memory accelerator against transaction barriers, two consumer warpgroups on wgmma
    /// m64n256k16 and m64n128k16 handing each stage back through a second barrier. Emulation/gemm_hopper.cpp runs it against a
    /// double reference (tolerance 8e-3 of the largest output, a bf16 store) with every dimension short of a tile, N odd, fewer
    /// CTAs than tiles, more k-tiles than stages, bias, alpha and beta; a wrong phase parity or an early hand-back shows as a
    /// wrong sum or a barrier that never completes (the emulation aborts naming it). Its cluster form (two CTAs, each copying
    /// half of B's tile into both by multicast, a stage handed back to both producers) runs with the pair's CTAs together, each
    /// in its own shared memory. Both epilogues: staged through shared memory and stored by the tensor memory accelerator (with
    /// beta, C_in's boxes loaded into the same buffers first), and straight from registers (N odd). And its SwiGLU form
    /// (<see cref="IBackend.GateUpSwiGlu"/>: the gate and up sums of 128 outputs in one tile, gateUp and SiLU(gate) * up stored
    /// from the epilogue), the activation bit for bit against SwiGluForward's formula on the stored gate and up; and its SwiGLU
    /// gradient form (<see cref="IBackend.DownSwiGluBackward"/>: g and u read into the epilogue in 64 x 32 boxes in the 64-byte
    /// swizzle, dg and du stored from it) against a double reference (2e-2: dA rounded to bf16 first, as the composition does)
    /// and bit for bit against SwiGluBackward's formula on the dA the plain nn kernel stores; and the epilogue deferred into the
    /// next tile's main loop (staged = 2: a tile's outputs wait in registers and go out a chunk a k-tile, the rest after a short
    /// loop; the SwiGLU gradient form's with its g and u loads, at 9 and 11 k-tiles, and at 8, too few, stored at once). The emulation
    /// runs these products and the TMA stores when a wait retires their group (as late as the hardware may), so a stage or an
    /// epilogue buffer reused before its wait shows as a wrong result.
    /// </summary>
    [Fact]
    public void HopperTrainingProductsGiveTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["hopper.cuh", "gemm_hopper.cu"], "gemm_hopper",
            ["gemm_hopper_nt M=300 N=521 K=200 BN=256 ctas=2 bias=1 beta=1 direct", "gemm_hopper_nt M=300 N=521 K=200 BN=256 ctas=2 bias=1 beta=1 direct: pads",
             "gemm_hopper_nt M=130 N=251 K=64 BN=128 ctas=3 bias=0 beta=0 direct", "gemm_hopper_nt M=128 N=256 K=576 BN=256 ctas=1 bias=1 beta=0 staged",
             "gemm_hopper_nt M=256 N=384 K=448 BN=128 ctas=2 bias=0 beta=1 staged", "gemm_hopper_nt M=200 N=136 K=128 BN=256 ctas=1 bias=0 beta=1 addend staged",
             "gemm_hopper_nt M=300 N=520 K=200 BN=256 ctas=2 bias=1 beta=1 staged: pads", "gemm_hopper_nt_mc M=256 N=384 K=1024 BN=128 ctas=2 bias=0 beta=0.5 staged",
             "gemm_hopper_nt_mc M=300 N=521 K=200 BN=256 ctas=2 bias=1 beta=1 direct", "gemm_hopper_nt_mc M=256 N=250 K=576 BN=128 ctas=4 bias=0 beta=0 direct",
             "gemm_hopper_nt_mc M=512 N=512 K=320 BN=256 ctas=2 bias=1 beta=1 staged: pads", "gemm_hopper_nt_mc M=256 N=250 K=576 BN=128 ctas=4 bias=0 beta=1 direct",
             "gemm_hopper_nn M=300 N=520 K=200 BN=256 ctas=2 bias=0 beta=0 staged", "gemm_hopper_nn_mc M=256 N=392 K=320 BN=128 ctas=2 bias=1 beta=1 staged",
             "gemm_hopper_nn_mc M=136 N=264 K=136 BN=256 ctas=2 bias=0 beta=0 direct", "gemm_hopper_tn M=264 N=520 K=200 BN=256 ctas=2 bias=0 beta=1 staged",
             "gemm_hopper_tn_mc M=256 N=136 K=448 BN=128 ctas=4 bias=0 beta=1 staged", "gemm_hopper_tn_mc M=392 N=256 K=136 BN=256 ctas=2 bias=1 beta=0 direct: pads",
             "gemm_hopper_nt M=256 N=256 K=64 BN=256 ctas=1 bias=0 beta=1 staged", "gemm_hopper_nt_mc M=512 N=256 K=64 BN=256 ctas=2 bias=1 beta=1 staged",
             "gemm_hopper_swiglu M=300 F=200 K=136 ctas=2", "gemm_hopper_swiglu M=300 F=200 K=136 ctas=2: activation = SiLU(gate) * up, bits",
             "gemm_hopper_swiglu_mc M=256 F=136 K=448 ctas=2: pads", "gemm_hopper_swiglu_mc M=130 F=264 K=200 ctas=4: activation = SiLU(gate) * up, bits",
             "gemm_hopper_dswiglu M=300 F=200 C=136 ctas=2", "gemm_hopper_dswiglu M=300 F=200 C=136 ctas=2: = SwiGluBackward of the stored dA, bits",
             "gemm_hopper_dswiglu M=256 F=520 C=448 ctas=2: pads, gu unchanged", "gemm_hopper_dswiglu_mc M=130 F=264 C=64 ctas=4: = SwiGluBackward of the stored dA, bits",
             "gemm_hopper_dswiglu_mc M=256 F=256 C=320 ctas=2", "gemm_hopper_nt M=300 N=520 K=200 BN=256 ctas=2 bias=1 beta=0 overlapped",
             "gemm_hopper_nt_mc M=256 N=384 K=64 BN=128 ctas=2 bias=0 beta=0 overlapped: pads", "gemm_hopper_nn M=300 N=520 K=136 BN=256 ctas=1 bias=0 beta=0 overlapped",
             "gemm_hopper_tn_mc M=264 N=520 K=448 BN=256 ctas=2 bias=1 beta=0 overlapped",
             "gemm_hopper_swiglu M=300 F=200 K=136 ctas=2 overlapped: activation = SiLU(gate) * up, bits",
             "gemm_hopper_swiglu_mc M=256 F=392 K=448 ctas=2 overlapped", "gemm_hopper_swiglu_mc M=256 F=392 K=448 ctas=2 overlapped: pads",
             "gemm_hopper_dswiglu M=300 F=520 C=576 ctas=2 overlapped: = SwiGluBackward of the stored dA, bits",
             "gemm_hopper_dswiglu_mc M=256 F=264 C=704 ctas=2 overlapped", "gemm_hopper_dswiglu_mc M=256 F=264 C=704 ctas=2 overlapped: pads, gu unchanged",
             "gemm_hopper_dswiglu M=300 F=200 C=512 ctas=2 overlapped: = SwiGluBackward of the stored dA, bits"]);

    /// <summary>
    /// Decoding's persistent matrix-vector kernels (gemv.cu) and the int8 dequantization (quantized.cu): the int8-weight form
    /// <c>gemv_stream_q8_*</c> (<see cref="CudaBackend.QuantizedMatMul"/> for 1 to 4 rows of x: scales[n] times x's sums with the
    /// int8 row, bias, beta 0 and 1, an addend read in place of y, x RMS-normalized as it is staged) at M = 1 to 4 in f32 and once
    /// in bf16, K short of a unit of the stream, half a unit (2,048, llama-1b's rows) and a unit and one chunk long, N
    /// not a multiple of the grid's warps and fewer rows than warps; the float-weight form
    /// that shares the stream (plain, with RMSNorm on the way, and with Gemma's unit-offset norm), its SwiGLU form with the SiLU
/// and with the GELU gate (GeGLU); and <c>dequantize_f32</c>, against double references
    /// (Emulation/gemv_kernels.cpp: 1e-5 of the largest output in f32, 8e-3 in bf16, the dequantized weights exactly), with the
    /// early and late weight loads giving the same bits and y's row padding untouched. A chunk skipped, or the int8 values
    /// off by one level, fails it (checked by hand). <see cref="CudaQuantizedMatMulTests"/> checks the kernels on the device.
    /// </summary>
    [Fact]
    public void MatrixVectorKernelsWithInt8WeightsGiveTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["gemv.cu", "quantized.cu"], "gemv_kernels",
            ["gemv_stream_q8 f32 M=1 N=100 K=1008 grid=2 bias=1 beta=0", "gemv_stream_q8 f32 M=1 N=100 K=1008 grid=2 bias=1 beta=0: early = late, pads",
             "gemv_stream_q8 f32 M=2 N=77 K=4112 grid=3 bias=0 beta=1", "gemv_stream_q8 f32 M=3 N=45 K=2064 grid=1 bias=1 beta=1",
             "gemv_stream_q8 f32 M=4 N=130 K=4112 grid=2 bias=1 beta=0 addend", "gemv_stream_q8 f32 M=4 N=130 K=4112 grid=2 bias=1 beta=0 addend: early = late, pads",
             "gemv_stream_q8 f32 M=4 N=9 K=16 grid=4 bias=0 beta=0", "gemv_stream_q8 f32 M=1 N=37 K=528 grid=5 bias=1 beta=0 addend",
             "gemv_stream_q8 bf16 M=2 N=100 K=1024 grid=2 bias=1 beta=1", "gemv_stream_q8 f32 M=1 N=100 K=2048 grid=2 bias=1 beta=0 norm",
             "gemv_stream_q8 f32 M=3 N=45 K=2064 grid=1 bias=0 beta=1 norm", "gemv_stream f32 M=1 N=100 K=1000 grid=2 bias=1 beta=1",
             "gemv_stream f32 M=4 N=37 K=516 grid=1 bias=0 beta=0 norm", "dequantize_f32 N=37 K=45 grid=3 block=64 exact",
             "dequantize_f32 N=8 K=4096 grid=7 block=128 exact", "dequantize_f32 N=5 K=48 grid=2 block=32 exact unaligned",
             "gemv_stream_q8_swiglu f32 M=1 F=37 K=512 grid=2 bias=1", "gemv_stream_q8_swiglu f32 M=4 F=20 K=2048 grid=3 bias=0 norm",
             "gemv_stream_q8_swiglu bf16 M=2 F=65 K=1024 grid=1 bias=1", "gemv_stream f32 M=2 N=45 K=1152 grid=3 bias=1 beta=1 norm unit",
             "gemv_stream_swiglu f32 M=1 F=37 K=1152 grid=2 bias=1 geglu unit", "gemv_stream_swiglu f32 M=3 F=20 K=512 grid=1 bias=0"]);

    /// <summary>
    /// The matrix-vector kernel's FP8 form (<c>gemv_stream_f8_*</c>, <see cref="CudaBackend.QuantizedMatMul"/> with FP8 weights
    /// for 1 to 4 rows) on the CPU emulation against <see cref="CpuBackend.QuantizedMatMul"/> on the same inputs: M = 1 to 4,
    /// K of part of one unit of the stream to three units, bias, beta = 1, an addend, the RMSNorm prologue (F32), a row of zeros,
    /// in F32 and BF16 (without a norm: gemv_stage_x's BF16 norm stores are PTX, compiled away by the emulation).
    /// Emulation/gemv_kernels.cpp runs each case (seed in its output) and writes its inputs and output to f8_&lt;index&gt;.bin.
    /// Tolerances, of the largest expected output: F32 without a norm 1e-5: the codes and scales are the CPU's bit for bit (the
    /// same F32 operations on the same values), each code product is exact in fp32, and only the fp32 sums' order and the
    /// scales' fp32 products differ from the CPU's exact F64 sums (about 1e-7 relative). F32 with a norm 2e-3: the kernel's
    /// block sum and rsqrtf differ from the CPU's norm in the last bits, which moves a code by one E4M3 step (2^-4 relative)
    /// where a normalized value lies at a rounding boundary (rare), each such code moving an output by up to about 2^-4 of one
    /// term against sqrt(K) terms. BF16 8e-3: the output rounded to BF16 (2^-9 relative), the inputs being BF16 values
    /// read exactly by both. A wrong scale, a skipped chunk or a code read wrongly is off by 1e-2 or more.
    /// </summary>
    [Fact]
    public void MatrixVectorKernelsWithFp8WeightsGiveTheCpusProductsOnTheCpuEmulation()
    {
        string[] cases =
        [
            "gemv_stream_f8 f32 M=1 N=100 K=1008 grid=2 bias=1 beta=0", "gemv_stream_f8 f32 M=2 N=77 K=4112 grid=3 bias=0 beta=1",
            "gemv_stream_f8 f32 M=3 N=45 K=4112 grid=1 bias=1 beta=0 norm", "gemv_stream_f8 f32 M=4 N=130 K=2064 grid=2 bias=1 beta=0 addend norm",
            "gemv_stream_f8 f32 M=1 N=37 K=2048 grid=5 bias=0 beta=0 addend norm", "gemv_stream_f8 bf16 M=2 N=100 K=1024 grid=2 bias=1 beta=1",
            "gemv_stream_f8 bf16 M=4 N=64 K=2064 grid=2 bias=0 beta=0 addend",
        ];
        RunEmulatedAndInspect(["gemv.cu", "quantized.cu"], "gemv_kernels", [.. cases.Select(c => c + ": early = late, pads")], dir =>
        {
            var cpu = new CpuBackend(2);
            for (int i = 0; i < cases.Length; i++)
            {
                var c = ReadFp8Case(Path.Combine(dir, $"f8_{i}.bin"));
                var x = cpu.FromHost<float>(c.X, new Shape(c.M, c.K));
                var weight = new Tessera.Tensors.QuantizedWeight(cpu.FromHost<byte>(c.Codes, new Shape(c.N, c.K)), cpu.FromHost<float>(c.Scales, new Shape(c.N)));
                var y = c.Addend ? cpu.Allocate(new Shape(c.M, c.N), DType.F32) : cpu.FromHost<float>(c.C, new Shape(c.M, c.N));
                cpu.QuantizedMatMul(x, weight, y, beta: c.Addend ? 0.0 : c.Beta, bias: c.Bias ? cpu.FromHost<float>(c.BiasValues, new Shape(c.N)) : null,
                    addend: c.Addend ? cpu.FromHost<float>(c.C, new Shape(c.M, c.N)) : null,
                    norm: c.Norm ? new RmsNormPrologue(cpu.FromHost<float>(c.NormWeight, new Shape(c.K)), c.Eps) : null);
                var expected = cpu.ToArray<float>(y);
                double worst = 0, largest = 0;
                for (int j = 0; j < expected.Length; j++)
                {
                    Assert.True(float.IsFinite(c.Y[j]), $"{cases[i]}: output {j} is {c.Y[j]}");
                    worst = Math.Max(worst, Math.Abs((double)c.Y[j] - expected[j]));
                    largest = Math.Max(largest, Math.Abs((double)expected[j]));
                }
                double tolerance = c.Bf16 ? 8e-3 : c.Norm ? 2e-3 : 1e-5, relative = worst / largest;
                TestContext.Current.TestOutputHelper?.WriteLine($"{cases[i]} (seed {c.Seed}): {relative:E3} of the largest output against the CPU (tolerance {tolerance:G})");
                Assert.True(relative <= tolerance, $"{cases[i]} (seed {c.Seed}): {relative:E3} of the largest output from the CPU's product, tolerance {tolerance:G}");
            }
        });
    }

    /// <summary>
    /// moe.cu's device-routed mixture-of-experts kernels (<see cref="CudaBackend.MoeRoute"/>, <see cref="CudaBackend.MoeAlign"/>,
    /// <see cref="CudaBackend.MoeExpertSwiGlu"/>, <see cref="CudaBackend.MoeExpertDown"/>, <see cref="CudaBackend.MoeCombine"/>; f32)
    /// against double references (Emulation/moe_kernels.cpp states the cases and tolerances): the routing's ids exactly with
    /// ties to the lower index (quarters, rows of equal logits), k = 1..E, renormalized or not, its weights within 1e-6
    /// relative; the alignment exactly, experts with no rows among them; the whole path (route, align, SwiGLU, down, combine
    /// with and without the gated shared expert) within 1e-5 of the largest reference value, for C and F off the 32-feature
    /// tile, an expert with more rows than a CTA takes at once, and experts with none; the same for int8 experts (8 bytes a
    /// lane, and an element a lane where K is no multiple of 8) and int4 experts (groups that divide K, a shorter last group,
    /// one group a row; x off 16-byte alignment, the element-a-lane path) against the values they stand for. And the experts'
    /// tensor-core products (<c>moe_gemm_swiglu_bf16</c>, <c>moe_gemm_down_bf16</c> and their int8 and int4 forms;
    /// decode_gemm.cuh's tiles over each expert's gathered rows, <see cref="CudaBackendOptions.MoeExpertTensorCores"/>) in bf16
    /// against a double reference within 8e-3 of the largest output (the decode products' bound): experts of a few rows and
    /// none, 17-32, 33-64 and 80 rows (two chunks), K in one slice and clusters of 2 and 4, every hidden and output row
    /// written and nothing past them.
    /// </summary>
    [Fact]
    public void MixtureOfExpertsKernelsGiveTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["decode_gemm.cuh", "moe.cu"], "moe_kernels",
            ["combine adds the slots in slot order", "route N=37 E=8 k=2 norm=1 ties=0 ids", "route N=37 E=8 k=2 norm=0 ties=1 weights", "route N=12 E=5 k=1 norm=1 ties=1 ids",
             "route N=12 E=5 k=5 norm=1 ties=1 ids", "route N=5 E=64 k=8 norm=1 ties=1 ids",
             "align N=13 E=8 k=2 empty=3 threads=64", "align N=40 E=70 k=4 empty=10 threads=64", "align N=1 E=4 k=4 empty=0 threads=32",
             "experts N=13 E=6 k=2 C=50 F=45 norm=1 shared=0 threads=64", "experts N=40 E=4 k=2 C=33 F=72 norm=0 shared=1 threads=64",
             "experts N=1 E=8 k=2 C=64 F=100 norm=1 shared=0 threads=256", "experts N=9 E=5 k=5 C=40 F=20 norm=1 shared=1 threads=64",
             "experts int8 N=13 E=6 k=2 C=64 F=40 norm=1 shared=0 threads=64", "experts int8 N=11 E=4 k=2 C=50 F=45 norm=0 shared=1 threads=64",
             "experts int4 N=13 E=6 k=2 C=64 F=48 group=16 norm=1 shared=0 threads=64", "experts int4 N=40 E=4 k=2 C=72 F=40 group=32 norm=0 shared=1 threads=64",
             "experts int4 N=1 E=8 k=2 C=128 F=96 group=128 norm=1 shared=0 threads=256",
             "experts int4 N=7 E=4 k=2 C=64 F=32 group=32 norm=1 shared=0 threads=64 misaligned x",
             "tensor-core experts N=13 E=6 k=2 C=128 F=192 slices=1", "tensor-core experts N=50 E=2 k=1 C=64 F=128 slices=1",
             "tensor-core experts N=40 E=2 k=2 C=256 F=128 slices=2", "tensor-core experts N=80 E=1 k=1 C=64 F=64 slices=1",
             "tensor-core experts int8 N=20 E=4 k=2 C=128 F=128 slices=2", "tensor-core experts int4 N=33 E=3 k=2 C=256 F=256 group=128 slices=4",
             "tensor-core experts int4 N=24 E=3 k=2 C=192 F=128 group=64 slices=1", "tensor-core experts int4 N=9 E=4 k=2 C=128 F=256 group=128 slices=1"]);

    /// <summary>
    /// sampling.cu's <c>sample_rows</c> (<see cref="CudaBackend.SampleRows"/>) draws the token that
    /// <see cref="TokenSampling.Choose"/>, the definition, draws, row by row (Emulation/sampling.cpp states the cases: the
    /// temperature, top-k and top-p mixed over the rows, block sizes 64 to 1024, quarters that tie by the hundred at the cuts,
    /// the bf16 instantiation, NaN, infinities and all-tied rows, a row stride past the row), and so does
    /// sampling_cluster.cu's <c>sample_rows_cluster</c>, a row over a cluster of 1 to 8 CTAs (fewer clusters than rows, so they walk the rows; CTAs
    /// whose run of the row is empty; near-flat rows, peaked rows, a server's mix of top-p 0.95 and top-k 50; 256 rows). Exact equality is expected: the
    /// two keep different sets only where a cumulative probability lies within about 1e-7 of top-p, and their Gumbel scores
    /// differ only by the last bit of a logf; the cases' fixed seeds hit neither. Then <c>token_logprobs</c>
    /// (<see cref="CudaBackend.TokenLogprobs"/>) at the drawn ids, against <see cref="LogProbabilities"/>: the top 5 columns
    /// exactly (ties lowest column first), log-probabilities within 1e-5 relative (its float exponentials, summed in double).
    /// Both kernels write a select's survivors to a shared list and read it instead of the row where they fit
    /// (sampling.cu's top): <paramref name="survivors"/> 0 builds them with their capacity (4,096 a CTA: the one-CTA near-flat
    /// rows at top-p 0.95 overflow it), 64 with a list that most rows overflow, so that a cluster's CTAs take different paths
    /// in one row; the program checks that each build's cases took both paths, and the draw must not change.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(64)]
    public void SamplingKernelDrawsTheReferenceTokensOnTheCpuEmulation(int survivors)
    {
        string[] cases =
        [
            "sample_rows f32 V=1000 ld=1024 rows=30 block=128", "sample_rows f32 V=4099 rows=24 block=256 quarters",
            "sample_rows bf16 V=3000 ld=3008 rows=12 block=1024", "sample_rows f32 V=999 rows=24 block=64 special",
            "sample_rows f32 V=40 rows=30 block=128 short rows",
            "sample_rows_cluster f32 V=1000 ld=1024 rows=30 block=64 ctas=2", "sample_rows_cluster f32 V=2099 rows=18 block=64 ctas=4 quarters",
            "sample_rows_cluster bf16 V=3000 ld=3008 rows=6 block=64 ctas=8", "sample_rows_cluster f32 V=999 rows=24 block=64 ctas=2 special",
            "sample_rows_cluster f32 V=40 rows=30 block=64 ctas=8 short rows", "sample_rows_cluster f32 V=6000 rows=6 block=64 ctas=4 flat",
            "sample_rows_cluster f32 V=6001 rows=6 block=64 ctas=8 peaked", "sample_rows_cluster f32 V=77 rows=256 block=32 ctas=2",
            "sample_rows_cluster f32 V=3 rows=1 block=32 ctas=1", "sample_rows_cluster f32 V=2500 rows=6 block=96 ctas=1 flat",
            "sample_rows f32 V=6000 rows=6 block=128 flat", "sample_rows f32 V=6001 rows=6 block=128 peaked",
            "sample_rows bf16 V=3001 ld=3003 rows=12 block=64", "sample_rows_cluster bf16 V=3001 ld=3008 rows=12 block=64 ctas=4",
        ];
        string[] defines = survivors > 0 ? [$"SAMPLE_SURVIVORS={survivors}"] : [];
        RunEmulatedAndInspect(["sampling.cu", "sampling_cluster.cu"], "sampling", [.. cases, "the survivors fitted in some rows and not in others"], dir =>
        {
            for (int c = 0; c < cases.Length; c++)
            {
                using var r = new BinaryReader(File.OpenRead(Path.Combine(dir, $"sample_{c}.bin")));
                int v = r.ReadInt32(), ld = r.ReadInt32(), rows = r.ReadInt32();
                r.ReadInt32();                                                   // the dtype: the floats below are its values
                int[] Ints(int count) => Enumerable.Range(0, count).Select(_ => r.ReadInt32()).ToArray();
                var parameters = Ints(rows * TokenSampling.ParameterColumns);
                var positions = Ints(rows);
                var logits = Enumerable.Range(0, rows * ld).Select(_ => r.ReadSingle()).ToArray();
                var ids = Ints(rows);
                int count = r.ReadInt32();
                var logprobs = Enumerable.Range(0, rows * (1 + count)).Select(_ => r.ReadSingle()).ToArray();
                var top = Ints(rows * count);
                for (int row = 0; row < rows; row++)
                {
                    var (temperature, topK, topP, seed) = TokenSampling.ReadParameters(parameters.AsSpan(row * TokenSampling.ParameterColumns));
                    var values = logits.AsSpan(row * ld, v);
                    int expected = TokenSampling.Choose(values, temperature, topK, topP, seed, positions[row]);
                    Assert.True(expected == ids[row],
                        $"{cases[c]}, row {row} (temperature {temperature}, top-k {topK}, top-p {topP}, seed {seed}, position {positions[row]}): the kernel drew {ids[row]}, the definition {expected}");
                    // token_logprobs: the top columns exactly, the log-probabilities within 1e-5 (float exponentials
                    // summed in double against the definition's double sums; NaN where the definition is NaN).
                    var best = LogProbabilities.Top(values, count);
                    var got = logprobs.AsSpan(row * (1 + count), 1 + count);
                    AssertLogprob(values[ids[row]] - LogProbabilities.LogSumExp(values), got[0], $"{cases[c]}, row {row}, the drawn token");
                    for (int j = 0; j < best.Length; j++)
                    {
                        Assert.True(best[j].Id == top[row * count + j], $"{cases[c]}, row {row}: top {j} is {top[row * count + j]}, the definition's {best[j].Id}");
                        AssertLogprob(best[j].Logprob, got[1 + j], $"{cases[c]}, row {row}, top {j}");
                    }
                }
            }
        }, defines);
    }

    private static void AssertLogprob(double expected, float actual, string what) =>
        Assert.True(double.IsNaN(expected) ? float.IsNaN(actual) : expected == actual || Math.Abs(expected - actual) <= 1e-5 * Math.Max(1, Math.Abs(expected)),
            $"{what}: log-probability {actual}, the definition's {expected}");

    private sealed record Fp8Case(int M, int N, int K, bool Bf16, bool Bias, bool Addend, bool Norm, int Seed, float Beta, float Eps,
        float[] X, float[] NormWeight, float[] BiasValues, float[] C, float[] Scales, byte[] Codes, float[] Y);

    private static Fp8Case ReadFp8Case(string path)
    {
        using var r = new BinaryReader(File.OpenRead(path));
        int m = r.ReadInt32(), n = r.ReadInt32(), k = r.ReadInt32();
        bool bf16 = r.ReadInt32() != 0, bias = r.ReadInt32() != 0, addend = r.ReadInt32() != 0, norm = r.ReadInt32() != 0;
        int seed = r.ReadInt32();
        float beta = r.ReadSingle(), eps = r.ReadSingle();
        float[] Floats(int count) => Enumerable.Range(0, count).Select(_ => r.ReadSingle()).ToArray();
        var x = Floats(m * k);
        var nw = Floats(k);
        var b = Floats(n);
        var c = Floats(m * n);
        var scales = Floats(n);
        var codes = r.ReadBytes(n * k);
        var y = Floats(m * n);
        return new Fp8Case(m, n, k, bf16, bias, addend, norm, seed, beta, eps, x, nw, b, c, scales, codes, y);
    }

    /// <summary>
    /// The FP8 kernels of quantized.cu: the E4M3 conversions against the format's definition (every code; a sweep, the
    /// midpoints and the special values encoded to the nearest code by search) and <c>quantize_rows_fp8_f32</c> (the dynamic
    /// per-row quantization of <see cref="CudaBackend.QuantizedMatMul"/>'s FP8 path) against a C++ copy of
    /// <see cref="Tessera.Tensors.Fp8Quantization.QuantizeRow"/>: codes and scales exactly without a norm; with the RMSNorm
    /// prologue a code may move by one step where the block's sums round differently (Emulation/fp8_kernels.cpp).
    /// <see cref="CudaFp8QuantizedMatMulTests"/> checks them on the device.
    /// </summary>
    [Fact]
    public void Fp8QuantizationKernelsGiveTheCpusCodesOnTheCpuEmulation() =>
        RunEmulated(["quantized.cu"], "fp8_kernels",
            ["e4m3_to_f: every code is its definition's value", "e4m3_from_f: sweep, midpoints and special values = nearest code",
             "quantize_rows_fp8_f32 M=5 K=1000 ld=1024 exact", "quantize_rows_fp8_f32 M=5 K=1000 ld=1024 norm"]);

    /// <summary>
    /// The group-wise int4 kernels (int4.cu): <c>dequantize_int4_f32</c> bit for bit against scale (q - zero) (whole 16-byte
    /// stores, and value by value into an output that is not 16-byte aligned), and the
    /// matrix-vector product <c>gemv_int4_f32_m{1..4}</c> within 1e-5 of sum |x w| (fp32 sums in another order) against a
    /// double reference, over odd N, groups of 8 to 200 columns (a last group shorter, one group a row), symmetric and
    /// asymmetric zeros, bias, an addend, and grids smaller than the rows (Emulation/int4_kernels.cpp; seed 11, packed by a
    /// plain loop there); and the persistent stream's int4 form <c>gemv_stream_int4_{f32,bf16}_m{1..4}</c> (gemv.cu, K and the
    /// group multiples of 32) within 1e-5 of sum |x w| (bf16: plus 2^-7 of |y|) over K of one chunk, K not a multiple of 128
    /// (96, 1056, 4128), groups of 32, 64, 128, a whole row and a last one shorter (K = 320, group 128), bias, beta on y, an
    /// addend, the RMSNorm prologue (f32), several rows a warp, with the weights loaded before and after the dependency wait
    /// giving the same bits; and the stream's SwiGLU form <c>gemv_stream_int4_swiglu_*</c> (SiLU(x Wg^T + bg) (x Wu^T + bu), the
    /// gate row then the up row a warp) at 1 to 4 rows, normalized or not, with the fp32 sums' tolerance carried through SiLU;
    /// and the ROPE forms of the streams (<c>gemv_stream_rope_f32_*</c>, <c>gemv_stream_int4_rope_f32_*</c>, <c>gemv_stream_q8_rope_f32_*</c>: a pair of qkv rows a
    /// warp, rotated and appended to a dense cache or a paged pool with a padding row) bit for bit against the same stream's
    /// plain product rotated on the host.
    /// K a multiple of 8 but not of 32 (200, 40, 8) and groups of 8 and 16 are gemv_int4's cases.
    /// <see cref="CudaInt4QuantizedMatMulTests"/> checks them on the device.
    /// </summary>
    [Fact]
    public void Int4KernelsGiveTheDequantizedProductOnTheCpuEmulation() =>
        RunEmulated(["gemv.cu", "int4.cu"], "int4_kernels",
            ["dequantize_int4_f32 N=7 K=256 group=128 asym", "dequantize_int4_f32 N=5 K=96 group=64 sym", "dequantize_int4_f32 N=3 K=40 group=40 asym", "dequantize_int4_f32 N=5 K=96 group=32 sym unaligned",
             "gemv_int4_f32 M=1 N=37 K=256 group=128 asym bias grid=2", "gemv_int4_f32 M=2 N=33 K=96 group=64 sym addend grid=1",
             "gemv_int4_f32 M=3 N=9 K=512 group=32 asym bias addend grid=4", "gemv_int4_f32 M=4 N=65 K=1024 group=128 sym bias grid=3",
             "gemv_int4_f32 M=4 N=19 K=200 group=200 asym grid=1", "gemv_int4_f32 M=1 N=1 K=8 group=8 asym grid=1",
             "gemv_int4_f32 M=2 N=11 K=128 group=16 asym bias grid=2", "gemv_int4_f32 M=3 N=7 K=2048 group=64 sym addend grid=1",
             "gemv_stream_int4 f32 M=1 N=37 K=256 group=128 asym bias beta=0 grid=2", "gemv_stream_int4 f32 M=1 N=1 K=32 group=32 asym beta=0 grid=1",
             "gemv_stream_int4 f32 M=2 N=33 K=96 group=32 sym beta=1 grid=1", "gemv_stream_int4 f32 M=2 N=77 K=1056 group=1056 asym bias beta=0 addend grid=3",
             "gemv_stream_int4 f32 M=3 N=9 K=512 group=64 asym bias beta=0 addend norm grid=4", "gemv_stream_int4 f32 M=3 N=45 K=4128 group=32 asym beta=1 grid=1",
             "gemv_stream_int4 f32 M=4 N=130 K=2048 group=128 sym bias beta=0 norm grid=2", "gemv_stream_int4 f32 M=4 N=19 K=1024 group=64 asym beta=0 addend grid=1",
             "gemv_stream_int4 f32 M=1 N=100 K=2048 group=128 asym bias beta=1 norm grid=5", "gemv_stream_int4 f32 M=2 N=21 K=320 group=128 asym bias beta=0 addend grid=2",
             "gemv_stream_int4 bf16 M=1 N=65 K=2048 group=128 asym bias beta=0 grid=2",
             "gemv_stream_int4 bf16 M=2 N=50 K=1056 group=32 sym beta=0 addend grid=3", "gemv_stream_int4 bf16 M=4 N=33 K=4096 group=128 asym bias beta=1 grid=2",
             "gemv_stream_int4_swiglu f32 M=1 F=37 K=256 group=128 bias grid=2", "gemv_stream_int4_swiglu f32 M=2 F=9 K=1056 group=32 norm grid=4",
             "gemv_stream_int4_swiglu f32 M=4 F=70 K=2048 group=128 bias norm grid=1", "gemv_stream_int4_swiglu bf16 M=3 F=45 K=512 group=64 bias grid=2",
             "gemv_stream_rope f32 M=1 dense norm grid=2", "gemv_stream_rope f32 M=4 paged bias grid=3", "gemv_stream_int4_rope f32 M=1 dense norm grid=2",
             "gemv_stream_int4_rope f32 M=3 paged norm bias grid=1", "gemv_stream_int4_rope f32 M=2 dense bias grid=5",
             "gemv_stream_q8_rope f32 M=1 dense norm bias grid=2", "gemv_stream_q8_rope f32 M=4 paged bias grid=3",
             "gemv_stream_rope f32 M=1 dense norm bias grid=2 rotary 12", "gemv_stream_int4_rope f32 M=2 paged grid=3 rotary 6",
             "gemv_stream_q8_rope f32 M=2 dense norm bias grid=2 rotary 12", "gemv_stream_rope f32 M=3 paged bias grid=2 longrope 8",
             "gemv_stream_int4_rope f32 M=2 dense norm grid=1 rotary 6 longrope 11"]);

    /// <summary>
    /// Serving's paged attention (paged_attention.cu): the vectorized decode kernel with its key splits and their combine,
    /// skipping the rows left to the tensor-core prefill kernel, the splits merged by the kernel's last CTA (counters; its batched
    /// merge, up to 18 splits, equal bit for bit to the serial one), the tiled decode kernel (<see cref="CudaBackendOptions.PagedDecodeTiled"/>:
    /// rows of 1 key and at block edges, padding, groups of 1, 3, 4 and 8, splits, windows, a batch of 64, in f32 and bf16),
    /// the tensor-core decode kernel (<see cref="CudaBackendOptions.PagedDecodeTensorCores"/>, bf16, on the emulation's
    /// warp-collective stand-ins of cp.async, ldmatrix and mma.sync: tile and warp-slice edges, groups of 3, 4 and 8, D 64
    /// and 128, splits merged by the last CTA, windows; with its block table staged in shared memory, the same bits), and the
    /// generic kernel (also with Gemma 2's soft cap, at head size 256 and over an int8 pool), each also over an int8 and an fp8 pool (the <c>_i8</c> and <c>_f8</c> instantiations: KvVec and
    /// PagedRowsQuantized reading int8 values or E4M3 codes and their scales; the reference reads what they stand for), and
    /// <c>paged_append_i8</c> / <c>paged_append_f8</c> bit for bit against C++ copies of
    /// <see cref="Tessera.Tensors.Int8Quantization.QuantizeRow"/> and <see cref="Tessera.Tensors.Fp8Quantization.QuantizeKvRow"/>
    /// (the E4M3 codes by a search over every code; zero and negative-zero heads, a NaN head, a head reaching E4M3's
    /// subnormals), against a double reference
    /// (Emulation/paged_kernels.cpp states the batches and the tolerances: 1e-5 in f32, 8e-3 for a bf16 output, 1.2e-2 with
    /// the tensor-core kernel's 16-bit softmax weights). The tensor-core prefill kernels (flash_attention.cu,
    /// flash_attention_hopper.cu's paged tile) are not emulated here, only their shared indexing (<see cref="HopperPagedPrefillIndexingIsExactOnTheCpuEmulation"/>;
    /// the Hopper forward tile itself in <see cref="HopperAttentionGivesTheReferenceResultsOnTheCpuEmulation"/>):
    /// <see cref="CudaPagedServingTests"/> checks them, and the decode kernel's f16 instantiation, on the device.
    /// </summary>
    [Fact]
    public void PagedAttentionKernelsGiveTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["paged_attention.cu"], "paged_kernels",
            ["paged_attention H=8 K=2 D=64 splits=1 window=0", "paged_decode H=6 K=2 D=64 splits=3 max_rows=7", "paged_decode H=2 K=2 D=64 splits=2",
             "paged_decode H=8 K=2 D=128 splits=1", "paged_decode H=1 K=1 D=64 splits=2 max_rows=7 B=40",
             "paged_attention H=8 K=2 D=64 splits=3 window=24", "paged_decode H=6 K=2 D=64 splits=3 max_rows=7 B=6 window=24", "paged_decode H=8 K=2 D=128 splits=2 max_rows=1073741824 B=6 window=8",
             "paged_decode H=6 K=2 D=64 splits=3 max_rows=7 B=5 window=0 finish", "paged_decode H=8 K=2 D=128 splits=4 max_rows=1073741824 B=2 window=0 finish",
             "paged_decode H=6 K=2 D=64 splits=8 max_rows=7 B=5 window=0 finish min_chunk", "paged_decode H=8 K=2 D=128 splits=8 max_rows=1073741824 B=3 window=24 min_chunk",
             "paged_decode H=4 K=1 D=64 splits=18 max_rows=1073741824 B=1 window=0 finish min_chunk rel err",
             "finish min_chunk: serial merge = batched merge bit for bit ok",
             "paged_decode_tiled H=8 K=1 D=64 splits=3 max_rows=7 B=8 window=0 rel err", "paged_decode_tiled H=2 K=2 D=64 splits=2 max_rows=1073741824 B=9 window=0 finish",
             "paged_decode_tiled H=16 K=2 D=128 splits=2 max_rows=7 B=6 window=8", "paged_decode_tiled H=6 K=2 D=64 splits=8 max_rows=1073741824 B=4 window=0 finish min_chunk",
             "paged_decode_tiled H=8 K=2 D=128 splits=2 max_rows=7 B=6 window=8 finish bf16", "paged_decode_tiled H=4 K=1 D=64 splits=1 max_rows=1073741824 B=64 window=0 bf16",
             "paged_decode_mma H=8 K=2 D=64 splits=1 max_rows=1073741824 B=10 window=0 bf16 rel err", "paged_decode_mma H=6 K=2 D=64 splits=3 max_rows=7 B=6 window=24 finish bf16",
             "paged_decode_mma H=16 K=2 D=128 splits=4 max_rows=7 B=4 window=8 finish min_chunk bf16",
             "paged_decode_mma H=6 K=2 D=64 splits=3 max_rows=7 B=6 window=24 finish bf16: staged table = global table bit for bit ok",
             "paged_decode_mma H=16 K=2 D=128 splits=4 max_rows=7 B=4 window=8 finish min_chunk bf16: staged table = global table bit for bit ok",
             "paged_attention H=8 K=2 D=256 splits=1 window=0 capped", "paged_attention H=8 K=2 D=256 splits=3 window=24 capped",
             "paged_attention int8 H=8 K=2 D=64 splits=3 window=24 capped",
             "paged_attention int8 H=8 K=2 D=64 splits=3 window=24", "paged_decode H=6 K=2 D=64 splits=3 max_rows=7 B=5 window=0 finish int8",
             "paged_decode H=8 K=2 D=128 splits=2 max_rows=1073741824 B=6 window=8 int8", "paged_decode H=8 K=2 D=64 splits=4 max_rows=7 B=9 window=0 finish min_chunk bf16 int8",
             "paged_decode_tiled H=2 K=2 D=64 splits=2 max_rows=1073741824 B=9 window=0 finish int8",
             "paged_decode_tiled H=8 K=2 D=128 splits=2 max_rows=7 B=6 window=8 finish bf16 int8",
             "paged_decode_mma H=8 K=2 D=64 splits=1 max_rows=1073741824 B=10 window=0 bf16 int8",
             "paged_decode_mma H=6 K=2 D=64 splits=3 max_rows=7 B=6 window=24 finish bf16 int8: staged table = global table bit for bit ok",
             "paged_decode_mma H=16 K=2 D=128 splits=4 max_rows=7 B=4 window=8 finish min_chunk bf16 int8",
             "paged_append_i8 f32 D=64 = quantize_row bit for bit ok", "paged_append_i8 bf16 D=64 = quantize_row bit for bit ok",
             "paged_append_i8 f32 D=40 = quantize_row bit for bit ok", "paged_append_i8 bf16 D=40 = quantize_row bit for bit ok",
             "paged_attention fp8 H=8 K=2 D=64 splits=3 window=24", "paged_decode H=6 K=2 D=64 splits=3 max_rows=7 B=5 window=0 finish fp8",
             "paged_decode H=8 K=2 D=128 splits=2 max_rows=1073741824 B=6 window=8 fp8", "paged_decode H=8 K=2 D=64 splits=4 max_rows=7 B=9 window=0 finish min_chunk bf16 fp8",
             "paged_decode_tiled H=2 K=2 D=64 splits=2 max_rows=1073741824 B=9 window=0 finish fp8",
             "paged_decode_tiled H=8 K=2 D=128 splits=2 max_rows=7 B=6 window=8 finish bf16 fp8",
             "paged_decode_mma H=8 K=2 D=64 splits=1 max_rows=1073741824 B=10 window=0 bf16 fp8",
             "paged_decode_mma H=6 K=2 D=64 splits=3 max_rows=7 B=6 window=24 finish bf16 fp8: staged table = global table bit for bit ok",
             "paged_decode_mma H=16 K=2 D=128 splits=4 max_rows=7 B=4 window=8 finish min_chunk bf16 fp8",
             "paged_append_f8 f32 D=64 = quantize_row bit for bit ok", "paged_append_f8 bf16 D=64 = quantize_row bit for bit ok",
             "paged_append_f8 f32 D=40 = quantize_row bit for bit ok", "paged_append_f8 bf16 D=40 = quantize_row bit for bit ok"],
            "TESSERA_INT8_KV", "TESSERA_FP8_KV");   // the quantized-KV modules' instantiations (KernelLibrary.QuantizedKvModule) beside the plain ones

    /// <summary>
    /// The Hopper attention (flash_attention_hopper.cu with hopper.cuh, bf16, one and two warpgroups a CTA, head sizes 64 and
    /// 128) on the emulation's warpgroup stand-in of wgmma: the dense forward <c>flash_forward_hopper</c> (S = Q K^T with both
    /// operands K-major from shared memory, O += P V with P from registers and V N-major) and the backward
    /// <c>flash_backward_hopper</c> (S^T, dP^T K-major; dV, dK with dO and Q N-major; dQ with dS^T M-major, added by atomic
    /// reductions; a warpgroup's own barrier) and serving's <c>paged_prefill_hopper</c> (the forward tile over a paged pool
    /// through shuffled block tables, chunks after cached context, a sequence under the minimum rows left untouched; and its
    /// <c>_i8</c> and <c>_f8</c> instantiations over int8 and fp8 pools, whose row source PagedRowsSw128Quantized dequantizes
    /// into the same tiles), against
    /// double references of causal grouped-query attention and its gradients
    /// (Emulation/hopper_attention.cpp: 1.2e-2 of the largest output and 1.5e-2 of the largest gradient, P and dS being
    /// rounded to bf16; the log-sum-exp to 1e-3). The kernels are proven on the device (<see cref="CudaHopperAttentionTests"/>);
    /// here they prove the stand-in's descriptor layouts, K-, N- and M-major, which the decode products' emulation relies on too.
    /// The second backward kernel (<c>flash_backward_hopper_v2</c>/<c>v2x</c>) runs with every flag set the host uses (variants
    /// 2-10: largest work first over all heads or within windows of heads, dQ by bulk reductions of fragment-order tiles then
    /// <c>flash_backward_hopper_dq_cast</c>, dQ first, the dQ tile in its own buffer), and with the tiles the column sums of dQ that the cast takes on the way (the QKV bias
    /// gradient's q part, in partial rows), against the reference's.
    /// </summary>
    [Fact]
    public void HopperAttentionGivesTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["hopper.cuh", "flash_attention_hopper.cu"], "hopper_attention",
            ["hopper forward B=1 H=2 KH=1 Tq=100 S=100 D=64 WGS=1", "hopper forward B=2 H=2 KH=2 Tq=70 S=200 D=64 WGS=2 lse",
             "hopper forward B=1 H=4 KH=2 Tq=130 S=130 D=128 WGS=1", "hopper forward B=1 H=2 KH=1 Tq=64 S=300 D=128 WGS=2 lse",
             "hopper forward B=3 H=4 KH=2 Tq=150 S=150 D=64 WGS=1", "hopper forward B=3 H=4 KH=2 Tq=150 S=150 D=64 WGS=1 tma = cp.async bit for bit ok",
             "hopper forward B=3 H=4 KH=2 Tq=150 S=150 D=64 WGS=1 tma: other sequences' NaNs stay there ok",
             "hopper forward B=3 H=4 KH=2 Tq=150 S=150 D=64 warp-specialized = cp.async bit for bit ok",
             "hopper forward B=1 H=2 KH=1 Tq=700 S=700 D=64 warp-specialized = cp.async bit for bit ok",
             "hopper forward B=2 H=2 KH=1 Tq=70 S=200 D=128 WGS=2 lse", "hopper forward B=2 H=2 KH=1 Tq=70 S=200 D=128 WGS=2 tma = cp.async bit for bit ok",
             "hopper forward B=2 H=2 KH=1 Tq=70 S=200 D=128 WGS=2 tma: other sequences' NaNs stay there ok",
             "hopper forward B=2 H=2 KH=1 Tq=70 S=200 D=128 warp-specialized = cp.async bit for bit ok",
             "hopper backward B=1 H=2 KH=1 T=100 D=64 WGS=1 dQ", "hopper backward B=2 H=2 KH=2 T=150 D=64 WGS=2 dK",
             "hopper backward B=1 H=2 KH=1 T=70 D=128 WGS=1 dV", "hopper backward B=1 H=4 KH=2 T=150 D=64 v2 flags=0 dQ",
             "hopper backward B=1 H=4 KH=2 T=150 D=64 v2 flags=3 dQ", "hopper backward B=1 H=4 KH=2 T=150 D=64 v2 flags=5 dK",
             "hopper backward B=1 H=4 KH=2 T=150 D=64 v2 flags=11 dQ", "hopper backward B=1 H=2 KH=1 T=100 D=128 v2 flags=2 dQ",
             "hopper backward B=3 H=4 KH=2 T=150 D=64 v2 flags=1058 dK", "hopper backward B=3 H=4 KH=2 T=150 D=64 v2 flags=1066 dV",
             "hopper backward B=3 H=4 KH=2 T=150 D=64 v2 flags=1066 dQ column sums",
             "hopper backward B=1 H=4 KH=2 T=150 D=64 v2 flags=2 dQ column sums", "hopper backward B=1 H=4 KH=2 T=150 D=64 v2 flags=11 dQ column sums",
             "hopper backward B=1 H=2 KH=1 T=100 D=128 v2 flags=2 dQ column sums", "hopper backward B=2 H=2 KH=2 T=200 D=128 v2 flags=3 dQ column sums",
             "hopper backward B=3 H=4 KH=2 T=150 D=64 v2t flags=1058 dQ", "hopper backward B=3 H=4 KH=2 T=150 D=64 v2t flags=1058 dK",
             "hopper backward B=2 H=4 KH=2 T=100 D=64 v2t flags=0 dV", "hopper backward B=2 H=2 KH=1 T=100 D=128 v2t flags=2 dQ column sums",
             "hopper paged prefill B=4 N=373 H=2 KH=1 D=64 WGS=1: short sequences untouched",
             "hopper paged prefill B=2 N=195 H=4 KH=2 D=128 WGS=2",
             "hopper paged prefill B=4 N=373 H=2 KH=1 D=64 WGS=1 int8: short sequences untouched",
             "hopper paged prefill B=2 N=195 H=4 KH=2 D=128 WGS=2 int8",
             "hopper paged prefill B=4 N=373 H=2 KH=1 D=64 WGS=1 fp8: short sequences untouched",
             "hopper paged prefill B=2 N=195 H=4 KH=2 D=128 WGS=2 fp8"],
            "TESSERA_INT8_KV", "TESSERA_FP8_KV");

    /// <summary>
    /// The simple attention kernels (attention.cu, f32), which take every head size up to 256 and every soft-capped call:
    /// forward (output and log-sum-exp), the forward over a cache at device-side starts, and the backward (dq, dk, dv) at
    /// head sizes 256 and 40, with and without Gemma 2's cap of 1 (scores up to about +-4, so it bends), with sliding windows,
    /// against a double reference (Emulation/attention_kernels.cpp: 1e-5 forward, 5e-5 backward, of the largest value). A
    /// kernel that skips the cap in the forward, or its slope in the dq backward, fails (checked by hand).
    /// </summary>
    [Fact]
    public void SimpleAttentionKernelsGiveTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["attention.cu"], "attention_kernels",
            ["attention B=2 T=37 S=37 H=4 K=2 D=256 window=0 cap=0 dk", "attention B=2 T=37 S=37 H=4 K=2 D=256 window=0 cap=1 output",
             "attention B=2 T=37 S=37 H=4 K=2 D=256 window=0 cap=1 dq", "attention B=2 T=37 S=37 H=4 K=2 D=256 window=0 cap=1 dv",
             "attention B=1 T=50 S=50 H=2 K=1 D=40 window=8 cap=1 dk", "attention B=2 T=3 S=48 H=4 K=2 D=256 window=0 cap=1 cached output",
             "attention B=2 T=1 S=48 H=4 K=2 D=256 window=16 cap=1 cached lse", "all ok"]);

    /// <summary>
    /// The tensor-core forward (flash_attention.cu's <c>flash_forward_bf16_d256</c>, key tiles of 32 and Q's fragments read from
    /// shared memory at every key block, and <c>flash_forward_bf16_d64</c>) on the emulation's mma.sync, ldmatrix and cp.async:
    /// heads of 256 and 64, with and without Gemma 2's cap of 1 (scores up to about +-4), a window, queries over a cache at
    /// device-side starts, query and key counts inside a tile, against a double reference (Emulation/flash_forward.cpp:
    /// 1.2e-2 for the bf16 output with bf16 softmax weights, 1e-5 for the log-sum-exp). Skipping the cap fails the capped
    /// cases, and a thread's rows at D = 256 given one swizzle phase (the 64 and 128 loaders' shortcut) fail every case at 256
    /// (both checked by hand). Then serving's chunked prefill on the same tile (<c>paged_prefill_bf16_d64</c> and <c>_d128</c>):
    /// sequences after cached context in one flattened batch, keys through a shuffled block table, with and without a sliding
    /// window, a sequence below the prefill's minimum rows left untouched, each sequence against the same reference; and its
    /// <c>_i8</c> and <c>_f8</c> instantiations over int8 and fp8 pools (the reference over the dequantized rows).
    /// </summary>
    [Fact]
    public void TensorCoreForwardGivesTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["flash_attention.cu"], "flash_forward",
            ["flash_forward D=256 T=70 S=70 window=0 cap=1 output", "flash_forward D=256 T=70 S=70 window=0 cap=0 lse",
             "flash_forward D=256 T=45 S=100 window=24 cap=1 cached output", "flash_forward D=64 T=70 S=70 window=0 cap=1 output",
             "flash_forward D=64 T=37 S=90 window=0 cap=0 cached lse",
             "paged_prefill D=64 B=4 N=373 window=0 output", "paged_prefill D=64 B=4 N=373 window=48 short sequences untouched",
             "paged_prefill D=128 B=2 N=195 window=0 output", "paged_prefill D=128 B=2 N=115 window=24 output",
             "paged_prefill D=64 B=4 N=373 window=48 int8 output", "paged_prefill D=128 B=2 N=195 window=0 fp8 output", "all ok"],
            "TESSERA_INT8_KV", "TESSERA_FP8_KV");   // the quantized-KV modules' paged_prefill_i8 / _f8 beside the plain ones

    /// <summary>
    /// The per-query-head split decode (flash_attention.cu's <c>flash_decode_bf16_d64</c> and <c>_d256</c>): queries at
    /// device-side positions over a cache, keys split over CTAs and merged by the last CTA (counters left at zero) or the
    /// combine kernel, heads of 64 and 256, with and without Gemma 2's cap of 1 (scores up to about +-4), with a window,
    /// against a double reference (Emulation/flash_decode.cpp: 8e-3 for the bf16 output, 1e-5 for the log-sum-exp). A kernel
    /// that skips the cap fails the capped cases (checked by hand). And the decode attention with the output product behind
    /// it (<c>flash_decode_out_bf16_d64</c> and <c>_d128</c>): y += Wo o + bias against the double reference with o rounded to
    /// bf16 (8e-3), at 1, 3, 4 and 8 query heads a kv head, a window, segments whose last is short or empty, clusters of 1 to
    /// 5 CTAs splitting the keys, a rank without keys; the weights staged before or after the wait give the same bits, the
    /// rows' padding stays, the counters are left zero. The emulation runs each CTA of a cluster as far ahead of the others
    /// as the kernel lets it and aborts when a CTA reads a peer's shared memory after that peer has left, so deleting the
    /// kernel's last cluster wait fails it (checked by hand).
    /// </summary>
    [Fact]
    public void SplitDecodeKernelGivesTheReferenceResultsOnTheCpuEmulation() =>
        RunEmulated(["flash_attention.cu"], "flash_decode",
            ["flash_decode D=256 T=1 window=0 cap=1 splits=4 last CTA merges output", "flash_decode D=256 T=1 window=0 cap=0 splits=4 last CTA merges lse",
             "flash_decode D=256 T=3 window=40 cap=1 splits=3 combine kernel output", "flash_decode D=64 T=1 window=0 cap=1 splits=5 last CTA merges output",
             "flash_decode D=64 T=2 window=0 cap=0 splits=2 combine kernel lse",
             "flash_decode_out B=2 H=8 K=2 D=64 C=100 rows=16 window=0 bias=1 ctas=4 ", "flash_decode_out B=1 H=4 K=1 D=128 C=72 rows=32 window=50 bias=0 ctas=3 ",
             "flash_decode_out B=1 H=6 K=2 D=64 C=40 rows=8 window=0 bias=1 ctas=5 ", "flash_decode_out B=1 H=16 K=2 D=64 C=64 rows=64 window=0 bias=0 ctas=1 ",
             "flash_decode_out B=1 H=8 K=2 D=64 C=256 rows=32 window=0 bias=0 ctas=2 ",
             "flash_decode_out B=1 H=8 K=2 D=64 C=40 rows=8 window=0 bias=0 ctas=4 ",
             "flash_decode_out B=2 H=8 K=2 D=64 C=100 rows=16 window=0 bias=1 ctas=4: early = late, pads, counters", "all ok"]);

    /// <summary>
    /// The FlashAttention backward's first pass with the column sums of dO (flash_attention.cu's
    /// <c>flash_backward_pre_sums</c>: the bias gradient of the product that made v, which the Hopper backward takes there under
    /// <see cref="CudaBackendOptions.FusedAttentionBiasGradient"/>): delta = rowsum(dO o O), the dQ accumulator zeroed, and
    /// the partial rows of dO's column sums (and the plain first pass, which shares its per-row part), on strided views of fused tensors, head sizes 64 and 128, grids of one block and
    /// of several whose threads are whole rows of every head (Emulation/flash_prepass.cpp: 1e-5 of the largest value). A
    /// thread that took the wrong head's columns fails it (checked by hand).
    /// </summary>
    [Fact]
    public void FlashBackwardFirstPassSumsTheColumnsOfTheOutputGradientOnTheCpuEmulation() =>
        RunEmulated(["flash_attention.cu"], "flash_prepass",
            ["pre sums B=2 T=37 H=12 D=64 blocks=3 dO column sums", "pre sums B=1 T=50 H=3 D=128 blocks=3 delta",
             "pre sums B=3 T=20 H=8 D=64 blocks=1 dQ accumulator zeroed", "pre B=2 T=37 H=12 D=64 delta", "pre B=1 T=50 H=3 D=128 dQ accumulator zeroed"]);

    /// <summary>
    /// The indexing of the Hopper paged prefill (flash_attention_hopper.cu's <c>paged_prefill_hopper</c>) that common.cuh
    /// holds, on the emulation (the paged kernel whole in <see cref="HopperAttentionGivesTheReferenceResultsOnTheCpuEmulation"/>,
    /// and in <see cref="CudaPagedServingTests"/> on the device): the paged and dense K/V row sources write exactly the 128-byte-swizzled bytes of an independent formula (rows
    /// through a shuffled block table, the last tile partly past the length zero-filled; head sizes 64 and 128; one and two
    /// warpgroups), and the shared tile-finding prologue gives CTA x the x-th query tile of the sequences with at least
    /// min_rows rows (tiles of 64 and 128 rows, 40 sequences, the host's upper bound of CTAs, the spare ones -1).
    /// Emulation/hopper_prefill_indexing.cpp states the cases; the comparisons are exact (the loaders copy).
    /// </summary>
    [Fact]
    public void HopperPagedPrefillIndexingIsExactOnTheCpuEmulation() =>
        RunEmulated([], "hopper_prefill_indexing",
            ["PagedRowsSw128 D=64 NT=128 row0=256 S=300", "PagedRowsSw128 D=128 NT=256 row0=256 S=300",
             "DenseRowsSw128 D=128 NT=128 row0=0 S=300", "find_prefill_tile BM=64 B=40", "find_prefill_tile BM=128 B=40", "all ok"]);

    /// <summary>
    /// The split-master kernels of adamw.cu (<c>split_masters</c>, <c>join_masters</c>, <c>adamw_split</c> and
    /// <c>adamw_split_vec4</c> with bf16 and f32 gradients) against the separate-master <c>adamw</c>/<c>adamw_vec4</c> with
    /// their bf16 copy on the same inputs over six steps: joined masters, m and v bit for bit, the bf16 values equal except at
    /// exact ties; split then join gives random and edge bit patterns back; and <c>adamw_items</c> (IBackend.AdamWRanges in one
    /// launch) against <c>adamw_vec4</c> range by range, bit for bit. Exact comparisons (Emulation/adamw_kernels.cpp).
    /// <see cref="CudaSplitMastersTests"/> checks them on the device against the CPU backend.
    /// </summary>
    [Fact]
    public void SplitMasterKernelsAreBitwiseTheSeparateMasterUpdateOnTheCpuEmulation() =>
        RunEmulated(["adamw.cu"], "adamw_kernels",
            ["split/join n=4099 grid=3 round trip", "split/join n=4099 grid=3 high half", "adamw_split bf16 n=1001 decay=1 clip=1 grid=3",
             "adamw_split_vec4 bf16 n=4096 decay=1 clip=1 grid=2", "adamw_split_vec4 bf16 n=4096 decay=0 clip=0 grid=5",
             "adamw_split f32 n=1001 decay=0 clip=1 grid=2", "adamw_split_vec4 f32 n=2048 decay=1 clip=0 grid=3",
             "adamw_items grid=3 items=17 = adamw_vec4 by range", "adamw_items grid=40 items=6 = adamw_vec4 by range"]);

    /// <summary>Compiles common.cuh and <paramref name="kernelFiles"/> with Emulation/<paramref name="program"/>.cpp (and the
    /// preprocessor <paramref name="defines"/>), runs it and checks that it exits with no failures and printed every one of
    /// <paramref name="checks"/>.</summary>
    private static void RunEmulated(string[] kernelFiles, string program, string[] checks, params string[] defines) =>
        RunEmulatedAndInspect(kernelFiles, program, checks, null, defines);

    /// <summary><see cref="RunEmulated"/>, then <paramref name="inspect"/> on the folder the program ran in (the files it wrote), before the folder is deleted.</summary>
    private static void RunEmulatedAndInspect(string[] kernelFiles, string program, string[] checks, Action<string>? inspect, params string[] defines) =>
        WithEmulatedProgram(kernelFiles, program, defines, (executable, folder) =>
        {
            var (failures, output) = Run(executable, folder);
            Assert.True(failures == 0, $"{failures} emulated kernel checks failed:\n{output}");
            foreach (var check in checks)
                Assert.Contains(check, output);
            TestContext.Current.TestOutputHelper?.WriteLine(output);
            inspect?.Invoke(folder);
        });

    /// <summary>
    /// The emulation's own checks (Emulation/emulation_selfcheck.cpp), which every kernel check above leans on: threads meet at
    /// block barriers and shuffles and keep their indices across the fiber switches; a cluster's CTAs read each other's shared
    /// memory between cluster barriers; a read across warps without the block barrier sees the value from before the write;
    /// and, each in a run of its own, a barrier one thread never reaches and a read of a cluster peer's shared memory after
    /// that peer has left end the program with their messages, where the first would otherwise hang and the second pass.
    /// </summary>
    [Fact]
    public void TheEmulationCatchesADeadlockAndACtaThatLeavesItsClusterEarly() =>
        WithEmulatedProgram([], "emulation_selfcheck", [], (executable, folder) =>
        {
            var (failures, output) = Run(executable, folder);
            Assert.True(failures == 0, $"{failures} emulation checks failed:\n{output}");
            foreach (var check in new[] { "shuffles and block barriers ok", "thread and block indices across switches ok",
                         "cluster loads between cluster barriers ok", "a read across warps without the block barrier sees a stale value ok", "all ok" })
                Assert.Contains(check, output);

            var (deadlockExit, deadlock) = Run(executable, folder, "deadlock");
            Assert.NotEqual(0, deadlockExit);
            Assert.Contains("emulation: deadlock: 63 of 64 threads wait at barriers that the others never reach", deadlock);
            Assert.DoesNotContain("not caught", deadlock);

            var (leaveExit, leave) = Run(executable, folder, "early-leave");
            Assert.NotEqual(0, leaveExit);
            Assert.Contains("read CTA 1's shared memory after that CTA left", leave);
            Assert.DoesNotContain("not caught", leave);
        });

    /// <summary>Compiles common.cuh and <paramref name="kernelFiles"/> with Emulation/<paramref name="program"/>.cpp (and the
    /// preprocessor <paramref name="defines"/>) in a folder of its own, then hands <paramref name="use"/> the executable and the
    /// folder, which is deleted after.</summary>
    private static void WithEmulatedProgram(string[] kernelFiles, string program, string[] defines, Action<string, string> use)
    {
        var compiler = FindCompiler();
        if (compiler is null) Assert.Skip("no g++ or clang++ on PATH: the kernel emulation needs a C++20 compiler (apt-get install g++)");
        var here = Path.Combine(AppContext.BaseDirectory, "Cuda", "Emulation");
        var dir = Directory.CreateTempSubdirectory("tessera-kernel-emulation-");
        try
        {
            foreach (var header in Directory.GetFiles(here, "*.h"))   // the emulation, and helpers the check programs share
                File.Copy(header, Path.Combine(dir.FullName, Path.GetFileName(header)));
            File.Copy(Path.Combine(here, program + ".cpp"), Path.Combine(dir.FullName, program + ".cpp"));
            // A kernel's dynamic shared memory (extern __shared__) becomes a global array that the check program defines.
            var kernels = "#include \"cuda_emulation.h\"\n" + string.Concat(kernelFiles.Prepend("common.cuh")
                .Select(f => $"#line 1 \"{f}\"\n" + KernelLibrary.EmbeddedSource(f).Replace("extern __shared__", "extern", StringComparison.Ordinal) + "\n"));
            File.WriteAllText(Path.Combine(dir.FullName, "kernels.h"), kernels);
            string executable = Path.Combine(dir.FullName, program);
            var (built, buildOutput) = Run(compiler, dir.FullName,
                [.. defines.Select(d => "-D" + d), "-std=c++20", "-O1", "-pthread", "-w", "-o", executable, program + ".cpp"]);
            Assert.True(built == 0, $"{compiler} could not build the emulated kernels (exit {built}):\n{Tail(buildOutput, 30)}");
            use(executable, dir.FullName);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static (int ExitCode, string Output) Run(string file, string workingDirectory, params string[] arguments)
    {
        var start = new ProcessStartInfo(file) { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments) start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var errors = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd();
        if (!process.WaitForExit(TimeSpan.FromSeconds(180))) { process.Kill(); throw new TimeoutException($"{file} did not finish within 180 s"); }
        return (process.ExitCode, output + errors.Result);
    }

    private static string Tail(string text, int lines) => string.Join('\n', text.Split('\n').TakeLast(lines));

    /// <summary>g++ or clang++ on PATH (a C++20 compiler), else null.</summary>
    private static string? FindCompiler()
    {
        foreach (var name in new[] { "g++", "clang++" })
            foreach (var folder in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries))
            {
                var candidate = Path.Combine(folder, name);
                if (File.Exists(candidate)) return candidate;
            }
        return null;
    }
}
