using Xunit;
using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Weight-only int8 products on the GPU (<see cref="CudaBackend.QuantizedMatMul"/>, <see cref="CudaBackend.Dequantize"/>) against
/// the CPU backend's in F64 on the same int8 weights (<see cref="Int8Quantization.QuantizeRows"/> of random weights, the seed
/// in the test's output): 1 to 4 rows of x on the matrix-vector kernel's int8 form (gemv.cu, <c>gemv_stream_q8_*</c>); 5 to 64
/// rows with K a multiple of 64 on the decode product's int8 form (decode_gemm.cu, <c>decode_gemm_q8_*</c>, on compute capability
/// 9.0 and up); 7 and 96 rows at K = 1040 (no multiple of 64), and 96 at any K, on the dequantized weight and cuBLASLt.
/// Tolerances (relative, over the whole tensor): F32 1e-5 (fp32 sums over K = 1040 terms; on the dequantized path each weight is
/// also rounded once to fp32, 2^-24); BF16 and F16 1e-2 (the stored output keeps 8 or 11 significant bits, 2^-9 or 2^-11
/// relative, and the dequantized path rounds each weight to the same type; the decode product's int8 values become bf16/f16
/// exactly and its sums are fp32, so its only rounding beyond fp32 is the output's).
/// <see cref="KernelEmulationTests.MatrixVectorKernelsWithInt8WeightsGiveTheReferenceResultsOnTheCpuEmulation"/> and
/// <see cref="KernelEmulationTests.DecodeProductsGiveTheReferenceResultsOnTheCpuEmulation"/> check the int8 kernels' logic
/// without a GPU; these tests have not yet run on a device.
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
    public void QuantizedProductMatchesTheCpuInF64(DType dtype, int m, bool withBias, Residual residual) =>
        AssertProductMatchesTheCpu(dtype, m, K, withBias, residual);

    /// <summary>
    /// Decode-size products (5 to 64 rows): BF16 at 5, 17, 33 and 64 rows (each of the kernel's three x-tile sizes, 33 and 64
    /// at the largest) with the bias alone, beta = 1 without a bias, and bias and addend, at K = 1024 (16 k-tiles: 5 row blocks of
    /// N = 517 split into 8 slices, a thread-block cluster) and at K = 1088 (17 k-tiles: one slice); F16 once.
    /// </summary>
    public static TheoryData<DType, int, int, bool, Residual> DecodeSizeProducts()
    {
        var data = new TheoryData<DType, int, int, bool, Residual>();
        foreach (int m in new[] { 5, 17, 33, 64 })
        {
            data.Add(DType.BF16, m, 1024, true, Residual.None);
            data.Add(DType.BF16, m, 1024, false, Residual.Beta);
            data.Add(DType.BF16, m, 1024, true, Residual.Addend);
        }
        data.Add(DType.BF16, 33, 1088, true, Residual.Addend);
        data.Add(DType.F16, 17, 1024, true, Residual.Addend);
        return data;
    }

    /// <summary>
    /// At 5 to 64 rows (the int8 decode product where the device has it, else the dequantized path), y = x W^T + bias (+ y or
    /// + addend) equals the CPU's F64 product on the same int8 weights; the addend is left as it was.
    /// <see cref="DecodeSizeInt8KernelAgreesWithTheDequantizedProductAndRunsOnlyWhenAllowed"/> checks which kernel ran.
    /// </summary>
    [Theory]
    [MemberData(nameof(DecodeSizeProducts))]
    public void DecodeSizeQuantizedProductMatchesTheCpuInF64(DType dtype, int m, int k, bool withBias, Residual residual) =>
        AssertProductMatchesTheCpu(dtype, m, k, withBias, residual);

    /// <summary>
    /// With a norm (the int8 decode step's RMSNorm riding in its products): 1 and 3 rows on the matrix-vector kernel, which
    /// normalizes x as it stages it, and 17 and 64 rows (bf16, K = 1024) on the decode product, which scales x's fragments by
    /// the norm weight on the way (session 33; before, x normalized into scratch), against the CPU's F64 product with the same
    /// norm. The tolerance is the dtype's, as above: x times the norm weight is rounded to the dtype once on every path, the
    /// decode product then applying 1 / rms to the fp32 sums.
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 1, K)]
    [InlineData(DType.BF16, 3, K)]
    [InlineData(DType.BF16, 17, 1024)]
    [InlineData(DType.BF16, 64, 1024)]
    public void NormalizedQuantizedProductMatchesTheCpuInF64(DType dtype, int m, int k)
    {
        var (values, scales) = RandomQuantized(N, k);
        var (x, xv) = Random(dtype, 1, m, k);
        var (gain, gainv) = Random(dtype, 1, k);
        var (bias, biasv) = Random(dtype, 1, N);
        var y = Poisoned(dtype, m, N);
        const double eps = 1e-5;
        Gpu.QuantizedMatMul(x, Upload(Gpu, values, scales, N, k), y, bias: bias, norm: new RmsNormPrologue(gain, eps));

        var expected = _cpu.Allocate(new Shape(m, N), DType.F64);
        _cpu.QuantizedMatMul(TestTensors.FromDoubles(_cpu, xv, DType.F64, m, k), Upload(_cpu, values, scales, N, k), expected,
            bias: TestTensors.FromDoubles(_cpu, biasv, DType.F64, N), norm: new RmsNormPrologue(TestTensors.FromDoubles(_cpu, gainv, DType.F64, k), eps));
        AssertClose(TestTensors.ToDoubles(_cpu, expected), Download(y), Tolerance(dtype), $"{dtype} M={m} K={k} with a norm");
    }

    /// <summary>y = x W^T + bias (+ y or + addend) on the GPU against the CPU's F64 product on the same int8 weights (N, k); the addend is left as it was.</summary>
    private void AssertProductMatchesTheCpu(DType dtype, int m, int k, bool withBias, Residual residual)
    {
        var (values, scales) = RandomQuantized(N, k);
        var (x, xv) = Random(dtype, 1, m, k);
        var (bias, biasv) = Random(dtype, 1, N);
        var (y0, y0v) = Random(dtype, 1, m, N);
        var (wide, widev) = Random(dtype, 1, m, N + 8);
        var addend = wide.Slice(1, 0, N);
        var addv = Enumerable.Range(0, m * N).Select(i => widev[i / N * (N + 8) + i % N]).ToArray();
        var y = residual == Residual.Beta ? y0 : Poisoned(dtype, m, N);

        Gpu.QuantizedMatMul(x, Upload(Gpu, values, scales, N, k), y, beta: residual == Residual.Beta ? 1.0 : 0.0,
            bias: withBias ? bias : null, addend: residual == Residual.Addend ? addend : null);

        var expected = CpuProduct(values, scales, xv, m, withBias ? biasv : null, residual == Residual.Beta ? y0v : null,
            residual == Residual.Addend ? addv : null, MatMulEpilogue.None, out _, k);
        string what = $"{dtype} M={m} K={k} bias={withBias} {residual}";
        AssertClose(expected, Download(y), Tolerance(dtype), what);
        if (residual == Residual.Addend) AssertClose(widev, Download(wide), 0, $"{what}: the addend is not written");
    }

    /// <summary>
    /// With <see cref="CudaBackendOptions.QuantizedDecodeProducts"/> on (the default) and a compute capability 9.0 or later device,
    /// 5, 17, 33 and 64 rows at K = 1024 run on <c>decode_gemm_q8_*_m{2,4,8,8}</c> and nothing is dequantized, while 17 rows with
    /// the GELU epilogue, and 17 rows at K = 1040 (no multiple of 64), dequantize; off, every one of them dequantizes (the op
    /// profiler's kernel names, so a routing fault cannot pass the comparison). The two paths agree within the dtype's tolerance.
    /// </summary>
    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void DecodeSizeInt8KernelAgreesWithTheDequantizedProductAndRunsOnlyWhenAllowed(DType dtype)
    {
        using var on = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
        using var off = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { QuantizedDecodeProducts = false, ProfileOps = true });
        bool clusters = on.CudaDevice.ComputeCapability.Major >= 9;
        string suffix = dtype == DType.BF16 ? "bf16" : "f16";
        var (_, biasv) = Random(dtype, 1, N);
        foreach (var (m, k, epilogue) in new[] { (5, 1024, MatMulEpilogue.None), (17, 1024, MatMulEpilogue.None), (33, 1024, MatMulEpilogue.None),
                     (64, 1024, MatMulEpilogue.None), (17, 1024, MatMulEpilogue.Gelu), (17, 1040, MatMulEpilogue.None) })
        {
            var (values, scales) = RandomQuantized(N, k);
            var (_, xv) = Random(dtype, 1, m, k);
            double[] Run(CudaBackend backend)
            {
                backend.Profiler!.Reset();
                var y = backend.Allocate(new Shape(m, N), dtype);
                var aux = epilogue == MatMulEpilogue.Gelu ? backend.Allocate(new Shape(m, N), dtype) : null;
                backend.QuantizedMatMul(Upload(backend, xv, dtype, m, k), Upload(backend, values, scales, N, k), y,
                    bias: Upload(backend, biasv, dtype, N), epilogue: epilogue, auxiliary: aux);
                return Download(backend, y);
            }
            string what = $"{dtype} M={m} K={k} {epilogue}";
            var viaKernel = Run(on);
            var names = on.Profiler!.Totals().Select(r => r.Name).ToList();
            if (clusters && k % 64 == 0 && epilogue == MatMulEpilogue.None)
            {
                Assert.Contains($"decode_gemm_q8_{suffix}_m{(m <= 16 ? 2 : m <= 32 ? 4 : 8)}", names);
                Assert.DoesNotContain(names, name => name.StartsWith("dequantize_", StringComparison.Ordinal));
            }
            else
            {
                Assert.Contains($"dequantize_{suffix}", names);
                Assert.DoesNotContain(names, name => name.StartsWith("decode_gemm_q8", StringComparison.Ordinal));
            }
            var viaDequantized = Run(off);
            names = off.Profiler!.Totals().Select(r => r.Name).ToList();
            Assert.Contains($"dequantize_{suffix}", names);
            Assert.DoesNotContain(names, name => name.StartsWith("decode_gemm_q8", StringComparison.Ordinal));
            AssertClose(viaDequantized, viaKernel, Tolerance(dtype), $"{what}: QuantizedDecodeProducts on against off");
        }
    }

    /// <summary>
    /// llama-1b's four products of a 64-sequence decode step (K = 2048 for QKV, the attention output and gate/up as one
    /// product; K = 8192 for down), BF16, timed for the log (not a pass/fail bar): the int8 decode product, the same int8 weight
    /// dequantized then cuBLASLt (<see cref="CudaBackendOptions.QuantizedDecodeProducts"/> off), and cuBLASLt on the BF16
    /// weight. Each runs over 16 distinct copies of its weight in turn (as the 16 layers are), so the L2 cannot serve a repeat,
    /// inside an inference scope (early weight loads on, as in a decode step); CUDA events, median of 10 after 3 warm-ups.
    /// GB/s is the int8 weight's bytes over the int8 kernel's time.
    /// </summary>
    [Fact]
    public void DecodeStepProductsOf64SequencesOnLlama1bShapeReportTheirTime()
    {
        const int m = 64, layers = 16;
        using var off = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { QuantizedDecodeProducts = false });
        var lines = new List<string>
        {
            $"llama-1b decode-step products, M = {m}, BF16 x, {layers} weight copies each, {Gpu.CudaDevice.Architecture}",
            "| product | N x K | int8 decode_gemm_q8 us | int8 dequantize + cuBLASLt us | bf16 cuBLASLt us | int8 GB/s |",
            "|---|---|---|---|---|---|",
        };
        foreach (var (name, n, k) in new[] { ("QKV", 3072, 2048), ("attention output", 2048, 2048), ("gate + up", 16384, 2048), ("down", 2048, 8192) })
        {
            var values = new sbyte[n * k];
            Rng.NextBytes((byte[])(object)values);
            var scales = Enumerable.Range(0, n).Select(_ => (float)(0.001 + 0.001 * Rng.NextDouble())).ToArray();
            var (_, xv) = Random(DType.BF16, 1, m, k);
            var onWeights = Enumerable.Range(0, layers).Select(_ => Upload(Gpu, values, scales, n, k)).ToArray();
            var offWeights = Enumerable.Range(0, layers).Select(_ => Upload(off, values, scales, n, k)).ToArray();
            var bf16Weights = onWeights.Select(w => { var d = Gpu.Allocate(new Shape(n, k), DType.BF16); Gpu.Dequantize(w, d); return d; }).ToArray();
            var (xOn, xOff) = (Upload(Gpu, xv, DType.BF16, m, k), Upload(off, xv, DType.BF16, m, k));
            var (yOn, yOff) = (Gpu.Allocate(new Shape(m, n), DType.BF16), off.Allocate(new Shape(m, n), DType.BF16));
            double int8, dequantized, bf16;
            using (Gpu.EnterInference())
            {
                int8 = MedianMs(Gpu, () => { foreach (var w in onWeights) Gpu.QuantizedMatMul(xOn, w, yOn); }, 10) * 1e3 / layers;
                bf16 = MedianMs(Gpu, () => { foreach (var w in bf16Weights) Gpu.MatMul(xOn, w, yOn, transposeB: true); }, 10) * 1e3 / layers;
            }
            using (off.EnterInference())
                dequantized = MedianMs(off, () => { foreach (var w in offWeights) off.QuantizedMatMul(xOff, w, yOff); }, 10) * 1e3 / layers;
            lines.Add(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"| {name} | {n} x {k} | {int8:F1} | {dequantized:F1} | {bf16:F1} | {(double)n * k / (int8 * 1e-6) / 1e9:F0} |"));
            foreach (var t in onWeights.Concat(offWeights)) { t.Values.Storage.Dispose(); t.Scales.Storage.Dispose(); }
            foreach (var t in bf16Weights) t.Storage.Dispose();
        }
        TestContext.Current.TestOutputHelper?.WriteLine(string.Join('\n', lines));
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
    /// The lookup of an int8 embedding table equals the dequantized table's rows (scale * q rounded once to F32 on both, so F32
    /// is bit for bit the CPU's): ids repeating, the zero row (scale 0), and the accumulating form onto existing rows.
    /// </summary>
    [Fact]
    public void QuantizedEmbeddingLookupEqualsTheDequantizedRowsExactly()
    {
        const int v = 40, c = 200;
        var (values, scales) = RandomQuantized(v, c);
        int[] ids = [3, 5, 3, 39, 0, 5];
        var output = Gpu.Allocate(new Shape(ids.Length, c), DType.F32);
        Gpu.QuantizedEmbeddingForward(UploadInts(ids, ids.Length), Upload(Gpu, values, scales, v, c), output);
        var table = _cpu.Allocate(new Shape(v, c), DType.F32);
        _cpu.Dequantize(Upload(_cpu, values, scales, v, c), table);
        var rows = _cpu.ToArray<float>(table);
        var expected = ids.SelectMany(id => rows.Skip(id * c).Take(c)).ToArray();
        Assert.Equal(expected, Gpu.ToArray<float>(output));
        Gpu.QuantizedEmbeddingForward(UploadInts(ids, ids.Length), Upload(Gpu, values, scales, v, c), output, accumulate: true);
        Assert.Equal(expected.Select(x => x + x).ToArray(), Gpu.ToArray<float>(output));

        // As a vocabulary shard holding rows 3..42 of a whole table: ids below 3 and past 42 give zeros.
        int[] shardIds = [2, 3, 42, 43, 20];
        var shard = Gpu.Allocate(new Shape(shardIds.Length, c), DType.F32);
        Gpu.QuantizedEmbeddingShardForward(UploadInts(shardIds, shardIds.Length), Upload(Gpu, values, scales, v, c), 3, shard);
        var shardExpected = shardIds.SelectMany(id => id is >= 3 and < 43 ? rows.Skip((id - 3) * c).Take(c) : Enumerable.Repeat(0f, c)).ToArray();
        Assert.Equal(shardExpected, Gpu.ToArray<float>(shard));
    }

    /// <summary>
    /// With <see cref="CudaBackendOptions.MatrixVectorKernels"/> on, 1 to 4 rows of x run on <c>gemv_stream_q8_*</c> and nothing is
    /// dequantized, while 7 rows (K = 1040 is no multiple of 64, so not the decode product either), and the GELU epilogue at 2, dequantize; off, every product dequantizes (the op profiler's kernel
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
    /// eager result, bit for bit on the int8 kernels (1 row: warp sums in a fixed order, no atomics; 33 rows at K = 1024 on the
    /// decode product: the cluster's slices summed in slice order) and within BF16's tolerance on the dequantized path (7 rows
    /// at K = 1040: the dequantized weight is scratch taken inside the recording; cuBLASLt may reduce a split K in any order).
    /// </summary>
    [Theory]
    [InlineData(1, K)]
    [InlineData(7, K)]
    [InlineData(33, 1024)]
    public void RecordedProductReplaysTheEagerResult(int m, int k)
    {
        const DType dtype = DType.BF16;
        var (values, scales) = RandomQuantized(N, k);
        var weight = Upload(Gpu, values, scales, N, k);
        var (x, _) = Random(dtype, 1, m, k);
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
        bool int8Kernel = m == 1 || (k % 64 == 0 && Gpu.CudaDevice.ComputeCapability.Major >= 9);
        if (int8Kernel) Assert.Equal(expected, Download(replayed));
        else AssertClose(expected, Download(replayed), Tolerance(dtype), $"M={m} replayed");
    }

    /// <summary>
    /// <see cref="CudaBackend.QuantizedMatMulSwiGlu"/> over two int8 weights (F = 517, K = 1024) against the CPU's F64: at 2 and 3
    /// rows the int8 stream's SwiGLU form and at 17 and 64 rows of BF16 the int8 decode product's (on compute capability 9.0),
    /// each one launch that the op profiler must name, normalized or not, with biases or not; at 96 rows both weights dequantized
    /// for one product at N = 2F. Tolerance 1e-2 for BF16, as the products'.
    /// </summary>
    [Theory]
    [InlineData(2, true, false)]
    [InlineData(3, false, true)]
    [InlineData(17, true, true)]
    [InlineData(64, false, false)]
    [InlineData(96, true, false)]
    public void SwiGluOverTwoInt8WeightsMatchesTheCpuInF64(int m, bool withNorm, bool withBias)
    {
        const DType dtype = DType.BF16;
        const int k = 1024;
        using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
        var (gv, gs) = RandomQuantized(N, k);
        var (uv, us) = RandomQuantized(N, k);
        var (_, xv) = Random(dtype, 1, m, k);
        var (_, gainv) = Random(dtype, 1, k);
        var (_, bgv) = Random(dtype, 1, N);
        var (_, buv) = Random(dtype, 1, N);
        const double eps = 1e-5;
        var y = gpu.Allocate(new Shape(m, N), dtype);
        gpu.Profiler!.Reset();
        gpu.QuantizedMatMulSwiGlu(TestTensors.FromDoubles(gpu, xv, dtype, m, k), Upload(gpu, gv, gs, N, k), Upload(gpu, uv, us, N, k), y,
            withBias ? TestTensors.FromDoubles(gpu, bgv, dtype, N) : null, withBias ? TestTensors.FromDoubles(gpu, buv, dtype, N) : null,
            withNorm ? new RmsNormPrologue(TestTensors.FromDoubles(gpu, gainv, dtype, k), eps) : null);
        var names = gpu.Profiler!.Totals().Select(r => r.Name).ToList();
        if (m <= 4) Assert.Contains($"gemv_stream_q8_swiglu_bf16_m{m}", names);
        else if (m <= 64 && Gpu.CudaDevice.ComputeCapability.Major >= 9) Assert.Contains($"decode_gemm_q8_swiglu_bf16_m{(m <= 16 ? 2 : m <= 32 ? 4 : 8)}", names);

        var expected = _cpu.Allocate(new Shape(m, N), DType.F64);
        _cpu.QuantizedMatMulSwiGlu(TestTensors.FromDoubles(_cpu, xv, DType.F64, m, k), Upload(_cpu, gv, gs, N, k), Upload(_cpu, uv, us, N, k), expected,
            withBias ? TestTensors.FromDoubles(_cpu, bgv, DType.F64, N) : null, withBias ? TestTensors.FromDoubles(_cpu, buv, DType.F64, N) : null,
            withNorm ? new RmsNormPrologue(TestTensors.FromDoubles(_cpu, gainv, DType.F64, k), eps) : null);
        AssertClose(TestTensors.ToDoubles(_cpu, expected), Download(gpu, y), Tolerance(dtype), $"M={m} norm={withNorm} bias={withBias}");
    }

    /// <summary>
    /// <see cref="CudaBackend.QuantizedMatMulRopeAppend"/> over an int8 qkv weight (8 query heads, 2 kv heads of 64, K = 1024)
    /// at 1 and 3 rows of a dense cache, normalized: one launch (the int8 stream's ROPE form, which the op profiler must name),
    /// bit for bit the GPU's <see cref="CudaBackend.QuantizedMatMul"/> then <see cref="CudaBackend.RopeAndAppend"/>.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void Int8QkvRotatedAndAppendedInOneLaunchMatchesItsParts(int n)
    {
        const DType dtype = DType.BF16;
        const int h = 8, kh = 2, d = 64, rows = (h + 2 * kh) * d, k = 1024, seq = 64;
        var (values, scales) = RandomQuantized(rows, k);
        var (_, xv) = Random(dtype, 1, n, k);
        var (_, gainv) = Random(dtype, 1, k);
        var cachev = Stored(Enumerable.Range(0, n * seq * 2 * kh * d).Select(_ => Rng.NextDouble() * 2 - 1).ToArray(), dtype);
        var positions = Enumerable.Range(0, n).Select(i => 3 + 11 * i).ToArray();
        (double[] Qkv, double[] Cache) OnGpu(bool fused)
        {
            using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
            var x = TestTensors.FromDoubles(gpu, xv, dtype, n, k);
            var norm = new RmsNormPrologue(TestTensors.FromDoubles(gpu, gainv, dtype, k), 1e-5);
            var weight = Upload(gpu, values, scales, rows, k);
            var qkv = gpu.Allocate(new Shape(n, 1, h + 2 * kh, d), dtype);
            var cache = TestTensors.FromDoubles(gpu, cachev, dtype, n, seq, 2 * kh, d);
            var pos = gpu.FromArray(positions, n);
            gpu.Profiler!.Reset();
            if (fused) gpu.QuantizedMatMulRopeAppend(x, norm, weight, null, qkv, h, cache, pos, 500000.0);
            else
            {
                gpu.QuantizedMatMul(x, weight, qkv.Reshape(n, rows), norm: norm);
                gpu.RopeAndAppend(qkv, h, cache, pos, 500000.0);
            }
            if (fused) Assert.Contains($"gemv_stream_q8_rope_bf16_m{n}", gpu.Profiler!.Totals().Select(r => r.Name));
            return (Download(gpu, qkv), Download(gpu, cache));
        }
        var one = OnGpu(fused: true);
        var parts = OnGpu(fused: false);
        Assert.Equal(parts.Qkv, one.Qkv);
        Assert.Equal(parts.Cache, one.Cache);
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
    /// x (M, k) W^T + bias, + y0 with beta = 1 or + addend, then the epilogue; <paramref name="preActivation"/> is GELU's input.
    /// </summary>
    private double[] CpuProduct(sbyte[] values, float[] scales, double[] xv, int m, double[]? biasv, double[]? y0v, double[]? addv,
        MatMulEpilogue epilogue, out double[]? preActivation, int k = K)
    {
        var y = y0v is null ? _cpu.Allocate(new Shape(m, N), DType.F64) : TestTensors.FromDoubles(_cpu, y0v, DType.F64, m, N);
        var aux = epilogue == MatMulEpilogue.Gelu ? _cpu.Allocate(new Shape(m, N), DType.F64) : null;
        _cpu.QuantizedMatMul(TestTensors.FromDoubles(_cpu, xv, DType.F64, m, k), Upload(_cpu, values, scales, N, k), y,
            beta: y0v is null ? 0.0 : 1.0, bias: biasv is null ? null : TestTensors.FromDoubles(_cpu, biasv, DType.F64, N),
            epilogue: epilogue, auxiliary: aux, addend: addv is null ? null : TestTensors.FromDoubles(_cpu, addv, DType.F64, m, N));
        preActivation = aux is null ? null : TestTensors.ToDoubles(_cpu, aux);
        return TestTensors.ToDoubles(_cpu, y);
    }
}
