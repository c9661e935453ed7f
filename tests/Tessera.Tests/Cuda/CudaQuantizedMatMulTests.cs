using Xunit;
using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Weight-only int8 products on the GPU (<see cref="CudaBackend.QuantizedMatMul"/>, <see cref="CudaBackend.Dequantize"/>) against
/// the CPU backend's in F64 on the same int8 weights (<see cref="Int8Quantization.QuantizeRows"/> of random weights, the seed
/// in the test's output): 1 to 4 rows of x on the matrix-vector kernel's int8 form (gemv.cu, <c>gemv_stream_q8_*</c>), 7 and
/// 96 rows on the dequantized weight and cuBLASLt. Tolerances (relative, over the whole tensor): F32 1e-5 (fp32 sums over
/// K = 1040 terms; on the dequantized path each weight is also rounded once to fp32, 2^-24); BF16 and F16 1e-2 (the stored
/// output keeps 8 or 11 significant bits, 2^-9 or 2^-11 relative, and the dequantized path rounds each weight to the same
/// type). <see cref="KernelEmulationTests.MatrixVectorKernelsWithInt8WeightsGiveTheReferenceResultsOnTheCpuEmulation"/> checks
/// the int8 kernel's logic without a GPU; these tests have not yet run on a device.
/// </summary>
[Collection("cuda")]
public sealed class CudaQuantizedMatMulTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    /// <summary>Input features: 65 chunks of 16 int8 weights, so a row is one unit of the stream, part full.</summary>
    private const int K = 1040;

    /// <summary>Output features: not a multiple of a CTA's 8 warps.</summary>
    private const int N = 517;

    private readonly CpuBackend _cpu = new(2);

    /// <summary>What the product adds besides the bias: nothing, beta = 1 times y, or an addend (a column slice of a wider tensor).</summary>
    public enum Residual { None, Beta, Addend }

    /// <summary>F32 and BF16 at every row count, with the bias alone, beta = 1 without a bias, and bias and addend; F16 on both paths.</summary>
    public static TheoryData<DType, int, bool, Residual> Products()
    {
        var data = new TheoryData<DType, int, bool, Residual>();
        foreach (var dtype in new[] { DType.F32, DType.BF16 })
            foreach (int m in new[] { 1, 2, 4, 7, 96 })
            {
                data.Add(dtype, m, true, Residual.None);
                data.Add(dtype, m, false, Residual.Beta);
                data.Add(dtype, m, true, Residual.Addend);
            }
        foreach (int m in new[] { 1, 3, 7 }) data.Add(DType.F16, m, true, Residual.Addend);
        return data;
    }

    /// <summary>y = x W^T + bias (+ y or + addend) equals the CPU's F64 product on the same int8 weights; the addend is left as it was.</summary>
    [Theory]
    [MemberData(nameof(Products))]
    public void QuantizedProductMatchesTheCpuInF64(DType dtype, int m, bool withBias, Residual residual)
    {
        var (values, scales) = RandomQuantized(N, K);
        var (x, xv) = Random(dtype, 1, m, K);
        var (bias, biasv) = Random(dtype, 1, N);
        var (y0, y0v) = Random(dtype, 1, m, N);
        var (wide, widev) = Random(dtype, 1, m, N + 8);
        var addend = wide.Slice(1, 0, N);
        var addv = Enumerable.Range(0, m * N).Select(i => widev[i / N * (N + 8) + i % N]).ToArray();
        var y = residual == Residual.Beta ? y0 : Poisoned(dtype, m, N);

        Gpu.QuantizedMatMul(x, Upload(Gpu, values, scales, N, K), y, beta: residual == Residual.Beta ? 1.0 : 0.0,
            bias: withBias ? bias : null, addend: residual == Residual.Addend ? addend : null);

        var expected = CpuProduct(values, scales, xv, m, withBias ? biasv : null, residual == Residual.Beta ? y0v : null,
            residual == Residual.Addend ? addv : null, MatMulEpilogue.None, out _);
        string what = $"{dtype} M={m} bias={withBias} {residual}";
        AssertClose(expected, Download(y), Tolerance(dtype), what);
        if (residual == Residual.Addend) AssertClose(widev, Download(wide), 0, $"{what}: the addend is not written");
    }

    /// <summary>
    /// The GELU epilogue (with the bias; the pre-activation into auxiliary) equals the CPU's F64 composition: at 2 rows of x the
    /// epilogue sends the product to the dequantized path, as at 96.
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 2)]
    [InlineData(DType.BF16, 96)]
    public void GeluEpilogueMatchesTheCpuInF64(DType dtype, int m)
    {
        var (values, scales) = RandomQuantized(N, K);
        var (x, xv) = Random(dtype, 1, m, K);
        var (bias, biasv) = Random(dtype, 1, N);
        var y = Poisoned(dtype, m, N);
        var aux = Poisoned(dtype, m, N);

        Gpu.QuantizedMatMul(x, Upload(Gpu, values, scales, N, K), y, bias: bias, epilogue: MatMulEpilogue.Gelu, auxiliary: aux);

        var expected = CpuProduct(values, scales, xv, m, biasv, null, null, MatMulEpilogue.Gelu, out var preActivation);
        AssertClose(preActivation!, Download(aux), Tolerance(dtype), $"{dtype} M={m} pre-activation");
        AssertClose(expected, Download(y), Tolerance(dtype), $"{dtype} M={m} gelu");
    }

    /// <summary>The dequantized weight equals the CPU's bit for bit: scale * q rounded once to F32, and from there to BF16 by
    /// round-to-nearest-even on both (K = 1000 is no multiple of 16: the kernel's grid-stride loop crosses rows anywhere).</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void DequantizeEqualsTheCpuExactly(DType dtype)
    {
        const int n = 300, k = 1000;
        var (values, scales) = RandomQuantized(n, k);
        var gpu = Gpu.Allocate(new Shape(n, k), dtype);
        Gpu.Dequantize(Upload(Gpu, values, scales, n, k), gpu);
        var cpu = _cpu.Allocate(new Shape(n, k), dtype);
        _cpu.Dequantize(Upload(_cpu, values, scales, n, k), cpu);
        if (dtype == DType.F32) Assert.Equal(_cpu.ToArray<float>(cpu), Gpu.ToArray<float>(gpu));
        else Assert.Equal(_cpu.ToArray<BFloat16>(cpu).Select(v => v.Bits), Gpu.ToArray<BFloat16>(gpu).Select(v => v.Bits));
    }

    /// <summary>
    /// With <see cref="CudaBackendOptions.MatrixVectorKernels"/> on, 1 to 4 rows of x run on <c>gemv_stream_q8_*</c> and nothing is
    /// dequantized, while 7 rows, and the GELU epilogue at 2, dequantize; off, every product dequantizes (the op profiler's kernel
    /// names, so a routing fault cannot pass the comparison). The two paths agree within the dtype's tolerance (the class's).
    /// </summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void Int8KernelAgreesWithTheDequantizedProductAndRunsOnlyWhenAllowed(DType dtype)
    {
        using var on = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
        using var off = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { MatrixVectorKernels = false, ProfileOps = true });
        var (values, scales) = RandomQuantized(N, K);
        var (_, biasv) = Random(dtype, 1, N);
        var onWeight = Upload(on, values, scales, N, K);
        var offWeight = Upload(off, values, scales, N, K);
        string suffix = dtype switch { DType.F32 => "f32", DType.BF16 => "bf16", _ => "f16" };
        foreach (var (m, epilogue) in new[] { (1, MatMulEpilogue.None), (2, MatMulEpilogue.None), (3, MatMulEpilogue.None), (4, MatMulEpilogue.None),
                     (7, MatMulEpilogue.None), (2, MatMulEpilogue.Gelu) })
        {
            var (_, xv) = Random(dtype, 1, m, K);
            double[] Run(CudaBackend backend, QuantizedWeight weight)
            {
                backend.Profiler!.Reset();
                var y = backend.Allocate(new Shape(m, N), dtype);
                var aux = epilogue == MatMulEpilogue.Gelu ? backend.Allocate(new Shape(m, N), dtype) : null;
                backend.QuantizedMatMul(Upload(backend, xv, dtype, m, K), weight, y, bias: Upload(backend, biasv, dtype, N),
                    epilogue: epilogue, auxiliary: aux);
                return Download(backend, y);
            }
            string what = $"{dtype} M={m} {epilogue}";
            var viaKernel = Run(on, onWeight);
            var names = on.Profiler!.Totals().Select(r => r.Name).ToList();
            if (m <= 4 && epilogue == MatMulEpilogue.None)
            {
                Assert.Contains($"gemv_stream_q8_{suffix}_m{m}", names);
                Assert.DoesNotContain(names, name => name.StartsWith("dequantize_", StringComparison.Ordinal));
            }
            else Assert.Contains($"dequantize_{suffix}", names);
            var viaDequantized = Run(off, offWeight);
            names = off.Profiler!.Totals().Select(r => r.Name).ToList();
            Assert.Contains($"dequantize_{suffix}", names);
            Assert.DoesNotContain(names, name => name.StartsWith("gemv_stream", StringComparison.Ordinal));
            AssertClose(viaDequantized, viaKernel, Tolerance(dtype), $"{what}: MatrixVectorKernels on against off");
        }
    }

    /// <summary>
    /// A recorded graph of the product replays what the eager call computes: recording runs nothing, and the replay writes the
    /// eager result, bit for bit on the int8 kernel (1 row: warp sums in a fixed order, no atomics) and within BF16's tolerance on
    /// the dequantized path (7 rows: the dequantized weight is scratch taken inside the recording; cuBLASLt may reduce a split K
    /// in any order).
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(7)]
    public void RecordedProductReplaysTheEagerResult(int m)
    {
        const DType dtype = DType.BF16;
        var (values, scales) = RandomQuantized(N, K);
        var weight = Upload(Gpu, values, scales, N, K);
        var (x, _) = Random(dtype, 1, m, K);
        var (bias, _) = Random(dtype, 1, N);
        var (addend, _) = Random(dtype, 1, m, N);
        var eager = Poisoned(dtype, m, N);
        Gpu.QuantizedMatMul(x, weight, eager, bias: bias, addend: addend);
        var replayed = Poisoned(dtype, m, N);
        using var graph = Gpu.Capture(() => Gpu.QuantizedMatMul(x, weight, replayed, bias: bias, addend: addend));
        Assert.NotNull(graph);
        Assert.All(Download(replayed), v => Assert.True(double.IsNaN(v), "recording ran the product"));
        graph!.Replay();
        graph.Replay();
        var expected = Download(eager);
        if (m == 1) Assert.Equal(expected, Download(replayed));
        else AssertClose(expected, Download(replayed), Tolerance(dtype), $"M={m} replayed");
    }

    /// <summary>
    /// Int8 rows of uniform weights in [-0.1, 0.1) quantized on the host, with row 5 all zeros (scale 0): the values (N, K)
    /// and the scales (N).
    /// </summary>
    private (sbyte[] Values, float[] Scales) RandomQuantized(int n, int k)
    {
        var w = new float[n * k];
        for (int i = 0; i < w.Length; i++) w[i] = (float)((Rng.NextDouble() * 2 - 1) * 0.1);
        Array.Clear(w, 5 * k, k);
        var values = new sbyte[n * k];
        var scales = new float[n];
        Int8Quantization.QuantizeRows(w, n, k, values, scales, "test weight");
        return (values, scales);
    }

    /// <summary>The int8 values (N, K) and scales (N) as a weight on <paramref name="backend"/>.</summary>
    private static QuantizedWeight Upload(IBackend backend, sbyte[] values, float[] scales, int n, int k) =>
        new(backend.FromHost<sbyte>(values, new Shape(n, k)), backend.FromHost<float>(scales, new Shape(n)));

    /// <summary>
    /// The CPU backend's QuantizedMatMul in F64 (the weight dequantized exactly, scale * q in double, then an F64 product):
    /// x (M, K) W^T + bias, + y0 with beta = 1 or + addend, then the epilogue; <paramref name="preActivation"/> is GELU's input.
    /// </summary>
    private double[] CpuProduct(sbyte[] values, float[] scales, double[] xv, int m, double[]? biasv, double[]? y0v, double[]? addv,
        MatMulEpilogue epilogue, out double[]? preActivation)
    {
        var y = y0v is null ? _cpu.Allocate(new Shape(m, N), DType.F64) : TestTensors.FromDoubles(_cpu, y0v, DType.F64, m, N);
        var aux = epilogue == MatMulEpilogue.Gelu ? _cpu.Allocate(new Shape(m, N), DType.F64) : null;
        _cpu.QuantizedMatMul(TestTensors.FromDoubles(_cpu, xv, DType.F64, m, K), Upload(_cpu, values, scales, N, K), y,
            beta: y0v is null ? 0.0 : 1.0, bias: biasv is null ? null : TestTensors.FromDoubles(_cpu, biasv, DType.F64, N),
            epilogue: epilogue, auxiliary: aux, addend: addv is null ? null : TestTensors.FromDoubles(_cpu, addv, DType.F64, m, N));
        preActivation = aux is null ? null : TestTensors.ToDoubles(_cpu, aux);
        return TestTensors.ToDoubles(_cpu, y);
    }
}
