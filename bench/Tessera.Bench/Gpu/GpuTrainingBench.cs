using System.Globalization;
using Tessera.Cuda;
using Tessera.Cuda.Interop;
using Tessera.Cuda.Runtime;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Nn.Layers;
using Tessera.Tensors;
using Tessera.Training.Benchmarks;

namespace Tessera.Bench.Gpu;

/// <summary>
/// Times whole training steps on one GPU (CUDA backend): forward + cross-entropy, backward, AdamW (with global-norm
/// clipping), synthetic random tokens and random init, measured by <see cref="TrainingStepBenchmark"/> (as "tessera
/// bench train" is). Each phase is timed with CUDA events; the step is the median over the timed steps after warm-up.
/// Prints one markdown row per case: ms/step, tokens/s, MFU counted as
/// (6N + 12·L·T·C)·tokens/s (PaLM's / llm.c's convention; N includes the padded vocabulary rows) over the H100's
/// dense BF16 peak (989 TFLOP/s) and over the ~790 TFLOP/s a large matrix product reaches there, the peak of the
/// allocator's bytes in use, and the per-phase medians.
/// With <c>--cuda-options ProfileOps=true</c> it also prints the per-op GPU time of the timed steps
/// (<see cref="CudaOpProfiler"/>); the step times of such a run include the profiler's own overhead.
/// <para>Usage: gpu-train [--preset gpt2-124m] [--batch 64] [--micro 32] [--seq 1024] [--dtype bf16|f32] [--steps 10] [--warmup 3] [--recompute] [--norm-bias-sums] [--no-fallback]
/// [--loss-chunk ROWS] [--curve-text FILE [--lr RATE] [--lr-warmup STEPS]] [--lora R[,R...]] [--lora-targets q,k,v,o] [--cuda-options SETTINGS]
/// [--masters separate|split]</para>
/// <c>--masters split</c> (bf16, full fine-tuning) keeps the F32 masters split (<see cref="MasterWeights.Split"/>: the BF16
/// value is the master's high half, a 16-bit plane holds the rest; 2 bytes per parameter less than the default separate F32
/// masters); a bf16 row's "system" cell and a loss curve's header say which.
/// <c>--lora R</c> times LoRA fine-tuning instead: the base frozen in the run's dtype (<see cref="ArenaStorage.Frozen"/>, no
/// gradients or masters), adapters of rank R (alpha = R) on <c>--lora-targets</c> (default q,k,v,o; Llama family) trained by
/// AdamW in their own arena, in the same timed loop. A list such as <c>--lora 0,16</c> prints one row per rank, 0 meaning full
/// fine-tuning, each on a fresh backend so that each row's peak memory is its own. The "trained" column says which: "full" and
/// the parameter count, or "LoRA r=R" and the adapters' count; LoRA's MFU counts 4N + 6·N_A + 12·L·T·C FLOPs per token.
/// SETTINGS are <see cref="CudaBackendOptions.Parse"/>'s form (e.g. <c>TuneMatMulAlgorithms=false</c>,
/// <c>CrossEntropyThreadsPerRow=512</c>); the ones that differ from the defaults are named in the row's "system" column.
/// <c>--norm-bias-sums</c> turns on <see cref="Transformer.ResidualBiasGradientsFromNorms"/> (GPT-2's output projections take
/// their bias gradients from the LayerNorm backwards), for measuring it; the row says so.
/// A step of B sequences runs as B / micro micro-batches with gradient accumulation (default micro = B). The LM head runs
/// fused over chunks of rows (<see cref="Transformer.LossChunkRows"/>, the model's default unless --loss-chunk sets it; the
/// row shows it), so GPT-2 at B=64, T=1024 runs as one micro-batch; --loss-chunk 0 runs the unfused head, whose logits of
/// 64 x 1024 rows over 50304 columns (3.3e9 elements) are past the 2^31 a buffer holds. When a micro-batch does not fit in
/// memory it halves it (unless --no-fallback) and says so.
/// </summary>
public static class GpuTrainingBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        string preset = "gpt2-124m", dtypeName = "bf16", mastersName = "separate";
        int batch = 64, micro = 0, seq = 1024, steps = 10, warmup = 3;
        int? lossChunk = null;
        double learningRate = 1e-4;
        int learningRateWarmup = 0;
        string? curveText = null;
        bool recompute = false, fallback = true, header = true, normBiasSums = false;
        var cudaOptions = CudaBackendOptions.Default;
        int[] loraRanks = [0];
        string[] loraTargets = [.. LoraTargets.Default];
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--preset": preset = args[++i]; break;
                case "--batch": batch = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--micro": micro = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--seq": seq = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--dtype": dtypeName = args[++i]; break;
                case "--masters": mastersName = args[++i]; break;
                case "--steps": steps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmup": warmup = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--recompute": recompute = true; break;
                case "--norm-bias-sums": normBiasSums = true; break;
                case "--no-fallback": fallback = false; break;
                case "--no-header": header = false; break;
                case "--curve-text": curveText = args[++i]; break;
                case "--lr": learningRate = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--lr-warmup": learningRateWarmup = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--loss-chunk": lossChunk = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--cuda-options": cudaOptions = CudaBackendOptions.Parse(args[++i]); break;
                case "--lora": loraRanks = [.. args[++i].Split(',').Select(r => int.Parse(r, CultureInfo.InvariantCulture))]; break;
                case "--lora-targets": loraTargets = args[++i].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries); break;
                default: throw new ArgumentException($"gpu-train: unknown argument '{args[i]}'");
            }
        }
        var dtype = dtypeName switch { "bf16" => DType.BF16, "f32" => DType.F32, _ => throw new ArgumentException($"--dtype {dtypeName}: expected bf16 or f32") };
        var masters = mastersName switch { "separate" => MasterWeights.Separate, "split" => MasterWeights.Split, _ => throw new ArgumentException($"--masters {mastersName}: expected separate or split") };
        if (masters == MasterWeights.Split && (dtype != DType.BF16 || loraRanks.Any(r => r > 0)))
            throw new ArgumentException("--masters split: split masters are for bf16 full fine-tuning (--dtype bf16, no --lora rank above 0)");
        if (micro <= 0) micro = batch;
        if (batch % micro != 0) throw new ArgumentException($"--micro {micro} must divide --batch {batch}");
        var config = ModelPresets.Get(preset);
        if (loraRanks.Any(r => r < 0)) throw new ArgumentException($"--lora {string.Join(",", loraRanks)}: a rank is at least 1 (0 for full fine-tuning)");
        var targets = loraRanks.Any(r => r > 0) ? LoraTargets.Parse(config, loraTargets) : [];   // throws, naming a bad target, before any GPU work
        if (curveText is null && (args.Contains("--lr") || args.Contains("--lr-warmup")))
            throw new ArgumentException("gpu-train: --lr and --lr-warmup set the rate of a loss curve (--curve-text FILE); the timed steps' cost does not depend on it");
        if (curveText is not null)
            return LossCurve(config, preset, dtype, masters, batch, micro, seq, steps, curveText, lossChunk, cudaOptions, learningRate, learningRateWarmup);
        if (header)
        {
            Console.WriteLine("| system | model | dtype | trained | B x T | recompute | ms/step | tokens/s | MFU (989) | MFU (790) | peak GiB | fwd+loss ms | bwd ms | optim ms |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        }
        foreach (int rank in loraRanks)
        {
            var lora = rank == 0 ? null : new LoraOptions { Rank = rank, Alpha = rank, Targets = targets }.Validate();
            int m = micro;
            while (true)
            {
                try
                {
                    Console.WriteLine(Measure(config, preset, dtype, masters, batch, m, seq, steps, warmup, recompute, lossChunk, lora, cudaOptions, normBiasSums));
                    break;
                }
                catch (CudaOutOfMemoryException e) when (fallback && m > 1)
                {
                    Console.Error.WriteLine($"gpu-train: micro-batch {m} does not fit ({e.Message.Split('\n')[0]}); trying {m / 2}");
                    m /= 2;
                    GC.Collect();
                    GC.WaitForPendingFinalizers();
                }
            }
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        return 0;
    }

    private static string Measure(TransformerConfig config, string preset, DType dtype, MasterWeights masters, int b, int micro, int t, int steps, int warmup, bool recompute,
        int? lossChunk, LoraOptions? lora, CudaBackendOptions cudaOptions, bool normBiasSums = false)
    {
        using var backend = new CudaBackend(0, cudaOptions);
        var model = lora is null
            ? new Transformer(config, backend, dtype, masters: masters) { RecomputeActivations = recompute, ResidualBiasGradientsFromNorms = normBiasSums }
            : new Transformer(config, backend, dtype, ArenaStorage.Frozen, lora: lora) { RecomputeActivations = recompute, ResidualBiasGradientsFromNorms = normBiasSums };
        if (lossChunk is { } rows) model.LossChunkRows = rows;
        int chunk = model.LossChunkRows == 0 ? 0 : FusedLinearCrossEntropy.ChunkRows(micro * t, model.LossChunkRows);
        string head = (chunk == 0 ? "unfused head" : $"head in chunks of {chunk} rows") + (normBiasSums ? ", --norm-bias-sums" : "");
        BenchmarkWeights.Initialize(model, seed: 1);
        using var timeline = new CudaEventTimeline(backend);
        var options = new TrainingStepBenchmarkOptions { BatchSize = b, MicroBatchSize = micro, SequenceLength = t, Steps = steps, WarmupSteps = warmup };
        var benchmark = new TrainingStepBenchmark(model, options, timeline, () => backend.Allocator.Statistics.PeakBytesInUse);
        benchmark.WarmUp();
        backend.Profiler?.Reset();                           // the per-op table covers the timed steps only
        var r = benchmark.Measure();
        int accum = b / micro;
        if (backend.Profiler is { } profiler)
        {
            Console.WriteLine();
            Console.WriteLine($"Per-op GPU time (ProfileOps=true, {preset} {dtype} B={b} ({accum}x{micro}) T={t}, recompute={recompute}; event pair per op, per step over {steps} steps):");
            Console.WriteLine();
            Console.WriteLine(profiler.Table(steps));
        }
        if (backend.MatMulTuningLog.Count > 0)
        {
            Console.Error.WriteLine($"gpu-train: cuBLASLt algorithms timed on first use (--cuda-options TuneMatMulAlgorithms=false turns it off):");
            foreach (var line in backend.MatMulTuningLog) Console.Error.WriteLine("  " + line);
        }
        string settings = cudaOptions.Format();
        double peakGiB = r.PeakDeviceBytes!.Value / (double)(1L << 30);
        string trained = lora is null
            ? $"full {Count(r.TrainableParameterCount)}"
            : $"LoRA r={lora.Rank} ({string.Join(",", lora.Targets.Select(x => x.Name))}) {Count(r.TrainableParameterCount)}";
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"gpu-train: {preset} {dtype} {trained} B={b} T={t} recompute={recompute} {head} on {backend.CudaDevice.Name}: loss {r.FinalLoss:F4}, event ms/step {r.StepMilliseconds:F1}, wall ms/step {r.WallMilliseconds:F1}"));
        return string.Create(CultureInfo.InvariantCulture,
            $"| Tessera ({MastersCell(dtype, masters, lora is null)}{head}{(settings.Length > 0 ? $", {settings}" : "")}) | {preset} | {dtype} | {trained} | {(accum > 1 ? $"{b} ({accum}x{micro})" : b.ToString(CultureInfo.InvariantCulture))} x {t} | {(recompute ? "yes" : "no")} | {r.StepMilliseconds:F1} | {r.TokensPerSecond:F0} | {r.ModelFlopsUtilization(989e12):P1} | {r.ModelFlopsUtilization(790e12):P1} | {peakGiB:F1} | {r.ForwardMilliseconds:F1} | {r.BackwardMilliseconds:F1} | {r.OptimizerMilliseconds:F1} |");
    }

    /// <summary>
    /// --curve-text FILE: trains --steps steps from the same initial weights on the file's bytes as tokens (consecutive
    /// windows, <see cref="TrainingStepBenchmark.LossCurve"/>) and prints each step's loss, one markdown row per step, so two
    /// runs with different --cuda-options compare step by step.
    /// </summary>
    private static int LossCurve(TransformerConfig config, string preset, DType dtype, MasterWeights masters, int batch, int micro, int seq, int steps,
        string path, int? lossChunk, CudaBackendOptions cudaOptions, double learningRate, int learningRateWarmup)
    {
        var bytes = File.ReadAllBytes(path);
        using var backend = new CudaBackend(0, cudaOptions);
        var model = new Transformer(config, backend, dtype, masters: masters);
        if (lossChunk is { } rows) model.LossChunkRows = rows;
        BenchmarkWeights.Initialize(model, seed: 1);
        var options = new TrainingStepBenchmarkOptions
        {
            BatchSize = batch, MicroBatchSize = micro, SequenceLength = seq, Steps = 1, WarmupSteps = 0,
            LearningRate = learningRate, LearningRateWarmupSteps = learningRateWarmup,
        };
        var benchmark = new TrainingStepBenchmark(model, options);
        var losses = benchmark.LossCurve(bytes.Select(b => (int)b).ToArray(), steps);
        string settings = cudaOptions.Format();
        Console.WriteLine($"| step | loss: {preset} {dtype} {MastersCell(dtype, masters, full: true)}{batch} x {seq}, {Path.GetFileName(path)} ({bytes.Length:N0} bytes as tokens), lr {learningRate:G3}{(learningRateWarmup > 0 ? $" warmed up over {learningRateWarmup} steps" : "")}{(settings.Length > 0 ? ", " + settings : "")} |");
        Console.WriteLine("|---|---|");
        for (int s = 0; s < losses.Length; s++)
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {s + 1} | {losses[s]:F5} |"));
        return 0;
    }

    /// <summary>"split masters, " or "separate masters, " for a BF16 model whose whole arena is trained; empty otherwise (F32 has no masters, a frozen base none).</summary>
    private static string MastersCell(DType dtype, MasterWeights masters, bool full) =>
        dtype == DType.BF16 && full ? (masters == MasterWeights.Split ? "split masters, " : "separate masters, ") : "";

    /// <summary>A parameter count in millions or billions: "5.64M", "1.24B".</summary>
    private static string Count(long n) => n >= 1_000_000_000
        ? string.Create(CultureInfo.InvariantCulture, $"{n / 1e9:F2}B")
        : string.Create(CultureInfo.InvariantCulture, $"{n / 1e6:F2}M");
}
