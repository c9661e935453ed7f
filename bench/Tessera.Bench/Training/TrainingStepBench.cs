using System.Globalization;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Benchmarks;

namespace Tessera.Bench.Training;

/// <summary>
/// Times whole training steps (forward, cross-entropy, backward, AdamW) on the CPU backend for model
/// presets at given batch shapes, on random tokens, and prints a table: ms/step (median after warm-up), tokens/s and
/// achieved GFLOP/s counted as 6N + 12·L·T·C FLOPs per token (the convention of the PaLM/llm.c MFU figures).
/// The measuring is <see cref="TrainingStepBenchmark"/>'s, the same as "tessera bench train"'s.
/// </summary>
public static class TrainingStepBench
{
    public static int Run(string[] args)
    {
        int threads = Environment.ProcessorCount;
        int steps = 10, warmup = 20;
        var cases = new List<(string Preset, int B, int T)>();
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--threads": threads = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--steps": steps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmup": warmup = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                default:
                    // preset:BxT, e.g. gpt2-124m:4x64
                    var parts = args[i].Split(':', 'x');
                    if (parts.Length != 3) throw new ArgumentException($"expected PRESET:BxT, got '{args[i]}'");
                    cases.Add((parts[0], int.Parse(parts[1], CultureInfo.InvariantCulture), int.Parse(parts[2], CultureInfo.InvariantCulture)));
                    break;
            }
        }
        if (cases.Count == 0) cases.AddRange([("gpt2-tiny", 16, 128), ("gpt2-124m", 4, 64)]);

        // The warm-up lets tiered JIT compilation reach optimized code (the first steps run tier-0 code, 2-3x slower).
        Console.WriteLine($"CPU training step, {threads} threads, median of {steps} steps after {warmup} warm-up steps");
        Console.WriteLine($"| model | B x T | params | ms/step | tokens/s | GFLOP/s |");
        Console.WriteLine($"|---|---|---|---|---|---|");
        foreach (var (preset, b, t) in cases)
        {
            var model = new Transformer(ModelPresets.Get(preset), new CpuBackend(threads), DType.F32);
            model.InitializeWeights(1);
            var options = new TrainingStepBenchmarkOptions { BatchSize = b, SequenceLength = t, Steps = steps, WarmupSteps = warmup };
            var r = new TrainingStepBenchmark(model, options).Run();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {preset} | {b} x {t} | {r.ParameterCount / 1e6:F1}M | {r.StepMilliseconds:F1} | {r.TokensPerSecond:F0} | {r.AchievedFlopsPerSecond / 1e9:F1} |"));
        }
        return 0;
    }
}
