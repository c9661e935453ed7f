using System.CommandLine;
using Spectre.Console;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Inference;
using Tessera.Inference.Benchmarks;
using Tessera.Models;
using Tessera.Nn.Quantization;
using Tessera.Tensors;
using Tessera.Training.Benchmarks;
using Tessera.Training.Checkpoints;
using static Tessera.Cli.Commands.Bench.BenchTable;

namespace Tessera.Cli.Commands.Bench;

/// <summary>tessera bench generate: prefill and decode speed of greedy generation from a random prompt.</summary>
public sealed class BenchGenerateCommand : Command
{
    private readonly Option<string> _model = SharedOptions.Model("a preset (random weights) or a checkpoint, run or Hugging Face directory", "gpt2-tiny");
    private readonly Option<int?> _promptTokens = SharedOptions.AtLeast(new Option<int?>("--prompt-tokens") { Description = "length of the random prompt [default: 512, at most half the context]", HelpName = "N" }, 1);
    private readonly Option<int?> _maxTokens = SharedOptions.AtLeast(new Option<int?>("--max-tokens") { Description = "new tokens to generate [default: 256, at most what else fits the context]", HelpName = "N" }, 1);
    private readonly Option<int> _repeat = SharedOptions.Int("--repeat", "N", "rounds; with more than one, the first warms up", 2, min: 1);
    private readonly Option<bool> _noGraph = SharedOptions.Flag("--no-graph", "launch every decode op from the host instead of replaying a recorded CUDA graph");
    private readonly Option<Device> _device = SharedOptions.Device();
    private readonly Option<DType> _dtype = SharedOptions.DType("weights' dtype (bf16 needs cuda)", DType.F32, DType.BF16);
    private readonly Option<int> _threads = SharedOptions.Threads();
    private readonly Option<WeightQuantization> _quantize = SharedOptions.Quantize();

    /// <summary>Declares the options.</summary>
    public BenchGenerateCommand(Terminal terminal) : base("generate", "time prefill and decoding of greedy generation from a random prompt")
    {
        foreach (var o in new Option[] { _model, _promptTokens, _maxTokens, _repeat, _noGraph, _device, _dtype, _quantize, _threads }) Options.Add(o);
        SetAction(parse => Run(parse, terminal));
    }

    private int Run(ParseResult parse, Terminal terminal)
    {
        var device = parse.GetValue(_device);
        var dtype = parse.GetValue(_dtype);
        int threads = parse.GetValue(_threads);
        if (dtype == DType.BF16 && device.Kind != DeviceKind.Cuda)
            throw new UsageException("--dtype bf16 needs --device cuda: the CPU backend computes in f32");
        string spec = parse.GetValue(_model)!;
        // A preset is checked before a device is opened; a directory's configuration is known once it is loaded.
        var preset = Directory.Exists(spec) ? null : Presets.Get(spec);
        if (preset is not null) Options(preset);

        var quantization = parse.GetValue(_quantize);
        var backend = BackendFactory.Create(device, threads);
        using var owned = backend as IDisposable;
        Transformer model;
        if (preset is not null)
        {
            model = quantization != WeightQuantization.None ? PretrainedModel.Quantized(preset, backend, dtype, quantization: quantization) : new Transformer(preset, backend, dtype);
            BenchmarkWeights.Initialize(model, seed: 2);
        }
        else model = Loading.Run(terminal, $"loading {spec}", () => TrainedModel.Load(spec, backend, dtype, quantization: quantization).Model);
        var options = Options(model.Config);
        terminal.Line($"bench generate: {Describe(spec, model)} on {DeviceName(backend, threads)}");
        terminal.Line($"{options.Rounds} round(s) of a {options.PromptLength}-token random prompt + {options.NewTokens} greedy tokens" +
            (options.Rounds > 1 ? "; the first warms up" : ""));
        var r = Loading.Run(terminal, "measuring", () => new GenerationBenchmark(model, options, PeakBytes(backend)).Run());

        var table = Create("model", "params", "dtype", "decode step", "prompt", "new", "prefill ms", "prefill tokens/s", "decode ms/token", "decode tokens/s", "GB/s", "peak memory");
        table.AddRow(spec, Millions(r.ParameterCount), quantization != WeightQuantization.None ? $"{quantization.ToString().ToLowerInvariant()} + {dtype}" : dtype.ToString(), r.DecodeStepReplayed ? "graph" : "eager", $"{r.PromptLength}", $"{r.NewTokens}",
            Num(r.PrefillMilliseconds, "F1"), Num(r.PrefillTokensPerSecond, "F0"), Num(r.DecodeMillisecondsPerToken, "F2"), Num(r.DecodeTokensPerSecond, "F1"),
            Num(r.BandwidthBytesPerSecond / 1e9, "F1"), GiB(r.PeakDeviceBytes));
        terminal.Line();
        terminal.Write(table);
        terminal.Line();
        terminal.Line($"GB/s: the weights ({Num(r.WeightBytesPerToken / 1e6, "F1")} MB) and on average {Num(r.KvCacheBytesPerToken / 1e6, "F2")} MB of cached keys and values read per decoded token, over the decode time (median of {r.MeasuredRounds} round(s)).");
        return 0;

        // Defaults follow the model's context, so no option is needed for a small model; given values are checked against it.
        GenerationBenchmarkOptions Options(TransformerConfig config)
        {
            int context = config.MaxSequenceLength;
            int? promptLength = parse.GetValue(_promptTokens), newTokens = parse.GetValue(_maxTokens);
            int p = promptLength ?? Math.Max(1, Math.Min(Math.Min(512, context / 2), newTokens is int n ? context - n : int.MaxValue));
            return Validated(() => new GenerationBenchmarkOptions
            {
                PromptLength = p,
                NewTokens = newTokens ?? Math.Min(256, context - p),
                Rounds = parse.GetValue(_repeat),
                Generation = new GenerationOptions { CaptureGraph = !parse.GetValue(_noGraph) },
            }.Validate(config), ("PromptLength", "--prompt-tokens"), ("NewTokens", "--max-tokens"), ("Rounds", "--repeat"));
        }
    }
}
