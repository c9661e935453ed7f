using System.Globalization;
using Tessera.Training;

namespace Tessera.Cli;

/// <summary>Prints one line per logged training step: step, loss, learning rate, throughput, ETA.</summary>
public sealed class ConsoleProgress
{
    private readonly TextWriter _out;
    private readonly DateTime _start = DateTime.UtcNow;
    private readonly int _firstStep;

    /// <summary>Reports to <paramref name="output"/>; <paramref name="firstStep"/> is the step the run (re)started at.</summary>
    public ConsoleProgress(TextWriter output, int firstStep)
    {
        _out = output;
        _firstStep = firstStep;
    }

    /// <summary>Prints one step.</summary>
    public void Report(StepMetrics m)
    {
        double elapsed = (DateTime.UtcNow - _start).TotalSeconds;
        int done = m.Step - _firstStep;
        double eta = done > 0 ? elapsed / done * (m.TotalSteps - m.Step) : 0;
        var line = string.Create(CultureInfo.InvariantCulture,
            $"step {m.Step,5}/{m.TotalSteps} | loss {m.Loss:F4} | lr {m.LearningRate:E2} | norm {m.GradNorm:F3} | {m.TokensPerSecond,8:F0} tok/s | {m.StepMilliseconds,7:F1} ms | eta {FormatDuration(eta)}");
        if (m.ValidationLoss is double v) line += string.Create(CultureInfo.InvariantCulture, $" | val {v:F4}");
        _out.WriteLine(line);
    }

    /// <summary>"1m05s"-style duration.</summary>
    public static string FormatDuration(double seconds)
    {
        var t = TimeSpan.FromSeconds(Math.Max(0, seconds));
        return t.TotalHours >= 1 ? $"{(int)t.TotalHours}h{t.Minutes:D2}m" : $"{t.Minutes}m{t.Seconds:D2}s";
    }
}
