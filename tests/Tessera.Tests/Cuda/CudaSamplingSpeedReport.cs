using System.Globalization;
using Tessera.Cuda;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// Timings of the device draw (<see cref="CudaBackend.SampleRows"/>) at a decode batch's shapes: 1, 8, 64, 128 and 256 rows of
/// Llama 3's 128,256 BF16 logits, temperature 1 alone, with top-p 0.95 and with top-k 50, over near-flat rows (uniform in
/// [-0.1, 0.1), a randomly initialized model's logits, which tie by the hundred in BF16) and peaked rows (uniform in [-4, 4)
/// with one token in a thousand 15 above), for the one-CTA-a-row kernel (<c>sample_rows</c>,
/// <see cref="CudaBackendOptions.SamplingClusterCtas"/> 0), the cluster kernel at the shape the backend chooses
/// (<c>sample_rows_cluster</c>), the backend's automatic choice when the call says it has temperature alone (one CTA a row
/// from <see cref="CudaBackend.SamplingOneCtaRows"/> rows: the 128-row line checks that threshold) and, at 64 rows, clusters
/// of 2, 4 and 8; beside a device copy of the same logits as the floor.
/// Prints us per call and the rate at which each reads the logits once (GB/s). Runs only when TESSERA_CUDA_TIMINGS=1; CUDA
/// events around 20 repetitions after 3 warm-ups, median. Not a test of speed: it asserts only that every kernel draws the
/// same tokens as the one-CTA kernel, and the definition's (<see cref="TokenSampling.Choose"/>) on the first rows, at most
/// one row in the report's checked rows aside (a cumulative probability within about 1e-7 of top-p).
/// </summary>
[Collection("cuda")]
public sealed class CudaSamplingSpeedReport(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Fact]
    public void SamplingKernelsAgainstACopyOfTheLogits()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        const int vocab = 128_256, most = 256, checkedRows = 8;
        int ordinal = Gpu.CudaDevice.Ordinal;
        using var one = new CudaBackend(ordinal, new CudaBackendOptions { SamplingClusterCtas = 0 });
        // Promise: the call passes temperatureOnly where the filter is temperature alone (the automatic choice's input).
        var kernels = new List<(string Name, CudaBackend Backend, int[] Rows, bool Promise)>
        {
            ("one CTA a row", one, [1, 8, 64, 128, 256], false),
        };
        var cluster = new CudaBackend(ordinal, new CudaBackendOptions());
        kernels.Add(("cluster, chosen shape", cluster, [1, 8, 64, 128, 256], false));
        kernels.Add(("automatic, temperature alone said", cluster, [64, 128, 256], true));
        foreach (int ctas in new[] { 2, 4, 8 })
            kernels.Add(($"cluster of {ctas}", new CudaBackend(ordinal, new CudaBackendOptions { SamplingClusterCtas = ctas }), [64], false));
        var table = new System.Text.StringBuilder();
        table.AppendLine(string.Create(CultureInfo.InvariantCulture, $"device draw of rows of {vocab} BF16 logits ({Gpu.CudaDevice.Name})"));
        table.AppendLine("| rows | logits | filter | kernel | us per call | GB/s (the logits once) | copy of the logits (us) |");
        table.AppendLine("|---|---|---|---|---|---|---|");
        var failures = new List<string>();
        try
        {
            foreach (var (distribution, flat) in new[] { ("near-flat", true), ("peaked", false) })
            {
                var rng = new Random(1234);
                var host = new float[most * vocab];
                for (int i = 0; i < host.Length; i++)
                {
                    float x = flat ? (float)(rng.NextDouble() * 0.2 - 0.1) : (float)(rng.NextDouble() * 8 - 4);
                    if (!flat && rng.Next(1000) == 0) x += 15;
                    host[i] = BFloat16.FromSingle(x).ToSingle();
                }
                var bf = host.Select(BFloat16.FromSingle).ToArray();
                foreach (var (filter, topK, topP) in new[] { ("temperature 1", 0, 1f), ("top-p 0.95", 0, 0.95f), ("top-k 50", 50, 1f) })
                    foreach (int rows in new[] { 1, 8, 64, 128, 256 })
                    {
                        var parameters = new int[rows * TokenSampling.ParameterColumns];
                        var positions = new int[rows];
                        for (int r = 0; r < rows; r++)
                        {
                            TokenSampling.WriteParameters(parameters.AsSpan(r * TokenSampling.ParameterColumns), 1f, topK, topP, (ulong)(77 + 13 * r));
                            positions[r] = 40 + r;
                        }
                        int[]? reference = null;
                        double copyUs = 0;
                        bool temperatureOnly = topK == 0 && topP >= 1;
                        foreach (var (name, backend, shapes, promise) in kernels)
                        {
                            if (!shapes.Contains(rows) || (promise && !temperatureOnly)) continue;
                            var logits = backend.Allocate(new Shape(rows, vocab), DType.BF16);
                            backend.CopyFromHost<BFloat16>(bf.AsSpan(0, rows * vocab), logits);
                            var p = backend.Allocate(new Shape(rows, TokenSampling.ParameterColumns), DType.I32);
                            backend.CopyFromHost<int>(parameters, p);
                            var q = backend.Allocate(new Shape(rows), DType.I32);
                            backend.CopyFromHost<int>(positions, q);
                            var ids = backend.Allocate(new Shape(rows), DType.I32);
                            if (reference is null)
                            {
                                var copy = backend.Allocate(logits.Shape, DType.BF16);
                                copyUs = 1000 * MedianMs(backend, () => backend.Copy(logits, copy));
                                copy.Storage.Dispose();
                            }
                            double us = 1000 * MedianMs(backend, () => backend.SampleRows(logits, p, q, ids, temperatureOnly: promise));
                            var drawn = backend.ToArray<int>(ids);
                            double bytes = 2.0 * rows * vocab;
                            table.AppendLine(string.Create(CultureInfo.InvariantCulture,
                                $"| {rows} | {distribution} | {filter} | {name} | {us:F1} | {bytes / (us * 1e3):F0} | {copyUs:F1} |"));
                            if (reference is null)
                            {
                                reference = drawn;
                                int differ = 0;
                                for (int r = 0; r < Math.Min(rows, checkedRows); r++)
                                    if (TokenSampling.Choose(host.AsSpan(r * vocab, vocab), 1f, topK, topP, (ulong)(77 + 13 * r), positions[r]) != drawn[r]) differ++;
                                if (differ > 1) failures.Add($"{rows} {distribution} rows, {filter}: {differ} of the first {Math.Min(rows, checkedRows)} rows drew another token than the definition");
                            }
                            else if (!drawn.SequenceEqual(reference))
                                failures.Add($"{rows} {distribution} rows, {filter}: {name} drew other tokens than the one-CTA kernel ({drawn.Zip(reference).Count(z => z.First != z.Second)} rows)");
                            foreach (var t in new[] { logits, p, q, ids }) t.Storage.Dispose();
                        }
                    }
            }
        }
        finally
        {
            foreach (var backend in kernels.Skip(1).Select(k => k.Backend).Distinct()) backend.Dispose();
        }
        Console.WriteLine(table.ToString());
        TestContext.Current.SendDiagnosticMessage(table.ToString());
        Assert.True(failures.Count == 0, string.Join('\n', failures) + "\n" + table);
    }
}
