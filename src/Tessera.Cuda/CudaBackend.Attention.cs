using System.Runtime.InteropServices;
using Tessera.Tensors;

namespace Tessera.Cuda;

public sealed unsafe partial class CudaBackend
{
    private const int AttentionWarps = 4, AttentionTile = 32, AttentionMaxHeadSize = 256;   // MAXD in attention.cu

    // FlashAttention-2-style kernels (flash_attention.cu): 16-bit inputs, head size 64 or 128,
    // 16-byte aligned rows. Blocks of 64 queries x 64 keys, 4 warps; the decode kernel splits the
    // keys over CTAs when few queries meet many keys.
    private const int FlashBlock = 64, FlashThreads = 128, FlashDecodeMaxQueries = 16, FlashDecodeMinKeys = 256,
        FlashDecodeGroupRowsPerWarp = 4, FlashDecodeMaxSplits = 64, // DECODE_MAX_SPLITS in flash_attention.cu
        FlashDecodeGroupMinKeys = 1536;

    /// <summary>Whether the tensor-core kernels take this call: BF16/F16, D = 64 or 128, every row 16-byte aligned.</summary>
    private static bool FlashEligible(int d, params Tensor[] tensors) => (d == 64 || d == 128) && FlashLayout(tensors);

    /// <summary>
    /// Whether the per-query-head split decode (<c>flash_decode_*</c>, CUDA cores) takes this call: the layout of
    /// <see cref="FlashEligible"/> at D = 64, 128 or 256, with or without a soft cap (unlike the grouped decode, which takes
    /// neither).
    /// </summary>
    private static bool FlashDecodeEligible(int d, params Tensor[] tensors) => (d == 64 || d == 128 || d == 256) && FlashLayout(tensors);

    /// <summary>
    /// Whether the tensor-core forward of flash_attention.cu (<c>flash_forward_*</c>, mma.sync) takes this call: the layout of
    /// <see cref="FlashEligible"/> at D = 64, 128 or 256, with or without a soft cap. Calls that <see cref="FlashEligible"/>
    /// takes without a cap may go to the Hopper forward instead; the rest (a cap, heads of 256) come here.
    /// </summary>
    private static bool FlashForwardEligible(int d, params Tensor[] tensors) => (d == 64 || d == 128 || d == 256) && FlashLayout(tensors);

    /// <summary>BF16/F16 tensors whose base and every row stride keep 16-byte alignment.</summary>
    private static bool FlashLayout(Tensor[] tensors)
    {
        foreach (var x in tensors)
        {
            if (x.DType != DType.BF16 && x.DType != DType.F16) return false;
            // 8 elements = 16 bytes: base and every row stride must keep 16-byte alignment.
            if (Ptr(x) % 16 != 0 || x.Stride(0) % 8 != 0 || x.Stride(1) % 8 != 0 || x.Stride(2) % 8 != 0) return false;
        }
        return true;
    }

    private static string FlashSuffix(DType dtype, int d) => (dtype == DType.BF16 ? "bf16" : "f16") + "_d" + d;

    /// <summary>Whether a call of <paramref name="t"/> queries over <paramref name="s"/> keys takes the split decode kernels.</summary>
    private static bool DecodeShape(int t, int s) => t <= FlashDecodeMaxQueries && s >= FlashDecodeMinKeys;

    /// <summary>A sliding window as the kernels take it: 1 &lt;&lt; 30 stands for none (sums like key + window stay in int range).</summary>
    private static int KernelWindow(string op, int window) => window switch
    {
        < 0 => throw new ArgumentOutOfRangeException(nameof(window), window, $"CudaBackend.{op}: sliding window must be 0 (none) or positive"),
        0 => NoWindow,
        _ => Math.Min(window, NoWindow),
    };

    private const int NoWindow = 1 << 30;

    /// <summary>Key rows per tile of the tensor-core forward at heads of 256 (FLASH_FORWARD's BN for flash_forward_*_d256).</summary>
    private const int FlashWideKeys = 32;

    private void FlashForward(DType dtype, int b, int t, int s, int h, int kh, int d, ulong pq, ulong pk, ulong pv, ulong po, ulong pl,
        Strides3 sq, Strides3 sk, Strides3 sv, Strides3 so, float sc, ulong starts, int window, float cap)
    {
        void** args = stackalloc void*[] { &pq, &pk, &pv, &po, &pl, &t, &s, &h, &kh, &sq, &sk, &sv, &so, &sc, &starts, &window, &cap };
        int rows = FlashBlock; // query rows per CTA: 64 * FLASH_MT(D) in flash_attention.cu
        int keys = d == 256 ? FlashWideKeys : FlashBlock;   // key rows per tile: FLASH_FORWARD's BN
        uint shared = (uint)((rows + 4 * keys) * d * 2); // Q tile + two stages of K and V
        string kernel = "flash_forward_" + FlashSuffix(dtype, d);
        PreferSharedMemory("flash_attention.cu", kernel);
        Launch("flash_attention.cu", kernel, ((uint)((t + rows - 1) / rows), (uint)h, (uint)b), FlashThreads, args, shared);
    }

    /// <summary>
    /// The split kernel (flash_attention.cu) that decodes <paramref name="rowsPerKvHead"/> query rows a kv head (H / K x T)
    /// of head size <paramref name="d"/> against a cache of <paramref name="cacheLength"/> positions: the grouped one,
    /// <c>flash_decode_gqa_*_r{1,2,4}</c> (rows per warp), where the rows fit it and <see cref="DecodeGrouped"/> or the
    /// cache's length choose it, for heads of at most 128 and no <paramref name="softCap"/>; else the per-query-head <c>flash_decode_*</c>. What the decode attention launches, for
    /// reports of its resources.
    /// </summary>
    public string FlashDecodeKernel(DType dtype, int d, int rowsPerKvHead, int cacheLength, double softCap = 0)
    {
        string suffix = FlashSuffix(dtype, d);
        // The grouped kernel neither caps nor takes heads of 256 (its K/V chunks would pass 48 KB of static shared memory).
        if (softCap == 0 && d <= 128 && rowsPerKvHead <= 4 * FlashDecodeGroupRowsPerWarp && (DecodeGrouped ?? cacheLength >= FlashDecodeGroupMinKeys))
            return $"flash_decode_gqa_{suffix}_r{(rowsPerKvHead <= 4 ? 1 : rowsPerKvHead <= 8 ? 2 : 4)}";
        return "flash_decode_" + suffix;
    }

    private void FlashDecode(DType dtype, int b, int t, int s, int h, int kh, int d, ulong pq, ulong pk, ulong pv, ulong po, ulong pl,
        Strides3 sq, Strides3 sk, Strides3 sv, Strides3 so, float sc, ulong starts, int window, float cap)
    {
        string suffix = FlashSuffix(dtype, d);
        // The last CTA of each (b, h) merges the splits (one launch, not two) when the counters exist: they are made,
        // zeroed, outside any graph recording and stay zero between launches.
        ulong counters = DecodeCounters(b * h);
        // With device-side positions s is the cache's capacity; an inference scope may promise shorter sequences, and the
        // kernel is chosen for those (a decode step records a graph per bound: DecodeStep).
        string kernel = FlashDecodeKernel(dtype, d, h / kh * t, starts == 0 ? s : Math.Min(s, LongestCache), cap);
        if (kernel.StartsWith("flash_decode_gqa_", StringComparison.Ordinal))
        {
            // Grouped: one CTA per (split, kv head, b) serves the kv head's rows, so each cached row is read once.
            int gsplits = DecodeSplits(s, b * kh);
            ulong gpart = Scratch((long)b * h * t * gsplits * (d + 2) * sizeof(float));
            void** ag = stackalloc void*[] { &pq, &pk, &pv, &gpart, &counters, &po, &pl, &t, &s, &h, &kh, &sq, &sk, &sv, &so, &sc, &starts, &window };
            Launch("flash_attention.cu", kernel, ((uint)gsplits, (uint)kh, (uint)b), FlashThreads, ag, 0, dependent: true);
            if (counters == 0)
            {
                void** ac = stackalloc void*[] { &gpart, &po, &pl, &t, &h, &gsplits, &so };
                Launch("flash_attention.cu", "flash_decode_combine_" + suffix, (uint)(b * h * t), (uint)d, ac);
            }
            FreeScratch(gpart);
            return;
        }
        // Without device lengths, the keys split are those of the first query's window (all S without one); with them the
        // kernel divides its sequence's own range.
        int span = starts == 0 ? s - Math.Max(0, s - t - window + 1) : s;
        int splits = DecodeSplits(span, b * h);
        int keysPerSplit = (span + splits - 1) / splits;
        splits = (span + keysPerSplit - 1) / keysPerSplit;
        ulong part = Scratch((long)b * h * t * splits * (d + 2) * sizeof(float));
        void** a1 = stackalloc void*[] { &pq, &pk, &pv, &part, &t, &s, &h, &kh, &sq, &sk, &sv, &sc, &keysPerSplit, &starts, &counters, &po, &pl, &so, &window, &cap };
        Launch("flash_attention.cu", "flash_decode_" + suffix, ((uint)splits, (uint)h, (uint)b), FlashThreads, a1, 0, dependent: true);
        if (counters == 0)
        {
            void** a2 = stackalloc void*[] { &part, &po, &pl, &t, &h, &splits, &so };
            Launch("flash_attention.cu", "flash_decode_combine_" + suffix, (uint)(b * h * t), (uint)d, a2);
        }
        FreeScratch(part);
    }

    /// <summary>Warps a CTA of <c>flash_decode_out_*</c> (FDO_WARPS in flash_attention.cu), the most query heads a kv head
    /// it serves (FDO_MAX_R), and the CTAs of a cluster that share a kv head's attention (at most FDO_MAX_CLUSTER): 4 lets
    /// a GPC hold several clusters, and a warp of a 1,024-key cache one chunk.</summary>
    private const int DecodeOutWarps = 8, DecodeOutMaxHeadsPerKvHead = 8, DecodeOutClusterCtas = 4;

    /// <inheritdoc/>
    /// <remarks>Under <see cref="CudaBackendOptions.FusedDecodeAttentionOutput"/>, for BF16/F16 heads of 64 or 128 in the flash
    /// kernels' layout, at most 8 query heads a kv head, and a cache shorter than the grouped decode's threshold (its
    /// capacity, or the longest an inference scope promises): one launch of <c>flash_decode_out_*</c> (flash_attention.cu),
    /// a CTA per (segment of output rows, kv head, sequence), the segments in thread-block clusters that split the
    /// attention's keys and merge it through distributed shared memory. The segments are sized so the CTAs cover the SMs
    /// about once and each CTA's slice of the output weight fits its shared memory.</remarks>
    public bool TryAttentionOutputAccumulate(Tensor q, Tensor keyCache, Tensor valueCache, Tensor startPositions, Tensor outputWeight,
        Tensor? outputBias, Tensor target, double scale, int window = 0)
    {
        const string op = nameof(TryAttentionOutputAccumulate);
        if (!Options.FusedDecodeAttentionOutput || q.Rank != 4 || q.Size(1) != 1) return false;
        window = KernelWindow(op, window);
        CheckAttention(op, q, keyCache, valueCache, out int b, out _, out int s, out int h, out int kh, out int d);
        RequirePositions(op, startPositions, b);
        var dtype = q.DType;
        int r = h / kh, width = r * d;
        if ((d != 64 && d != 128) || r > DecodeOutMaxHeadsPerKvHead || !FlashLayout([q, keyCache, valueCache])) return false;
        if (CudaDevice.ComputeCapability.Major < 9) return false;   // thread-block clusters
        if (Math.Min(s, LongestCache) >= FlashDecodeGroupMinKeys) return false;   // each cluster reads the whole cache
        if (outputWeight.Rank != 2 || outputWeight.DType != dtype || outputWeight.Size(1) != h * d || outputWeight.Stride(1) != 1
            || outputWeight.Stride(0) % 8 != 0 || Ptr(outputWeight) % 16 != 0) return false;
        int c = outputWeight.Size(0);
        if (target.Rank != 2 || target.Size(0) != b || target.Size(1) != c || target.DType != dtype || target.Stride(1) != 1
            || !BiasFits(outputBias, dtype, c) || b == 0 || c == 0) return false;
        // Output rows a CTA: kh x b x segments CTAs at most about one wave (the segments a whole number of clusters of
        // DecodeOutClusterCtas, fewer for a short output), rows a multiple of the warps, shrunk until the CTA's slice of the
        // weight and its attention state fit shared memory (less 1 KB for the kernel's static shared memory); the segments
        // then padded to a whole cluster.
        int segments = Math.Max(1, CudaDevice.MultiprocessorCount / (kh * b));
        int cluster = Math.Min(DecodeOutClusterCtas, segments);
        segments = segments / cluster * cluster;
        int rows = ((c + segments - 1) / segments + DecodeOutWarps - 1) / DecodeOutWarps * DecodeOutWarps;
        long state = (2L * width + DecodeOutWarps * r * 32 + (long)(DecodeOutWarps + 1) * r * (d + 2) + 4) * sizeof(float);
        long limit = CudaDevice.MaxSharedMemoryPerBlockOptIn - 1024;
        while (rows > DecodeOutWarps && (long)rows * width * dtype.SizeInBytes() + state > limit) rows -= DecodeOutWarps;
        long shared = (long)rows * width * dtype.SizeInBytes() + state;
        if (shared > limit) return false;
        segments = (c + rows - 1) / rows;
        cluster = Math.Min(DecodeOutClusterCtas, segments);
        segments = (segments + cluster - 1) / cluster * cluster;
        // The segments' counters are the decode attention's (zero at rest, every launch leaves them zero, and the kernels
        // that use them run in stream order); 0 while a recording would need more of them: the caller runs the two ops.
        ulong counters = DecodeCounters(b * segments);
        if (counters == 0) return false;
        ulong part = Scratch((long)b * kh * c * sizeof(float));
        ulong pq = Ptr(q), pk = Ptr(keyCache), pv = Ptr(valueCache), starts = Ptr(startPositions), pw = Ptr(outputWeight),
            pb = PtrOrNull(outputBias), py = Ptr(target);
        var sq = Strides3.Of(op, "q", q); var sk = Strides3.Of(op, "keyCache", keyCache); var sv = Strides3.Of(op, "valueCache", valueCache);
        long ldo = outputWeight.Stride(0), ldy = target.Stride(0);
        float sc = (float)scale;
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &pq, &pk, &pv, &starts, &s, &pw, &pb, &py, &part, &counters, &h, &kh, &c, &rows, &sq, &sk, &sv, &ldo, &ldy, &sc, &window, &early };
        Launch("flash_attention.cu", "flash_decode_out_" + FlashSuffix(dtype, d), ((uint)segments, (uint)kh, (uint)b), DecodeOutWarps * 32, args,
            (uint)shared, dependent: true, clusterX: (uint)cluster);
        FreeScratch(part);
        return true;
    }

    /// <summary>
    /// Key splits of a decode launch over <paramref name="groups"/> CTAs per split: enough CTAs for two waves over the
    /// SMs, at least 64 keys each. With device-side lengths s is the cache's capacity; each CTA divides its sequence's
    /// actual length by the split count itself.
    /// </summary>
    private int DecodeSplits(int s, int groups)
    {
        int want = Math.Max(1, 2 * CudaDevice.MultiprocessorCount / Math.Max(1, groups));
        return Math.Clamp(Math.Min(want, (s + 63) / 64), 1, FlashDecodeMaxSplits);
    }

    /// <summary>
    /// Which split kernel decodes grouped-query heads: by default the grouped one (K/V read once per kv head) from
    /// <see cref="FlashDecodeGroupMinKeys"/> cached keys, the per-query-head one below (H200, Llama 1B heads: grouped 16.4 against
    /// 20.5 us at 2048 keys and 20.7 against 36.6 at 8192, per-head 11.2 against 12.5 us at a 768-key cache). With
    /// device-side positions the length compared is the capacity, or an inference scope's shorter bound. In the llama-1b
    /// decode step (H100, 768-position caches) the per-head kernel, launched dependent with its key rows batched, took the
    /// step to 1.152 ms a token against 1.176 with the grouped one (session 49). Session 50 moved the change from 2,048 to
    /// 1,536 positions by the same step (H100, ms a token, per-head against grouped): 1.140 against 1.164 over positions
    /// 768-1,024, 1.167 against 1.177 over 1,280-1,536, 1.187 against 1.176 over 1,536-1,792, 1.195 against 1.184 over 1,900-2,040.
    /// <see cref="CudaBackendOptions.DecodeAttention"/> forces one or the other.
    /// </summary>
    private bool? DecodeGrouped => Options.DecodeAttention switch
    {
        DecodeAttentionKernel.Grouped => true,
        DecodeAttentionKernel.PerQueryHead => false,
        _ => null,
    };

    private readonly HashSet<string> _sharedCarveout = [];

    /// <summary>Asks the driver for the largest shared-memory carveout for a kernel whose CTAs may be limited by shared memory
    /// (L1 keeps the rest; these kernels stage through shared memory and bypass L1), once per kernel. Measured neutral for
    /// the GPT-2 shapes, whose registers limit the CTAs per SM as much (docs/cuda-notes.md).</summary>
    private void PreferSharedMemory(string file, string kernel)
    {
        if (!_sharedCarveout.Add(kernel)) return;
        CudaDevice.MakeCurrent();
        Interop.CudaDriver.Check(Interop.CudaDriver.cuFuncSetAttribute(Kernels.Module(file).Function(kernel), Interop.CudaDriver.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100),
            "cuFuncSetAttribute", kernel + " (shared-memory carveout)");
    }

    private ulong _decodeCounters;
    private long _decodeCounterBytes;

    /// <summary>At least <paramref name="count"/> zeroed I32 split counters for the fused decode combine (at least 1,024), or 0
    /// when they would have to grow while a graph is being recorded (the caller then launches the separate combine kernel).</summary>
    private ulong DecodeCounters(int count) => ZeroedOnce(ref _decodeCounters, ref _decodeCounterBytes, (long)Math.Max(count, 1024) * sizeof(int));

    private void FlashBackward(DType dtype, int b, int t, int h, int kh, int d, ulong pq, ulong pk, ulong pv, ulong po, ulong pd, ulong pl,
        ulong pdq, ulong pdk, ulong pdv, Strides3 sq, Strides3 sk, Strides3 sv, Strides3 so, Strides3 sd, Strides3 sdq, Strides3 sdk, Strides3 sdv, float sc,
        int window)
    {
        string suffix = FlashSuffix(dtype, d);
        long rows = (long)b * t * h;
        ulong delta = Scratch(rows * sizeof(float));
        ulong dqacc = Scratch(rows * d * sizeof(float)); // fp32 dq, (B, T, H, D) contiguous, zeroed by the preprocess
        uint grid = (uint)((rows * (d / 8) + 255) / 256);
        void** a1 = stackalloc void*[] { &po, &pd, &delta, &dqacc, &b, &t, &h, &so, &sd };
        Launch("flash_attention.cu", "flash_backward_pre_" + suffix, grid, 256, a1);
        void** a2 = stackalloc void*[] { &pq, &pk, &pv, &pd, &pl, &delta, &dqacc, &pdk, &pdv, &t, &h, &kh, &sq, &sk, &sv, &sd, &sdk, &sdv, &sc, &window };
        // K, V tiles, two stages of Q and dO, the dS^T tile, two stages of lse and delta.
        uint shared = (uint)(2 * FlashBlock * d * 2 + 4 * FlashBlock * d * 2 + FlashBlock * FlashBlock * 2 + 4 * FlashBlock * sizeof(float));
        string kernel = "flash_backward_" + suffix;
        PreferSharedMemory("flash_attention.cu", kernel);
        Launch("flash_attention.cu", kernel, ((uint)((t + FlashBlock - 1) / FlashBlock), (uint)kh, (uint)b), FlashThreads, a2, shared);
        void** a3 = stackalloc void*[] { &dqacc, &pdq, &b, &t, &h, &sdq };
        Launch("flash_attention.cu", "flash_backward_dq_cast_" + suffix, grid, 256, a3);
        FreeScratch(dqacc);
        FreeScratch(delta);
    }

    public void Rope(Tensor x, int startPosition, RopeFrequencies frequencies, bool inverse = false)
    {
        if (startPosition < 0) throw new ArgumentOutOfRangeException(nameof(startPosition), $"CudaBackend.Rope: start position {startPosition} is negative");
        ArgumentNullException.ThrowIfNull(frequencies);
        if (x.Rank == 4) frequencies.RefuseMixedLongCall("CudaBackend.Rope", startPosition, startPosition + x.Size(1));
        RopeCore(x, startPosition, 0, frequencies, inverse);
    }

    public void Rope(Tensor x, Tensor startPositions, RopeFrequencies frequencies)
    {
        RequirePositions("Rope", startPositions, x.Rank == 4 ? x.Size(0) : -1);
        RopeCore(x, 0, Ptr(startPositions), frequencies, false);
    }

    /// <summary>The RopeFreq argument of the kernels (common.cuh), field for field.</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct RopeArgs
    {
        public ulong Table;                       // (R/2) F64 inverse frequencies on the device, R the rotated channels
        public ulong LongTable;                   // LongRoPE's (R/2) F64 table past LongOriginal positions, or 0
        public double Attention, Theta, DynamicFactor;
        public int DynamicOriginal, LongOriginal;
        public int Rotated, Padding;              // the channels of a head that rotate (partial rotary), or the head size
    }

    private readonly Dictionary<(RopeFrequencies Frequencies, int HeadSize), (Tensor Short, Tensor? Long)> _ropeTables = [];

    /// <summary>
    /// The kernel argument for <paramref name="frequencies"/> at head size <paramref name="d"/>: its table of R/2 doubles for
    /// the R channels that rotate (<see cref="RopeFrequencies.At"/>, the CPU backend's values; R = D unless partial rotary
    /// says fewer, the rest of each head passing through), and LongRoPE's long table (At past its original length),
    /// are copied to the device on first use and kept for the backend's life (a model has one description shared by its
    /// layers). The kernels pick the table from the length each call reaches. A recorded graph only reads tables that exist.
    /// </summary>
    private RopeArgs RopeArgsFor(RopeFrequencies frequencies, int d)
    {
        ArgumentNullException.ThrowIfNull(frequencies);
        frequencies.Validate(d);
        int rotated = frequencies.RotatedOf(d);
        if (!_ropeTables.TryGetValue((frequencies, d), out var tables))
        {
            if (_capturing)
                throw new InvalidOperationException("CudaBackend: RoPE frequencies used for the first time inside a graph recording; run the step once before recording it");
            Tensor Upload(double[] values)
            {
                var table = Allocate(new Shape(rotated / 2), DType.F64);
                CopyFromHost<double>(values, table);
                return table;
            }
            tables = (Upload(frequencies.At(d, 0)),
                frequencies.SwitchesToLong ? Upload(frequencies.At(d, frequencies.LongOriginalLength + 1)) : null);
            _ropeTables[(frequencies, d)] = tables;
        }
        return new RopeArgs
        {
            Table = Ptr(tables.Short), LongTable = PtrOrNull(tables.Long), Attention = frequencies.AttentionFactor, Theta = frequencies.Theta,
            DynamicFactor = frequencies.DynamicFactor, DynamicOriginal = frequencies.DynamicOriginalLength,
            LongOriginal = frequencies.SwitchesToLong ? frequencies.LongOriginalLength : 0, Rotated = rotated,
        };
    }

    private void RopeCore(Tensor x, int startPosition, ulong starts, RopeFrequencies frequencies, bool inverse)
    {
        var s = Strides3.Of("Rope", "x", x);
        int b = x.Size(0), t = x.Size(1), h = x.Size(2), d = x.Size(3);
        if (d % 2 != 0) throw new ArgumentException($"CudaBackend.Rope: head size {d} must be even");
        var freq = RopeArgsFor(frequencies, d);
        // In place, only the first R channels of each head change (partial rotary: the rest pass through), so the kernels
        // rotate heads of R channels at the heads' own strides.
        d = freq.Rotated;
        long pairs = (long)b * t * h * (d / 2);
        if (pairs == 0) return;
        ulong px = Ptr(x);
        int inv = inverse ? 1 : 0;
        if (starts == 0 && RopeAngles(frequencies, d, freq, startPosition + t) is ulong cs)
        {
            int rows = b * t, half = d / 2;
            void** rowArgs = stackalloc void*[] { &px, &rows, &t, &h, &half, &s.B, &s.T, &s.H, &startPosition, &cs, &inv };
            uint grid = (uint)Math.Min(rows, CudaDevice.MultiprocessorCount * 16);
            uint block = (uint)Math.Min(Threads, (h * half + 31) / 32 * 32);
            Launch("rope.cu", "rope_rows_" + Suffix(x.DType, "Rope"), grid, block, rowArgs);
            return;
        }
        void** args = stackalloc void*[] { &px, &b, &t, &h, &d, &s.B, &s.T, &s.H, &startPosition, &freq, &inv, &starts };
        Launch("rope.cu", "rope_" + Suffix(x.DType, "Rope"), GridFor(pairs), Threads, args);
    }

    private readonly Dictionary<(RopeFrequencies Frequencies, int HeadSize), (Tensor Table, int Positions)> _ropeAngles = [];

    /// <summary>
    /// The device table of (cos, sin) for positions [0, <paramref name="positions"/>) at head size <paramref name="d"/>
    /// (rope.cu's rope_angles: the rope kernel's own double arithmetic, so rope_rows gives its bits), or null where the
    /// table cannot serve: dynamic NTK or LongRoPE past its original length (the frequencies then depend on the call's
    /// length; the table holds the short ones), or a table that would have to grow while a graph is being recorded. Grown to a multiple of 4,096 positions, kept for the
    /// backend's life; the one it replaces is freed in stream order.
    /// </summary>
    private ulong? RopeAngles(RopeFrequencies frequencies, int d, RopeArgs freq, int positions)
    {
        if (frequencies.IsDynamic && positions > frequencies.DynamicOriginalLength) return null;
        if (frequencies.SwitchesToLong && positions > frequencies.LongOriginalLength) return null;
        if (_ropeAngles.TryGetValue((frequencies, d), out var have) && have.Positions >= positions) return Ptr(have.Table);
        if (_capturing) return null;
        int capacity = (int)Math.Min(int.MaxValue, ((long)positions + 4095) / 4096 * 4096);
        var table = Allocate(new Shape(checked(capacity * d)), DType.F32);
        ulong pt = Ptr(table);
        long n = (long)capacity * (d / 2);
        void** args = stackalloc void*[] { &pt, &capacity, &d, &freq };
        Launch("rope.cu", "rope_angles", GridFor(n), Threads, args);
        have.Table?.Storage.Dispose();
        _ropeAngles[(frequencies, d)] = (table, capacity);
        return pt;
    }

    private static void CheckAttention(string op, Tensor q, Tensor k, Tensor v, out int b, out int t, out int s, out int h, out int kh, out int d)
    {
        Strides3.Of(op, "q", q); Strides3.Of(op, "k", k); Strides3.Of(op, "v", v);
        b = q.Size(0); t = q.Size(1); h = q.Size(2); d = q.Size(3);
        s = k.Size(1); kh = k.Size(2);
        if (k.Size(0) != b || k.Size(3) != d || v.Shape != k.Shape)
            throw new ArgumentException($"CudaBackend.{op}: q {q.Shape}, k {k.Shape}, v {v.Shape} do not fit (B,T,H,D) and (B,S,K,D)");
        if (kh == 0 || h % kh != 0) throw new ArgumentException($"CudaBackend.{op}: query heads {h} must be a multiple of key/value heads {kh}");
        if (s < t) throw new ArgumentException($"CudaBackend.{op}: {s} keys for {t} queries; causal attention needs S >= T");
        if (d > AttentionMaxHeadSize) throw new NotSupportedException($"CudaBackend.{op}: head size {d} > {AttentionMaxHeadSize} is not supported by the attention kernels");
        if (q.DType != k.DType || q.DType != v.DType) throw new ArgumentException($"CudaBackend.{op}: q, k, v must share one dtype");
    }

    public void AttentionForward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor? logSumExp, double scale, int window = 0, double softCap = 0) =>
        AttentionForwardCore("AttentionForward", q, k, v, output, logSumExp, scale, null, window, softCap);

    public void AttentionForwardCached(Tensor q, Tensor keyCache, Tensor valueCache, Tensor startPositions, Tensor output, double scale,
        int window = 0, double softCap = 0) =>
        AttentionForwardCore("AttentionForwardCached", q, keyCache, valueCache, output, null, scale, startPositions, window, softCap);

    /// <summary>
    /// The soft cap as the kernels take it (Gemma 2's attn_logit_softcapping: each score s becomes cap tanh(s / cap); 0 for
    /// none), checked as the CPU backend checks it and as the kernels will read it (a float). The kernels that cap: the
    /// tensor-core forward and the split decode (flash_attention.cu), the simple kernels (attention.cu) and the generic paged
    /// kernel (paged_attention.cu); a capped call never takes the others (Hopper, the FlashAttention-2 backward, the grouped
    /// decode, the specialized paged kernels).
    /// </summary>
    internal static float KernelSoftCap(string op, double softCap)
    {
        float cap = (float)softCap;   // checked as the kernels see it: a cap past float's range or below its smallest is refused
        if (!(softCap >= 0) || !float.IsFinite(cap) || (softCap > 0 && cap == 0))
            throw new ArgumentOutOfRangeException(nameof(softCap), softCap, $"CudaBackend.{op}: soft cap must be 0 (none) or positive and finite in F32");
        return cap;
    }

    private void AttentionForwardCore(string op, Tensor q, Tensor k, Tensor v, Tensor output, Tensor? logSumExp, double scale, Tensor? startPositions,
        int window, double softCap)
    {
        float cap = KernelSoftCap(op, softCap);
        window = KernelWindow(op, window);
        CheckAttention(op, q, k, v, out int b, out int t, out int s, out int h, out int kh, out int d);
        RequireSameShape(op, q, "q", output, "output");
        RequireDType(op, "output", output, q.DType);
        var so = Strides3.Of(op, "output", output);
        if (logSumExp is not null)
        {
            RequireDType(op, "logSumExp", logSumExp, DType.F32);
            RequireContiguous(op, "logSumExp", logSumExp);
            if (logSumExp.NumElements != (long)b * h * t) throw new ArgumentException($"CudaBackend.{op}: logSumExp {logSumExp.Shape} must be (B, H, T) = ({b}, {h}, {t})");
        }
        if (startPositions is not null) RequirePositions(op, startPositions, b);
        if ((long)b * t * h == 0) return;
        var sq = Strides3.Of(op, "q", q); var sk = Strides3.Of(op, "k", k); var sv = Strides3.Of(op, "v", v);
        ulong pq = Ptr(q), pk = Ptr(k), pv = Ptr(v), po = Ptr(output), pl = PtrOrNull(logSumExp), starts = PtrOrNull(startPositions);
        float sc = (float)scale;
        if (DecodeShape(t, s) && FlashDecodeEligible(d, q, k, v, output))
        {
            FlashDecode(q.DType, b, t, s, h, kh, d, pq, pk, pv, po, pl, sq, sk, sv, so, sc, starts, window, cap);
            return;
        }
        if (cap == 0 && window == NoWindow && UsesHopperAttention && FlashEligible(d, q, k, v, output))
        {
            HopperForward(q.DType, b, t, s, h, kh, d, pq, pk, pv, po, pl, sq, sk, sv, so, sc, starts);
            return;
        }
        if (FlashForwardEligible(d, q, k, v, output))
        {
            FlashForward(q.DType, b, t, s, h, kh, d, pq, pk, pv, po, pl, sq, sk, sv, so, sc, starts, window, cap);
            return;
        }
        void** args = stackalloc void*[] { &pq, &pk, &pv, &po, &pl, &t, &s, &h, &kh, &d, &sq, &sk, &sv, &so, &sc, &starts, &window, &cap };
        uint shared = (uint)((2 * AttentionTile * (d + 1) + AttentionWarps * d) * sizeof(float));
        Launch("attention.cu", "attention_forward_" + Suffix(q.DType, op),
            ((uint)((t + AttentionWarps - 1) / AttentionWarps), (uint)h, (uint)b), AttentionWarps * 32, args, shared);
    }

    public void AttentionBackward(Tensor q, Tensor k, Tensor v, Tensor output, Tensor dOutput, Tensor logSumExp,
        Tensor dq, Tensor dk, Tensor dv, double scale, int window = 0, Tensor? columnSums = null, double softCap = 0)
    {
        const string op = "AttentionBackward";
        float cap = KernelSoftCap(op, softCap);
        window = KernelWindow(op, window);
        CheckAttention(op, q, k, v, out int b, out int t, out int s, out int h, out int kh, out int d);
        if (s != t) throw new ArgumentException($"CudaBackend.{op}: backward needs S = T, got S = {s}, T = {t}");
        RequireSameShape(op, q, "q", output, "output");
        RequireSameShape(op, q, "q", dOutput, "dOutput");
        RequireSameShape(op, q, "q", dq, "dq");
        RequireSameShape(op, k, "k", dk, "dk");
        RequireSameShape(op, k, "k", dv, "dv");
        RequireDType(op, "logSumExp", logSumExp, DType.F32);
        RequireContiguous(op, "logSumExp", logSumExp);
        if (columnSums is not null)
        {
            RequireContiguous(op, "columnSums", columnSums);
            if (columnSums.NumElements != (long)(h + 2 * kh) * d)
                throw new ArgumentException($"CudaBackend.{op}: columnSums {columnSums.Shape} must have (H + 2K) D = {(h + 2 * kh) * d} elements");
        }
        if ((long)b * t * h == 0) return;
        var sq = Strides3.Of(op, "q", q); var sk = Strides3.Of(op, "k", k); var sv = Strides3.Of(op, "v", v);
        var so = Strides3.Of(op, "output", output); var sd = Strides3.Of(op, "dOutput", dOutput);
        var sdq = Strides3.Of(op, "dq", dq); var sdk = Strides3.Of(op, "dk", dk); var sdv = Strides3.Of(op, "dv", dv);
        ulong pq = Ptr(q), pk = Ptr(k), pv = Ptr(v), po = Ptr(output), pd = Ptr(dOutput), pl = Ptr(logSumExp);
        ulong pdq = Ptr(dq), pdk = Ptr(dk), pdv = Ptr(dv);
        string suffix = Suffix(q.DType, op);
        float sc = (float)scale;
        long rows = (long)b * t * h;
        if (cap == 0 && FlashEligible(d, q, k, v, output, dOutput, dq, dk, dv))
        {
            bool summed = false;
            if (window == NoWindow && UsesHopperAttentionBackward)
                summed = HopperBackward(q.DType, b, t, h, kh, d, pq, pk, pv, po, pd, pl, pdq, pdk, pdv, sq, sk, sv, so, sd, sdq, sdk, sdv, sc, columnSums);
            else FlashBackward(q.DType, b, t, h, kh, d, pq, pk, pv, po, pd, pl, pdq, pdk, pdv, sq, sk, sv, so, sd, sdq, sdk, sdv, sc, window);
            if (columnSums is not null && !summed) AddHeadColumnSums(op, columnSums, dq, dk, dv);
            return;
        }
        ulong delta = Scratch(rows * sizeof(float));
        void** a1 = stackalloc void*[] { &po, &pd, &delta, &b, &t, &h, &d, &so, &sd };
        Launch("attention.cu", "attention_backward_delta_" + suffix, (uint)((rows + 3) / 4), 128, a1);
        void** a2 = stackalloc void*[] { &pq, &pk, &pv, &pd, &pl, &delta, &pdq, &t, &h, &kh, &d, &sq, &sk, &sv, &sd, &sdq, &sc, &window, &cap };
        uint sharedDq = (uint)((2 * AttentionTile * (d + 1) + 2 * AttentionWarps * d) * sizeof(float));
        Launch("attention.cu", "attention_backward_dq_" + suffix,
            ((uint)((t + AttentionWarps - 1) / AttentionWarps), (uint)h, (uint)b), AttentionWarps * 32, a2, sharedDq);
        void** a3 = stackalloc void*[] { &pq, &pk, &pv, &pd, &pl, &delta, &pdk, &pdv, &t, &h, &kh, &d, &sq, &sk, &sv, &sd, &sdk, &sdv, &sc, &window, &cap };
        uint sharedDkDv = (uint)((2 * AttentionTile * (d + 1) + 2 * AttentionTile + 2 * AttentionWarps * d) * sizeof(float));
        Launch("attention.cu", "attention_backward_dkdv_" + suffix,
            ((uint)((t + AttentionWarps - 1) / AttentionWarps), (uint)kh, (uint)b), AttentionWarps * 32, a3, sharedDkDv);
        FreeScratch(delta);
        if (columnSums is not null) AddHeadColumnSums(op, columnSums, dq, dk, dv);
    }

    /// <summary>
    /// sums ((H + 2K) D) += the column sums over (B, T) of dq's (H, D) columns, then dk's and dv's (K, D): the attention
    /// backward's bias gradient where its kernels did not take it on the way. One pass over the rows of the one gradient they
    /// are views of, in the model's layout; otherwise each of (B, T, heads, D) with its heads D apart is read as B T rows of
    /// heads D values (one pass when its batches are T rows apart, else one a batch).
    /// </summary>
    private void AddHeadColumnSums(string op, Tensor sums, params Tensor[] parts)
    {
        // The model's layout, dq, dk and dv side by side in the rows of one (B, T, H + 2K, D) gradient: one pass over those
        // rows, as the QKV product's own SumRows would make.
        var (dq, dk, dv) = (parts[0], parts[1], parts[2]);
        int width = (dq.Size(2) + dk.Size(2) + dv.Size(2)) * dq.Size(3);
        long size = dq.DType.SizeInBytes();
        if (dq.Stride(1) == width && dk.Stride(1) == width && dv.Stride(1) == width
            && dq.Stride(0) == (long)dq.Size(1) * width && dk.Stride(0) == dq.Stride(0) && dv.Stride(0) == dq.Stride(0)
            && dq.Stride(2) == dq.Size(3) && dk.Stride(2) == dq.Size(3) && dv.Stride(2) == dq.Size(3)
            && Ptr(dk) == Ptr(dq) + (ulong)(dq.Size(2) * dq.Size(3) * size) && Ptr(dv) == Ptr(dk) + (ulong)(dk.Size(2) * dq.Size(3) * size))
        {
            AddColumnSums(Ptr(dq), dq.DType, (long)dq.Size(0) * dq.Size(1), width, width, Ptr(sums), sums.DType, op);
            return;
        }
        ulong target = Ptr(sums);
        foreach (var x in parts)
        {
            int b = x.Size(0), t = x.Size(1), heads = x.Size(2), d = x.Size(3);
            if (x.Stride(2) != d) throw new NotSupportedException($"CudaBackend.{op}: columnSums needs each gradient's heads {d} apart, got {x.Stride(2)}");
            long ld = x.Stride(1), es = x.DType.SizeInBytes();
            if (x.Stride(0) == t * ld) AddColumnSums(Ptr(x), x.DType, (long)b * t, heads * d, ld, target, sums.DType, op);
            else
                for (int bi = 0; bi < b; bi++) AddColumnSums(Ptr(x) + (ulong)(bi * x.Stride(0) * es), x.DType, t, heads * d, ld, target, sums.DType, op);
            target += (ulong)((long)heads * d * sums.DType.SizeInBytes());
        }
    }
}
