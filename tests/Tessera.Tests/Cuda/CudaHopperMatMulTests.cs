using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The training products on Tessera's Hopper kernel (gemm_hopper.cu, <see cref="CudaBackendOptions.HopperTrainingProducts"/>)
/// on a compute capability 9.0 device: a (M, K) times b (N, K)^T through <see cref="IBackend.MatMul"/>, against an f64
/// reference on the same rounded inputs at shapes with every dimension short of a tile (<see cref="CudaTestBase.Tolerance"/>:
/// 1e-2 norm-wise for a bf16 or f16 output), and against cuBLASLt on the default backend at llama-1b's shapes (the same
/// tolerance: both sum exact 16-bit products in fp32, in different orders). Both output tile widths, bias, alpha, beta = 1,
/// the output's row-stride padding untouched, in clusters of two CTAs sharing B by multicast and without, the output staged
/// through shared memory and stored by the tensor memory accelerator (c's rows 16-byte aligned) and stored from registers. Each checks from the op profiler's kernel names that gemm_hopper ran, so a call
/// that fell back to cuBLASLt would fail. Skips, saying why, on other devices.
/// </summary>
[Collection("cuda")]
public sealed class CudaHopperMatMulTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData(DType.BF16, 300, 521, 200, 256, true, 0.5, 1.0, true)]    // M, N (odd), K each short of a tile
    [InlineData(DType.BF16, 300, 521, 200, 256, true, 0.5, 1.0, false)]
    [InlineData(DType.BF16, 130, 251, 64, 128, false, 1.0, 0.0, true)]    // the pair's second row tile past M
    [InlineData(DType.BF16, 130, 251, 64, 128, false, 1.0, 0.0, false)]
    [InlineData(DType.F16, 256, 384, 448, 256, true, 1.0, 0.0, true)]
    [InlineData(DType.BF16, 1000, 777, 1032, 128, true, 2.0, 1.0, true)]  // 17 k-tiles through 6 stages, across tiles
    [InlineData(DType.BF16, 1000, 777, 1032, 256, true, 2.0, 1.0, false)]
    public void ProductsMatchTheReferenceAndCublasLt(DType dtype, int m, int n, int k, int columns, bool withBias, double alpha, double beta,
        bool multicast)
    {
        foreach (bool aligned in new[] { true, false })
            ProductMatchesTheReferenceAndCublasLt(dtype, m, n, k, columns, withBias, alpha, beta, multicast, aligned);
    }

    /// <summary>One case of <see cref="ProductsMatchTheReferenceAndCublasLt"/>: c's rows a multiple of 8 values apart (16 bytes:
    /// the staged stores by the tensor memory accelerator) or not (the stores straight from registers).</summary>
    private void ProductMatchesTheReferenceAndCublasLt(DType dtype, int m, int n, int k, int columns, bool withBias, double alpha, double beta,
        bool multicast, bool aligned)
    {
        using var hopper = HopperBackend(columns, multicast);
        // c's rows are ld apart (even), past n: the padding must stay as it was.
        int ld = aligned ? (n + 15) / 8 * 8 : (n + 8 + n % 2) % 8 != 0 ? n + 8 + n % 2 : n + 10;
        var (av, bv, biasv, c0) = (Values(m * k, 1.0), Values(n * k, 0.05), Values(n, 0.5), Values(m * ld, 1.0));
        var got = Run(hopper, dtype, av, bv, withBias ? biasv : null, c0, m, n, k, ld, alpha, beta);
        AssertRanOn(hopper, dtype, columns, multicast);
        var cublas = Run(Gpu, dtype, av, bv, withBias ? biasv : null, c0, m, n, k, ld, alpha, beta);
        double[] sa = Stored(av, dtype), sb = Stored(bv, dtype), sbias = Stored(biasv, dtype), sc = Stored(c0, dtype);
        var expected = new double[m * n];
        var gotTile = new double[m * n];
        var cublasTile = new double[m * n];
        for (int r = 0; r < m; r++)
        {
            for (int c = 0; c < n; c++)
            {
                double s = 0;
                for (int i = 0; i < k; i++) s += sa[r * k + i] * sb[c * k + i];
                expected[r * n + c] = alpha * s + (withBias ? sbias[c] : 0) + beta * sc[r * ld + c];
                gotTile[r * n + c] = got[r * ld + c];
                cublasTile[r * n + c] = cublas[r * ld + c];
            }
            for (int c = n; c < ld; c++) Assert.Equal(sc[r * ld + c], got[r * ld + c]);
        }
        string what = $"{dtype} {m}x{n}x{k} n{columns} multicast {multicast} row stride {ld}";
        AssertClose(expected, gotTile, Tolerance(dtype), "gemm_hopper " + what);
        AssertClose(cublasTile, gotTile, Tolerance(dtype), "gemm_hopper against cuBLASLt " + what);
    }

    /// <summary>llama-1b's forward products (QKV, output, gate/up, down) at 2,048 rows and one short of a tile, against cuBLASLt.</summary>
    [Theory]
    [InlineData(2048, 3072, 2048, 256, true)]
    [InlineData(2048, 2048, 2048, 128, true)]
    [InlineData(2000, 16384, 2048, 256, true)]
    [InlineData(2048, 2048, 8192, 256, true)]
    [InlineData(2048, 3072, 2048, 256, false)]
    public void LlamaShapesMatchCublasLt(int m, int n, int k, int columns, bool multicast)
    {
        using var hopper = HopperBackend(columns, multicast);
        var (av, bv) = (Values(m * k, 1.0), Values(n * k, 0.05));
        var c0 = new double[m * n];
        var got = Run(hopper, DType.BF16, av, bv, null, c0, m, n, k, n, 1.0, 0.0);
        AssertRanOn(hopper, DType.BF16, columns, multicast);
        var cublas = Run(Gpu, DType.BF16, av, bv, null, c0, m, n, k, n, 1.0, 0.0);
        AssertClose(cublas, got, Tolerance(DType.BF16), $"gemm_hopper against cuBLASLt bf16 {m}x{n}x{k} n{columns} multicast {multicast}");
    }

    private static double[] Run(CudaBackend backend, DType dtype, double[] av, double[] bv, double[]? biasv, double[] c0,
        int m, int n, int k, int ld, double alpha, double beta)
    {
        var a = Upload(backend, av, dtype, m, k);
        var b = Upload(backend, bv, dtype, n, k);
        var c = Upload(backend, c0, dtype, m, ld);
        backend.MatMul(a, b, c.Slice(1, 0, n), transposeB: true, alpha: alpha, beta: beta, bias: biasv is null ? null : Upload(backend, biasv, dtype, n));
        return Download(backend, c);
    }

    /// <summary>A backend with the Hopper training products at <paramref name="columns"/> a tile (in clusters of two sharing
    /// B by multicast, or not) and the op profiler; skips the test, saying why, on a device other than compute capability 9.0.</summary>
    private CudaBackend HopperBackend(int columns, bool multicast)
    {
        if (Gpu.CudaDevice.ComputeCapability != (9, 0))
            Assert.Skip($"gemm_hopper.cu needs compute capability 9.0 (wgmma, the tensor memory accelerator); this device is {Gpu.CudaDevice.Architecture}");
        return new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with
        {
            HopperTrainingProducts = true, HopperTrainingProductColumns = columns, HopperTrainingProductMulticast = multicast, ProfileOps = true,
        });
    }

    /// <summary>The product ran on gemm_hopper (the op profiler's kernel names), not on cuBLASLt.</summary>
    private static void AssertRanOn(CudaBackend backend, DType dtype, int columns, bool multicast)
    {
        Assert.True(backend.HopperTrainingProductsUnavailableReason is null,
            $"gemm_hopper does not run on this 9.0 device: {backend.HopperTrainingProductsUnavailableReason}");
        string name = $"gemm_hopper_nt{(multicast ? "_mc" : "")}_{(dtype == DType.BF16 ? "bf16" : "f16")}_n{columns}";
        Assert.Contains(backend.Profiler!.Totals(), r => r.Name == name);
    }

    private double[] Values(int count, double scale) => Enumerable.Range(0, count).Select(_ => (Rng.NextDouble() * 2 - 1) * scale).ToArray();
}
