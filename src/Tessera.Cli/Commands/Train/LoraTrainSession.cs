using System.Diagnostics;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Cli.Ranks;
using Tessera.Cli.Signals;
using Tessera.Cuda;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.HuggingFace;
using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Parallel;
using Tessera.Training.Runs;

namespace Tessera.Cli.Commands.Train;

/// <summary>
/// Trains a <see cref="LoraTrainPlan"/> on its topology. Every rank builds its part of the model: the frozen base read from the
/// Hugging Face directory (held whole on every rank of a data-parallel run, its tensor-parallel slices under --tp; BF16 when bf16)
/// and the adapters, cut as the base layers are; the trainer's strategy trains the adapters alone
/// (<see cref="Transformer.TrainableLayout"/>): <see cref="SingleDevice"/> on one device or one tensor-parallel group, otherwise
/// <see cref="DataParallelism"/> at --zero's stage over the data-parallel ranks. Checkpoints are <see cref="LoraCheckpoint"/>s
/// (the whole adapters, gathered from the ranks), and the adapter of the latest is copied to OUT/adapter.
/// </summary>
public sealed class LoraTrainSession(LoraTrainPlan plan, RunDirectory run, string adapterPath, Terminal terminal, StopSignals signals)
{
    private string? _lastCheckpoint;
    private int _lastCheckpointStep = -1;

    /// <summary>Trains until done or stopped (a stopped run saves the step it stopped after).</summary>
    public TrainOutcome Train() => plan.Topology.Kind switch
    {
        TopologyKind.OneDevice => OneDevice(),
        TopologyKind.ThreadRanks => ThreadRanks(),
        _ => ProcessPerGpu(),
    };

    private TrainOutcome OneDevice()
    {
        var backend = BackendFactory.Create(plan.Topology.Device, plan.Settings.Threads);
        var model = BuildModel(backend);
        var trainer = new Trainer(model, SingleDevice.For(model, plan.Settings.AdamW), Loader(0, 1), null, plan.Options);
        Describe(model, backend.Device.ToString());
        return Run(trainer, reports: true);
    }

    private TrainOutcome ThreadRanks()
    {
        var topology = plan.Topology;
        terminal.Line($"thread ranks: {topology.Describe()}{(plan.Settings.SequenceParallel ? " with sequence parallelism" : "")}, ZeRO stage {plan.Settings.Zero} over the adapters; " +
            (topology.TensorParallel > 1 ? "the frozen base and the adapters split over each tp group" : "the frozen base is held by every rank"));
        using (var hf = HuggingFaceModelDirectory.Open(plan.ModelDir))
            Describe(new Transformer(hf.Config, new Tessera.Tensors.Cpu.CpuBackend(1), plan.DType == DType.BF16 ? DType.F32 : plan.DType, ArenaStorage.Deferred, lora: plan.Lora),
                $"{topology.WorldSize} CPU thread ranks");   // a model declared only: its adapters' count, no base weights read
        Trainer? rank0 = null;
        int reached = 0;
        var progress = new TrainingProgress(terminal, plan.StartStep, plan.Options.Steps);
        using var metrics = new MetricsLog(run.MetricsPath);
        var clock = Stopwatch.StartNew();
        progress.Run(() =>
        {
            try
            {
                reached = ParallelTraining.Train(topology.Mesh, TrainSession.Plan(plan.Settings), Parallel(), plan.Options, plan.Settings.AdamW,
                    rank =>
                    {
                        return (BuildModel(rank.Context.Backend, rank.TensorParallelism), Loader(rank.Groups.Coordinate.Dp, topology.DataParallelSize));
                    },
                    onStep: s => { progress.Report(s); metrics.Append(s); },
                    checkpoint: Save,
                    resume: plan.ResumeFrom is string from ? t => { Capture(t); LoraCheckpoint.Restore(from, t, t.Model.Adapters!); } : null,
                    cancellation: signals.Token,
                    weights: Capture);
            }
            catch (AggregateException e) when (signals.Requested && e.InnerExceptions.All(x => x is OperationCanceledException))
            {
                reached = _lastCheckpointStep;   // every rank saved the step it stopped at
            }
        }, () => rank0?.Step ?? plan.StartStep);
        return new TrainOutcome(reached, _lastCheckpoint, clock.Elapsed, true, null);

        void Capture(Trainer t) { if (t.Reports) rank0 = t; }
    }

    private TrainOutcome ProcessPerGpu()
    {
        var topology = plan.Topology;
        var backend = (CudaBackend)BackendFactory.Create(topology.Device, plan.Settings.Threads);
        using var nccl = new NcclMesh(backend, topology.Environment, topology.Mesh, TrainSession.Plan(plan.Settings), TimeSpan.FromMinutes(5));
        // A failing rank aborts its communicators before it exits, so no peer waits in a collective it will never join.
        return nccl.AbortOnFailure(() =>
        {
            var model = BuildModel(backend, nccl.TensorParallelism);
            var strategy = DataParallelism.Create(model, nccl.Groups.Dp, Parallel(), plan.Settings.AdamW);
            var trainer = new Trainer(model, strategy, Loader(nccl.Groups.Coordinate.Dp, topology.DataParallelSize), null, plan.Options);
            if (topology.Reports) Describe(model, $"{topology.WorldSize} NCCL processes, ZeRO stage {plan.Settings.Zero} over the adapters");
            return Run(trainer, topology.Reports);
        });
    }

    /// <summary>One process's trainer (one device or one launched rank): restore, train, save on a stop.</summary>
    private TrainOutcome Run(Trainer trainer, bool reports)
    {
        if (plan.ResumeFrom is string from)
        {
            LoraCheckpoint.Restore(from, trainer, trainer.Model.Adapters!);
            (_lastCheckpoint, _lastCheckpointStep) = (from, trainer.Step);
        }
        var progress = new TrainingProgress(reports ? terminal : Terminal.Create(TextWriter.Null, terminal.Error, false), trainer.Step, plan.Options.Steps);
        using var metrics = reports ? new MetricsLog(run.MetricsPath) : null;
        var clock = Stopwatch.StartNew();
        progress.Run(() =>
        {
            try
            {
                trainer.Run(reports ? progress.Report : null, Save, metrics, signals.Token);
            }
            catch (OperationCanceledException) when (signals.Requested)
            {
                // Every rank stopped after the same step (agreed collectively), so the collective save lines up.
                if (_lastCheckpointStep != trainer.Step) Save(trainer);
            }
        }, () => trainer.Step);
        return new TrainOutcome(trainer.Step, _lastCheckpoint, clock.Elapsed, reports, null);
    }

    /// <summary>
    /// A rank's model: the frozen base from the directory (a tensor-parallel rank reads its slices) and the adapters (initialized,
    /// or read from --adapter; a tensor-parallel rank keeps its share of one device's values).
    /// </summary>
    private Transformer BuildModel(IBackend backend, TensorParallelism? tensorParallelism = null)
    {
        using var hf = HuggingFaceModelDirectory.Open(plan.ModelDir);
        var model = plan.Settings.Quantize != Tessera.Nn.Quantization.WeightQuantization.None
            ? PretrainedModel.Quantized(hf.Config, backend, plan.DType, lora: plan.Lora, quantization: plan.Settings.Quantize)   // the base a byte a weight
            : new Transformer(hf.Config, backend, plan.DType, ArenaStorage.Frozen, tensorParallelism, lora: plan.Lora);
        hf.LoadInto(model.Layout.Parameters, backend, model.WholeLayout.Parameters);
        model.RecomputeActivations = plan.Settings.Recompute;
        if (plan.Settings.Adapter is string start) PeftAdapter.Load(start, model.Adapters!);
        return model;
    }

    private ChatExampleLoader Loader(int rank, int world) =>
        new(plan.Examples, plan.Options.BatchSize, plan.Options.SequenceLength, rank, world, padToken: 0);

    private DataParallelOptions Parallel() => new DataParallelOptions { Stage = (ZeroStage)plan.Settings.Zero }.Validate();

    private void Describe(Transformer model, string where) =>
        terminal.Line($"{model.Adapters!.ParameterCount:N0} trainable parameters beside {model.Layout.ParameterCount:N0} frozen" +
            $"{(plan.Settings.Quantize != Tessera.Nn.Quantization.WeightQuantization.None ? $" ({plan.Settings.Quantize.ToString().ToLowerInvariant()})" : "")}, {plan.DType} on {where}");

    /// <summary>Collective under data parallelism: the checkpoint (rank 0 writes), then rank 0 copies its adapter to OUT/adapter.</summary>
    private void Save(Trainer trainer)
    {
        var dir = LoraCheckpoint.Save(run.Checkpoints, trainer, trainer.Model.Adapters!, plan.ModelDir, plan.ModelDir);
        if (!trainer.Reports) return;
        (_lastCheckpoint, _lastCheckpointStep) = (dir, trainer.Step);
        CopyAdapter(dir);
        foreach (var removed in run.Checkpoints.Prune(plan.Settings.KeepLast))
            terminal.Note($"removed {Path.GetFileName(removed)} (--keep-last {plan.Settings.KeepLast})");
    }

    /// <summary>OUT/adapter := the checkpoint's PEFT files, through a hidden sibling renamed last (a reader never sees half of one).</summary>
    private void CopyAdapter(string checkpoint)
    {
        string full = Path.GetFullPath(adapterPath).TrimEnd(Path.DirectorySeparatorChar);
        string temporary = Path.Combine(Path.GetDirectoryName(full)!, $".adapter.tmp-{Guid.NewGuid():N}");
        Directory.CreateDirectory(temporary);
        foreach (var name in new[] { PeftAdapterConfig.FileName, PeftAdapter.WeightsFile })
            File.Copy(Path.Combine(checkpoint, name), Path.Combine(temporary, name));
        if (Directory.Exists(full)) Directory.Delete(full, recursive: true);
        Directory.Move(temporary, full);
    }
}
