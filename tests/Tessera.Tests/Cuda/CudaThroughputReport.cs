using System.Globalization;
using Tessera.Cuda.Runtime;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Timings of the main ops at GPT-2 124M shapes, for docs/cuda-notes.md. Runs only when
/// TESSERA_CUDA_TIMINGS=1 (scripts/gpu-check.sh sets it); the table goes to the test output and to
/// $TESSERA_CUDA_TIMINGS_OUT when set. CUDA events around 20 repetitions after 3 warm-ups; median.
/// It fails when an op is far below what this backend already reached (a regression guard, loose on purpose).
/// </summary>
[Collection("cuda")]
public sealed class CudaThroughputReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    private Tensor Rand(DType dtype, params int[] dims) => Random(dtype, 1, dims).Tensor;

    [Fact]
    public void GptShapedOpsReachTheirThroughput()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        var rows = new List<(string Op, string Shape, double Ms, string Rate)>();
        void Gemm(DType dtype, int m, int n, int k, bool tb)
        {
            var a = Rand(dtype, m, k); var b = tb ? Rand(dtype, n, k) : Rand(dtype, k, n); var c = Gpu.Allocate(new Shape(m, n), dtype);
            double ms = MedianMs(() => Gpu.MatMul(a, b, c, transposeB: tb));
            rows.Add(($"matmul {dtype}", $"{m}x{n}x{k}{(tb ? " bT" : "")}", ms, $"{2.0 * m * n * k / ms / 1e9:F0} TFLOP/s"));
            foreach (var t in new[] { a, b, c }) t.Storage.Dispose();
        }
        Gemm(DType.BF16, 8192, 8192, 8192, false);
        Gemm(DType.BF16, 8192, 2304, 768, true);   // GPT-2 c_attn, B*T = 8192
        Gemm(DType.BF16, 8192, 768, 3072, true);   // GPT-2 mlp c_proj
        Gemm(DType.F32, 4096, 4096, 4096, false);  // full fp32, tf32 off

        int bsz = 8, t = 1024, h = 12, d = 64;
        var qkv = Rand(DType.BF16, bsz, t, 3 * h, d);
        var q = qkv.Slice(2, 0, h); var k = qkv.Slice(2, h, h); var v = qkv.Slice(2, 2 * h, h);
        var o = Gpu.Allocate(new Shape(bsz, t, h, d), DType.BF16);
        var lse = Gpu.Allocate(new Shape(bsz, h, t), DType.F32);
        double causalFlops = 4.0 * bsz * h * t * t * d / 2;
        double fwd = MedianMs(() => Gpu.AttentionForward(q, k, v, o, lse, 0.125), 10);
        rows.Add(("attention fwd BF16", $"B{bsz} T{t} H{h} D{d}", fwd, $"{causalFlops / fwd / 1e9:F1} TFLOP/s"));
        var dOut = Rand(DType.BF16, bsz, t, h, d);
        var dq = Gpu.Allocate(q.Shape, DType.BF16); var dk = Gpu.Allocate(q.Shape, DType.BF16); var dv = Gpu.Allocate(q.Shape, DType.BF16);
        double bwd = MedianMs(() => Gpu.AttentionBackward(q, k, v, o, dOut, lse, dq, dk, dv, 0.125), 10);
        rows.Add(("attention bwd BF16", $"B{bsz} T{t} H{h} D{d}", bwd, $"{2.5 * causalFlops / bwd / 1e9:F1} TFLOP/s"));

        int n = bsz * t, c = 768;
        var x = Rand(DType.BF16, n, c); var w = Rand(DType.BF16, c); var bias = Rand(DType.BF16, c);
        var y = Gpu.Allocate(new Shape(n, c), DType.BF16);
        var mean = Gpu.Allocate(new Shape(n), DType.F32); var rstd = Gpu.Allocate(new Shape(n), DType.F32);
        double ln = MedianMs(() => Gpu.LayerNormForward(x, w, bias, y, mean, rstd, 1e-5));
        rows.Add(("layernorm fwd BF16", $"{n}x{c}", ln, $"{2.0 * n * c * 2 / ln / 1e6:F0} GB/s"));
        var dx = Rand(DType.BF16, n, c); var dw = Rand(DType.F32, c); var db = Rand(DType.F32, c);
        double lnb = MedianMs(() => Gpu.LayerNormBackward(y, x, w, mean, rstd, dx, dw, db));
        rows.Add(("layernorm bwd BF16", $"{n}x{c}", lnb, $"{4.0 * n * c * 2 / lnb / 1e6:F0} GB/s"));
        var g = Rand(DType.BF16, n, 4 * c); var gy = Gpu.Allocate(g.Shape, DType.BF16);
        double gelu = MedianMs(() => Gpu.GeluForward(g, gy));
        rows.Add(("gelu fwd BF16", $"{n}x{4 * c}", gelu, $"{2.0 * n * 4 * c * 2 / gelu / 1e6:F0} GB/s"));

        int vocab = 50304, ceRows = 4096;
        var logits = Rand(DType.BF16, ceRows, vocab);
        var targets = UploadInts(Enumerable.Range(0, ceRows).Select(i => i * 7 % vocab).ToArray(), ceRows);
        var losses = Gpu.Allocate(new Shape(ceRows), DType.F32);
        double ce = MedianMs(() => Gpu.CrossEntropy(logits, targets, losses, logits, 1.0 / ceRows));
        rows.Add(("cross-entropy fwd+bwd BF16", $"{ceRows}x{vocab}", ce, $"{2.0 * ceRows * vocab * 2 / ce / 1e6:F0} GB/s"));

        int pcount = 124_000_000;
        var p = Rand(DType.F32, pcount); var grad = Rand(DType.F32, pcount); var m1 = Gpu.Allocate(new Shape(pcount), DType.F32); var m2 = Gpu.Allocate(new Shape(pcount), DType.F32);
        Gpu.Fill(m1, 0); Gpu.Fill(m2, 0);
        var low = Gpu.Allocate(new Shape(pcount), DType.BF16);
        var ss = Gpu.Allocate(new Shape(1), DType.F32); Gpu.Fill(ss, 4.0);
        var step = new AdamWStep(1e-4, 0.9, 0.95, 1e-8, 0.1, 1, 1.0);
        double adam = MedianMs(() => Gpu.AdamW(p, grad, m1, m2, step, ss, low), 10);
        rows.Add(("adamw f32 (+bf16 copy)", $"{pcount / 1e6:F0}M", adam, $"{pcount * (4.0 * 7 + 2) / adam / 1e6:F0} GB/s"));
        double norm = MedianMs(() => Gpu.SumOfSquares(grad, ss), 10);
        rows.Add(("sum of squares f32", $"{pcount / 1e6:F0}M", norm, $"{pcount * 4.0 / norm / 1e6:F0} GB/s"));
        var copy = Gpu.Allocate(new Shape(pcount), DType.F32);
        double cp = MedianMs(() => Gpu.Copy(grad, copy), 10);
        rows.Add(("device copy f32", $"{pcount / 1e6:F0}M", cp, $"{pcount * 8.0 / cp / 1e6:F0} GB/s"));
        double cast = MedianMs(() => Gpu.Copy(grad, low), 10);
        rows.Add(("cast f32->bf16", $"{pcount / 1e6:F0}M", cast, $"{pcount * 6.0 / cast / 1e6:F0} GB/s"));

        var table = new System.Text.StringBuilder();
        table.AppendLine($"| op | shape | median ms | rate |  ({Gpu.CudaDevice.Name})");
        table.AppendLine("|---|---|---|---|");
        foreach (var r in rows) table.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| {r.Op} | {r.Shape} | {r.Ms:F3} | {r.Rate} |"));
        var stats = Gpu.Allocator.Statistics;
        table.AppendLine($"allocator: {stats.BytesInUse >> 20} MiB in use, peak {stats.PeakBytesInUse >> 20} MiB, {stats.TotalAllocations} allocations");
        TestContext.Current.SendDiagnosticMessage(table.ToString());
        var outPath = Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS_OUT");
        if (!string.IsNullOrEmpty(outPath)) File.WriteAllText(outPath, table.ToString());
        Console.WriteLine(table.ToString());
        // Loose floors: a 10x regression of the large bf16 product or the device copy fails.
        Assert.True(2.0 * 8192 * 8192 * 8192 / rows[0].Ms / 1e9 > 50, table.ToString());
        Assert.True(pcount * 8.0 / cp / 1e6 > 300, table.ToString());
    }
}
