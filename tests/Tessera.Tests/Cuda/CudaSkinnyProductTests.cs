using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The skinny-M tensor-core product (skinny.cu, <see cref="CudaBackendOptions.SkinnyProducts"/>) on the device: a second
/// backend with the option on (and the op profiler, which names the kernels that ran) against a double reference of the
/// rounded inputs at M = 5, 8, 16, 37 and 64 (bf16 and f16, partial row blocks, K tails, bias, +residual from an addend and
/// in place with beta = 1; the SwiGLU variant with and without the RMSNorm prologue), against the shared backend's
/// cuBLASLt product (and SwiGLU kernel) at the Llama-1B decode shapes, and the routing
/// (4 and 65 rows, f32 and transposed weights stay off the kernel). Norm-wise tolerance 1e-2 (<see cref="CudaTestBase.Tolerance"/>:
/// 16-bit outputs of fp32 sums). Skips where there is no GPU.
/// </summary>
[Collection("cuda")]
public sealed class CudaSkinnyProductTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    private CudaBackend SkinnyBackend(bool profile = true) =>
        new(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { SkinnyProducts = true, ProfileOps = profile });

    private static string[] KernelsRun(CudaBackend backend) => [.. backend.Profiler!.Totals().Select(t => t.Name)];

    /// <summary>mode 0: plain; 1: + an addend (beta = 1); 2: in place, y = x W^T + y (beta = 1).</summary>
    [Theory]
    [InlineData(DType.BF16, 5, 200, 392, true, 1)]
    [InlineData(DType.BF16, 8, 3072, 2048, false, 0)]
    [InlineData(DType.BF16, 16, 130, 512, false, 2)]
    [InlineData(DType.BF16, 37, 96, 8192, true, 0)]
    [InlineData(DType.BF16, 64, 2048, 2048, false, 1)]
    [InlineData(DType.F16, 5, 200, 392, true, 1)]
    [InlineData(DType.F16, 37, 512, 2048, false, 2)]
    [InlineData(DType.F16, 64, 130, 1024, false, 0)]
    public void SkinnyProductMatchesTheReference(DType dtype, int m, int n, int k, bool withBias, int mode)
    {
        _ = Gpu;   // skips where there is no GPU
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        double[] Values(int count, double scale) => [.. Enumerable.Range(0, count).Select(_ => (rng.NextDouble() * 2 - 1) * scale)];
        double[] xv = Stored(Values(m * k, 1), dtype), wv = Stored(Values(n * k, 0.05), dtype);
        double[] bv = Stored(Values(n, 1), dtype), rv = Stored(Values(m * n, 2), dtype);
        using var sk = SkinnyBackend();
        var x = Upload(sk, xv, dtype, m, k);
        var w = Upload(sk, wv, dtype, n, k);
        var bias = withBias ? Upload(sk, bv, dtype, n) : null;
        var r = Upload(sk, rv, dtype, m, n);
        var y = mode == 2 ? Upload(sk, rv, dtype, m, n) : sk.Allocate(new Shape(m, n), dtype);
        if (mode != 2) sk.Fill(y, double.NaN);   // an output the kernel forgets stays NaN
        sk.MatMul(x, w, y, transposeB: true, bias: bias, beta: mode == 2 ? 1.0 : 0.0, addend: mode == 1 ? r : null);

        var expected = new double[m * n];
        Parallel.For(0, m, i =>
        {
            for (int j = 0; j < n; j++)
            {
                double s = 0;
                for (int q = 0; q < k; q++) s += xv[i * k + q] * wv[j * k + q];
                expected[i * n + j] = s + (withBias ? bv[j] : 0) + (mode != 0 ? rv[i * n + j] : 0);
            }
        });
        AssertClose(expected, Download(sk, y), Tolerance(dtype), $"skinny {dtype} {m}x{n}x{k}{(withBias ? " bias" : "")} mode {mode}");
        Assert.Equal(rv, Download(sk, r));   // the addend is read, never written
        string kernel = $"skinny_{(dtype == DType.BF16 ? "bf16" : "f16")}_m{SkinnyProductPlan.PadRows(m)}";
        Assert.Contains(kernel, KernelsRun(sk));
        Assert.DoesNotContain(KernelsRun(sk), name => name.StartsWith("matmul", StringComparison.Ordinal));
    }

    /// <summary>
    /// The SwiGLU variant (<see cref="CudaBackend.MatMulSwiGlu"/> at 5 to 64 rows): SiLU(h Wg^T) * (h Wu^T) against a double
    /// reference, h = x or RMSNorm(x) (the reference normalizes in double; the kernel reads the norm kernel's 16-bit h,
    /// 2^-9 relative, inside the 1e-2 tolerance).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 5, 100, 392, false)]
    [InlineData(DType.BF16, 16, 8192, 2048, true)]
    [InlineData(DType.BF16, 64, 200, 1024, false)]
    [InlineData(DType.F16, 37, 70, 2048, true)]
    public void SkinnySwiGluMatchesTheReference(DType dtype, int m, int f, int k, bool withNorm)
    {
        _ = Gpu;
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        double[] Values(int count, double scale) => [.. Enumerable.Range(0, count).Select(_ => (rng.NextDouble() * 2 - 1) * scale)];
        double[] xv = Stored(Values(m * k, 1), dtype), gv = Stored(Values(f * k, 0.05), dtype), uv = Stored(Values(f * k, 0.05), dtype);
        double[] nv = Stored(Values(k, 1), dtype);
        using var sk = SkinnyBackend();
        var x = Upload(sk, xv, dtype, m, k);
        var y = sk.Allocate(new Shape(m, f), dtype);
        sk.Fill(y, double.NaN);
        RmsNormPrologue? norm = withNorm ? new RmsNormPrologue(Upload(sk, nv, dtype, k), 1e-5) : null;
        sk.MatMulSwiGlu(x, Upload(sk, gv, dtype, f, k), Upload(sk, uv, dtype, f, k), y, norm: norm);

        var expected = new double[m * f];
        Parallel.For(0, m, i =>
        {
            var h = new double[k];
            double ss = 0;
            for (int q = 0; q < k; q++) ss += xv[i * k + q] * xv[i * k + q];
            double rstd = withNorm ? 1 / Math.Sqrt(ss / k + 1e-5) : 1;
            for (int q = 0; q < k; q++) h[q] = withNorm ? xv[i * k + q] * rstd * nv[q] : xv[i * k + q];
            for (int j = 0; j < f; j++)
            {
                double g = 0, u = 0;
                for (int q = 0; q < k; q++) { g += h[q] * gv[j * k + q]; u += h[q] * uv[j * k + q]; }
                expected[i * f + j] = g / (1 + Math.Exp(-g)) * u;
            }
        });
        AssertClose(expected, Download(sk, y), Tolerance(dtype), $"skinny SwiGLU {dtype} {m}x{f}x{k}{(withNorm ? " norm" : "")}");
        Assert.Contains($"skinny_swiglu_{(dtype == DType.BF16 ? "bf16" : "f16")}_m{SkinnyProductPlan.PadRows(m)}", KernelsRun(sk));
        Assert.DoesNotContain(KernelsRun(sk), name => name.StartsWith("matmul", StringComparison.Ordinal));
    }

    /// <summary>The four products of a Llama-1B decode step at 8, 32 and 64 rows against cuBLASLt on the same rounded inputs.</summary>
    [Theory]
    [InlineData(8)]
    [InlineData(32)]
    [InlineData(64)]
    public void LlamaDecodeShapesMatchCublasLt(int m)
    {
        _ = Gpu;
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        using var sk = SkinnyBackend();
        foreach (var (n, k) in new[] { (3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192) })
        {
            double[] xv = [.. Enumerable.Range(0, m * k).Select(_ => rng.NextDouble() * 2 - 1)];
            double[] wv = [.. Enumerable.Range(0, n * k).Select(_ => (rng.NextDouble() * 2 - 1) * 0.03)];
            var y = sk.Allocate(new Shape(m, n), DType.BF16);
            sk.MatMul(Upload(sk, xv, DType.BF16, m, k), Upload(sk, wv, DType.BF16, n, k), y, transposeB: true);
            var yc = Gpu.Allocate(new Shape(m, n), DType.BF16);
            Gpu.MatMul(Upload(xv, DType.BF16, m, k), Upload(wv, DType.BF16, n, k), yc, transposeB: true);
            AssertClose(Download(yc), Download(sk, y), Tolerance(DType.BF16), $"skinny bf16 {m}x{n}x{k} against cuBLASLt");
        }
        // The gate/up pair through MatMulSwiGlu (adjacent weights: the default path is one cuBLASLt product at N = 2F, then SwiGLU).
        {
            const int f = 8192, k = 2048;
            double[] xv = [.. Enumerable.Range(0, m * k).Select(_ => rng.NextDouble() * 2 - 1)];
            double[] wv = [.. Enumerable.Range(0, 2 * f * k).Select(_ => (rng.NextDouble() * 2 - 1) * 0.03)];
            var ws = Upload(sk, wv, DType.BF16, 2 * f, k);
            var y = sk.Allocate(new Shape(m, f), DType.BF16);
            sk.MatMulSwiGlu(Upload(sk, xv, DType.BF16, m, k), ws.Slice(0, 0, f), ws.Slice(0, f, f), y);
            var wc = Upload(wv, DType.BF16, 2 * f, k);
            var yc = Gpu.Allocate(new Shape(m, f), DType.BF16);
            Gpu.MatMulSwiGlu(Upload(xv, DType.BF16, m, k), wc.Slice(0, 0, f), wc.Slice(0, f, f), yc);
            AssertClose(Download(yc), Download(sk, y), Tolerance(DType.BF16), $"skinny SwiGLU bf16 {m}x{f}x{k} against cuBLASLt + SwiGLU");
        }
        Assert.Contains($"skinny_bf16_m{SkinnyProductPlan.PadRows(m)}", KernelsRun(sk));
        Assert.Contains($"skinny_swiglu_bf16_m{SkinnyProductPlan.PadRows(m)}", KernelsRun(sk));
        Assert.DoesNotContain(KernelsRun(sk), name => name.StartsWith("matmul", StringComparison.Ordinal));
    }

    /// <summary>Registers, local (spilled) bytes and CTAs per SM of every skinny kernel at the largest slice's shared memory
    /// (clang + ptxas 11.8 gave 106-252 registers, 250-252 for the m64 variants, and no spills); fails only if one cannot launch.</summary>
    [Fact]
    public void SkinnyKernelResourcesAreReported()
    {
        var module = Gpu.Kernels.Module("skinny.cu");
        foreach (var variant in new[] { "", "swiglu_" })
            foreach (var dtype in new[] { "bf16", "f16" })
                foreach (int mp in new[] { 8, 16, 32, 64 })
                {
                    int shared = new SkinnyProductPlan(mp, 1, 2, SkinnyProductPlan.MaxSliceColumns, 1).SharedBytes;
                    var r = module.Resources($"skinny_{variant}{dtype}_m{mp}", SkinnyProductPlan.Threads, shared);
                    Console.WriteLine($"[skinny kernel] skinny_{variant}{dtype}_m{mp}: {r.Registers} registers, {r.LocalBytes} bytes local, {shared} bytes shared, {r.CtasPerSm} CTAs per SM");
                    Assert.True(r.CtasPerSm >= 1, $"skinny_{variant}{dtype}_m{mp} cannot launch with {shared} bytes of shared memory");
                }
    }

    [Fact]
    public void ProductsOutsideTheKernelsRangeStayOnTheirKernels()
    {
        _ = Gpu;
        using var sk = SkinnyBackend();
        void Product(int m, DType dtype, bool transposedWeight = false)
        {
            var x = sk.Allocate(new Shape(m, 256), dtype); sk.Fill(x, 0.5);
            var w = sk.Allocate(transposedWeight ? new Shape(256, 128) : new Shape(128, 256), dtype); sk.Fill(w, 0.25);
            var y = sk.Allocate(new Shape(m, 128), dtype);
            sk.MatMul(x, w, y, transposeB: !transposedWeight);
            Assert.All(Download(sk, y), v => Assert.Equal(32.0, v));   // 256 x 0.5 x 0.25, exact in every dtype
        }
        Product(4, DType.BF16);                   // gemv.cu's matrix-vector kernel
        Product(65, DType.BF16);                  // cuBLASLt
        Product(32, DType.F32);                   // cuBLASLt
        Product(32, DType.BF16, transposedWeight: true);
        Assert.DoesNotContain(KernelsRun(sk), name => name.StartsWith("skinny", StringComparison.Ordinal));
        Product(32, DType.BF16);
        Assert.Contains("skinny_bf16_m32", KernelsRun(sk));
    }
}
