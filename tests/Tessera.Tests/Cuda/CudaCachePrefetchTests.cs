using Tessera.Cuda;
using Tessera.Inference;
using Tessera.Models;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The L2 prefetch of the weights read after a decode step's attention (<see cref="CudaBackend.PrefetchToCache"/>,
/// <c>prefetch_l2</c>): a hint, so it must change no result and write nothing, whichever form it takes (bulk or by lines,
/// any budget, tensors that are not contiguous or not aligned, which it leaves alone); and the dense decoder must launch it
/// once a layer in each decode step (the CPU test of the paged engine's hints cannot see the dense decoder's).
/// </summary>
[Collection("cuda")]
public sealed class CudaCachePrefetchTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    /// <summary>
    /// Prefetches over tensors of 16 B to 40 MiB (more than one budget's worth, pieces of 16 KB and a short last one), a
    /// strided view and a tensor 2 bytes off alignment, in both forms and three budgets: no launch fails, and every byte
    /// of every tensor is what it was (compared exactly).
    /// </summary>
    [Theory]
    [InlineData(false, 32)]
    [InlineData(true, 32)]
    [InlineData(false, 1)]
    [InlineData(false, 1024)]
    public void APrefetchWritesNothingAndFailsNowhere(bool byLines, int megabytes)
    {
        using var backend = new CudaBackend(Gpu.CudaDevice.Ordinal,
            CudaBackendOptions.Default with { CachePrefetchByLines = byLines, CachePrefetchMegabytes = megabytes });
        int[] sizes = [8, 8 * 1024 + 8, 5 << 20, 20 << 20];   // BF16 elements: 16 B, 16 KB + 16 B, 10 MiB, 40 MiB
        var tensors = new List<Tensor>();
        var contents = new List<double[]>();
        foreach (int n in sizes)
        {
            var (t, _) = RandomOn(backend, n);
            tensors.Add(t);
        }
        var (matrix, _) = RandomOn(backend, 64 * 130);
        var strided = matrix.Reshape(64, 130).Slice(1, 0, 128);                     // rows 260 B apart: not contiguous
        var (whole, _) = RandomOn(backend, 4097);
        var misaligned = whole.Slice(0, 1, 4096);                                    // 2 bytes past a 16-byte boundary
        Tensor[] all = [.. tensors, strided, misaligned];
        foreach (var t in all) contents.Add(Download(backend, t));
        backend.PrefetchToCache(all);
        backend.PrefetchToCache([misaligned, strided, tensors[3], tensors[0]]);
        backend.PrefetchToCache([]);
        backend.Synchronize();
        for (int i = 0; i < all.Length; i++)
            Assert.Equal(contents[i], Download(backend, all[i]));
    }

    private (Tensor Tensor, double[] Values) RandomOn(CudaBackend backend, int n)
    {
        var values = Enumerable.Range(0, n).Select(_ => Rng.NextDouble() * 2 - 1).ToArray();
        return (Upload(backend, values, DType.BF16, n), values);
    }

    /// <summary>
    /// Greedy BF16 generation (llama-debug, random weights) with the prefetch at its default budget and turned off: the same
    /// tokens, recorded into a graph and eager (a hint cannot change a sum); the op profiler of the eager run with the
    /// prefetch on counts one <c>prefetch_l2</c> a layer for every decode step after the prompt's, and none with it off.
    /// </summary>
    [Fact]
    public void DecodingWithThePrefetchGivesTheTokensWithoutIt()
    {
        var config = ModelPresets.Get("llama-debug");
        int seed = Rng.Next();
        TestContext.Current.SendDiagnosticMessage($"weights seed {seed}");
        int[] prompt = [5, 1, 4, 1, 5, 9, 2, 6];
        int count = 12;
        List<int> Run(CudaBackendOptions options, bool record, out long prefetches)
        {
            using var backend = new CudaBackend(Gpu.CudaDevice.Ordinal, options);
            var model = new Transformer(config, backend, DType.BF16);
            Tessera.Tests.Nn.LayerCheck.Randomize(backend, model.Parameters, new Random(seed));
            var tokens = new TextGenerator(model).Generate(prompt, new GenerationOptions { MaxNewTokens = count, CaptureGraph = record }).ToList();
            prefetches = backend.Profiler?.Totals().Where(r => r.Name == "prefetch_l2").Sum(r => r.Calls) ?? -1;
            return tokens;
        }
        Assert.True(CudaBackendOptions.Default.CachePrefetchMegabytes > 0, "the prefetch is off by default");
        var on = Run(CudaBackendOptions.Default, record: true, out _);
        var off = Run(CudaBackendOptions.Default with { CachePrefetchMegabytes = 0 }, record: true, out _);
        var profiledOn = Run(CudaBackendOptions.Default with { ProfileOps = true }, record: false, out long launchedOn);
        var profiledOff = Run(CudaBackendOptions.Default with { ProfileOps = true, CachePrefetchMegabytes = 0 }, record: false, out long launchedOff);
        Assert.Equal(off, on);
        Assert.Equal(off, profiledOn);
        Assert.Equal(off, profiledOff);
        Assert.Equal((long)(count - 1) * config.Layers, launchedOn);
        Assert.Equal(0, launchedOff);
    }
}
