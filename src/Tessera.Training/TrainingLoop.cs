using System.Diagnostics;

namespace Tessera.Training;

/// <summary>
/// The loop both trainers run: a step, a divergence check, validation when due, metrics for the
/// reporting rank every LogEvery steps (and the last), a checkpoint every CheckpointEvery steps (and the last).
/// </summary>
internal static class TrainingLoop
{
    public static void Run<T>(T trainer, Action<StepMetrics>? onStep, Action<T>? checkpoint, MetricsLog? metrics,
        CancellationToken cancellation) where T : ILoopTrainer
    {
        var options = trainer.Options;
        while (trainer.Step < options.Steps)
        {
            cancellation.ThrowIfCancellationRequested();
            double lr = trainer.LearningRateAt(trainer.Step);
            var clock = Stopwatch.StartNew();
            double loss = trainer.TrainStep();
            double ms = clock.Elapsed.TotalMilliseconds;
            int step = trainer.Step;
            if (!double.IsFinite(loss))
                throw new InvalidOperationException($"{trainer.Where}training diverged: loss is {loss} at step {step}; lower the learning rate or check the data");
            double? validation = trainer.ValidationLossIfDue();
            if (trainer.Reports && (step % options.LogEvery == 0 || step == options.Steps || validation is not null))
            {
                var m = new StepMetrics(step, options.Steps, loss, lr, trainer.LastGradNorm(), trainer.TokensPerStep / (ms / 1000), ms, validation);
                onStep?.Invoke(m);
                metrics?.Append(m);
            }
            if (checkpoint is not null && ((options.CheckpointEvery > 0 && step % options.CheckpointEvery == 0) || step == options.Steps))
                checkpoint(trainer);
        }
    }
}
