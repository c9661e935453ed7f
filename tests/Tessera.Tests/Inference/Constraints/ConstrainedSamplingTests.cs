using Tessera.Inference.Constraints;
using Tessera.Inference.Sampling;
using Xunit;

namespace Tessera.Tests.Inference.Constraints;

/// <summary>
/// Sampling within a constraint gives the sampler's distribution over the allowed tokens alone: by rejection (greedy, or a
/// temperature alone), and by masking first (top-k, top-p); the frequencies of 40,000 draws (positions 0 to 39,999) against
/// the exact probabilities.
/// </summary>
public class ConstrainedSamplingTests
{
    private static readonly float[] Logits = [2.0f, 0.5f, 1.8f, -0.3f, 1.0f, 2.2f, 0.0f, 1.1f];
    private static readonly HashSet<int> Allowed = [1, 3, 4, 6, 7];

    private static double[] Frequencies(SamplingOptions options, int n, out int checks)
    {
        var sampler = new Sampler(options);
        var counts = new double[Logits.Length];
        int calls = 0;
        for (int i = 0; i < n; i++)
        {
            int t = ConstrainedSampling.Sample(sampler, options, (float[])Logits.Clone(), position: i, t => { calls++; return Allowed.Contains(t); });
            Assert.Contains(t, Allowed);
            counts[t]++;
        }
        checks = calls;
        return [.. counts.Select(c => c / n)];
    }

    /// <summary>Softmax over <paramref name="kept"/> at temperature 1.</summary>
    private static double[] Softmax(IEnumerable<int> kept)
    {
        var p = new double[Logits.Length];
        foreach (int t in kept) p[t] = Math.Exp(Logits[t]);
        double sum = p.Sum();
        return [.. p.Select(x => x / sum)];
    }

    private static void AssertClose(double[] expected, double[] actual, int n)
    {
        // Four standard deviations of a frequency of n draws: a correct sampler fails about once in 16,000 comparisons.
        for (int t = 0; t < expected.Length; t++)
            Assert.True(Math.Abs(expected[t] - actual[t]) <= 4 * Math.Sqrt(expected[t] * (1 - expected[t]) / n) + 1e-12,
                $"token {t}: {actual[t]:F4} drawn against {expected[t]:F4}");
    }

    [Fact]
    public void GreedyTakesTheBestAllowedToken()
    {
        var t = ConstrainedSampling.Sample(new Sampler(SamplingOptions.Greedy), SamplingOptions.Greedy, (float[])Logits.Clone(), position: 0, Allowed.Contains);
        Assert.Equal(7, t);                                     // 5, 0 and 2 score higher but are refused
    }

    [Fact]
    public void RejectionGivesTheSoftmaxOverTheAllowedTokens()
    {
        const int n = 40000;
        var options = new SamplingOptions { Temperature = 1, Seed = 11 };
        var freq = Frequencies(options, n, out int checks);
        AssertClose(Softmax(Allowed), freq, n);
        // Refused draws are struck out one at a time: far fewer checks than the vocabulary each.
        Assert.True(checks < n * Logits.Length / 2, $"{checks} checks for {n} draws");
    }

    [Fact]
    public void TopKCutsAmongTheAllowedTokensOnly()
    {
        const int n = 40000;
        var options = new SamplingOptions { Temperature = 1, TopK = 2, Seed = 5 };
        AssertClose(Softmax([7, 4]), Frequencies(options, n, out _), n);     // the best two allowed, not the best two overall
    }

    [Fact]
    public void NothingAllowedGivesMinusOne()
    {
        Assert.Equal(-1, ConstrainedSampling.Sample(new Sampler(SamplingOptions.Greedy), SamplingOptions.Greedy, (float[])Logits.Clone(), position: 0, _ => false));
        var sampled = new SamplingOptions { Temperature = 1, Seed = 2 };
        Assert.Equal(-1, ConstrainedSampling.Sample(new Sampler(sampled), sampled, (float[])Logits.Clone(), position: 0, _ => false));
    }
}
