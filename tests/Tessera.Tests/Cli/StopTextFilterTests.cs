using Tessera.Cli.Commands.Generate;
using Xunit;

namespace Tessera.Tests.Cli;

public sealed class StopTextFilterTests
{
    [Fact]
    public void AStopStringSpanningTokensEndsTheTextBeforeIt()
    {
        var filter = new StopTextFilter(["END"]);
        var printed = string.Concat(new[] { "abc E", "N", "D and more" }.Select(filter.Push));
        Assert.Equal("abc ", printed);
        Assert.True(filter.Stopped);
    }

    [Fact]
    public void TextThatOnlyStartedAStopStringIsReleasedOnceItCannotComplete()
    {
        var filter = new StopTextFilter(["END"]);
        Assert.Equal("x", filter.Push("xE"));    // "E" may begin "END": held back
        Assert.Equal("EN!", filter.Push("N!"));  // "EN!" cannot: released
        Assert.Equal("", filter.Push("E"));
        Assert.Equal("E", filter.Flush());       // generation ended with it held back
        Assert.False(filter.Stopped);
    }
}
