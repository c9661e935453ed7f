using Xunit;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;

namespace Tessera.Tests.Cuda;

/// <summary>
/// cuBLASLt's fused epilogues (GELU_AUX[_BIAS], DGELU, DGELU_BGRAD, BGRADB) against the CPU backend's composition on the same
/// (rounded) inputs. Tolerances (relative, over the whole tensor): f32 1e-5 (f32 math with long sums);
/// bf16 1e-2 (outputs and the saved pre-activation carry 8 significant bits).
/// </summary>
[Collection("cuda")]
public sealed class CudaMatMulEpilogueTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private readonly CpuBackend _cpu = new(2);

    private Tensor Cpu(double[] values, params int[] dims)
    {
        var t = _cpu.Allocate(new Shape(dims), DType.F64);
        Tessera.Tests.Support.TestTensors.Write(_cpu, t, values);
        return t;
    }

    private double[] CpuValues(Tensor t) => Tessera.Tests.Support.TestTensors.ToDoubles(_cpu, t);

    /// <summary>(inputs, gradient, fused): F32 throughout, BF16 throughout, BF16 inputs with an F32 gradient; each with the
    /// fused epilogue and without.</summary>
    public static TheoryData<DType, DType, bool> GradientTypesFusedOrNot => new()
    {
        { DType.F32, DType.F32, true }, { DType.BF16, DType.BF16, true }, { DType.BF16, DType.F32, true },
        { DType.F32, DType.F32, false }, { DType.BF16, DType.BF16, false }, { DType.BF16, DType.F32, false },
    };

    /// <summary>A gradient's tolerance: F32's when it and its inputs are F32, else BF16's (an input or the result carries 8 bits).</summary>
    private static double GradientTolerance(DType inputs, DType gradient) => Tolerance(inputs == DType.F32 && gradient == DType.F32 ? DType.F32 : DType.BF16);

    [Theory]
    [InlineData(DType.F32, true)]
    [InlineData(DType.F32, false)]
    [InlineData(DType.BF16, true)]
    [InlineData(DType.BF16, false)]
    public void GeluEpilogueMatchesCpu(DType dtype, bool withBias)
    {
        int m = 96, n = 128, k = 80;
        var (a, av) = Random(dtype, 1, m, k);
        var (b, bv) = Random(dtype, 1, n, k);
        var (bias, biasv) = Random(dtype, 1, n);
        var c = Poisoned(dtype, m, n); var aux = Poisoned(dtype, m, n);
        Gpu.MatMul(a, b, c, transposeB: true, alpha: 0.75, bias: withBias ? bias : null, epilogue: MatMulEpilogue.Gelu, auxiliary: aux);
        var cc = _cpu.Allocate(new Shape(m, n), DType.F64); var caux = _cpu.Allocate(new Shape(m, n), DType.F64);
        _cpu.MatMul(Cpu(av, m, k), Cpu(bv, n, k), cc, transposeB: true, alpha: 0.75, bias: withBias ? Cpu(biasv, n) : null,
            epilogue: MatMulEpilogue.Gelu, auxiliary: caux);
        AssertClose(CpuValues(caux), Download(aux), Tolerance(dtype), $"{dtype} pre-activation");
        AssertClose(CpuValues(cc), Download(c), Tolerance(dtype), $"{dtype} gelu");
    }

    /// <summary>
    /// Products large enough for the backend to time cuBLASLt's candidate algorithms on first use (2 M N K >= 4 GFLOP):
    /// the timing runs write scratch outputs, so the GELU pre-activation, an accumulated weight gradient (beta = 1) and
    /// its accumulated bias gradient come out as the CPU's, and the choice is logged.
    /// </summary>
    [Fact]
    public void TimedAlgorithmChoiceLeavesOutputsAsTheCpuComputesThem()
    {
        const DType dtype = DType.BF16;
        int m = 2048, n = 1024, k = 1024;
        var (a, av) = Random(dtype, 1, m, k);
        var (b, bv) = Random(dtype, 1, n, k);
        var (bias, biasv) = Random(dtype, 1, n);
        var c = Poisoned(dtype, m, n); var aux = Poisoned(dtype, m, n);
        Gpu.MatMul(a, b, c, transposeB: true, bias: bias, epilogue: MatMulEpilogue.Gelu, auxiliary: aux);
        var cc = _cpu.Allocate(new Shape(m, n), DType.F64); var caux = _cpu.Allocate(new Shape(m, n), DType.F64);
        _cpu.MatMul(Cpu(av, m, k), Cpu(bv, n, k), cc, transposeB: true, bias: Cpu(biasv, n), epilogue: MatMulEpilogue.Gelu, auxiliary: caux);
        AssertClose(CpuValues(caux), Download(aux), Tolerance(dtype), "pre-activation");
        AssertClose(CpuValues(cc), Download(c), Tolerance(dtype), "gelu");

        // Weight gradient dW (n, k) += dy^T x over m tokens, bias gradient db (n) += column sums of dy, in cuBLASLt's
        // BGRADB epilogue (not the default): its timing runs write the bias gradient too.
        using var fused = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Gpu.Options with { FusedBiasGradient = true });
        var (_, dyv) = Random(dtype, 2, m, n);
        var (_, xv) = Random(dtype, 2, m, k);
        var (_, dwv) = Random(DType.F32, 1, n, k);
        var (_, dbv) = Random(DType.F32, 1, n);
        Tensor dy = Upload(fused, dyv, dtype, m, n), x = Upload(fused, xv, dtype, m, k);
        Tensor dw = Upload(fused, dwv, DType.F32, n, k), db = Upload(fused, dbv, DType.F32, n);
        fused.MatMul(dy, x, dw, transposeA: true, beta: 1.0, epilogue: MatMulEpilogue.BiasGradient, biasGradient: db);
        var cdw = Cpu(dwv, n, k); var cdb = Cpu(dbv, n);
        _cpu.MatMul(Cpu(dyv, m, n), Cpu(xv, m, k), cdw, transposeA: true, beta: 1.0, epilogue: MatMulEpilogue.BiasGradient, biasGradient: cdb);
        AssertClose(CpuValues(cdw), Download(fused, dw), Tolerance(dtype), "accumulated weight gradient");
        AssertClose(CpuValues(cdb), Download(fused, db), Tolerance(dtype), "accumulated bias gradient");

        if (!Gpu.Options.TuneMatMulAlgorithms) return;   // the tuning log below exists only when products are tuned
        Assert.Contains(Gpu.MatMulTuningLog, line => line.Contains($"M={m} N={n} K={k}") && line.Contains("timed"));
        Assert.Contains(fused.MatMulTuningLog, line => line.Contains($"M={n} N={k} K={m}"));
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void GeluBackwardEpilogueMatchesCpu(DType dtype)
    {
        int m = 64, n = 96, k = 48;
        var (dy, dyv) = Random(dtype, 1, m, k);
        var (w, wv) = Random(dtype, 1, k, n);
        var (pre, prev) = Random(dtype, 3, m, n);
        var dx = Poisoned(dtype, m, n);
        Gpu.MatMul(dy, w, dx, epilogue: MatMulEpilogue.GeluBackward, auxiliary: pre);
        var expected = _cpu.Allocate(new Shape(m, n), DType.F64);
        _cpu.MatMul(Cpu(dyv, m, k), Cpu(wv, k, n), expected, epilogue: MatMulEpilogue.GeluBackward, auxiliary: Cpu(prev, m, n));
        AssertClose(CpuValues(expected), Download(dx), Tolerance(dtype), $"{dtype} gelu backward");
    }

    /// <summary>With <paramref name="fused"/> cuBLASLt's DGELU_BGRAD (the input gradient and the column sums of it, added to the
    /// bias gradient), else (the default, <see cref="Tessera.Cuda.CudaBackendOptions.FusedGeluBiasGradient"/>) the DGELU product
    /// then <c>SumRows</c>; GPT-2's shape ratio (N = 4 x K) at a size that runs in a blink.</summary>
    [Theory]
    [MemberData(nameof(GradientTypesFusedOrNot))]
    public void GeluBackwardBiasGradientEpilogueAccumulatesLikeCpu(DType dtype, DType gradType, bool fused)
    {
        int m = 128, n = 192, k = 48;
        using var gpu = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal,
            Tessera.Cuda.CudaBackendOptions.Default with { FusedGeluBiasGradient = fused });
        var (_, dyv) = Random(dtype, 1, m, k);
        var (_, wv) = Random(dtype, 1, k, n);
        var (_, prev) = Random(dtype, 3, m, n);
        var (_, dbv) = Random(gradType, 1, n);
        Tensor dy = Upload(gpu, dyv, dtype, m, k), w = Upload(gpu, wv, dtype, k, n), pre = Upload(gpu, prev, dtype, m, n);
        Tensor db = Upload(gpu, dbv, gradType, n);
        var dx = gpu.Allocate(new Shape(m, n), dtype);
        gpu.MatMul(dy, w, dx, epilogue: MatMulEpilogue.GeluBackwardBiasGradient, auxiliary: pre, biasGradient: db);
        var expected = _cpu.Allocate(new Shape(m, n), DType.F64);
        var cdb = Cpu(dbv, n);
        _cpu.MatMul(Cpu(dyv, m, k), Cpu(wv, k, n), expected, epilogue: MatMulEpilogue.GeluBackwardBiasGradient, auxiliary: Cpu(prev, m, n),
            biasGradient: cdb);
        AssertClose(CpuValues(expected), Download(gpu, dx), Tolerance(dtype), $"{dtype} gelu backward, fused {fused}");
        AssertClose(CpuValues(cdb), Download(gpu, db), GradientTolerance(dtype, gradType),
            $"{dtype}->{gradType} bias gradient from the gelu backward, fused {fused}");
    }

    /// <summary>With <paramref name="fused"/> cuBLASLt's BGRADB, else (the default, <see cref="Tessera.Cuda.CudaBackendOptions.FusedBiasGradient"/>)
    /// the plain product and <c>SumRows</c>, on the same inputs and tolerances.</summary>
    [Theory]
    [MemberData(nameof(GradientTypesFusedOrNot))]
    public void BiasGradientEpilogueAccumulatesLikeCpu(DType dtype, DType gradType, bool fused)
    {
        int tokens = 96, outF = 64, inF = 48;
        using var gpu = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal,
            Tessera.Cuda.CudaBackendOptions.Default with { FusedBiasGradient = fused });
        var (_, dyv) = Random(dtype, 1, tokens, outF);
        var (_, xv) = Random(dtype, 1, tokens, inF);
        var (_, dwv) = Random(gradType, 1, outF, inF);
        var (_, dbv) = Random(gradType, 1, outF);
        Tensor dy = Upload(gpu, dyv, dtype, tokens, outF), x = Upload(gpu, xv, dtype, tokens, inF);
        Tensor dw = Upload(gpu, dwv, gradType, outF, inF), db = Upload(gpu, dbv, gradType, outF);
        gpu.MatMul(dy, x, dw, transposeA: true, beta: 1.0, epilogue: MatMulEpilogue.BiasGradient, biasGradient: db);
        var cdw = Cpu(dwv, outF, inF); var cdb = Cpu(dbv, outF);
        _cpu.MatMul(Cpu(dyv, tokens, outF), Cpu(xv, tokens, inF), cdw, transposeA: true, beta: 1.0,
            epilogue: MatMulEpilogue.BiasGradient, biasGradient: cdb);
        AssertClose(CpuValues(cdw), Download(gpu, dw), GradientTolerance(dtype, gradType), $"{dtype}->{gradType} weight gradient, fused {fused}");
        AssertClose(CpuValues(cdb), Download(gpu, db), GradientTolerance(dtype, gradType), $"{dtype}->{gradType} bias gradient, fused {fused}");
    }

    [Fact]
    public void F64GeluEpilogueIsRefusedLikeTheF64GeluKernel()
    {
        // F64 epilogues compose from the elementwise kernels, and the CUDA backend has no F64 GELU kernel:
        // the fused call must fail the same way, naming the missing op, rather than return wrong numbers.
        var (a, _) = Random(DType.F64, 1, 8, 8);
        var (b, _) = Random(DType.F64, 1, 8, 16);
        var c = Poisoned(DType.F64, 8, 16); var aux = Poisoned(DType.F64, 8, 16);
        var e = Assert.Throws<NotSupportedException>(() => Gpu.MatMul(a, b, c, epilogue: MatMulEpilogue.Gelu, auxiliary: aux));
        Assert.Contains("GeluForward", e.Message);
    }

    /// <summary>
    /// A product seen at six row counts above the decode range (a server's steps) is timed once per bucket of 256 rows: 1024,
    /// 1100 and 1300 are each the first of their bucket and are timed; 1200, 1400 and 1536 take the algorithm timed for their
    /// bucket without a host wait, and still compute the product (checked on 1536 against the CPU). Decode row counts have
    /// power-of-two buckets: 64 and 8 are timed, 48 (a mixed step's sampled rows, say) takes 64's algorithm. They are timed
    /// although their FLOPs are below the arithmetic threshold (they read 8 MB of weight).
    /// </summary>
    [Fact]
    public void RowCountsOfOneBucketShareOneTimedAlgorithm()
    {
        using var gpu = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Tessera.Cuda.CudaBackendOptions.Default with { TuneMatMulAlgorithms = true });
        const int n = 2048, k = 2048;
        double[] Values(int count) => Stored(Enumerable.Range(0, count).Select(_ => Rng.NextDouble() * 2 - 1).ToArray(), DType.BF16);
        var bv = Values(n * k);
        var b = Upload(gpu, bv, DType.BF16, n, k);
        int[] rows = [1024, 1100, 1200, 1300, 1400, 1536, 64, 48, 8];
        int[] timedRows = [1024, 1100, 1300, 64, 8], sharedRows = [1200, 1400, 1536, 48];
        const int check = 1536;
        Tensor? shared = null; double[]? sharedA = null;
        foreach (int m in rows)
        {
            var av = Values(m * k);
            var c = gpu.Allocate(new Shape(m, n), DType.BF16);
            gpu.MatMul(Upload(gpu, av, DType.BF16, m, k), b, c, transposeB: true);
            if (m == check) (shared, sharedA) = (c, av);
        }
        var timed = gpu.MatMulTuningLog.Where(line => line.Contains($"N={n} K={k}")).ToList();
        foreach (var line in timed) Console.WriteLine($"[matmul tuning] {line}");
        Assert.True(timed.Count == timedRows.Length, $"{timed.Count} row counts timed, expected {timedRows.Length}:\n{string.Join("\n", gpu.MatMulTuningLog)}");
        foreach (int m in timedRows) Assert.Contains(timed, line => line.Contains($"M={m} "));
        foreach (int m in sharedRows) Assert.DoesNotContain(timed, line => line.Contains($"M={m} "));
        Assert.Equal(sharedRows.Length, gpu.MatMulBucketReuses);
        Assert.Contains(timed, line => line.Contains("M=1100 ") && line.Contains("(for rows 1025-1280)"));
        var cc = _cpu.Allocate(new Shape(check, n), DType.F64);
        _cpu.MatMul(Cpu(sharedA!, check, k), Cpu(bv, n, k), cc, transposeB: true);
        var got = gpu.ToArray<BFloat16>(shared!).Select(v => (double)v.ToSingle()).ToArray();
        AssertClose(CpuValues(cc), got, Tolerance(DType.BF16), "the product on its bucket's shared algorithm");
    }

    /// <summary>
    /// The row counts a server warms up at are one per bucket: powers of two up to 256 (decode steps), 256-row buckets up to
    /// 4096, 2048-row buckets above, the last one cut at the step's row limit; none when the backend does not time its products.
    /// </summary>
    [Fact]
    public void TheWarmUpRowCountsAreOnePerBucket()
    {
        using var tuned = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Tessera.Cuda.CudaBackendOptions.Default with { TuneMatMulAlgorithms = true });
        int[] decode = [1, 2, 4, 8, 16, 32, 64, 128, 256];
        int[] expected = [.. decode, .. Enumerable.Range(2, 15).Select(i => i * 256), 6144, 8192];
        Assert.Equal(expected, tuned.TimedRowCounts(8192));
        Assert.Equal([.. decode, 512, 768, 1000], tuned.TimedRowCounts(1000));
        Assert.Equal([.. decode, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 2560, 2816, 3072, 3328, 3584, 3840, 4096, 5000], tuned.TimedRowCounts(5000));
        Assert.Equal([1, 2, 4, 8, 16, 32, 48], tuned.TimedRowCounts(48));
        using var untuned = new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, Tessera.Cuda.CudaBackendOptions.Default with { TuneMatMulAlgorithms = false });
        Assert.Empty(untuned.TimedRowCounts(8192));
    }
}
