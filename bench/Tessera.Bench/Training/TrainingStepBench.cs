using System.Diagnostics;
using System.Globalization;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Optim;

namespace Tessera.Bench.Training;

/// <summary>
/// Times whole training steps (forward, cross-entropy, backward, AdamW) on the CPU backend for model
/// presets at given batch shapes, on random tokens, and prints a table: ms/step (median after warm-up), tokens/s and
/// achieved GFLOP/s counted as 6N + 12·L·T·C FLOPs per token (the convention of the PaLM/llm.c MFU figures).
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
            var config = ModelPresets.Get(preset);
            var backend = new CpuBackend(threads);
            var model = new Transformer(config, backend, DType.F32);
            model.InitializeWeights(1);
            var optimizer = new AdamWOptimizer(model.Parameters, new AdamWOptions());
            var rng = new Random(5);
            var tokens = backend.FromHost<int>(Enumerable.Range(0, b * t).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(b, t));
            var targets = backend.FromHost<int>(Enumerable.Range(0, b * t).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(b, t));
            var times = new List<double>();
            for (int s = 0; s < warmup + steps; s++)
            {
                var clock = Stopwatch.StartNew();
                model.Parameters.ZeroGrad();
                model.Loss(tokens, targets, 0, 1.0 / (b * t));
                model.Backward(0);
                optimizer.Step(1e-4);
                backend.Synchronize();
                if (s >= warmup) times.Add(clock.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            double ms = times[times.Count / 2];
            double n = model.Parameters.ParameterCount;
            double flopsPerToken = 6 * n + 12.0 * config.Layers * t * config.Embedding;
            double tokPerS = b * t / (ms / 1000);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {preset} | {b} x {t} | {n / 1e6:F1}M | {ms:F1} | {tokPerS:F0} | {flopsPerToken * tokPerS / 1e9:F1} |"));
        }
        return 0;
    }
}
