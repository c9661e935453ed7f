using Tessera.Inference.Sampling;
using Xunit;

namespace Tessera.Tests.Inference.Sampling;

/// <summary>
/// <see cref="PenaltyTerms"/> gives the device the terms the host adds: a row with its penalty terms added, then its bias
/// terms, is bit for bit the row <see cref="LogitsProcessing.ApplyPenalties"/> and <see cref="LogitsProcessing.ApplyBias"/>
/// make from the counts with the kept guesses counted in (what the host's verification counts).
/// </summary>
public class PenaltyTermsTests
{
    [Theory]
    [InlineData(0.5, 0.3, 0)]
    [InlineData(0.5, 0.3, 1)]
    [InlineData(0.5, 0.3, 3)]
    [InlineData(0.0, 1.1, 3)]
    [InlineData(0.0, 0.0, 2)]          // bias alone
    public void TermsAddedOnTheDeviceMakeTheHostsRow(double presence, double frequency, int guesses)
    {
        var random = new Random(17);
        var row = Enumerable.Range(0, 40).Select(_ => (float)(random.NextDouble() * 6 - 3)).ToArray();
        var counts = new Dictionary<int, int> { [5] = 2, [9] = 1, [12] = 4 };
        var bias = new Dictionary<int, double> { [9] = 2.5, [30] = -100, [5] = 0.25 };
        int[] tokens = [1, 2, 3, 5, 7, 7, 12];                                    // the guesses are tokens[4 ...]: 7, 7, 12
        var terms = new PenaltyTerms(presence, frequency, bias, counts);
        var (pc, pv, bc, bv) = (new List<int>(), new List<float>(), new List<int>(), new List<float>());
        terms.Write(tokens, 4, guesses, pc, pv, bc, bv);
        Assert.Equal(pc.Count, pc.Distinct().Count());
        Assert.Equal(bc.Count, bc.Distinct().Count());
        var device = (float[])row.Clone();
        for (int e = 0; e < pc.Count; e++) device[pc[e]] += pv[e];
        for (int e = 0; e < bc.Count; e++) device[bc[e]] += bv[e];

        var withGuesses = new Dictionary<int, int>(counts);
        for (int i = 4; i < 4 + guesses; i++) withGuesses[tokens[i]] = withGuesses.GetValueOrDefault(tokens[i]) + 1;
        var host = (float[])row.Clone();
        LogitsProcessing.ApplyPenalties(host, withGuesses, presence, frequency);
        LogitsProcessing.ApplyBias(host, bias);
        Assert.Equal(host, device);
        Assert.True(terms.MostTerms(100) >= pc.Count + bc.Count);
    }
}
