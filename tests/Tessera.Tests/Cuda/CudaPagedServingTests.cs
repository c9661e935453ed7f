using Tessera.Cuda;
using Tessera.Inference;
using Tessera.Inference.Paging;
using Tessera.Inference.Scheduling;
using Tessera.Inference.Serving;
using Tessera.Inference.Speculation;
using Tessera.Models;
using Tessera.Nn.Quantization;
using Tessera.Models.Tokenization;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Inference.Serving;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Serving on the GPU: the paged append and paged attention kernels against the CPU backend (F64 reference on the same
/// rounded inputs; f32 1e-5, bf16 2e-2 relative, as the dense attention tests), and the engine's batched, recorded decode
/// against the CPU engine and against one sequence at a time.
/// </summary>
[Collection("cuda")]
public sealed class CudaPagedServingTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    /// <summary>
    /// Sequence 0 prefills 37 rows after 20 cached positions, 1 and 2 decode after 300 and 1000, 3 is padding, 4 prefills
    /// its first 5 tokens. Blocks of 16 are scattered over the pool in a shuffled order.
    /// </summary>
    private PagedBatchLayout Batch(int blockSize, int[]? rowCounts = null, int[]? contextLengths = null) =>
        PagedBatchLayout.Scattered(Rng, blockSize, rowCounts ?? [37, 1, 1, 1, 5], contextLengths ?? [57, 301, 1001, 0, 5], spareBlocks: 7);

    [Theory]
    [InlineData(DType.F32, 8, 2, 64)]
    [InlineData(DType.BF16, 8, 2, 64)]
    [InlineData(DType.BF16, 32, 8, 128)]   // Llama 3 1B/8B: groups of 4
    [InlineData(DType.BF16, 14, 2, 64)]    // Qwen2 0.5B: groups of 7
    [InlineData(DType.F32, 4, 4, 8)]       // multi-head, a head narrower than a warp (the debug presets)
    public void PagedAttentionMatchesTheCpu(DType dtype, int h, int k, int d) => AssertPagedAttention(dtype, h, k, d, null, null);

    /// <summary>
    /// The CUDA-core decode kernel (<c>paged_decode</c>, <see cref="CudaBackendOptions.PagedDecodeTensorCores"/> off; F32 rows
    /// always take it) on the 16-bit cases above, now that the tensor-core kernel is the default for them.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 8, 2, 64)]
    [InlineData(DType.BF16, 32, 8, 128)]
    [InlineData(DType.F16, 14, 2, 64)]
    public void PagedAttentionOnCudaCoresMatchesTheCpu(DType dtype, int h, int k, int d)
    {
        using var cudaCores = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { PagedDecodeTensorCores = false });
        AssertPagedAttention(dtype, h, k, d, null, null, cudaCores);
    }

    /// <summary>
    /// The two ends of the key split: one sequence decoding after 3000 positions (8 CTAs without a split: the host splits its
    /// keys 33 ways, capped at 32, and the combine kernel merges them), and a 300-row prefill (enough CTAs: no split, one kernel).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, new[] { 1 }, new[] { 3001 })]
    [InlineData(DType.F32, new[] { 1, 1 }, new[] { 3001, 40 })]
    [InlineData(DType.BF16, new[] { 300 }, new[] { 300 })]
    // Rows of 40 and 700 keys beside one of 3001 in one grid of 32 splits: with PagedDecodeMinKeysPerSplit's floor of 64
    // keys the short rows fill 1 and 11 splits and the other splits of their columns are empty but still merged.
    [InlineData(DType.BF16, new[] { 1, 1, 1 }, new[] { 3001, 40, 700 })]
    public void PagedAttentionWithAndWithoutKeySplitsMatchesTheCpu(DType dtype, int[] rows, int[] lengths) =>
        AssertPagedAttention(dtype, 32, 8, 64, rows, lengths);

    /// <summary>
    /// Batch-1 rows split as the dense decode splits them (<see cref="CudaBackendOptions.PagedDecodeSplitSpan"/> and
    /// <see cref="CudaBackendOptions.PagedDecodeMinKeysPerSplit"/> of 16: a 648-key row in 32 splits of ~21 keys, merged by the
    /// last CTA in two batches of 16), alone and beside a 40-key row.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, new[] { 1 }, new[] { 648 })]
    [InlineData(DType.F32, new[] { 1, 1 }, new[] { 648, 40 })]
    public void PagedAttentionWithShortSplitsMatchesTheCpu(DType dtype, int[] rows, int[] lengths)
    {
        using var shortSplits = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { PagedDecodeSplitSpan = 16, PagedDecodeMinKeysPerSplit = 16 });
        AssertPagedAttention(dtype, 32, 8, 64, rows, lengths, shortSplits);
    }

    /// <summary>
    /// The tiled decode kernel (<see cref="CudaBackendOptions.PagedDecodeTiled"/>) against the CPU, as the default kernel above:
    /// the mixed batch (a prefill chunk on tensor cores beside decodes and padding), groups of 2, 4 and 7 (in registers for 8),
    /// head sizes 64 and 128, a 3001-key row split 32 ways and merged by the last CTA beside short rows that fill only some
    /// splits, in the default grid and with fewer, longer CTAs (<see cref="CudaBackendOptions.PagedDecodeCtasPerSm"/> = 2).
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 8, 2, 64, null, null, 8)]
    [InlineData(DType.BF16, 32, 8, 64, null, null, 8)]
    [InlineData(DType.BF16, 32, 8, 128, null, null, 8)]
    [InlineData(DType.BF16, 14, 2, 64, null, null, 8)]
    [InlineData(DType.BF16, 32, 8, 64, new[] { 1, 1, 1 }, new[] { 3001, 40, 700 }, 8)]
    [InlineData(DType.F32, 32, 8, 64, new[] { 1, 1 }, new[] { 3001, 40 }, 2)]
    [InlineData(DType.BF16, 32, 8, 64, null, null, 2)]
    public void PagedDecodeTiledMatchesTheCpu(DType dtype, int h, int k, int d, int[]? rows, int[]? lengths, int ctasPerSm)
    {
        using var tiled = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { PagedDecodeTensorCores = false, PagedDecodeTiled = true, PagedDecodeCtasPerSm = ctasPerSm });
        AssertPagedAttention(dtype, h, k, d, rows, lengths, tiled);
    }

    /// <summary>
    /// The serving shape of the tiled decode kernel: 64 decode rows of 1 to ~600 keys (block edges and several table blocks)
    /// on llama-1b's heads (32 query, 8 kv, D 64), bf16, with the default grid (three splits a row at 64 rows) and with one
    /// split (<see cref="CudaBackendOptions.PagedDecodeCtasPerSm"/> = 2), against the CPU.
    /// </summary>
    [Theory]
    [InlineData(8)]
    [InlineData(2)]
    public void PagedDecodeTiledAtBatch64MatchesTheCpu(int ctasPerSm)
    {
        using var tiled = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { PagedDecodeTensorCores = false, PagedDecodeTiled = true, PagedDecodeCtasPerSm = ctasPerSm });
        var rows = Enumerable.Repeat(1, 64).ToArray();
        var lengths = Enumerable.Range(0, 64).Select(b => 1 + b * 149 % 600).ToArray();
        AssertPagedAttention(DType.BF16, 32, 8, 64, rows, lengths, tiled);
    }

    /// <summary>
    /// The tensor-core decode kernel (<see cref="CudaBackendOptions.PagedDecodeTensorCores"/>: bf16 and f16) against the CPU on
    /// the cases of the kernels above: the mixed batch (decodes, padding, a 5-row prefill it computes row by row beside a
    /// 37-row chunk on the prefill tiles), query-head groups of 1, 2, 4, 7 and 8 (the rows of its m16 tile), head sizes 64 and
    /// 128, sliding windows (with and without a key split), a 3001-key row split 32 ways and merged by the last CTA beside
    /// short rows that fill only some splits, batch-1 splits of ~21 keys (fewer than a warp's 16-key slice of a tile times 2),
    /// and fewer, longer CTAs. Tolerance 2e-2 relative, as for the other 16-bit kernels: the inputs are the same 16-bit values
    /// and the products accumulate in fp32; only the softmax weights are rounded to 16 bits before the product with V
    /// (relative 2^-9 in bf16, as the tensor-core prefill rounds them), far below a wrong key, head, position or split (O(1)).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 32, 8, 64, null, null, 0, 0)]                              // llama-1b: groups of 4
    [InlineData(DType.BF16, 32, 8, 128, null, null, 0, 0)]                             // Llama 3 8B: groups of 4, D 128
    [InlineData(DType.F16, 32, 8, 64, null, null, 0, 0)]
    [InlineData(DType.F16, 16, 2, 128, null, null, 0, 0)]                              // groups of 8
    [InlineData(DType.BF16, 8, 8, 64, null, null, 0, 0)]                               // groups of 1
    [InlineData(DType.BF16, 8, 4, 128, null, null, 0, 0)]                              // groups of 2
    [InlineData(DType.BF16, 14, 2, 64, null, null, 0, 0)]                              // Qwen2 0.5B: groups of 7
    [InlineData(DType.BF16, 32, 8, 64, new[] { 1 }, new[] { 3001 }, 0, 0)]             // 32 splits, merged by the last CTA
    [InlineData(DType.F16, 32, 8, 128, new[] { 1, 1, 1 }, new[] { 3001, 40, 700 }, 0, 0)]
    [InlineData(DType.BF16, 32, 8, 64, null, null, 48, 0)]                             // a window across a tile's edge
    [InlineData(DType.BF16, 16, 2, 128, new[] { 1, 1, 2 }, new[] { 1001, 37, 300 }, 100, 0)]
    [InlineData(DType.BF16, 32, 8, 64, null, null, 0, 2)]                              // PagedDecodeCtasPerSm = 2
    public void PagedDecodeTensorCoresMatchTheCpu(DType dtype, int h, int k, int d, int[]? rows, int[]? lengths, int window, int ctasPerSm)
    {
        using var mma = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { PagedDecodeTensorCores = true, PagedDecodeCtasPerSm = ctasPerSm });
        AssertPagedAttention(dtype, h, k, d, rows, lengths, mma, window);
    }

    /// <summary>
    /// The tensor-core decode kernel with batch-1 splits of ~21 keys (<see cref="CudaBackendOptions.PagedDecodeSplitSpan"/> and
    /// <see cref="CudaBackendOptions.PagedDecodeMinKeysPerSplit"/> of 16: a 648-key row in 32 splits, most warps of a tile with
    /// no key), and at the serving shape: 64 decode rows of 1 to ~600 keys on llama-1b's heads in the default grid (one split
    /// at 64 rows) and with more splits (<see cref="CudaBackendOptions.PagedDecodeCtasPerSm"/> = 16), against the CPU
    /// (tolerance as above).
    /// </summary>
    /// <remarks>With <paramref name="stagedTable"/> the kernel looks its blocks up in a shared-memory copy of the table
    /// (<see cref="CudaBackendOptions.PagedDecodeStagedTable"/>), against the same CPU result.</remarks>
    [Theory]
    [InlineData(1, 0, false)]
    [InlineData(64, 0, false)]
    [InlineData(64, 16, false)]
    [InlineData(1, 0, true)]
    [InlineData(64, 0, true)]
    [InlineData(64, 16, true)]
    public void PagedDecodeTensorCoresAtBatch1And64MatchTheCpu(int sequences, int ctasPerSm, bool stagedTable)
    {
        var options = CudaBackendOptions.Default with { PagedDecodeTensorCores = true, PagedDecodeCtasPerSm = ctasPerSm, PagedDecodeStagedTable = stagedTable };
        if (sequences == 1) options = options with { PagedDecodeSplitSpan = 16, PagedDecodeMinKeysPerSplit = 16 };
        using var mma = new CudaBackend(Gpu.CudaDevice.Ordinal, options);
        var rows = Enumerable.Repeat(1, sequences).ToArray();
        var lengths = sequences == 1 ? new[] { 648 } : Enumerable.Range(0, sequences).Select(b => 1 + b * 149 % 600).ToArray();
        AssertPagedAttention(DType.BF16, 32, 8, 64, rows, lengths, mma);
    }

    /// <summary>
    /// Registers, local memory (spills) and CTAs per SM of the vectorized decode kernels (<c>paged_decode</c> and
    /// <c>paged_decode_tiled</c>, bf16, head sizes 64 and 128, register groups of 1 to 8, and <c>paged_decode_mma</c>) at the
    /// shared memory the host gives them, printed for the log (what decides how many CTAs of a decode grid run at once); not a pass/fail bar.
    /// </summary>
    [Fact]
    public void PagedDecodeKernelResourcesAreReported()
    {
        var module = Gpu.Kernels.Module("paged_attention.cu");
        foreach (var kernel in new[] { "paged_decode", "paged_decode_tiled" })
            foreach (var d in new[] { 64, 128 })
                foreach (var g in new[] { 1, 2, 4, 8 })
                {
                    int shared = PagedDecodeThreadsForReport / (d / 8) * g * (d + 2) * sizeof(float);   // (NG, G, D + 2) at bf16
                    var r = module.Resources($"{kernel}_bf16_d{d}_g{g}", PagedDecodeThreadsForReport, shared);
                    Console.WriteLine($"[paged decode kernel] {kernel}_bf16_d{d}_g{g}: {r.Registers} registers, {r.LocalBytes} bytes local, {shared} bytes shared, {r.CtasPerSm} CTAs per SM");
                }
        foreach (var d in new[] { 64, 128 })
        {
            // paged_decode_mma: its K/V tiles (PM_STAGES = 3 x 2 tiles of 64 positions; the warps' states reuse them).
            int shared = 3 * 2 * 64 * d * 2;
            var r = module.Resources($"paged_decode_mma_bf16_d{d}", PagedDecodeThreadsForReport, shared);
            Console.WriteLine($"[paged decode kernel] paged_decode_mma_bf16_d{d}: {r.Registers} registers, {r.LocalBytes} bytes local, {shared} bytes shared, {r.CtasPerSm} CTAs per SM");
        }
    }

    private const int PagedDecodeThreadsForReport = 128;   // PD_THREADS in paged_attention.cu

    private void AssertPagedAttention(DType dtype, int h, int k, int d, int[]? rows, int[]? lengths, CudaBackend? backend = null, int window = 0,
        double softCap = 0)
    {
        const int blockSize = 16;
        var gpu = backend ?? Gpu;
        var batch = Batch(blockSize, rows, lengths);
        int n = batch.Slots.Length;
        var (_, qv) = Random(dtype, 1.0, n, h + 2 * k, d);                 // a fused QKV activation: q is a strided view
        var (_, poolValues) = Random(dtype, 1.0, batch.PoolBlocks, blockSize, 2 * k, d);
        var q = Upload(gpu, qv, dtype, n, h + 2 * k, d);
        var pool = Upload(gpu, poolValues, dtype, batch.PoolBlocks, blockSize, 2 * k, d);
        var output = gpu.Allocate(new Shape(n, h, d), dtype);
        gpu.Fill(output, double.NaN);
        gpu.PagedAttention(q.Slice(1, 0, h), pool, batch.On(gpu), output, 1 / Math.Sqrt(d), window, softCap: softCap);

        var cpuQ = TestTensors.FromDoubles(_cpu, qv, DType.F64, n, h + 2 * k, d);
        var cpuPool = TestTensors.FromDoubles(_cpu, poolValues, DType.F64, batch.PoolBlocks, blockSize, 2 * k, d);
        var expected = _cpu.Allocate(new Shape(n, h, d), DType.F64);
        _cpu.PagedAttention(cpuQ.Slice(1, 0, h), cpuPool, batch.On(_cpu), expected, 1 / Math.Sqrt(d), window, softCap: softCap);
        AssertClose(TestTensors.ToDoubles(_cpu, expected), Download(gpu, output), dtype == DType.F32 ? 1e-5 : 2e-2,
            $"paged attention {dtype} H={h} K={k} D={d} window={window} cap={softCap}");
    }

    /// <summary>
    /// Gemma 2's soft cap (the generic kernel, the only paged one that caps: a capped call at D = 64 or 128 must not take the
    /// specialized decode or the prefill tiles) and heads of 256 (Gemma 2 2B/9B, Gemma 3), over the mixed batch (a 37-row
    /// prefill chunk, decodes, padding), with a window and a 3001-key row split and merged. Scores here are about +-1 (inputs
    /// in (-1, 1), scale 1/sqrt(D)); a cap of 0.5 bends them.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 8, 4, 256, null, null, 0, 0.5)]
    [InlineData(DType.BF16, 8, 4, 256, null, null, 0, 0.0)]
    [InlineData(DType.BF16, 32, 8, 64, null, null, 0, 0.5)]
    [InlineData(DType.F32, 16, 8, 128, new[] { 1, 1 }, new[] { 3001, 40 }, 0, 0.5)]
    [InlineData(DType.BF16, 8, 4, 256, null, null, 48, 0.5)]
    public void CappedOrWideHeadPagedAttentionMatchesTheCpu(DType dtype, int h, int k, int d, int[]? rows, int[]? lengths, int window, double softCap) =>
        AssertPagedAttention(dtype, h, k, d, rows, lengths, null, window, softCap);

    /// <summary>
    /// The last CTA's merge of a row's key splits with the loads of 16 splits issued before any is used
    /// (<see cref="CudaBackendOptions.PagedDecodeBatchedMerge"/>) against the merge that loads each split behind
    /// its weight: the same products summed in the same order, so the outputs are equal bit for bit. Decode rows of 3001, 40
    /// and 700 keys in one grid of 32 splits fill 32, 1 and 11 of them (two batches of 16, one, one).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F32)]
    public void PagedDecodeBatchedMergeEqualsTheSerialMergeBitForBit(DType dtype)
    {
        const int blockSize = 16, h = 32, k = 8, d = 64;
        var batch = Batch(blockSize, [1, 1, 1], [3001, 40, 700]);
        int n = batch.Slots.Length;
        var (_, qv) = Random(dtype, 1.0, n, h + 2 * k, d);
        var (_, poolValues) = Random(dtype, 1.0, batch.PoolBlocks, blockSize, 2 * k, d);
        using var serial = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { PagedDecodeBatchedMerge = false });
        using var batched = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { PagedDecodeBatchedMerge = true });
        double[] Attend(IBackend backend)
        {
            var q = Upload(backend, qv, dtype, n, h + 2 * k, d);
            var pool = Upload(backend, poolValues, dtype, batch.PoolBlocks, blockSize, 2 * k, d);
            var output = backend.Allocate(new Shape(n, h, d), dtype);
            backend.PagedAttention(q.Slice(1, 0, h), pool, batch.On(backend), output, 1 / Math.Sqrt(d));
            return Download(backend, output);
        }
        Assert.Equal(Attend(serial), Attend(batched));
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void PagedAppendWritesTheSameSlotsAsTheCpu(DType dtype)
    {
        const int blockSize = 16, h = 4, k = 2, d = 64;
        var batch = Batch(blockSize);
        int n = batch.Slots.Length;
        var (qkv, values) = Random(dtype, 1.0, n, h + 2 * k, d);
        var pool = Gpu.Allocate(new Shape(batch.PoolBlocks, blockSize, 2 * k, d), dtype);
        Gpu.Fill(pool, 0.5);
        Gpu.PagedAppend(qkv.Slice(1, h, 2 * k), pool, batch.On(Gpu));
        var cpuPool = _cpu.Allocate(new Shape(batch.PoolBlocks, blockSize, 2 * k, d), DType.F64);
        _cpu.Fill(cpuPool, 0.5);
        _cpu.PagedAppend(TestTensors.FromDoubles(_cpu, values, DType.F64, n, h + 2 * k, d).Slice(1, h, 2 * k), cpuPool, batch.On(_cpu));
        Assert.Equal(TestTensors.ToDoubles(_cpu, cpuPool), Download(pool));   // a copy: exact
    }

    /// <summary>
    /// The paged step's fused QKV op (norm, product, rotation of q and k at each row's position, append of k and v to the
    /// row's pool slot; one kernel for at most 4 rows): bit for bit the unfused GPU ops it replaces (the product, Rope at the
    /// positions, PagedAppend: the same per-row arithmetic in the same order), a padding row (slot -1) writing nothing; and
    /// within the dtype's tolerance of the CPU in f64 (<see cref="CudaTestBase.Tolerance"/>). Six and more rows take the other
    /// path: the product, then the rotation and the append in one launch with the rows' slots (rope.cu's rope_append_rows up to
    /// 128 rows, rope_append above), which <see cref="CudaBackend.RopePagedAppend"/> after the same product also gives.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 1, true, false)]    // a batch-1 decode step (llama: norm, no bias)
    [InlineData(DType.BF16, 4, true, true)]     // three sequences and a padding row, with bias
    [InlineData(DType.F32, 3, false, true)]     // no norm
    [InlineData(DType.BF16, 6, true, false)]    // above 4 rows: the product, then rope_append_rows to the slots
    [InlineData(DType.BF16, 64, true, false)]   // a 64-sequence decode step's rows
    [InlineData(DType.BF16, 150, true, false)]  // above RopeAppendRowKernelMaxRows (128): rope_append's item kernel
    public void FusedPagedQkvMatchesTheProductRotationAndAppend(DType dtype, int n, bool withNorm, bool withBias)
    {
        const double theta = 500000.0, eps = 1e-5;
        const int h = 8, kh = 2, d = 64, c = 1024, blockSize = 16, poolBlocks = 12, rows = (h + 2 * kh) * d;
        var positions = Enumerable.Range(0, n).Select(i => 5 + 37 * i).ToArray();
        var slots = Enumerable.Range(0, poolBlocks * blockSize).OrderBy(_ => Rng.Next()).Take(n).ToArray();
        if (n >= 4) (positions[n - 1], slots[n - 1]) = (0, -1);        // padding
        var (x, xv) = Random(dtype, 1, n, c);
        var (w, wv) = Random(dtype, 0.1, rows, c);
        var (bias, bv) = Random(dtype, 0.5, rows);
        var (nw, nwv) = Random(dtype, 1, c);
        var poolv = Stored(Enumerable.Range(0, poolBlocks * blockSize * 2 * kh * d).Select(_ => Rng.NextDouble() * 2 - 1).ToArray(), dtype);
        RmsNormPrologue? norm = withNorm ? new RmsNormPrologue(nw, eps) : null;
        PagedBatch BatchOn(IBackend backend) => new(backend.FromArray(new int[n], n, 1), backend.FromArray(Enumerable.Range(0, n + 1).ToArray(), n + 1),
            backend.FromArray(positions.Select(p => p + 1).ToArray(), n), backend.FromArray(slots, n), blockSize);

        var qkv = Poisoned(dtype, n, h + 2 * kh, d);
        var pool = Upload(poolv, dtype, poolBlocks, blockSize, 2 * kh, d);
        Gpu.MatMulRopePagedAppend(x, norm, w, withBias ? bias : null, qkv, h, pool, UploadInts(positions, n), BatchOn(Gpu), theta);

        var qkv2 = Poisoned(dtype, n, h + 2 * kh, d);
        var pool2 = Upload(poolv, dtype, poolBlocks, blockSize, 2 * kh, d);
        var flat = qkv2.Reshape(n, rows);
        if (norm is { } r) Gpu.RmsNormMatMul(x, r, w, flat, withBias ? bias : null);
        else Gpu.MatMul(x, w, flat, transposeB: true, bias: withBias ? bias : null);
        Gpu.Rope(qkv2.Reshape(n, 1, h + 2 * kh, d).Slice(2, 0, h + kh), UploadInts(positions, n), theta);
        Gpu.PagedAppend(qkv2.Slice(1, h, 2 * kh), pool2, BatchOn(Gpu));
        Assert.Equal(Download(qkv2), Download(qkv));
        Assert.Equal(Download(pool2), Download(pool));

        // RopePagedAppend (the path of a quantized or adapted QKV product) after the same product: the same bits again.
        var qkv3 = Poisoned(dtype, n, h + 2 * kh, d);
        var pool3 = Upload(poolv, dtype, poolBlocks, blockSize, 2 * kh, d);
        if (norm is { } r3) Gpu.RmsNormMatMul(x, r3, w, qkv3.Reshape(n, rows), withBias ? bias : null);
        else Gpu.MatMul(x, w, qkv3.Reshape(n, rows), transposeB: true, bias: withBias ? bias : null);
        Gpu.RopePagedAppend(qkv3, h, pool3, UploadInts(positions, n), BatchOn(Gpu), theta);
        Assert.Equal(Download(qkv2), Download(qkv3));
        Assert.Equal(Download(pool2), Download(pool3));

        var cpuQkv = _cpu.Allocate(new Shape(n, h + 2 * kh, d), DType.F64);
        var cpuPool = TestTensors.FromDoubles(_cpu, poolv, DType.F64, poolBlocks, blockSize, 2 * kh, d);
        _cpu.MatMulRopePagedAppend(TestTensors.FromDoubles(_cpu, xv, DType.F64, n, c),
            withNorm ? new RmsNormPrologue(TestTensors.FromDoubles(_cpu, nwv, DType.F64, c), eps) : null,
            TestTensors.FromDoubles(_cpu, wv, DType.F64, rows, c), withBias ? TestTensors.FromDoubles(_cpu, bv, DType.F64, rows) : null,
            cpuQkv, h, cpuPool, _cpu.FromArray(positions, n), BatchOn(_cpu), theta);
        AssertClose(TestTensors.ToDoubles(_cpu, cpuQkv), Download(qkv), Tolerance(dtype), $"MatMulRopePagedAppend {dtype} N={n}: qkv");
        AssertClose(TestTensors.ToDoubles(_cpu, cpuPool), Download(pool), Tolerance(dtype), $"MatMulRopePagedAppend {dtype} N={n}: pool");
    }

    /// <summary>
    /// Asynchronous scheduling's device pieces: input ids resolved in place from a previous argmax (negative ids name its
    /// rows) as on the CPU, and the pinned readback buffer returning what was copied when it was started, not what the
    /// stream wrote to the tensor afterwards.
    /// </summary>
    [Fact]
    public void SampledIdsResolveOnTheDeviceAndTheReadbackHoldsTheValuesOfItsStart()
    {
        int[] ids = [5, -1, 7, -3, -2, 0], sampled = [40, 41, 42];
        var gpuIds = UploadInts(ids, ids.Length);
        Gpu.ResolveSampledIds(gpuIds, UploadInts(sampled, sampled.Length));
        var cpuIds = _cpu.FromArray(ids, ids.Length);
        _cpu.ResolveSampledIds(cpuIds, _cpu.FromArray(sampled, sampled.Length));
        Assert.Equal([5, 40, 7, 42, 41, 0], Gpu.ToArray<int>(gpuIds));
        Assert.Equal(Gpu.ToArray<int>(gpuIds), _cpu.ToArray<int>(cpuIds));

        using var readback = Gpu.CreateReadbackBuffer(8);
        readback.Start(gpuIds);
        Gpu.Fill(gpuIds, 0);                                        // enqueued after the copy: not seen by it
        Assert.Equal([5, 40, 7, 42, 41, 0], readback.Wait().ToArray());
        Assert.Throws<ArgumentException>(() => readback.Start(UploadInts(new int[9], 9)));
    }

    /// <summary>A random <paramref name="preset"/> model (byte vocabulary, seed 9) in F32 on the CPU and the same weights on the GPU.</summary>
    private (TransformerConfig Config, Transformer OnCpu, Transformer OnGpu, float[] Weights) RandomModelOnBoth(string preset, int context)
    {
        var config = ModelPresets.Get(preset) with { VocabSize = 256, MaxSequenceLength = context };
        var onCpu = new Transformer(config, _cpu, DType.F32);
        Tessera.Tests.Nn.LayerCheck.Randomize(_cpu, onCpu.Parameters, new Random(9));
        var weights = _cpu.ToArray<float>(onCpu.Parameters.Values);
        var onGpu = new Transformer(config, Gpu, DType.F32);
        Gpu.CopyFromHost<float>(weights, onGpu.Parameters.Values);
        return (config, onCpu, onGpu, weights);
    }

    private static EngineOptions Options(bool graphs, bool advanceOnDevice = false, int draftTokens = 0, bool uniformDrafts = false) => new()
    {
        Cache = new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 8 << 20 },
        Scheduler = new SchedulerOptions { MaxBatch = 8, TokenBudget = 64 },
        RecordGraphs = graphs,
        AdvanceDecodeOnDevice = advanceOnDevice,
        Speculation = new SpeculationOptions { DraftTokens = draftTokens, MinNgram = 1, UniformDrafts = uniformDrafts },
    };

    /// <summary>
    /// Eight concurrent greedy requests (prompts of 1 to 40 tokens, so steps mix prefill chunks and decodes, and decode
    /// batches of 1 to 8 replay recorded graphs) on the GPU in F32 give the tokens of the dense CPU generator run one
    /// sequence at a time, also with <see cref="EngineOptions.AdvanceDecodeOnDevice"/> (its own recorded graphs, which read
    /// the previous argmax and advance the metadata; checked alone for a request whose batch-1 tail skips copies); in BF16 the
    /// recorded and the eager engine agree token for token.
    /// </summary>
    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    [InlineData("qwen3-debug")]   // the unfused paged path with q/k head norms
    [InlineData("gemma3-debug")]  // post-norms, GeGLU, per-layer windows and RoPE bases
    [InlineData("gemma2-debug")]  // attention and final-logit soft caps
    public async Task BatchedRecordedDecodingOnTheGpuMatchesOneSequenceAtATimeOnTheCpu(string preset)
    {
        var (config, onCpu, onGpu, weights) = RandomModelOnBoth(preset, context: 64);
        var prompts = Enumerable.Range(0, 8).Select(i => Enumerable.Range(0, 1 + 39 * i / 7).Select(j => (i * 37 + j * 11) % 256).ToArray()).ToArray();
        const int tokens = 20;
        var expected = prompts.Select(p => new TextGenerator(onCpu).Generate(p, new GenerationOptions { MaxNewTokens = tokens }).ToList()).ToList();

        foreach (bool advance in new[] { false, true })
            using (var engine = new InferenceEngine(onGpu, new ByteTokenizer(), Options(graphs: true, advance)))
            {
                var results = await EngineRequests.RunAll(engine, prompts, tokens);
                for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], results[i]);
                Assert.True(engine.ReplayedSteps > 0, "no decode step replayed a recorded graph");
                Assert.Equal(0, engine.Metrics.KvBlocksInUse);
                if (!advance) continue;
                var alone = await EngineRequests.RunAll(engine, [prompts[3]], 40);           // batch 1 across blocks of 16: most steps skip the copy
                Assert.Equal(new TextGenerator(onCpu).Generate(prompts[3], new GenerationOptions { MaxNewTokens = 40 }), alone[0]);
                Assert.True(engine.MetadataCopiesSkipped > 0, "no decode step skipped its metadata copy");
            }

        var bf16 = new Transformer(config, Gpu, DType.BF16);
        Gpu.CopyFromHost<float>(weights, bf16.Parameters.Masters!);
        bf16.Parameters.SyncValuesFromMasters();
        List<int>[] recorded, eager;
        using (var engine = new InferenceEngine(bf16, new ByteTokenizer(), Options(graphs: true))) recorded = await EngineRequests.RunAll(engine, prompts, tokens);
        using (var engine = new InferenceEngine(bf16, new ByteTokenizer(), Options(graphs: false))) eager = await EngineRequests.RunAll(engine, prompts, tokens);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(eager[i], recorded[i]);
    }

    /// <summary>
    /// Eight concurrent sampled requests (temperature, top-k, top-p mixed; seeded; some with log-probabilities, penalties or
    /// logit_bias, computed and added on the device) drawn on the GPU in F32 (recorded steps, scheduled asynchronously, also
    /// with the advance on the device) give the tokens the CPU engine draws, and with speculation by prompt lookup too. Both follow one rule (TokenSampling); the GPU's F32 logits differ from the CPU's in
    /// their last bits, which changes a draw only where two Gumbel scores lie that close (about 1e-6 of a draw's chance), so
    /// equality is expected.
    /// </summary>
    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    public async Task SampledRequestsDrawnOnTheGpuGiveTheCpusTokens(string preset)
    {
        var (_, onCpu, onGpu, _) = RandomModelOnBoth(preset, context: 96);
        var prompts = Enumerable.Range(0, 8).Select(i => Enumerable.Range(0, 4 * (i + 1) + 1).Select(j => (i * 37 + (j % (i + 1)) * 11) % 256).ToArray()).ToArray();
        Tessera.Inference.Sampling.SamplingOptions[] samplings =
        [
            new() { Temperature = 1.0 }, new() { Temperature = 0.7, TopP = 0.9 }, new() { Temperature = 1.2, TopK = 20 }, new() { Temperature = 0.4, TopK = 50, TopP = 0.8 },
        ];
        var requests = prompts.Select((p, i) => new CompletionRequest
        {
            // A step holding a request with log-probabilities, penalties or a logit bias is collected at once (its device buffers
            // are reused), so those requests stop after 10 tokens and the last steps, plain draws only, are scheduled ahead.
            Prompt = p, MaxTokens = i % 3 == 0 || i >= 5 ? 10 : 30, Seed = (ulong)(40 + i), Sampling = samplings[i % 4], TopLogprobs = i % 3 == 0 ? 2 : null,
            FrequencyPenalty = i == 5 ? 0.7 : 0, PresencePenalty = i == 6 ? 0.5 : 0,
            LogitBias = i == 7 ? new Dictionary<int, double> { [p[0]] = 2.0, [3] = -100 } : new Dictionary<int, double>(),
        }).ToArray();
        async Task<List<int>[]> Run(InferenceEngine engine) => await Task.WhenAll(requests.Select(async r =>
        {
            var tokens = new List<int>();
            await foreach (var e in engine.Submit(r).ReadAllAsync()) tokens.AddRange(e.Tokens);
            return tokens;
        }));
        List<int>[] expected;
        using (var cpu = new InferenceEngine(onCpu, new ByteTokenizer(), Options(graphs: false))) expected = await Run(cpu);
        foreach (var (advance, drafts) in new[] { (false, 0), (true, 0), (false, 4) })
        {
            using var engine = new InferenceEngine(onGpu, new ByteTokenizer(), Options(graphs: true, advance, draftTokens: drafts));
            var results = await Run(engine);
            for (int i = 0; i < requests.Length; i++) Assert.Equal(expected[i], results[i]);
            Console.WriteLine($"[sampled on the GPU] {preset}, advance {advance}, drafts {drafts}: {engine.PipelinedSteps} pipelined, {engine.ReplayedSteps} replayed, {engine.Metrics.AcceptedDraftTokens} of {engine.Metrics.DraftTokens} guesses kept");
            if (drafts == 0)
            {
                Assert.True(engine.ReplayedSteps > 0, "no sampled step replayed a recorded graph");
                Assert.True(engine.PipelinedSteps > 0, "no sampled step was scheduled ahead of the previous one's tokens");
            }
            Assert.Equal(0, engine.Metrics.KvBlocksInUse);
        }
    }

    /// <summary>
    /// Speculative decoding on the GPU (F32): eight concurrent greedy requests, whose prompts repeat themselves so that the
    /// drafter proposes from the first step, verify up to 4 drafts a step through the paged prefill and decode kernels (a
    /// sequence's draft rows are query rows after its decode token) and give the tokens of the dense CPU generator run one
    /// sequence at a time; with <see cref="SpeculationOptions.UniformDrafts"/> too, whose steps of decodes are recorded and
    /// replayed per bucket (1 + 4 rows a sequence); and with a draft model of the served weights, whose guesses are all right.
    /// </summary>
    [Theory]
    [InlineData("llama-debug")]
    [InlineData("gpt2-debug")]
    public async Task SpeculativeDecodingOnTheGpuMatchesOneSequenceAtATimeOnTheCpu(string preset)
    {
        var (config, onCpu, onGpu, weights) = RandomModelOnBoth(preset, context: 96);
        // Prompt i repeats a pattern of 1 + i tokens four times (and one more token of it).
        var prompts = Enumerable.Range(0, 8).Select(i => Enumerable.Range(0, 4 * (i + 1) + 1).Select(j => (i * 37 + (j % (i + 1)) * 11) % 256).ToArray()).ToArray();
        const int tokens = 40;
        var expected = prompts.Select(p => new TextGenerator(onCpu).Generate(p, new GenerationOptions { MaxNewTokens = tokens }).ToList()).ToList();
        // A draft model with the served weights on the GPU: every guess right, its passes recorded per bucket.
        var draft = new Transformer(config, Gpu, DType.F32);
        Gpu.CopyFromHost<float>(weights, draft.Parameters.Values);
        foreach (var (uniform, draftModel) in new[] { (false, (Transformer?)null), (true, null), (false, draft) })
        {
            using var engine = new InferenceEngine(onGpu, new ByteTokenizer(), Options(graphs: true, draftTokens: 4, uniformDrafts: uniform), draftModel);
            var results = await EngineRequests.RunAll(engine, prompts, tokens);
            for (int i = 0; i < prompts.Length; i++) Assert.Equal(expected[i], results[i]);
            Console.WriteLine($"[speculative decoding] {preset}, uniform {uniform}, draft model {draftModel is not null}: {engine.Metrics.DraftTokens} drafts verified, {engine.Metrics.AcceptedDraftTokens} accepted, " +
                $"{engine.Metrics.Steps} steps, {engine.UniformVerificationSteps} in a bucket's layout, {engine.ReplayedSteps} replayed");
            Assert.True(engine.Metrics.DraftTokens > 0, "no draft was verified");
            Assert.Equal(0, engine.Metrics.KvBlocksInUse);
            if (uniform) Assert.True(engine.UniformVerificationSteps > 0 && engine.ReplayedSteps > 0, "no uniform verification step ran, or none replayed");
            if (draftModel is not null) Assert.Equal(engine.Metrics.DraftTokens, engine.Metrics.AcceptedDraftTokens);
        }
    }

    /// <summary>
    /// Throughput of a decode step of 64 sequences of a llama-1b-shaped random model, printed for the log (not a pass/fail bar).
    /// The timed steps run between cuProfilerStart and cuProfilerStop, so that a profiler started with collection off
    /// (<c>ncu --profile-from-start off</c>) sees only steady recorded decode steps, none of the runner's warm-up or prefill.
    /// </summary>
    [Fact]
    public void DecodeStepOf64SequencesOnLlama1bShapeReportsItsTime() => DecodeStepOf64Sequences(Gpu, "");

    /// <summary>The same without <see cref="CudaBackendOptions.PagedDecodeStagedTable"/>: the decode attention's block table read from global memory.</summary>
    [Fact]
    public void DecodeStepOf64SequencesWithoutTheStagedTableReportsItsTime()
    {
        using var unstaged = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { PagedDecodeStagedTable = false });
        DecodeStepOf64Sequences(unstaged, ", PagedDecodeStagedTable=false");
    }

    /// <summary>The same with <see cref="CudaBackendOptions.RopeAppendRowKernelMaxRows"/> 0: rope.cu's item kernel for the rotation and the append.</summary>
    [Fact]
    public void DecodeStepOf64SequencesWithTheItemRopeAppendReportsItsTime()
    {
        using var items = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { RopeAppendRowKernelMaxRows = 0 });
        DecodeStepOf64Sequences(items, ", RopeAppendRowKernelMaxRows=0");
    }

    /// <summary>The same with int4 weights (<see cref="WeightQuantization.Int4"/>, groups of 128; the head and the token table in bf16).</summary>
    [Fact]
    public void DecodeStepOf64SequencesWithInt4WeightsReportsItsTime() => DecodeStepOf64Sequences(Gpu, ", int4 weights", WeightQuantization.Int4);

    internal static void DecodeStepOf64Sequences(CudaBackend backend, string label, WeightQuantization quantization = WeightQuantization.None)
    {
        var (_, cache, scheduler, runner) = Llama1bServing(backend, recordGraphs: true, quantization: quantization);
        using (cache)
        using (runner)
        {
            var step = PrefillAll(scheduler, runner);
            for (int i = 0; i < 3; i++) step = Step(scheduler, runner);      // eager, then recorded
            Assert.True(step.IsDecodeOnly);
            backend.Synchronize();
            backend.CudaDevice.MakeCurrent();                               // the profiler calls act on the current context
            Tessera.Cuda.Interop.CudaDriver.Check(Tessera.Cuda.Interop.CudaDriver.cuProfilerStart(), "cuProfilerStart");
            double ms = MedianMs(backend, () => Step(scheduler, runner), 20);
            Tessera.Cuda.Interop.CudaDriver.Check(Tessera.Cuda.Interop.CudaDriver.cuProfilerStop(), "cuProfilerStop");
            Assert.True(runner.RecordedGraphs > 0);
            Console.WriteLine($"[paged decode] llama-1b shape, bf16, 64 sequences at ~520 positions{label}: {ms:F3} ms/step, {64 / ms * 1000:F0} tokens/s (host included)");
        }
    }

    /// <summary>
    /// Where the serving steps' device time goes, printed for the log (not a pass/fail bar): a second backend with the op
    /// profiler (which runs eagerly, without graphs) times each kernel and product of a prefill step of 16 prompts of 512
    /// tokens (the 8,192-token budget), a mixed step (decodes plus a prefill chunk within DecodingStepTokens) and a decode step of 64
    /// sequences, on the llama-1b shape, with the specialized paged attention kernels (the tensor-core decode kernel by default),
    /// with the CUDA-core decode kernel (<see cref="CudaBackendOptions.PagedDecodeTensorCores"/> off), with the generic kernel
    /// (the A/B of <see cref="CudaBackendOptions.SpecializedPagedAttention"/>) and with the prefill chunks on flash_attention.cu's
    /// <c>paged_prefill</c> rather than the Hopper tile (the A/B of <see cref="CudaBackendOptions.HopperAttention"/>, which also
    /// moves the model's other attention calls, none here), and with rope.cu's item kernel for the rotation and the append (the
    /// A/B of <see cref="CudaBackendOptions.RopeAppendRowKernelMaxRows"/>). The recorded
    /// step is faster than the profiled sum (no launch gaps, no events).
    /// </summary>
    [Theory]
    [InlineData("specialized")]
    [InlineData("CUDA cores")]
    [InlineData("generic")]
    [InlineData("flash-attention-2 prefill")]
    [InlineData("item rope_append")]
    [InlineData("int4 weights")]
    public void ServingStepsOnLlama1bShapeReportTheirOps(string kernels)
    {
        var options = kernels switch
        {
            "item rope_append" => CudaBackendOptions.Default with { RopeAppendRowKernelMaxRows = 0 },
            "specialized" or "int4 weights" => CudaBackendOptions.Default,
            "CUDA cores" => CudaBackendOptions.Default with { PagedDecodeTensorCores = false },
            "flash-attention-2 prefill" => CudaBackendOptions.Default with { HopperAttention = false },
            _ => CudaBackendOptions.Default with { SpecializedPagedAttention = false },
        };
        using var profiled = new CudaBackend(Gpu.CudaDevice.Ordinal, options with { ProfileOps = true });
        Console.WriteLine($"[paged ops] {kernels}: {options.Format()}");
        var (_, cache, scheduler, runner) = Llama1bServing(profiled, recordGraphs: false, prompt: 512, decodingStepTokens: 512, tokenBudget: 8192,
            quantization: kernels == "int4 weights" ? WeightQuantization.Int4 : WeightQuantization.None);
        using (cache)
        using (runner)
        {
            var profiler = profiled.Profiler!;
            profiler.Reset();
            var step = Step(scheduler, runner);                             // no decodes yet: 16 prompts of 512 at the full budget
            Console.WriteLine($"[paged ops] prefill step: {step.Tokens} rows of {step.Sequences.Count} sequences");
            Console.WriteLine(profiler.Table());
            step = Step(scheduler, runner);
            profiler.Reset();
            step = Step(scheduler, runner);                                 // 16 decodes and a 496-token chunk
            Console.WriteLine($"[paged ops] mixed step: {step.Tokens} rows of {step.Sequences.Count} sequences");
            Console.WriteLine(profiler.Table());
            while (!step.IsDecodeOnly || step.Sequences.Count < 64) step = Step(scheduler, runner);
            profiler.Reset();
            for (int i = 0; i < 5; i++) step = Step(scheduler, runner);
            Console.WriteLine($"[paged ops] decode step: {step.Tokens} rows (64 sequences at ~{step.Sequences[0].Start} positions), 5 steps");
            Console.WriteLine(profiler.Table(5));
        }
    }

    /// <summary>
    /// The runner's warm-up times the QKV product (3072 x 2048 on llama-1b) at one row count of every bucket the backend shares
    /// algorithms over, from 8 rows (below, the products run as matrix-vector kernels) to the token budget, so the steps that
    /// follow time nothing: a prefill step at the full budget and two mixed steps add no line to the tuning log for that
    /// product. Without the warm-up only the budget's own row count would be timed before the first step.
    /// </summary>
    [Fact]
    public void TheRunnersWarmUpTimesEveryRowCountBucketBeforeTheFirstStep()
    {
        using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { TuneMatMulAlgorithms = true });
        var (_, cache, scheduler, runner) = Llama1bServing(gpu, recordGraphs: false, prompt: 500, decodingStepTokens: 512, tokenBudget: 8192);
        using (cache)
        using (runner)
        {
            List<string> Qkv() => gpu.MatMulTuningLog.Where(l => l.Contains(" N=3072 K=2048 ", StringComparison.Ordinal)).ToList();
            var timed = Qkv();
            foreach (var line in timed) Console.WriteLine($"[warm-up tuning] {line}");
            foreach (int rows in gpu.TimedRowCounts(8192).Where(r => r >= 8))
                Assert.True(timed.Any(l => l.Contains($"M={rows} ", StringComparison.Ordinal)),
                    $"the warm-up did not time {rows} rows of the QKV product:\n{string.Join("\n", timed)}");
            for (int i = 0; i < 3; i++) Step(scheduler, runner);
            Assert.Equal(timed, Qkv());
        }
    }

    /// <summary>
    /// Batch-1 decoding on the llama-1b shape (bf16, a 512-token prompt), printed for the log (not a pass/fail bar): per op,
    /// a paged step of the server beside the dense step of <c>tessera generate</c> at the same position (a profiled backend,
    /// eager), with the fused paged QKV op and without (<see cref="CudaBackendOptions.FusedPagedQkv"/>); then the paged step
    /// recorded, waited for each step (the engine without asynchronous scheduling) and pipelined (each step enqueued before
    /// the previous one is collected, its token read on the device, as the engine does), in ms per step with the host.
    /// </summary>
    [Fact]
    public void BatchOneDecodeStepOnLlama1bShapeReportsItsOpsBesideTheDenseStep()
    {
        foreach (bool fused in new[] { true, false })
        {
            using var profiled = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true, FusedPagedQkv = fused });
            var (model, cache, scheduler, runner) = Llama1bServing(profiled, recordGraphs: false, sequences: 1);
            using (cache)
            using (runner)
            {
                var step = PrefillAll(scheduler, runner, 1);
                for (int i = 0; i < 3; i++) step = Step(scheduler, runner);
                profiled.Profiler!.Reset();
                for (int i = 0; i < 5; i++) step = Step(scheduler, runner);
                Console.WriteLine($"[paged ops] batch-1 paged decode step at position {step.Sequences[0].Start}, FusedPagedQkv={fused}, 5 steps");
                Console.WriteLine(profiled.Profiler.Table(5));
                if (!fused) continue;
                var dense = model.CreateKvCache(batch: 1, maxSequence: 1024);
                var tokens = profiled.FromArray(Enumerable.Range(0, 512).Select(j => j % 1000).ToArray(), 1, 512);
                model.ForwardWithCache(tokens, dense, validateTokens: false);
                var one = profiled.FromArray(new[] { 7 }, 1, 1);
                for (int i = 0; i < 3 + step.Sequences[0].Start - 512 - 5; i++) model.ForwardWithCache(one, dense, validateTokens: false);
                profiled.Profiler.Reset();
                for (int i = 0; i < 5; i++)
                {
                    var logits = model.ForwardWithCache(one, dense, validateTokens: false);
                    profiled.ArgMax(logits.Reshape(1, logits.Size(2)).Slice(1, 0, model.Config.VocabSize), one.Reshape(1));
                }
                Console.WriteLine($"[dense ops] batch-1 dense decode step (tessera generate's) at position {dense.Length - 1}, 5 steps");
                Console.WriteLine(profiled.Profiler.Table(5));
            }
        }

        var (_, c2, s2, r2) = Llama1bServing(Gpu, recordGraphs: true, sequences: 1);
        using (c2)
        using (r2)
        {
            PrefillAll(s2, r2, 1);
            for (int i = 0; i < 3; i++) Step(s2, r2);                     // eager, then recorded
            double waited = MedianMs(() => Step(s2, r2), 30);
            // Pipelined: step N + 1 enqueued before step N's token reaches the host (the engine's asynchronous scheduling).
            void Pipelined(int steps)
            {
                var seq = s2.Running[0];
                var first = s2.Schedule();
                r2.Enqueue(first, withLogits: false);
                s2.Complete(first);
                seq.AppendUnresolved(0);
                for (int i = 0; i < steps; i++)
                {
                    var next = s2.Schedule();
                    r2.Enqueue(next, withLogits: false);
                    s2.Complete(next);
                    seq.AppendUnresolved(0);
                    r2.Collect(out var ids, out _);
                    s2.Resolve(seq, ids[0]);
                }
                r2.Collect(out var last, out _);
                s2.Resolve(seq, last[0]);
            }
            double PipelinedMs()
            {
                Pipelined(5);
                Gpu.Synchronize();
                var clock = System.Diagnostics.Stopwatch.StartNew();
                Pipelined(100);
                return clock.Elapsed.TotalMilliseconds / 101;
            }
            double pipelined = PipelinedMs();
            r2.AdvanceOnDevice = true;                                     // the A/B of EngineOptions.AdvanceDecodeOnDevice, same process
            double advanced = PipelinedMs();
            Assert.True(r2.RecordedGraphs > 0);
            Assert.True(r2.MetadataCopiesSkipped > 0);
            Console.WriteLine($"[paged decode] llama-1b shape, bf16, batch 1 at ~{s2.Running[0].ComputedTokens} positions: recorded step waited for {waited:F3} ms/step, " +
                $"pipelined {pipelined:F3} ms/step, pipelined with AdvanceOnDevice {advanced:F3} ms/step ({r2.MetadataCopiesSkipped} metadata copies skipped in 107 steps) (host included)");
        }
    }

    /// <summary>
    /// The paged decode kernels' device time in a decode step of 64, 32, 8 and 1 sequences on the llama-1b shape (bf16, 512-token
    /// prompts, profiled eagerly), printed for the log (not a pass/fail bar): the CUDA-core <c>paged_decode</c> (its splits fill one
    /// wave of resident CTAs) beside the tiled kernel (<see cref="CudaBackendOptions.PagedDecodeTiled"/>), the tensor-core kernel
    /// (<see cref="CudaBackendOptions.PagedDecodeTensorCores"/>, the default) and, above one sequence,
    /// beside twice as many splits (<see cref="CudaBackendOptions.PagedDecodeCtasPerSm"/> = 8, about the rule before one-wave
    /// grids; at one sequence the positions a split (PagedDecodeSplitSpan) decide, so those rows are left out there), and the
    /// tensor-core kernel with its block table read from global memory (the default stages it in shared memory) and at two and
    /// three waves (8 and 12 CTAs an SM), then each configuration's whole op table.
    /// </summary>
    [Theory]
    [InlineData(64)]
    [InlineData(32)]
    [InlineData(8)]
    [InlineData(1)]
    public void DecodeStepsReportThePagedDecodeKernelsTime(int sequences)
    {
        var configurations = new (string Name, CudaBackendOptions Options)[]
        {
            ("paged_decode (one wave of splits)", CudaBackendOptions.Default with { PagedDecodeTensorCores = false }),
            ("paged_decode_tiled (one wave of splits)", CudaBackendOptions.Default with { PagedDecodeTensorCores = false, PagedDecodeTiled = true }),
            ("paged_decode_mma (one wave of splits, the default)", CudaBackendOptions.Default),
            ("paged_decode, PagedDecodeCtasPerSm=8 (two waves)", CudaBackendOptions.Default with { PagedDecodeTensorCores = false, PagedDecodeCtasPerSm = 8 }),
            ("paged_decode_mma, PagedDecodeStagedTable=false", CudaBackendOptions.Default with { PagedDecodeStagedTable = false }),
            ("paged_decode_mma, PagedDecodeCtasPerSm=8 (two waves)", CudaBackendOptions.Default with { PagedDecodeCtasPerSm = 8 }),
            ("paged_decode_mma, PagedDecodeCtasPerSm=12 (three waves)", CudaBackendOptions.Default with { PagedDecodeCtasPerSm = 12 }),
        };
        var tables = new List<string>();
        foreach (var (name, options) in configurations.Where(c => sequences > 1 || !c.Name.Contains("waves)", StringComparison.Ordinal)))
        {
            using var profiled = new CudaBackend(Gpu.CudaDevice.Ordinal, options with { ProfileOps = true });
            var (_, cache, scheduler, runner) = Llama1bServing(profiled, recordGraphs: false, sequences: sequences);
            using (cache)
            using (runner)
            {
                var step = PrefillAll(scheduler, runner, sequences);
                for (int i = 0; i < 3; i++) step = Step(scheduler, runner);
                profiled.Profiler!.Reset();
                for (int i = 0; i < 5; i++) step = Step(scheduler, runner);
                Assert.True(step.IsDecodeOnly && step.Sequences.Count == sequences);
                var attention = profiled.Profiler.Totals().Where(r => r.Name.StartsWith("paged_decode", StringComparison.Ordinal)).ToList();
                Assert.NotEmpty(attention);
                foreach (var (kernel, calls, ms) in attention)
                    Console.WriteLine($"[paged decode kernel] {sequences} sequences at ~{step.Sequences[0].Start} positions, {name}: {kernel} {1000 * ms / calls:F1} us/call ({calls} calls)");
                tables.Add($"[paged ops] decode step of {sequences} sequences, {name}, 5 steps\n{profiled.Profiler.Table(5)}");
                foreach (var line in profiled.MatMulTuningLog.Where(l => l.Contains($"M={sequences} ", StringComparison.Ordinal)))
                    Console.WriteLine($"[matmul tuning] {name}: {line}");
            }
        }
        foreach (var table in tables) Console.WriteLine(table);
    }

    private static (Transformer Model, PagedKvCache Cache, Scheduler Scheduler, PagedModelRunner Runner) Llama1bServing(CudaBackend backend,
        bool recordGraphs, int prompt = 512, int decodingStepTokens = 8192, int tokenBudget = 8192, int sequences = 64,
        WeightQuantization quantization = WeightQuantization.None)
    {
        var config = ModelPresets.Get("llama-1b") with { MaxSequenceLength = 1024 };
        // Quantized: the weights left as allocated (zero nibbles, scales and zero points; the kernels' time does not depend on them).
        var model = quantization == WeightQuantization.None ? new Transformer(config, backend, DType.BF16)
            : PretrainedModel.Quantized(config, backend, DType.BF16, quantization: quantization);
        if (quantization == WeightQuantization.None) backend.Fill(model.Parameters.Values, 0.01);
        var cache = new PagedKvCache(backend, DType.BF16, config.Layers, config.EffectiveKvHeads, config.HeadSize,
            new PagedKvCacheOptions { BlockSize = 16, MemoryBytes = 4L << 30 });
        var scheduler = new Scheduler(cache, new SchedulerOptions { MaxBatch = 64, TokenBudget = tokenBudget, DecodingStepTokens = decodingStepTokens });
        var runner = new PagedModelRunner(model, cache, tokenBudget, 64, 1024, recordGraphs);
        foreach (var s in Enumerable.Range(0, sequences).Select(i => new Sequence(i, Enumerable.Range(0, prompt).Select(j => (i + j) % 1000).ToArray(), 1024)))
            scheduler.Add(s);
        return (model, cache, scheduler, runner);
    }

    /// <summary>Runs one scheduled step and appends each sampled token.</summary>
    internal static ScheduledStep Step(Scheduler scheduler, PagedModelRunner runner)
    {
        var step = scheduler.Schedule();
        runner.Run(step, withLogits: false, out var greedy, out _);
        scheduler.Complete(step);
        int m = 0;
        foreach (var s in step.Sequences) if (s.Samples) s.Sequence.Append(greedy[m++]);
        return step;
    }

    /// <summary>Steps until all <paramref name="sequences"/> sequences decode.</summary>
    internal static ScheduledStep PrefillAll(Scheduler scheduler, PagedModelRunner runner, int sequences = 64)
    {
        ScheduledStep step;
        do step = Step(scheduler, runner); while (!step.IsDecodeOnly || step.Sequences.Count < sequences);
        return step;
    }
}
