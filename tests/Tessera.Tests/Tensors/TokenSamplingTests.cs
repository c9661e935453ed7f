using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Tensors;

/// <summary>
/// <see cref="TokenSampling"/>, the definition of a drawn token that the host sampler and every backend's
/// <see cref="IBackend.SampleRows"/> follow: the draws over positions against the exact filtered softmax, the cuts' ties,
/// the special values, and the CPU backend's op against the definition.
/// </summary>
public class TokenSamplingTests
{
    private static readonly float[] Logits = [0.1f, 2.0f, -1.0f, 1.5f, 0.3f, 1.2f];

    /// <summary>The host sampler's earlier rule, written out: sort (logit descending, id ascending), top-k, softmax at the
    /// temperature in double, top-p's shortest prefix reaching p, renormalized.</summary>
    private static double[] Exact(float[] logits, double temperature, int topK, double topP)
    {
        var order = Enumerable.Range(0, logits.Length).OrderByDescending(i => logits[i]).ThenBy(i => i).ToArray();
        int keep = topK > 0 ? Math.Min(topK, order.Length) : order.Length;
        var p = order.Take(keep).Select(i => Math.Exp((logits[i] - logits[order[0]]) / temperature)).ToArray();
        double sum = p.Sum(), cumulative = 0;
        if (topP < 1)
            for (int i = 0; i < keep; i++)
                if ((cumulative += p[i]) >= topP * sum) { keep = i + 1; break; }
        double kept = p.Take(keep).Sum();
        var result = new double[logits.Length];
        for (int i = 0; i < keep; i++) result[order[i]] = p[i] / kept;
        return result;
    }

    /// <summary>
    /// 40,000 draws (positions 0 to 39,999, seed fixed per case) follow the filtered softmax: within four binomial standard
    /// deviations of each exact probability (a correct rule fails about one comparison in 16,000), and a token the filters
    /// drop is never drawn.
    /// </summary>
    [Theory]
    [InlineData(1.0, 0, 1.0, 7UL)]
    [InlineData(0.8, 4, 1.0, 8UL)]
    [InlineData(1.3, 0, 0.8, 9UL)]
    [InlineData(0.7, 5, 0.9, 10UL)]
    [InlineData(2.0, 3, 0.5, 11UL)]
    public void DrawsOverPositionsFollowTheFilteredSoftmax(double temperature, int topK, double topP, ulong seed)
    {
        const int n = 40000;
        var expected = Exact(Logits, (float)temperature, topK, (float)topP);
        var counts = new int[Logits.Length];
        for (int i = 0; i < n; i++) counts[TokenSampling.Choose(Logits, (float)temperature, topK, (float)topP, seed, i)]++;
        for (int t = 0; t < Logits.Length; t++)
        {
            double f = (double)counts[t] / n, sd = Math.Sqrt(expected[t] * (1 - expected[t]) / n);
            Assert.True(Math.Abs(f - expected[t]) <= 4 * sd + 1e-12, $"token {t}: drawn {f:F4}, probability {expected[t]:F4} (seed {seed})");
        }
    }

    [Fact]
    public void ADrawDependsOnTheSeedAndThePositionOnly()
    {
        int differ = 0;
        for (int i = 0; i < 1000; i++)
        {
            int a = TokenSampling.Choose(Logits, 1f, 0, 1f, 42, i);
            Assert.Equal(a, TokenSampling.Choose((float[])Logits.Clone(), 1f, 0, 1f, 42, i));
            if (TokenSampling.Choose(Logits, 1f, 0, 1f, 42, i + 1) != a) differ++;
        }
        Assert.True(differ > 250, $"neighbouring positions drew the same token {1000 - differ} times in 1000");
    }

    /// <summary>Tied logits at a cut are kept lowest id first, as a sort by (logit descending, id ascending) keeps them.</summary>
    [Fact]
    public void TiesAtTheCutsKeepTheLowestIds()
    {
        float[] tied = [0f, 1f, 1f, 1f, 1f, -2f];
        var topK = new HashSet<int>();
        var topP = new HashSet<int>();
        for (int i = 0; i < 4000; i++)
        {
            topK.Add(TokenSampling.Choose(tied, 1f, 2, 1f, 3, i));
            topP.Add(TokenSampling.Choose(tied, 1f, 0, 0.3f, 3, i));   // each tied token holds about 0.24: two reach 0.3
        }
        Assert.Equal([1, 2], topK.Order());
        Assert.Equal([1, 2], topP.Order());
    }

    [Fact]
    public void SpecialValuesFollowTheArgmaxRule()
    {
        float nan = float.NaN, inf = float.PositiveInfinity;
        Assert.Equal(3, TokenSampling.Choose([1f, nan, 0f, 5f], 0f, 0, 1f, 1, 0));                   // temperature 0: the argmax
        Assert.Equal(0, TokenSampling.Choose([nan, nan, nan], 1f, 0, 1f, 1, 0));                     // all NaN: 0
        Assert.Equal(2, TokenSampling.Choose([1f, 2f, inf, inf], 1f, 0, 1f, 1, 0));                  // +inf: the first of them
        for (int i = 0; i < 500; i++)
        {
            int t = TokenSampling.Choose([nan, 0f, -inf, 0.5f, nan], 1f, 0, 1f, 5, i);
            Assert.True(t is 1 or 3, $"position {i} drew {t}: NaN and -inf are never drawn beside finite logits");
        }
    }

    /// <summary>The noise stays below <see cref="TokenSampling.NoiseBound"/> (which lets a draw skip candidates that cannot
    /// win) and above about -2.82, its extremes at u = 1 - 2^-24 and 2^-24: a million tokens' noise for three keys.</summary>
    [Fact]
    public void NoiseStaysWithinItsBounds()
    {
        float low = float.MaxValue, high = float.MinValue;
        foreach (ulong seed in new ulong[] { 1, 2, 3 })
        {
            ulong key = TokenSampling.RowKey(seed, 7);
            for (int t = 0; t < 1_000_000; t++)
            {
                float g = TokenSampling.Noise(key, t);
                low = Math.Min(low, g);
                high = Math.Max(high, g);
            }
        }
        Assert.InRange(high, 10f, 16.64f);
        Assert.True(high < TokenSampling.NoiseBound);
        Assert.InRange(low, -2.82f, -1.5f);
    }

    [Fact]
    public void ParametersRoundTripThroughTheirIntegerRow()
    {
        var row = new int[TokenSampling.ParameterColumns];
        TokenSampling.WriteParameters(row, 0.7f, 40, 0.95f, 0xFEDCBA9876543210UL);
        Assert.Equal((0.7f, 40, 0.95f, 0xFEDCBA9876543210UL), TokenSampling.ReadParameters(row));
    }

    /// <summary>The CPU backend's op draws each row as the definition does, from F32 rows and from F64 rows read as floats,
    /// over a row-strided view, with each row's own parameters and position (seeded rows, seed 21).</summary>
    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F64)]
    public void TheCpuOpDrawsEachRowAsTheDefinition(DType dtype)
    {
        var cpu = new CpuBackend(1);
        var random = new Random(21);
        int m = 12, v = 300, ld = 320;
        var values = Enumerable.Range(0, m * ld).Select(_ => random.NextDouble() * 6 - 3).ToArray();
        var parameters = new int[m * TokenSampling.ParameterColumns];
        var positions = new int[m];
        for (int r = 0; r < m; r++)
        {
            TokenSampling.WriteParameters(parameters.AsSpan(r * TokenSampling.ParameterColumns), r % 4 == 0 ? 0f : 0.5f + r / 10f, r % 3 * 7, r % 2 == 0 ? 1f : 0.9f, (ulong)(100 + r));
            positions[r] = 5 * r;
        }
        var full = dtype == DType.F32 ? cpu.FromHost<float>(values.Select(x => (float)x).ToArray(), new Shape(m, ld)) : cpu.FromHost<double>(values, new Shape(m, ld));
        var ids = cpu.Allocate(new Shape(m), DType.I32);
        cpu.SampleRows(full.Slice(1, 0, v), cpu.FromHost<int>(parameters, new Shape(m, TokenSampling.ParameterColumns)), cpu.FromHost<int>(positions, new Shape(m)), ids);
        var drawn = cpu.ToArray<int>(ids);
        for (int r = 0; r < m; r++)
        {
            var row = values.Skip(r * ld).Take(v).Select(x => (float)x).ToArray();
            var (t, k, p, s) = TokenSampling.ReadParameters(parameters.AsSpan(r * TokenSampling.ParameterColumns));
            Assert.Equal(TokenSampling.Choose(row, t, k, p, s, positions[r]), drawn[r]);
        }
    }

    /// <summary>The CPU backend's <see cref="IBackend.TokenLogprobs"/> writes <see cref="LogProbabilities"/>' values over a
    /// row-strided F64 view (rows read as floats): the drawn token's and the top three's, ties lowest column first; with
    /// count 0 only the token's.</summary>
    [Fact]
    public void TheCpuLogprobsOpWritesTheDefinitionsValues()
    {
        var cpu = new CpuBackend(1);
        int m = 4, v = 50, ld = 64;
        var values = Enumerable.Range(0, m * ld).Select(i => Math.Round(Math.Sin(i * 0.37) * 8) / 4).ToArray();   // quarters: ties
        var full = cpu.FromHost<double>(values, new Shape(m, ld));
        var ids = cpu.FromHost<int>([3, 0, 49, 17], new Shape(m));
        var logprobs = cpu.Allocate(new Shape(m, 4), DType.F32);
        var top = cpu.Allocate(new Shape(m, 3), DType.I32);
        cpu.TokenLogprobs(full.Slice(1, 0, v), ids, 3, logprobs, top);
        var lp = cpu.ToArray<float>(logprobs);
        var ti = cpu.ToArray<int>(top);
        int[] drawn = [3, 0, 49, 17];
        for (int r = 0; r < m; r++)
        {
            var row = values.Skip(r * ld).Take(v).Select(x => (float)x).ToArray();
            Assert.Equal((float)(row[drawn[r]] - LogProbabilities.LogSumExp(row)), lp[r * 4]);
            var best = LogProbabilities.Top(row, 3);
            Assert.Equal(best.Select(b => (b.Id, (float)b.Logprob)), Enumerable.Range(0, 3).Select(j => (ti[r * 3 + j], lp[r * 4 + 1 + j])));
            Assert.True(best[0].Id < best[1].Id || row[best[0].Id] > row[best[1].Id], $"row {r}: ties must come lowest column first");
        }
        var only = cpu.Allocate(new Shape(m, 1), DType.F32);
        cpu.TokenLogprobs(full.Slice(1, 0, v), ids, 0, only, null);
        Assert.Equal(Enumerable.Range(0, m).Select(r => lp[r * 4]), cpu.ToArray<float>(only));
        Assert.Throws<ArgumentException>(() => cpu.TokenLogprobs(full.Slice(1, 0, v), ids, 2, cpu.Allocate(new Shape(m, 3), DType.F32), null));
    }

    /// <summary><see cref="IBackend.AddToColumns"/> adds each row's terms to its own columns of a row-strided view, once each,
    /// and refuses a row that names a column twice (a device adds a row's terms in parallel).</summary>
    [Fact]
    public void AddToColumnsAddsEachRowsTermsOnce()
    {
        var cpu = new CpuBackend(1);
        var x = cpu.FromHost<float>(Enumerable.Range(0, 3 * 8).Select(i => (float)i).ToArray(), new Shape(3, 8));
        var view = x.Slice(1, 0, 6);
        cpu.AddToColumns(view, cpu.FromHost<int>([0, 2, 2, 4], new Shape(4)), cpu.FromHost<int>([1, 5, 0, 3, 9], new Shape(5)),
            cpu.FromHost<float>([0.5f, -1f, 2f, 4f, 100f], new Shape(5)));
        float[] expected = [0, 1.5f, 2, 3, 4, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 18, 17, 18, 23, 20, 21, 22, 23];
        Assert.Equal(expected, cpu.ToArray<float>(x));
        var e = Assert.Throws<ArgumentException>(() => cpu.AddToColumns(view, cpu.FromHost<int>([0, 2, 2, 2], new Shape(4)),
            cpu.FromHost<int>([3, 3], new Shape(2)), cpu.FromHost<float>([1f, 1f], new Shape(2))));
        Assert.Contains("twice", e.Message);
    }

    [Fact]
    public void TheCpuOpRefusesOperandsThatDoNotFit()
    {
        var cpu = new CpuBackend(1);
        var logits = cpu.Allocate(new Shape(3, 10), DType.F32);
        var parameters = cpu.Allocate(new Shape(3, TokenSampling.ParameterColumns), DType.I32);
        var positions = cpu.Allocate(new Shape(3), DType.I32);
        var ids = cpu.Allocate(new Shape(3), DType.I32);
        var e = Assert.Throws<ArgumentException>(() => cpu.SampleRows(logits, cpu.Allocate(new Shape(3, 4), DType.I32), positions, ids));
        Assert.Contains("parameters", e.Message);
        e = Assert.Throws<ArgumentException>(() => cpu.SampleRows(logits, parameters, cpu.Allocate(new Shape(2), DType.I32), ids));
        Assert.Contains("positions", e.Message);
        e = Assert.Throws<ArgumentException>(() => cpu.SampleRows(logits, parameters, positions, cpu.Allocate(new Shape(3), DType.F32)));
        Assert.Contains("ids", e.Message);
    }
}
