using System.Text.Json;

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
}
