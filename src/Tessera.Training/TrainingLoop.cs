using System.Diagnostics;

namespace Tessera.Training;

/// <summary>
/// The loop both trainers run: a step, a divergence check, validation when due, metrics for the
/// reporting rank every LogEvery steps (and the last), a checkpoint every CheckpointEvery steps (and the last).
/// Cancellation stops it between two steps with an <see cref="OperationCanceledException"/>; the trainer then holds
/// exactly <c>Step</c> completed updates (nothing of the next one), ready to be checkpointed.
/// </summary>
internal static class TrainingLoop
{
    public static void Run<T>(T trainer, Action<StepMetrics>? onStep, Action<T>? checkpoint, MetricsLog? metrics,
        CancellationToken cancellation) where T : ILoopTrainer
    {
        var options = trainer.Options;
        while (trainer.Step < options.Steps)
        {
            // A stop is taken between steps, and by every rank at the same one (data-parallel ranks agree collectively), so
            // the state left behind is a whole step that a checkpoint can save and a resume continue bit for bit.
            if (cancellation.CanBeCanceled && trainer.StopAgreed(cancellation.IsCancellationRequested))
                throw new OperationCanceledException($"{trainer.Where}training stopped on request after step {trainer.Step}", cancellation);
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
