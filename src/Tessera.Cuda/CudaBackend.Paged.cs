using Tessera.Tensors;
using Tessera.Cuda.Compilation;

namespace Tessera.Cuda;

// Paged KV-cache ops for serving (paged_attention.cu): the append of a step's keys and values to their slots, and
// attention of a flattened batch over block tables. Every sequence-dependent value is read from device memory, so a
// decode step of a given batch size can be recorded once and replayed with new metadata. A quantized pool (PagedKvPool: I8
// values or F8E4M3 codes, and F32 scales per position and head) is written by paged_append_i8 / paged_append_f8 and read by
// each attention kernel's _i8 / _f8 instantiation (the same grid, shared memory and arguments, the scales last), from the
// files' modules for that code (KernelLibrary.QuantizedKvModule); the fused QKV product steps aside for it.
public sealed unsafe partial class CudaBackend
{
    private const int PagedAttentionWarps = 4, PagedAttentionMaxGroup = 8, PagedAttentionMaxHeadSize = 256,   // PA_* in the kernel
        PagedAttentionMaxSplits = 32,
        PagedDecodeThreads = 128,                                       // PD_THREADS
        PagedPrefillMinRows = 8,                                        // a sequence with this many rows in a step runs on tensor cores
        PagedDecodeMaxCounters = 1024,                                  // DecodeCounters' first capacity
        PagedDecodeMmaKeys = 64,                                        // PM_KEYS: positions of a K or V tile of paged_decode_mma
        PagedDecodeMmaStages = 3,                                       // PM_STAGES: its K/V tiles in flight
        MaxStagedTableBlocks = 1024,                                    // the widest block table paged_decode_mma stages in shared memory
        PagedAppendWarps = 4;                                           // paged_append_q's CTA: a warp per (row, head)

    public void PagedAppend(Tensor keysAndValues, Tensor pool, PagedBatch batch, Tensor? poolScales = null)
    {
        const string op = nameof(PagedAppend);
        batch.Validate($"CudaBackend.{op}");
        if (keysAndValues.Rank != 3 || (keysAndValues.Stride(2) != 1 && keysAndValues.Size(2) > 1))
            throw new ArgumentException($"CudaBackend.{op}: keysAndValues must be (N, R, D) with a contiguous last dimension, got {keysAndValues.Shape}");
        RequireContiguous(op, "pool", pool);
        PagedKvPool.Validate($"CudaBackend.{op}", pool, poolScales, keysAndValues.DType);
        int n = keysAndValues.Size(0), r = keysAndValues.Size(1), d = keysAndValues.Size(2);
        if (pool.Rank != 4 || pool.Size(1) != batch.BlockSize || pool.Size(2) != r || pool.Size(3) != d)
            throw new ArgumentException($"CudaBackend.{op}: pool {pool.Shape} must be (Blocks, {batch.BlockSize}, {r}, {d}) for keysAndValues {keysAndValues.Shape}");
        if (batch.Rows != n)
            throw new ArgumentException($"CudaBackend.{op}: PagedBatch.Slots has {batch.Rows} rows but keysAndValues {keysAndValues.Shape} has {n}");
        long total = (long)n * r * d;
        if (total == 0) return;
        ulong pk = Ptr(keysAndValues), pp = Ptr(pool), ps = Ptr(batch.Slots);
        long rowStride = keysAndValues.Stride(0), headStride = keysAndValues.Stride(1);
        if (PagedKvPool.IsQuantized(pool.DType))
        {
            // A warp per (row, head): its scale is the row's largest magnitude, so the warp reduces before it writes.
            ulong psc = Ptr(poolScales!);
            long heads = (long)n * r;
            uint ctas = (uint)Math.Clamp((heads + PagedAppendWarps - 1) / PagedAppendWarps, 1, (long)CudaDevice.MultiprocessorCount * 32);
            void** quantized = stackalloc void*[] { &pk, &pp, &psc, &ps, &n, &r, &d, &rowStride, &headStride };
            Launch(KernelLibrary.QuantizedKvModule("paged_attention.cu", pool.DType), $"paged_append_{KvCode(pool.DType)}_{Suffix(keysAndValues.DType, op)}",
                (ctas, 1, 1), PagedAppendWarps * 32, quantized, 0, dependent: true);
            return;
        }
        void** args = stackalloc void*[] { &pk, &pp, &ps, &n, &r, &d, &rowStride, &headStride };
        Launch("paged_attention.cu", $"paged_append_b{keysAndValues.DType.SizeInBytes()}", (GridFor(total), 1, 1), Threads, args, 0, dependent: true);
    }

    /// <inheritdoc/>
    /// <remarks>For at most 4 rows of x, one matrix-vector kernel (gemv.cu's ROPE epilogue writing to the rows' slots instead
    /// of a dense cache's positions): the norm, the product, the rotation and the append in one launch, as the dense decode
    /// step does; otherwise the product, then <see cref="RopePagedAppend"/> (the rotation and the append in one launch for a
    /// 16-bit pool; a quantized pool's append in a launch of its own).</remarks>
    public void MatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, Tensor weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null)
    {
        const string op = nameof(MatMulRopePagedAppend);
        if (weight.Rank != 2) throw new ArgumentException($"CudaBackend.{op}: weight {weight.Shape} must be ((H+2K)·D, C)");
        var flat = PagedQkvRows(op, x, weight.Shape, qkv, queryHeads, pool, positions, batch, poolScales);
        var dtype = x.DType;
        bool fused = Options.FusedPagedQkv && FloatGemvFits(x, norm, weight) && BiasFits(bias, dtype, weight.Size(0)) && StreamRopeFits(qkv, pool, dtype);
        if (!fused)
        {
            if (norm is { } r) RmsNormMatMul(x, r, weight, flat, bias);
            else MatMul(x, weight, flat, transposeB: true, bias: bias);
            RopePagedAppend(qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
            return;
        }
        int m = x.Size(0), k = x.Size(1), pairs = weight.Size(0) / 2;
        ulong px = Ptr(x), pw = Ptr(weight), pb = PtrOrNull(bias), py = Ptr(qkv), pn = norm is { } nr ? Ptr(nr.Weight) : 0;
        float eps = norm is { } n2 ? (float)n2.Epsilon : 0f;
        int unit = norm is { UnitOffset: true } ? 1 : 0;
        long ldx = x.Stride(0), ldw = weight.Stride(0), ldy = weight.Size(0);
        var rope = PagedRopeArgs(qkv, queryHeads, pool, positions, batch, frequencies);
        int early = EarlyWeights ? 1 : 0;
        void** args = stackalloc void*[] { &px, &pw, &pb, &py, &pairs, &k, &ldx, &ldw, &ldy, &pn, &eps, &unit, &rope, &early };
        Launch("gemv.cu", $"gemv_stream_rope_{Suffix(dtype, op)}_m{m}", (GemvGrid(pairs), 1, 1), 256, args, GemvShared(m, k, dtype), dependent: true);
    }

    /// <summary>The ROPE epilogue's arguments for a paged pool: row m's position is positions[m] (Tn = 1), its keys and values
    /// go to pool slot slots[m], (slot, head) at slot 2K D + head D.</summary>
    private GemvRopeArgs PagedRopeArgs(Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies)
    {
        int d = qkv.Size(2), kv2 = pool.Size(2);
        return new GemvRopeArgs
        {
            Cache = Ptr(pool), Starts = Ptr(positions), Slots = Ptr(batch.Slots), Tokens = 1, QueryHeads = queryHeads, KvHeads = kv2 / 2,
            HeadSize = d, CacheB = 0, CacheS = (long)kv2 * d, CacheH = d, Frequencies = RopeArgsFor(frequencies, d),
        };
    }

    /// <inheritdoc/>
    /// <remarks>A 16-bit pool: one launch (rope.cu's <c>rope_append</c> writing to the rows' slots: the bits of
    /// <see cref="Rope(Tensor, Tensor, RopeFrequencies)"/> then <see cref="PagedAppend"/>). A quantized (I8 or F8E4M3) pool:
    /// the rotation, then <see cref="PagedAppend"/>'s quantizing kernel, which needs each head row's largest magnitude.</remarks>
    public void RopePagedAppend(Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies,
        Tensor? poolScales = null)
    {
        const string op = nameof(RopePagedAppend);
        ValidateRopePagedAppend(op, qkv, queryHeads, pool, positions, batch, poolScales);
        int n = qkv.Size(0), d = qkv.Size(2), kv2 = pool.Size(2);
        if (PagedKvPool.IsQuantized(pool.DType))
        {
            Rope(qkv.Reshape(n, 1, queryHeads + kv2, d).Slice(2, 0, queryHeads + kv2 / 2), positions, frequencies);
            PagedAppend(qkv.Slice(1, queryHeads, kv2), pool, batch, poolScales);
            return;
        }
        int h = queryHeads, kh = kv2 / 2, one = 1;
        var freq = RopeArgsFor(frequencies, d);
        if (n == 0) return;
        long sb = qkv.Stride(0), st = 0, sh = d, cb = 0, cs = (long)kv2 * d, ch = d;
        ulong pq = Ptr(qkv), pc = Ptr(pool), pp = Ptr(positions), ps = Ptr(batch.Slots);
        void** ropeArgs = stackalloc void*[] { &pq, &pc, &pp, &n, &one, &h, &kh, &d, &sb, &st, &sh, &cb, &cs, &ch, &freq, &ps };
        LaunchRopeAppend(op, qkv.DType, n, h + kv2, d, ropeArgs);
    }

    /// <summary>qkv (N, H+2K, D) checked as <see cref="RopePagedAppend"/> takes it, as the (N, (H+2K)·D) rows of x (N, C) times a weight of shape <paramref name="weight"/>.</summary>
    private Tensor PagedQkvRows(string op, Tensor x, Shape weight, Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, Tensor? poolScales)
    {
        if (qkv.Rank != 3 || x.Rank != 2 || qkv.Size(0) != x.Size(0) || (long)qkv.Size(1) * qkv.Size(2) != weight[0] || weight[1] != x.Size(1))
            throw new ArgumentException($"CudaBackend.{op}: x {x.Shape}, weight {weight} and qkv {qkv.Shape} do not fit (N, C), ((H+2K)·D, C), (N, H+2K, D)");
        ValidateRopePagedAppend(op, qkv, queryHeads, pool, positions, batch, poolScales);
        return qkv.Reshape(qkv.Size(0), weight[0]);
    }

    /// <summary>Whether qkv (N, H+2K, D) and the pool, both of <paramref name="dtype"/> (a quantized pool needs each head row's
    /// largest magnitude, which the stream does not have at hand), suit a stream's ROPE epilogue: D even.</summary>
    private static bool StreamRopeFits(Tensor qkv, Tensor pool, DType dtype) =>
        !PagedKvPool.IsQuantized(pool.DType) && qkv.Size(2) % 2 == 0 && qkv.DType == dtype && pool.DType == dtype;

    /// <summary>qkv (N, H+2K, D) contiguous, H = <paramref name="queryHeads"/>, over pool (Blocks, BlockSize, 2K, D) of its
    /// dtype (or quantized, with its scales), a row a slot of <paramref name="batch"/> and a position.</summary>
    private void ValidateRopePagedAppend(string op, Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, Tensor? poolScales)
    {
        ArgumentNullException.ThrowIfNull(qkv); ArgumentNullException.ThrowIfNull(pool); ArgumentNullException.ThrowIfNull(positions);
        batch.Validate($"CudaBackend.{op}");
        if (qkv.Rank != 3) throw new ArgumentException($"CudaBackend.{op}: qkv {qkv.Shape} must be (N, H+2K, D)");
        RequireContiguous(op, "qkv", qkv);
        RequireContiguous(op, "pool", pool);
        int n = qkv.Size(0), d = qkv.Size(2);
        if (pool.Rank != 4 || pool.Size(1) != batch.BlockSize || pool.Size(2) % 2 != 0 || pool.Size(3) != d)
            throw new ArgumentException($"CudaBackend.{op}: pool {pool.Shape} must be (Blocks, {batch.BlockSize}, 2K, {d})");
        int kv2 = pool.Size(2);
        if (queryHeads <= 0 || qkv.Size(1) != queryHeads + kv2)
            throw new ArgumentException($"CudaBackend.{op}: qkv {qkv.Shape} must hold {queryHeads} query heads and the {kv2} key and value heads of pool {pool.Shape}");
        if (batch.Rows != n) throw new ArgumentException($"CudaBackend.{op}: PagedBatch.Slots has {batch.Rows} rows but qkv {qkv.Shape} has {n}");
        RequirePositions(op, positions, n);
        PagedKvPool.Validate($"CudaBackend.{op}", pool, poolScales, qkv.DType);
        if (!PagedKvPool.IsQuantized(pool.DType) && pool.DType != qkv.DType)
            throw new ArgumentException($"CudaBackend.{op}: qkv is {qkv.DType} but pool is {pool.DType}");
    }

    public void PagedAttention(Tensor q, Tensor pool, PagedBatch batch, Tensor output, double scale, int window = 0, Tensor? poolScales = null,
        double softCap = 0)
    {
        const string op = nameof(PagedAttention);
        float cap = KernelSoftCap(op, softCap);
        int kernelWindow = KernelWindow(op, window);
        batch.Validate($"CudaBackend.{op}");
        if (q.Rank != 3 || (q.Stride(2) != 1 && q.Size(2) > 1))
            throw new ArgumentException($"CudaBackend.{op}: q must be (N, H, D) with a contiguous last dimension, got {q.Shape}");
        RequireContiguous(op, "pool", pool);
        RequireContiguous(op, "output", output);
        PagedKvPool.Validate($"CudaBackend.{op}", pool, poolScales, q.DType);
        RequireDType(op, "output", output, q.DType);
        if (output.Shape != q.Shape) throw new ArgumentException($"CudaBackend.{op}: output {output.Shape} must have the shape of q {q.Shape}");
        int n = q.Size(0), h = q.Size(1), d = q.Size(2);
        if (pool.Rank != 4 || pool.Size(1) != batch.BlockSize || pool.Size(2) % 2 != 0 || pool.Size(3) != d)
            throw new ArgumentException($"CudaBackend.{op}: pool {pool.Shape} must be (Blocks, {batch.BlockSize}, 2K, {d})");
        int k = pool.Size(2) / 2;
        if (h % k != 0) throw new ArgumentException($"CudaBackend.{op}: the {k} kv heads of pool {pool.Shape} must divide the {h} query heads of q {q.Shape}");
        if (d > PagedAttentionMaxHeadSize) throw new NotSupportedException($"CudaBackend.{op}: head size {d} is above the kernel's {PagedAttentionMaxHeadSize}");
        if (batch.Rows != n) throw new ArgumentException($"CudaBackend.{op}: PagedBatch.Slots has {batch.Rows} rows but q {q.Shape} has {n}");
        if (n == 0) return;
        // The query heads of one CTA: the largest divisor of the group size H / K that the kernel holds in registers.
        int group = h / k, g = Math.Min(group, PagedAttentionMaxGroup);
        while (group % g != 0) g--;
        int b = batch.Sequences, blockSize = batch.BlockSize, maxBlocks = batch.BlockTables.Size(1);
        int vector = 16 / q.DType.SizeInBytes();
        // A soft cap (Gemma 2) takes the generic kernel, the only paged one that caps.
        bool specialized = cap == 0 && Options.SpecializedPagedAttention && (d == 64 || d == 128) && Ptr(q) % 16 == 0 && Ptr(pool) % 16 == 0
            && q.Stride(0) % vector == 0 && q.Stride(1) % vector == 0;
        // Prefill chunks on tensor cores: 16-bit types, and only when some sequence can have PagedPrefillMinRows rows (every
        // sequence has at least one row, so a decode step, N = B, launches nothing here).
        bool tiles = specialized && (q.DType is DType.BF16 or DType.F16) && n - (b - 1) >= PagedPrefillMinRows;
        ulong pq = Ptr(q), pp = Ptr(pool), po = Ptr(output), pt = Ptr(batch.BlockTables), pst = Ptr(batch.QueryStarts), pl = Ptr(batch.ContextLengths);
        // A quantized pool: each kernel's _i8 or _f8 instantiation (the code before the type in its name), whose last argument
        // is the scales; the 16-bit kernels have one argument fewer and never read the extra pointer. They live in the files'
        // modules for that code (KernelLibrary.QuantizedKvModule), which a 16-bit cache never compiles.
        bool quantized = PagedKvPool.IsQuantized(pool.DType);
        string code = quantized ? KvCode(pool.DType) + "_" : "";
        string pagedFile = quantized ? KernelLibrary.QuantizedKvModule("paged_attention.cu", pool.DType) : "paged_attention.cu";
        string flashFile = quantized ? KernelLibrary.QuantizedKvModule("flash_attention.cu", pool.DType) : "flash_attention.cu";
        string hopperFile = quantized ? KernelLibrary.QuantizedKvModule(HopperFile, pool.DType) : HopperFile;
        ulong psc = poolScales is null ? 0 : Ptr(poolScales);
        long qn = q.Stride(0), qh = q.Stride(1);
        float sc = (float)scale;
        if (tiles)
        {
            int minRows = PagedPrefillMinRows;
            void** args = stackalloc void*[] { &pq, &pp, &po, &pt, &pst, &pl, &b, &h, &k, &blockSize, &maxBlocks, &qn, &qh, &sc, &minRows, &kernelWindow, &psc };
            if (UsesHopperPagedPrefill(window))
            {
                // The Hopper forward tile (flash_attention_hopper.cu's paged_prefill_hopper, the same arguments): query tiles of
                // 64 rows per warpgroup, as many warpgroups as the dense Hopper forward takes at this head size (one at 64: a
                // chunk of 512 rows or fewer still gives 8 tiles per head; two at 128, where one warpgroup's shared memory
                // (148 KB) would leave an SM four warps).
                int wgs = HopperForwardWarpgroups(d), rows = HopperWarpgroupRows * wgs;
                long hopperTiles = (n + rows - 1) / rows + Math.Min(b, n / PagedPrefillMinRows);
                string kernel = "paged_prefill_hopper_" + (wgs == 1 ? "wg1_" : "") + code + FlashSuffix(q.DType, d);
                PreferSharedMemory(hopperFile, kernel);
                Launch(hopperFile, kernel, ((uint)hopperTiles, (uint)h, 1), (uint)(HopperWarpgroupThreads * wgs), args,
                    HopperForwardShared(rows, d), dependent: true);
            }
            else
            {
                // Query tiles of 64 rows (FLASH_MT = 1): at most ceil(N / 64) plus one partial tile per sequence that qualifies.
                long tileCount = (n + FlashBlock - 1) / FlashBlock + Math.Min(b, n / PagedPrefillMinRows);
                uint shared = (uint)((FlashBlock + 4 * FlashBlock) * d * 2);  // Q tile + two stages of K and V
                string kernel = "paged_prefill_" + code + FlashSuffix(q.DType, d);
                PreferSharedMemory(flashFile, kernel);
                Launch(flashFile, kernel, ((uint)tileCount, (uint)h, 1), FlashThreads, args, shared, dependent: true);
            }
        }
        int maxRows = tiles ? PagedPrefillMinRows - 1 : int.MaxValue;
        // The most keys a row reads: its window, or the widest table without one (the host knows no context length).
        long span = Math.Min((long)maxBlocks * blockSize, window > 0 ? window : long.MaxValue);
        // The CUDA-core kernels' grid: every row, or with the tile kernel an upper bound of the other rows (fewer than
        // PagedPrefillMinRows per sequence), so that a prefill step does not launch a CTA per row only to skip it.
        int rowsHere = tiles ? (int)Math.Min(n, (long)(PagedPrefillMinRows - 1) * b) : n;
        long ctas = (long)rowsHere * (h / g);
        int splits;
        string decodeKernel = "";
        uint decodeShared = 0;
        bool stagedTable = false;                                    // paged_decode_mma's block table in shared memory (flags bit 1)
        if (specialized)
        {
            int gm = g <= 1 ? 1 : g <= 2 ? 2 : g <= 4 ? 4 : 8;
            if (Options.PagedDecodeTensorCores && q.DType is DType.BF16 or DType.F16)
            {
                // paged_decode_mma: the same arguments and grid; shared memory for its K/V tiles in flight, which the warps'
                // states (4, G, D + 2) reuse at the end.
                decodeKernel = $"paged_decode_mma_{code}{Suffix(q.DType, op)}_d{d}";
                decodeShared = (uint)Math.Max(PagedDecodeMmaStages * 2 * PagedDecodeMmaKeys * d * q.DType.SizeInBytes(),
                    PagedDecodeThreads / 32 * g * (d + 2) * sizeof(float));
                // With the staged table, max_blocks ints after the tiles (which the kernel addresses at their end; they are
                // larger than the states for its groups of up to 8). Up to 1,024 blocks (4 KB: 16,384 positions in blocks of
                // 16), so that the tables never cost the D = 64 kernel its fourth CTA on an SM (4 x 53 KB of 227).
                stagedTable = Options.PagedDecodeStagedTable && maxBlocks <= MaxStagedTableBlocks;
                if (stagedTable) decodeShared += (uint)maxBlocks * sizeof(int);
                PreferSharedMemory(pagedFile, decodeKernel);
                AllowDynamicSharedMemory(pagedFile, decodeKernel, decodeShared);   // before the occupancy query
            }
            else
            {
                // paged_decode_tiled takes the same arguments, grid and shared memory.
                decodeKernel = $"{(Options.PagedDecodeTiled ? "paged_decode_tiled_" : "paged_decode_")}{code}{Suffix(q.DType, op)}_d{d}_g{gm}";
                decodeShared = (uint)(PagedDecodeThreads / (d / vector) * g * (d + 2) * sizeof(float));   // (NG, G, D + 2)
            }
            // As many whole splits as fit one wave of resident CTAs (PagedDecodeCtasPerSm per SM; by default as many as the
            // kernel's occupancy allows), at least one, each at least PagedDecodeSplitSpan (default 64) positions of the span:
            // every split costs its CTA's prologue and a merge, so a grid past one wave only adds them (measured: 64 sequences
            // of ~520 positions, 59.9 us a layer at 3 splits, 54.3 at 2, 43.8 at 1).
            int resident = Options.PagedDecodeCtasPerSm > 0 ? Options.PagedDecodeCtasPerSm : ResidentCtas(pagedFile, decodeKernel, decodeShared);
            splits = PagedDecodeSplits(resident, CudaDevice.MultiprocessorCount, ctas, span, Options.PagedDecodeSplitSpan);
        }
        else
            // Split the keys when the rows and head groups would leave SMs idle (decoding a few long sequences): enough CTAs for
            // two waves of the SMs, each split at least 64 positions of the span.
            splits = (int)Math.Clamp(Math.Min((2L * CudaDevice.MultiprocessorCount + ctas - 1) / ctas, (span + 63) / 64),
                1, PagedAttentionMaxSplits);
        var partial = splits > 1 ? ScratchTensor(new Shape(splits, rowsHere, h, d + 2), DType.F32) : null;   // (S, X, H, D + 2) states
        // The specialized kernel merges its own splits (the last CTA of a row's head group) when the counters exist, one per
        // (row, head group): a decode step's (up to 1,024 of them, so the shared counter buffer is never regrown under a
        // recorded graph); a prefill step keeps the combine launch.
        ulong counters = specialized && partial is not null && ctas <= PagedDecodeMaxCounters ? DecodeCounters((int)ctas) : 0;
        try
        {
            ulong pw = partial is null ? 0 : Ptr(partial);
            if (specialized)
            {
                // The last argument: paged_decode's batched_merge, paged_decode_mma's flags (bit 0 the same, bit 1 the staged table).
                int minChunk = Options.PagedDecodeMinKeysPerSplit, batchedMerge = (Options.PagedDecodeBatchedMerge ? 1 : 0) | (stagedTable ? 2 : 0);
                void** args = stackalloc void*[] { &pq, &pp, &po, &pw, &counters, &pt, &pst, &pl, &b, &n, &h, &k, &g, &blockSize, &maxBlocks, &qn, &qh, &sc, &maxRows, &kernelWindow, &minChunk, &batchedMerge, &psc };
                Launch(pagedFile, decodeKernel, ((uint)rowsHere, (uint)(h / g), (uint)splits), PagedDecodeThreads,
                    args, decodeShared, dependent: true);
            }
            else
            {
                void** args = stackalloc void*[] { &pq, &pp, &po, &pw, &pt, &pst, &pl, &b, &n, &h, &k, &d, &g, &blockSize, &maxBlocks, &qn, &qh, &sc, &kernelWindow, &cap, &psc };
                uint shared = (uint)(PagedAttentionWarps * g * (d + 2) * sizeof(float));
                Launch(pagedFile, "paged_attention_" + code + Suffix(q.DType, op), ((uint)n, (uint)(h / g), (uint)splits), PagedAttentionWarps * 32,
                    args, shared, dependent: true);
            }
            if (partial is not null && counters == 0)
            {
                // Block x merges row x of the kernel above (the same rows, found the same way: rows the tile kernel wrote are
                // left alone).
                void** combine = stackalloc void*[] { &pw, &po, &splits, &n, &h, &d, &pst, &b, &maxRows };
                Launch("paged_attention.cu", "paged_attention_combine_" + Suffix(q.DType, op), ((uint)rowsHere, (uint)h, 1), (uint)Math.Min(256, (d + 31) / 32 * 32),
                    combine, 0, dependent: true);
            }
        }
        finally
        {
            partial?.Storage.Dispose();                                  // stream-ordered: freed after the kernels that use it
        }
    }

    /// <summary>The kernels' name for a quantized pool's code (FOR_KV_CODES in common.cuh): i8 for I8, f8 for F8E4M3.</summary>
    private static string KvCode(DType poolDType) => poolDType == DType.I8 ? "i8" : "f8";

    /// <summary>
    /// Whether <see cref="PagedAttention"/> runs its prefill chunks (sequences of at least 8 rows in a step, 16-bit types,
    /// head size 64 or 128) on the Hopper forward tile (flash_attention_hopper.cu's <c>paged_prefill_hopper</c>) rather than
    /// flash_attention.cu's <c>paged_prefill</c>: as <see cref="UsesHopperAttention"/> (the option on, a compute capability
    /// 9.0 device, the file compiled), and without a sliding window (the Hopper tile masks none).
    /// </summary>
    public bool UsesHopperPagedPrefill(int window) => KernelWindow(nameof(UsesHopperPagedPrefill), window) == NoWindow && UsesHopperAttention;

    /// <summary>
    /// The key splits of a paged decode grid of <paramref name="columns"/> (row, head group) CTAs per split: as many as fit one
    /// wave of <paramref name="residentPerSm"/> CTAs on each of <paramref name="sms"/> SMs, rounded down, at least 1, at most
    /// one per <paramref name="splitSpan"/> positions of the <paramref name="span"/> a row may read, and at most 32.
    /// </summary>
    internal static int PagedDecodeSplits(int residentPerSm, int sms, long columns, long span, int splitSpan) =>
        (int)Math.Clamp(Math.Min(Math.Max(1, (long)residentPerSm * sms / columns), (span + splitSpan - 1) / splitSpan), 1, PagedAttentionMaxSplits);

    /// <summary>CTAs of a paged decode kernel that fit one SM at <paramref name="shared"/> bytes of dynamic shared memory (the
    /// occupancy calculator's answer, asked once per kernel and size).</summary>
    private int ResidentCtas(string module, string kernel, uint shared)
    {
        if (!_residentCtas.TryGetValue((kernel, shared), out int ctas))
            _residentCtas[(kernel, shared)] = ctas = Math.Max(1, Kernels.Module(module).ResidentCtas(kernel, PagedDecodeThreads, (int)shared));
        return ctas;
    }

    private readonly Dictionary<(string Kernel, uint Shared), int> _residentCtas = new();
    private readonly Dictionary<string, uint> _dynamicSharedAllowed = new();

    /// <summary>Lets <paramref name="kernel"/> take <paramref name="bytes"/> of dynamic shared memory (past 48 KB less its static
    /// shared memory it must ask), so that the occupancy calculator and the launch see the same limit; asked again only for
    /// more than before.</summary>
    private void AllowDynamicSharedMemory(string file, string kernel, uint bytes)
    {
        if (_dynamicSharedAllowed.TryGetValue(kernel, out uint allowed) && allowed >= bytes) return;
        _dynamicSharedAllowed[kernel] = bytes;
        CudaDevice.MakeCurrent();
        Interop.CudaDriver.Check(Interop.CudaDriver.cuFuncSetAttribute(Kernels.Module(file).Function(kernel), Interop.CudaDriver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (int)bytes),
            "cuFuncSetAttribute", kernel + " (dynamic shared memory)");
    }
}
