using Xunit;
using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;

namespace Tessera.Tests.Cuda;

/// <summary>
/// W8A8-FP8 products on the GPU (<see cref="CudaBackend.QuantizedMatMul"/> with F8E4M3 weights) against the CPU backend's in
/// F64 on the same weight codes (<see cref="Fp8Quantization.QuantizeRows"/> of random weights, the seed in the test's output)
/// and the same inputs (x as the GPU stores it): both quantize x's rows with the same F32 operations, so without a norm the
/// codes and scales are identical (checked directly on <c>quantize_rows_fp8_*</c>), and the products differ only by the GPU's
/// fp32 sums (exact codes times codes, then the scales) and the output's rounding. Tolerance 1e-2 of the largest output in
/// BF16 and F16: the stored output keeps 8 (11) significant bits; on the dequantized fallback the operands are also rounded
/// to that type (2^-9 relative each). With a norm, the GPU rounds the normalized row to x's type before quantizing it (as
/// the CPU backend does in BF16), where this F64 reference does not: about one code in 32 then lies one E4M3 step (2^-4
/// relative) from the reference's, which moves an output by about sqrt(K / 32) 2^-4 terms against its sqrt(K) terms, 1e-2 of
/// a typical output (the H200 measured 1.14-1.17e-2 of the largest, session 27): 3e-2 of the largest there.
/// On compute capability 8.9 and up, shapes with K and N multiples of 16 must run on cuBLASLt's FP8 kernels
/// (<see cref="FittingShapesRunOnTheFp8TensorCores"/>: if the enum values or layouts were wrong, cuBLASLt would refuse and
/// every product would silently fall back). First run on an H200 in session 27. 1 to 4 rows with no epilogue run the
/// matrix-vector kernel's FP8 form (<c>gemv_stream_f8_*</c>; <c>LastFp8ProductOnMatrixVector</c>, asserted), held to the same
/// tolerances: it computes the same codes and scales and sums code products in fp32 (not yet run on a device).
/// </summary>
[Collection("cuda")]
public sealed class CudaFp8QuantizedMatMulTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private const int K = 1024, N = 512;
    private readonly CpuBackend _cpu = new(2);

    public enum Residual { None, Beta, Addend }

    private bool Fp8TensorCores => Gpu.CudaDevice.ComputeCapability is var (major, minor) && (major > 8 || major == 8 && minor >= 9);

    public static TheoryData<DType, int, bool, Residual> Products()
    {
        var data = new TheoryData<DType, int, bool, Residual>();
        foreach (var dtype in new[] { DType.BF16, DType.F16 })
            foreach (int m in new[] { 1, 4, 7, 64, 96 })
            {
                data.Add(dtype, m, true, Residual.None);
                data.Add(dtype, m, false, Residual.Beta);
                data.Add(dtype, m, true, Residual.Addend);
            }
        return data;
    }

    /// <summary>Random weights (N, K) in [-0.1, 0.1) with row 5 all zeros (scale 1), quantized to FP8 on the host.</summary>
    private (byte[] Codes, float[] Scales) RandomWeight(int n, int k)
    {
        var w = new float[n * k];
        for (int i = 0; i < w.Length; i++) w[i] = (float)((Rng.NextDouble() * 2 - 1) * 0.1);
        Array.Clear(w, 5 * k, k);
        var codes = new byte[n * k];
        var scales = new float[n];
        Fp8Quantization.QuantizeRows(w, n, k, codes, scales, "test weight");
        return (codes, scales);
    }

    private static QuantizedWeight Upload(IBackend backend, byte[] codes, float[] scales, int n, int k) =>
        new(backend.FromHost<byte>(codes, new Shape(n, k)), backend.FromHost<float>(scales, new Shape(n)));

    /// <summary>The CPU's FP8 product in F64 of x (as the GPU stores it) and the same weight, then the epilogue.</summary>
    private double[] CpuProduct(byte[] codes, float[] scales, double[] xv, int m, int n, int k, double[]? biasv, double[]? y0v, double[]? addv,
        MatMulEpilogue epilogue = MatMulEpilogue.None, RmsNormPrologue? norm = null)
    {
        var y = y0v is null ? _cpu.Allocate(new Shape(m, n), DType.F64) : TestTensors.FromDoubles(_cpu, y0v, DType.F64, m, n);
        var aux = epilogue == MatMulEpilogue.Gelu ? _cpu.Allocate(new Shape(m, n), DType.F64) : null;
        _cpu.QuantizedMatMul(TestTensors.FromDoubles(_cpu, xv, DType.F64, m, k), Upload(_cpu, codes, scales, n, k), y,
            beta: y0v is null ? 0.0 : 1.0, bias: biasv is null ? null : TestTensors.FromDoubles(_cpu, biasv, DType.F64, n),
            epilogue: epilogue, auxiliary: aux, addend: addv is null ? null : TestTensors.FromDoubles(_cpu, addv, DType.F64, m, n), norm: norm);
        return TestTensors.ToDoubles(_cpu, y);
    }

    [Theory]
    [MemberData(nameof(Products))]
    public void Fp8ProductMatchesTheCpuInF64(DType dtype, int m, bool withBias, Residual residual)
    {
        var (codes, scales) = RandomWeight(N, K);
        var weight = Upload(Gpu, codes, scales, N, K);
        var (x, xv) = Random(dtype, 1, m, K);
        var (bias, bv) = Random(dtype, 1, N);
        var (y0, y0v) = Random(dtype, 1, m, N);
        var (wide, widev) = Random(dtype, 1, m, N + 16);                 // the addend: a column slice of a wider tensor
        var addend = wide.Slice(1, 16, N);
        var addv = Enumerable.Range(0, m * N).Select(i => widev[i / N * (N + 16) + 16 + i % N]).ToArray();
        var y = residual == Residual.Beta ? y0 : Poisoned(dtype, m, N);
        Gpu.QuantizedMatMul(x, weight, y, beta: residual == Residual.Beta ? 1.0 : 0.0, bias: withBias ? bias : null,
            addend: residual == Residual.Addend ? addend : null);
        var expected = CpuProduct(codes, scales, xv, m, N, K, withBias ? bv : null, residual == Residual.Beta ? y0v : null,
            residual == Residual.Addend ? addv : null);
        AssertClose(expected, Download(y), 1e-2, $"{dtype} M={m} bias={withBias} {residual} (tensor cores: {Gpu.LastFp8ProductOnTensorCores}, " +
            $"matrix-vector: {Gpu.LastFp8ProductOnMatrixVector})");
        // 1 to 4 rows with no epilogue run the matrix-vector kernel's FP8 form (gemv_stream_f8_*), more the quantizer and cuBLASLt.
        Assert.Equal(m <= 4, Gpu.LastFp8ProductOnMatrixVector);
        if (m <= 4) Assert.False(Gpu.LastFp8ProductOnTensorCores);
        Assert.Equal(widev, Download(wide));                              // the addend is read, not written
    }

    /// <summary>Shapes that fit (K and N multiples of 16, aligned rows) run on cuBLASLt's FP8 kernels on 8.9+; N = 517 falls back, with the same result.</summary>
    [Fact]
    public void FittingShapesRunOnTheFp8TensorCores()
    {
        var (codes, scales) = RandomWeight(N, K);
        var (x, xv) = Random(DType.BF16, 1, 8, K);
        var y = Poisoned(DType.BF16, 8, N);
        Gpu.QuantizedMatMul(x, Upload(Gpu, codes, scales, N, K), y);
        Assert.Equal(Fp8TensorCores, Gpu.LastFp8ProductOnTensorCores);
        AssertClose(CpuProduct(codes, scales, xv, 8, N, K, null, null, null), Download(y), 1e-2, "on the tensor cores");
        var (codes2, scales2) = RandomWeight(517, K);
        var y2 = Poisoned(DType.BF16, 8, 517);
        Gpu.QuantizedMatMul(x, Upload(Gpu, codes2, scales2, 517, K), y2);
        Assert.False(Gpu.LastFp8ProductOnTensorCores, "N = 517 is no multiple of 16: the dequantized fallback");
        AssertClose(CpuProduct(codes2, scales2, xv, 8, 517, K, null, null, null), Download(y2), 1e-2, "the fallback");
    }

    /// <summary>quantize_rows_fp8_*'s codes and scales equal <see cref="Fp8Quantization.QuantizeRow"/>'s bit for bit, a row of zeros and a row with a NaN included.</summary>
    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    [InlineData(DType.F32)]
    public void QuantizeKernelGivesTheCpusCodesAndScales(DType dtype)
    {
        const int m = 7, k = 1000;
        var values = new double[m * k];
        for (int i = 0; i < values.Length; i++) values[i] = (Rng.NextDouble() * 2 - 1) * Math.Pow(10, Rng.Next(-5, 3));
        for (int c = 0; c < k; c++) values[2 * k + c] = 0;
        values[4 * k + 17] = double.NaN;
        var x = Upload(values, dtype, m, k);
        var stored = Stored(values, dtype);
        var codes = Gpu.Allocate(new Shape(m, k), DType.F8E4M3);
        var scales = Gpu.Allocate(new Shape(m), DType.F32);
        Gpu.QuantizeRowsFp8ForTests(x, null, codes, scales);
        var gotCodes = Gpu.ToArray<byte>(codes);
        var gotScales = Gpu.ToArray<float>(scales);
        for (int r = 0; r < m; r++)
        {
            var expected = new byte[k];
            float s = Fp8Quantization.QuantizeRow([.. stored.Skip(r * k).Take(k).Select(v => (float)v)], expected);
            Assert.True(s.Equals(gotScales[r]), $"row {r}: scale {gotScales[r]} against {s}");
            Assert.Equal(expected, gotCodes.Skip(r * k).Take(k).ToArray());
        }
    }

    /// <summary>RMSNorm on the way (3e-2, the class says why), GELU after (1e-2).</summary>
    [Theory]
    [InlineData(DType.BF16, 4)]
    [InlineData(DType.BF16, 64)]
    [InlineData(DType.F16, 7)]
    public void NormAndGeluMatchTheCpuInF64(DType dtype, int m)
    {
        var (codes, scales) = RandomWeight(N, K);
        var weight = Upload(Gpu, codes, scales, N, K);
        var (x, xv) = Random(dtype, 1, m, K);
        var (g, gv) = Random(dtype, 1, K);
        var (bias, bv) = Random(dtype, 1, N);
        var y = Poisoned(dtype, m, N);
        Gpu.QuantizedMatMul(x, weight, y, bias: bias, norm: new RmsNormPrologue(g, 1e-5));
        var expected = CpuProduct(codes, scales, xv, m, N, K, bv, null, null, norm: new RmsNormPrologue(TestTensors.FromDoubles(_cpu, gv, DType.F64, K), 1e-5));
        AssertClose(expected, Download(y), 3e-2, $"{dtype} M={m} with a norm");
        Assert.Equal(m <= 4, Gpu.LastFp8ProductOnMatrixVector);   // the norm rides in the matrix-vector form's staging
        var aux = Poisoned(dtype, m, N);
        Gpu.QuantizedMatMul(x, weight, y, bias: bias, epilogue: MatMulEpilogue.Gelu, auxiliary: aux);
        AssertClose(CpuProduct(codes, scales, xv, m, N, K, bv, null, null, MatMulEpilogue.Gelu), Download(y), 1e-2, $"{dtype} M={m} GELU");
        Assert.False(Gpu.LastFp8ProductOnMatrixVector, "GELU is not the matrix-vector form's epilogue");
    }

    /// <summary>Dequantize and the FP8 table's lookups equal the CPU's in F32 exactly (scale x code, one fp32 rounding on both).</summary>
    [Fact]
    public void DequantizeAndLookupsEqualTheCpuExactly()
    {
        var (codes, scales) = RandomWeight(40, 48);
        var onGpu = Upload(Gpu, codes, scales, 40, 48);
        var onCpu = Upload(_cpu, codes, scales, 40, 48);
        var w = Gpu.Allocate(new Shape(40, 48), DType.F32);
        var wc = _cpu.Allocate(new Shape(40, 48), DType.F32);
        Gpu.Dequantize(onGpu, w);
        _cpu.Dequantize(onCpu, wc);
        Assert.Equal(_cpu.ToArray<float>(wc), Gpu.ToArray<float>(w));
        int[] ids = [3, 0, 39, 5];
        var o = Gpu.Allocate(new Shape(4, 48), DType.F32);
        var oc = _cpu.Allocate(new Shape(4, 48), DType.F32);
        Gpu.QuantizedEmbeddingForward(UploadInts(ids, 4), onGpu, o);
        _cpu.QuantizedEmbeddingForward(_cpu.FromArray(ids, 4), onCpu, oc);
        Assert.Equal(_cpu.ToArray<float>(oc), Gpu.ToArray<float>(o));
        Gpu.QuantizedEmbeddingShardForward(UploadInts([1, 41, 45, 79], 4), onGpu, 40, o);
        _cpu.QuantizedEmbeddingShardForward(_cpu.FromArray(new[] { 1, 41, 45, 79 }, 4), onCpu, 40, oc);
        Assert.Equal(_cpu.ToArray<float>(oc), Gpu.ToArray<float>(o));
    }

    /// <summary>A recorded product (the quantizer's scratch taken inside the recording) replays the eager result; F64 is refused naming the dtypes.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(64)]
    public void RecordedProductReplaysTheEagerResult(int m)
    {
        const DType dtype = DType.BF16;
        var (codes, scales) = RandomWeight(N, K);
        var weight = Upload(Gpu, codes, scales, N, K);
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
        // The same plan and algorithm replay; cuBLASLt may reduce a split K in another order: BF16's tolerance.
        AssertClose(Download(eager), Download(replayed), 1e-2, $"M={m} replayed");
        var e = Assert.Throws<ArgumentException>(() => Gpu.QuantizedMatMul(Gpu.Zeros(new Shape(2, K), DType.F64), weight, Gpu.Zeros(new Shape(2, N), DType.F64)));
        Assert.Contains("FP8 weights take BF16, F16 or F32", e.Message);
    }
}
