using ScottPlot;
using Tessera.Training;

namespace Tessera.Cli.Plotting;

/// <summary>
/// A PNG of a run's metrics.jsonl: the training loss with the validation loss over it, the learning rate, and the
/// throughput, one panel each over the same step axis (ScottPlot).
/// </summary>
public static class MetricsPlot
{
    /// <summary>Width of the image in pixels.</summary>
    public const int Width = 1000;

    /// <summary>Height of the image in pixels (three panels).</summary>
    public const int Height = 1050;

    /// <summary>Renders <paramref name="metrics"/> (at least one entry) to <paramref name="pngPath"/>, titled <paramref name="title"/>.</summary>
    public static void Save(IReadOnlyList<StepMetrics> metrics, string title, string pngPath)
    {
        if (metrics.Count == 0) throw new ArgumentException("no logged steps to plot", nameof(metrics));
        double[] steps = metrics.Select(m => (double)m.Step).ToArray();
        var validation = metrics.Where(m => m.ValidationLoss is not null).ToList();

        var figure = new Multiplot();
        figure.AddPlots(3);
        figure.Layout = new ScottPlot.MultiplotLayouts.Rows();

        var loss = figure.GetPlot(0);
        var train = loss.Add.ScatterLine(steps, metrics.Select(m => m.Loss).ToArray());
        train.LegendText = "training loss";
        if (validation.Count > 0)
        {
            var val = loss.Add.Scatter(validation.Select(m => (double)m.Step).ToArray(), validation.Select(m => m.ValidationLoss!.Value).ToArray());
            val.LegendText = $"validation loss (last {validation[^1].ValidationLoss:F3})";
            val.MarkerSize = 8;
            val.LineWidth = 2;
        }
        loss.Title(title);
        loss.YLabel("nats per token");
        loss.ShowLegend(Alignment.UpperRight);

        var lr = figure.GetPlot(1);
        lr.Add.ScatterLine(steps, metrics.Select(m => m.LearningRate).ToArray());
        lr.YLabel("learning rate");

        var speed = figure.GetPlot(2);
        speed.Add.ScatterLine(steps, metrics.Select(m => m.TokensPerSecond).ToArray());
        speed.YLabel("tokens per second");
        speed.XLabel("step");

        var full = Path.GetFullPath(pngPath);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        // Written beside the target and renamed: a reader (or an image viewer refreshing it) never sees half a PNG.
        var temp = Path.Combine(Path.GetDirectoryName(full)!, $".{Path.GetFileName(full)}.tmp-{Guid.NewGuid():N}.png");
        try
        {
            figure.SavePng(temp, Width, Height);
            File.Move(temp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(temp)) File.Delete(temp);
        }
    }
}
