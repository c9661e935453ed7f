using System.Diagnostics;
using Tessera.Cli.Output;
using Tessera.Cli.Ranks;
using Tessera.Cli.Signals;
using Tessera.Cuda;
using Tessera.Cuda.Distributed;
using Tessera.Distributed.Launch;
using Tessera.Distributed.Nccl;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;
using Tessera.Training.Runs;
using Tessera.Nn.Parallel;

namespace Tessera.Cli.Commands.Train;

/// <summary>
/// The training loop of one run on its topology, stoppable between steps: a stop request (Ctrl-C, SIGTERM) ends the loop
/// after the step in progress, and the step reached is checkpointed before the command reports. Checkpoints are pruned
/// to --keep-last after each save.
/// </summary>
public sealed class TrainSession(TrainSettings settings, TrainerOptions options, Topology topology, RunDirectory run,
    Terminal terminal, StopSignals signals, string tokenizer)
{
    private string? _lastCheckpoint;
    private int _lastCheckpointStep = -1;

    /// <summary>Trains <paramref name="model"/> from the start or from <paramref name="resumeFrom"/>.</summary>
    /// <remarks>A launched rank (<see cref="TopologyKind.ProcessPerGpu"/>) passes its <paramref name="nccl"/> mesh, which its model was built with.</remarks>
    public TrainOutcome Train(Transformer model, TrainingData data, string? resumeFrom, int seed, NcclMesh? nccl = null)
    {
        _lastCheckpoint = resumeFrom;
        return topology.Kind switch
        {
            TopologyKind.OneDevice => OneDevice(model, data, resumeFrom),
            TopologyKind.ThreadRanks => ThreadRanks(model, data, resumeFrom, seed),
            _ => ProcessPerGpu(model, nccl ?? throw new ArgumentNullException(nameof(nccl), "a launched rank trains over its NCCL mesh"), data, resumeFrom, seed),
        };
    }

    /// <summary>The tensor-parallel plan of --sp.</summary>
    public static ParallelPlan Plan(TrainSettings settings) => ParallelPlan.Megatron(settings.SequenceParallel);

    /// <summary>Whether activations are recomputed: --recompute, or the GPipe schedule, which keeps every micro-batch in flight and re-materializes as the GPipe paper does.</summary>
    public static bool Recompute(TrainSettings settings) => settings.Recompute || settings.Pp > 1 && settings.Schedule == PipelineScheduleKind.GPipe;

    private string DescribeParallelism() =>
        $"{topology.Describe()}{(settings.SequenceParallel ? " with sequence parallelism" : "")}" +
        (settings.ExpertParallel > 1 ? $", experts split over ep {settings.ExpertParallel} (expert data parallel {topology.DataParallelSize / settings.ExpertParallel})" : "") +
        (settings.Pp > 1 ? $", {PipelinePlan.Name(settings.Schedule)} schedule{(settings.Chunks > 1 ? $" with {settings.Chunks} chunks per stage" : "")} over {options.GradientAccumulationSteps} micro-batches{(Recompute(settings) ? ", recomputing activations" : "")}" : "") +
        $", ZeRO stage {settings.Zero}{(settings.Offload ? " with optimizer offload" : "")}, " +
        $"global batch {topology.DataParallelSize} x {options.BatchSize * options.GradientAccumulationSteps} x {options.SequenceLength}";

    /// <summary>The model of a checkpoint written by a data-parallel run, loaded whole for the sample.</summary>
    public Transformer LoadForSampling(string checkpoint, Transformer trained) =>
        PretrainedModel.Load(checkpoint, trained.Backend, trained.DType, trained.Config);

    private TrainOutcome OneDevice(Transformer model, TrainingData data, string? resumeFrom)
    {
        var trainer = new Trainer(model, new AdamWOptimizer(model.Parameters, settings.AdamW), data.Train, data.Validation, options);
        if (resumeFrom is not null)
        {
            if (ShardedCheckpoint.IsSharded(resumeFrom)) ShardedCheckpoint.Restore(resumeFrom, trainer);
            else TrainingCheckpoint.Restore(resumeFrom, model, trainer);
            _lastCheckpointStep = trainer.Step;
        }
        // Checkpoints hold F32 weights; an F64 run is a numerical check and is not saved.
        bool saves = model.Parameters.MasterDType == DType.F32;
        if (!saves) terminal.Note($"--dtype f64: checkpoints hold F32 weights, so this run saves none");
        Describe(trainer.Step);
        var progress = new TrainingProgress(terminal, trainer.Step, options.Steps);
        using var metrics = new MetricsLog(run.MetricsPath);
        var clock = Stopwatch.StartNew();
        string Save(Trainer t) => Saved(t.Step, TrainingCheckpoint.Save(run.Checkpoints, model, t, tokenizer));
        progress.Run(() =>
        {
            try
            {
                trainer.Run(progress.Report, saves ? t => Save(t) : null, metrics, signals.Token);
            }
            catch (OperationCanceledException) when (signals.Requested)
            {
                if (saves && _lastCheckpointStep != trainer.Step) Save(trainer);
            }
        }, () => trainer.Step);
        return new TrainOutcome(trainer.Step, _lastCheckpoint, clock.Elapsed, true, model);
    }

    private TrainOutcome ThreadRanks(Transformer model, TrainingData data, string? resumeFrom, int seed)
    {
        var parallel = new DataParallelOptions { Stage = (ZeroStage)settings.Zero, OffloadOptimizer = settings.Offload }.Validate();
        var config = model.Config;
        var dtype = model.DType;
        var storage = topology.Storage(settings);
        string? initDirectory = settings.Model is string m && Directory.Exists(m) && resumeFrom is null ? m : null;
        terminal.Line($"thread ranks: {DescribeParallelism()}");
        var partition = settings.Pp > 1 ? PipelinePartition.Even(config.Layers, settings.Pp, settings.Chunks) : null;
        if (partition is not null) terminal.Line($"pipeline: {partition}");
        Trainer? rank0 = null;
        int reached = 0;
        var progress = new TrainingProgress(terminal, 0, options.Steps);
        using var metrics = new MetricsLog(run.MetricsPath);
        var clock = Stopwatch.StartNew();
        progress.Run(() =>
        {
            try
            {
                reached = ParallelTraining.Train(topology.Mesh, Plan(settings), parallel, options, settings.AdamW,
                    rank =>
                    {
                        var ctx = rank.Context;
                        var rankModel = new Transformer(config, ctx.Backend, dtype, storage, rank.TensorParallelism, rank.Pipeline,
                            expertParallelism: rank.ExpertParallelism);
                        if (storage == Tessera.Nn.ArenaStorage.Full && resumeFrom is null)
                        {
                            if (initDirectory is not null)
                            {
                                using var hf = HuggingFaceModelDirectory.Open(initDirectory, config);
                                hf.LoadInto(rankModel.Parameters.Parameters, ctx.Backend, rankModel.WholeLayout.Parameters);
                            }
                            else rankModel.InitializeWeights(seed);
                        }
                        rankModel.RecomputeActivations = Recompute(settings);
                        return (rankModel, data.ForRank(options, rank.Groups.Coordinate.Dp, topology.DataParallelSize));
                    },
                    onStep: s => { progress.Report(s); metrics.Append(s); },
                    checkpoint: t =>
                    {
                        var dir = ShardedCheckpoint.Save(run.Checkpoints, t, tokenizer);
                        if (t.Reports) Saved(t.Step, dir);
                    },
                    resume: resumeFrom is null ? null : t => { Capture(t); ShardedCheckpoint.Restore(resumeFrom, t); },
                    cancellation: signals.Token,
                    pipeline: partition, schedule: settings.Schedule, expertParallel: settings.ExpertParallel,
                    weights: t =>
                    {
                        Capture(t);
                        if (storage == Tessera.Nn.ArenaStorage.Deferred)
                        {
                            if (initDirectory is not null) t.LoadWeights(initDirectory);
                            else t.InitializeWeights(seed);
                        }
                    });
            }
            catch (AggregateException e) when (signals.Requested && e.InnerExceptions.All(x => x is OperationCanceledException))
            {
                reached = _lastCheckpointStep;   // every rank saved the step it stopped at
            }
        }, () => rank0?.Step ?? 0);
        return new TrainOutcome(reached, _lastCheckpoint, clock.Elapsed, true, null);

        void Capture(Trainer t) { if (t.Reports) rank0 = t; }
    }

    // A failing rank aborts its communicators before it exits (non-zero), so it never waits in a collective its peers
    // will not join; the launcher then kills the others.
    private TrainOutcome ProcessPerGpu(Transformer model, NcclMesh nccl, TrainingData data, string? resumeFrom, int seed) =>
        nccl.AbortOnFailure(() => TrainProcessPerGpu(model, nccl, data, resumeFrom, seed));

    private TrainOutcome TrainProcessPerGpu(Transformer model, NcclMesh nccl, TrainingData data, string? resumeFrom, int seed)
    {
        var parallel = new DataParallelOptions { Stage = (ZeroStage)settings.Zero, OffloadOptimizer = settings.Offload }.Validate();
        var dp = new Trainer(model, DataParallelism.Create(model, nccl.Groups.Dp, parallel, settings.AdamW, settings.Offload ? new CpuBackend(settings.Threads) : null),
            data.ForRank(options, nccl.Groups.Coordinate.Dp, topology.DataParallelSize), null, options, settings.Schedule);
        if (resumeFrom is not null) ShardedCheckpoint.Restore(resumeFrom, dp);
        else if (topology.ShardedConstruction(settings))
        {
            if (settings.Model is string m && Directory.Exists(m)) dp.LoadWeights(m);
            else dp.InitializeWeights(seed);
        }
        if (topology.Reports)
            terminal.Line($"NCCL processes: {DescribeParallelism()}");
        if (resumeFrom is not null) _lastCheckpointStep = dp.Step;
        var progress = new TrainingProgress(topology.Reports ? terminal : Terminal.Create(TextWriter.Null, terminal.Error, false), dp.Step, options.Steps);
        using var metrics = topology.Reports ? new MetricsLog(run.MetricsPath) : null;
        var clock = Stopwatch.StartNew();
        void Save(Trainer t)
        {
            var dir = ShardedCheckpoint.Save(run.Checkpoints, t, tokenizer);
            if (topology.Reports) Saved(t.Step, dir);
        }
        progress.Run(() =>
        {
            try
            {
                dp.Run(topology.Reports ? progress.Report : null, Save, metrics, signals.Token);
            }
            catch (OperationCanceledException)
            {
                // Every rank stopped after the same step (agreed collectively), so the collective save lines up.
                if (_lastCheckpointStep != dp.Step) Save(dp);
            }
        }, () => dp.Step);
        return new TrainOutcome(dp.Step, _lastCheckpoint, clock.Elapsed, topology.Reports, null);
    }

    private void Describe(int step) =>
        terminal.Line($"training {options.Steps - step} steps{(step > 0 ? $" (from step {step})" : "")} of {options.BatchSize * options.GradientAccumulationSteps} x {options.SequenceLength} tokens" +
            (options.GradientAccumulationSteps > 1 ? $" ({options.GradientAccumulationSteps} micro-batches of {options.BatchSize})" : ""));

    private string Saved(int step, string directory)
    {
        _lastCheckpoint = directory;
        _lastCheckpointStep = step;
        terminal.Line($"checkpoint {directory}");
        foreach (var removed in run.Checkpoints.Prune(settings.KeepLast))
            terminal.Note($"removed {Path.GetFileName(removed)} (--keep-last {settings.KeepLast})");
        return directory;
    }
}
