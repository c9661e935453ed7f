using System.Globalization;
using Tessera.Cuda;
using Tessera.Tensors;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The decode-size products' wider algorithm search (<see cref="CudaBackendOptions.MatMulSearch"/>): every candidate the timed
/// choice tries, split over K or not, computes the product (with a bias, with a residual addend) as the f64 reference does,
/// within the BF16 tolerance (outputs rounded to 8 significant bits; the split parts are reduced in F32 before that rounding).
/// </summary>
[Collection("cuda")]
public sealed class CudaMatMulSearchTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    [Theory]
    [InlineData(MatMulCandidateSearch.SplitK, 8, "plain")]
    [InlineData(MatMulCandidateSearch.SplitK, 64, "plain")]
    [InlineData(MatMulCandidateSearch.SplitK, 64, "bias")]
    [InlineData(MatMulCandidateSearch.SplitK, 64, "addend")]
    [InlineData(MatMulCandidateSearch.AllAlgorithms, 64, "plain")]
    public void EveryTimedCandidateComputesTheDecodeProduct(MatMulCandidateSearch search, int m, string form)
    {
        const int n = 2048, k = 2048;
        const DType bf = DType.BF16;
        var rng = TestRandom.Create();
        double[] Values(int count) => Stored(Enumerable.Range(0, count).Select(_ => rng.NextDouble() * 2 - 1).ToArray(), bf);
        using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { TuneMatMulAlgorithms = true, MatMulSearch = search });
        double[] av = Values(m * k), bv = Values(n * k);
        double[]? biasv = form == "bias" ? Values(n) : null, addv = form == "addend" ? Values(m * n) : null;
        var a = Upload(gpu, av, bf, m, k);
        var b = Upload(gpu, bv, bf, n, k);
        var bias = biasv is null ? null : Upload(gpu, biasv, bf, n);
        var addend = addv is null ? null : Upload(gpu, addv, bf, m, n);
        var expected = ReferenceMatMul.Compute(av, bv, addv, 1, m, n, k, false, true, 1.0, addv is null ? 0.0 : 1.0, biasv);
        var c = gpu.Allocate(new Shape(m, n), bf);
        gpu.MatMul(a, b, c, transposeB: true, bias: bias, addend: addend);      // plans, searches and times
        int count = gpu.LastMatMulCandidateCount;
        foreach (var line in gpu.MatMulTuningLog) Console.WriteLine($"[matmul search] {line}");
        // The heuristic gives at most 8 candidates: more means the search added its own (split-K is supported on every GPU measured).
        Assert.True(count > 8, $"the {search} search added no candidate to the {m}-row product's heuristic ones ({count} timed)");
        for (int i = 0; i < count; i++)
        {
            gpu.MatMulCandidateOverride = i;
            gpu.Fill(c, double.NaN);
            gpu.MatMul(a, b, c, transposeB: true, bias: bias, addend: addend);
            Assert.Equal(gpu.LastMatMulCandidate(i), gpu.LastMatMulRun);     // the product ran this candidate, not the chosen one
            AssertClose(expected, Download(gpu, c), Tolerance(bf), $"{form} product of {m} rows, candidate {i} of {count} ({gpu.LastMatMulCandidate(i)})");
        }
        gpu.MatMulCandidateOverride = null;
        Console.WriteLine($"[matmul search] {search}, {form}, M={m}: all {count} candidates match the reference");
    }

    /// <summary>
    /// The timed choice's time for the decode products of llama-1b and llama-8b at 8 to 256 rows under each search, from a
    /// cold L2 (the tuning log's own measurement), with the weight bytes over that time, for docs/benchmarks.md (issue 14).
    /// Runs only when TESSERA_CUDA_TIMINGS=1. Not a test of speed: it fails only when a search's choice is slower than the
    /// heuristic's (the timed choice keeps the heuristic's first answer unless another is faster).
    /// </summary>
    [Fact]
    public void DecodeProductsReportTheirTimedChoice()
    {
        if (Environment.GetEnvironmentVariable("TESSERA_CUDA_TIMINGS") != "1") Assert.Skip("timings run only with TESSERA_CUDA_TIMINGS=1");
        var shapes = new (string Name, int N, int K)[]
        {
            ("llama-1b qkv", 3072, 2048), ("llama-1b o", 2048, 2048), ("llama-1b gate|up", 16384, 2048), ("llama-1b down", 2048, 8192),
            ("llama-8b qkv", 6144, 4096), ("llama-8b o", 4096, 4096), ("llama-8b gate|up", 28672, 4096), ("llama-8b down", 4096, 14336),
        };
        int[] rows = [8, 16, 32, 64, 128, 256];
        var searches = Enum.GetValues<MatMulCandidateSearch>();
        var times = new Dictionary<(string, int, MatMulCandidateSearch), (double Us, string Line)>();
        foreach (var search in searches)
        {
            using var gpu = new CudaBackend(Gpu.CudaDevice.Ordinal, CudaBackendOptions.Default with { TuneMatMulAlgorithms = true, MatMulSearch = search });
            foreach (var (name, n, k) in shapes)
            {
                var w = gpu.Allocate(new Shape(n, k), DType.BF16);
                gpu.Fill(w, 0.01);
                foreach (int m in rows)
                {
                    var x = gpu.Allocate(new Shape(m, k), DType.BF16);
                    gpu.Fill(x, 0.5);
                    var y = gpu.Allocate(new Shape(m, n), DType.BF16);
                    gpu.MatMul(x, w, y, transposeB: true);
                    string line = gpu.MatMulTuningLog.Last(l => l.Contains($"M={m} N={n} K={k} ", StringComparison.Ordinal));
                    double us = double.Parse(line[(line.LastIndexOf("-> ", StringComparison.Ordinal) + 3)..].Split(' ')[0], CultureInfo.InvariantCulture);
                    times[(name, m, search)] = (us, line);
                    x.Storage.Dispose(); y.Storage.Dispose();
                }
                w.Storage.Dispose();
            }
        }
        Console.WriteLine("| product | rows | " + string.Join(" | ", searches.Select(s => $"{s} us (TB/s)")) + " |");
        Console.WriteLine("|---|---:|" + string.Concat(searches.Select(_ => "---:|")));
        foreach (var (name, n, k) in shapes)
            foreach (int m in rows)
                Console.WriteLine($"| {name} {n}x{k} | {m} | " + string.Join(" | ", searches.Select(s =>
                    $"{times[(name, m, s)].Us:F1} ({2.0 * n * k / times[(name, m, s)].Us / 1e6:F2})")) + " |");
        foreach (var entry in times) Console.WriteLine($"[matmul search] {entry.Key.Item3}: {entry.Value.Line}");
        foreach (var (name, _, _) in shapes)
            foreach (int m in rows)
                foreach (var search in searches)
                    Assert.True(times[(name, m, search)].Us <= times[(name, m, MatMulCandidateSearch.Heuristic)].Us * 1.15,
                        $"{name} at {m} rows: {search}'s choice took {times[(name, m, search)].Us} us against the heuristic's {times[(name, m, MatMulCandidateSearch.Heuristic)].Us}");
    }
}
