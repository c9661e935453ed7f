using SkiaSharp;
using Tessera.Training;
using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>tessera plot: a PNG of a run's metrics, checked by decoding it.</summary>
public sealed class PlotCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-plot-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void PlotWritesAPngWithTheThreePanelsDrawn()
    {
        // A made-up run: a falling loss, a warmup-then-decay learning rate, a throughput, validation every 10 steps.
        using (var log = new MetricsLog(Path.Combine(_dir, "metrics.jsonl")))
            for (int s = 1; s <= 60; s++)
                log.Append(new StepMetrics(s, 60, 3.5 * Math.Exp(-s / 20.0) + 1, Math.Min(s, 10) * 1e-4, 1, 30_000 + 100 * s, 10, s % 10 == 0 ? 3.4 * Math.Exp(-s / 20.0) + 1.1 : null));
        var (code, stdout, stderr) = CliProcess.Run("plot", _dir);
        Assert.True(code == 0, stderr);
        Assert.Contains("60 logged steps, 6 validations", stdout);

        var png = File.ReadAllBytes(Path.Combine(_dir, "metrics.png"));
        Assert.Equal([0x89, (byte)'P', (byte)'N', (byte)'G'], png[..4]);
        using var bitmap = SKBitmap.Decode(png);
        Assert.NotNull(bitmap);
        Assert.Equal((1000, 1050), (bitmap.Width, bitmap.Height));
        // Each third of the image (one panel) has line pixels: coloured (not grey, not white) pixels of the data series.
        for (int panel = 0; panel < 3; panel++)
        {
            int coloured = 0;
            for (int y = panel * 350 + 20; y < (panel + 1) * 350 - 20; y++)
                for (int x = 100; x < 980; x++)
                {
                    var c = bitmap.GetPixel(x, y);
                    if (Math.Max(c.Red, Math.Max(c.Green, c.Blue)) - Math.Min(c.Red, Math.Min(c.Green, c.Blue)) > 60) coloured++;
                }
            Assert.True(coloured > 200, $"panel {panel} has {coloured} coloured pixels: its series was not drawn");
        }
    }

    [Fact]
    public void PlotOfADirectoryWithoutMetricsIsAUsageError()
    {
        var (code, _, stderr) = CliProcess.Run("plot", _dir);
        Assert.Equal(2, code);
        Assert.Contains("no metrics.jsonl", stderr);
        Assert.False(File.Exists(Path.Combine(_dir, "metrics.png")));
    }
}
