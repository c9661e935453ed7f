using Tessera.Inference.Speculation;
using Xunit;

namespace Tessera.Tests.Inference.Speculation;

/// <summary>Prompt lookup: which earlier occurrence the drafter copies from, and what it proposes.</summary>
public class NgramDrafterTests
{
    private static int[] Propose(int[] tokens, int k, int min = 2, int max = 4)
    {
        var drafter = new NgramDrafter(new SpeculationOptions { DraftTokens = k, MinNgram = min, MaxNgram = max });
        var drafts = new int[k];
        int n = drafter.Propose(tokens, drafts);
        return drafts[..n];
    }

    [Fact]
    public void CopiesWhatFollowedTheLatestOccurrenceOfTheLongestSuffix()
    {
        // The suffix [7, 8, 9] occurred at 1..3 (then 50, 51) and [8, 9] alone later at 6..7 (then 60): the longer match wins.
        Assert.Equal([50, 51, 8], Propose([1, 7, 8, 9, 50, 51, 8, 9, 60, 7, 8, 9], 3));
        // Two occurrences of the same length: the latest one's continuation.
        Assert.Equal([2, 3], Propose([5, 6, 1, 5, 6, 2, 3, 5, 6], 2));
    }

    [Fact]
    public void ALoopIsContinuedThroughTheDraftsThemselves()
    {
        // Period 3: the latest match of [1, 2, 3, 1] is three back, and the drafts run on past the known tokens.
        Assert.Equal([2, 3, 1, 2, 3, 1, 2], Propose([9, 1, 2, 3, 1, 2, 3, 1], 7));
        // One token repeated: the suffix [4, 4] matched one back; every draft is 4.
        Assert.Equal([4, 4, 4, 4, 4], Propose([1, 4, 4, 4], 5));
    }

    [Fact]
    public void NoDraftsWithoutAMatchOfTheShortestLength()
    {
        Assert.Empty(Propose([1, 2, 3, 4, 5, 6], 4));                  // nothing repeats
        Assert.Empty(Propose([1, 2, 3, 4, 3], 4));                    // only the last token recurs: shorter than MinNgram = 2
        Assert.Equal([4, 3, 4, 3], Propose([1, 2, 3, 4, 3], 4, min: 1));   // with MinNgram = 1 it is a match
        Assert.Empty(Propose([7, 7], 4));                            // too short to hold a suffix and an earlier match
        Assert.Empty(Propose([1, 2, 1, 2], 0));                       // no room asked for
    }

    /// <summary>The drafter reads a list, an array or any other read-only list of the same tokens alike.</summary>
    [Fact]
    public void EveryKindOfTokenListGivesTheSameDrafts()
    {
        int[] tokens = [3, 1, 4, 1, 5, 9, 2, 6, 1, 4, 1, 5];
        var drafter = new NgramDrafter(new SpeculationOptions { DraftTokens = 3 });
        int[] a = new int[3], b = new int[3], c = new int[3];
        Assert.Equal(3, drafter.Propose(tokens, a));
        Assert.Equal(3, drafter.Propose(new List<int>(tokens), b));
        Assert.Equal(3, drafter.Propose(Array.AsReadOnly(tokens), c));
        Assert.Equal([9, 2, 6], a);                                  // [1, 4, 1, 5] occurred at 1..4, then 9, 2, 6
        Assert.Equal(a, b);
        Assert.Equal(a, c);
    }

    [Fact]
    public void OptionsOutsideTheirRangesAreRefusedNamingTheField()
    {
        Assert.Contains("DraftTokens", Assert.Throws<ArgumentException>(() => new SpeculationOptions { DraftTokens = 17 }.Validate()).Message);
        Assert.Contains("MinNgram", Assert.Throws<ArgumentException>(() => new SpeculationOptions { MinNgram = 0 }.Validate()).Message);
        Assert.Contains("MaxNgram", Assert.Throws<ArgumentException>(() => new NgramDrafter(new SpeculationOptions { MinNgram = 3, MaxNgram = 2 })).Message);
    }
}
