using System.Diagnostics;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Cli.Ranks;
using Tessera.Cli.Plotting;
using Tessera.Cli.Signals;
using Tessera.Cuda;
using Tessera.Cuda.Distributed;
using Tessera.Distributed.Launch;
using Tessera.Distributed.Nccl;
using Tessera.Inference;
using Tessera.Inference.Sampling;
using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;
using Tessera.Training.Runs;

namespace Tessera.Cli.Commands.Train;

/// <summary>
/// One <c>tessera train</c>: check the command against the run directory, build data, model and trainer, train until
/// done or stopped, report. The topology (one device, CPU thread ranks, one process per GPU) decides only how the
/// trainer is built and how a checkpoint is written.
/// </summary>
public sealed class TrainRun(TrainSettings settings, Terminal terminal)
{
    private readonly RunDirectory _run = new(settings.Out);

    /// <summary>Runs and returns the exit code.</summary>
    public int Execute()
    {
        var env = DistributedEnvironment.FromEnvironment();
        var topology = Topology.Of(settings, env);

        // 0. A preset name is checked before anything touches the disk.
        if (settings.Model is string spec && !Directory.Exists(spec)) Presets.Get(spec);

        // 1. The run directory: resume its checkpoint (and check the command against it) or refuse to mix two runs. A resume
        //    reads its data from where the run recorded it (run.json) unless told otherwise.
        string? resumeFrom = settings.Resume ? LatestCheckpoint() : null;
        if (resumeFrom is not null && _run.ReadSources() is RunSources recorded)
            settings = settings with
            {
                Data = settings.Data ?? recorded.Data,
                ValidationData = settings.ValidationData ?? (settings.Data is null ? recorded.ValidationData : null),
                Tokenizer = settings.Tokenizer ?? recorded.Tokenizer,
            };
        TrainerState? saved = resumeFrom is null ? null : TrainingCheckpoint.ReadState(resumeFrom);
        var savedWorld = resumeFrom is null ? 1 : ResumeCheck.SavedDataParallelSize(resumeFrom);
        if (resumeFrom is null && _run.DescribeExistingRun() is string existing)
            throw new UsageException($"--out {settings.Out} already holds a run ({existing}); add --resume to continue it, or give another --out (or delete the directory) to start afresh");
        var (options, dtype, tokenizerSpec, seed) = settings.Resolve(saved, savedWorld, topology.DataParallelSize);
        if (settings.PrintMemory)
        {
            // A plan for any device and layout, printed before the device or the run directory is touched.
            options.Validate();
            return MemoryPlan.Print(terminal, settings, PlannedConfig(saved), options, dtype);
        }
        Validate(dtype, topology);
        options.Validate();
        if (settings.Model is not string dir || !Directory.Exists(dir))   // a preset's or the checkpoint's split is checked before anything is written
            CheckTensorParallel(settings.Model is string preset ? Presets.Get(preset) : saved?.Model ?? Presets.Get("gpt2-tiny"), topology);
        Tessera.Nn.Parallel.PipelinePartition? partition = null;
        if (settings.Pp > 1 || settings.PrintSchedule)
        {
            // The pipeline is checked (and drawn) before the device or the run directory is touched.
            var (checkedPartition, schedule) = PipelinePlan.Check(settings, PlannedConfig(saved), options);
            if (settings.PrintSchedule) return PipelinePlan.Print(terminal, schedule, checkedPartition, options);
            partition = checkedPartition;
        }

        // 2. The device first: a missing GPU or driver fails before anything is written.
        var backend = BackendFactory.Create(topology.Device, settings.Threads);
        var tokenizer = TokenizerFactory.Create(tokenizerSpec);
        var data = TrainingData.Open(settings, options, _run, terminal);
        // A launched rank meets the others first: a tensor-parallel model is built as this rank's part of it.
        using var nccl = topology.Kind == TopologyKind.ProcessPerGpu
            ? new NcclMesh((CudaBackend)backend, env, topology.Mesh, TrainSession.Plan(settings), TimeSpan.FromMinutes(5), partition)
            : null;
        var model = BuildModel(saved, dtype, tokenizer, backend, topology, seed, nccl?.TensorParallelism, nccl?.Pipeline);
        if (resumeFrom is not null) CheckResume(resumeFrom, options, topology.DataParallelSize, model.Config, dtype);
        VocabularyCheck.Ensure(data.AllPaths, model.Config.VocabSize);

        // 3. Only now does the run touch its directory: leftovers of interrupted saves go, metrics past the checkpoint go.
        foreach (var leftover in _run.Checkpoints.RemoveLeftovers()) terminal.Note($"removed {leftover} (left by an interrupted save)");
        if (saved is not null && MetricsLog.TruncateAfter(_run.MetricsPath, saved.Step) is int dropped and > 0)
            terminal.Note($"metrics.jsonl: dropped {dropped} entries after step {saved.Step} (logged after the checkpoint; they are run again)");

        terminal.Line($"model {model.Config.Family}: {model.Config.Layers} layers, {model.Config.Embedding} wide, {model.Config.Heads} heads, {model.Layout.ParameterCount:N0} parameters, {dtype}{(settings.Masters == MasterWeights.Split ? " (split masters)" : "")} on {backend.Device}");
        terminal.Line($"data: {data.Train.TotalTokens:N0} training tokens in {data.TrainShards} shard(s); {(data.Validation is null ? "no validation" : $"{data.Validation.TotalTokens:N0} validation tokens")}");

        if (resumeFrom is null && topology.Reports)
            _run.WriteSources(new RunSources(settings.Data, settings.ValidationData, settings.Model ?? "gpt2-tiny", tokenizerSpec));

        // 4. Train, stoppable between steps (signals are handled only while training: before, Ctrl-C ends the command at
        //    once, as after, when only the plot and the sample are left).
        TrainSession session;
        TrainOutcome outcome;
        (bool Requested, int ExitCode, string Name) stop;
        using (var signals = new StopSignals(terminal.Note, "finishing the step in progress, then saving a checkpoint"))
        {
            session = new TrainSession(settings, options, topology, _run, terminal, signals, tokenizerSpec);
            outcome = session.Train(model, data, resumeFrom, seed, nccl);
            stop = (signals.Requested, signals.ExitCode, signals.SignalName);
        }

        // 5. Report.
        if (!outcome.Reports) return stop.Requested ? stop.ExitCode : ExitCodes.Success;
        WritePlot();
        if (stop.Requested)
        {
            terminal.Line(outcome.Step < options.Steps
                ? $"stopped by {stop.Name} after step {outcome.Step} of {options.Steps}; checkpoint {outcome.Checkpoint}"
                : $"{stop.Name} arrived as the run finished: all {options.Steps} steps done; checkpoint {outcome.Checkpoint}");
            if (outcome.Step < options.Steps)
                terminal.Line($"resume with: tessera train --out {settings.Out} --resume");
            return stop.ExitCode;
        }
        terminal.Line($"done: {outcome.Step} steps in {Durations.Format(outcome.Elapsed.TotalSeconds)}" + (outcome.Checkpoint is null ? "" : $"; checkpoint {outcome.Checkpoint}"));
        if (settings.SampleTokens > 0 && (outcome.SampleModel ?? (outcome.Checkpoint is null ? null : session.LoadForSampling(outcome.Checkpoint, model))) is Transformer sampleModel)
            Sample(sampleModel, tokenizer, settings.SampleTokens, options.Seed);
        return ExitCodes.Success;
    }

    private string LatestCheckpoint()
    {
        if (_run.Checkpoints.Latest() is string latest) return latest;
        throw new UsageException($"--resume: {settings.Out} has no checkpoint to resume ({_run.Checkpoints.Root}/latest is missing); start the run without --resume");
    }

    private void CheckResume(string checkpoint, TrainerOptions options, int world, TransformerConfig config, DType dtype)
    {
        var check = ResumeCheck.Compare(checkpoint, options, world, config, dtype);
        try
        {
            check.ThrowIfRefused(settings.AllowChanges, TrainCommand.OptionOf);
        }
        catch (ResumeMismatchException e)
        {
            throw new UsageException(check.Blockers.Count > 0 ? e.Message : $"{e.Message} with --allow-changes");
        }
        terminal.Line($"resuming {checkpoint} at step {check.Saved.Step} of {options.Steps}");
        if (check.Changes.Count > 0) terminal.Line($"--allow-changes: {check.Describe(TrainCommand.OptionOf)}");
        if (check.ScheduleReplan is string replan) terminal.Line($"--steps {check.Saved.Options.Steps} -> {options.Steps}: {replan}");
    }

    private void Validate(DType dtype, Topology topology)
    {
        if (settings.Zero > 0 || settings.Offload)
            if (topology.Kind == TopologyKind.OneDevice)
                throw new UsageException("--zero and --offload need --ranks of 2 or more, or a launched multi-GPU run");
        if (settings.Masters == MasterWeights.Split && dtype != DType.BF16)
            throw new UsageException($"--masters split keeps the BF16 values as the F32 masters' high halves; this run trains in {dtype.SafetensorsName()}: add --dtype bf16");
        if (settings.Masters == MasterWeights.Split && settings.Offload)
            throw new UsageException("--masters split cannot be offloaded: --offload keeps whole F32 masters on the host; leave out one of the two");
        if (settings.Masters == MasterWeights.Split && (topology.TensorParallel > 1 || topology.PipelineParallel > 1))
            throw new UsageException("--masters split trains on one GPU or on launched data-parallel ranks (--zero 0-3); tensor- and pipeline-parallel ranks (--tp, --pp) keep separate masters");
        if (dtype == DType.BF16 && topology.Device.Kind != DeviceKind.Cuda)
            throw new UsageException("--dtype bf16 (mixed precision) needs --device cuda: the CPU backend computes in f32 or f64");
        if (topology.Kind == TopologyKind.ThreadRanks && topology.Device.Kind != DeviceKind.Cpu)
            throw new UsageException($"{(settings.Ranks > 1 ? "--ranks" : settings.TensorParallel > 1 ? "--tp" : "--pp")} runs CPU thread ranks; for GPUs start one process per GPU with 'tessera launch'");
        if (settings.ExpertParallel > 1)
        {
            if (topology.Kind == TopologyKind.ProcessPerGpu)
                throw new UsageException($"--ep {settings.ExpertParallel}: expert parallelism runs on CPU thread ranks (--ranks N); over launched GPU ranks it is not wired yet");
            if (topology.Kind == TopologyKind.OneDevice)
                throw new UsageException($"--ep {settings.ExpertParallel} splits the experts over data-parallel ranks: add --ranks (a multiple of {settings.ExpertParallel})");
            try
            {
                ParallelTraining.CheckExpertParallel(topology.Mesh, new DataParallelOptions { Stage = (ZeroStage)settings.Zero, OffloadOptimizer = settings.Offload }, settings.ExpertParallel);
            }
            catch (Exception e) when (e is ArgumentException or NotSupportedException)
            {
                throw new UsageException($"--ep {settings.ExpertParallel}: {e.Message}");
            }
        }
        if (settings.Data is null && settings.Tokenizer is not null and not "byte")
            throw new UsageException("--tokenizer: the embedded corpus uses byte tokens; give --data for another tokenizer");
    }

    /// <summary>The configuration the run will train: the Hugging Face directory's, the checkpoint's on resume, or the preset's.</summary>
    private TransformerConfig PlannedConfig(TrainerState? saved)
    {
        string spec = settings.Model ?? (saved is null ? "gpt2-tiny" : "");
        if (spec.Length == 0) return saved!.Model;
        if (!Directory.Exists(spec)) return Presets.Get(spec);
        using var hf = HuggingFaceModelDirectory.Open(spec);
        return hf.Config;
    }

    /// <summary>
    /// The model of this process: a launched rank's part of the whole (<paramref name="tensor"/>, its <paramref name="pipeline"/>
    /// stage), or on one device or thread ranks the whole one (thread ranks build their own parts; this one describes the run
    /// and checks the resume).
    /// </summary>
    private Transformer BuildModel(TrainerState? saved, DType dtype, ITokenizer tokenizer, IBackend backend, Topology topology, int seed,
        Tessera.Nn.Parallel.TensorParallelism? tensor, Tessera.Nn.Parallel.PipelineParallelism? pipeline)
    {
        string spec = settings.Model ?? (saved is null ? "gpt2-tiny" : "");
        var storage = topology.ShardedConstruction(settings) ? ArenaStorage.Deferred : ArenaStorage.Full;
        Transformer model;
        if (spec.Length > 0 && Directory.Exists(spec))
        {
            // Fine-tuning: the directory's weights (written later under sharded construction, by the trainer).
            using var hf = HuggingFaceModelDirectory.Open(spec);
            CheckTensorParallel(hf.Config, topology);
            model = new Transformer(hf.Config, backend, dtype, storage, tensor, pipeline, masters: settings.Masters);
            if (storage == ArenaStorage.Full && saved is null) hf.LoadInto(model.Parameters.Parameters, backend, model.WholeLayout.Parameters);
            terminal.Line($"fine-tuning {spec}");
        }
        else
        {
            // A preset, or on resume the checkpoint's own configuration; the weights come from the checkpoint then.
            var config = spec.Length == 0 ? saved!.Model : Presets.Get(spec);
            if (tokenizer.VocabSize > config.VocabSize)
                throw new UsageException($"--tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary only {config.VocabSize}");
            CheckTensorParallel(config, topology);
            model = new Transformer(config, backend, dtype, storage, tensor, pipeline, masters: settings.Masters);
            if (storage == ArenaStorage.Full && saved is null) model.InitializeWeights(seed);
        }
        model.RecomputeActivations = TrainSession.Recompute(settings);
        return model;
    }

    private void CheckTensorParallel(TransformerConfig config, Topology topology)
    {
        if (settings.ExpertParallel > 1 && !config.IsMixtureOfExperts)
            throw new UsageException($"--ep {settings.ExpertParallel}: the model has no experts; expert parallelism applies to mixture-of-experts models (mixtral, qwen3-moe, qwen2-moe)");
        if (settings.ExpertParallel > 1 && config.Experts % settings.ExpertParallel != 0)
            throw new UsageException($"--ep {settings.ExpertParallel} must divide the model's experts ({config.Experts})");
        if (topology.TensorParallel < 2) return;
        try
        {
            Transformer.CheckTensorParallel(config, topology.TensorParallel);
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--tp {topology.TensorParallel}: {e.Message}");
        }
    }

    private void WritePlot()
    {
        try
        {
            var metrics = File.Exists(_run.MetricsPath) ? MetricsLog.Read(_run.MetricsPath) : [];
            if (metrics.Count == 0) return;
            MetricsPlot.Save(metrics, Path.GetFileName(_run.Root), _run.PlotPath);
            terminal.Line($"plot {_run.PlotPath}");
        }
        catch (Exception e) when (e is IOException or InvalidDataException or TypeInitializationException or DllNotFoundException)
        {
            // The plot is a convenience: a run that trained is not failed for it ('tessera plot' can try again).
            terminal.Note($"no plot: {e.Message}");
        }
    }

    private void Sample(Transformer model, ITokenizer tokenizer, int tokens, int seed)
    {
        var generator = new TextGenerator(model);
        var options = new GenerationOptions
        {
            MaxNewTokens = tokens,
            Sampling = new SamplingOptions { Temperature = 0.8, TopK = 40, Seed = (ulong)seed },
        };
        var decoder = tokenizer.CreateIncrementalDecoder();
        var text = new System.Text.StringBuilder("The ");
        foreach (var id in generator.Generate(tokenizer.Encode("The "), options)) text.Append(decoder.Push(id));
        text.Append(decoder.Flush());
        terminal.Line("sample:");
        terminal.Line(text.ToString());
    }
}
