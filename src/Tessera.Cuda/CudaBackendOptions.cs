using System.Collections.Frozen;
using System.Globalization;
using Tessera.Cuda.Compilation;

namespace Tessera.Cuda;

/// <summary>
/// How one <see cref="CudaBackend"/> runs: the choices that the defaults make from measurements, kept switchable for A/B
/// measurements (docs/cuda-notes.md says what each was measured at), the op profiler, and where compiled kernels are
/// cached. Built once at the edge (the CLI's backend factory, a bench's <c>--cuda-options</c>, a test) and passed to
/// <c>new CudaBackend(ordinal, options)</c>, which validates it and keeps it for its lifetime; two backends in one process
/// may run with different options. <see cref="Parse"/> reads the one-string form the edges accept.
/// </summary>
public sealed record CudaBackendOptions
{
    /// <summary>The defaults: what the measurements chose.</summary>
    public static CudaBackendOptions Default { get; } = new();

    /// <summary>
    /// Products with at most 4 rows (decoding) run on Tessera's persistent matrix-vector kernels (gemv.cu), which stream
    /// each weight once, int8 weights (<see cref="CudaBackend.QuantizedMatMul"/>) at one byte; false sends them to cuBLASLt
    /// (to compare), the int8 weights dequantized first. Default true.
    /// </summary>
    public bool MatrixVectorKernels { get; init; } = true;

    /// <summary>
    /// CTAs of 8 warps per SM in a matrix-vector grid, 1 or 2 (fewer when the rows would leave warps idle). Two are resident
    /// at once (the kernels' launch bounds); one leaves room for the next kernel's CTAs under programmatic dependent
    /// launch and measured slower. Default 2.
    /// </summary>
    public int MatrixVectorCtasPerSm { get; init; } = 2;

    /// <summary>
    /// Inside an inference scope (<see cref="Tensors.IInferenceScope"/>), a matrix-vector product whose predecessor was
    /// launched in the scope loads its first weights before waiting on that kernel (overlapping its tail); false makes
    /// every product wait first. Default true.
    /// </summary>
    public bool EarlyWeightLoads { get; init; } = true;

    /// <summary>
    /// A decode step's attention and the output product behind it, with the residual add, as one launch
    /// (flash_attention.cu's <c>flash_decode_out_*</c>) instead of two: a CTA per (segment of output rows, kv head), in
    /// thread-block clusters of 4 that split the kv head's keys and merge the attention through distributed shared memory,
    /// multiplies its query heads' outputs by the output weight's columns they meet, which it copied into shared memory
    /// before waiting on the kernel in front; the last CTA of a segment adds the kv heads' partial sums in a fixed order. For
    /// one query a sequence, heads of 64 or 128, at most 8 query heads a kv head, no soft cap, and a cache promised shorter
    /// than the grouped decode's threshold (each cluster reads the kv head's whole cache). It takes one of the decode step's
    /// five all-to-all stages a layer away. Default false: session 52 measured the unclustered form 22-25 % slower (H100,
    /// llama-1b batch-1 decode); the clustered form has not run on a GPU.
    /// </summary>
    public bool FusedDecodeAttentionOutput { get; init; }

    /// <summary>
    /// Products of 5 to 64 rows of x times an nn.Linear weight (a decode step's batch) run on a kernel of ours instead of
    /// cuBLASLt: tensor cores, K in slices that form a thread-block cluster and sum each other's tiles, launched dependent on
    /// the predecessor with the first weight loads ahead of the wait (as the matrix-vector kernels at 1-4 rows);
    /// <see cref="CudaBackend.MatMulSwiGlu"/> at those rows runs its SwiGLU form in one launch, and it and
    /// <see cref="CudaBackend.RmsNormMatMul"/> apply the norm on the way (no norm launch). On compute capability 9.0 the
    /// wgmma kernel (decode_gemm_hopper.cu, <see cref="HopperDecodeProducts"/>), elsewhere decode_gemm.cu's mma.sync one.
    /// Default false: at a 64-sequence decode step of llama-1b the products took 1.5x (wgmma) and 2x (mma.sync) cuBLASLt's time,
    /// the step 1.27x with the wgmma kernel (session 21, docs/benchmarks.md).
    /// </summary>
    public bool DecodeProducts { get; init; }

    /// <summary>
    /// Under <see cref="DecodeProducts"/> on a compute capability 9.0 device, the products run on warpgroup MMA
    /// (decode_gemm_hopper.cu: x as the A operand from registers, W read by the tensor cores from shared memory); false keeps
    /// decode_gemm.cu's mma.sync kernel there too. Default true.
    /// </summary>
    public bool HopperDecodeProducts { get; init; } = true;

    /// <summary>
    /// Products of at least 128 rows in the layouts of an nn.Linear's forward and its two gradients (a (M, K) times b (N, K)^T,
    /// a (M, K) times b (K, N), a (K, M)^T times b (K, N)) with no fused epilogue but a bias or an addend, 16-bit, on a compute
    /// capability 9.0 device, run on Tessera's warp-specialized
    /// persistent wgmma kernel (gemm_hopper.cu: a producer warpgroup copying tiles by the tensor memory accelerator, two consumer
    /// warpgroups) instead of cuBLASLt, where it times faster shape by shape (<see cref="TimeHopperTrainingProducts"/>), and
    /// the Llama MLP's SwiGLU forms (<see cref="CudaBackend.GateUpSwiGlu"/>, <see cref="CudaBackend.DownSwiGluBackward"/>) on it.
    /// Default true since session 48: with SwiGLU's sigmoid on the special-function unit the llama-1b step ran 233.5 ms
    /// against 235.9 and 238.0 on cuBLASLt (8 x 2048) and 258.8 against 260.6 (4 x 4096), H100, session 47, its 50-step loss
    /// curve inside the run-to-run spread (docs/benchmarks.md).
    /// </summary>
    public bool HopperTrainingProducts { get; init; } = true;

    /// <summary>
    /// The output tile's columns on <see cref="HopperTrainingProducts"/>' kernel: 256 (128 accumulators a consumer thread, 4
    /// stages of 48 KB) or 128 (64 accumulators, 6 stages of 32 KB). Default 256.
    /// </summary>
    public int HopperTrainingProductColumns { get; init; } = 256;

    /// <summary>
    /// On <see cref="HopperTrainingProducts"/>' kernel, thread-block clusters of two CTAs that take adjacent row tiles of one
    /// column tile, each copying half of B's tile into both (the tensor memory accelerator's multicast): B crosses from L2
    /// once for two CTAs. False runs one CTA a cluster, each copying its own B. Default true.
    /// </summary>
    public bool HopperTrainingProductMulticast { get; init; } = true;

    /// <summary>
    /// On <see cref="HopperTrainingProducts"/>' kernel, the output tile goes through shared memory, 64 x 64 at a time, and the
    /// tensor memory accelerator stores it while the consumers go on (where c's rows are 16-byte aligned); false stores each
    /// lane's fragment pairs straight to global memory. Default true.
    /// </summary>
    public bool HopperTrainingProductStagedStores { get; init; } = true;

    /// <summary>
    /// On <see cref="HopperTrainingProducts"/>' kernel with <see cref="HopperTrainingProductStagedStores"/>, a product with no
    /// C_in (beta 0, no addend) defers each tile's epilogue into the next tile's main loop: the outputs wait in registers as
    /// 16-bit pairs and one 64-column chunk goes to the tensor memory accelerator after each of the first k-tiles' products
    /// is issued, so the tensor cores are not idle while a tile is stored (at K = 2,048 a tile's main loop is 32 k-tiles and
    /// the store is about a tenth of it). The SwiGLU forward form (<see cref="CudaBackend.GateUpSwiGlu"/>) likewise, its six
    /// stores a tile (gate, up and activation for each 64 outputs), and the SwiGLU gradient form
    /// (<see cref="CudaBackend.DownSwiGluBackward"/>) where a tile has more than 8 k-tiles, its eight chunks of dg and du with
    /// their g and u loads. Default false until measured.
    /// </summary>
    public bool HopperTrainingProductOverlappedEpilogue { get; init; }

    /// <summary>
    /// Under <see cref="HopperTrainingProducts"/>, the first call of each product shape times gemm_hopper.cu against cuBLASLt
    /// and keeps the faster for that shape (logged in <see cref="CudaBackend.MatMulTuningLog"/>); false sends every fitting
    /// product to gemm_hopper.cu. Default true.
    /// </summary>
    public bool TimeHopperTrainingProducts { get; init; } = true;

    /// <summary>
    /// Under <see cref="DecodeProducts"/> on the wgmma kernel (<see cref="HopperDecodeProducts"/>), the products and their
    /// SwiGLU form copy their W and x tiles with the tensor memory accelerator: one thread issues each stage's copies
    /// through tensor maps, against the stage's transaction barrier, in place of every thread's 16-byte copies and their
    /// address arithmetic (which ncu found the 128-thread CTAs spending their time on, session 22). Default false: on the H200
    /// it took llama-1b's 64-sequence decode step from 1.84 to 1.66 ms, cuBLASLt's being 1.55 (session 23).
    /// </summary>
    public bool DecodeProductTensorMaps { get; init; }

    /// <summary>
    /// Products with int8 weights (<see cref="CudaBackend.QuantizedMatMul"/>) of 5 to 64 rows of x and no epilogue run on the
    /// int8 form of decode_gemm.cu's mma.sync kernel (<c>decode_gemm_q8_*</c>: the weight staged at one byte and turned into
    /// x's type in registers, each row's scale applied to its fp32 sum), independently of <see cref="DecodeProducts"/>; false
    /// dequantizes the weight into 16-bit scratch and runs cuBLASLt on it, which reads each weight three times over (1 byte,
    /// then 2 written, then 2 read). Needs compute capability 9.0 (thread-block clusters). Default true because its
    /// alternative is that dequantized path, not a plain 16-bit product (session 26, H200: int8 weights served 17,608 tokens/s
    /// at 64 streams against bf16's 23,664: half the bytes do not make up for mma.sync's time at 60 rows). Group-wise
    /// int4 weights take its int4 form likewise (<c>decode_gemm_int4_*</c>, or <c>decode_gemm_int4g_*</c> under
    /// <see cref="Int4DecodeProductGroupSums"/>: packed nibbles staged and turned into x's type in registers).
    /// </summary>
    public bool QuantizedDecodeProducts { get; init; } = true;

    /// <summary>
    /// Under <see cref="QuantizedDecodeProducts"/>, int4 weights whose group is a multiple of 64 columns (GPTQ's and AWQ's
    /// usual 128, per-channel) take the decode product's form by group sums (<c>decode_gemm_int4g_*</c>): the scales and
    /// zeros staged with the weights, each nibble made q - zero exactly in x's type by integer tricks, and each k-tile's fp32
    /// sums (one group's) multiplied by its scale; false keeps <c>decode_gemm_int4_*</c>, which scales every weight in fp32 and reads the
    /// k-tile's scales and zeros from global memory as it multiplies (11,901 tokens/s at 64 streams against bf16's 19,018 on
    /// the H100, session 31). Default true.
    /// </summary>
    public bool Int4DecodeProductGroupSums { get; init; } = true;

    /// <summary>
    /// Pipeline stages of the int4 decode product by group sums (<see cref="Int4DecodeProductGroupSums"/>), 4 or 8: its stage
    /// holds a 4 KB W tile, a quarter of the 16-bit form's, so at the 16-bit form's 4 stages a CTA has a quarter of the
    /// weight bytes in flight (a layer's four int4 products at 8 rows took about bf16's time for a quarter of its bytes,
    /// session 32); 8 (<c>decode_gemm_int4g_*_s8</c>) doubles them, for twice the shared memory. Default 4 until measured.
    /// </summary>
    public int Int4DecodeProductStages { get; init; } = 4;

    /// <summary>
    /// n8 tiles of x (8 rows each) the int4 decode product by group sums (<see cref="Int4DecodeProductGroupSums"/>) multiplies
    /// at once: 1, 2 or 4 (<c>decode_gemm_int4g_*_j2</c>, <c>_j4</c>; in 4 stages: with <see cref="Int4DecodeProductStages"/> 8
    /// the <c>_s8</c> kernels take one at a time and this setting is not used). Each tile's fp32 sums over a k-tile (one
    /// group) are a chain of 4 dependent mma steps a W tile; with one tile at a time a warp has two such chains in flight,
    /// with JB tiles 2 JB, for 8 + 4 JB more registers. ncu on the H100 (session 36, the 64-row llama-1b step): one or two
    /// warps a scheduler (the grids fill a third to two thirds of a wave), stalled mostly on fixed-latency dependencies,
    /// DRAM at 5-13 %. The sums are the same operations in the same order whatever JB (the same bits). Measured there (call C):
    /// four tiles take the 64-row step's four products from 89.2 to 76.5 us a layer but lose the plain gate product (28.0
    /// against 20.6 us) and the SwiGLU form at 32 rows, and served int4 at 64 streams gave 18,276 against 18,257 tokens/s
    /// (the decode step's device time 3 % shorter). Default 1.
    /// </summary>
    public int Int4DecodeProductXTiles { get; init; } = 1;

    /// <summary>
    /// CTAs an SM the quantized decode products (int4 and int8, their SwiGLU forms; 5 to 64 rows) aim at when they split K into
    /// a cluster's slices: the slices double while the grid has fewer than this many CTAs an SM (at most 8 slices, K's tiles
    /// dividing evenly). 1 (the 16-bit form's rule) gives a 64-row step of llama-1b one or two CTAs of four warps an SM (the
    /// gate's 64 row blocks in 4 slices, the down product's 16 in 8), too few warps to cover the tensor cores' and shared
    /// memory's latencies once 64 rows of x make the product compute-heavy; 2 or 4 split K further. Default 1 until measured.
    /// </summary>
    public int QuantizedDecodeProductCtasPerSm { get; init; } = 1;

    /// <summary>
    /// The most rows of x at which the quantized decode products (int4, int8, their SwiGLU forms) apply the RMSNorm in front of
    /// them on the way (<c>norm_x_columns</c>); at more rows x is normalized into scratch by the norm kernel first and the product
    /// runs without it. Every warp of every CTA scales its fragments of x by the norm weight, so the fused norm's cost grows
    /// with x's rows and the grid, where the norm kernel's does not: in a 64-row serving step of llama-1b (H200, session 34,
    /// eager op profile) the int4 products with the norm took 21.7 us (QKV, output, down on average) and 50.1 us (gate/up
    /// SwiGLU) against 16.7 and 36.0 without it in the product report, more than the norm kernel's 4.6 us. Measured (H100,
    /// session 35, the product report): the norm kernel first wins the gate/up SwiGLU form from 32 rows (27.9 against 30.2 us;
    /// 36.7 against 52.0 at 64) and the QKV product at 64 (15.9 against 16.2), loses both at 8-16 rows and QKV at 32 (13.6
    /// against 9.7); served at 64 streams with 16 here, int4 gave 17,973 tokens/s against 16,067 at 64. 0 to 64; default 32.
    /// </summary>
    public int QuantizedDecodeProductNormMaxRows { get; init; } = 32;

    /// <summary>
    /// The device-routed experts' products (<see cref="CudaBackend.MoeExpertSwiGlu"/>, <see cref="CudaBackend.MoeExpertDown"/>)
    /// on tensor cores (moe.cu's <c>moe_gemm_*</c>: the decode product's mma.sync tiles over each expert's gathered rows, its
    /// weights streamed once a step) where they fit: bf16 or f16 rows, 16-bit, int8 or int4 experts (groups of a multiple of
    /// 64), C and F multiples of 64. False, or where they do not fit, keeps <c>moe_expert_*</c>, whose warps multiply on CUDA
    /// cores and read x's rows again for every weight row (session 35, H200: Mixtral-shaped experts at 64 rows took 14.3 ms a
    /// two-layer step against the host routing's 2.7). Default true.
    /// </summary>
    public bool MoeExpertTensorCores { get; init; } = true;

    /// <summary>Which split-K kernel decodes grouped-query attention. Default <see cref="DecodeAttentionKernel.Automatic"/>.</summary>
    public DecodeAttentionKernel DecodeAttention { get; init; } = DecodeAttentionKernel.Automatic;

    /// <summary>
    /// Threads per row of the fused cross-entropy kernel: 128, 256, 512 or 1024; null (the default) chooses by the row's
    /// width (<c>CudaBackend.CrossEntropyThreads</c>: 512 from 4,096 columns on, 256 from 256, 128 below).
    /// </summary>
    public int? CrossEntropyThreadsPerRow { get; init; }

    /// <summary>
    /// The bias gradient of a product with <see cref="Tessera.Tensors.MatMulEpilogue.BiasGradient"/> in cuBLASLt's BGRADB epilogue; false
    /// (the default) runs the plain product and sums the rows with <c>SumRows</c>. On the H200 (gpt2-124m, 64 x 1024) the
    /// BGRADB products took 120, 49 and 51 us more than the plain ones at GPT-2's 2304-, 768- and 768-wide weight gradients,
    /// more than SumRows reading the same gradients at about 3.6 TB/s; alternating in one call the step took 109.5 and
    /// 109.0 ms with false against 109.8 and 110.8 with true (session 18; session 17 had them level, session 16 false 2.1 ms slower).
    /// </summary>
    public bool FusedBiasGradient { get; init; } = false;

    /// <summary>
    /// The bias gradient of a product with <see cref="Tessera.Tensors.MatMulEpilogue.GeluBackwardBiasGradient"/> (GPT-2's MLP: the
    /// up product's bias gradient, taken from the projection's input gradient) in cuBLASLt's DGELU_BGRAD epilogue; false (the
    /// default) runs the DGELU product and sums its output's rows with <c>SumRows</c>. On the H200 cuBLASLt's DGELU_BGRAD took
    /// 1,648 us at gpt2-124m's 65536 x 3072 x 768 against 594 for DGELU alone (session 18: 12.6 ms a step).
    /// </summary>
    public bool FusedGeluBiasGradient { get; init; } = false;

    /// <summary>
    /// When the attention backward is asked for the column sums of dq, dk and dv (the bias gradient of the product that made
    /// q, k and v: GPT-2's QKV), the Hopper backward takes them on the way: dv's from dO in the pass that computes
    /// rowsum(dO o O) (equal, since a query's probabilities sum to 1), dq's in the cast of the dQ tiles from the loads it
    /// makes, dk's none (zero: softmax ignores a key bias); partial rows summed after, in place of the 302 MB of dq, dk and
    /// dv that <c>SumRows</c> reads again at gpt2-124m's 64 x 1024. False sums the rows after the backward (one pass over the
    /// fused gradient, as the QKV product's own bias gradient did). Default false: this form has run only on the CPU emulation
    /// (the first pass and the cast) and not yet on the device; a first form, summing in the backward kernel's epilogue, cost that kernel 42 us
    /// a layer and gained nothing (session 23, docs/benchmarks.md).
    /// </summary>
    public bool FusedAttentionBiasGradient { get; init; } = false;

    /// <summary>
    /// The LayerNorm backward's column sums of dx (<see cref="Tessera.Tensors.IBackend.LayerNormBackward"/>'s dxColumnSums,
    /// GPT-2's projection biases under <c>Transformer.ResidualBiasGradientsFromNorms</c>) kept in each lane's registers over its
    /// rows and written to shared memory once (layernorm_backward_warp_sums_regs_*, bounds of two CTAs an SM), instead of a
    /// read-modify-write of a third shared-memory slice a row, which cost the kernel 28 us a call at gpt2-124m's 64 x 1024 on
    /// the H200 (session 23). Default false: written and emulated, not yet run on the device.
    /// </summary>
    public bool LayerNormSumsInRegisters { get; init; }

    /// <summary>
    /// Bytes of each row's logits that the fused cross-entropy keeps in shared memory between its statistics pass and its
    /// gradient pass (rounded down to 16-byte vectors; the rest of the row is read again): 0 (the default) reads the whole row
    /// twice; null ("auto") keeps as much as one block's shared memory holds (the whole row up to about 113,000 BF16 logits
    /// on an H200). Only when the gradient is written and the rows are 16-byte aligned. Default 0: on the H200 (2026-12-03,
    /// llama-1b 8 x 2048, 128,256 logits a row) the staged kernel took 486 us a call against 426 us reading the row twice.
    /// </summary>
    public int? CrossEntropyStagedBytes { get; init; } = 0;

    /// <summary>
    /// CTAs of the thread-block cluster that shares one row of the fused cross-entropy (compute capability 9.0 and later):
    /// each CTA holds its share of the row's logits in registers, so the row is read once and its gradient written once, and
    /// the CTAs merge their softmax statistics through distributed shared memory. 2, 4 or 8; 0 runs the one-CTA-a-row kernel
    /// (which reads a row twice, the second time mostly from L2 while the rows in flight fit there). Applies to rows of at
    /// least <see cref="CrossEntropyClusterMinRowBytes"/> whose starts and strides are 16-byte aligned, with
    /// <see cref="CrossEntropyStagedBytes"/> at 0. Default 8. On the H200 (session 19, the kernel alone): llama-1b's chunk of
    /// 2,048 x 128,256 BF16 logits 369 us against 424 for the one-CTA kernel; gpt2-124m's 5,048 x 50,257, 363 against 349.
    /// </summary>
    public int CrossEntropyClusterCtas { get; init; } = 8;

    /// <summary>
    /// The narrowest row, in bytes, that the cluster cross-entropy takes (<see cref="CrossEntropyClusterCtas"/>); narrower rows
    /// run the one-CTA kernel, which is faster while the rows its resident CTAs read twice fit in L2. Default 131,072 (128 KiB:
    /// Llama 3's 128,256 BF16 logits, 250 KiB, take the cluster; GPT-2's 50,257, 98 KiB, do not). 0: every row wide enough.
    /// </summary>
    public int CrossEntropyClusterMinRowBytes { get; init; } = 128 * 1024;

    /// <summary>
    /// 16-byte vectors of a row that each thread of the cluster cross-entropy holds (<see cref="CrossEntropyClusterCtas"/>):
    /// 4 (CTAs of up to 1,024 threads) or 8 (up to 512). Default 8 (H200, llama-1b's chunk: 369 us against 390 at 4).
    /// </summary>
    public int CrossEntropyClusterVectors { get; init; } = 8;

    /// <summary>
    /// CTAs of the thread-block cluster that shares one row of the device draw (<see cref="CudaBackend.SampleRows"/>,
    /// sampling.cu's <c>sample_rows_cluster</c>, compute capability 9.0 and later): 1, 2, 4 or 8; 0 runs the one-CTA-a-row
    /// kernel <c>sample_rows</c> (the only one before compute capability 9.0); null (the default) chooses by the batch, the
    /// fewest CTAs a row (at most 8) that give the batch two CTAs an SM, while each CTA keeps at least 2,048 of the row's
    /// logits, except that a call of temperature alone (no top-k or top-p in any row, as the caller says) of 128 rows or
    /// more runs one CTA a row (CudaBackend.SamplingOneCtaRows: the H100's session-31 timings). Both kernels draw the same
    /// tokens (Tessera.Tensors.TokenSampling's); CudaSamplingSpeedReport compares them.
    /// </summary>
    public int? SamplingClusterCtas { get; init; }

    /// <summary>
    /// The first use of a 16-bit product of at least 4 GFLOP times cuBLASLt's candidate algorithms on scratch outputs and
    /// keeps the fastest, once per bucket of row counts (powers of two up to 256, then 256 rows wide, 2048 above 4096): the
    /// bucket's later row counts reuse its algorithm (a server's steps change their row count at every step); false keeps the heuristic's first answer everywhere (the same
    /// algorithms on every run, for bitwise reproducible runs). Default true.
    /// </summary>
    public bool TuneMatMulAlgorithms { get; init; } = true;

    /// <summary>
    /// Which algorithms that timed choice tries for a product of at most 256 rows (a serving step's decode rows), each timed
    /// from a cold L2. Default <see cref="MatMulCandidateSearch.Heuristic"/>: cuBLASLt's heuristic candidates read the decode
    /// products' weights at 0.9-3.4 TB/s (H200, 2026-12-04, `37b52ee`: llama-1b's 2048 x 2048 at 64 rows in 9.3 us, llama-8b's
    /// 28672 x 4096 in 68.3), and neither the split candidates (up to 64) nor every listed algorithm at each tile (about 107,
    /// all cuBLASLt's algorithm 66) timed faster beyond the noise at any of 48 shapes from 8 to 256 rows; through the server
    /// at 64 streams 24,379 tokens/s with the split candidates against 24,759 without. The heuristic's own candidates already
    /// split K where it pays (3 to 6 parts for the 2048 x 8192 product). Kept for measurements with later cuBLASLt versions.
    /// </summary>
    public MatMulCandidateSearch MatMulSearch { get; init; } = MatMulCandidateSearch.Heuristic;

    /// <summary>
    /// Most rows of a product whose timed choice <see cref="MatMulSearch"/> widens (at least 1). Default 256, the decode rows
    /// the search was written for; larger values let it search the training step's products too (their candidates are
    /// timed warm, back to back). On the H200 with <c>AllAlgorithms</c> (session 18, gpt2-124m) it timed 15 to 97 candidates a
    /// product and kept one of the heuristic's first eight for all 16 products of the step.
    /// </summary>
    public int MatMulSearchMaxRows { get; init; } = 256;

    /// <summary>
    /// Programmatic dependent launch of the decode kernels on compute capability 9.0 or later (each may start while its
    /// predecessor finishes); false launches them plainly. Off anyway while <see cref="ProfileOps"/> is on. Default true.
    /// </summary>
    public bool ProgrammaticDependentLaunch { get; init; } = true;

    /// <summary>
    /// Serving's paged attention runs on its specialized kernels where the shapes allow (head size 64 or 128, 16-byte
    /// aligned rows): prefill chunks of at least 8 rows on tensor cores (<c>paged_prefill</c>, flash_attention.cu, or where
    /// <see cref="HopperAttention"/> applies <c>paged_prefill_hopper</c>, flash_attention_hopper.cu), the other
    /// rows on the vectorized <c>paged_decode</c>; false runs every row on the generic per-row kernel (to compare). Default true.
    /// </summary>
    public bool SpecializedPagedAttention { get; init; } = true;

    /// <summary>
    /// The attention forward of 16-bit inputs with head size 64 or 128 and no sliding window runs on the Hopper kernel
    /// (flash_attention_hopper.cu: warpgroup MMA, compiled for sm_90a) on a compute capability 9.0 device where that file
    /// compiles (<see cref="CudaBackend.HopperAttentionUnavailableReason"/> says why not); false keeps the FlashAttention-2
    /// kernel (flash_attention.cu), which also serves every other device and call. Default true: its GPU tests passed on
    /// the H200 and it measured faster in every shape (2026-12-03: forward 0.57 against 0.64 ms at llama-1b's 8 x 2048,
    /// H32 K8 D64; 0.78 against 1.22 ms at D128). Serving's prefill chunks follow it (<c>paged_prefill_hopper</c> in place of
    /// <c>paged_prefill</c>, see <see cref="CudaBackend.UsesHopperPagedPrefill"/>).
    /// </summary>
    public bool HopperAttention { get; init; } = true;

    /// <summary>
    /// The attention backward of the same calls runs on the Hopper kernel (flash_attention_hopper.cu) on a compute capability
    /// 9.0 device; false keeps the FlashAttention-2 backward. Independent of <see cref="HopperAttention"/> (the backward's
    /// contract is the same whichever forward ran). Default true: its GPU tests passed on the H200 and with CTAs of one
    /// warpgroup it measured faster than FA-2 (2026-12-03, 8 x 2048, H32 K8: 1.61 against 1.89 ms at D64; 2.95 against 3.61
    /// at D128); with two warpgroups it was slower at D64 (2.14 ms).
    /// </summary>
    public bool HopperAttentionBackward { get; init; } = true;

    /// <summary>
    /// The second Hopper attention backward (variants 2, 3, 4, 6 and 9 of <see cref="HopperBackwardVariant"/>: those without the v2x build) copies each query
    /// block's Q and dO tiles by the tensor memory accelerator, one thread issuing them (<c>flash_backward_hopper_v2t</c>),
    /// where q and dout are one (B T, H D) matrix each (the fused QKV's q, a contiguous dO), instead of every thread's
    /// cp.async copies: ncu counted those at 172 instructions a warp a block, a fifth of the kernel's. The same products in
    /// the same order: dK and dV the same bits, dQ within its cross-CTA reductions' rounding (they run in no fixed order).
    /// Default true since session 48 (H100, llama-1b's step: 2 x 8192 298.3 ms against 300.9, the means of five and three
    /// alternated runs; level at 8 x 2048; docs/benchmarks.md); a tile's rows past T are the next sequence's, masked: see
    /// flash_attention_hopper.cu on why these maps stay 2D.
    /// </summary>
    public bool HopperAttentionBackwardTensorMaps { get; init; } = true;

    /// <summary>
    /// The Hopper attention forward copies each key/value block by the tensor memory accelerator, one thread issuing it
    /// (<c>flash_forward_hopper_*_t</c>) from 3D maps (B planes of S rows of KH D values: the fused QKV's k and v) where no KV
    /// cache's lengths are given, at each head size's default warpgroups (one at 64, two at 128), instead of every thread's
    /// cp.async copies: ncu counted those at about 150 of the ~712 instructions a warp issues a key block (the assembled
    /// kernel: 1,800 instructions against 1,328 at head size 64). The same products in the same order: the same bits.
    /// Default true since session 48: alone 5-8 % faster at head size 64 and 3-4 % at 128 (H100, gpu-attention --fused-qkv,
    /// alternated: 8 x 2048 0.36 against 0.38-0.39 ms, 2 x 8192 1.18-1.20 against 1.27-1.28), level in the power-capped step.
    /// </summary>
    public bool HopperAttentionForwardTensorMaps { get; init; } = true;

    /// <summary>
    /// The Hopper attention forward runs warp-specialized (<c>flash_forward_hopper_ws_*</c>, after FlashAttention-3) where
    /// <see cref="HopperAttentionForwardTensorMaps"/>' 3D maps fit q, k and v and no KV cache's lengths are given: CTAs of three
    /// consumer warpgroups (head size 64; two at 128) and a producer whose one thread copies the Q tile and each key/value
    /// block by the tensor memory accelerator into a ring of four stages (two at 128), which all the consumers read. The
    /// one-warpgroup tile copies every key block once per 64 query rows; this one once per 192 (128), a third (half) of the
    /// traffic from L2, which the one-warpgroup forward's about 6 TB/s at llama-1b's 8 x 2048 (2.3 GB of K and V a call in 0.36 ms) suggests is its limit. The same
    /// products in the same order as the one-warpgroup tile: the same bits. Takes precedence over
    /// <see cref="HopperAttentionForwardTensorMaps"/>. Default false: written in session 48, not yet run on a device.
    /// </summary>
    public bool HopperAttentionForwardWarpSpecialized { get; init; }

    /// <summary>
    /// Warpgroups (128 threads, 64 query rows in the forward, 64 keys in the backward) per CTA of the Hopper kernels: 1 or 2,
    /// or 0 for the measured best of each kernel and head size. Two share each key/value (forward) or query (backward) tile
    /// between them; one leaves the CTAs independent, so more of them share an SM and interleave. Default 0: the forward
    /// takes one at head size 64 and two at 128, the backward one (H200, 2026-12-03, gpu-attention: forward at D64 0.43 ms
    /// with one against 0.57 with two, at D128 1.01 against 0.78; backward 1.61 against 2.14 at D64, 2.95 against 3.41 at D128).
    /// </summary>
    public int HopperAttentionWarpgroups { get; init; }

    /// <summary>
    /// Which Hopper attention backward runs (flash_attention_hopper.cu): 1 = the first kernel (<c>flash_backward_hopper</c>, one
    /// or two warpgroups per <see cref="HopperAttentionWarpgroups"/>); 2 = the second (<c>flash_backward_hopper_v2</c>, one
    /// warpgroup: the products of a query block overlapped with its elementwise work, CTAs ordered largest work first,
    /// dQ by reductions per element); 3 = the second with dQ through shared memory and one bulk reduction per query block;
    /// 4 = the second in the launch order of the first (to measure the ordering alone); 5 = 2 with dQ's product issued before
    /// dK's, so that its reductions go out while dK runs; 6 = 3 in the launch order of the first; 7 = 3 with (head size 64) the
    /// dQ tile in its own 16 KB buffer, dQ's product before dK's, the tile sent while dK runs and dK waited for in the next
    /// query block; 8 = 7 in the launch order of the first; 9 and 10 = 3 and 7 with their CTAs largest work first within
    /// windows of (kv head, batch) pairs whose key blocks fill the resident CTAs (<see cref="CudaBackend.HopperBackwardWindow"/>),
    /// so that the CTAs running at once share their heads' Q and dO in L2 as in the launch order. 0 (the default) = the measured
    /// best per shape
    /// (<see cref="CudaBackend.HopperBackwardVariantFor"/>: variant 9 with grouped heads and T of at least 1,024, variant 6
    /// elsewhere; H100, session 41, and H200, session 15).
    /// </summary>
    public int HopperBackwardVariant { get; init; }

    /// <summary>
    /// Serving's paged decode step runs the attention input (norm, QKV product, RoPE, append to the rows' pool slots) as one
    /// matrix-vector kernel where a step has at most 4 rows, as the dense decode step does; false runs the product, the
    /// rotation and the append as three launches (to compare). Default true.
    /// </summary>
    public bool FusedPagedQkv { get; init; } = true;

    /// <summary>
    /// RoPE with the KV append (<see cref="CudaBackend.RopeAndAppend"/>, and serving's steps above 4 rows) runs rope.cu's
    /// <c>rope_append_rows</c> for calls of at most this many rows: a CTA per row, the row's angles computed once into shared
    /// memory, and each thread's pairs all loaded before any is stored. Larger calls run <c>rope_append</c>, a work item per
    /// pair of 8 heads, which reads a head only after storing the previous one. The same bits either way. On the H200
    /// (session 20, llama-1b, profiled per op) the row kernel took 6.9 us against 8.3 at a 64-row decode step, 10.7 against 9.6
    /// at 512 rows and 104 against 68 at 8,192. Default 128; 0 always runs the item kernel.
    /// </summary>
    public int RopeAppendRowKernelMaxRows { get; init; } = 128;

    /// <summary>
    /// The fewest keys that one split of serving's <c>paged_decode</c> kernel reads (at least 1). A recorded decode step's
    /// grid is sized from the widest block table, so a short row spread over all the splits would give each a handful of
    /// keys; with this floor the row takes only as many splits as its keys fill, and the rest exit at once. 1 restores an
    /// even spread over all the splits. Default 64 (a CTA reads 32 keys an iteration). On the H200 (2026-12-03, `d04d67e`) the
    /// floor alone did not move the server's batch-1 latency (1.020 against 1.025 ms a token): the merge, then serial over every
    /// split, cost more; it now reads only the splits that hold keys (not yet measured).
    /// </summary>
    public int PagedDecodeMinKeysPerSplit { get; init; } = 64;

    /// <summary>
    /// The last CTA of serving's <c>paged_decode</c> that merges a row's key splits issues the loads of up to 16 splits of its
    /// two outputs before it uses any (one L2 round trip per 16 splits); false keeps the merge that loads each split's state
    /// behind a branch on its weight and uses it at once (one round trip per split and output, ~20 in a row for a batch-1
    /// row of ~10 splits). The same loads, products and order of the sum either way: the same output bit for bit. Default
    /// true since it was measured on the H200 (2026-12-03, `6ed478d`, llama-1b bf16 through the server at concurrency 1):
    /// inter-token latency mean 0.976 ms against 1.027 ms with the serial merge, and equal bit for bit on the device
    /// (<c>CudaPagedServingTests</c>).
    /// </summary>
    public bool PagedDecodeBatchedMerge { get; init; } = true;

    /// <summary>
    /// Serving's vectorized paged decode runs as <c>paged_decode_tiled</c> (paged_attention.cu): each lane group loads 4 keys and
    /// their values before it uses any and updates its online softmax once per 4 keys, for more bytes in flight at large
    /// batches (the same grid, splits, merge and results within rounding). Default false: on the H200 (2026-12-03, `5bccb4c`)
    /// it took 63.7 us a layer at 64 sequences against <c>paged_decode</c>'s 59.9 (48.2 with <c>PagedDecodeCtasPerSm=2</c>), and
    /// the server's tokens/s at 64 streams did not move.
    /// </summary>
    public bool PagedDecodeTiled { get; init; }

    /// <summary>
    /// Serving's vectorized paged decode runs its two products on tensor cores as <c>paged_decode_mma</c> (paged_attention.cu,
    /// bf16 and f16; F32 keeps <c>paged_decode</c>): the CTA's query heads are the rows of an mma.sync m16n8k16 tile, the split's
    /// keys and values stream through shared memory in tiles of 64 positions (cp.async through the block table, 3 tiles in
    /// flight), and each warp keeps an online softmax over 16 keys of every tile (the same grid, splits and merge; P is
    /// rounded to 16 bits before the product with V, as in the tensor-core prefill). Takes precedence over
    /// <see cref="PagedDecodeTiled"/>. Default true (session 13, H200, llama-1b through the HTTP server): its decode steps took
    /// 1.206 / 1.576 / 1.758 / 2.460 ms against <c>paged_decode</c>'s 1.252 / 1.703 / 1.907 / 3.033 at 8 / 32 / 64 / 128 streams;
    /// false keeps <c>paged_decode</c> (or <see cref="PagedDecodeTiled"/>'s kernel).
    /// </summary>
    public bool PagedDecodeTensorCores { get; init; } = true;

    /// <summary>
    /// <c>paged_decode_mma</c> first copies the block-table entries of its split's keys into shared memory (max_blocks ints
    /// after its K/V tiles), so that each tile's row copies look their blocks up there rather than in global memory, where
    /// each lookup is a dependent load ahead of its cp.async. The same bits either way (the emulation checks it). Default
    /// true since its first GPU runs (H200, 2026-12-04, `d4130db` and `4a20eff`, llama-1b bf16, ~524 positions, profiled):
    /// 29.1-29.3 us a layer against 30.3-31.2 at 64 sequences, 22.1 against 24.2 at 32; the recorded decode step moved within
    /// its run-to-run spread. Tables of at most 1,024 blocks are staged; wider ones stay in global memory. ncu found both forms
    /// reading the pool at 2.1 TB/s (44 % of the DRAM peak) with half their L2 requests repeated: the table was not what held
    /// the kernel back.
    /// </summary>
    public bool PagedDecodeStagedTable { get; init; } = true;

    /// <summary>
    /// CTAs per SM that serving's <c>paged_decode</c> grid may fill when it splits the keys (0, or 1 to 32): splits = this times
    /// the SMs over the rows' head-group columns, rounded down (whole waves), at least 1, at least 64 positions of the widest
    /// table a split, at most 32. 0 (the default) takes the kernel's occupancy (4 CTAs per SM for groups of up to 4 heads), so
    /// a decode grid is one wave: on the H200 (2026-12-03, llama-1b bf16, 64 sequences of ~520 positions) the kernel took 59.9 us
    /// a layer at 3 splits (the earlier rule: 8 per SM, rounded up), 54.3 at 2 and 43.8 at 1; a batch-1 grid is bounded by
    /// <see cref="PagedDecodeSplitSpan"/> either way. Each split costs its CTA's prologue and a merge; fewer, longer CTAs
    /// leave a long row's keys to fewer CTAs, which a batch of very unequal lengths feels.
    /// </summary>
    public int PagedDecodeCtasPerSm { get; init; }

    /// <summary>
    /// Positions of the widest block table (or of the window) per key split when the host sizes <c>paged_decode</c>'s grid
    /// (at least 1): splits = min(<see cref="PagedDecodeCtasPerSm"/> x SMs over the CTAs of one split, span / this), at most 32.
    /// At batch 1 this bound decides: a 656-position table gives 11 splits at 64, where the dense decode (flash_decode_gqa)
    /// runs 33 splits of about 20 keys. Pair a smaller value with a smaller <see cref="PagedDecodeMinKeysPerSplit"/>, or the
    /// extra splits stay empty. Default 64 (what the grid was sized by until now).
    /// </summary>
    public int PagedDecodeSplitSpan { get; init; } = 64;

    /// <summary>
    /// How many algorithms the timed choice of a product asks cuBLASLt's heuristic for (1 to 64; with
    /// <see cref="TuneMatMulAlgorithms"/> off only the first is used). Default 8.
    /// </summary>
    public int MatMulHeuristicCandidates { get; init; } = 8;

    /// <summary>
    /// Time every op with a pair of CUDA events (<see cref="Runtime.CudaOpProfiler"/>, <see cref="CudaBackend.Profiler"/>);
    /// adds host work per op and turns off CUDA graph recording and programmatic dependent launch. Default false.
    /// </summary>
    public bool ProfileOps { get; init; }

    /// <summary>
    /// Folder of the compiled-kernel cache; null (the default) takes <see cref="KernelCache.DefaultFolder"/>
    /// (<c>$TESSERA_KERNEL_CACHE</c>, else the user's cache folder).
    /// </summary>
    public string? KernelCacheFolder { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid field; returns this record.</summary>
    public CudaBackendOptions Validate()
    {
        if (HopperAttentionWarpgroups is not (0 or 1 or 2))
            throw new ArgumentException($"CUDA backend options: HopperAttentionWarpgroups ({HopperAttentionWarpgroups}) must be 1 or 2, or 0 for the measured best");
        if (PagedDecodeCtasPerSm is < 0 or > 32)
            throw new ArgumentException($"CUDA backend options: PagedDecodeCtasPerSm ({PagedDecodeCtasPerSm}) must be 1 to 32, or 0 for the kernel's occupancy");
        if (MatMulSearchMaxRows < 1)
            throw new ArgumentException($"CUDA backend options: MatMulSearchMaxRows ({MatMulSearchMaxRows}) must be at least 1");
        if (MatMulHeuristicCandidates is < 1 or > 64)
            throw new ArgumentException($"CUDA backend options: MatMulHeuristicCandidates ({MatMulHeuristicCandidates}) must be 1 to 64");
        if (PagedDecodeSplitSpan < 1)
            throw new ArgumentException($"CUDA backend options: PagedDecodeSplitSpan ({PagedDecodeSplitSpan}) must be at least 1");
        if (PagedDecodeMinKeysPerSplit < 1)
            throw new ArgumentException($"CUDA backend options: PagedDecodeMinKeysPerSplit ({PagedDecodeMinKeysPerSplit}) must be at least 1");
        if (HopperBackwardVariant is < 0 or > 10)
            throw new ArgumentException($"CUDA backend options: HopperBackwardVariant ({HopperBackwardVariant}) must be 1 to 10, or 0 for the measured best");
        if (Int4DecodeProductStages is not (4 or 8))
            throw new ArgumentException($"CUDA backend options: Int4DecodeProductStages ({Int4DecodeProductStages}) must be 4 or 8");
        if (Int4DecodeProductXTiles is not (1 or 2 or 4))
            throw new ArgumentException($"CUDA backend options: Int4DecodeProductXTiles ({Int4DecodeProductXTiles}) must be 1, 2 or 4");
        if (QuantizedDecodeProductCtasPerSm is not (1 or 2 or 4))
            throw new ArgumentException($"CUDA backend options: QuantizedDecodeProductCtasPerSm ({QuantizedDecodeProductCtasPerSm}) must be 1, 2 or 4");
        if (QuantizedDecodeProductNormMaxRows is < 0 or > 64)
            throw new ArgumentException($"CUDA backend options: QuantizedDecodeProductNormMaxRows ({QuantizedDecodeProductNormMaxRows}) must be 0 to 64");
        if (HopperTrainingProductColumns is not (128 or 256))
            throw new ArgumentException($"CUDA backend options: HopperTrainingProductColumns ({HopperTrainingProductColumns}) must be 128 or 256");
        if (MatrixVectorCtasPerSm is not (1 or 2))
            throw new ArgumentException($"CUDA backend options: MatrixVectorCtasPerSm ({MatrixVectorCtasPerSm}) must be 1 or 2");
        if (!Enum.IsDefined(MatMulSearch))
            throw new ArgumentException($"CUDA backend options: MatMulSearch ({(int)MatMulSearch}) must be one of {string.Join(", ", Enum.GetNames<MatMulCandidateSearch>())}");
        if (!Enum.IsDefined(DecodeAttention))
            throw new ArgumentException($"CUDA backend options: DecodeAttention ({(int)DecodeAttention}) must be one of {string.Join(", ", Enum.GetNames<DecodeAttentionKernel>())}");
        if (CrossEntropyThreadsPerRow is { } t && t is not (128 or 256 or 512 or 1024))
            throw new ArgumentException($"CUDA backend options: CrossEntropyThreadsPerRow ({t}) must be 128, 256, 512 or 1024, or unset to choose by the row's width");
        if (CrossEntropyClusterCtas is not (0 or 2 or 4 or 8))
            throw new ArgumentException($"CUDA backend options: CrossEntropyClusterCtas ({CrossEntropyClusterCtas}) must be 2, 4 or 8 CTAs a row, or 0 for one CTA a row");
        if (CrossEntropyClusterMinRowBytes < 0)
            throw new ArgumentException($"CUDA backend options: CrossEntropyClusterMinRowBytes ({CrossEntropyClusterMinRowBytes}) must be 0 or positive");
        if (SamplingClusterCtas is { } sampling && sampling is not (0 or 1 or 2 or 4 or 8))
            throw new ArgumentException($"CUDA backend options: SamplingClusterCtas ({sampling}) must be 1, 2, 4 or 8 CTAs a row, 0 for one CTA a row, or unset to choose by the batch");
        if (CrossEntropyClusterVectors is not (4 or 8))
            throw new ArgumentException($"CUDA backend options: CrossEntropyClusterVectors ({CrossEntropyClusterVectors}) must be 4 or 8 vectors a thread");
        if (CrossEntropyStagedBytes is < 0)
            throw new ArgumentException($"CUDA backend options: CrossEntropyStagedBytes ({CrossEntropyStagedBytes}) must be 0 (off) or positive, or unset for as much as fits");
        if (RopeAppendRowKernelMaxRows < 0)
            throw new ArgumentException($"CUDA backend options: RopeAppendRowKernelMaxRows ({RopeAppendRowKernelMaxRows}) must be 0 (never) or positive");
        if (KernelCacheFolder is { } folder && string.IsNullOrWhiteSpace(folder))
            throw new ArgumentException("CUDA backend options: KernelCacheFolder is blank; leave it unset for the default folder");
        return this;
    }

    /// <summary>
    /// Reads the one-string form: comma-separated <c>Name=value</c> settings over <see cref="Default"/>, names as the
    /// properties (case ignored), booleans as true/false (or 1/0, on/off), <c>CrossEntropyThreadsPerRow=auto</c> for the
    /// default; null or blank gives the defaults. E.g. <c>"TuneMatMulAlgorithms=false,ProfileOps=true"</c>. The result is
    /// validated; errors name the setting, the value and what is accepted.
    /// </summary>
    public static CudaBackendOptions Parse(string? text)
    {
        var options = Default;
        if (string.IsNullOrWhiteSpace(text)) return options;
        foreach (var raw in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = raw.IndexOf('=');
            if (eq <= 0)
                throw new ArgumentException($"CUDA backend options: '{raw}' is not Name=value (names: {Names})");
            string name = raw[..eq].Trim(), value = raw[(eq + 1)..].Trim();
            if (!Setters.TryGetValue(name, out var set))
                throw new ArgumentException($"CUDA backend options: unknown setting '{name}' in '{raw}' (names: {Names})");
            options = set(options, value, raw);
        }
        return options.Validate();
    }

    /// <summary>The settings that differ from <see cref="Default"/>, in <see cref="Parse"/>'s form ("" for the defaults).</summary>
    public string Format()
    {
        var parts = new List<string>();
        var d = Default;
        if (MatrixVectorKernels != d.MatrixVectorKernels) parts.Add($"{nameof(MatrixVectorKernels)}={Bool(MatrixVectorKernels)}");
        if (MatrixVectorCtasPerSm != d.MatrixVectorCtasPerSm) parts.Add(Invariant($"{nameof(MatrixVectorCtasPerSm)}={MatrixVectorCtasPerSm}"));
        if (EarlyWeightLoads != d.EarlyWeightLoads) parts.Add($"{nameof(EarlyWeightLoads)}={Bool(EarlyWeightLoads)}");
        if (FusedDecodeAttentionOutput != d.FusedDecodeAttentionOutput) parts.Add($"{nameof(FusedDecodeAttentionOutput)}={Bool(FusedDecodeAttentionOutput)}");
        if (DecodeProducts != d.DecodeProducts) parts.Add($"{nameof(DecodeProducts)}={Bool(DecodeProducts)}");
        if (HopperDecodeProducts != d.HopperDecodeProducts) parts.Add($"{nameof(HopperDecodeProducts)}={Bool(HopperDecodeProducts)}");
        if (HopperTrainingProducts != d.HopperTrainingProducts) parts.Add($"{nameof(HopperTrainingProducts)}={Bool(HopperTrainingProducts)}");
        if (HopperTrainingProductMulticast != d.HopperTrainingProductMulticast) parts.Add($"{nameof(HopperTrainingProductMulticast)}={Bool(HopperTrainingProductMulticast)}");
        if (HopperTrainingProductStagedStores != d.HopperTrainingProductStagedStores) parts.Add($"{nameof(HopperTrainingProductStagedStores)}={Bool(HopperTrainingProductStagedStores)}");
        if (HopperTrainingProductOverlappedEpilogue != d.HopperTrainingProductOverlappedEpilogue) parts.Add($"{nameof(HopperTrainingProductOverlappedEpilogue)}={Bool(HopperTrainingProductOverlappedEpilogue)}");
        if (TimeHopperTrainingProducts != d.TimeHopperTrainingProducts) parts.Add($"{nameof(TimeHopperTrainingProducts)}={Bool(TimeHopperTrainingProducts)}");
        if (HopperTrainingProductColumns != d.HopperTrainingProductColumns) parts.Add(Invariant($"{nameof(HopperTrainingProductColumns)}={HopperTrainingProductColumns}"));
        if (DecodeProductTensorMaps != d.DecodeProductTensorMaps) parts.Add($"{nameof(DecodeProductTensorMaps)}={Bool(DecodeProductTensorMaps)}");
        if (QuantizedDecodeProducts != d.QuantizedDecodeProducts) parts.Add($"{nameof(QuantizedDecodeProducts)}={Bool(QuantizedDecodeProducts)}");
        if (Int4DecodeProductGroupSums != d.Int4DecodeProductGroupSums) parts.Add($"{nameof(Int4DecodeProductGroupSums)}={Bool(Int4DecodeProductGroupSums)}");
        if (Int4DecodeProductStages != d.Int4DecodeProductStages) parts.Add(Invariant($"{nameof(Int4DecodeProductStages)}={Int4DecodeProductStages}"));
        if (Int4DecodeProductXTiles != d.Int4DecodeProductXTiles) parts.Add(Invariant($"{nameof(Int4DecodeProductXTiles)}={Int4DecodeProductXTiles}"));
        if (QuantizedDecodeProductNormMaxRows != d.QuantizedDecodeProductNormMaxRows)
            parts.Add(Invariant($"{nameof(QuantizedDecodeProductNormMaxRows)}={QuantizedDecodeProductNormMaxRows}"));
        if (QuantizedDecodeProductCtasPerSm != d.QuantizedDecodeProductCtasPerSm)
            parts.Add(Invariant($"{nameof(QuantizedDecodeProductCtasPerSm)}={QuantizedDecodeProductCtasPerSm}"));
        if (MoeExpertTensorCores != d.MoeExpertTensorCores) parts.Add($"{nameof(MoeExpertTensorCores)}={Bool(MoeExpertTensorCores)}");
        if (DecodeAttention != d.DecodeAttention) parts.Add($"{nameof(DecodeAttention)}={DecodeAttention}");
        if (CrossEntropyThreadsPerRow is { } t) parts.Add(Invariant($"{nameof(CrossEntropyThreadsPerRow)}={t}"));
        if (CrossEntropyStagedBytes != d.CrossEntropyStagedBytes)
            parts.Add(CrossEntropyStagedBytes is { } staged ? Invariant($"{nameof(CrossEntropyStagedBytes)}={staged}") : $"{nameof(CrossEntropyStagedBytes)}=auto");
        if (CrossEntropyClusterCtas != d.CrossEntropyClusterCtas) parts.Add(Invariant($"{nameof(CrossEntropyClusterCtas)}={CrossEntropyClusterCtas}"));
        if (CrossEntropyClusterMinRowBytes != d.CrossEntropyClusterMinRowBytes) parts.Add(Invariant($"{nameof(CrossEntropyClusterMinRowBytes)}={CrossEntropyClusterMinRowBytes}"));
        if (CrossEntropyClusterVectors != d.CrossEntropyClusterVectors) parts.Add(Invariant($"{nameof(CrossEntropyClusterVectors)}={CrossEntropyClusterVectors}"));
        if (SamplingClusterCtas is { } samplingCtas) parts.Add(Invariant($"{nameof(SamplingClusterCtas)}={samplingCtas}"));
        if (FusedBiasGradient != d.FusedBiasGradient) parts.Add($"{nameof(FusedBiasGradient)}={Bool(FusedBiasGradient)}");
        if (FusedAttentionBiasGradient != d.FusedAttentionBiasGradient) parts.Add($"{nameof(FusedAttentionBiasGradient)}={Bool(FusedAttentionBiasGradient)}");
        if (LayerNormSumsInRegisters != d.LayerNormSumsInRegisters) parts.Add($"{nameof(LayerNormSumsInRegisters)}={Bool(LayerNormSumsInRegisters)}");
        if (FusedGeluBiasGradient != d.FusedGeluBiasGradient) parts.Add($"{nameof(FusedGeluBiasGradient)}={Bool(FusedGeluBiasGradient)}");
        if (TuneMatMulAlgorithms != d.TuneMatMulAlgorithms) parts.Add($"{nameof(TuneMatMulAlgorithms)}={Bool(TuneMatMulAlgorithms)}");
        if (MatMulSearch != d.MatMulSearch) parts.Add($"{nameof(MatMulSearch)}={MatMulSearch}");
        if (ProgrammaticDependentLaunch != d.ProgrammaticDependentLaunch) parts.Add($"{nameof(ProgrammaticDependentLaunch)}={Bool(ProgrammaticDependentLaunch)}");
        if (SpecializedPagedAttention != d.SpecializedPagedAttention) parts.Add($"{nameof(SpecializedPagedAttention)}={Bool(SpecializedPagedAttention)}");
        if (HopperAttention != d.HopperAttention) parts.Add($"{nameof(HopperAttention)}={Bool(HopperAttention)}");
        if (HopperAttentionBackwardTensorMaps != d.HopperAttentionBackwardTensorMaps) parts.Add($"{nameof(HopperAttentionBackwardTensorMaps)}={Bool(HopperAttentionBackwardTensorMaps)}");
        if (HopperAttentionForwardTensorMaps != d.HopperAttentionForwardTensorMaps) parts.Add($"{nameof(HopperAttentionForwardTensorMaps)}={Bool(HopperAttentionForwardTensorMaps)}");
        if (HopperAttentionForwardWarpSpecialized != d.HopperAttentionForwardWarpSpecialized) parts.Add($"{nameof(HopperAttentionForwardWarpSpecialized)}={Bool(HopperAttentionForwardWarpSpecialized)}");
        if (HopperAttentionBackward != d.HopperAttentionBackward) parts.Add($"{nameof(HopperAttentionBackward)}={Bool(HopperAttentionBackward)}");
        if (HopperAttentionWarpgroups != d.HopperAttentionWarpgroups) parts.Add(Invariant($"{nameof(HopperAttentionWarpgroups)}={HopperAttentionWarpgroups}"));
        if (HopperBackwardVariant != d.HopperBackwardVariant) parts.Add(Invariant($"{nameof(HopperBackwardVariant)}={HopperBackwardVariant}"));
        if (FusedPagedQkv != d.FusedPagedQkv) parts.Add($"{nameof(FusedPagedQkv)}={Bool(FusedPagedQkv)}");
        if (RopeAppendRowKernelMaxRows != d.RopeAppendRowKernelMaxRows) parts.Add(Invariant($"{nameof(RopeAppendRowKernelMaxRows)}={RopeAppendRowKernelMaxRows}"));
        if (PagedDecodeCtasPerSm != d.PagedDecodeCtasPerSm) parts.Add(Invariant($"{nameof(PagedDecodeCtasPerSm)}={PagedDecodeCtasPerSm}"));
        if (PagedDecodeSplitSpan != d.PagedDecodeSplitSpan) parts.Add(Invariant($"{nameof(PagedDecodeSplitSpan)}={PagedDecodeSplitSpan}"));
        if (MatMulSearchMaxRows != d.MatMulSearchMaxRows) parts.Add(Invariant($"{nameof(MatMulSearchMaxRows)}={MatMulSearchMaxRows}"));
        if (MatMulHeuristicCandidates != d.MatMulHeuristicCandidates) parts.Add(Invariant($"{nameof(MatMulHeuristicCandidates)}={MatMulHeuristicCandidates}"));
        if (PagedDecodeBatchedMerge != d.PagedDecodeBatchedMerge) parts.Add($"{nameof(PagedDecodeBatchedMerge)}={Bool(PagedDecodeBatchedMerge)}");
        if (PagedDecodeTiled != d.PagedDecodeTiled) parts.Add($"{nameof(PagedDecodeTiled)}={Bool(PagedDecodeTiled)}");
        if (PagedDecodeTensorCores != d.PagedDecodeTensorCores) parts.Add($"{nameof(PagedDecodeTensorCores)}={Bool(PagedDecodeTensorCores)}");
        if (PagedDecodeStagedTable != d.PagedDecodeStagedTable) parts.Add($"{nameof(PagedDecodeStagedTable)}={Bool(PagedDecodeStagedTable)}");
        if (PagedDecodeMinKeysPerSplit != d.PagedDecodeMinKeysPerSplit) parts.Add(Invariant($"{nameof(PagedDecodeMinKeysPerSplit)}={PagedDecodeMinKeysPerSplit}"));
        if (ProfileOps != d.ProfileOps) parts.Add($"{nameof(ProfileOps)}={Bool(ProfileOps)}");
        if (KernelCacheFolder is { } folder) parts.Add($"{nameof(KernelCacheFolder)}={folder}");
        return string.Join(",", parts);
    }

    private static string Names => string.Join(", ", Setters.Keys.Order(StringComparer.Ordinal));

    private static string Bool(bool b) => b ? "true" : "false";

    private static string Invariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);

    private delegate CudaBackendOptions Setter(CudaBackendOptions options, string value, string setting);

    private static readonly FrozenDictionary<string, Setter> Setters = new Dictionary<string, Setter>
    {
        [nameof(MatrixVectorKernels)] = (o, v, s) => o with { MatrixVectorKernels = ParseBool(v, s) },
        [nameof(MatrixVectorCtasPerSm)] = (o, v, s) => o with { MatrixVectorCtasPerSm = ParseInt(v, s) },
        [nameof(EarlyWeightLoads)] = (o, v, s) => o with { EarlyWeightLoads = ParseBool(v, s) },
        [nameof(FusedDecodeAttentionOutput)] = (o, v, s) => o with { FusedDecodeAttentionOutput = ParseBool(v, s) },
        [nameof(DecodeProducts)] = (o, v, s) => o with { DecodeProducts = ParseBool(v, s) },
        [nameof(HopperDecodeProducts)] = (o, v, s) => o with { HopperDecodeProducts = ParseBool(v, s) },
        [nameof(HopperTrainingProducts)] = (o, v, s) => o with { HopperTrainingProducts = ParseBool(v, s) },
        [nameof(HopperTrainingProductColumns)] = (o, v, s) => o with { HopperTrainingProductColumns = ParseInt(v, s) },
        [nameof(HopperTrainingProductMulticast)] = (o, v, s) => o with { HopperTrainingProductMulticast = ParseBool(v, s) },
        [nameof(HopperTrainingProductStagedStores)] = (o, v, s) => o with { HopperTrainingProductStagedStores = ParseBool(v, s) },
        [nameof(HopperTrainingProductOverlappedEpilogue)] = (o, v, s) => o with { HopperTrainingProductOverlappedEpilogue = ParseBool(v, s) },
        [nameof(TimeHopperTrainingProducts)] = (o, v, s) => o with { TimeHopperTrainingProducts = ParseBool(v, s) },
        [nameof(DecodeProductTensorMaps)] = (o, v, s) => o with { DecodeProductTensorMaps = ParseBool(v, s) },
        [nameof(QuantizedDecodeProducts)] = (o, v, s) => o with { QuantizedDecodeProducts = ParseBool(v, s) },
        [nameof(Int4DecodeProductGroupSums)] = (o, v, s) => o with { Int4DecodeProductGroupSums = ParseBool(v, s) },
        [nameof(Int4DecodeProductStages)] = (o, v, s) => o with { Int4DecodeProductStages = ParseInt(v, s) },
        [nameof(Int4DecodeProductXTiles)] = (o, v, s) => o with { Int4DecodeProductXTiles = ParseInt(v, s) },
        [nameof(QuantizedDecodeProductCtasPerSm)] = (o, v, s) => o with { QuantizedDecodeProductCtasPerSm = ParseInt(v, s) },
        [nameof(QuantizedDecodeProductNormMaxRows)] = (o, v, s) => o with { QuantizedDecodeProductNormMaxRows = ParseInt(v, s) },
        [nameof(MoeExpertTensorCores)] = (o, v, s) => o with { MoeExpertTensorCores = ParseBool(v, s) },
        [nameof(SpecializedPagedAttention)] = (o, v, s) => o with { SpecializedPagedAttention = ParseBool(v, s) },
        [nameof(FusedPagedQkv)] = (o, v, s) => o with { FusedPagedQkv = ParseBool(v, s) },
        [nameof(RopeAppendRowKernelMaxRows)] = (o, v, s) => o with { RopeAppendRowKernelMaxRows = ParseInt(v, s) },
        [nameof(PagedDecodeCtasPerSm)] = (o, v, s) => o with { PagedDecodeCtasPerSm = ParseInt(v, s) },
        [nameof(PagedDecodeSplitSpan)] = (o, v, s) => o with { PagedDecodeSplitSpan = ParseInt(v, s) },
        [nameof(MatMulHeuristicCandidates)] = (o, v, s) => o with { MatMulHeuristicCandidates = ParseInt(v, s) },
        [nameof(MatMulSearchMaxRows)] = (o, v, s) => o with { MatMulSearchMaxRows = ParseInt(v, s) },
        [nameof(PagedDecodeBatchedMerge)] = (o, v, s) => o with { PagedDecodeBatchedMerge = ParseBool(v, s) },
        [nameof(PagedDecodeTiled)] = (o, v, s) => o with { PagedDecodeTiled = ParseBool(v, s) },
        [nameof(PagedDecodeTensorCores)] = (o, v, s) => o with { PagedDecodeTensorCores = ParseBool(v, s) },
        [nameof(PagedDecodeStagedTable)] = (o, v, s) => o with { PagedDecodeStagedTable = ParseBool(v, s) },
        [nameof(PagedDecodeMinKeysPerSplit)] = (o, v, s) => o with { PagedDecodeMinKeysPerSplit = ParseInt(v, s) },
        [nameof(DecodeAttention)] = (o, v, s) => o with { DecodeAttention = ParseEnum<DecodeAttentionKernel>(v, s) },
        [nameof(CrossEntropyThreadsPerRow)] = (o, v, s) => o with
        {
            CrossEntropyThreadsPerRow = v.Equals("auto", StringComparison.OrdinalIgnoreCase) ? null : ParseInt(v, s),
        },
        [nameof(CrossEntropyStagedBytes)] = (o, v, s) => o with
        {
            CrossEntropyStagedBytes = v.Equals("auto", StringComparison.OrdinalIgnoreCase) ? null : ParseInt(v, s),
        },
        [nameof(CrossEntropyClusterCtas)] = (o, v, s) => o with { CrossEntropyClusterCtas = ParseInt(v, s) },
        [nameof(CrossEntropyClusterMinRowBytes)] = (o, v, s) => o with { CrossEntropyClusterMinRowBytes = ParseInt(v, s) },
        [nameof(CrossEntropyClusterVectors)] = (o, v, s) => o with { CrossEntropyClusterVectors = ParseInt(v, s) },
        [nameof(SamplingClusterCtas)] = (o, v, s) => o with
        {
            SamplingClusterCtas = v.Equals("auto", StringComparison.OrdinalIgnoreCase) ? null : ParseInt(v, s),
        },
        [nameof(TuneMatMulAlgorithms)] = (o, v, s) => o with { TuneMatMulAlgorithms = ParseBool(v, s) },
        [nameof(MatMulSearch)] = (o, v, s) => o with { MatMulSearch = ParseEnum<MatMulCandidateSearch>(v, s) },
        [nameof(FusedBiasGradient)] = (o, v, s) => o with { FusedBiasGradient = ParseBool(v, s) },
        [nameof(FusedAttentionBiasGradient)] = (o, v, s) => o with { FusedAttentionBiasGradient = ParseBool(v, s) },
        [nameof(LayerNormSumsInRegisters)] = (o, v, s) => o with { LayerNormSumsInRegisters = ParseBool(v, s) },
        [nameof(FusedGeluBiasGradient)] = (o, v, s) => o with { FusedGeluBiasGradient = ParseBool(v, s) },
        [nameof(ProgrammaticDependentLaunch)] = (o, v, s) => o with { ProgrammaticDependentLaunch = ParseBool(v, s) },
        [nameof(HopperAttention)] = (o, v, s) => o with { HopperAttention = ParseBool(v, s) },
        [nameof(HopperAttentionBackwardTensorMaps)] = (o, v, s) => o with { HopperAttentionBackwardTensorMaps = ParseBool(v, s) },
        [nameof(HopperAttentionForwardTensorMaps)] = (o, v, s) => o with { HopperAttentionForwardTensorMaps = ParseBool(v, s) },
        [nameof(HopperAttentionForwardWarpSpecialized)] = (o, v, s) => o with { HopperAttentionForwardWarpSpecialized = ParseBool(v, s) },
        [nameof(HopperAttentionBackward)] = (o, v, s) => o with { HopperAttentionBackward = ParseBool(v, s) },
        [nameof(HopperAttentionWarpgroups)] = (o, v, s) => o with { HopperAttentionWarpgroups = ParseInt(v, s) },
        [nameof(HopperBackwardVariant)] = (o, v, s) => o with { HopperBackwardVariant = ParseInt(v, s) },
        [nameof(ProfileOps)] = (o, v, s) => o with { ProfileOps = ParseBool(v, s) },
        [nameof(KernelCacheFolder)] = (o, v, s) => o with
        {
            KernelCacheFolder = v.Length > 0 ? v : throw new ArgumentException($"CUDA backend options: '{s}': the folder is empty"),
        },
    }.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);

    private static bool ParseBool(string value, string setting) => value.ToLowerInvariant() switch
    {
        "true" or "1" or "on" => true,
        "false" or "0" or "off" => false,
        _ => throw new ArgumentException($"CUDA backend options: '{setting}': expected true or false (1/0, on/off)"),
    };

    private static TEnum ParseEnum<TEnum>(string value, string setting) where TEnum : struct, Enum =>
        Enum.GetValues<TEnum>().Cast<TEnum?>().FirstOrDefault(k => k.ToString()!.Equals(value, StringComparison.OrdinalIgnoreCase))
            ?? throw new ArgumentException($"CUDA backend options: '{setting}': expected one of {string.Join(", ", Enum.GetNames<TEnum>())}");

    private static int ParseInt(string value, string setting) =>
        int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) ? n
            : throw new ArgumentException($"CUDA backend options: '{setting}': expected an integer");
}
