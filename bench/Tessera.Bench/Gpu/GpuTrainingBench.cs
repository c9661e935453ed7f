using System.Globalization;
using Tessera.Cuda;
using Tessera.Cuda.Interop;
using Tessera.Cuda.Runtime;
using Tessera.Models;
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
/// <para>Usage: gpu-train [--preset gpt2-124m] [--batch 64] [--micro 32] [--seq 1024] [--dtype bf16|f32] [--steps 10] [--warmup 3] [--recompute] [--no-fallback]
/// [--loss-chunk ROWS] [--cuda-options SETTINGS]</para>
/// SETTINGS are <see cref="CudaBackendOptions.Parse"/>'s form (e.g. <c>TuneMatMulAlgorithms=false</c>,
/// <c>CrossEntropyThreadsPerRow=512</c>); the ones that differ from the defaults are named in the row's "system" column.
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
        string preset = "gpt2-124m", dtypeName = "bf16";
        int batch = 64, micro = 0, seq = 1024, steps = 10, warmup = 3;
        int? lossChunk = null;
        bool recompute = false, fallback = true, header = true;
        var cudaOptions = CudaBackendOptions.Default;
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
                case "--loss-chunk": lossChunk = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--cuda-options": cudaOptions = CudaBackendOptions.Parse(args[++i]); break;
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
                Console.WriteLine(Measure(preset, dtype, batch, micro, seq, steps, warmup, recompute, lossChunk, cudaOptions));
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

    private static string Measure(string preset, DType dtype, int b, int micro, int t, int steps, int warmup, bool recompute, int? lossChunk,
        CudaBackendOptions cudaOptions)
    {
        using var backend = new CudaBackend(0, cudaOptions);
        var config = ModelPresets.Get(preset);
        var model = new Transformer(config, backend, dtype) { RecomputeActivations = recompute };
        if (lossChunk is { } rows) model.LossChunkRows = rows;
        int chunk = model.LossChunkRows == 0 ? 0 : FusedLinearCrossEntropy.ChunkRows(micro * t, model.LossChunkRows);
        string head = chunk == 0 ? "unfused head" : $"head in chunks of {chunk} rows";
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
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"gpu-train: {preset} {dtype} B={b} T={t} recompute={recompute} {head} on {backend.CudaDevice.Name}: loss {r.FinalLoss:F4}, event ms/step {r.StepMilliseconds:F1}, wall ms/step {r.WallMilliseconds:F1}"));
        return string.Create(CultureInfo.InvariantCulture,
            $"| Tessera ({head}{(settings.Length > 0 ? $", {settings}" : "")}) | {preset} | {dtype} | {(accum > 1 ? $"{b} ({accum}x{micro})" : b.ToString(CultureInfo.InvariantCulture))} x {t} | {(recompute ? "yes" : "no")} | {r.StepMilliseconds:F1} | {r.TokensPerSecond:F0} | {r.ModelFlopsUtilization(989e12):P1} | {r.ModelFlopsUtilization(790e12):P1} | {peakGiB:F1} | {r.ForwardMilliseconds:F1} | {r.BackwardMilliseconds:F1} | {r.OptimizerMilliseconds:F1} |");
    }

    /// <summary>
    /// CUDA events on the backend's stream as the benchmark's timeline: the phases of a step are timed on the device,
    /// with no host wait inside the step. Events are created as marks are first used and reused every step.
    /// </summary>
    private sealed class CudaEventTimeline(CudaBackend backend) : IDeviceTimeline, IDisposable
    {
        private readonly List<CudaEvent> _events = [];

        public void Mark(int index)
        {
            while (_events.Count <= index) _events.Add(new CudaEvent(backend.CudaDevice));
            _events[index].Record(backend.Stream);
        }

        public double ElapsedMilliseconds(int from, int to)
        {
            _events[to].Synchronize();
            return _events[to].ElapsedSince(_events[from]);
        }

        public void Dispose()
        {
            foreach (var e in _events) e.Dispose();
        }
    }
}
