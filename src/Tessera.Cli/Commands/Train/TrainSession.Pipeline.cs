using System.Diagnostics;
using Tessera.Cli.Output;
using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Nn.Parallel;
using Tessera.Training;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;

namespace Tessera.Cli.Commands.Train;

/// <summary>The pipeline-parallel run on CPU thread ranks: --ranks data-parallel ranks of --pp stages each, one mesh.</summary>
public sealed partial class TrainSession
{
    private TrainOutcome PipelineThreadRanks(Transformer model, TrainingData data, string? resumeFrom, int seed)
    {
        int dp = topology.WorldSize, pp = settings.Pp;
        var mesh = new DeviceMesh(dp: dp, pp: pp);
        var config = model.Config;
        var dtype = model.DType;
        var partition = PipelinePartition.Even(config.Layers, pp, settings.Chunks);
        var parallel = new DataParallelOptions { Stage = (ZeroStage)settings.Zero, OffloadOptimizer = settings.Offload }.Validate();
        string? initDirectory = settings.Model is string m && Directory.Exists(m) && resumeFrom is null ? m : null;
        // GPipe keeps every micro-batch in flight: it re-materializes, as the GPipe paper does.
        bool recompute = settings.Recompute || settings.Schedule == PipelineScheduleKind.GPipe;
        terminal.Line($"pipeline parallel: {pp} stages{(dp > 1 ? $" x {dp} data-parallel ranks" : "")} = {mesh.WorldSize} thread ranks, {PipelinePlan.Name(settings.Schedule)} schedule" +
            $"{(settings.Chunks > 1 ? $" with {settings.Chunks} chunks per stage" : "")}, {options.GradientAccumulationSteps} micro-batches of {options.BatchSize} x {options.SequenceLength} per step" +
            $"{(recompute ? ", recomputing activations" : "")}; {partition}" + (dp > 1 && settings.Zero > 0 ? $"; ZeRO stage {settings.Zero}" : ""));
        Trainer? reporter = null;
        int reached = 0;
        var progress = new TrainingProgress(terminal, 0, options.Steps);
        using var metrics = new MetricsLog(run.MetricsPath);
        var clock = Stopwatch.StartNew();
        progress.Run(() =>
        {
            try
            {
                var steps = ParallelTraining.RunThreadRanks(mesh.WorldSize, ctx =>
                {
                    var groups = mesh.CreateGroups(ctx.Factory);
                    var pipeline = new PipelineParallelism(groups.Pp, partition, ctx.Factory);
                    var stage = new Transformer(config, ctx.Backend, dtype, pipeline: pipeline) { RecomputeActivations = recompute };
                    IDataParallelism strategy = dp > 1
                        ? DataParallelism.Create(stage, groups.Dp, parallel, settings.AdamW, ctx.Host)
                        : SingleDevice.For(stage, settings.AdamW);
                    var trainer = new Trainer(stage, strategy, data.ForRank(options, groups.Coordinate.Dp, dp), null, options, settings.Schedule);
                    if (trainer.Reports) reporter = trainer;
                    if (resumeFrom is not null) ShardedCheckpoint.Restore(resumeFrom, trainer);
                    else if (initDirectory is not null) trainer.LoadWeights(initDirectory);
                    else trainer.InitializeWeights(seed);
                    // Each rank remembers the step it last saved: every rank saves at the same steps, so they decide alike.
                    int savedAt = resumeFrom is null ? -1 : trainer.Step;
                    void Save(Trainer t)
                    {
                        var dir = ShardedCheckpoint.Save(run.Checkpoints, t, tokenizer);
                        savedAt = t.Step;
                        if (t.Reports) Saved(t.Step, dir);
                    }
                    try
                    {
                        trainer.Run(trainer.Reports ? s => { progress.Report(s); metrics.Append(s); } : null, Save, cancellation: signals.Token);
                    }
                    catch (OperationCanceledException)
                    {
                        // Every rank stopped after the same step (agreed over the mesh), so the collective save lines up.
                        if (savedAt != trainer.Step) Save(trainer);
                        throw;
                    }
                    return trainer.Step;
                });
                reached = steps[0];
            }
            catch (AggregateException e) when (signals.Requested && e.InnerExceptions.All(x => x is OperationCanceledException))
            {
                reached = _lastCheckpointStep;   // every rank saved the step it stopped at
            }
        }, () => reporter?.Step ?? 0);
        return new TrainOutcome(reached, _lastCheckpoint, clock.Elapsed, true, null);
    }
}
