using System.Diagnostics;
using System.Globalization;
using Tessera.Cuda;
using Tessera.Cuda.Interop;
using Tessera.Cuda.Runtime;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training.Optim;

namespace Tessera.Bench.Gpu;

/// <summary>
/// Times whole training steps on one GPU (CUDA backend): forward + cross-entropy, backward, AdamW (with global-norm
/// clipping), synthetic random tokens and random init. Each phase is timed with CUDA events; the step is the
/// median over the timed steps after warm-up. Prints one markdown row per case: ms/step, tokens/s, MFU counted as
/// (6N + 12·L·T·C)·tokens/s (PaLM's / llm.c's convention; N includes the padded vocabulary rows) over the H100's
/// dense BF16 peak (989 TFLOP/s) and over the ~790 TFLOP/s a large matrix product reaches there, the peak of the
/// allocator's bytes in use, and the per-phase medians.
/// With the environment variable TESSERA_CUDA_PROFILE=1 it also prints the per-op GPU time of the timed steps
/// (<see cref="CudaOpProfiler"/>); the step times of such a run include the profiler's own overhead.
/// <para>Usage: gpu-train [--preset gpt2-124m] [--batch 64] [--micro 32] [--seq 1024] [--dtype bf16|f32] [--steps 10] [--warmup 3] [--recompute] [--no-fallback]</para>
/// A step of B sequences runs as B / micro micro-batches with gradient accumulation (default micro = B). GPT-2 at
/// B=64, T=1024 needs micro-batches of 32: the logits of 64 x 1024 rows over 50304 columns are 3.3e9 elements, past
/// the 2^31 that a tensor of int dimensions (and the activation store) holds. When a micro-batch does not fit in
/// memory it halves it (unless --no-fallback) and says so.
/// </summary>
public static class GpuTrainingBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        string preset = "gpt2-124m", dtypeName = "bf16";
        int batch = 64, micro = 0, seq = 1024, steps = 10, warmup = 3;
        bool recompute = false, fallback = true, header = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--preset": preset = args[++i]; break;
                case "--batch": batch = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--micro": micro = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--seq": seq = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--dtype": dtypeName = args[++i]; break;
                case "--steps": steps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmup": warmup = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--recompute": recompute = true; break;
                case "--no-fallback": fallback = false; break;
                case "--no-header": header = false; break;
                default: throw new ArgumentException($"gpu-train: unknown argument '{args[i]}'");
            }
        }
        var dtype = dtypeName switch { "bf16" => DType.BF16, "f32" => DType.F32, _ => throw new ArgumentException($"--dtype {dtypeName}: expected bf16 or f32") };
        if (header)
        {
            Console.WriteLine("| system | model | dtype | B x T | recompute | ms/step | tokens/s | MFU (989) | MFU (790) | peak GiB | fwd+loss ms | bwd ms | optim ms |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        }
        if (micro <= 0) micro = batch;
        if (batch % micro != 0) throw new ArgumentException($"--micro {micro} must divide --batch {batch}");
        while (true)
        {
            try
            {
                Console.WriteLine(Measure(preset, dtype, batch, micro, seq, steps, warmup, recompute));
                return 0;
            }
            catch (CudaOutOfMemoryException e) when (fallback && micro > 1)
            {
                Console.Error.WriteLine($"gpu-train: micro-batch {micro} does not fit ({e.Message.Split('\n')[0]}); trying {micro / 2}");
                micro /= 2;
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        }
    }

    private static string Measure(string preset, DType dtype, int b, int micro, int t, int steps, int warmup, bool recompute)
    {
        using var backend = new CudaBackend();
        var config = ModelPresets.Get(preset);
        var model = new Transformer(config, backend, dtype) { RecomputeActivations = recompute, ValidateInputs = false };
        BenchWeights.Initialize(model, seed: 1);
        var optimizer = new AdamWOptimizer(model.Parameters, new AdamWOptions());
        var rng = new Random(5);
        int n = b * t, accum = b / micro, nMicro = micro * t;
        var tokens = backend.FromHost<int>(Enumerable.Range(0, nMicro).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(micro, t));
        var targets = backend.FromHost<int>(Enumerable.Range(0, nMicro).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(micro, t));
        var lossSum = backend.Zeros(new Shape(1), model.LossDType);
        // Events: start, then (after forward+loss, after backward) per micro-batch, then after the optimizer; no host wait inside a step.
        var events = Enumerable.Range(0, 2 * accum + 2).Select(_ => new CudaEvent(backend.CudaDevice)).ToArray();
        var step = new List<double>(); var fwd = new List<double>(); var bwd = new List<double>(); var opt = new List<double>(); var wall = new List<double>();
        double loss = 0;
        for (int s = 0; s < warmup + steps; s++)
        {
            if (s == warmup) backend.Profiler?.Reset();        // the per-op table covers the timed steps only
            var clock = Stopwatch.StartNew();
            events[0].Record(backend.Stream);
            model.Parameters.ZeroGrad();
            backend.Fill(lossSum, 0);
            for (int m = 0; m < accum; m++)
            {
                var losses = model.Loss(tokens, targets, 0, 1.0 / n);
                backend.Sum(losses, lossSum, 1.0 / n, accumulate: true);
                events[1 + 2 * m].Record(backend.Stream);
                model.Backward(0);
                events[2 + 2 * m].Record(backend.Stream);
            }
            optimizer.Step(1e-4);
            events[^1].Record(backend.Stream);
            loss = backend.ReadScalar(lossSum);          // the one host read per step, as in the Trainer
            events[^1].Synchronize();
            if (s < warmup) continue;
            wall.Add(clock.Elapsed.TotalMilliseconds);
            step.Add(events[^1].ElapsedSince(events[0]));
            opt.Add(events[^1].ElapsedSince(events[^2]));
            double f = 0, bw = 0;
            for (int m = 0; m < accum; m++)
            {
                f += events[1 + 2 * m].ElapsedSince(events[2 * m]);
                bw += events[2 + 2 * m].ElapsedSince(events[1 + 2 * m]);
            }
            fwd.Add(f);
            bwd.Add(bw);
        }
        foreach (var e in events) e.Dispose();
        if (backend.Profiler is { } profiler)
        {
            Console.WriteLine();
            Console.WriteLine($"Per-op GPU time (TESSERA_CUDA_PROFILE=1, {preset} {dtype} B={b} ({accum}x{micro}) T={t}, recompute={recompute}; event pair per op, per step over {steps} steps):");
            Console.WriteLine();
            Console.WriteLine(profiler.Table(steps));
        }
        if (!double.IsFinite(loss)) throw new InvalidOperationException($"gpu-train: loss is {loss}");
        double ms = Median(step), tokPerS = n / (ms / 1000);
        double flopsPerToken = 6.0 * model.Parameters.ParameterCount + 12.0 * config.Layers * t * config.Embedding;
        double achieved = flopsPerToken * tokPerS;
        double peakGiB = backend.Allocator.Statistics.PeakBytesInUse / (double)(1L << 30);
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"gpu-train: {preset} {dtype} B={b} T={t} recompute={recompute} on {backend.CudaDevice.Name}: loss {loss:F4}, event ms/step {ms:F1}, wall ms/step {Median(wall):F1}"));
        return string.Create(CultureInfo.InvariantCulture,
            $"| Tessera | {preset} | {dtype} | {(accum > 1 ? $"{b} ({accum}x{micro})" : b.ToString(CultureInfo.InvariantCulture))} x {t} | {(recompute ? "yes" : "no")} | {ms:F1} | {tokPerS:F0} | {achieved / 989e12:P1} | {achieved / 790e12:P1} | {peakGiB:F1} | {Median(fwd):F1} | {Median(bwd):F1} | {Median(opt):F1} |");
    }

    private static double Median(List<double> xs)
    {
        var sorted = xs.Order().ToList();
        return sorted.Count == 0 ? double.NaN : sorted[sorted.Count / 2];
    }
}
