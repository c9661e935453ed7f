using System.Globalization;
using Spectre.Console;
using Tessera.Training;

namespace Tessera.Cli.Output;

/// <summary>
/// What a training run shows while it runs. Every logged step is one line (step, loss, learning rate, gradient norm,
/// throughput, ETA, validation loss when measured), the same words on a terminal and in a log. On a terminal a live bar
/// under the lines follows every step (percentage, tokens per second, elapsed and remaining time).
/// </summary>
public sealed class TrainingProgress
{
    private readonly Terminal _terminal;
    private readonly int _firstStep, _totalSteps;
    private readonly DateTime _start = DateTime.UtcNow;
    private ProgressTask? _bar;
    private StepMetrics? _last;

    /// <summary>A run that starts at <paramref name="firstStep"/> (0, or the resumed step) and ends at <paramref name="totalSteps"/>.</summary>
    public TrainingProgress(Terminal terminal, int firstStep, int totalSteps)
    {
        _terminal = terminal;
        _firstStep = firstStep;
        _totalSteps = totalSteps;
    }

    /// <summary>
    /// Runs <paramref name="training"/> under the live bar (on a terminal) or as is. <paramref name="currentStep"/>, when
    /// given, is read a few times a second to move the bar between logged steps (a plain read of the trainer's step).
    /// </summary>
    public void Run(Action training, Func<int>? currentStep = null)
    {
        if (!_terminal.Interactive)
        {
            training();
            return;
        }
        _terminal.Console.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                new ElapsedTimeColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(context =>
            {
                _bar = context.AddTask(Describe(null), maxValue: _totalSteps);
                _bar.Value = _firstStep;
                using var poll = currentStep is null ? null : new Timer(_ => Move(currentStep()), null, 250, 250);
                training();
                _bar.Value = Math.Max(_bar.Value, _last?.Step ?? _firstStep);
            });
    }

    /// <summary>Prints one logged step (the reporting rank's <see cref="TrainingLoop"/> callback).</summary>
    public void Report(StepMetrics m)
    {
        _last = m;
        double elapsed = (DateTime.UtcNow - _start).TotalSeconds;
        int done = m.Step - _firstStep;
        double eta = done > 0 ? elapsed / done * (m.TotalSteps - m.Step) : 0;
        var line = string.Create(CultureInfo.InvariantCulture,
            $"step {m.Step,5}/{m.TotalSteps} | loss {m.Loss:F4} | lr {m.LearningRate:E2} | norm {m.GradNorm:F3} | {m.TokensPerSecond,8:F0} tok/s | {m.StepMilliseconds,7:F1} ms | eta {Durations.Format(eta)}");
        if (m.ValidationLoss is double v) line += string.Create(CultureInfo.InvariantCulture, $" | val {v:F4}");
        if (m.RouterAuxLoss is double aux) line += string.Create(CultureInfo.InvariantCulture, $" | router aux {aux:F4}");
        if (_bar is not null)
        {
            _terminal.Console.WriteLine(line);   // Spectre draws it above the live bar
            Move(m.Step);
        }
        else _terminal.Output.WriteLine(line);
    }

    private void Move(int step)
    {
        if (_bar is null) return;
        if (step > _bar.Value) _bar.Value = step;
        _bar.Description = Describe(_last);
    }

    private string Describe(StepMetrics? m) => m is null
        ? $"training {_totalSteps - _firstStep} steps"
        : string.Create(CultureInfo.InvariantCulture, $"step {(int)(_bar?.Value ?? m.Step)}/{_totalSteps}  loss {m.Loss:F3}  {m.TokensPerSecond:N0} tok/s");
}
