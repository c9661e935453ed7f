using Tessera.Tensors;

namespace Tessera.Cuda;

public sealed unsafe partial class CudaBackend
{
    // flash_attention_hopper.cu: CTAs of 1 or 2 warpgroups (CudaBackendOptions.HopperAttentionWarpgroups) of 128 threads, each
    // owning 64 query rows (forward) or 64 keys (backward); the forward's key/value blocks of 128 rows in a two-stage ring;
    // 1,024 bytes of slack so the kernel can align its tiles to the 128-byte swizzle's 1,024-byte period.
    private const int HopperWarpgroupRows = 64, HopperKeys = 128, HopperWarpgroupThreads = 128;
    private const string HopperFile = "flash_attention_hopper.cu";

    /// <summary>
    /// Whether the attention forward runs on the Hopper kernel here: <see cref="CudaBackendOptions.HopperAttention"/> on a
    /// compute capability 9.0 device (wgmma exists there only, compiled for sm_90a). Calls with a sliding window, and
    /// decoding's split kernels, stay on flash_attention.cu either way.
    /// </summary>
    public bool UsesHopperAttention => Options.HopperAttention && HopperKernelsCompile;

    /// <summary>
    /// Whether the attention backward runs on the Hopper kernel here: <see cref="CudaBackendOptions.HopperAttentionBackward"/>
    /// on a compute capability 9.0 device; windowed calls stay on flash_attention.cu.
    /// </summary>
    public bool UsesHopperAttentionBackward => Options.HopperAttentionBackward && HopperKernelsCompile;

    /// <summary>
    /// Why the Hopper kernels cannot run on this device: not compute capability 9.0, or NVRTC's log when
    /// flash_attention_hopper.cu does not compile for sm_90a (the FA-2 kernels then serve every call); null when they can.
    /// </summary>
    public string? HopperAttentionUnavailableReason
    {
        get
        {
            if (CudaDevice.ComputeCapability != (9, 0)) return $"the Hopper kernels need compute capability 9.0; this device is {CudaDevice.Architecture}";
            return HopperKernelsCompile ? null : _hopperCompileError;
        }
    }

    private bool? _hopperCompiles;
    private string? _hopperCompileError;

    /// <summary>On a 9.0 device, whether the kernel file compiles (tried once, on first use).</summary>
    private bool HopperKernelsCompile => _hopperCompiles ??= CudaDevice.ComputeCapability == (9, 0) && TryCompile(HopperFile, out _hopperCompileError);

    /// <summary>Whether kernel file <paramref name="file"/> compiles here (loading it); NVRTC's log in <paramref name="error"/> when not.</summary>
    private bool TryCompile(string file, out string? error)
    {
        error = null;
        try
        {
            Kernels.Module(file);
            return true;
        }
        catch (Compilation.KernelCompilationException e)
        {
            error = e.Message;
            return false;
        }
    }

    /// <summary>Warpgroups per CTA of the Hopper forward tile (dense and paged) at head size <paramref name="d"/>:
    /// <see cref="CudaBackendOptions.HopperAttentionWarpgroups"/>, or where it is 0 one at head size 64 and two at 128.</summary>
    private int HopperForwardWarpgroups(int d) => Options.HopperAttentionWarpgroups is 0 ? (d == 64 ? 1 : 2) : Options.HopperAttentionWarpgroups;

    /// <summary>The Hopper forward tile's dynamic shared memory for <paramref name="rows"/> query rows at head size
    /// <paramref name="d"/>: 1,024 bytes of alignment slack, the Q tile and two stages of K and V (16-bit values).</summary>
    private static uint HopperForwardShared(int rows, int d) => (uint)(1024 + (rows + 4 * HopperKeys) * d * 2);

    private void HopperForward(DType dtype, int b, int t, int s, int h, int kh, int d, ulong pq, ulong pk, ulong pv, ulong po, ulong pl,
        Strides3 sq, Strides3 sk, Strides3 sv, Strides3 so, float sc, ulong starts)
    {
        int wgs = HopperForwardWarpgroups(d), rows = HopperWarpgroupRows * wgs;
        uint shared = HopperForwardShared(rows, d);
        var grid = ((uint)((t + rows - 1) / rows), (uint)h, (uint)b);
        // The warp-specialized build: 3 (D 64) or 2 (D 128) consumer warpgroups sharing each key block, a producer copying.
        if (Options.HopperAttentionForwardWarpSpecialized && starts == 0 && ForwardTensorMapsFit(s, kh, d, pk, sk, pv, sv)
            && SequencesFitTensorMaps(t, h, d, pq, sq))
        {
            int consumers = d == 64 ? 3 : 2, stages = d == 64 ? 4 : 2, tile = HopperWarpgroupRows * consumers;
            byte* buffer = stackalloc byte[3 * 128 + 64];
            byte* qmap = (byte*)(((nint)buffer + 63) & ~(nint)63), kmap = qmap + 128, vmap = kmap + 128;
            EncodeSequenceTensorMap(qmap, dtype, pq, h * d, t, b, sq.T, sq.B, tile);
            EncodeSequenceTensorMap(kmap, dtype, pk, kh * d, s, b, sk.T, sk.B, HopperKeys);
            EncodeSequenceTensorMap(vmap, dtype, pv, kh * d, s, b, sv.T, sv.B, HopperKeys);
            void** wargs = stackalloc void*[] { qmap, kmap, vmap, &po, &pl, &t, &s, &h, &kh, &so, &sc };
            string wkernel = "flash_forward_hopper_ws_" + FlashSuffix(dtype, d);
            // 1,024 alignment + the Q tile + the stages' K and V + a full and an empty barrier a stage and Q's
            uint wshared = (uint)(1024 + tile * d * 2 + stages * 2 * HopperKeys * d * 2 + 8 * (2 * stages + 1));
            PreferSharedMemory(HopperFile, wkernel);
            Launch(HopperFile, wkernel, ((uint)((t + tile - 1) / tile), (uint)h, (uint)b), (uint)(HopperWarpgroupThreads * (consumers + 1)), wargs, wshared);
            return;
        }
        // The tensor-map build (K and V by the tensor memory accelerator) exists at each head size's default warpgroups.
        if (Options.HopperAttentionForwardTensorMaps && starts == 0 && wgs == (d == 64 ? 1 : 2) && ForwardTensorMapsFit(s, kh, d, pk, sk, pv, sv))
        {
            byte* buffer = stackalloc byte[2 * 128 + 64];
            byte* kmap = (byte*)(((nint)buffer + 63) & ~(nint)63), vmap = kmap + 128;
            // k and v as (B planes of S rows of KH D values) in boxes of 128 rows (a key block) by 64 values (the 128-byte swizzle)
            EncodeSequenceTensorMap(kmap, dtype, pk, kh * d, s, b, sk.T, sk.B, HopperKeys);
            EncodeSequenceTensorMap(vmap, dtype, pv, kh * d, s, b, sv.T, sv.B, HopperKeys);
            void** targs = stackalloc void*[] { kmap, vmap, &pq, &po, &pl, &t, &s, &h, &kh, &sq, &so, &sc };
            string tkernel = "flash_forward_hopper_" + FlashSuffix(dtype, d) + "_t";
            PreferSharedMemory(HopperFile, tkernel);
            Launch(HopperFile, tkernel, grid, (uint)(HopperWarpgroupThreads * wgs), targs, shared + 16);   // + the two stages' mbarriers
            return;
        }
        void** args = stackalloc void*[] { &pq, &pk, &pv, &po, &pl, &t, &s, &h, &kh, &sq, &sk, &sv, &so, &sc, &starts };
        string kernel = "flash_forward_hopper_" + (wgs == 1 ? "wg1_" : "") + FlashSuffix(dtype, d);
        PreferSharedMemory(HopperFile, kernel);
        Launch(HopperFile, kernel, grid, (uint)(HopperWarpgroupThreads * wgs), args, shared);
    }

    /// <summary>
    /// Whether k and v can be read by the tensor memory accelerator in the forward (<see cref="SequencesFitTensorMaps"/>).
    /// </summary>
    private static bool ForwardTensorMapsFit(int s, int kh, int d, ulong pk, Strides3 sk, ulong pv, Strides3 sv) =>
        SequencesFitTensorMaps(s, kh, d, pk, sk) && SequencesFitTensorMaps(s, kh, d, pv, sv);

    /// <summary>
    /// Whether a (B, rows, heads, D) 16-bit tensor at <paramref name="address"/> with strides <paramref name="st"/> can be read as
    /// 3D tensor-map planes (<see cref="EncodeSequenceTensorMap"/>): heads D apart, rows holding every head and sequences holding
    /// every row (no overlap: the hardware requires it), 16-byte aligned start and strides.
    /// </summary>
    private static bool SequencesFitTensorMaps(int rows, int heads, int d, ulong address, Strides3 st) =>
        st.H == d && st.T >= (long)heads * d && st.B >= rows * st.T && address % 16 == 0 && st.T * 2 % 16 == 0 && st.B * 2 % 16 == 0;

    /// <summary>
    /// The tensor map of <paramref name="sequences"/> planes of <paramref name="rows"/> rows of <paramref name="cols"/> 16-bit
    /// values (rows <paramref name="ld"/> values apart, planes <paramref name="planeStride"/>), in boxes of
    /// <paramref name="boxRows"/> rows by 64 values one plane deep: a box's rows past its plane's last read as zeros, not as the
    /// next plane's, so one sequence's keys or queries never reach another's tile.
    /// </summary>
    private static void EncodeSequenceTensorMap(byte* map, DType dtype, ulong address, int cols, int rows, int sequences, long ld, long planeStride, int boxRows) =>
        EncodeTensorMap(map, dtype, address, cols, rows, ld, boxRows, 64, sequences, planeStride);

    // The backward's main kernel: CTAs of 64 keys per warpgroup walking query blocks of 64 rows. delta and the fp32 dQ
    // accumulator come from flash_attention.cu's preprocess, which zeroes it; a cast kernel rounds dQ into dq.
    private const int HopperBackwardQueries = 64;

    /// <summary>
    /// The Hopper backward variant in use for <paramref name="queryHeads"/> query heads over <paramref name="kvHeads"/> key/value
    /// heads of size <paramref name="headSize"/> at sequence length <paramref name="t"/> (see
    /// <see cref="CudaBackendOptions.HopperBackwardVariant"/>): the option, or where it is 0 the measured best. Both are the second
    /// kernel with dQ through one bulk reduction per query block; they differ in the CTAs' order. Variant 9 (largest work first
    /// within windows of heads that fill the resident CTAs) where each key/value head serves at least two query heads and T is at
    /// least 1,024, at head size 64 or 128: there a CTA walks group x T / 64 query blocks and the causal tail decides, while the
    /// CTAs running at once still share a few heads' Q and dO in L2 (H100, session 41, gpu-attention --fused-qkv: llama-1b
    /// 8 x 2048 1.220 ms against 1.633 for largest first over all heads and 1.255 in the launch order; 2 x 8192 4.039 against
    /// 4.272 and 4.153; 16 x 1024 with groups of 4 0.747 against 1.072 and 0.787; llama-8b heads 8 x 2048 2.351 against 2.579
    /// in the launch order). With one query head a group the two orders tie (gpt2-124m 64 x 1024: 1.139 against 1.135; 8 x 2048
    /// with 32 heads: 1.198 against 1.204), and variant 6 stays. Variant 6 (the launch order: a head's
    /// key blocks together, key block 0 first) everywhere else, where it beat largest-first over all heads by up to 1.7x
    /// (gpt2-124m's 64 x 1024, 12 heads: 1.083 ms against 1.819; 16 x 1024 with groups of 4: 0.703 against 0.758; H200,
    /// session 15). docs/benchmarks.md.
    /// </summary>
    public int HopperBackwardVariantFor(int headSize, int queryHeads, int kvHeads, int t) =>
        Options.HopperBackwardVariant is not 0 ? Options.HopperBackwardVariant : MeasuredBestHopperBackward(headSize, queryHeads, kvHeads, t);

    /// <summary>
    /// The window of variants 9 and 10: how many (kv head, batch) pairs' key blocks of <paramref name="t"/> / 64 fill 3 CTAs an
    /// SM at head size 64 (the kernel's resident CTAs there) and 1 an SM at 128 (where two are resident: the window is half a
    /// wave, as measured; a full wave's window is not measured), over <paramref name="multiprocessors"/> SMs; at least 1.
    /// </summary>
    public static int HopperBackwardWindow(int multiprocessors, int headSize, int t)
    {
        int keyBlocks = (t + HopperBackwardQueries - 1) / HopperBackwardQueries;
        return Math.Clamp(multiprocessors * (headSize == 64 ? 3 : 1) / Math.Max(1, keyBlocks), 1, 1 << 20);
    }

    /// <summary>The default options' choice in <see cref="HopperBackwardVariantFor"/>: 9 or 6 (see there).</summary>
    public static int MeasuredBestHopperBackward(int headSize, int queryHeads, int kvHeads, int t) =>
        headSize is 64 or 128 && queryHeads >= 2 * kvHeads && t >= 1024 ? 9 : 6;

    private bool HopperBackward(DType dtype, int b, int t, int h, int kh, int d, ulong pq, ulong pk, ulong pv, ulong po, ulong pd, ulong pl,
        ulong pdq, ulong pdk, ulong pdv, Strides3 sq, Strides3 sk, Strides3 sv, Strides3 so, Strides3 sd, Strides3 sdq, Strides3 sdk, Strides3 sdv,
        float sc, Tensor? columnSums = null)
    {
        string suffix = FlashSuffix(dtype, d);
        int variant = HopperBackwardVariantFor(d, h, kh, t);
        // flash_backward_hopper_v2's flags: 1 = CTAs largest work first, 2 = dQ by bulk reductions of fragment-order tiles,
        // 4 = dQ's product before dK's (reductions per element), 8 = (with 2, head size 64) the dQ tile in its own buffer, sent
        // while dK runs, dK waited for in the next block; 32 = CTAs largest work first within windows of flags >> 8 (kv head,
        // batch) pairs (variants 9 and 10: 3 and 7 so ordered).
        int flags = variant switch { 2 => 1, 3 => 3, 4 => 0, 5 => 5, 6 => 2, 7 => 11, 8 => 10, 9 => 34, 10 => 42, _ => 0 };
        if ((flags & 32) != 0) flags |= HopperBackwardWindow(CudaDevice.MultiprocessorCount, d, t) << 8;
        bool tiles = (flags & 2) != 0, separateTile = tiles && (flags & 8) != 0 && d == 64;
        long rows = (long)b * t * h;
        // dqacc: (B, T, H, D) for the reductions per element; for the bulk reductions (B, H, query blocks of 64, 64, D), the
        // last block padded (its rows past T receive zeros).
        long queryBlocks = (t + HopperBackwardQueries - 1) / HopperBackwardQueries;
        long accumulators = tiles ? (long)b * h * queryBlocks * HopperBackwardQueries * d : rows * d;
        ulong delta = Scratch(rows * sizeof(float));
        ulong dqacc = Scratch(accumulators * sizeof(float));
        uint grid = (uint)((rows * (d / 8) + 255) / 256);
        // The bias gradient on the way (columnSums, under FusedAttentionBiasGradient, with the tiles' cast): dv's column sums
        // are dO's (a query's probabilities sum to 1), which the first pass reads anyway and sums into a partial row a block;
        // dq's the tile cast sums, D / 64 partial rows of H D floats a (batch, query block); dk's are zero (softmax ignores a
        // shift common to a query's logits, which is all a key bias adds), so nothing is added for them. The first kernel and
        // the per-element dQ leave it to the caller (false).
        bool sums = columnSums is not null && Options.FusedAttentionBiasGradient && tiles && (long)h * d * sizeof(float) <= 48 * 1024;
        int preBlocks = sums ? PreSumsBlocks(h, d) : 0;
        ulong vPartial = sums ? Scratch((long)preBlocks * h * d * sizeof(float)) : 0;
        if (sums)
        {
            void** a1s = stackalloc void*[] { &po, &pd, &delta, &dqacc, &b, &t, &h, &so, &sd, &vPartial };
            Launch("flash_attention.cu", "flash_backward_pre_sums_" + suffix, (uint)preBlocks, 256, a1s, (uint)(h * d * sizeof(float)));
        }
        else
        {
            void** a1 = stackalloc void*[] { &po, &pd, &delta, &dqacc, &b, &t, &h, &so, &sd };
            Launch("flash_attention.cu", "flash_backward_pre_" + suffix, grid, 256, a1);   // delta; zeroes the first rows * d
        }
        if (accumulators > rows * d)
            Interop.CudaDriver.Check(Interop.CudaDriver.cuMemsetD8Async(dqacc + (ulong)(rows * d * sizeof(float)), 0, (nuint)((accumulators - rows * d) * sizeof(float)), Stream.Handle),
                "cuMemsetD8Async", "the padded dQ tiles");
        // 1,024 alignment + K and V tiles + two stages of Q and dO + the dS^T tile + two stages of lse and delta.
        int wgs = variant != 1 || Options.HopperAttentionWarpgroups is 0 ? 1 : Options.HopperAttentionWarpgroups, keys = HopperWarpgroupRows * wgs;
        uint shared = (uint)(1024 + 2 * keys * d * 2 + 4 * HopperBackwardQueries * d * 2
            + keys * HopperBackwardQueries * 2 + 4 * HopperBackwardQueries * sizeof(float)
            + (separateTile ? HopperBackwardQueries * d * sizeof(float) : 0));
        // flags 4 and 8 exist only in the v2x build of the second kernel (the v2 build keeps the code measured first); the v2t
        // build copies Q and dO by the tensor memory accelerator (HopperAttentionBackwardTensorMaps, where they fit).
        bool maps = variant != 1 && (flags & 12) == 0 && Options.HopperAttentionBackwardTensorMaps && BackwardTensorMapsFit(t, h, d, pq, sq, pd, sd);
        if (maps) shared += 16;   // the two stages' mbarriers
        string kernel = "flash_backward_hopper_" + (variant == 1 ? (wgs == 1 ? "wg1_" : "") : (flags & 12) != 0 ? "v2x_" : maps ? "v2t_" : "v2_") + suffix;
        PreferSharedMemory(HopperFile, kernel);
        var blocks = ((uint)((t + keys - 1) / keys), (uint)kh, (uint)b);
        long qRows = (long)b * queryBlocks * (d / 64);
        ulong qPartial = sums ? Scratch(qRows * h * d * sizeof(float)) : 0;
        if (variant == 1)
        {
            void** a2 = stackalloc void*[] { &pq, &pk, &pv, &pd, &pl, &delta, &dqacc, &pdk, &pdv, &t, &h, &kh, &sq, &sk, &sv, &sd, &sdk, &sdv, &sc };
            Launch(HopperFile, kernel, blocks, (uint)(HopperWarpgroupThreads * wgs), a2, shared);
        }
        else if (maps)
        {
            byte* buffer = stackalloc byte[2 * 128 + 64];
            byte* qmap = (byte*)(((nint)buffer + 63) & ~(nint)63), dmap = qmap + 128;
            // q and dout as (B T rows of H D values) in boxes of 64 rows by 64 values (the 128-byte swizzle); see the kernel's
            // comment for why these two are 2D where the forward's are 3D
            EncodeTensorMap(qmap, dtype, pq, h * d, b * t, sq.T, HopperBackwardQueries);
            EncodeTensorMap(dmap, dtype, pd, h * d, b * t, sd.T, HopperBackwardQueries);
            void** a2 = stackalloc void*[] { qmap, dmap, &pk, &pv, &pl, &delta, &dqacc, &pdk, &pdv, &t, &h, &kh, &sk, &sv, &sdk, &sdv, &sc, &flags };
            Launch(HopperFile, kernel, blocks, (uint)HopperWarpgroupThreads, a2, shared);
        }
        else
        {
            void** a2 = stackalloc void*[] { &pq, &pk, &pv, &pd, &pl, &delta, &dqacc, &pdk, &pdv, &t, &h, &kh, &sq, &sk, &sv, &sd, &sdk, &sdv, &sc, &flags };
            Launch(HopperFile, kernel, blocks, (uint)HopperWarpgroupThreads, a2, shared);
        }
        void** a3 = stackalloc void*[] { &dqacc, &pdq, &b, &t, &h, &sdq, &qPartial };
        if (tiles)   // one thread per 16 values (four float4) of the tiles
            Launch(HopperFile, "flash_backward_hopper_dq_cast_" + suffix, (uint)((accumulators / 16 + 255) / 256), 256, a3);
        else
            Launch("flash_attention.cu", "flash_backward_dq_cast_" + suffix, grid, 256, a3);
        FreeScratch(dqacc);
        FreeScratch(delta);
        if (!sums) return false;
        const string op = "AttentionBackward";
        var st = columnSums!.DType;
        ulong target = Ptr(columnSums), vTarget = target + (ulong)((long)(h + kh) * d * st.SizeInBytes());
        ColumnReduce(qPartial, (int)qRows, (long)h * d, h * d, st, target, op);
        if (h == kh) ColumnReduce(vPartial, preBlocks, (long)h * d, h * d, st, vTarget, op);
        else
        {
            // dO's sums per query head (H D, f32), then each kv head's group of them (G rows of D) into its dv columns.
            ulong perHead = Scratch((long)h * d * sizeof(float));
            Interop.CudaDriver.Check(Interop.CudaDriver.cuMemsetD8Async(perHead, 0, (nuint)((long)h * d * sizeof(float)), Stream.Handle), "cuMemsetD8Async", "dO's column sums");
            ColumnReduce(vPartial, preBlocks, (long)h * d, h * d, DType.F32, perHead, op);
            int group = h / kh;
            for (int j = 0; j < kh; j++)
                ColumnReduce(perHead + (ulong)((long)j * group * d * sizeof(float)), group, d, d, st, vTarget + (ulong)((long)j * d * st.SizeInBytes()), op);
            FreeScratch(perHead);
        }
        FreeScratch(qPartial);
        FreeScratch(vPartial);
        return true;
    }

    /// <summary>
    /// Whether q and dout can be read as 2D tensors by the tensor memory accelerator in the backward (v2t): heads D apart, rows
    /// holding every head and sequences exactly T rows apart (one (B T, H D) matrix each, as the fused QKV's q and a contiguous
    /// dO are), 16-byte aligned starts and row strides.
    /// </summary>
    private static bool BackwardTensorMapsFit(int t, int h, int d, ulong pq, Strides3 sq, ulong pd, Strides3 sd) =>
        sq.H == d && sq.T >= (long)h * d && sq.B == (long)t * sq.T && sd.H == d && sd.T >= (long)h * d && sd.B == (long)t * sd.T
        && pq % 16 == 0 && pd % 16 == 0 && sq.T * 2 % 16 == 0 && sd.T * 2 % 16 == 0;

    /// <summary>
    /// Blocks of 256 threads for flash_backward_pre_sums: about four an SM, their threads a multiple of the H D / 8 that a row
    /// of every head takes (so that each thread keeps one head's 8 columns for all its rows).
    /// </summary>
    private int PreSumsBlocks(int h, int d)
    {
        int threadsPerPass = h * (d / 8), gcd = threadsPerPass, other = 256;
        while (other != 0) (gcd, other) = (other, gcd % other);
        int unit = threadsPerPass / gcd;
        return (4 * CudaDevice.MultiprocessorCount + unit - 1) / unit * unit;
    }
}
