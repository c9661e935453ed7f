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
/// <para>Usage: gpu-train [--preset gpt2-124m] [--batch 64] [--seq 1024] [--dtype bf16|f32] [--steps 10] [--warmup 3] [--recompute] [--no-fallback]</para>
/// When the batch does not fit, it halves the batch (unless --no-fallback) and says so.
/// </summary>
public static class GpuTrainingBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        string preset = "gpt2-124m", dtypeName = "bf16";
        int batch = 64, seq = 1024, steps = 10, warmup = 3;
        bool recompute = false, fallback = true, header = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--preset": preset = args[++i]; break;
                case "--batch": batch = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
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
        while (true)
        {
            try
            {
                Console.WriteLine(Measure(preset, dtype, batch, seq, steps, warmup, recompute));
                return 0;
            }
            catch (CudaOutOfMemoryException e) when (fallback && batch > 1)
            {
                Console.Error.WriteLine($"gpu-train: B={batch} does not fit ({e.Message.Split('\n')[0]}); trying B={batch / 2}");
                batch /= 2;
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }
        }
    }

    private static string Measure(string preset, DType dtype, int b, int t, int steps, int warmup, bool recompute)
    {
        using var backend = new CudaBackend();
        var config = ModelPresets.Get(preset);
        var model = new Transformer(config, backend, dtype) { RecomputeActivations = recompute, ValidateInputs = false };
        BenchWeights.Initialize(model, seed: 1);
        var optimizer = new AdamWOptimizer(model.Parameters, new AdamWOptions());
        var rng = new Random(5);
        int n = b * t;
        var tokens = backend.FromHost<int>(Enumerable.Range(0, n).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(b, t));
        var targets = backend.FromHost<int>(Enumerable.Range(0, n).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(b, t));
        var lossSum = backend.Zeros(new Shape(1), model.LossDType);
        using CudaEvent e0 = new(backend.CudaDevice), e1 = new(backend.CudaDevice), e2 = new(backend.CudaDevice), e3 = new(backend.CudaDevice);
        var step = new List<double>(); var fwd = new List<double>(); var bwd = new List<double>(); var opt = new List<double>(); var wall = new List<double>();
        double loss = 0;
        for (int s = 0; s < warmup + steps; s++)
        {
            var clock = Stopwatch.StartNew();
            e0.Record(backend.Stream);
            model.Parameters.ZeroGrad();
            backend.Fill(lossSum, 0);
            var losses = model.Loss(tokens, targets, 0, 1.0 / n);
            backend.Sum(losses, lossSum, 1.0 / n);
            e1.Record(backend.Stream);
            model.Backward(0);
            e2.Record(backend.Stream);
            optimizer.Step(1e-4);
            e3.Record(backend.Stream);
            loss = backend.ReadScalar(lossSum);          // the one host read per step, as in the Trainer
            e3.Synchronize();
            if (s < warmup) continue;
            wall.Add(clock.Elapsed.TotalMilliseconds);
            step.Add(e3.ElapsedSince(e0));
            fwd.Add(e1.ElapsedSince(e0));
            bwd.Add(e2.ElapsedSince(e1));
            opt.Add(e3.ElapsedSince(e2));
        }
        if (!double.IsFinite(loss)) throw new InvalidOperationException($"gpu-train: loss is {loss}");
        double ms = Median(step), tokPerS = n / (ms / 1000);
        double flopsPerToken = 6.0 * model.Parameters.ParameterCount + 12.0 * config.Layers * t * config.Embedding;
        double achieved = flopsPerToken * tokPerS;
        double peakGiB = backend.Allocator.Statistics.PeakBytesInUse / (double)(1L << 30);
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"gpu-train: {preset} {dtype} B={b} T={t} recompute={recompute} on {backend.CudaDevice.Name}: loss {loss:F4}, event ms/step {ms:F1}, wall ms/step {Median(wall):F1}"));
        return string.Create(CultureInfo.InvariantCulture,
            $"| Tessera | {preset} | {dtype} | {b} x {t} | {(recompute ? "yes" : "no")} | {ms:F1} | {tokPerS:F0} | {achieved / 989e12:P1} | {achieved / 790e12:P1} | {peakGiB:F1} | {Median(fwd):F1} | {Median(bwd):F1} | {Median(opt):F1} |");
    }

    private static double Median(List<double> xs)
    {
        var sorted = xs.Order().ToList();
        return sorted.Count == 0 ? double.NaN : sorted[sorted.Count / 2];
    }
}
