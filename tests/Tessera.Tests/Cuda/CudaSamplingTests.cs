using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// <see cref="IBackend.SampleRows"/> and <see cref="IBackend.TokenLogprobs"/> on the GPU (sampling.cu) against <see cref="TokenSampling.Choose"/>, the definition the
/// CPU backend follows, on the same rounded logits: 96 rows of a 128,256-entry vocabulary (Llama 3's), row-strided, each with
/// its own temperature, top-k, top-p, seed and position, in bf16 (whose logits tie by the hundred at the cuts) and f32. The
/// two may keep different sets only where a cumulative probability lies within about 1e-7 of top-p, or differ by a logf's
/// last bit in a Gumbel score; so at most one row in 96 may differ, and such a row's two tokens must both lie among the
/// row's candidates that the definition could keep (its top-k). The inputs come from the fixture's logged seed. The draw runs
/// on the backend's default kernel, on the one-CTA-a-row kernel and on clusters of 1, 2 and 8 CTAs a row; top-k 40 leaves a
/// few survivors (the kernels' shared list, sampling.cu's top), top-p 0.99 on 128,256 logits may leave more than it holds
/// (the draw goes on over the row). A call that says it has temperature alone takes the one-CTA kernel at 128 rows or more.
/// </summary>
[Collection("cuda")]
public sealed class CudaSamplingTests(CudaFixture fixture) : CudaTestBase(fixture)
{
    /// <summary><paramref name="ctas"/>: -1 the backend's default kernel (on compute capability 9.0 and later the cluster
    /// kernel at the shape it chooses), 0 the one-CTA-a-row kernel, else clusters of that many CTAs
    /// (<see cref="Tessera.Cuda.CudaBackendOptions.SamplingClusterCtas"/>).</summary>
    [Theory]
    [InlineData(DType.BF16, -1)]
    [InlineData(DType.F32, -1)]
    [InlineData(DType.BF16, 0)]
    [InlineData(DType.F32, 0)]
    [InlineData(DType.BF16, 1)]
    [InlineData(DType.BF16, 2)]
    [InlineData(DType.F32, 8)]
    public void DrawsTheDefinitionsTokens(DType dtype, int ctas)
    {
        if (ctas > 0 && Gpu.CudaDevice.ComputeCapability.Major < 9) Assert.Skip("thread-block clusters need compute capability 9.0");
        using var own = ctas < 0 ? null : new Tessera.Cuda.CudaBackend(Gpu.CudaDevice.Ordinal, new Tessera.Cuda.CudaBackendOptions { SamplingClusterCtas = ctas });
        var backend = (Tessera.Cuda.CudaBackend?)own ?? Gpu;
        int m = 96, v = 128256, ld = v + 64;
        var values = Stored(Enumerable.Range(0, m * ld).Select(_ => (Rng.NextDouble() + Rng.NextDouble() + Rng.NextDouble() - 1.5) * 6).ToArray(), dtype);
        var parameters = new int[m * TokenSampling.ParameterColumns];
        var positions = new int[m];
        float[] temperatures = [0f, 0.6f, 1f, 1.3f];
        int[] topKs = [0, 1, 40, 1000, 0];
        float[] topPs = [1f, 0.9f, 0.5f, 0.99f, 1f, 0.95f];
        for (int r = 0; r < m; r++)
        {
            TokenSampling.WriteParameters(parameters.AsSpan(r * TokenSampling.ParameterColumns), temperatures[r % 4], topKs[r % 5], topPs[r % 6], (ulong)(1000 + 7 * r));
            positions[r] = 100 * r + 5;
        }
        var logits = Upload(backend, values, dtype, m, ld);
        var ids = backend.Allocate(new Shape(m), DType.I32);
        var parameterRows = backend.Allocate(new Shape(m, TokenSampling.ParameterColumns), DType.I32);
        backend.CopyFromHost<int>(parameters, parameterRows);
        var positionRows = backend.Allocate(new Shape(m), DType.I32);
        backend.CopyFromHost<int>(positions, positionRows);
        backend.SampleRows(logits.Slice(1, 0, v), parameterRows, positionRows, ids);
        int differ = RowsApartFromTheDefinition(values, ld, v, parameters, positions, backend.ToArray<int>(ids), checkKept: true);
        Assert.True(differ <= 1, $"{differ} of {m} rows drew another token than the definition");
    }

    /// <summary>
    /// A call that says temperature alone (<see cref="IBackend.SampleRows"/>'s temperatureOnly) at 160 rows, which the automatic
    /// choice runs one CTA a row (<see cref="Tessera.Cuda.CudaBackend.SamplingOneCtaRows"/>), over contiguous BF16 rows (16-byte
    /// loads), near-flat and wide by turns: the definition's tokens, at most one row apart (a logf's last bit). With
    /// <paramref name="wrongPromise"/> every third row has top-k 40 or top-p 0.9 all the same: the promise picks a kernel, and
    /// every kernel reads each row's parameters, so those rows are still filtered.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TemperatureAloneAtManyRowsDrawsTheDefinitionsTokens(bool wrongPromise)
    {
        int m = 160, v = 128256;
        var values = Stored(Enumerable.Range(0, m * v).Select(i => (Rng.NextDouble() * 2 - 1) * (i / v % 2 == 0 ? 0.1 : 8)).ToArray(), DType.BF16);
        var parameters = new int[m * TokenSampling.ParameterColumns];
        var positions = new int[m];
        for (int r = 0; r < m; r++)
        {
            bool filtered = wrongPromise && r % 3 == 0;
            TokenSampling.WriteParameters(parameters.AsSpan(r * TokenSampling.ParameterColumns), r % 2 == 0 ? 1f : 0.8f,
                filtered && r % 2 == 0 ? 40 : 0, filtered && r % 2 == 1 ? 0.9f : 1f, (ulong)(500 + 11 * r));
            positions[r] = 3 * r + 1;
        }
        var ids = Gpu.Allocate(new Shape(m), DType.I32);
        var parameterRows = Gpu.Allocate(new Shape(m, TokenSampling.ParameterColumns), DType.I32);
        Gpu.CopyFromHost<int>(parameters, parameterRows);
        var positionRows = Gpu.Allocate(new Shape(m), DType.I32);
        Gpu.CopyFromHost<int>(positions, positionRows);
        Gpu.SampleRows(Upload(values, DType.BF16, m, v), parameterRows, positionRows, ids, temperatureOnly: true);
        int differ = RowsApartFromTheDefinition(values, v, v, parameters, positions, Gpu.ToArray<int>(ids), checkKept: false);
        Assert.True(differ <= 1, $"{differ} of {m} rows drew another token than the definition");
    }

    /// <summary>
    /// The rows whose drawn token is not the definition's (<see cref="TokenSampling.Choose"/> over the row's first
    /// <paramref name="v"/> of <paramref name="ld"/> values), each logged; with <paramref name="checkKept"/>, such a row must
    /// still have drawn a token the definition could keep (temperature above 0, its logit within the top k, or the top 200).
    /// </summary>
    private static int RowsApartFromTheDefinition(double[] values, int ld, int v, int[] parameters, int[] positions, int[] drawn, bool checkKept)
    {
        int differ = 0;
        for (int r = 0; r < drawn.Length; r++)
        {
            var row = values.Skip(r * ld).Take(v).Select(x => (float)x).ToArray();
            var (t, k, p, s) = TokenSampling.ReadParameters(parameters.AsSpan(r * TokenSampling.ParameterColumns));
            int expected = TokenSampling.Choose(row, t, k, p, s, positions[r]);
            if (expected == drawn[r]) continue;
            differ++;
            TestContext.Current.TestOutputHelper?.WriteLine($"row {r} (temperature {t}, top-k {k}, top-p {p}): GPU {drawn[r]}, definition {expected}");
            if (!checkKept) continue;
            float floor = row.OrderByDescending(x => x).ElementAt(Math.Min(k > 0 ? k : 200, v) - 1);
            Assert.True(t > 0 && row[drawn[r]] >= floor, $"row {r}: the GPU drew {drawn[r]} (logit {row[drawn[r]]}), outside what the definition could keep");
        }
        return differ;
    }

    /// <summary>
    /// <see cref="IBackend.TokenLogprobs"/> on the GPU against <see cref="LogProbabilities"/> on the same rounded rows (32 rows of
    /// 128,256 columns, row-strided): the top 20 columns exactly (ties lowest column first, which bf16 rows have by the
    /// hundred), every log-probability within 1e-5 of the definition's (float exponentials summed per thread, then in double,
    /// against the definition's double sums: about 1e-7 relative of a log-sum-exp near 12).
    /// </summary>
    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F32)]
    public void LogprobsAreTheDefinitions(DType dtype)
    {
        int m = 32, v = 128256, ld = v + 64, count = 20;
        var values = Stored(Enumerable.Range(0, m * ld).Select(_ => (Rng.NextDouble() + Rng.NextDouble() - 1) * 8).ToArray(), dtype);
        var drawn = Enumerable.Range(0, m).Select(r => (r * 7919) % v).ToArray();
        var logprobs = Gpu.Allocate(new Shape(m, 1 + count), DType.F32);
        var top = Gpu.Allocate(new Shape(m, count), DType.I32);
        Gpu.TokenLogprobs(Upload(values, dtype, m, ld).Slice(1, 0, v), UploadInts(drawn, m), count, logprobs, top);
        var lp = Gpu.ToArray<float>(logprobs);
        var ids = Gpu.ToArray<int>(top);
        for (int r = 0; r < m; r++)
        {
            var row = values.Skip(r * ld).Take(v).Select(x => (float)x).ToArray();
            double lse = LogProbabilities.LogSumExp(row);
            Assert.True(Math.Abs(lp[r * (1 + count)] - (row[drawn[r]] - lse)) <= 1e-5, $"row {r}: the token's log-probability {lp[r * (1 + count)]} against {row[drawn[r]] - lse}");
            var best = LogProbabilities.Top(row, count);
            for (int j = 0; j < count; j++)
            {
                Assert.Equal(best[j].Id, ids[r * count + j]);
                Assert.True(Math.Abs(lp[r * (1 + count) + 1 + j] - best[j].Logprob) <= 1e-5, $"row {r}, top {j}: {lp[r * (1 + count) + 1 + j]} against {best[j].Logprob}");
            }
        }
    }

    [Fact]
    public void RefusesOperandsThatDoNotFit()
    {
        var logits = Gpu.Allocate(new Shape(3, 10), DType.BF16);
        var ids = Gpu.Allocate(new Shape(3), DType.I32);
        var e = Assert.Throws<ArgumentException>(() => Gpu.SampleRows(logits, Gpu.Allocate(new Shape(3, 4), DType.I32), Gpu.Allocate(new Shape(3), DType.I32), ids));
        Assert.Contains("parameters", e.Message);
        e = Assert.Throws<ArgumentException>(() => Gpu.SampleRows(logits, Gpu.Allocate(new Shape(3, TokenSampling.ParameterColumns), DType.I32), Gpu.Allocate(new Shape(2), DType.I32), ids));
        Assert.Contains("positions", e.Message);
    }
}
