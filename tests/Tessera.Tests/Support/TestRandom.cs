using Xunit;

namespace Tessera.Tests.Support;

/// <summary>A random source for a test's inputs whose seed goes to the test's output, so that a failing draw can be replayed.</summary>
public static class TestRandom
{
    /// <summary>A generator seeded from the clock (or <paramref name="seed"/>), its seed written to the current test's output.</summary>
    public static Random Create(int? seed = null)
    {
        int s = seed ?? Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {s}");
        return new Random(s);
    }
}
