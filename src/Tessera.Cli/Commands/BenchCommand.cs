using System.Globalization;
using System.Text.RegularExpressions;
using Tessera.Cuda;
using Tessera.Inference;
using Tessera.Inference.Benchmarks;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training.Benchmarks;
using Tessera.Training.Checkpoints;

namespace Tessera.Cli.Commands;

/// <summary>
/// tessera bench train | generate: the speed of a training step or of generation on this machine's CPU or GPU,
/// measured by the shared benchmarks of Tessera.Training and Tessera.Inference (the ones bench/Tessera.Bench prints),
/// printed as a markdown table.
/// </summary>
internal static class BenchCommand
{
    public const string Usage = """
        tessera bench train|generate [options]
          train     times whole training steps (forward + loss + backward + AdamW, one host read of the loss) on random tokens
            --model PRESET [gpt2-tiny]  --batch B [16]  --micro M [B: no accumulation]  --seq T [128, or the context if shorter]
            --steps N [10] timed steps (the median is reported)  --warmup N [10] untimed steps first  --recompute
            --peak-tflops X   the GPU's peak for MFU [looked up by name for H100, H200, A100]
          generate  prefill and decode speed of greedy generation from a random prompt
            --model PRESET|DIR [gpt2-tiny] a preset (random weights) or a checkpoint / run / Hugging Face directory
            --prompt N [512, at most half the context]  --new N [256, at most what else fits]  --repeat N [2: the first warms up]
            --no-graph        launch every decode op from the host instead of replaying a recorded CUDA graph
          both: --device cpu|cuda[:N] [cpu]  --dtype f32|bf16 [f32; bf16 needs cuda]  --threads N [all cores]
        """;

    public static int Run(CommandLineArguments args, TextWriter output)
    {
        if (args.Positional.Count != 1 || args.Positional[0] is not ("train" or "generate"))
            throw new UsageException(args.Positional.Count == 0
                ? "bench needs what to measure: 'train' or 'generate'"
                : $"bench measures 'train' or 'generate', not '{string.Join(' ', args.Positional)}'");
        return args.Positional[0] == "train" ? Train(args, output) : Generate(args, output);
    }

    private static int Train(CommandLineArguments args, TextWriter output)
    {
        var common = Common.Read(args);
        string preset = args.String("model", "gpt2-tiny")!;
        int batch = args.Int("batch", 16);
        int? micro = OptionalInt(args, "micro");
        int? seq = OptionalInt(args, "seq");
        int steps = args.Int("steps", 10);
        int warmup = args.Int("warmup", 10);
        bool recompute = args.Flag("recompute");
        double? peakTflops = args.String("peak-tflops") is null ? null : args.Double("peak-tflops", 0);
        args.ThrowOnUnknown("bench train");
        if (peakTflops is <= 0) throw new UsageException($"--peak-tflops ({peakTflops}) must be positive");

        // Everything that can be wrong with the command line fails before a device is opened.
        var config = ModelPresets.Get(preset);
        var options = Validated(() => new TrainingStepBenchmarkOptions
        {
            BatchSize = batch,
            MicroBatchSize = micro,
            SequenceLength = seq ?? Math.Min(128, config.MaxSequenceLength),
            Steps = steps,
            WarmupSteps = warmup,
        }.Validate(config));

        var backend = BackendFactory.Create(common.Device, common.Threads);
        using var owned = backend as IDisposable;
        var model = new Transformer(config, backend, common.DType) { RecomputeActivations = recompute };
        BenchmarkWeights.Initialize(model, seed: 1);
        output.WriteLine($"bench train: {Describe(preset, model)} on {DeviceName(backend, common.Threads)}");
        var benchmark = new TrainingStepBenchmark(model, options, timeline: null, PeakBytes(backend));
        int accumulation = options.BatchSize / options.EffectiveMicroBatchSize;
        output.WriteLine($"{options.WarmupSteps} warm-up + {options.Steps} timed steps of {options.BatchSize} x {options.SequenceLength} tokens" +
            (accumulation > 1 ? $" ({accumulation} micro-batches of {options.EffectiveMicroBatchSize})" : "") + (recompute ? ", activations recomputed" : ""));
        output.Flush();
        benchmark.WarmUp();
        var r = benchmark.Measure();

        (double FlopsPerSecond, string Label)? peak = backend is not CudaBackend cuda ? null
            : peakTflops is double given ? (given * 1e12, "given with --peak-tflops")
            : GpuPeakFlops.Find(cuda.CudaDevice.Name, common.DType);
        string mfu = peak is { } p ? Num(r.ModelFlopsUtilization(p.FlopsPerSecond) * 100, "F1") + "%" : "n/a";
        string shape = (accumulation > 1 ? $"{r.BatchSize} ({accumulation}x{r.MicroBatchSize})" : Num(r.BatchSize, "F0")) + $" x {r.SequenceLength}";
        output.WriteLine();
        output.WriteLine("| model | params | dtype | B x T | ms/step | tokens/s | TFLOP/s | MFU | peak memory |");
        output.WriteLine("|---|---|---|---|---|---|---|---|---|");
        output.WriteLine($"| {preset} | {Millions(r.ParameterCount)} | {common.DType} | {shape} | {Num(r.StepMilliseconds, "F1")} | {Num(r.TokensPerSecond, "F0")} | {Num(r.AchievedFlopsPerSecond / 1e12, "F2")} | {mfu} | {GiB(r.PeakDeviceBytes)} |");
        output.WriteLine();
        output.WriteLine($"ms/step: median of {r.TimedSteps} steps on the host clock, each ending with its loss read back (last loss {Num(r.FinalLoss, "F3")}).");
        output.WriteLine("TFLOP/s counts (6N + 12·L·T·C) FLOPs per token. " + (peak is { } q
            ? $"MFU is over {Num(q.FlopsPerSecond / 1e12, "F0")} TFLOP/s ({q.Label})."
            : backend is CudaBackend unknown
                ? $"MFU: no known peak for {unknown.CudaDevice.Name} in {common.DType}; give --peak-tflops."
                : "MFU: not reported on the CPU (no reference peak)."));
        return 0;
    }

    private static int Generate(CommandLineArguments args, TextWriter output)
    {
        var common = Common.Read(args);
        string spec = args.String("model", "gpt2-tiny")!;
        int? promptLength = OptionalInt(args, "prompt");
        int? newTokens = OptionalInt(args, "new");
        int rounds = args.Int("repeat", 2);
        bool captureGraph = !args.Flag("no-graph");
        args.ThrowOnUnknown("bench generate");

        // A preset is checked before a device is opened; a directory's configuration is known once it is loaded.
        bool isDirectory = Directory.Exists(spec);
        var preset = isDirectory ? null : ModelPresets.Get(spec);
        if (preset is not null) Options(preset);

        var backend = BackendFactory.Create(common.Device, common.Threads);
        using var owned = backend as IDisposable;
        Transformer model;
        if (preset is not null)
        {
            model = new Transformer(preset, backend, common.DType);
            BenchmarkWeights.Initialize(model, seed: 2);
        }
        else
        {
            var dir = GenerateCommand.ResolveModelDirectory(spec);
            var checkpointConfig = File.Exists(Path.Combine(dir, "trainer_state.json")) ? TrainingCheckpoint.ReadState(dir).Model : null;
            model = PretrainedModel.Load(dir, backend, common.DType, checkpointConfig);
        }
        var options = Options(model.Config);
        output.WriteLine($"bench generate: {Describe(spec, model)} on {DeviceName(backend, common.Threads)}");
        output.WriteLine($"{options.Rounds} round(s) of a {options.PromptLength}-token random prompt + {options.NewTokens} greedy tokens" +
            (options.Rounds > 1 ? "; the first warms up" : ""));
        output.Flush();
        var r = new GenerationBenchmark(model, options, PeakBytes(backend)).Run();

        output.WriteLine();
        output.WriteLine("| model | params | dtype | decode step | prompt | new | prefill ms | prefill tokens/s | decode ms/token | decode tokens/s | GB/s | peak memory |");
        output.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        output.WriteLine($"| {spec} | {Millions(r.ParameterCount)} | {common.DType} | {(r.DecodeStepReplayed ? "graph" : "eager")} | {r.PromptLength} | {r.NewTokens} | {Num(r.PrefillMilliseconds, "F1")} | {Num(r.PrefillTokensPerSecond, "F0")} | {Num(r.DecodeMillisecondsPerToken, "F2")} | {Num(r.DecodeTokensPerSecond, "F1")} | {Num(r.BandwidthBytesPerSecond / 1e9, "F1")} | {GiB(r.PeakDeviceBytes)} |");
        output.WriteLine();
        output.WriteLine($"GB/s: the weights ({Num(r.WeightBytesPerToken / 1e6, "F1")} MB) and on average {Num(r.KvCacheBytesPerToken / 1e6, "F2")} MB of cached keys and values read per decoded token, over the decode time (median of {r.MeasuredRounds} round(s)).");
        return 0;

        // Defaults follow the model's context, so no option is needed for a small model; given values are checked against it.
        GenerationBenchmarkOptions Options(TransformerConfig config)
        {
            int context = config.MaxSequenceLength;
            int p = promptLength ?? Math.Max(1, Math.Min(Math.Min(512, context / 2), newTokens is int n ? context - n : int.MaxValue));
            return Validated(() => new GenerationBenchmarkOptions
            {
                PromptLength = p,
                NewTokens = newTokens ?? Math.Min(256, context - p),
                Rounds = rounds,
                Generation = new GenerationOptions { CaptureGraph = captureGraph },
            }.Validate(config));
        }
    }

    /// <summary>The options both subcommands take.</summary>
    private sealed record Common(string Device, int Threads, DType DType)
    {
        public static Common Read(CommandLineArguments args)
        {
            string device = args.String("device", "cpu")!;
            int threads = args.Int("threads", Environment.ProcessorCount);
            var dtype = args.String("dtype", "f32") switch
            {
                "f32" => DType.F32,
                "bf16" => DType.BF16,
                var other => throw new UsageException($"--dtype {other}: expected f32 or bf16"),
            };
            if (threads <= 0) throw new UsageException($"--threads ({threads}) must be positive");
            // The CPU backend stores BF16 but computes in F32/F64; a BF16 model there would fail at its first op.
            if (dtype == DType.BF16 && device.Trim().StartsWith("cpu", StringComparison.OrdinalIgnoreCase))
                throw new UsageException("--dtype bf16 needs --device cuda: the CPU backend computes in f32");
            return new Common(device, threads, dtype);
        }
    }

    // The benchmark records name their fields; the user typed options. Field names as whole words (Steps, not WarmupSteps).
    private static readonly (Regex Field, string Option)[] OptionOfField =
    [
        (new(@"\bBatchSize\b"), "--batch"), (new(@"\bMicroBatchSize\b"), "--micro"), (new(@"\bSequenceLength\b"), "--seq"),
        (new(@"\bSteps\b"), "--steps"), (new(@"\bWarmupSteps\b"), "--warmup"),
        (new(@"\bPromptLength\b"), "--prompt"), (new(@"\bNewTokens\b"), "--new"), (new(@"\bRounds\b"), "--repeat"),
    ];

    /// <summary>The benchmark options' own validation, reported as a usage error that also names the options involved.</summary>
    private static T Validated<T>(Func<T> build)
    {
        try { return build(); }
        catch (ArgumentException e)
        {
            var options = OptionOfField.Where(o => o.Field.IsMatch(e.Message)).Select(o => o.Option).ToList();
            throw new UsageException(options.Count == 0 ? e.Message : $"{e.Message} ({string.Join(", ", options)})");
        }
    }

    private static int? OptionalInt(CommandLineArguments args, string name) => args.String(name) is null ? null : args.Int(name, 0);

    private static Func<long>? PeakBytes(IBackend backend) =>
        backend is CudaBackend cuda ? () => cuda.Allocator.Statistics.PeakBytesInUse : null;

    private static string Describe(string name, Transformer model)
    {
        var c = model.Config;
        return $"{name} ({c.Family}, {c.Layers} layers, {c.Embedding} wide, {c.Heads} heads, {model.Layout.ParameterCount:N0} parameters) in {model.DType}";
    }

    private static string DeviceName(IBackend backend, int threads) =>
        backend is CudaBackend cuda ? $"{cuda.CudaDevice.Name} ({backend.Device})" : $"{backend.Device} ({threads} threads)";

    private static string Num(double value, string format) => value.ToString(format, CultureInfo.InvariantCulture);

    private static string Millions(long count) => Num(count / 1e6, count < 10_000_000 ? "F2" : "F1") + "M";

    private static string GiB(long? bytes) => bytes is long b ? Num(b / (double)(1L << 30), "F2") + " GiB" : "n/a";
}
