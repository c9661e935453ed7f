using System.Text.Json;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>What the command-line train tests read back from a run's metrics.jsonl.</summary>
internal static class TrainRunMetrics
{
    /// <summary>The training losses of <paramref name="run"/>, one a logged step, in order (the lines that carry a "loss").</summary>
    public static double[] Losses(string run) =>
        File.ReadAllLines(Path.Combine(run, "metrics.jsonl"))
            .Select(l => JsonDocument.Parse(l).RootElement)
            .Where(e => e.TryGetProperty("loss", out _))
            .Select(e => e.GetProperty("loss").GetDouble()).ToArray();

    /// <summary>
    /// <paramref name="run"/> logged <paramref name="steps"/> losses, each within 1e-4 relative of <paramref name="oneDevice"/>'s
    /// (F32 runs: the same sums in another order), every pair written to the test output; <paramref name="layout"/> names the
    /// run's layout in the messages ("tp 2", "ep").
    /// </summary>
    public static void AssertLossesMatchOneDevice(string oneDevice, string run, int steps, string layout)
    {
        var expected = Losses(oneDevice);
        var actual = Losses(run);
        Assert.Equal(steps, expected.Length);
        Assert.Equal(steps, actual.Length);
        for (int i = 0; i < steps; i++)
        {
            double rel = Math.Abs(actual[i] - expected[i]) / Math.Abs(expected[i]);
            TestContext.Current.TestOutputHelper?.WriteLine($"step {i + 1}: one device {expected[i]:R}, {layout} {actual[i]:R}, relative difference {rel:E2}");
            Assert.True(rel < 1e-4, $"step {i + 1}: loss {actual[i]} with {layout}, {expected[i]} on one device (relative {rel:E2} > 1e-4)");
        }
    }
}
