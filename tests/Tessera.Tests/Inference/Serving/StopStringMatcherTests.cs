using Tessera.Inference.Serving;
using Xunit;

namespace Tessera.Tests.Inference.Serving;

public class StopStringMatcherTests
{
    [Fact]
    public void StopStringSplitAcrossPiecesIsFoundAndNothingAfterItsStartIsReleased()
    {
        var m = new StopStringMatcher(["END"]);
        Assert.Equal("abc", m.Push("abcE"));                         // "E" might start "END": held back
        Assert.Equal("", m.Push("N"));
        Assert.Equal("", m.Push("Dxyz"));
        Assert.True(m.Stopped);
        Assert.Equal("", m.Flush());
    }

    [Fact]
    public void HeldBackTextThatDoesNotCompleteAStopStringIsReleased()
    {
        var m = new StopStringMatcher(["END", "\n\n"]);
        Assert.Equal("x", m.Push("xEN"));
        Assert.Equal("ENd", m.Push("d\n"));                         // the newline might start "\n\n"
        Assert.False(m.Stopped);
        Assert.Equal("\n", m.Flush());
    }

    [Fact]
    public void EarliestOfSeveralStopStringsWins()
    {
        var m = new StopStringMatcher(["bc", "ab"]);
        Assert.Equal("x", m.Push("xabc"));
        Assert.True(m.Stopped);
    }

    [Fact]
    public void WithoutStopStringsEveryPiecePassesAtOnce()
    {
        var m = new StopStringMatcher([]);
        Assert.Equal("E", m.Push("E"));
        Assert.Equal("", m.Flush());
    }
}
