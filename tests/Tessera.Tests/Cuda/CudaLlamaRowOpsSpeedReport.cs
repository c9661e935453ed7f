using System.Globalization;
using Tessera.Cuda;
using Tessera.Cuda.Runtime;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Timings of the llama-1b step's row ops (everything of a block that is not a product or attention) at the shapes of
/// B = 8, T = 2048 (N = 16,384 rows, C = 2,048, F = 8,192, 32 + 8 + 8 heads of 64, a 128,256-entry vocabulary in chunks of
/// 2,048 rows), beside a device copy of 1 GiB as the bandwidth they can reach, for docs/benchmarks.md (issue 18). Each op's
/// bytes are what it must move at least; its floor is those bytes at the copy's rate. The cross-entropy runs with its row
/// staged in shared memory (as much as fits), with 96 KiB staged (two blocks per SM) and without staging, each on its own
/// backend with one CTA a row; then without staging at 128, 256, 512 and 1024 threads a row, and with the row shared by a
/// cluster of 2, 4 or 8 CTAs whose threads hold 4 or 8 vectors each, at llama-1b's width and at GPT-2's (5,048 rows of 50,257
/// logits in rows padded to 50,304). Runs only when TESSERA_CUDA_TIMINGS=1; CUDA events around 20 repetitions
/// after 3 warm-ups, median. Not a test of speed: it fails only when an op is 10x slower than its floor (a broken launch, not a slow one).
/// </summary>
[Collection("cuda")]
public sealed class CudaLlamaRowOpsSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Fact]
    public void LlamaRowOpsAgainstTheCopyBandwidth()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        const int b = 8, t = 2048, n = b * t, c = 2048, f = 8192, h = 32, k = 8, d = 64, vocab = 128_256, chunk = 2048;
        var bf = DType.BF16;
        var rows = new List<(string Op, double Bytes, double Ms)>();

        var copyFrom = Filled(Gpu, new Shape(512, 1 << 20), 1);                 // 1 GiB of BF16
        var copyTo = Gpu.Allocate(copyFrom.Shape, bf);
        double copyMs = MedianMs(Gpu, () => Gpu.Copy(copyFrom, copyTo));
        double copyRate = 2.0 * copyFrom.NumElements * 2 / copyMs;              // bytes per ms
        copyFrom.Storage.Dispose(); copyTo.Storage.Dispose();

        var x = Filled(Gpu, new Shape(n, c), 0.5); var w = Filled(Gpu, new Shape(c), 1.0);
        var y = Gpu.Allocate(new Shape(n, c), bf); var rstd = Gpu.Allocate(new Shape(n), DType.F32);
        rows.Add(("rmsnorm forward", 2.0 * n * c * 2, MedianMs(Gpu, () => Gpu.RmsNormForward(x, w, y, rstd, 1e-5))));
        var dx = Filled(Gpu, new Shape(n, c), 0); var dw = Filled(Gpu, new Shape(c), 0);
        rows.Add(("rmsnorm backward (dx +=, dW +=)", 4.0 * n * c * 2, MedianMs(Gpu, () => Gpu.RmsNormBackward(y, x, w, rstd, dx, dw))));

        var gu = Filled(Gpu, new Shape(n, 2 * f), 0.25); var a = Gpu.Allocate(new Shape(n, f), bf);
        rows.Add(("swiglu forward (halves of [g|u])", 3.0 * n * f * 2, MedianMs(Gpu, () => Gpu.SwiGluForward(gu.Slice(1, 0, f), gu.Slice(1, f, f), a))));
        var dgu = Gpu.Allocate(gu.Shape, bf);
        rows.Add(("swiglu backward (into [dg|du])", 5.0 * n * f * 2,
            MedianMs(Gpu, () => Gpu.SwiGluBackward(gu.Slice(1, 0, f), gu.Slice(1, f, f), a, dgu.Slice(1, 0, f), dgu.Slice(1, f, f)))));
        foreach (var z in new[] { gu, a, dgu }) z.Storage.Dispose();

        var qkv = Filled(Gpu, new Shape(b, t, h + 2 * k, d), 0.5);
        var rope = new RopeFrequencies(500000);
        rows.Add(("rope q and k (table)", 2.0 * n * (h + k) * d * 2, MedianMs(Gpu, () => Gpu.Rope(qkv.Slice(2, 0, h + k), 0, rope))));
        qkv.Storage.Dispose();

        foreach (int? staged in new int?[] { null, 96 * 1024, 0 })
        {
            using var backend = new CudaBackend(Gpu.CudaDevice.Ordinal, new CudaBackendOptions { CrossEntropyStagedBytes = staged, CrossEntropyClusterCtas = 0 });
            var logits = Filled(backend, new Shape(chunk, vocab), 0.5);
            var targets = backend.Allocate(new Shape(chunk), DType.I32);
            backend.CopyFromHost<int>(Enumerable.Range(0, chunk).Select(i => i * 7919 % vocab).ToArray(), targets);
            var losses = backend.Allocate(new Shape(chunk), DType.F32);
            string what = staged switch { null => "as much staged as fits", 0 => "no staging", _ => $"{staged / 1024} KiB staged" };
            rows.Add(($"cross-entropy in place, {what}", 2.0 * chunk * vocab * 2,
                MedianMs(backend, () => backend.CrossEntropy(logits, targets, losses, logits, 1.0 / chunk))));
            logits.Storage.Dispose();
        }

        // Threads per row of the one-CTA kernel (no staging), then the cluster kernel at 2, 4 and 8 CTAs a row of 4 or 8 vectors a thread:
        // the llama-1b chunk, and GPT-2's (5,048 rows of the 50,257 real logits in rows padded to 50,304, as the fused head
        // passes them).
        var variants = new[] { 128, 256, 512, 1024 }.Select(n => (Threads: n, Ctas: 0, Vectors: 4))
            .Concat(new[] { (0, 2, 4), (0, 4, 4), (0, 8, 4), (0, 4, 8), (0, 8, 8) });
        foreach (var (label, chunkRows, width, real) in new[] { ("llama-1b", chunk, vocab, vocab), ("gpt2-124m", 5048, 50_304, 50_257) })
            foreach (var (threads, ctas, vectors) in variants)
            {
                var options = new CudaBackendOptions
                {
                    CrossEntropyThreadsPerRow = threads > 0 ? threads : null, CrossEntropyClusterCtas = ctas, CrossEntropyClusterVectors = vectors,
                    CrossEntropyClusterMinRowBytes = 0,
                };
                using var backend = new CudaBackend(Gpu.CudaDevice.Ordinal, options);
                var padded = Filled(backend, new Shape(chunkRows, width), 0.5);
                var logits = padded.Slice(1, 0, real);
                var targets = backend.Allocate(new Shape(chunkRows), DType.I32);
                backend.CopyFromHost<int>(Enumerable.Range(0, chunkRows).Select(i => i * 7919 % real).ToArray(), targets);
                var losses = backend.Allocate(new Shape(chunkRows), DType.F32);
                var defaults = CudaBackendOptions.Default;
                string kernel = ctas > 0 ? $"clusters of {ctas} CTAs, {vectors} vectors a thread{(ctas == defaults.CrossEntropyClusterCtas && vectors == defaults.CrossEntropyClusterVectors ? ", the default shape" : "")}"
                    : $"one CTA of {threads} threads{(CudaBackend.CrossEntropyThreads(real) == threads ? " (the one-CTA default)" : "")}";
                rows.Add(($"cross-entropy in place, {label} ({chunkRows} x {real}), {kernel}", 2.0 * chunkRows * real * 2,
                    MedianMs(backend, () => backend.CrossEntropy(logits, targets, losses, logits, 1.0 / chunkRows))));
                padded.Storage.Dispose();
            }

        var table = new System.Text.StringBuilder();
        table.AppendLine(string.Create(CultureInfo.InvariantCulture,
            $"llama-1b row ops, B {b} x T {t} ({Gpu.CudaDevice.Name}); device copy of 1 GiB: {copyRate / 1e9:F2} TB/s"));
        table.AppendLine("| op | us per call | bytes at least (MB) | floor at the copy's rate (us) | of the floor |");
        table.AppendLine("|---|---|---|---|---|");
        foreach (var r in rows)
        {
            double floor = r.Bytes / copyRate;
            table.AppendLine(string.Create(CultureInfo.InvariantCulture,
                $"| {r.Op} | {r.Ms * 1000:F1} | {r.Bytes / 1e6:F0} | {floor * 1000:F1} | {floor / r.Ms * 100:F0} % |"));
        }
        Console.WriteLine(table.ToString());
        TestContext.Current.SendDiagnosticMessage(table.ToString());
        foreach (var r in rows) Assert.True(r.Bytes / copyRate / r.Ms > 0.1, $"{r.Op}: under 10 % of the copy's rate\n{table}");
    }

    private static Tensor Filled(CudaBackend backend, Shape shape, double value)
    {
        var tensor = backend.Allocate(shape, DType.BF16);
        backend.Fill(tensor, value);
        return tensor;
    }

}
