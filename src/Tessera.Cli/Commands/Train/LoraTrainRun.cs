using System.Diagnostics;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Cli.Signals;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Chat;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Runs;

namespace Tessera.Cli.Commands.Train;

/// <summary>
/// <c>tessera train --model HF_DIR --data chat.jsonl --lora R</c>: supervised fine-tuning of LoRA adapters on a frozen Hugging
/// Face model, one device. Everything is read and checked (options, model, targets, every chat line, a starting adapter) before
/// the run directory is touched; the adapter is written to OUT/adapter in PEFT's layout every --checkpoint-every steps, at the
/// end and on a stop.
/// </summary>
public sealed class LoraTrainRun(TrainSettings settings, Terminal terminal)
{
    private readonly RunDirectory _run = new(settings.Out);

    /// <summary>The adapter directory of the run.</summary>
    public string AdapterPath => Path.Combine(_run.Root, "adapter");

    /// <summary>Runs and returns the exit code.</summary>
    public int Execute()
    {
        // 1. The command: what LoRA fine-tuning does not combine with.
        if (settings.Model is not string modelDir || !Directory.Exists(modelDir))
            throw new UsageException("--lora fine-tunes a Hugging Face model: give --model DIR (a directory with config.json and safetensors)");
        if (settings.Data is not string dataPath || !dataPath.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase))
            throw new UsageException("--lora trains on chat data: give --data FILE.jsonl with one {\"messages\": [...]} per line");
        if (settings.Ranks > 1 || settings.TensorParallel > 1 || settings.Pp > 1 || settings.Zero > 0 || settings.Offload)
            throw new UsageException("--lora runs on one device: --ranks, --tp, --pp, --zero and --offload are not supported with it");
        if (settings.Resume) throw new UsageException("--lora: --resume is not supported; continue from the saved adapter with --adapter OUT/adapter and a new --out");
        if (settings.ValidationData is not null) throw new UsageException("--lora: --val-data is not supported");
        if (settings.Recompute && settings.LoraDropout > 0)
            throw new UsageException("--lora-dropout with --recompute: the recomputed forward would draw other dropout masks than the first; drop one of them");
        string? existing = _run.DescribeExistingRun() ?? (Directory.Exists(AdapterPath) ? "an adapter" : null);
        if (existing is not null)
            throw new UsageException($"--out {settings.Out} already holds a run ({existing}); give another --out (or delete the directory)");
        var (options, dtype, _, seed) = settings.Resolve(null, 1, 1);
        options = options with { EvalEvery = 0 };
        options.Validate();
        if (dtype == DType.BF16 && settings.Device.Kind != DeviceKind.Cuda)
            throw new UsageException("--dtype bf16 (mixed precision) needs --device cuda: the CPU backend computes in f32 or f64");

        // 2. Model, targets, tokenizer, template and data: all checked before anything is written.
        using var hf = HuggingFaceModelDirectory.Open(modelDir);
        LoraOptions lora;
        try
        {
            lora = new LoraOptions
            {
                Rank = settings.LoraRank!.Value, Alpha = settings.LoraAlpha ?? settings.LoraRank!.Value, Dropout = settings.LoraDropout, Seed = seed,
                Targets = LoraTargets.Parse(hf.Config, settings.LoraTargets ?? LoraTargets.DefaultOf(hf.Config.Family)),
            }.Validate();
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException)
        {
            throw new UsageException($"--lora-targets: {e.Message}");
        }
        if (settings.Adapter is string adapterDir)
        {
            var saved = PeftAdapter.ReadOptions(adapterDir, hf.Config, seed);
            if (saved.Rank != lora.Rank || !saved.Targets.SequenceEqual(lora.Targets))
                throw new UsageException($"--adapter {adapterDir}: it has r = {saved.Rank} on {string.Join(",", saved.Targets.Select(t => t.Name))}; " +
                    $"the command asks r = {lora.Rank} on {string.Join(",", lora.Targets.Select(t => t.Name))}; give the adapter's --lora and --lora-targets");
        }
        var tokenizer = TokenizerLoader.FromDirectory(modelDir);
        if (tokenizer.VocabSize > hf.Config.VocabSize)
            throw new InvalidDataException($"{modelDir}: the tokenizer has {tokenizer.VocabSize} tokens but the model's vocabulary only {hf.Config.VocabSize}");
        var format = ChatFormat.Load(modelDir);
        var examples = ChatDataset.Read(dataPath, format, tokenizer);
        var loader = new ChatExampleLoader(examples, options.BatchSize, options.SequenceLength, padToken: 0);
        foreach (var e in examples)
            if (e.Tokens.Any(t => t >= hf.Config.VocabSize))
                throw new InvalidDataException($"{dataPath}:{e.Line}: a token id is outside the model's vocabulary of {hf.Config.VocabSize}");

        var backend = BackendFactory.Create(settings.Device, settings.Threads);
        var model = new Transformer(hf.Config, backend, dtype, ArenaStorage.Frozen, lora: lora);
        hf.LoadInto(model.Parameters.Parameters, backend);
        model.RecomputeActivations = settings.Recompute;
        var adapters = model.Adapters!;
        if (settings.Adapter is string start) PeftAdapter.Load(start, adapters);

        // 3. Train.
        terminal.Line($"fine-tuning {modelDir} with LoRA r = {lora.Rank}, alpha = {lora.Alpha}, dropout = {lora.Dropout} on {string.Join(", ", lora.Targets.Select(t => t.Name))}: " +
            $"{adapters.ParameterCount:N0} trainable parameters beside {model.Layout.ParameterCount:N0} frozen, {dtype} on {backend.Device}");
        terminal.Line($"data: {loader.Count:N0} conversations, {loader.TrainedTokens:N0} assistant tokens within {options.SequenceLength} tokens per row" +
            (loader.ExamplesWithoutTargets > 0 ? $"; {loader.ExamplesWithoutTargets} conversation(s) have none within --seq and teach nothing" : ""));
        var trainer = new Trainer(model, new SingleDevice(adapters.Arena, new AdamWOptimizer(adapters.Arena, settings.AdamW)), loader, null, options);
        Directory.CreateDirectory(_run.Root);
        _run.WriteSources(new RunSources(dataPath, null, modelDir, modelDir));
        var progress = new TrainingProgress(terminal, 0, options.Steps);
        using var metrics = new MetricsLog(_run.MetricsPath);
        var clock = Stopwatch.StartNew();
        int savedStep = -1;
        void Save(Trainer t)
        {
            PeftAdapter.Save(AdapterPath, adapters, Path.GetFullPath(modelDir));
            savedStep = t.Step;
        }
        using (var signals = new StopSignals(terminal.Note, "finishing the step in progress, then saving the adapter"))
        {
            progress.Run(() =>
            {
                try
                {
                    trainer.Run(progress.Report, Save, metrics, signals.Token);
                }
                catch (OperationCanceledException) when (signals.Requested)
                {
                    if (savedStep != trainer.Step) Save(trainer);
                }
            }, () => trainer.Step);
            if (signals.Requested)
            {
                terminal.Line($"stopped by {signals.SignalName} after step {trainer.Step} of {options.Steps}; adapter {AdapterPath}");
                return signals.ExitCode;
            }
        }
        terminal.Line($"done: {trainer.Step} steps in {Durations.Format(clock.Elapsed.TotalSeconds)}; adapter {AdapterPath} (PEFT: adapter_config.json, {PeftAdapter.WeightsFile})");
        terminal.Line($"merge it into a full model with: tessera export --model {modelDir} --adapter {AdapterPath} --out DIR");
        return ExitCodes.Success;
    }
}
