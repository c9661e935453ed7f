using Tessera.Inference.Sampling;
using Xunit;

namespace Tessera.Tests.Inference;

public class SamplerTests
{
    private static readonly float[] Logits = [0.1f, 2.0f, -1.0f, 1.5f, 0.3f];

    [Fact]
    public void GreedyPicksTheArgmax() =>
        Assert.Equal(1, new Sampler(SamplingOptions.Greedy).Sample(Logits, 5, position: 0));

    [Fact]
    public void TopKOfOneIsGreedyWhateverTheTemperature()
    {
        var s = new Sampler(new SamplingOptions { Temperature = 5, TopK = 1, Seed = 3 });
        for (int i = 0; i < 50; i++) Assert.Equal(1, s.Sample(Logits, 5, i));
    }

    /// <summary>A draw is a function of the seed and the position: two samplers of one seed agree at every position, in any
    /// order, another seed does not, and the draws over positions follow the softmax.</summary>
    [Fact]
    public void SameSeedGivesTheSameTokensAndFrequenciesFollowSoftmax()
    {
        var a = new Sampler(new SamplingOptions { Temperature = 1, Seed = 42 });
        var b = new Sampler(new SamplingOptions { Temperature = 1, Seed = 42 });
        var other = new Sampler(new SamplingOptions { Temperature = 1, Seed = 43 });
        var counts = new int[5];
        const int n = 20000;
        int differ = 0;
        for (int i = 0; i < n; i++)
        {
            int x = a.Sample(Logits, 5, i);
            Assert.Equal(x, b.Sample(Logits, 5, i));
            if (other.Sample(Logits, 5, i) != x) differ++;
            counts[x]++;
        }
        Assert.True(differ > n / 4, $"seeds 42 and 43 drew the same token at {n - differ} of {n} positions");
        double z = Logits.Sum(l => Math.Exp(l));
        // Binomial standard error at n = 20000 is at most 0.0036; 0.015 is over four of them.
        for (int i = 0; i < 5; i++) Assert.InRange((double)counts[i] / n, Math.Exp(Logits[i]) / z - 0.015, Math.Exp(Logits[i]) / z + 0.015);
    }

    [Fact]
    public void TopPKeepsOnlyTheNucleus()
    {
        // Probabilities: token 1 ~ 0.47, token 3 ~ 0.29: top-p 0.6 keeps exactly these two.
        var s = new Sampler(new SamplingOptions { Temperature = 1, TopP = 0.6, Seed = 7 });
        var seen = new HashSet<int>();
        for (int i = 0; i < 2000; i++) seen.Add(s.Sample(Logits, 5, i));
        Assert.Equal([1, 3], seen.Order());
    }

    [Fact]
    public void SamplingIgnoresPaddedVocabularyColumns()
    {
        float[] padded = [0f, 0f, 100f];   // column 2 is padding beyond a vocabulary of 2
        Assert.NotEqual(2, new Sampler(SamplingOptions.Greedy).Sample(padded, 2, position: 0));
    }

    /// <summary>
    /// Speculative sampling keeps the distribution: whatever the guess (the likeliest token, an unlikely one, or one top-k
    /// removed), the tokens <see cref="Sampler.Verify"/> returns follow the sampler's own distribution, a guess is kept
    /// as often as its probability, and the token is the one <see cref="Sampler.Sample"/> draws at that position. 40,000
    /// draws a case (seeded: 5, 6, 7; positions 0 to 39,999): the binomial standard error of a frequency is at most 0.0025,
    /// and 0.012 is over four of them.
    /// </summary>
    [Theory]
    [InlineData(1, 5UL)]
    [InlineData(2, 6UL)]
    [InlineData(0, 7UL)]
    public void VerifyKeepsTheSamplersDistributionWhateverTheGuess(int draft, ulong seed)
    {
        // Temperature 0.8 and top-k 4: token 2 (the smallest logit) is never drawn.
        var options = new SamplingOptions { Temperature = 0.8, TopK = 4, Seed = seed };
        var sampler = new Sampler(options);
        double[] p = new double[5];
        int[] kept = [1, 3, 4, 0];
        double z = kept.Sum(i => Math.Exp(Logits[i] / 0.8));
        foreach (int i in kept) p[i] = Math.Exp(Logits[i] / 0.8) / z;
        var counts = new int[5];
        int accepted = 0;
        const int n = 40000;
        for (int i = 0; i < n; i++)
        {
            int x = sampler.Verify(Logits, 5, draft, i, out bool ok);
            Assert.Equal(sampler.Sample(Logits, 5, i), x);
            counts[x]++;
            if (ok) { accepted++; Assert.Equal(draft, x); }
            else Assert.NotEqual(draft, x);
        }
        for (int i = 0; i < 5; i++) Assert.InRange((double)counts[i] / n, p[i] - 0.012, p[i] + 0.012);
        Assert.InRange((double)accepted / n, p[draft] - 0.012, p[draft] + 0.012);
        Assert.Equal(0, counts[2]);
    }

    [Fact]
    public void GreedyVerifyKeepsOnlyTheArgmax()
    {
        var greedy = new Sampler(SamplingOptions.Greedy);
        Assert.Equal(1, greedy.Verify(Logits, 5, 1, position: 0, out bool kept));
        Assert.True(kept);
        Assert.Equal(1, greedy.Verify(Logits, 5, 3, position: 0, out kept));
        Assert.False(kept);
    }
}
