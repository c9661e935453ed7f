using System.Globalization;
using Tessera.Cuda.Runtime;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Attention timings for docs/cuda-notes.md: GPT-2 124M training shapes (forward, backward) and a
/// Llama-1B-shaped decode step (2048 and 8192 cached keys), in bf16. Runs only when TESSERA_CUDA_TIMINGS=1; the table goes to
/// the test output and to attention-timings.md beside $TESSERA_CUDA_TIMINGS_OUT. CUDA events,
/// median of 20 after 3 warm-ups. Fails only far below what the kernels reached (a loose guard).
/// </summary>
[Collection("cuda")]
public sealed class CudaAttentionSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Fact]
    public void FlashAttentionReachesItsThroughput()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        const double peak = 790e12; // dense bf16 on the tensor cores, H100/H200
        var lines = new List<string> { "| op | shape | median ms | TFLOP/s | floor ms | x floor |", "|---|---|---|---|---|---|" };
        double worstFwd = 0, worstBwd = 0;
        foreach (int bsz in new[] { 8, 64 })
        {
            int t = 1024, h = 12, d = 64;
            // q, k, v as slices of the fused c_attn output, as GPT-2 calls it.
            var qkv = Gpu.Allocate(new Shape(bsz, t, 3 * h, d), DType.BF16);
            Gpu.Fill(qkv, 0.02); // the kernels' time does not depend on the values
            var q = qkv.Slice(2, 0, h); var k = qkv.Slice(2, h, h); var v = qkv.Slice(2, 2 * h, h);
            var o = Gpu.Allocate(new Shape(bsz, t, h, d), DType.BF16);
            var lse = Gpu.Allocate(new Shape(bsz, h, t), DType.F32);
            var dOut = Gpu.Allocate(o.Shape, DType.BF16);
            Gpu.Fill(dOut, 0.01);
            var grad = Gpu.Allocate(qkv.Shape, DType.BF16);
            var dq = grad.Slice(2, 0, h); var dk = grad.Slice(2, h, h); var dv = grad.Slice(2, 2 * h, h);
            double flops = 4.0 * bsz * h * t * t * d / 2;
            double fwd = MedianMs(() => Gpu.AttentionForward(q, k, v, o, lse, 0.125));
            double bwd = MedianMs(() => Gpu.AttentionBackward(q, k, v, o, dOut, lse, dq, dk, dv, 0.125));
            string shape = $"B{bsz} T{t} H{h} D{d}";
            double ff = flops / peak * 1e3, fb = 2.5 * flops / peak * 1e3;
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"| attention fwd BF16 | {shape} | {fwd:F3} | {flops / fwd / 1e9:F0} | {ff:F3} | {fwd / ff:F1} |"));
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"| attention bwd BF16 | {shape} | {bwd:F3} | {2.5 * flops / bwd / 1e9:F0} | {fb:F3} | {bwd / fb:F1} |"));
            worstFwd = Math.Max(worstFwd, fwd / ff); worstBwd = Math.Max(worstBwd, bwd / fb);
            foreach (var x in new[] { qkv, o, lse, dOut, grad }) x.Storage.Dispose();
        }
        foreach (int s in new[] { 2048, 8192 })
        {
            // Llama 3.2 1B decode step: one query, 32 query heads over 8 kv heads, D 64, a 2048- and an 8192-key cache.
            int h = 32, kh = 8, d = 64;
            var q = Gpu.Allocate(new Shape(1, 1, h, d), DType.BF16); Gpu.Fill(q, 0.1);
            var cache = Gpu.Allocate(new Shape(1, s, 2 * kh, d), DType.BF16); Gpu.Fill(cache, 0.05);
            var k = cache.Slice(2, 0, kh); var v = cache.Slice(2, kh, kh);
            var o = Gpu.Allocate(q.Shape, DType.BF16);
            double ms = MedianMs(() => Gpu.AttentionForward(q, k, v, o, null, 0.125), 50);
            double bytes = 2.0 * s * kh * d * 2;
            lines.Add(string.Create(CultureInfo.InvariantCulture, $"| attention decode BF16 | B1 T1 S{s} H{h}/{kh} D{d} | {ms:F4} | {bytes / ms / 1e6:F0} GB/s | {bytes / 3.35e12 * 1e3:F4} | {ms / (bytes / 3.35e12 * 1e3):F1} |"));
            foreach (var x in new[] { q, cache, o }) x.Storage.Dispose();
        }
        var table = string.Join("\n", lines) + "\n";
        TestContext.Current.TestOutputHelper?.WriteLine(table);
        var timings = Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS_OUT");
        if (!string.IsNullOrEmpty(timings))
            File.WriteAllText(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(timings))!, "attention-timings.md"), table);
        // Loose guard: the simple kernel was ~200x off the floor; these should stay within 20x.
        Assert.True(worstFwd < 20 && worstBwd < 20, $"attention is far from its floor: forward {worstFwd:F1}x, backward {worstBwd:F1}x\n{table}");
    }
}
