using System.CommandLine;
using Spectre.Console;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Cuda;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training.Benchmarks;
using static Tessera.Cli.Commands.Bench.BenchTable;

namespace Tessera.Cli.Commands.Bench;

/// <summary>tessera bench train: whole training steps (forward, loss, backward, AdamW, one host read) on random tokens.</summary>
public sealed class BenchTrainCommand : Command
{
    private readonly Option<string> _model = SharedOptions.Model("a model preset (random weights)", "gpt2-tiny");
    private readonly Option<int> _batch = SharedOptions.Batch(16);
    private readonly Option<int?> _micro = SharedOptions.Micro();
    private readonly Option<int?> _seq = SharedOptions.Sequence("tokens per row [default: 128, or the context if shorter]");
    private readonly Option<int> _steps = SharedOptions.Int("--steps", "N", "timed steps (the median is reported)", 10, min: 1);
    private readonly Option<int> _warmup = SharedOptions.Int("--warmup", "N", "untimed steps first", 10, min: 0);
    private readonly Option<bool> _recompute = SharedOptions.Flag("--recompute", "recompute activations in backward");
    private readonly Option<double?> _peak = new("--peak-tflops") { Description = "the GPU's peak TFLOP/s for MFU [default: looked up by name for H100, H200, A100]", HelpName = "X" };
    private readonly Option<Device> _device = SharedOptions.Device();
    private readonly Option<DType> _dtype = SharedOptions.DType("model dtype (bf16 needs cuda)", DType.F32, DType.BF16);
    private readonly Option<int> _threads = SharedOptions.Threads();

    /// <summary>Declares the options.</summary>
    public BenchTrainCommand(Terminal terminal) : base("train", "time whole training steps on random tokens")
    {
        _peak.Validators.Add(r => { if (r.GetValueOrDefault<double?>() is double v && !(v > 0)) r.AddError($"--peak-tflops ({v}) must be positive"); });
        foreach (var o in new Option[] { _model, _batch, _micro, _seq, _steps, _warmup, _recompute, _peak, _device, _dtype, _threads }) Options.Add(o);
        SetAction(parse => Run(parse, terminal));
    }

    private int Run(ParseResult parse, Terminal terminal)
    {
        var device = parse.GetValue(_device);
        var dtype = parse.GetValue(_dtype);
        int threads = parse.GetValue(_threads);
        if (dtype == DType.BF16 && device.Kind != DeviceKind.Cuda)
            throw new UsageException("--dtype bf16 needs --device cuda: the CPU backend computes in f32");
        string preset = parse.GetValue(_model)!;
        // Everything that can be wrong with the command line fails before a device is opened.
        var config = Presets.Get(preset);
        var options = Validated(() => new TrainingStepBenchmarkOptions
        {
            BatchSize = parse.GetValue(_batch),
            MicroBatchSize = parse.GetValue(_micro),
            SequenceLength = parse.GetValue(_seq) ?? Math.Min(128, config.MaxSequenceLength),
            Steps = parse.GetValue(_steps),
            WarmupSteps = parse.GetValue(_warmup),
        }.Validate(config), ("BatchSize", "--batch"), ("MicroBatchSize", "--micro"), ("SequenceLength", "--seq"), ("Steps", "--steps"), ("WarmupSteps", "--warmup"));

        var backend = BackendFactory.Create(device, threads);
        using var owned = backend as IDisposable;
        bool recompute = parse.GetValue(_recompute);
        var model = new Transformer(config, backend, dtype) { RecomputeActivations = recompute };
        BenchmarkWeights.Initialize(model, seed: 1);
        terminal.Line($"bench train: {Describe(preset, model)} on {DeviceName(backend, threads)}");
        var benchmark = new TrainingStepBenchmark(model, options, timeline: null, PeakBytes(backend));
        int accumulation = options.BatchSize / options.EffectiveMicroBatchSize;
        terminal.Line($"{options.WarmupSteps} warm-up + {options.Steps} timed steps of {options.BatchSize} x {options.SequenceLength} tokens" +
            (accumulation > 1 ? $" ({accumulation} micro-batches of {options.EffectiveMicroBatchSize})" : "") + (recompute ? ", activations recomputed" : ""));
        var r = Loading.Run(terminal, "measuring", () => { benchmark.WarmUp(); return benchmark.Measure(); });

        (double FlopsPerSecond, string Label)? peak = backend is not CudaBackend cuda ? null
            : parse.GetValue(_peak) is double given ? (given * 1e12, "given with --peak-tflops")
            : GpuPeakFlops.Find(cuda.CudaDevice.Name, dtype);
        string mfu = peak is { } p ? Num(r.ModelFlopsUtilization(p.FlopsPerSecond) * 100, "F1") + "%" : "n/a";
        string shape = (accumulation > 1 ? $"{r.BatchSize} ({accumulation}x{r.MicroBatchSize})" : Num(r.BatchSize, "F0")) + $" x {r.SequenceLength}";
        var table = Create("model", "params", "dtype", "B x T", "ms/step", "tokens/s", "TFLOP/s", "MFU", "peak memory");
        table.AddRow(preset, Millions(r.ParameterCount), dtype.ToString(), shape, Num(r.StepMilliseconds, "F1"), Num(r.TokensPerSecond, "F0"),
            Num(r.AchievedFlopsPerSecond / 1e12, "F2"), mfu, GiB(r.PeakDeviceBytes));
        terminal.Line();
        terminal.Write(table);
        terminal.Line();
        terminal.Line($"ms/step: median of {r.TimedSteps} steps on the host clock, each ending with its loss read back (last loss {Num(r.FinalLoss, "F3")}).");
        terminal.Line("TFLOP/s counts (6N + 12·L·T·C) FLOPs per token. " + (peak is { } q
            ? $"MFU is over {Num(q.FlopsPerSecond / 1e12, "F0")} TFLOP/s ({q.Label})."
            : backend is CudaBackend unknown
                ? $"MFU: no known peak for {unknown.CudaDevice.Name} in {dtype}; give --peak-tflops."
                : "MFU: not reported on the CPU (no reference peak)."));
        return 0;
    }
}
