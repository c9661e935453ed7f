using System.Globalization;
using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Skinny-product timings for issue 14: the four products of a Llama-1B decode step (bf16) at 8, 32 and 64 rows, and the
/// gate/up pair as one SwiGLU call, each run
/// over 16 distinct weight matrices in turn (so the L2 cannot serve a repeat: cold weights, as the 16 layers are), through
/// skinny.cu (<see cref="CudaBackendOptions.SkinnyProducts"/>) beside cuBLASLt (the shared backend, tuned). CUDA events
/// around each pass, median of 10 after 3 warm-ups; us per call, GB/s of weights. Runs only with TESSERA_CUDA_TIMINGS=1;
/// the table goes to the test output. Fails only if the skinny kernel is more than 3x slower than cuBLASLt (a broken grid).
/// </summary>
[Collection("cuda")]
public sealed class CudaSkinnyProductSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    private const int Layers = 16;

    [Fact]
    public void SkinnyProductsBesideCublasLtAtTheDecodeShapes()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        using var sk = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { SkinnyProducts = true });
        var lines = new List<string> { "| product | M | N x K | plan (slices x ks, CTAs a slice) | skinny us | cuBLASLt us | skinny GB/s | cuBLASLt GB/s |", "|---|---|---|---|---|---|---|---|" };
        double worstRatio = 0;
        foreach (var (name, n, k) in new[] { ("QKV", 3072, 2048), ("output", 2048, 2048), ("gate/up", 16384, 2048), ("down", 2048, 8192) })
        {
            Tensor[] Weights(CudaBackend b)
            {
                var w = new Tensor[Layers];
                for (int i = 0; i < Layers; i++) { w[i] = b.Allocate(new Shape(n, k), DType.BF16); b.Fill(w[i], 0.001); }
                return w;
            }
            var ws = Weights(sk);
            var wc = Weights(Gpu);
            foreach (int m in new[] { 8, 32, 64 })
            {
                var xs = sk.Allocate(new Shape(m, k), DType.BF16); sk.Fill(xs, 0.01);
                var ys = sk.Allocate(new Shape(m, n), DType.BF16);
                var xc = Gpu.Allocate(new Shape(m, k), DType.BF16); Gpu.Fill(xc, 0.01);
                var yc = Gpu.Allocate(new Shape(m, n), DType.BF16);
                double skinnyUs = Median(sk, () => { for (int i = 0; i < Layers; i++) sk.MatMul(xs, ws[i], ys, transposeB: true); }) * 1e3 / Layers;
                double cublasUs = Median(Gpu, () => { for (int i = 0; i < Layers; i++) Gpu.MatMul(xc, wc[i], yc, transposeB: true); }) * 1e3 / Layers;
                double bytes = 2.0 * n * k;
                var plan = SkinnyProductPlan.For(m, n, k, Gpu.CudaDevice.MultiprocessorCount);
                worstRatio = Math.Max(worstRatio, skinnyUs / cublasUs);
                lines.Add(string.Create(CultureInfo.InvariantCulture,
                    $"| {name} | {m} | {n} x {k} | {plan.Slices} x {plan.SliceColumns}, {plan.CtasPerSlice} | {skinnyUs:F1} | {cublasUs:F1} | {bytes / skinnyUs / 1e3:F0} | {bytes / cublasUs / 1e3:F0} |"));
            }
            foreach (var t in ws) t.Storage.Dispose();
            foreach (var t in wc) t.Storage.Dispose();
        }
        // The gate/up pair as one SwiGLU call (adjacent weights: cuBLASLt at N = 2F, then the SwiGLU kernel; or skinny.cu's SwiGLU variant).
        {
            const int f = 8192, k = 2048;
            Tensor[] Pairs(CudaBackend b)
            {
                var w = new Tensor[Layers];
                for (int i = 0; i < Layers; i++) { w[i] = b.Allocate(new Shape(2 * f, k), DType.BF16); b.Fill(w[i], 0.001); }
                return w;
            }
            var ws = Pairs(sk);
            var wc = Pairs(Gpu);
            foreach (int m in new[] { 8, 32, 64 })
            {
                var xs = sk.Allocate(new Shape(m, k), DType.BF16); sk.Fill(xs, 0.01);
                var ys = sk.Allocate(new Shape(m, f), DType.BF16);
                var xc = Gpu.Allocate(new Shape(m, k), DType.BF16); Gpu.Fill(xc, 0.01);
                var yc = Gpu.Allocate(new Shape(m, f), DType.BF16);
                double skinnyUs = Median(sk, () => { for (int i = 0; i < Layers; i++) sk.MatMulSwiGlu(xs, ws[i].Slice(0, 0, f), ws[i].Slice(0, f, f), ys); }) * 1e3 / Layers;
                double cublasUs = Median(Gpu, () => { for (int i = 0; i < Layers; i++) Gpu.MatMulSwiGlu(xc, wc[i].Slice(0, 0, f), wc[i].Slice(0, f, f), yc); }) * 1e3 / Layers;
                double bytes = 2.0 * 2 * f * k;
                var plan = SkinnyProductPlan.For(m, 2 * f, k, Gpu.CudaDevice.MultiprocessorCount);
                worstRatio = Math.Max(worstRatio, skinnyUs / cublasUs);
                lines.Add(string.Create(CultureInfo.InvariantCulture,
                    $"| gate/up SwiGLU | {m} | {f} x {k} x 2 | {plan.Slices} x {plan.SliceColumns}, {plan.CtasPerSlice} | {skinnyUs:F1} | {cublasUs:F1} (+ SwiGLU) | {bytes / skinnyUs / 1e3:F0} | {bytes / cublasUs / 1e3:F0} |"));
            }
            foreach (var t in ws) t.Storage.Dispose();
            foreach (var t in wc) t.Storage.Dispose();
        }
        foreach (var line in lines) TestContext.Current.TestOutputHelper?.WriteLine("[skinny] " + line);
        Assert.True(worstRatio < 3, $"the skinny kernel took {worstRatio:F1}x cuBLASLt's time at one shape");
    }

    /// <summary>Median milliseconds of <paramref name="op"/> on <paramref name="backend"/>'s stream, 10 runs after 3 warm-ups.</summary>
    private static double Median(CudaBackend backend, Action op)
    {
        for (int i = 0; i < 3; i++) op();
        using var start = new Tessera.Cuda.Runtime.CudaEvent(backend.CudaDevice);
        using var end = new Tessera.Cuda.Runtime.CudaEvent(backend.CudaDevice);
        var times = new List<double>();
        for (int i = 0; i < 10; i++)
        {
            start.Record(backend.Stream);
            op();
            end.Record(backend.Stream);
            end.Synchronize();
            times.Add(end.ElapsedSince(start));
        }
        times.Sort();
        return times[5];
    }
}
