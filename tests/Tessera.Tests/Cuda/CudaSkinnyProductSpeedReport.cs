using System.Globalization;
using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Skinny-product timings for issue 14: the four products of a Llama-1B decode step (bf16) at 8, 32 and 64 rows, and the
/// gate/up pair as one SwiGLU call, each run over 16 distinct weight matrices in turn (so the L2 cannot serve a repeat: cold
/// weights, as the 16 layers are), through skinny.cu (<see cref="CudaBackendOptions.SkinnyProducts"/>, grids aiming at 2 and
/// at 4 CTAs an SM: <see cref="CudaBackendOptions.SkinnyCtasPerSm"/>) beside cuBLASLt (the shared backend, tuned; for the pair,
/// one product at N = 2F over the adjacent weights, then the SwiGLU kernel). CUDA events around each pass, median of 20 after
/// 3 warm-ups (<see cref="CudaTestBase.MedianMs(CudaBackend, Action, int)"/>); us per call and GB/s of weights. Runs only with TESSERA_CUDA_TIMINGS=1; the table goes to the test output.
/// Fails only if the skinny kernel is more than 3x slower than cuBLASLt everywhere (a broken grid), not when it merely loses.
/// </summary>
[Collection("cuda")]
public sealed class CudaSkinnyProductSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    private const int Layers = 16;

    [Fact]
    public void SkinnyProductsBesideCublasLtAtTheDecodeShapes()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        int[] perSm = [2, 4];
        var skinny = perSm.Select(p => new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { SkinnyProducts = true, SkinnyCtasPerSm = p })).ToArray();
        try
        {
            var lines = new List<string>
            {
                "| product | M | N x K | plan at 2/SM (slices x ks, CTAs a slice) | skinny us, 2/SM | skinny us, 4/SM | cuBLASLt us | best skinny GB/s | cuBLASLt GB/s |",
                "|---|---|---|---|---|---|---|---|---|",
            };
            double bestRatio = double.MaxValue;
            foreach (var (name, n, k, swiglu) in new[] { ("QKV", 3072, 2048, false), ("output", 2048, 2048, false), ("gate/up", 16384, 2048, false),
                         ("down", 2048, 8192, false), ("gate/up SwiGLU", 8192, 2048, true) })
            {
                int rows = swiglu ? 2 * n : n;   // the pair: (2F, K) adjacent, gate rows then up rows
                var backends = skinny.Append(Gpu).ToArray();
                var weights = backends.Select(b =>
                {
                    var w = new Tensor[Layers];
                    for (int i = 0; i < Layers; i++) { w[i] = b.Allocate(new Shape(rows, k), DType.BF16); b.Fill(w[i], 0.001); }
                    return w;
                }).ToArray();
                foreach (int m in new[] { 8, 32, 64 })
                {
                    var us = new double[backends.Length];
                    for (int bi = 0; bi < backends.Length; bi++)
                    {
                        var b = backends[bi];
                        var w = weights[bi];
                        var x = b.Allocate(new Shape(m, k), DType.BF16); b.Fill(x, 0.01);
                        var y = b.Allocate(new Shape(m, n), DType.BF16);
                        Action call = swiglu
                            ? () => { for (int i = 0; i < Layers; i++) b.MatMulSwiGlu(x, w[i].Slice(0, 0, n), w[i].Slice(0, n, n), y); }
                            : () => { for (int i = 0; i < Layers; i++) b.MatMul(x, w[i], y, transposeB: true); };
                        us[bi] = MedianMs(b, call) * 1e3 / Layers;
                        x.Storage.Dispose();
                        y.Storage.Dispose();
                    }
                    double bytes = 2.0 * rows * k, best = Math.Min(us[0], us[1]), cublas = us[2];
                    var plan = SkinnyProductPlan.For(m, rows, k, Gpu.CudaDevice.MultiprocessorCount);
                    bestRatio = Math.Min(bestRatio, best / cublas);
                    lines.Add(string.Create(CultureInfo.InvariantCulture,
                        $"| {name} | {m} | {n} x {k}{(swiglu ? " x 2" : "")} | {plan.Slices} x {plan.SliceColumns}, {plan.CtasPerSlice} | {us[0]:F1} | {us[1]:F1} | {cublas:F1}{(swiglu ? " (+ SwiGLU)" : "")} | {bytes / best / 1e3:F0} | {bytes / cublas / 1e3:F0} |"));
                }
                foreach (var w in weights) foreach (var t in w) t.Storage.Dispose();
            }
            foreach (var line in lines) TestContext.Current.TestOutputHelper?.WriteLine("[skinny] " + line);
            Assert.True(bestRatio < 3, $"the skinny kernel took at least {bestRatio:F1}x cuBLASLt's time at every shape");
        }
        finally
        {
            foreach (var b in skinny) b.Dispose();
        }
    }

}
