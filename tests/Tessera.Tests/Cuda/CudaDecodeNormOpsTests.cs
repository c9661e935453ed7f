using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The GPU kernels of Gemma's and Qwen3's decode step: the RMSNorm kernels and the matrix-vector staging with a unit offset
/// (1 + w applied in the kernel), <see cref="CudaBackend.AccumulateRmsNorm"/>, <see cref="CudaBackend.NormalizeHeadsRopeAndAppend"/>
/// and the GELU-gated <see cref="CudaBackend.MatMulSwiGlu"/>. Each fused kernel is designed to give the bits of the ops it
/// replaces (a scale 1 + w formed in a tensor of its own, the norm then the add, the norm on each head then RopeAndAppend),
/// which the tests check exactly; against the double references of <see cref="DecodeOpReference"/> on the stored inputs
/// they use <see cref="CudaTestBase.Tolerance"/> (f32 1e-5, 16-bit 1e-2: intermediate values are rounded to the dtype).
/// Inputs from the collection's logged seed.
/// </summary>
[Collection("cuda")]
public sealed class CudaDecodeNormOpsTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private const double Eps = 1e-6;

    /// <summary>1 + w formed as a separate fill and accumulate (what RmsNorm.Scale did for every pass before the kernels took the offset).</summary>
    private Tensor FormedScale(Tensor w)
    {
        var scale = Gpu.Allocate(w.Shape, w.DType);
        Gpu.Fill(scale, 1.0);
        Gpu.Accumulate(scale, w);
        return scale;
    }

    [Theory]
    [InlineData(DType.BF16, 1152)]   // Gemma 3 1B's rows: the row-in-registers kernel
    [InlineData(DType.F16, 2304)]    // Gemma 2 2B's
    [InlineData(DType.F32, 1001)]    // the loop kernel (rows not of 16-byte vectors)
    public void UnitOffsetNormGivesTheBitsOfAFormedScale(DType dtype, int c)
    {
        const int n = 5;
        var (x, xv) = Random(dtype, 2, n, c);
        var (w, wv) = Random(dtype, 0.3, c);
        var (fused, formed) = (Poisoned(dtype, n, c), Poisoned(dtype, n, c));
        var (r1, r2) = (Gpu.Allocate(new Shape(n), DType.F32), Gpu.Allocate(new Shape(n), DType.F32));
        Gpu.RmsNormForward(x, w, fused, r1, Eps, unitOffset: true);
        Gpu.RmsNormForward(x, FormedScale(w), formed, r2, Eps);
        Assert.Equal(Download(formed), Download(fused));
        Assert.Equal(Download(r2), Download(r1));
        AssertClose(DecodeOpReference.RmsNorm(xv, wv, n, c, Eps, true), Download(fused), Tolerance(dtype), $"unit-offset RMSNorm {dtype} C={c}");
    }

    [Theory]
    [InlineData(DType.BF16, 1152, true)]
    [InlineData(DType.BF16, 2048, false)]
    [InlineData(DType.F32, 1001, true)]
    public void AccumulateRmsNormGivesTheBitsOfTheNormThenTheAdd(DType dtype, int c, bool unit)
    {
        const int n = 3;
        var (x, xv) = Random(dtype, 2, n, c);
        var (w, wv) = Random(dtype, 0.3, c);
        var (_, av) = Random(dtype, 1, n, c);
        var fused = Upload(av, dtype, n, c);
        Gpu.AccumulateRmsNorm(fused, x, new RmsNormPrologue(w, Eps, unit));
        var unfused = Upload(av, dtype, n, c);
        var y = Poisoned(dtype, n, c);
        Gpu.RmsNormForward(x, w, y, Gpu.Allocate(new Shape(n), DType.F32), Eps, unit);
        Gpu.Accumulate(unfused, y);
        Assert.Equal(Download(unfused), Download(fused));
        var norm = DecodeOpReference.RmsNorm(xv, wv, n, c, Eps, unit);
        AssertClose(av.Select((a, i) => a + norm[i]).ToArray(), Download(fused), Tolerance(dtype), $"AccumulateRmsNorm {dtype} C={c}");
    }

    [Fact]
    public void AccumulateRmsNormRefusesAnOverlappingAccumulator()
    {
        var (x, _) = Random(DType.BF16, 1, 2, 64);
        var (w, _) = Random(DType.BF16, 1, 64);
        var ex = Assert.Throws<ArgumentException>(() => Gpu.AccumulateRmsNorm(x, x, new RmsNormPrologue(w, Eps)));
        Assert.Contains("overlap", ex.Message);
    }

    [Theory]
    [InlineData(DType.BF16, 1, 1, 4, 1, 256, true)]    // Gemma 3 1B's decode step: 4 query heads, one kv head of 256
    [InlineData(DType.BF16, 2, 3, 16, 8, 128, false)]  // Qwen3's heads of 128, two sequences of three rows
    [InlineData(DType.F16, 1, 2, 8, 2, 64, true)]
    [InlineData(DType.F32, 2, 1, 2, 1, 256, false)]    // f32 heads of 256: two 16-byte vectors a lane
    public void NormalizeHeadsRopeAndAppendGivesTheBitsOfTheUnfusedOps(DType dtype, int b, int t, int h, int k, int d, bool unit)
    {
        const double theta = 1000000.0;
        int capacity = 24, heads = h + 2 * k;
        int[] starts = b == 1 ? [9] : [0, capacity - t];
        var (_, qkvv) = Random(dtype, 2, b, t, heads, d);
        var (qw, qwv) = Random(dtype, 0.3, d);
        var (kw, kwv) = Random(dtype, 0.3, d);
        var (_, cachev) = Random(dtype, 1, b, capacity, 2 * k, d);
        var (qn, kn) = (new RmsNormPrologue(qw, Eps, unit), new RmsNormPrologue(kw, Eps, unit));

        var qkv = Upload(qkvv, dtype, b, t, heads, d);
        var cache = Upload(cachev, dtype, b, capacity, 2 * k, d);
        Gpu.NormalizeHeadsRopeAndAppend(qkv, h, qn, kn, cache, UploadInts(starts, b), theta);

        var qkv2 = Upload(qkvv, dtype, b, t, heads, d);
        var cache2 = Upload(cachev, dtype, b, capacity, 2 * k, d);
        NormalizeHeadsApart(qkv2.Slice(2, 0, h), qn);
        NormalizeHeadsApart(qkv2.Slice(2, h, k), kn);
        Gpu.RopeAndAppend(qkv2, h, cache2, UploadInts(starts, b), theta);
        Assert.Equal(Download(qkv2), Download(qkv));
        Assert.Equal(Download(cache2), Download(cache));

        var (eq, ec) = DecodeOpReference.NormalizeHeadsRopeAndAppend(qkvv, cachev, b, t, h, k, d, capacity, starts, qwv, kwv, Eps, unit, theta);
        AssertClose(eq, Download(qkv), Tolerance(dtype), $"NormalizeHeadsRopeAndAppend {dtype} D={d}: qkv");
        AssertClose(ec, Download(cache), Tolerance(dtype), $"NormalizeHeadsRopeAndAppend {dtype} D={d}: cache");
    }

    [Theory]
    [InlineData(DType.BF16, 4, 1, 256, true)]     // Gemma 3 1B's heads, four rows of a serving step (one a padding row)
    [InlineData(DType.F16, 16, 8, 128, false)]    // Qwen3's
    public void PagedHeadNormsRopeAndAppendGiveTheBitsOfTheUnfusedOps(DType dtype, int h, int k, int d, bool unit)
    {
        const double theta = 10000.0;
        const int n = 4, blockSize = 4, blocks = 6;
        int heads = h + 2 * k;
        int[] positions = [3, 0, 17, 9], slots = [5, 9, -1, 22];
        var (_, qkvv) = Random(dtype, 2, n, heads, d);
        var (qw, _) = Random(dtype, 0.3, d);
        var (kw, _) = Random(dtype, 0.3, d);
        var (_, poolv) = Random(dtype, 1, blocks, blockSize, 2 * k, d);
        var (qn, kn) = (new RmsNormPrologue(qw, Eps, unit), new RmsNormPrologue(kw, Eps, unit));
        PagedBatch Batch() => new(Gpu.FromArray(new int[n], n, 1), Gpu.FromArray(Enumerable.Range(0, n + 1).ToArray(), n + 1),
            Gpu.FromArray(positions.Select(p => p + 1).ToArray(), n), Gpu.FromArray(slots, n), blockSize);

        var qkv = Upload(qkvv, dtype, n, heads, d);
        var pool = Upload(poolv, dtype, blocks, blockSize, 2 * k, d);
        Gpu.NormalizeHeadsRopePagedAppend(qkv, h, qn, kn, pool, UploadInts(positions, n), Batch(), theta);

        var qkv2 = Upload(qkvv, dtype, n, heads, d);
        var pool2 = Upload(poolv, dtype, blocks, blockSize, 2 * k, d);
        var rows = qkv2.Reshape(n, 1, heads, d);
        NormalizeHeadsApart(rows.Slice(2, 0, h), qn);
        NormalizeHeadsApart(rows.Slice(2, h, k), kn);
        Gpu.RopePagedAppend(qkv2, h, pool2, UploadInts(positions, n), Batch(), theta);
        Assert.Equal(Download(qkv2), Download(qkv));
        Assert.Equal(Download(pool2), Download(pool));
        Assert.NotEqual(poolv, Download(pool));   // the rows' slots were written
    }

    /// <summary>
    /// The fused ops run as the one kernel each that the bit-equality tests above compare with the unfused ops (so those tests
    /// do not compare a fallback composition with itself): names of the kernels a profiling backend launched, less its copies
    /// (the RoPE frequency table's first upload is one).
    /// </summary>
    [Fact]
    public void EachFusedOpLaunchesItsOneKernel()
    {
        using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { ProfileOps = true });
        const int c = 1152, d = 256;
        var x = Upload(gpu, Random(DType.BF16, 1, 1, c).Values, DType.BF16, 1, c);
        var nw = Upload(gpu, Random(DType.BF16, 0.3, c).Values, DType.BF16, c);
        var w = Upload(gpu, Random(DType.BF16, 0.05, 2 * 640, c).Values, DType.BF16, 2 * 640, c);
        var hw = Upload(gpu, Random(DType.BF16, 0.3, d).Values, DType.BF16, d);
        var unit = new RmsNormPrologue(nw, Eps, true);
        List<string> Kernels(Action op)
        {
            gpu.Profiler!.Reset();
            op();
            return gpu.Profiler.Totals().Select(r => r.Name).Where(n => !n.StartsWith("memcpy", StringComparison.Ordinal)).ToList();
        }
        Assert.Equal(["gemv_stream_bf16_m1"], Kernels(() => gpu.RmsNormMatMul(x, unit, w, gpu.Allocate(new Shape(1, 2 * 640), DType.BF16))));
        Assert.Equal(["gemv_stream_swiglu_bf16_m1"], Kernels(() =>
            gpu.MatMulSwiGlu(x, w.Slice(0, 0, 640), w.Slice(0, 640, 640), gpu.Allocate(new Shape(1, 640), DType.BF16), norm: unit, geluGate: true)));
        Assert.Equal(["rmsnorm_forward_vec_bf16"], Kernels(() => gpu.AccumulateRmsNorm(gpu.Allocate(new Shape(1, c), DType.BF16), x, unit)));
        var qkv = Upload(gpu, Random(DType.BF16, 1, 1, 1, 6, d).Values, DType.BF16, 1, 1, 6, d);
        var cache = gpu.Allocate(new Shape(1, 16, 2, d), DType.BF16);
        var starts = gpu.FromArray(new[] { 3 }, 1);
        Assert.Equal(["norm_rope_append_rows_bf16"], Kernels(() =>
            gpu.NormalizeHeadsRopeAndAppend(qkv, 4, new RmsNormPrologue(hw, Eps, true), new RmsNormPrologue(hw, Eps, true), cache, starts, 10000.0)));
    }

    /// <summary>Each head of <paramref name="heads"/> (B, T, n, D), a view, through the RMSNorm kernel on rows copied out and back.</summary>
    private void NormalizeHeadsApart(Tensor heads, RmsNormPrologue norm)
    {
        int d = heads.Size(-1), rows = (int)(heads.NumElements / d);
        var copy = Gpu.Allocate(heads.Shape, heads.DType);
        var normalized = Gpu.Allocate(new Shape(rows, d), heads.DType);
        Gpu.Copy(heads, copy);
        Gpu.RmsNormForward(copy.Reshape(rows, d), norm.Weight, normalized, Gpu.Allocate(new Shape(rows), DType.F32), norm.Epsilon, norm.UnitOffset);
        Gpu.Copy(normalized.Reshape(heads.Shape.ToArray()), heads);
    }

    [Theory]
    [InlineData(DType.BF16, 1)]
    [InlineData(DType.BF16, 4)]
    [InlineData(DType.F32, 2)]
    public void MatrixVectorProductsApplyAUnitOffsetNormWithTheBitsOfAFormedScale(DType dtype, int m)
    {
        const int c = 1152, n = 320, f = 200;
        var (x, _) = Random(dtype, 2, m, c);
        var (nw, _) = Random(dtype, 0.3, c);
        var (w, _) = Random(dtype, 0.05, n, c);
        var (gate, _) = Random(dtype, 0.05, f, c);
        var (up, _) = Random(dtype, 0.05, f, c);
        var (unit, formed) = (new RmsNormPrologue(nw, Eps, true), new RmsNormPrologue(FormedScale(nw), Eps));
        var (y1, y2) = (Poisoned(dtype, m, n), Poisoned(dtype, m, n));
        Gpu.RmsNormMatMul(x, unit, w, y1);
        Gpu.RmsNormMatMul(x, formed, w, y2);
        Assert.Equal(Download(y2), Download(y1));
        foreach (bool gelu in new[] { false, true })
        {
            var (o1, o2) = (Poisoned(dtype, m, f), Poisoned(dtype, m, f));
            Gpu.MatMulSwiGlu(x, gate, up, o1, norm: unit, geluGate: gelu);
            Gpu.MatMulSwiGlu(x, gate, up, o2, norm: formed, geluGate: gelu);
            Assert.Equal(Download(o2), Download(o1));
        }
    }

    [Theory]
    [InlineData(DType.BF16, 1, true, true)]     // Gemma's decode step: the matrix-vector kernel's GeGLU epilogue
    [InlineData(DType.BF16, 3, false, true)]
    [InlineData(DType.F32, 4, true, false)]
    [InlineData(DType.BF16, 8, true, true)]     // past the matrix-vector kernels: the norm kernel, the two products, GELU, multiply
    [InlineData(DType.F16, 40, false, false)]
    public void GeluGatedProductMatchesTheReference(DType dtype, int m, bool unit, bool bias)
    {
        const int c = 512, f = 96;
        var (x, xv) = Random(dtype, 2, m, c);
        var (nw, nwv) = Random(dtype, 0.3, c);
        // Adjacent gate and up rows, as the parameter arena lays them out (past four rows GeGLU runs the two products apart).
        var (both, bothv) = Random(dtype, 0.05, 2 * f, c);
        var (gate, up) = (both.Slice(0, 0, f), both.Slice(0, f, f));
        var (gb, gbv) = Random(dtype, 0.5, f);
        var (ub, ubv) = Random(dtype, 0.5, f);
        var output = Poisoned(dtype, m, f);
        Gpu.MatMulSwiGlu(x, gate, up, output, bias ? gb : null, bias ? ub : null, new RmsNormPrologue(nw, Eps, unit), geluGate: true);
        var expected = DecodeOpReference.GatedProduct(xv, bothv[..(f * c)], bothv[(f * c)..], bias ? gbv : null, bias ? ubv : null, m, f, c,
            nwv, Eps, unit, gelu: true);
        AssertClose(expected, Download(output), Tolerance(dtype), $"GeGLU product {dtype} M={m}");
    }

    [Theory]
    [InlineData(1)]    // the int8 stream refuses the unit offset: the norm kernel first, then the stream without a norm
    [InlineData(8)]    // the int8 decode product likewise
    public void QuantizedProductsNormalizeFirstUnderAUnitOffset(int m)
    {
        const int c = 512, n = 160;
        var (x, xv) = Random(DType.BF16, 2, m, c);
        var (nw, nwv) = Random(DType.BF16, 0.3, c);
        var w = new float[n * c];
        for (int i = 0; i < w.Length; i++) w[i] = (float)((Rng.NextDouble() * 2 - 1) * 0.1);
        var values = new sbyte[n * c];
        var scales = new float[n];
        Int8Quantization.QuantizeRows(w, n, c, values, scales, "test weight");
        var weight = new QuantizedWeight(Gpu.FromHost<sbyte>(values, new Shape(n, c)), Gpu.FromHost<float>(scales, new Shape(n)));
        var y = Poisoned(DType.BF16, m, n);
        Gpu.QuantizedMatMul(x, weight, y, norm: new RmsNormPrologue(nw, Eps, UnitOffset: true));
        var h = DecodeOpReference.RmsNorm(xv, nwv, m, c, Eps, true);
        var expected = new double[m * n];
        for (int r = 0; r < m; r++)
            for (int o = 0; o < n; o++)
            {
                double s = 0;
                for (int i = 0; i < c; i++) s += h[r * c + i] * scales[o] * values[o * c + i];
                expected[r * n + o] = s;
            }
        AssertClose(expected, Download(y), Tolerance(DType.BF16), $"int8 product with a unit-offset norm, M={m}");
    }
}
