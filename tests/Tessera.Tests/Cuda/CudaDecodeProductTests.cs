using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The decode-size products (decode_gemm_hopper.cu and decode_gemm.cu, <see cref="CudaBackendOptions.DecodeProducts"/>) on the GPU: x of 5 to 64 rows
/// times an nn.Linear weight through <see cref="IBackend.MatMul"/>, against an f64 reference on the same rounded inputs
/// (<see cref="CudaTestBase.Tolerance"/>: 1e-2 for a bf16 or f16 output) and against cuBLASLt on the default backend;
/// one slice of K and several (a thread-block cluster of the slices; the llama-1b decode step's shapes), bias, the residual
/// added (beta = 1), N past a multiple of the 128-row block; the output's row-stride padding untouched; the SwiGLU form through <see cref="IBackend.MatMulSwiGlu"/>; the
/// RMSNorm applied on the way through <see cref="IBackend.RmsNormMatMul"/>; on the wgmma kernel (decode_gemm_hopper.cu) on
/// a compute capability 9.0 device and on decode_gemm.cu's mma.sync kernel.
/// Each checks, from the op profiler's kernel names, that the kernel asked for ran (and no norm kernel where it normalizes), so a
/// call that fell back to cuBLASLt would fail. And the recorded 64-sequence decode step with them, timed for the log beside
/// the default.
/// </summary>
[Collection("cuda")]
public sealed class CudaDecodeProductTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData(DType.BF16, 5, 100, 256, true, 0.0, true)]        // one row block and a part; 8 rows of x padded to 16
    [InlineData(DType.BF16, 64, 3072, 2048, false, 0.0, true)]    // llama-1b's QKV at 64 rows: K in slices
    [InlineData(DType.BF16, 64, 2048, 8192, false, 1.0, true)]    // its down product, the residual added
    [InlineData(DType.BF16, 17, 16384, 2048, true, 0.0, true)]    // its gate/up product at 17 rows, with bias
    [InlineData(DType.F16, 40, 2048, 2048, true, 1.0, true)]      // f16, the output product
    [InlineData(DType.BF16, 33, 129, 512, true, 1.0, true)]       // N odd: a pair of one output
    [InlineData(DType.BF16, 5, 100, 256, true, 0.0, false)]       // decode_gemm.cu's mma.sync kernel on a 9.0 device too
    [InlineData(DType.BF16, 64, 3072, 2048, false, 0.0, false)]
    [InlineData(DType.BF16, 5, 100, 256, true, 0.0, true, true)]       // the tensor-map form: W's and x's tiles by the TMA
    [InlineData(DType.BF16, 64, 2048, 8192, false, 1.0, true, true)]
    [InlineData(DType.BF16, 33, 129, 512, true, 1.0, true, true)]
    [InlineData(DType.F16, 40, 2048, 2048, true, 1.0, true, true)]
    public void DecodeProductsMatchTheReferenceAndCublasLt(DType dtype, int m, int n, int k, bool withBias, double beta, bool hopper, bool tensorMaps = false)
    {
        using var decode = DecodeBackend(hopper, tensorMaps);
        var (xv, wv, bv) = (Values(m * k, 1.0), Values(n * k, 0.05), Values(n, 0.5));
        var y0 = Values(m * (n + 8), 1.0);                      // y's rows are n + 8 apart: the padding must stay as it was
        double[] Run(CudaBackend backend)
        {
            var x = Upload(backend, xv, dtype, m, k);
            var w = Upload(backend, wv, dtype, n, k);
            var y = Upload(backend, y0, dtype, m, n + 8);
            backend.MatMul(x, w, y.Slice(1, 0, n), transposeB: true, beta: beta, bias: withBias ? Upload(backend, bv, dtype, n) : null);
            return Download(backend, y);
        }
        var got = Run(decode);
        AssertRanOn(decode, $"{Prefix(hopper, tensorMaps)}_{Suffix(dtype)}_m");
        var cublas = Run(Gpu);
        double[] sx = Stored(xv, dtype), sw = Stored(wv, dtype), sb = Stored(bv, dtype), sy = Stored(y0, dtype);
        var expected = new double[m * n];
        var gotTile = new double[m * n];
        var cublasTile = new double[m * n];
        for (int r = 0; r < m; r++)
        {
            for (int c = 0; c < n; c++)
            {
                double s = 0;
                for (int i = 0; i < k; i++) s += sx[r * k + i] * sw[c * k + i];
                expected[r * n + c] = s + (withBias ? sb[c] : 0) + beta * sy[r * (n + 8) + c];
                gotTile[r * n + c] = got[r * (n + 8) + c];
                cublasTile[r * n + c] = cublas[r * (n + 8) + c];
            }
            for (int c = n; c < n + 8; c++) Assert.Equal(sy[r * (n + 8) + c], got[r * (n + 8) + c]);
        }
        AssertClose(expected, gotTile, Tolerance(dtype), $"decode_gemm {dtype} {m}x{n}x{k}");
        AssertClose(cublasTile, gotTile, Tolerance(dtype), $"decode_gemm against cuBLASLt {dtype} {m}x{n}x{k}");
    }

    /// <summary>
    /// <see cref="IBackend.MatMulSwiGlu"/> at 5 to 64 rows on the decode products' SwiGLU form (gate and up summed in fp32, no
    /// 16-bit scratch between the product and SiLU): against an f64 reference of SiLU(x Wg^T + bg) * (x Wu^T + bu) on the rounded
    /// inputs, normalized on the way when there is a norm, and against the default backend's path (cuBLASLt and the SwiGLU kernel).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 64, 8192, 2048, true, false, true)]   // llama-1b's MLP at a 64-sequence decode step, its RMSNorm in front
    [InlineData(DType.BF16, 9, 100, 256, false, true, true)]      // 2 row blocks of 64 outputs, the last with 36; biases
    [InlineData(DType.F16, 24, 160, 1024, true, true, true)]      // f16, normalized, with biases
    [InlineData(DType.BF16, 64, 8192, 2048, true, false, false)]  // decode_gemm.cu's mma.sync kernel
    [InlineData(DType.BF16, 64, 8192, 2048, true, false, true, true)]   // the tensor-map form: the gate's and up's boxes of 64 rows
    [InlineData(DType.BF16, 9, 100, 256, false, true, true, true)]      // the last row block's boxes past F zero-filled
    [InlineData(DType.F16, 24, 160, 1024, true, true, true, true)]
    public void DecodeSwiGluMatchesTheReferenceAndTheDefaultPath(DType dtype, int m, int f, int k, bool withNorm, bool withBias, bool hopper,
        bool tensorMaps = false)
    {
        using var decode = DecodeBackend(hopper, tensorMaps);
        const double eps = 1e-5;
        var (xv, gv, uv, nv) = (Values(m * k, 1.0), Values(f * k, 0.05), Values(f * k, 0.05), Values(k, 1.0));
        var (bgv, buv) = (Values(f, 0.5), Values(f, 0.5));
        double[] Run(CudaBackend backend)
        {
            var output = backend.Allocate(new Shape(m, f), dtype);
            backend.MatMulSwiGlu(Upload(backend, xv, dtype, m, k), Upload(backend, gv, dtype, f, k), Upload(backend, uv, dtype, f, k), output,
                withBias ? Upload(backend, bgv, dtype, f) : null, withBias ? Upload(backend, buv, dtype, f) : null,
                withNorm ? new RmsNormPrologue(Upload(backend, nv, dtype, k), eps) : null);
            return Download(backend, output);
        }
        var got = Run(decode);
        AssertRanOn(decode, $"{Prefix(hopper, tensorMaps)}_swiglu_{Suffix(dtype)}_m");
        if (withNorm) Assert.DoesNotContain(decode.Profiler!.Totals(), r => r.Name.StartsWith("rmsnorm", StringComparison.Ordinal));   // no norm launch
        var fallback = Run(Gpu);
        double[] sx = Stored(xv, dtype), sg = Stored(gv, dtype), su = Stored(uv, dtype), sn = Stored(nv, dtype), sbg = Stored(bgv, dtype), sbu = Stored(buv, dtype);
        var expected = new double[m * f];
        for (int r = 0; r < m; r++)
        {
            var h = new double[k];
            double ms = 0;
            for (int i = 0; i < k; i++) ms += sx[r * k + i] * sx[r * k + i];
            double rstd = withNorm ? 1 / Math.Sqrt(ms / k + eps) : 1;
            for (int i = 0; i < k; i++) h[i] = withNorm ? sx[r * k + i] * rstd * sn[i] : sx[r * k + i];
            for (int o = 0; o < f; o++)
            {
                double g = withBias ? sbg[o] : 0, u = withBias ? sbu[o] : 0;
                for (int i = 0; i < k; i++) { g += h[i] * sg[o * k + i]; u += h[i] * su[o * k + i]; }
                expected[r * f + o] = g / (1 + Math.Exp(-g)) * u;
            }
        }
        AssertClose(expected, got, Tolerance(dtype), $"decode_gemm SwiGLU {dtype} {m}x{f}x{k}");
        AssertClose(fallback, got, Tolerance(dtype), $"decode_gemm SwiGLU against the default path {dtype} {m}x{f}x{k}");
    }

    /// <summary>
    /// <see cref="IBackend.RmsNormMatMul"/> at 5 to 64 rows on the decode products with the norm applied on the way (x's fragments
    /// scaled by the norm's weight, 1 / rms on the sums; one slice and a cluster of several): against an f64 reference of
    /// RMSNorm(x) W^T + b on the rounded inputs and against the default path (the norm kernel, then cuBLASLt).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16, 64, 3072, 2048, false, true)]   // llama-1b's QKV at a 64-sequence decode step (K in slices)
    [InlineData(DType.BF16, 7, 64, 4096, true, true)]       // one row block, with bias
    [InlineData(DType.BF16, 64, 3072, 2048, false, false)]  // decode_gemm.cu's mma.sync kernel
    [InlineData(DType.BF16, 64, 3072, 2048, false, true, true)]   // the tensor-map form: the norm weight's bulk copy
    [InlineData(DType.BF16, 7, 64, 4096, true, true, true)]
    public void DecodeProductsNormalizeOnTheWay(DType dtype, int m, int n, int k, bool withBias, bool hopper, bool tensorMaps = false)
    {
        using var decode = DecodeBackend(hopper, tensorMaps);
        const double eps = 1e-5;
        var (xv, wv, nv, bv) = (Values(m * k, 1.0), Values(n * k, 0.05), Values(k, 1.0), Values(n, 0.5));
        double[] Run(CudaBackend backend)
        {
            var output = backend.Allocate(new Shape(m, n), dtype);
            backend.RmsNormMatMul(Upload(backend, xv, dtype, m, k), new RmsNormPrologue(Upload(backend, nv, dtype, k), eps),
                Upload(backend, wv, dtype, n, k), output, withBias ? Upload(backend, bv, dtype, n) : null);
            return Download(backend, output);
        }
        var got = Run(decode);
        AssertRanOn(decode, $"{Prefix(hopper, tensorMaps)}_{Suffix(dtype)}_m");
        Assert.DoesNotContain(decode.Profiler!.Totals(), r => r.Name.StartsWith("rmsnorm", StringComparison.Ordinal));   // no norm launch
        var fallback = Run(Gpu);
        double[] sx = Stored(xv, dtype), sw = Stored(wv, dtype), sn = Stored(nv, dtype), sb = Stored(bv, dtype);
        var expected = new double[m * n];
        for (int r = 0; r < m; r++)
        {
            double ms = 0;
            for (int i = 0; i < k; i++) ms += sx[r * k + i] * sx[r * k + i];
            double rstd = 1 / Math.Sqrt(ms / k + eps);
            for (int c = 0; c < n; c++)
            {
                double s = withBias ? sb[c] : 0;
                for (int i = 0; i < k; i++) s += sx[r * k + i] * rstd * sn[i] * sw[c * k + i];
                expected[r * n + c] = s;
            }
        }
        AssertClose(expected, got, Tolerance(dtype), $"decode_gemm with RMSNorm {dtype} {m}x{n}x{k}");
        AssertClose(fallback, got, Tolerance(dtype), $"decode_gemm with RMSNorm against the default path {dtype} {m}x{n}x{k}");
    }

    /// <summary>The recorded 64-sequence llama-1b decode step with the decode products, for the log (not a pass/fail bar).</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    [InlineData(true, true)]
    public void DecodeStepOf64SequencesWithTheDecodeProductsReportsItsTime(bool hopper, bool tensorMaps = false)
    {
        using var decode = new CudaBackend(Gpu.CudaDevice.Ordinal,
            CudaBackendOptions.Default with { DecodeProducts = true, HopperDecodeProducts = hopper, DecodeProductTensorMaps = tensorMaps });
        CudaPagedServingTests.DecodeStepOf64Sequences(decode, $", DecodeProducts=true, HopperDecodeProducts={hopper}, DecodeProductTensorMaps={tensorMaps}");
    }

    /// <summary>A backend with the decode products and the op profiler, on the wgmma kernel where <paramref name="hopper"/> allows it.</summary>
    private CudaBackend DecodeBackend(bool hopper, bool tensorMaps = false) => new(Gpu.CudaDevice.Ordinal,
        CudaBackendOptions.Default with { DecodeProducts = true, HopperDecodeProducts = hopper, DecodeProductTensorMaps = tensorMaps, ProfileOps = true });

    /// <summary>The kernels' name prefix: decode_gemm_hopper (its tensor-map form decode_gemm_hopper_tma) on a compute capability
    /// 9.0 device when asked, decode_gemm.cu's otherwise.</summary>
    private string Prefix(bool hopper, bool tensorMaps = false) => !(hopper && Gpu.CudaDevice.ComputeCapability == (9, 0)) ? "decode_gemm"
        : tensorMaps ? "decode_gemm_hopper_tma" : "decode_gemm_hopper";

    /// <summary>The product ran on the decode-product kernel asked for (the op profiler's kernel names), not on cuBLASLt: a routing fault would
    /// otherwise pass the comparisons.</summary>
    private static void AssertRanOn(CudaBackend backend, string kernelPrefix)
    {
        Assert.True(backend.HopperDecodeProductsUnavailableReason is null || backend.CudaDevice.ComputeCapability != (9, 0),
            $"the wgmma decode products do not run on this 9.0 device: {backend.HopperDecodeProductsUnavailableReason}");
        Assert.Contains(backend.Profiler!.Totals(), r => r.Name.StartsWith(kernelPrefix, StringComparison.Ordinal));
    }

    private static string Suffix(DType dtype) => dtype == DType.BF16 ? "bf16" : "f16";

    private double[] Values(int count, double scale) => Enumerable.Range(0, count).Select(_ => (Rng.NextDouble() * 2 - 1) * scale).ToArray();
}
