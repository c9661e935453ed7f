using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Cli.Signals;
using Tessera.Distributed.Launch;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Chat;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Runs;

namespace Tessera.Cli.Commands.Train;

/// <summary>
/// <c>tessera train --model HF_DIR --data chat.jsonl --lora R</c>: supervised fine-tuning of LoRA adapters on a frozen Hugging
/// Face model, on one device, on CPU thread ranks (--ranks N) or on launched GPU ranks, with data parallelism or ZeRO 1-3 over
/// the adapters (--zero S) and tensor parallelism (--tp N, --sp: the base and the adapters split over each tp group); <c>--resume</c> continues a stopped run from its latest checkpoint bit for bit. Everything is read
/// and checked (options, model, targets, every chat line, a starting adapter or the checkpoint) before the run directory is
/// touched. Checkpoints (<see cref="LoraCheckpoint"/>) go to OUT/checkpoints every --checkpoint-every steps, at the end and on a
/// stop, and OUT/adapter holds the latest adapter in PEFT's layout.
/// </summary>
public sealed class LoraTrainRun(TrainSettings settings, Terminal terminal)
{
    private readonly RunDirectory _run = new(settings.Out);

    /// <summary>The adapter directory of the run.</summary>
    public string AdapterPath => Path.Combine(_run.Root, "adapter");

    /// <summary>Whether --out holds a LoRA run whose latest checkpoint a --resume continues (so the command needs no --lora).</summary>
    public static bool HoldsLoraRun(string output)
    {
        var latest = new RunDirectory(output).Checkpoints.Latest();
        return latest is not null && File.Exists(Path.Combine(latest, LoraCheckpoint.StateFile));
    }

    /// <summary>Runs and returns the exit code.</summary>
    public int Execute()
    {
        var env = DistributedEnvironment.FromEnvironment();
        var topology = Topology.Of(settings, env);

        // 1. The command: what LoRA fine-tuning does not combine with, and the run directory (a resume or a fresh run).
        CheckCombinations(topology);
        string? resumeFrom = null;
        TrainerState? saved = null;
        if (settings.Resume)
        {
            resumeFrom = _run.Checkpoints.Latest() ?? throw new UsageException($"--resume: {settings.Out} has no checkpoint to resume ({_run.Checkpoints.Root}/latest is missing); start the run without --resume");
            saved = TrainingCheckpoint.ReadState(resumeFrom);
            if (saved.Lora is null) throw new UsageException($"--resume with --lora: {resumeFrom} is a full-weight checkpoint; resume it without --lora");
            // The base is held as the run held it: an int8 (fp8) run resumes over int8 (fp8) whether or not --quantize is given again.
            if (saved.Lora.BaseQuantization == "int8") settings = settings with { Quantize = Tessera.Nn.Quantization.WeightQuantization.Int8 };
            else if (saved.Lora.BaseQuantization == "fp8") settings = settings with { Quantize = Tessera.Nn.Quantization.WeightQuantization.Fp8 };
            else if (saved.Lora.BaseQuantization == "int4") settings = settings with { Quantize = Tessera.Nn.Quantization.WeightQuantization.Int4 };
            else if (settings.Quantize != Tessera.Nn.Quantization.WeightQuantization.None)
                throw new UsageException($"--quantize {settings.Quantize.ToString().ToLowerInvariant()}: {resumeFrom} trained its adapters over a base in its dtype; resume it without --quantize");
        }
        else if ((_run.DescribeExistingRun() ?? (Directory.Exists(AdapterPath) ? "an adapter" : null)) is string existing)
            throw new UsageException($"--out {settings.Out} already holds a run ({existing}); add --resume to continue it, or give another --out (or delete the directory)");
        var recorded = saved is null ? null : _run.ReadSources();
        string modelDir = settings.Model ?? recorded?.Model ?? saved?.Lora?.BaseModel
            ?? throw new UsageException("--lora fine-tunes a Hugging Face model: give --model DIR (a directory with config.json and safetensors)");
        string dataPath = settings.Data ?? recorded?.Data ?? "";
        if (!Directory.Exists(modelDir))
            throw new UsageException($"--lora fine-tunes a Hugging Face model: --model {modelDir} is no directory (give a directory with config.json and safetensors)");
        if (!dataPath.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase))
            throw new UsageException("--lora trains on chat data: give --data FILE.jsonl with one {\"messages\": [...]} per line");
        var savedWorld = resumeFrom is null ? 1 : ResumeCheck.SavedDataParallelSize(resumeFrom);
        var (options, dtype, _, seed) = settings.Resolve(saved, savedWorld, topology.DataParallelSize);
        options = options with { EvalEvery = 0 };
        options.Validate();
        if (dtype == DType.BF16 && topology.Device.Kind != DeviceKind.Cuda)
            throw new UsageException("--dtype bf16 (mixed precision) needs --device cuda: the CPU backend computes in f32 or f64");

        // 2. Model, targets, tokenizer, template and data: all checked before anything is written.
        using var hf = HuggingFaceModelDirectory.Open(modelDir);
        if (topology.TensorParallel > 1 && hf.Config.IsMixtureOfExperts)
            throw new UsageException($"--lora with --tp {topology.TensorParallel}: {modelDir} is a mixture of experts, whose adapters are trained without --tp only (tensor-parallel LoRA covers dense models); drop --tp");
        var lora = Lora(hf.Config, saved?.Lora, seed);
        if (settings.Adapter is string adapterDir)
        {
            var start = PeftAdapter.ReadOptions(adapterDir, hf.Config, seed);
            if (start.Rank != lora.Rank || !start.Targets.SequenceEqual(lora.Targets))
                throw new UsageException($"--adapter {adapterDir}: it has r = {start.Rank} on {string.Join(",", start.Targets.Select(t => t.Name))}; " +
                    $"the command asks r = {lora.Rank} on {string.Join(",", lora.Targets.Select(t => t.Name))}; give the adapter's --lora and --lora-targets");
        }
        var tokenizer = TokenizerLoader.FromDirectory(modelDir);
        if (tokenizer.VocabSize > hf.Config.VocabSize)
            throw new InvalidDataException($"{modelDir}: the tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary only {hf.Config.VocabSize}");
        var examples = ChatDataset.Read(dataPath, ChatFormat.Load(modelDir), tokenizer);
        foreach (var e in examples)
            if (e.Tokens.Any(t => t >= hf.Config.VocabSize))
                throw new InvalidDataException($"{dataPath}:{e.Line}: a token id is outside the model's vocabulary of {hf.Config.VocabSize}");
        if (resumeFrom is not null) CheckResume(resumeFrom, options, topology.DataParallelSize, hf.Config, dtype);
        var probe = new ChatExampleLoader(examples, options.BatchSize, options.SequenceLength, padToken: 0);
        terminal.Line($"fine-tuning {modelDir} with LoRA r = {lora.Rank}, alpha = {lora.Alpha}, dropout = {lora.Dropout} on {string.Join(", ", lora.Targets.Select(t => t.Name))}, {dtype}");
        terminal.Line($"data: {probe.Count:N0} conversations, {probe.TrainedTokens:N0} assistant tokens within {options.SequenceLength} tokens per row" +
            (probe.ExamplesWithoutTargets > 0 ? $"; {probe.ExamplesWithoutTargets} conversation(s) have none within --seq and teach nothing" : ""));

        // 3. Only now does the run touch its directory.
        Directory.CreateDirectory(_run.Root);
        foreach (var leftover in _run.Checkpoints.RemoveLeftovers()) terminal.Note($"removed {leftover} (left by an interrupted save)");
        if (saved is not null && MetricsLog.TruncateAfter(_run.MetricsPath, saved.Step) is int dropped and > 0)
            terminal.Note($"metrics.jsonl: dropped {dropped} entries after step {saved.Step} (logged after the checkpoint; they are run again)");
        if (resumeFrom is null && topology.Reports) _run.WriteSources(new RunSources(dataPath, null, modelDir, modelDir));

        // 4. Train until done or stopped.
        var plan = new LoraTrainPlan(settings, options, dtype, lora, Path.GetFullPath(modelDir), examples, resumeFrom, topology, saved?.Step ?? 0);
        TrainOutcome outcome;
        (bool Requested, int ExitCode, string Name) stop;
        using (var signals = new StopSignals(terminal.Note, "finishing the step in progress, then saving a checkpoint"))
        {
            outcome = new LoraTrainSession(plan, _run, AdapterPath, terminal, signals).Train();
            stop = (signals.Requested, signals.ExitCode, signals.SignalName);
        }

        // 5. Report.
        if (!topology.Reports) return stop.Requested ? stop.ExitCode : ExitCodes.Success;
        if (stop.Requested)
        {
            terminal.Line($"stopped by {stop.Name} after step {outcome.Step} of {options.Steps}; checkpoint {outcome.Checkpoint}; adapter {AdapterPath}");
            if (outcome.Step < options.Steps) terminal.Line($"resume with: tessera train --out {settings.Out} --resume");
            return stop.ExitCode;
        }
        terminal.Line($"done: {outcome.Step} steps in {Durations.Format(outcome.Elapsed.TotalSeconds)}; adapter {AdapterPath} (PEFT: adapter_config.json, {PeftAdapter.WeightsFile})");
        terminal.Line($"merge it into a full model with: tessera export --model {modelDir} --adapter {AdapterPath} --out DIR");
        return ExitCodes.Success;
    }

    private void CheckCombinations(Topology topology)
    {
        if (settings.Pp > 1)
            throw new UsageException("--lora does not combine with --pp: pipeline stages build no adapters; split the base with --tp N (tensor parallelism, with --sp if wanted) " +
                "and use data parallelism: --ranks N (CPU) or a launched GPU run, with --zero 1|2|3 if wanted");
        if (settings.Offload)
            throw new UsageException("--lora does not combine with --offload: the adapters' optimizer state is too small to be worth offloading; use --zero 1|2|3 over data-parallel ranks instead");
        if (settings.TensorParallel > 1 && settings.Quantize != Tessera.Nn.Quantization.WeightQuantization.None)
            throw new UsageException($"--lora with --tp and --quantize {settings.Quantize.ToString().ToLowerInvariant()}: adapters over a quantized base are trained without --tp only; drop one of them");
        if (settings.Zero > 0 && topology.Kind == TopologyKind.OneDevice)
            throw new UsageException("--zero needs --ranks of 2 or more, or a launched multi-GPU run");
        if (topology.Kind == TopologyKind.ThreadRanks && topology.Device.Kind != DeviceKind.Cpu)
            throw new UsageException("--ranks runs CPU thread ranks; for GPUs start one process per GPU with 'tessera launch'");
        if (settings.Resume && settings.Adapter is not null)
            throw new UsageException("--adapter starts a new run from an adapter; --resume continues this run from its checkpoint: give one of them");
        if (settings.ValidationData is not null) throw new UsageException("--lora: --val-data is not supported");
        if (settings.Recompute && settings.LoraDropout > 0)
            throw new UsageException("--lora-dropout with --recompute: the recomputed forward would draw other dropout masks than the first; drop one of them");
    }

    /// <summary>
    /// The LoRA options: the command's, or on a resume the checkpoint's (an option given that differs from the checkpoint is a
    /// usage error naming both, before anything is written).
    /// </summary>
    private LoraOptions Lora(TransformerConfig config, LoraState? saved, int seed)
    {
        IReadOnlyList<LoraTarget> targets;
        try
        {
            targets = LoraTargets.Parse(config, settings.LoraTargets ?? saved?.Targets ?? LoraTargets.DefaultOf(config));
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException)
        {
            throw new UsageException($"--lora-targets: {e.Message}");
        }
        if (saved is not null)
        {
            void Same<T>(string option, T? asked, T had) where T : struct
            {
                if (asked is T a && !EqualityComparer<T>.Default.Equals(a, had))
                    throw new UsageException($"--resume: {option} {a} differs from the run's checkpoint ({had}); leave it out to continue the run");
            }
            Same("--lora", settings.LoraRank, saved.Rank);
            Same("--lora-alpha", settings.LoraAlpha, saved.Alpha);
            Same("--lora-dropout", settings.LoraDropout == 0 ? null : settings.LoraDropout, saved.Dropout);
            if (!targets.Select(t => t.Name).SequenceEqual(saved.Targets))
                throw new UsageException($"--resume: --lora-targets {string.Join(",", targets.Select(t => t.Name))} differ from the run's checkpoint ({string.Join(",", saved.Targets)}); leave it out to continue the run");
            return new LoraOptions { Rank = saved.Rank, Alpha = saved.Alpha, Dropout = saved.Dropout, Seed = seed, Targets = targets }.Validate();
        }
        var rank = settings.LoraRank ?? throw new UsageException("--lora R: give the adapters' rank");
        return new LoraOptions { Rank = rank, Alpha = settings.LoraAlpha ?? rank, Dropout = settings.LoraDropout, Seed = seed, Targets = targets }.Validate();
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
    }
}
