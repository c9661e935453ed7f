using Xunit;
using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Group-wise int4 products on the GPU (<see cref="CudaBackend.QuantizedMatMul"/>, <see cref="CudaBackend.Dequantize"/> over
/// <see cref="QuantizedWeight.Int4"/>) against the CPU backend's in F64 on the same int4 weights (<see cref="Int4Quantization.QuantizeRows"/>
/// of random weights, the seed in the test's output): 1 to 4 rows of x on the persistent matrix-vector stream's int4 form
/// (gemv.cu, <c>gemv_stream_int4_*</c>, K and the group multiples of 32) or, for other shapes (K = 1000, groups of 16), the
/// one-warp-a-row kernel (int4.cu, <c>gemv_int4_*</c>), which the op profiler must name; 7 to 64 rows of BF16 and F16 on
/// the decode product's int4 form (decode_gemm.cu, <c>decode_gemm_int4_*</c>, compute capability 9.0; groups of a multiple of
/// 64 its form by group sums, <c>decode_gemm_int4g_*</c>, whose weights are exact rather than rounded to x's type); 7 rows of F32, 96
/// rows and the GELU epilogue on the dequantized weight (<c>dequantize_int4_*</c>) and cuBLASLt; groups of 16, 32, 64, 128 and
/// a whole row; N odd; K 1024, 1056, 1088 and 1000. Tolerances (relative, over the whole tensor): F32 1e-5 (fp32 sums over
/// K = 1024 terms; the dequantized path also rounds each weight once to fp32); BF16 and F16 1e-2 (the output keeps 8 or 11
/// significant bits, and the dequantized path and the decode product round each weight to the same type).
/// <see cref="KernelEmulationTests.Int4KernelsGiveTheDequantizedProductOnTheCpuEmulation"/> and
/// <see cref="KernelEmulationTests.DecodeProductsGiveTheReferenceResultsOnTheCpuEmulation"/> check the kernels' logic without
/// a GPU.
/// </summary>
[Collection("cuda")]
public sealed class CudaInt4QuantizedMatMulTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private const int K = 1024, N = 517;

    private readonly CpuBackend _cpu = new(2);

    public static TheoryData<DType, int, int, int, bool, bool> Products()
    {
        var data = new TheoryData<DType, int, int, int, bool, bool>();
        foreach (var dtype in new[] { DType.F32, DType.BF16 })
            foreach (int m in new[] { 1, 2, 4, 7, 96 })
            {
                data.Add(dtype, m, K, 128, true, false);
                data.Add(dtype, m, K, 32, false, true);
            }
        data.Add(DType.F16, 3, K, -1, true, true);
        data.Add(DType.F16, 17, K, 128, true, false);
        // The stream at K not a multiple of 128; the one-warp-a-row kernel at K not a multiple of 32 and at groups of 16.
        data.Add(DType.BF16, 3, 1056, 32, true, true);
        data.Add(DType.F32, 1, 1056, -1, false, false);
        data.Add(DType.BF16, 2, 1000, -1, true, false);
        data.Add(DType.F32, 4, 1000, 40, false, true);
        data.Add(DType.BF16, 1, K, 16, true, false);
        data.Add(DType.BF16, 33, K, 64, false, true);   // the decode product's int4 form at MT 8, groups of 64
        data.Add(DType.F16, 64, 1088, -1, true, false); // K = 1088 (17 k-tiles), one group a row
        return data;
    }

    /// <summary>y = x W^T + bias (+ addend) on the GPU equals the CPU's F64 product on the same int4 weight; the kernel is the one the row count picks.</summary>
    [Theory]
    [MemberData(nameof(Products))]
    public void Int4ProductMatchesTheCpuInF64(DType dtype, int m, int k, int group, bool withBias, bool withAddend)
    {
        using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
        var (packed, scales, zeros) = RandomInt4(N, k, group);
        var (_, xv) = Random(dtype, 1, m, k);
        var (_, biasv) = Random(dtype, 1, N);
        var (_, addv) = Random(dtype, 1, m, N);
        var y = gpu.Allocate(new Shape(m, N), dtype);
        gpu.Profiler!.Reset();
        gpu.QuantizedMatMul(Upload(gpu, xv, dtype, m, k), UploadInt4(gpu, packed, scales, zeros, group, k), y,
            bias: withBias ? Upload(gpu, biasv, dtype, N) : null, addend: withAddend ? Upload(gpu, addv, dtype, m, N) : null);
        var names = gpu.Profiler!.Totals().Select(r => r.Name).ToList();
        string suffix = dtype switch { DType.F32 => "f32", DType.BF16 => "bf16", _ => "f16" };
        int g = group == -1 ? k : group;
        if (m <= 4) Assert.Contains(k % 32 == 0 && g % 32 == 0 ? $"gemv_stream_int4_{suffix}_m{m}" : $"gemv_int4_{suffix}_m{m}", names);
        else if (m <= 64 && dtype != DType.F32 && k % 64 == 0 && g % 16 == 0 && Gpu.CudaDevice.ComputeCapability.Major >= 9)
            Assert.Contains($"decode_gemm_int4{(g % 64 == 0 ? "g" : "")}_{suffix}_m{(m <= 16 ? 2 : m <= 32 ? 4 : 8)}", names);
        else Assert.Contains($"dequantize_int4_{suffix}", names);

        var expected = _cpu.Allocate(new Shape(m, N), DType.F64);
        _cpu.QuantizedMatMul(Upload(_cpu, xv, DType.F64, m, k), UploadInt4(_cpu, packed, scales, zeros, group, k), expected,
            bias: withBias ? Upload(_cpu, biasv, DType.F64, N) : null, addend: withAddend ? Upload(_cpu, addv, DType.F64, m, N) : null);
        AssertClose(Download(_cpu, expected), Download(gpu, y), Tolerance(dtype), $"{dtype} M={m} K={k} group={group} bias={withBias} addend={withAddend}");
    }

    /// <summary>The GELU epilogue (the dequantized path) and a norm (at 1 to 4 rows staged normalized by the int4 stream; at
    /// 17 and 64 rows of BF16 applied on the way by the decode product by group sums; at 9 rows of F32, x normalized into
    /// scratch, then the dequantized product) against the CPU's F64.</summary>
    [Theory]
    [InlineData(DType.BF16, 2)]
    [InlineData(DType.F32, 3)]
    [InlineData(DType.F32, 9)]
    [InlineData(DType.BF16, 17)]
    [InlineData(DType.BF16, 64)]
    public void EpilogueAndNormMatchTheCpuInF64(DType dtype, int m)
    {
        var (packed, scales, zeros) = RandomInt4(N, K, 128);
        var (x, xv) = Random(dtype, 1, m, K);
        var (gain, gainv) = Random(dtype, 1, K);
        var aux = Gpu.Allocate(new Shape(m, N), dtype);
        var y = Poisoned(dtype, m, N);
        Gpu.QuantizedMatMul(x, UploadInt4(Gpu, packed, scales, zeros, 128), y, epilogue: MatMulEpilogue.Gelu, auxiliary: aux);
        var expected = _cpu.Allocate(new Shape(m, N), DType.F64);
        var expectedAux = _cpu.Allocate(new Shape(m, N), DType.F64);
        var xc = Upload(_cpu, xv, DType.F64, m, K);
        _cpu.QuantizedMatMul(xc, UploadInt4(_cpu, packed, scales, zeros, 128), expected, epilogue: MatMulEpilogue.Gelu, auxiliary: expectedAux);
        AssertClose(Download(_cpu, expected), Download(y), Tolerance(dtype), $"{dtype} M={m} GELU");

        const double eps = 1e-5;
        var yn = Poisoned(dtype, m, N);
        Gpu.QuantizedMatMul(x, UploadInt4(Gpu, packed, scales, zeros, 128), yn, norm: new RmsNormPrologue(gain, eps));
        _cpu.QuantizedMatMul(xc, UploadInt4(_cpu, packed, scales, zeros, 128), expected, norm: new RmsNormPrologue(Upload(_cpu, gainv, DType.F64, K), eps));
        AssertClose(Download(_cpu, expected), Download(yn), Tolerance(dtype), $"{dtype} M={m} norm");
    }

    /// <summary>
    /// <see cref="CudaBackend.QuantizedMatMulSwiGlu"/> over two int4 weights (F = N = 517, odd) against the CPU's F64: 2 and 3
    /// rows (the int4 stream's SwiGLU form, one launch), 17 and 64 rows of BF16 with groups of 64 and 128 (the decode product by
    /// group sums in its SwiGLU form, one launch, on compute capability 9.0), each of which the op profiler must name;
    /// normalized and with biases; 40 rows with groups of 32 (each weight's decode product, then SwiGLU), 96 rows (both weights
    /// dequantized into one scratch, one product at N = 2F) and 96 with biases (two products). Tolerance as the products':
    /// 1e-2 for BF16.
    /// </summary>
    [Theory]
    [InlineData(2, 128, true, false)]
    [InlineData(3, 32, false, true)]
    [InlineData(17, 128, true, true)]
    [InlineData(64, 128, true, false)]
    [InlineData(64, 64, false, true)]
    [InlineData(40, 32, false, false)]
    [InlineData(96, 128, true, false)]
    [InlineData(96, 128, false, true)]
    public void SwiGluOverTwoInt4WeightsMatchesTheCpuInF64(int m, int group, bool withNorm, bool withBias)
    {
        const DType dtype = DType.BF16;
        using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
        var gate = RandomInt4(N, K, group);
        var up = RandomInt4(N, K, group);
        var (_, xv) = Random(dtype, 1, m, K);
        var (_, gainv) = Random(dtype, 1, K);
        var (_, bgv) = Random(dtype, 1, N);
        var (_, buv) = Random(dtype, 1, N);
        const double eps = 1e-5;
        var y = gpu.Allocate(new Shape(m, N), dtype);
        gpu.Profiler!.Reset();
        gpu.QuantizedMatMulSwiGlu(Upload(gpu, xv, dtype, m, K), UploadInt4(gpu, gate.Packed, gate.Scales, gate.Zeros, group),
            UploadInt4(gpu, up.Packed, up.Scales, up.Zeros, group), y, withBias ? Upload(gpu, bgv, dtype, N) : null,
            withBias ? Upload(gpu, buv, dtype, N) : null, withNorm ? new RmsNormPrologue(Upload(gpu, gainv, dtype, K), eps) : null);
        var names = gpu.Profiler!.Totals().Select(r => r.Name).ToList();
        if (m <= 4) Assert.Contains($"gemv_stream_int4_swiglu_bf16_m{m}", names);
        else if (m <= 64 && group % 64 == 0 && Gpu.CudaDevice.ComputeCapability.Major >= 9)
            Assert.Contains($"decode_gemm_int4g_swiglu_bf16_m{(m <= 16 ? 2 : m <= 32 ? 4 : 8)}", names);
        else Assert.Contains("swiglu_forward_rows_bf16", names);

        var expected = _cpu.Allocate(new Shape(m, N), DType.F64);
        _cpu.QuantizedMatMulSwiGlu(Upload(_cpu, xv, DType.F64, m, K), UploadInt4(_cpu, gate.Packed, gate.Scales, gate.Zeros, group),
            UploadInt4(_cpu, up.Packed, up.Scales, up.Zeros, group), expected, withBias ? Upload(_cpu, bgv, DType.F64, N) : null,
            withBias ? Upload(_cpu, buv, DType.F64, N) : null, withNorm ? new RmsNormPrologue(Upload(_cpu, gainv, DType.F64, K), eps) : null);
        AssertClose(Download(_cpu, expected), Download(gpu, y), Tolerance(dtype), $"M={m} group={group} norm={withNorm} bias={withBias}");
    }

    /// <summary>
    /// The decode product by group sums in 8 stages (<see cref="CudaBackendOptions.Int4DecodeProductStages"/>, the <c>_s8</c>
    /// kernels, which the op profiler must name) gives the 4-stage kernels' bits: the same sums in the same order, only more
    /// tiles in flight; the plain product normalized and the SwiGLU form, at 8, 40 and 64 rows. So do 2 and 4 of x's n8 tiles
    /// at once (<see cref="CudaBackendOptions.Int4DecodeProductXTiles"/>, <c>_j2</c> and <c>_j4</c>; 8 rows take <c>_j2</c> for
    /// both): the same mma steps on the same operands, only interleaved.
    /// </summary>
    [Theory]
    [InlineData(8)]
    [InlineData(40)]
    [InlineData(64)]
    public void EightStagesGiveTheFourStagesBits(int m)
    {
        if (Gpu.CudaDevice.ComputeCapability.Major < 9) Assert.Skip("the decode products need compute capability 9.0 (thread-block clusters)");
        const DType dtype = DType.BF16;
        var gate = RandomInt4(N, K, 128);
        var up = RandomInt4(N, K, 128);
        var (_, xv) = Random(dtype, 1, m, K);
        var (_, gainv) = Random(dtype, 1, K);
        (double[] Product, double[] SwiGlu) Run(int stages, int xTiles = 1)
        {
            using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal,
                CudaBackendOptions.Default with { ProfileOps = true, Int4DecodeProductStages = stages, Int4DecodeProductXTiles = xTiles });
            var x = Upload(gpu, xv, dtype, m, K);
            var norm = new RmsNormPrologue(Upload(gpu, gainv, dtype, K), 1e-5);
            var wg = UploadInt4(gpu, gate.Packed, gate.Scales, gate.Zeros, 128);
            var y = gpu.Allocate(new Shape(m, N), dtype);
            var a = gpu.Allocate(new Shape(m, N), dtype);
            gpu.Profiler!.Reset();
            gpu.QuantizedMatMul(x, wg, y, norm: norm);
            gpu.QuantizedMatMulSwiGlu(x, wg, UploadInt4(gpu, up.Packed, up.Scales, up.Zeros, 128), a, norm: norm);
            var names = gpu.Profiler!.Totals().Select(r => r.Name).ToList();
            int tiles = m <= 16 ? 2 : m <= 32 ? 4 : 8, jb = Math.Min(xTiles, tiles);
            string mt = $"m{tiles}{(stages == 8 ? "_s8" : jb > 1 ? $"_j{jb}" : "")}";
            Assert.Contains($"decode_gemm_int4g_bf16_{mt}", names);
            Assert.Contains($"decode_gemm_int4g_swiglu_bf16_{mt}", names);
            return (Download(gpu, y), Download(gpu, a));
        }
        var four = Run(4);
        foreach (var other in new[] { Run(8), Run(4, xTiles: 2), Run(4, xTiles: 4) })
        {
            Assert.Equal(four.Product, other.Product);
            Assert.Equal(four.SwiGlu, other.SwiGlu);
        }
    }

    /// <summary>
    /// K split into more slices (<see cref="CudaBackendOptions.QuantizedDecodeProductCtasPerSm"/> 4: up to 8 CTAs of a cluster a
    /// row block where one CTA an SM gives fewer) gives the CPU's F64 results within BF16's tolerance (1e-2; the slices' fp32
    /// sums are grouped otherwise, so not the default's bits), on the int4 product by group sums and its SwiGLU form, the int8
    /// product and its SwiGLU form, all normalized, at 8 and 64 rows of the gate's shape (8192 x 1024); at 64 rows the int4
    /// product's bits must differ from the default grid's (its slices go from 4 to 8 on 132 SMs), or the option changed nothing.
    /// The same with <see cref="CudaBackendOptions.QuantizedDecodeProductNormMaxRows"/> 0 (x normalized by the norm kernel first,
    /// then the products without the norm: the op profiler counts one norm launch an op there, and the fused SwiGLU kernels
    /// still run) and 64 (the norm on the way at every row count: no norm launch); the default launches the norm kernel only
    /// past its bound.
    /// </summary>
    [Theory]
    [InlineData(8)]
    [InlineData(64)]
    public void MoreSlicesOfKMatchTheCpuInF64(int m)
    {
        if (Gpu.CudaDevice.ComputeCapability.Major < 9) Assert.Skip("the decode products need compute capability 9.0 (thread-block clusters)");
        const DType dtype = DType.BF16;
        const int n = 8192;                                   // the gate's shape: 64 row blocks, 4 slices at one CTA an SM on an H100
        var gate = RandomInt4(n, K, 128);
        var up = RandomInt4(n, K, 128);
        var (_, xv) = Random(dtype, 1, m, K);
        var (_, gainv) = Random(dtype, 1, K);
        var g8 = new sbyte[n * K];
        var u8 = new sbyte[n * K];
        for (int i = 0; i < g8.Length; i++) { g8[i] = (sbyte)Rng.Next(-127, 128); u8[i] = (sbyte)Rng.Next(-127, 128); }
        var s8 = Enumerable.Range(0, n).Select(_ => (float)(0.001 + 0.002 * Rng.NextDouble())).ToArray();
        QuantizedWeight Int8(IBackend b, sbyte[] values)
        {
            var q = new QuantizedWeight(b.Allocate(new Shape(n, K), DType.I8), b.Allocate(new Shape(n), DType.F32));
            b.CopyFromHost<sbyte>(values, q.Values);
            b.CopyFromHost<float>(s8, q.Scales);
            return q;
        }
        double[][] Run(IBackend b, DType t)
        {
            var x = Upload(b, xv, t, m, K);
            var norm = new RmsNormPrologue(Upload(b, gainv, t, K), 1e-5);
            var outs = Enumerable.Range(0, 4).Select(_ => b.Allocate(new Shape(m, n), t)).ToArray();
            b.QuantizedMatMul(x, UploadInt4(b, gate.Packed, gate.Scales, gate.Zeros, 128, rows: n), outs[0], norm: norm);
            b.QuantizedMatMulSwiGlu(x, UploadInt4(b, gate.Packed, gate.Scales, gate.Zeros, 128, rows: n),
                UploadInt4(b, up.Packed, up.Scales, up.Zeros, 128, rows: n), outs[1], norm: norm);
            b.QuantizedMatMul(x, Int8(b, g8), outs[2], norm: norm);
            b.QuantizedMatMulSwiGlu(x, Int8(b, g8), Int8(b, u8), outs[3], norm: norm);
            return outs.Select(o => Download(b, o)).ToArray();
        }
        var expected = Run(_cpu, DType.F64);
        using var split = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { QuantizedDecodeProductCtasPerSm = 4 });
        var got = Run(split, dtype);
        using var plain = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
        var baseline = Run(plain, dtype);
        using var normFirst = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true, QuantizedDecodeProductNormMaxRows = 0 });
        var unfused = Run(normFirst, dtype);
        using var normOnTheWay = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true, QuantizedDecodeProductNormMaxRows = 64 });
        var fused = Run(normOnTheWay, dtype);
        // The option must move the norm: none of the norm kernel's launches with the norm on the way (it rides in the products),
        // one an op with the norm kernel first, the default's choice by its row bound, and the fused SwiGLU kernels kept.
        long NormLaunches(CudaBackend b) => b.Profiler!.Totals().Where(r => r.Name.StartsWith("rmsnorm_forward", StringComparison.Ordinal)).Sum(r => r.Calls);
        Assert.Equal(0, NormLaunches(normOnTheWay));
        Assert.Equal(4, NormLaunches(normFirst));
        Assert.Equal(m > CudaBackendOptions.Default.QuantizedDecodeProductNormMaxRows ? 4 : 0, NormLaunches(plain));
        var mt = $"m{(m <= 16 ? 2 : m <= 32 ? 4 : 8)}";
        Assert.Contains($"decode_gemm_int4g_swiglu_bf16_{mt}", normFirst.Profiler!.Totals().Select(r => r.Name));
        Assert.Contains($"decode_gemm_q8_swiglu_bf16_{mt}", normFirst.Profiler!.Totals().Select(r => r.Name));
        string[] names = ["int4", "int4 SwiGLU", "int8", "int8 SwiGLU"];
        for (int i = 0; i < 4; i++)
        {
            AssertClose(expected[i], got[i], Tolerance(dtype), $"{names[i]} M={m}, 4 CTAs an SM");
            AssertClose(expected[i], unfused[i], Tolerance(dtype), $"{names[i]} M={m}, the norm kernel first");
            AssertClose(expected[i], fused[i], Tolerance(dtype), $"{names[i]} M={m}, the norm on the way");
        }
        if (m == 64) Assert.False(baseline[0].SequenceEqual(got[0]), "the int4 product at 64 rows gave the default grid's bits: the option changed no slice");
    }

    /// <summary>
    /// <see cref="CudaBackend.QuantizedMatMulRopeAppend"/> (a dense cache, B = rows, T = 1) and
    /// <see cref="CudaBackend.QuantizedMatMulRopePagedAppend"/> (a paged pool, distinct slots, a padding row's slot -1) over
    /// an int4 qkv weight (8 query heads, 2 kv heads of 64, K = 1024, groups of 128), normalized, with a bias or not: at 1 to 4
    /// rows one launch (the int4 stream's ROPE form, which the op profiler must name), at 6 the product and then the rotation
    /// and the append; bit for bit the GPU's <see cref="CudaBackend.QuantizedMatMul"/> then <see cref="CudaBackend.RopeAndAppend"/>
    /// or <see cref="CudaBackend.RopePagedAppend"/> (a pair of rows is summed as the plain stream sums each), and within BF16's
    /// tolerance of the CPU's F64 composition.
    /// </summary>
    [Theory]
    [InlineData(1, false, false)]
    [InlineData(3, false, true)]
    [InlineData(1, true, false)]
    [InlineData(4, true, true)]
    [InlineData(6, true, false)]
    public void QkvRotatedAndAppendedMatchesItsPartsAndTheCpu(int n, bool paged, bool withBias)
    {
        const DType dtype = DType.BF16;
        const int h = 8, kh = 2, d = 64, rows = (h + 2 * kh) * d, seq = 64, blockSize = 16, poolBlocks = 8;
        const double theta = 500000.0, eps = 1e-5;
        var w = RandomInt4(rows, K, 128);
        var (_, xv) = Random(dtype, 1, n, K);
        var (_, gainv) = Random(dtype, 1, K);
        var (_, bv) = Random(dtype, 0.5, rows);
        var positions = Enumerable.Range(0, n).Select(i => 5 + 9 * i).ToArray();
        var slots = Enumerable.Range(0, poolBlocks * blockSize).OrderBy(_ => Rng.Next()).Take(n).ToArray();
        if (paged && n > 1) (positions[n - 1], slots[n - 1]) = (0, -1);   // a padding row
        int cacheRows = paged ? poolBlocks * blockSize : n * seq;
        var cachev = Stored(Enumerable.Range(0, cacheRows * 2 * kh * d).Select(_ => Rng.NextDouble() * 2 - 1).ToArray(), dtype);
        PagedBatch BatchOn(IBackend backend) => new(backend.FromArray(new int[n], n, 1), backend.FromArray(Enumerable.Range(0, n + 1).ToArray(), n + 1),
            backend.FromArray(positions.Select(p => p + 1).ToArray(), n), backend.FromArray(slots, n), blockSize);
        int[] cacheShape = paged ? [poolBlocks, blockSize, 2 * kh, d] : [n, seq, 2 * kh, d];
        int[] qkvShape = paged ? [n, h + 2 * kh, d] : [n, 1, h + 2 * kh, d];

        (double[] Qkv, double[] Cache) OnGpu(bool fused)
        {
            using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
            var x = Upload(gpu, xv, dtype, n, K);
            var norm = new RmsNormPrologue(Upload(gpu, gainv, dtype, K), eps);
            var weight = UploadInt4(gpu, w.Packed, w.Scales, w.Zeros, 128, rows: rows);
            var bias = withBias ? Upload(gpu, bv, dtype, rows) : null;
            var qkv = gpu.Allocate(new Shape(qkvShape), dtype);
            var cache = Upload(gpu, cachev, dtype, cacheShape);
            var pos = gpu.FromArray(positions, n);
            gpu.Profiler!.Reset();
            if (fused && paged) gpu.QuantizedMatMulRopePagedAppend(x, norm, weight, bias, qkv, h, cache, pos, BatchOn(gpu), theta);
            else if (fused) gpu.QuantizedMatMulRopeAppend(x, norm, weight, bias, qkv, h, cache, pos, theta);
            else
            {
                gpu.QuantizedMatMul(x, weight, qkv.Reshape(n, rows), bias: bias, norm: norm);
                if (paged) gpu.RopePagedAppend(qkv, h, cache, pos, BatchOn(gpu), theta);
                else gpu.RopeAndAppend(qkv, h, cache, pos, theta);
            }
            var names = gpu.Profiler!.Totals().Select(r => r.Name).ToList();
            if (fused && n <= 4) Assert.Contains($"gemv_stream_int4_rope_bf16_m{n}", names);
            return (Download(gpu, qkv), Download(gpu, cache));
        }
        var one = OnGpu(fused: true);
        var parts = OnGpu(fused: false);
        Assert.Equal(parts.Qkv, one.Qkv);
        Assert.Equal(parts.Cache, one.Cache);

        var cpuQkv = _cpu.Allocate(new Shape(qkvShape), DType.F64);
        var cpuCache = Upload(_cpu, cachev, DType.F64, cacheShape);
        var cx = Upload(_cpu, xv, DType.F64, n, K);
        var cnorm = new RmsNormPrologue(Upload(_cpu, gainv, DType.F64, K), eps);
        var cw = UploadInt4(_cpu, w.Packed, w.Scales, w.Zeros, 128, rows: rows);
        var cb = withBias ? Upload(_cpu, bv, DType.F64, rows) : null;
        if (paged) _cpu.QuantizedMatMulRopePagedAppend(cx, cnorm, cw, cb, cpuQkv, h, cpuCache, _cpu.FromArray(positions, n), BatchOn(_cpu), theta);
        else _cpu.QuantizedMatMulRopeAppend(cx, cnorm, cw, cb, cpuQkv, h, cpuCache, _cpu.FromArray(positions, n), theta);
        AssertClose(Download(_cpu, cpuQkv), one.Qkv, Tolerance(dtype), $"N={n} paged={paged}: qkv");
        AssertClose(Download(_cpu, cpuCache), one.Cache, Tolerance(dtype), $"N={n} paged={paged}: cache");
    }

    /// <summary>Dequantize gives scale (q - zero) rounded once to the output's type: F32 bit for bit with the CPU's, BF16 within its rounding.</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    public void DequantizeGivesTheCpusWeight(DType dtype)
    {
        var (packed, scales, zeros) = RandomInt4(N, K, 64);
        var w = Gpu.Allocate(new Shape(N, K), dtype);
        Gpu.Dequantize(UploadInt4(Gpu, packed, scales, zeros, 64), w);
        var expected = _cpu.Allocate(new Shape(N, K), DType.F64);
        _cpu.Dequantize(UploadInt4(_cpu, packed, scales, zeros, 64), expected);
        AssertClose(Download(_cpu, expected), Download(w), dtype == DType.F32 ? 1e-7 : 4e-3, $"{dtype} dequantize");
    }

    /// <summary>
    /// An act-order weight (<see cref="QuantizedWeight.InputOrder"/>, a random permutation of the inputs, seed logged) on the GPU:
    /// the product (x gathered first, <c>gather_columns_b2</c> named by the op profiler; then the stream, the decode product or
    /// the dequantized product as the rows pick), the SwiGLU pair of one order (x gathered once, then the fused SwiGLU kernel
    /// the rows pick) and the dequantized weight equal the CPU's F64 results on the
    /// same ordered weights; the dequantized weight also equals the unordered weight's columns put in order (bit for bit).
    /// Tolerance 1e-2 relative (BF16 output, as the unordered products).
    /// </summary>
    [Theory]
    [InlineData(1, false)]
    [InlineData(3, true)]
    [InlineData(40, true)]
    [InlineData(96, false)]
    public void ActOrderWeightsGatherXAndMatchTheCpuInF64(int m, bool withNorm)
    {
        const DType dtype = DType.BF16;
        const double eps = 1e-5;
        using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
        var order = Enumerable.Range(0, K).OrderBy(_ => Rng.Next()).ToArray();
        var inverse = QuantizedWeight.CheckPermutation(order, "test");
        // One order pair a backend, shared by gate and up as the storage shares it (the SwiGLU op then gathers x once).
        var orders = new Dictionary<IBackend, (Tensor Order, Tensor Inverse)>();
        QuantizedWeight Ordered(IBackend b, (int[] Packed, float[] Scales, sbyte[] Zeros) w)
        {
            if (!orders.TryGetValue(b, out var pair))
            {
                pair = (b.Allocate(new Shape(K), DType.I32), b.Allocate(new Shape(K), DType.I32));
                b.CopyFromHost<int>(order, pair.Order);
                b.CopyFromHost<int>(inverse, pair.Inverse);
                orders[b] = pair;
            }
            return UploadInt4(b, w.Packed, w.Scales, w.Zeros, 128).WithInputOrder(pair.Order, pair.Inverse);
        }
        var gate = RandomInt4(N, K, 128);
        var up = RandomInt4(N, K, 128);
        var (_, xv) = Random(dtype, 1, m, K);
        var (_, gainv) = Random(dtype, 1, K);
        RmsNormPrologue? Norm(IBackend b, DType t) => withNorm ? new RmsNormPrologue(Upload(b, gainv, t, K), eps) : null;

        var y = gpu.Allocate(new Shape(m, N), dtype);
        var h = gpu.Allocate(new Shape(m, N), dtype);
        gpu.Profiler!.Reset();
        gpu.QuantizedMatMul(Upload(gpu, xv, dtype, m, K), Ordered(gpu, gate), y, norm: Norm(gpu, dtype));
        Assert.Contains("gather_columns_b2", gpu.Profiler!.Totals().Select(r => r.Name));
        gpu.Profiler!.Reset();
        gpu.QuantizedMatMulSwiGlu(Upload(gpu, xv, dtype, m, K), Ordered(gpu, gate), Ordered(gpu, up), h, norm: Norm(gpu, dtype));
        var totals = gpu.Profiler!.Totals();
        var swiglu = totals.Select(r => r.Name).ToList();
        Assert.Equal(1, totals.Single(r => r.Name == "gather_columns_b2").Calls);     // x gathered once for both weights
        if (m <= 4) Assert.Contains($"gemv_stream_int4_swiglu_bf16_m{m}", swiglu);
        else if (m <= 64 && Gpu.CudaDevice.ComputeCapability.Major >= 9) Assert.Contains($"decode_gemm_int4g_swiglu_bf16_m{(m <= 16 ? 2 : m <= 32 ? 4 : 8)}", swiglu);
        var w = gpu.Allocate(new Shape(N, K), DType.F32);
        gpu.Dequantize(Ordered(gpu, gate), w);

        var expected = _cpu.Allocate(new Shape(m, N), DType.F64);
        var expectedH = _cpu.Allocate(new Shape(m, N), DType.F64);
        _cpu.QuantizedMatMul(Upload(_cpu, xv, DType.F64, m, K), Ordered(_cpu, gate), expected, norm: Norm(_cpu, DType.F64));
        _cpu.QuantizedMatMulSwiGlu(Upload(_cpu, xv, DType.F64, m, K), Ordered(_cpu, gate), Ordered(_cpu, up), expectedH, norm: Norm(_cpu, DType.F64));
        AssertClose(Download(_cpu, expected), Download(gpu, y), Tolerance(dtype), $"act order M={m} norm={withNorm}");
        AssertClose(Download(_cpu, expectedH), Download(gpu, h), Tolerance(dtype), $"act order SwiGLU M={m} norm={withNorm}");
        var stored = _cpu.Allocate(new Shape(N, K), DType.F32);
        _cpu.Dequantize(UploadInt4(_cpu, gate.Packed, gate.Scales, gate.Zeros, 128), stored);
        var storedValues = _cpu.ToArray<float>(stored);
        var inOrder = new float[N * K];
        for (int r = 0; r < N; r++) for (int j = 0; j < K; j++) inOrder[r * K + order[j]] = storedValues[r * K + j];
        Assert.True(inOrder.AsSpan().SequenceEqual(gpu.ToArray<float>(w)), "the dequantized act-order weight is not the stored columns in the inputs' order");
    }

    /// <summary>Random weights U(-1, 1) quantized on the host in groups of <paramref name="group"/> (-1: a row).</summary>
    private (int[] Packed, float[] Scales, sbyte[] Zeros) RandomInt4(int n, int k, int group)
    {
        int g = group == -1 ? k : group, groups = (k + g - 1) / g;
        var w = new float[n * k];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(Rng.NextDouble() * 2 - 1);
        var packed = new int[n * k / 8];
        var scales = new float[n * groups];
        var zeros = new sbyte[n * groups];
        Int4Quantization.QuantizeRows(w, n, k, g, packed, scales, zeros);
        return (packed, scales, zeros);
    }

    private static QuantizedWeight UploadInt4(IBackend backend, int[] packed, float[] scales, sbyte[] zeros, int group, int k = K, int rows = N)
    {
        int n = rows, g = group == -1 ? k : group, groups = (k + g - 1) / g;
        var q = QuantizedWeight.Int4(backend.Allocate(new Shape(n, k / 8), DType.I32), backend.Allocate(new Shape(n, groups), DType.F32),
            backend.Allocate(new Shape(n, groups), DType.I8), k, g);
        Int4Quantization.Write(backend, q, packed, scales, zeros);
        return q;
    }
}
