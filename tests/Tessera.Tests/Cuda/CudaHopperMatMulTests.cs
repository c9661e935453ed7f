using Tessera.Cuda;
using Tessera.Cuda.Compilation;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The training products on Tessera's Hopper kernel (gemm_hopper.cu, <see cref="CudaBackendOptions.HopperTrainingProducts"/>)
/// on a compute capability 9.0 device, through <see cref="IBackend.MatMul"/> in an nn.Linear's three layouts: nt (a (M, K) times
/// b (N, K)^T, the forward), nn (a (M, K) times b (K, N), the input's gradient) and tn (a (K, M)^T times b (K, N), the weight's
/// gradient). Against an f64 reference on the same rounded inputs at shapes with every dimension short of a tile
/// (<see cref="CudaTestBase.Tolerance"/>: 1e-2 norm-wise for a bf16 or f16 output), and against cuBLASLt on the default backend
/// at llama-1b's shapes (the same tolerance: both sum exact 16-bit products in fp32, in different orders). Both output tile
/// widths, bias, alpha, beta = 1, the residual as an addend, the output's row-stride padding untouched, in clusters of two CTAs
/// sharing B by multicast and without, the output staged through shared memory and stored by the tensor memory accelerator
/// (c's rows 16-byte aligned) and stored from registers. Each checks from the op profiler's kernel names that gemm_hopper ran,
/// so a call that fell back to cuBLASLt would fail. Skips, saying why, on other devices.
/// </summary>
[Collection("cuda")]
public sealed class CudaHopperMatMulTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData(DType.BF16, "nt", 300, 521, 200, 256, true, 0.5, 1.0, true)]    // M, N (odd), K each short of a tile
    [InlineData(DType.BF16, "nt", 300, 521, 200, 256, true, 0.5, 1.0, false)]
    [InlineData(DType.BF16, "nt", 130, 251, 64, 128, false, 1.0, 0.0, true)]    // the pair's second row tile past M
    [InlineData(DType.BF16, "nt", 130, 251, 64, 128, false, 1.0, 0.0, false)]
    [InlineData(DType.F16, "nt", 256, 384, 448, 256, true, 1.0, 0.0, true)]
    [InlineData(DType.BF16, "nt", 1000, 777, 1032, 128, true, 2.0, 1.0, true)]  // 17 k-tiles through 6 stages, across tiles
    [InlineData(DType.BF16, "nt", 1000, 777, 1032, 256, true, 2.0, 1.0, false)]
    [InlineData(DType.BF16, "nt", 1000, 776, 1032, 256, true, 2.0, 1.0, true)]  // N a multiple of 8: staged, C_in loaded by the TMA
    [InlineData(DType.BF16, "nt", 512, 256, 64, 256, false, 1.0, 1.0, true)]   // one k-tile: C_in's first chunks load at k-tile 0
    [InlineData(DType.BF16, "nt", 256, 256, 64, 256, true, 1.0, 1.0, false)]
    [InlineData(DType.BF16, "nn", 300, 520, 200, 256, false, 1.0, 0.0, true)]   // the input's gradient: b read transposed
    [InlineData(DType.BF16, "nn", 1000, 776, 1032, 128, true, 1.0, 1.0, false)]
    [InlineData(DType.F16, "nn", 256, 392, 320, 256, false, 1.0, 1.0, true)]
    [InlineData(DType.BF16, "tn", 264, 520, 200, 256, false, 1.0, 1.0, true)]   // the weight's gradient, accumulated (beta = 1)
    [InlineData(DType.BF16, "tn", 1000, 776, 1032, 256, false, 1.0, 1.0, false)]
    [InlineData(DType.F16, "tn", 392, 256, 136, 128, true, 0.5, 0.0, true)]
    public void ProductsMatchTheReferenceAndCublasLt(DType dtype, string layout, int m, int n, int k, int columns, bool withBias,
        double alpha, double beta, bool multicast)
    {
        foreach (bool aligned in new[] { true, false })
            ProductMatchesTheReferenceAndCublasLt(dtype, layout, m, n, k, columns, withBias, alpha, beta, multicast, aligned, addend: false);
    }

    /// <summary>
    /// The epilogue deferred into the next tile's main loop (<see cref="CudaBackendOptions.HopperTrainingProductOverlappedEpilogue"/>:
    /// a tile's outputs wait in registers as 16-bit pairs and go out a chunk a k-tile) gives the staged epilogue's bits: the same
    /// sums rounded the same way. Each shape has more units than a 132-SM device runs at once, so CTAs take several tiles and
    /// defer all but their last (144 to 576 units); K of 1 to 32 k-tiles (at 1 and 3 k-tiles, fewer than a tile's chunks: the
    /// rest stored after the loop); bias and alpha; the three layouts; bf16 and f16.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, "nt", 4096, 2200, 2048, 256, true)]    // 16 x 9 units of two row tiles
    [InlineData(DType.BF16, "nt", 4096, 2200, 64, 128, false)]     // 576 tiles, one k-tile: both chunks after it
    [InlineData(DType.BF16, "nn", 4096, 2048, 192, 256, true)]     // 3 k-tiles, 4 chunks
    [InlineData(DType.BF16, "tn", 4096, 2200, 512, 256, false)]    // 288 tiles
    [InlineData(DType.F16, "nt", 4096, 1024, 256, 256, true)]
    public void TheOverlappedEpilogueGivesTheStagedBits(DType dtype, string layout, int m, int n, int k, int columns, bool multicast)
    {
        using var overlapped = HopperBackend(columns, multicast, overlappedEpilogue: true);
        using var staged = HopperBackend(columns, multicast);
        var (av, bv, biasv, c0) = (Values(m * k, 1.0), Values(n * k, 0.05), Values(n, 0.5), Values(m * n, 1.0));
        var product = new Product(dtype, layout, m, n, k, n, 0.5, 0.0, biasv, null);
        var got = product.Run(overlapped, av, bv, c0);
        AssertRanOn(overlapped, dtype, layout, columns, multicast);
        var want = product.Run(staged, av, bv, c0);
        Assert.Equal(want, got);
        Assert.Contains(got, v => v != 0);
    }

    /// <summary>
    /// Every gemm_hopper kernel's registers and local memory at the shared memory the host launches it with, printed, and the
    /// assembler's own report (--ptxas-options=-v: spills, and any warning that it serialized the wgmma pipeline). Fails if a
    /// kernel spills to local memory (the consumers hold 128 accumulators, and with the overlapped epilogue 64 registers of the
    /// last tile's outputs, under a 232-register budget: a spill in the main loop is a slow kernel whatever its bits) or the
    /// assembler serialized its wgmma (C7515: every product then waits for the one before). KernelAssemblyTests checks
    /// the same wherever NVRTC is, without a GPU; this one reads the loaded module's resources too.
    /// </summary>
    [Fact]
    public void NoKernelSpillsRegisters()
    {
        using var hopper = HopperBackend(256, true);
        Assert.True(hopper.HopperTrainingProductsUnavailableReason is null, $"gemm_hopper does not compile here: {hopper.HopperTrainingProductsUnavailableReason}");
        var output = TestContext.Current.TestOutputHelper;
        var module = hopper.Kernels.Module("gemm_hopper.cu");
        var kernels = new List<(string Name, int Columns)>();
        foreach (var type in new[] { "bf16", "f16" })
            foreach (var cluster in new[] { "", "_mc" })
            {
                foreach (var layout in new[] { "nt", "nn", "tn" })
                    foreach (var columns in new[] { 256, 128 })
                        kernels.Add(($"gemm_hopper_{layout}{cluster}_{type}_n{columns}", columns));
                kernels.Add(($"gemm_hopper_swiglu{cluster}_{type}_n256", 256));
                kernels.Add(($"gemm_hopper_dswiglu{cluster}_{type}_n256", 256));
            }
        var spilled = new List<string>();
        foreach (var (name, columns) in kernels)
        {
            // The host's shared memory: the stages (4 of 48 KB at 256 columns, 6 of 32 KB at 128), four 8 KB epilogue buffers,
            // their barriers, 1,024 bytes of alignment slack.
            int stages = columns == 256 ? 4 : 6, shared = 1024 + stages * ((128 + columns) * 64 * 2 + 16) + 4 * (64 * 64 * 2 + 8);
            var r = module.Resources(name, 384, shared);
            output?.WriteLine($"{name}: {r.Registers} registers, {r.LocalBytes} bytes local, {shared} bytes shared, {r.CtasPerSm} CTA per SM");
            if (r.LocalBytes != 0) spilled.Add($"{name} ({r.LocalBytes} bytes)");
        }
        string file = "gemm_hopper.cu";
        var serialized = new List<string>();
        try
        {
            hopper.Kernels.Compiler.CompileToCubin(KernelLibrary.ComposedSource(file), file, [.. hopper.Kernels.OptionsFor(file), "--ptxas-options=-v"], out string log);
            var report = AssemblerReport.Parse(log);
            output?.WriteLine($"The assembler (NVRTC {hopper.Kernels.Compiler.Version}):");
            foreach (var k in report.Kernels) output?.WriteLine(report.Describe(k));
            foreach (var line in log.Split('\n'))
                if (line.Contains("warning", StringComparison.OrdinalIgnoreCase)) output?.WriteLine(line.TrimEnd());
            serialized = report.Serialized;
        }
        // An NVRTC without the option: the resources above stand alone. A compilation error of the file fails the test.
        catch (Exception e) when (e is not KernelCompilationException || e.Message.Contains("ptxas-options", StringComparison.Ordinal))
        {
            output?.WriteLine("NVRTC took no --ptxas-options=-v here: " + e.Message);
        }
        Assert.True(spilled.Count == 0, "local memory (spills) in " + string.Join(", ", spilled));
        Assert.True(serialized.Count == 0, "wgmma serialized by the assembler (C7515) in " + string.Join(", ", serialized));
    }

    /// <summary>The forward with the residual as an addend (an output or down projection's form): the beta term reads it.</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TheResidualAddendIsAdded(bool multicast) =>
        ProductMatchesTheReferenceAndCublasLt(DType.BF16, "nt", 300, 264, 200, 256, false, 1.0, 0.0, multicast, aligned: true, addend: true);

    /// <summary>
    /// One case: c's rows a multiple of 8 values apart (16 bytes: the staged stores by the tensor memory accelerator) or not
    /// (the stores straight from registers); with <paramref name="addend"/>, the beta term reads a tensor of c's layout.
    /// </summary>
    private void ProductMatchesTheReferenceAndCublasLt(DType dtype, string layout, int m, int n, int k, int columns, bool withBias,
        double alpha, double beta, bool multicast, bool aligned, bool addend)
    {
        using var hopper = HopperBackend(columns, multicast);
        // c's rows are ld apart (even), past n: the padding must stay as it was.
        int ld = aligned ? (n + 15) / 8 * 8 : (n + 8 + n % 2) % 8 != 0 ? n + 8 + n % 2 : n + 10;
        var (av, bv, biasv, c0, addv) = (Values(m * k, 1.0), Values(n * k, 0.05), Values(n, 0.5), Values(m * ld, 1.0), Values(m * ld, 1.0));
        var product = new Product(dtype, layout, m, n, k, ld, alpha, beta, withBias ? biasv : null, addend ? addv : null);
        var got = product.Run(hopper, av, bv, c0);
        AssertRanOn(hopper, dtype, layout, columns, multicast);
        using var cublasLt = CublasLtBackend();
        var cublas = product.Run(cublasLt, av, bv, c0);
        double[] sa = Stored(av, dtype), sb = Stored(bv, dtype), sbias = Stored(biasv, dtype), sc = Stored(addend ? addv : c0, dtype);
        double[] sc0 = Stored(c0, dtype);
        var expected = new double[m * n];
        var gotTile = new double[m * n];
        var cublasTile = new double[m * n];
        for (int r = 0; r < m; r++)
        {
            for (int c = 0; c < n; c++)
            {
                double s = 0;
                for (int i = 0; i < k; i++) s += sa[product.AIndex(r, i)] * sb[product.BIndex(i, c)];
                expected[r * n + c] = alpha * s + (withBias ? sbias[c] : 0) + (addend ? 1.0 : beta) * sc[r * ld + c];
                gotTile[r * n + c] = got[r * ld + c];
                cublasTile[r * n + c] = cublas[r * ld + c];
            }
            for (int c = n; c < ld; c++) Assert.Equal(sc0[r * ld + c], got[r * ld + c]);
        }
        string what = $"{dtype} {layout} {m}x{n}x{k} n{columns} multicast {multicast} row stride {ld}{(addend ? " addend" : "")}";
        AssertClose(expected, gotTile, Tolerance(dtype), "gemm_hopper " + what);
        AssertClose(cublasTile, gotTile, Tolerance(dtype), "gemm_hopper against cuBLASLt " + what);
    }

    /// <summary>llama-1b's products at 2,048 rows and one short of a tile, against cuBLASLt: the forward's (QKV, output,
    /// gate/up, down), an input gradient's and a weight gradient's.</summary>
    [Theory]
    [InlineData("nt", 2048, 3072, 2048, 256, true)]
    [InlineData("nt", 2048, 2048, 2048, 128, true)]
    [InlineData("nt", 2000, 16384, 2048, 256, true)]
    [InlineData("nt", 2048, 2048, 8192, 256, true)]
    [InlineData("nt", 2048, 3072, 2048, 256, false)]
    [InlineData("nn", 2048, 2048, 8192, 256, true)]    // the down product's input gradient
    [InlineData("nn", 2000, 2048, 3072, 256, false)]   // QKV's
    [InlineData("tn", 8192, 2048, 2048, 256, true)]    // the down product's weight gradient over 2,048 tokens
    [InlineData("tn", 3072, 2048, 2000, 256, false)]
    public void LlamaShapesMatchCublasLt(string layout, int m, int n, int k, int columns, bool multicast)
    {
        using var hopper = HopperBackend(columns, multicast);
        var (av, bv) = (Values(m * k, 1.0), Values(n * k, 0.05));
        var c0 = new double[m * n];
        var product = new Product(DType.BF16, layout, m, n, k, n, 1.0, 0.0, null, null);
        var got = product.Run(hopper, av, bv, c0);
        AssertRanOn(hopper, DType.BF16, layout, columns, multicast);
        using var cublasLt = CublasLtBackend();
        var cublas = product.Run(cublasLt, av, bv, c0);
        AssertClose(cublas, got, Tolerance(DType.BF16), $"gemm_hopper against cuBLASLt bf16 {layout} {m}x{n}x{k} n{columns} multicast {multicast}");
    }

    /// <summary>
    /// Under <see cref="CudaBackendOptions.TimeHopperTrainingProducts"/> the first call of a shape times gemm_hopper against
    /// cuBLASLt on a scratch output (logged), and whichever it keeps gives the reference's result; an accumulating product's c
    /// is not touched by the timing (its result is c plus one product, not several).
    /// </summary>
    [Fact]
    public void TheTimedChoiceLogsItsTimesAndKeepsTheResult()
    {
        if (Gpu.CudaDevice.ComputeCapability != (9, 0))
            Assert.Skip($"gemm_hopper.cu needs compute capability 9.0; this device is {Gpu.CudaDevice.Architecture}");
        using var timed = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { HopperTrainingProducts = true });
        const int m = 1024, n = 512, k = 768;
        var (av, bv, c0) = (Values(m * k, 1.0), Values(n * k, 0.05), Values(m * n, 1.0));
        var product = new Product(DType.BF16, "tn", m, n, k, n, 1.0, 1.0, null, null);
        var got = product.Run(timed, av, bv, c0);
        Assert.Contains(timed.MatMulTuningLog, line => line.StartsWith($"gemm_hopper tn BF16 {m}x{n}x{k} acc: ", StringComparison.Ordinal));
        double[] sa = Stored(av, DType.BF16), sb = Stored(bv, DType.BF16), sc = Stored(c0, DType.BF16);
        var expected = new double[m * n];
        for (int r = 0; r < m; r++)
            for (int c = 0; c < n; c++)
            {
                double s = 0;
                for (int i = 0; i < k; i++) s += sa[product.AIndex(r, i)] * sb[product.BIndex(i, c)];
                expected[r * n + c] = s + sc[r * n + c];
            }
        AssertClose(expected, got, Tolerance(DType.BF16), "the timed choice's product (beta = 1)");
    }

    /// <summary>
    /// <see cref="IBackend.GateUpSwiGlu"/> on gemm_hopper's SwiGLU form (the gate and up sums of 128 outputs in one tile, both
    /// halves of gateUp and SiLU(gate) * up stored from the epilogue): gateUp against cuBLASLt's product
    /// within 1e-2, and the activation bit for bit against <see cref="IBackend.SwiGluForward"/> on the gateUp it stored;
    /// F short of a tile, in clusters of two and without, the row padding of both outputs untouched.
    /// </summary>
    [Theory]
    [InlineData(300, 200, 136, true)]
    [InlineData(2048, 8192, 2048, true)]    // llama-1b's MLP at 2,048 tokens
    [InlineData(256, 136, 448, false)]
    [InlineData(4096, 2048, 2048, true, true)]   // each tile's stores deferred into the next tile's main loop (256 units)
    [InlineData(8192, 520, 136, false, true)]    // 320 tiles of 3 k-tiles: half a tile's stores after the loop
    public void GateUpSwiGluMatchesTheProductThenSwiGlu(int m, int f, int k, bool multicast, bool overlappedEpilogue = false)
    {
        using var hopper = HopperBackend(256, multicast, overlappedEpilogue);
        var (xv, wv) = (Values(m * k, 1.0), Values(2 * f * k, 0.05));
        var (gu0, a0) = (Values(m * (2 * f + 8), 1.0), Values(m * (f + 8), 1.0));
        (double[] GateUp, double[] Activated, double[] FromGateUp) Run(CudaBackend backend)
        {
            var x = Upload(backend, xv, DType.BF16, m, k);
            var w = Upload(backend, wv, DType.BF16, 2 * f, k);
            var gu = Upload(backend, gu0, DType.BF16, m, 2 * f + 8);
            var act = Upload(backend, a0, DType.BF16, m, f + 8);
            backend.GateUpSwiGlu(x, w, gu.Slice(1, 0, 2 * f), act.Slice(1, 0, f));
            var again = backend.Allocate(new Shape(m, f), DType.BF16);
            backend.SwiGluForward(gu.Slice(1, 0, f), gu.Slice(1, f, f), again);
            return (Download(backend, gu), Download(backend, act), Download(backend, again));
        }
        var fused = Run(hopper);
        Assert.Contains(hopper.Profiler!.Totals(), r => r.Name.StartsWith($"gemm_hopper_swiglu{(multicast ? "_mc" : "")}_bf16_n256 ", StringComparison.Ordinal));
        using var cublasLt = CublasLtBackend();
        var plain = Run(cublasLt);
        double[] sgu0 = Stored(gu0, DType.BF16), sa0 = Stored(a0, DType.BF16);
        var (got, want) = (new double[m * 2 * f], new double[m * 2 * f]);
        for (int r = 0; r < m; r++)
        {
            for (int c = 0; c < 2 * f; c++) { got[r * 2 * f + c] = fused.GateUp[r * (2 * f + 8) + c]; want[r * 2 * f + c] = plain.GateUp[r * (2 * f + 8) + c]; }
            for (int c = 0; c < f; c++) Assert.Equal(fused.FromGateUp[r * f + c], fused.Activated[r * (f + 8) + c]);
            for (int c = 2 * f; c < 2 * f + 8; c++) Assert.Equal(sgu0[r * (2 * f + 8) + c], fused.GateUp[r * (2 * f + 8) + c]);
            for (int c = f; c < f + 8; c++) Assert.Equal(sa0[r * (f + 8) + c], fused.Activated[r * (f + 8) + c]);
        }
        AssertClose(want, got, Tolerance(DType.BF16), $"gemm_hopper_swiglu gateUp against cuBLASLt's {m}x{2 * f}x{k} multicast {multicast}");
    }

    /// <summary>
    /// <see cref="IBackend.DownSwiGluBackward"/> on gemm_hopper's SwiGLU gradient form (the down product's input gradient dA,
    /// g and u read into the epilogue in the 64-byte swizzle, dg and du stored from it): dGateUp against the
    /// composition of cuBLASLt's product and SwiGluBackward within 1e-2 norm-wise (a bf16 output from fp32 sums in another order), and
    /// bit for bit against <see cref="IBackend.SwiGluBackward"/> applied to the same backend's plain nn product (gemm_hopper's,
    /// the same sums); F short of a tile, in clusters of two and without, dGateUp's row padding untouched, gateUp unchanged.
    /// Overlapped: each tile's epilogue deferred into the next tile's first k-tiles, which needs more tiles than the H100's
    /// 132 SMs and more k-tiles than the eight chunks (at 8 it stores at once).
    /// </summary>
    [Theory]
    [InlineData(300, 200, 136, true, false)]
    [InlineData(2048, 8192, 2048, true, false)]    // llama-1b's MLP at 2,048 tokens
    [InlineData(256, 520, 448, false, false)]
    [InlineData(2048, 8192, 2048, true, true)]
    [InlineData(2048, 2600, 576, false, true)]     // 176 tiles of 9 k-tiles
    [InlineData(2048, 2600, 512, false, true)]     // 8 k-tiles: stored at once
    public void DownSwiGluBackwardMatchesTheProductThenSwiGluBackward(int m, int f, int c, bool multicast, bool overlapped)
    {
        using var hopper = HopperBackend(256, multicast, overlapped);
        var (yv, wv, guv, d0) = (Values(m * c, 1.0), Values(c * f, 0.05), Values(m * (2 * f + 8), 2.0), Values(m * (2 * f + 8), 1.0));
        (double[] Dgu, double[] Composed, double[] Gu) Run(CudaBackend backend)
        {
            var dy = Upload(backend, yv, DType.BF16, m, c);
            var w = Upload(backend, wv, DType.BF16, c, f);
            var gu = Upload(backend, guv, DType.BF16, m, 2 * f + 8);
            var dgu = Upload(backend, d0, DType.BF16, m, 2 * f + 8);
            var da = backend.Allocate(new Shape(m, f), DType.BF16);
            backend.DownSwiGluBackward(dy, w, gu.Slice(1, 0, 2 * f), dgu.Slice(1, 0, 2 * f), da);
            var (da2, dgu2) = (backend.Allocate(new Shape(m, f), DType.BF16), backend.Allocate(new Shape(m, 2 * f), DType.BF16));
            backend.MatMul(dy, w, da2);
            backend.SwiGluBackward(gu.Slice(1, 0, f), gu.Slice(1, f, f), da2, dgu2.Slice(1, 0, f), dgu2.Slice(1, f, f));
            return (Download(backend, dgu), Download(backend, dgu2), Download(backend, gu));
        }
        var fused = Run(hopper);
        Assert.Contains(hopper.Profiler!.Totals(), r => r.Name.StartsWith($"gemm_hopper_dswiglu{(multicast ? "_mc" : "")}_bf16_n256 ", StringComparison.Ordinal));
        using var cublasLt = CublasLtBackend();
        var plain = Run(cublasLt);
        double[] sd0 = Stored(d0, DType.BF16), sgu = Stored(guv, DType.BF16);
        var (got, want) = (new double[m * 2 * f], new double[m * 2 * f]);
        for (int r = 0; r < m; r++)
        {
            for (int col = 0; col < 2 * f; col++)
            {
                got[r * 2 * f + col] = fused.Dgu[r * (2 * f + 8) + col];
                want[r * 2 * f + col] = plain.Dgu[r * (2 * f + 8) + col];
                Assert.Equal(fused.Composed[r * 2 * f + col], fused.Dgu[r * (2 * f + 8) + col]);
            }
            for (int col = 2 * f; col < 2 * f + 8; col++) Assert.Equal(sd0[r * (2 * f + 8) + col], fused.Dgu[r * (2 * f + 8) + col]);
        }
        Assert.Equal(sgu, fused.Gu);
        AssertClose(want, got, Tolerance(DType.BF16), $"gemm_hopper_dswiglu dGateUp against cuBLASLt's {m}x{f}x{c} and SwiGluBackward, multicast {multicast}, overlapped {overlapped}");
    }

    /// <summary>c (m, n), ld apart, = alpha op(a) op(b) + bias + beta c (or + the addend) in one of the three layouts; a and b
    /// are uploaded as stored: nt a (m, k) b (n, k), nn a (m, k) b (k, n), tn a (k, m) b (k, n).</summary>
    private sealed record Product(DType DType, string Layout, int M, int N, int K, int Ld, double Alpha, double Beta, double[]? Bias, double[]? Addend)
    {
        private bool TransposeA => Layout[0] == 't';
        private bool TransposeB => Layout == "nt";

        public int AIndex(int m, int k) => TransposeA ? k * M + m : m * K + k;
        public int BIndex(int k, int n) => TransposeB ? n * K + k : k * N + n;

        public double[] Run(CudaBackend backend, double[] av, double[] bv, double[] c0)
        {
            var a = TransposeA ? Upload(backend, av, DType, K, M) : Upload(backend, av, DType, M, K);
            var b = TransposeB ? Upload(backend, bv, DType, N, K) : Upload(backend, bv, DType, K, N);
            var c = Upload(backend, c0, DType, M, Ld);
            var addend = Addend is null ? null : Upload(backend, Addend, DType, M, Ld).Slice(1, 0, N);
            backend.MatMul(a, b, c.Slice(1, 0, N), transposeA: TransposeA, transposeB: TransposeB, alpha: Alpha, beta: Beta,
                bias: Bias is null ? null : Upload(backend, Bias, DType, N), addend: addend);
            return Download(backend, c);
        }
    }

    /// <summary>The reference: the products on cuBLASLt (and the SwiGLU forms composed of its product and the element-wise
    /// kernels), whatever the default (<see cref="CudaBackendOptions.HopperTrainingProducts"/> is true by default).</summary>
    private CudaBackend CublasLtBackend() => new(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { HopperTrainingProducts = false });

    /// <summary>A backend with the Hopper training products at <paramref name="columns"/> a tile (in clusters of two sharing
    /// B by multicast, or not) and the op profiler; skips the test, saying why, on a device other than compute capability 9.0.</summary>
    private CudaBackend HopperBackend(int columns, bool multicast, bool overlappedEpilogue = false)
    {
        if (Gpu.CudaDevice.ComputeCapability != (9, 0))
            Assert.Skip($"gemm_hopper.cu needs compute capability 9.0 (wgmma, the tensor memory accelerator); this device is {Gpu.CudaDevice.Architecture}");
        return new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with
        {
            HopperTrainingProducts = true, HopperTrainingProductColumns = columns, HopperTrainingProductMulticast = multicast, ProfileOps = true,
            TimeHopperTrainingProducts = false,   // every fitting product on gemm_hopper, whichever is faster
            HopperTrainingProductOverlappedEpilogue = overlappedEpilogue,
        });
    }

    /// <summary>The product ran on gemm_hopper (the op profiler's kernel names), not on cuBLASLt.</summary>
    private static void AssertRanOn(CudaBackend backend, DType dtype, string layout, int columns, bool multicast)
    {
        Assert.True(backend.HopperTrainingProductsUnavailableReason is null,
            $"gemm_hopper does not run on this 9.0 device: {backend.HopperTrainingProductsUnavailableReason}");
        string name = $"gemm_hopper_{layout}{(multicast ? "_mc" : "")}_{(dtype == DType.BF16 ? "bf16" : "f16")}_n{columns}";
        Assert.Contains(backend.Profiler!.Totals(), r => r.Name.StartsWith(name + " ", StringComparison.Ordinal));   // then its shape
    }

    private double[] Values(int count, double scale) => Enumerable.Range(0, count).Select(_ => (Rng.NextDouble() * 2 - 1) * scale).ToArray();
}
