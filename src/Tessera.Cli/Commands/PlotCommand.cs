using System.CommandLine;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Cli.Plotting;
using Tessera.Training;
using Tessera.Training.Runs;

namespace Tessera.Cli.Commands;

/// <summary>tessera plot RUN: the run's metrics.jsonl as a PNG (loss and validation loss, learning rate, throughput).</summary>
public sealed class PlotCommand : Command
{
    private readonly Argument<string> _run = new("RUN") { Description = "a run directory (holding metrics.jsonl) or a metrics.jsonl file" };
    private readonly Option<string?> _out = new("--out") { Description = "the PNG to write [default: metrics.png beside metrics.jsonl]", HelpName = "FILE" };

    /// <summary>Declares the command.</summary>
    public PlotCommand(Terminal terminal) : base("plot", "plot a run's training loss, validation loss, learning rate and throughput as a PNG")
    {
        Arguments.Add(_run);
        Options.Add(_out);
        SetAction(parse =>
        {
            string given = parse.GetValue(_run)!;
            string metricsPath = File.Exists(given) ? given : new RunDirectory(given).MetricsPath;
            if (!File.Exists(metricsPath))
                throw new UsageException(Directory.Exists(given)
                    ? $"RUN {given}: no metrics.jsonl (a run writes it from its first logged step)"
                    : $"RUN {given}: no such run directory or file");
            var metrics = MetricsLog.Read(metricsPath);
            if (metrics.Count == 0) throw new UsageException($"RUN {given}: {metricsPath} is empty: nothing to plot yet");
            string png = parse.GetValue(_out) ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(metricsPath))!, "metrics.png");
            string title = Path.GetFileName(Path.GetDirectoryName(Path.GetFullPath(metricsPath))) ?? "run";
            MetricsPlot.Save(metrics, title, png);
            terminal.Line($"wrote {png} ({metrics.Count} logged steps, {metrics.Count(m => m.ValidationLoss is not null)} validations, up to step {metrics[^1].Step})");
            return 0;
        });
    }
}
