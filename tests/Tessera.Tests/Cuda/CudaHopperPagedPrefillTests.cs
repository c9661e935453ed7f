using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Serving's prefill chunks on the Hopper forward tile (flash_attention_hopper.cu's <c>paged_prefill_hopper</c>, chosen by
/// <see cref="CudaBackend.PagedAttention"/> where <see cref="CudaBackend.UsesHopperPagedPrefill"/>): with CTAs of one and
/// of two warpgroups, against the CPU backend (F64 on the same rounded inputs) and against flash_attention.cu's
/// <c>paged_prefill</c> on the same batch, each run checked by the op profiler for the kernel it names. Blocks of 16,
/// scattered over a shuffled pool; random inputs, the seed in every message. Skips, saying why, without a GPU or on a
/// device other than compute capability 9.0.
/// </summary>
[Collection("cuda")]
public sealed class CudaHopperPagedPrefillTests(CudaFixture cuda, HopperPagedPrefillFixture fixture)
    : CudaTestBase(cuda), IClassFixture<HopperPagedPrefillFixture>
{
    // Output, norm-wise relative, as CudaHopperAttentionTests: against the CPU backend the kernel rounds P to 16 bits before
    // P·V (relative 2^-9 per element in bf16, 2^-12 in f16) and the output to 16 bits (2^-9), independent errors that add in
    // norm well below 1e-2; the decode rows of the mixed batches (paged_decode_mma) round the same two. Against paged_prefill:
    // both round P, each against its own running maximum, and the output, so the same bound. A wrong key, block, head,
    // position or tile is an O(1) error.
    private const double OutTolerance = 1e-2;
    private const int BlockSize = 16;

    private readonly CpuBackend _cpu = new(2);

    private (CudaBackend One, CudaBackend Two, CudaBackend Flash2) Backends()
    {
        if (fixture.OneWarpgroup is null || fixture.TwoWarpgroups is null || fixture.Flash2 is null) Assert.Skip("no CUDA device: " + fixture.Reason);
        if (fixture.OneWarpgroup.CudaDevice.ComputeCapability != (9, 0))
            Assert.Skip($"the Hopper attention kernels need compute capability 9.0; this device is {fixture.OneWarpgroup.CudaDevice.Architecture}");
        // On a 9.0 device a kernel file that does not compile must fail here, not fall back to paged_prefill unseen.
        Assert.True(fixture.OneWarpgroup.UsesHopperAttention, fixture.OneWarpgroup.HopperAttentionUnavailableReason);
        return (fixture.OneWarpgroup, fixture.TwoWarpgroups, fixture.Flash2);
    }

    /// <summary>
    /// rows[b] new rows of sequence b ending at its context length lengths[b] (null: the mixed batch of
    /// <see cref="CudaPagedServingTests"/>, a 37-row chunk after 20 cached positions, decode rows after 300 and 1000, a padding
    /// row and a 5-row prompt that stays on the decode kernel).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 32, 8, 64, null, null)]                                        // llama-1b heads: groups of 4
    [InlineData(DType.BF16, 32, 8, 128, null, null)]                                       // Llama 3 8B heads
    [InlineData(DType.F16, 32, 8, 64, null, null)]
    [InlineData(DType.F16, 16, 2, 128, new[] { 200, 1, 70, 9 }, new[] { 200, 500, 1000, 9 })]  // a whole prompt, a chunk after 930 cached, 9 rows; groups of 8
    [InlineData(DType.BF16, 14, 2, 64, new[] { 100, 1, 130 }, new[] { 130, 50, 130 })]     // Qwen2 0.5B: groups of 7; a chunk after 30 cached
    [InlineData(DType.BF16, 32, 8, 64, new[] { 512, 512 }, new[] { 512, 1024 })]           // serving's 512-row chunks, the second after 512 cached
    [InlineData(DType.F16, 8, 8, 128, new[] { 64, 1, 129 }, new[] { 64, 77, 400 })]       // exactly one 64-row tile; 129 rows after 271 cached; groups of 1
    [InlineData(DType.BF16, 8, 4, 128, new[] { 8, 7, 1, 300 }, new[] { 1000, 7, 3000, 333 })] // 8 rows (the smallest chunk on tiles) after 992 cached
    public void PagedPrefillOnTheHopperTileMatchesTheCpuAndFlashAttention2(DType dtype, int h, int k, int d, int[]? rows, int[]? lengths)
    {
        var (one, two, flash2) = Backends();
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        var batch = PagedBatchLayout.Scattered(rng, BlockSize, rows ?? [37, 1, 1, 1, 5], lengths ?? [57, 301, 1001, 0, 5], spareBlocks: 7);
        int n = batch.Slots.Length;
        string where = $"{dtype} H{h} K{k} D{d} rows [{string.Join(", ", rows ?? [37, 1, 1, 1, 5])}] (seed {seed})";
        double[] Values(long count) => Stored(Enumerable.Range(0, (int)count).Select(_ => rng.NextDouble() * 2 - 1).ToArray(), dtype);
        var qv = Values((long)n * (h + 2 * k) * d);                                // a fused QKV activation: q is a strided view
        var poolValues = Values((long)batch.PoolBlocks * BlockSize * 2 * k * d);
        double scale = 1 / Math.Sqrt(d);

        var cpuQ = TestTensors.FromDoubles(_cpu, qv, DType.F64, n, h + 2 * k, d);
        var cpuPool = TestTensors.FromDoubles(_cpu, poolValues, DType.F64, batch.PoolBlocks, BlockSize, 2 * k, d);
        var expectedTensor = _cpu.Allocate(new Shape(n, h, d), DType.F64);
        _cpu.PagedAttention(cpuQ.Slice(1, 0, h), cpuPool, batch.On(_cpu), expectedTensor, scale);
        var expected = TestTensors.ToDoubles(_cpu, expectedTensor);

        string t = dtype == DType.BF16 ? "bf16" : "f16";
        var fa2 = Run(flash2, $"paged_prefill_{t}_d{d}");
        var wg1 = Run(one, $"paged_prefill_hopper_wg1_{t}_d{d}");
        var wg2 = Run(two, $"paged_prefill_hopper_{t}_d{d}");
        AssertClose(expected, fa2, OutTolerance, $"{where}: paged_prefill vs the CPU backend (the harness)");
        AssertClose(expected, wg1, OutTolerance, $"{where}: one-warpgroup Hopper prefill vs the CPU backend");
        AssertClose(expected, wg2, OutTolerance, $"{where}: two-warpgroup Hopper prefill vs the CPU backend");
        AssertClose(fa2, wg1, OutTolerance, $"{where}: one-warpgroup Hopper prefill vs paged_prefill");
        AssertClose(fa2, wg2, OutTolerance, $"{where}: two-warpgroup Hopper prefill vs paged_prefill");

        // The output of one backend (poisoned with NaN first, so a row no kernel writes fails), having checked that its
        // prefill kernel is the one named and that no other prefill kernel ran.
        double[] Run(CudaBackend backend, string kernel)
        {
            backend.Profiler!.Reset();
            var q = Upload(backend, qv, dtype, n, h + 2 * k, d);
            var pool = Upload(backend, poolValues, dtype, batch.PoolBlocks, BlockSize, 2 * k, d);
            var output = backend.Allocate(new Shape(n, h, d), dtype);
            backend.Fill(output, double.NaN);
            backend.PagedAttention(q.Slice(1, 0, h), pool, batch.On(backend), output, scale);
            var result = Download(backend, output);
            var prefills = backend.Profiler.Totals().Select(r => r.Name).Where(name => name.StartsWith("paged_prefill", StringComparison.Ordinal)).ToList();
            Assert.True(prefills.SequenceEqual([kernel]), $"{where}: expected {kernel} to run the prefill chunks, ran [{string.Join(", ", prefills)}]");
            return result;
        }
    }

    /// <summary>
    /// The Hopper tile masks no sliding window: a windowed call on a Hopper backend runs flash_attention.cu's
    /// <c>paged_prefill</c> (and agrees with the CPU backend), and the default options choose the Hopper prefill on a
    /// compute capability 9.0 device (so <see cref="CudaPagedServingTests"/> runs it there).
    /// </summary>
    [Fact]
    public void WindowedPrefillStaysOnFlashAttention2AndTheDefaultsChooseTheHopperTile()
    {
        var (one, _, _) = Backends();
        Assert.True(Gpu.UsesHopperPagedPrefill(0), "the default options on a 9.0 device: " + Gpu.HopperAttentionUnavailableReason);
        Assert.True(one.UsesHopperPagedPrefill(0));
        Assert.False(one.UsesHopperPagedPrefill(48));

        const int h = 32, k = 8, d = 64, window = 48;
        int seed = Environment.TickCount;
        var rng = new Random(seed);
        var batch = PagedBatchLayout.Scattered(rng, BlockSize, [37, 1, 100], [57, 301, 400], spareBlocks: 3);
        int n = batch.Slots.Length;
        double[] Values(long count) => Stored(Enumerable.Range(0, (int)count).Select(_ => rng.NextDouble() * 2 - 1).ToArray(), DType.BF16);
        var qv = Values((long)n * (h + 2 * k) * d);
        var poolValues = Values((long)batch.PoolBlocks * BlockSize * 2 * k * d);
        double scale = 1 / Math.Sqrt(d);

        one.Profiler!.Reset();
        var q = Upload(one, qv, DType.BF16, n, h + 2 * k, d);
        var pool = Upload(one, poolValues, DType.BF16, batch.PoolBlocks, BlockSize, 2 * k, d);
        var output = one.Allocate(new Shape(n, h, d), DType.BF16);
        one.Fill(output, double.NaN);
        one.PagedAttention(q.Slice(1, 0, h), pool, batch.On(one), output, scale, window);
        var actual = Download(one, output);
        var prefills = one.Profiler.Totals().Select(r => r.Name).Where(name => name.StartsWith("paged_prefill", StringComparison.Ordinal)).ToList();
        Assert.True(prefills.SequenceEqual(["paged_prefill_bf16_d64"]), $"window {window}: ran [{string.Join(", ", prefills)}] (seed {seed})");

        var cpuQ = TestTensors.FromDoubles(_cpu, qv, DType.F64, n, h + 2 * k, d);
        var cpuPool = TestTensors.FromDoubles(_cpu, poolValues, DType.F64, batch.PoolBlocks, BlockSize, 2 * k, d);
        var expected = _cpu.Allocate(new Shape(n, h, d), DType.F64);
        _cpu.PagedAttention(cpuQ.Slice(1, 0, h), cpuPool, batch.On(_cpu), expected, scale, window);
        AssertClose(TestTensors.ToDoubles(_cpu, expected), actual, OutTolerance, $"window {window}: paged_prefill on a Hopper backend vs the CPU backend (seed {seed})");
    }

    /// <summary>
    /// The Hopper forward kernels' resources, dense beside paged, printed for the log (not a pass/fail bar): registers, local
    /// memory (spills) and CTAs per SM at each kernel's dynamic shared memory, so that a paged kernel's extra table lookups
    /// show if they cost registers or spill. Both files' kernels must exist (the lookups fail otherwise).
    /// </summary>
    [Fact]
    public void HopperForwardKernelResourcesAreReported()
    {
        var (one, _, _) = Backends();
        var module = one.Kernels.Module("flash_attention_hopper.cu");
        foreach (var t in new[] { "bf16", "f16" })
            foreach (var d in new[] { 64, 128 })
                foreach (var wgs in new[] { 1, 2 })
                {
                    int shared = 1024 + (64 * wgs + 4 * 128) * d * 2;   // CudaBackend.HopperForwardShared
                    string infix = wgs == 1 ? "wg1_" : "";
                    foreach (var kernel in new[] { $"flash_forward_hopper_{infix}{t}_d{d}", $"paged_prefill_hopper_{infix}{t}_d{d}" })
                    {
                        var r = module.Resources(kernel, 128 * wgs, shared);
                        Console.WriteLine($"[hopper forward kernel] {kernel}: {r.Registers} registers, {r.LocalBytes} bytes local, {shared} bytes shared, {r.CtasPerSm} CTAs per SM");
                    }
                }
    }
}
