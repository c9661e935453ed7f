using System.Diagnostics;
using System.Globalization;
using Tessera.Cuda;
using Tessera.Cuda.Distributed;
using Tessera.Distributed.Nccl;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Benchmarks;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;

namespace Tessera.Bench.Gpu;

/// <summary>
/// ZeRO-Offload on one GPU: the data-parallel trainer over a one-rank NCCL group, with the AdamW state and update
/// either on the GPU (ZeRO-1 over one rank, i.e. plain) or in host memory on the CPU backend (offload). The model is
/// BF16 with F32 masters (mixed precision; the default) or F32 (<c>--dtype f32</c>). Offloaded, a BF16 model moves
/// BF16 gradients to the host and BF16 values back, and keeps its F32 master shard and moments there.
/// Prints one markdown row: ms/step (median after warm-up, synchronized wall time), tokens/s, peak GPU memory
/// (allocator peak), peak host memory (the process's peak resident set) and the parameter count.
/// <para>Usage: gpu-offload --preset gpt2-774m [--dtype bf16|f32] [--batch 8] [--seq 1024] [--steps 3] [--warmup 1] [--offload] [--recompute] [--no-header]
/// [--cuda-options SETTINGS]</para> (SETTINGS: <see cref="CudaBackendOptions.Parse"/>'s form.)
/// Run each case in its own process, so that one case's memory does not count in the next one's peaks.
/// </summary>
public static class OffloadBench
{
    public static int Run(string[] args)
    {
        string preset = "gpt2-774m";
        int batch = 8, seq = 1024, steps = 3, warmup = 1;
        bool offload = false, recompute = false, header = true;
        var cudaOptions = CudaBackendOptions.Default;
        var dtype = DType.BF16;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--preset": preset = args[++i]; break;
                case "--dtype":
                    dtype = args[++i].ToLowerInvariant() switch
                    {
                        "bf16" => DType.BF16,
                        "f32" => DType.F32,
                        var other => throw new ArgumentException($"gpu-offload: --dtype '{other}' must be bf16 or f32"),
                    };
                    break;
                case "--batch": batch = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--seq": seq = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--steps": steps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmup": warmup = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--offload": offload = true; break;
                case "--recompute": recompute = true; break;
                case "--no-header": header = false; break;
                case "--cuda-options": cudaOptions = CudaBackendOptions.Parse(args[++i]); break;
                default: throw new ArgumentException($"gpu-offload: unknown argument '{args[i]}'");
            }
        }
        if (header)
        {
            Console.WriteLine("| model | params | dtype | B x T | recompute | optimizer | ms/step | tokens/s | peak GPU GiB | peak host GiB |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
        }

        using var backend = new CudaBackend(0, cudaOptions);
        using var access = new CudaCommunication(backend);
        using var group = NcclProcessGroup.Create("world", 0, 1, NcclProcessGroup.CreateUniqueId(), access, TimeSpan.FromMinutes(5));
        var config = ModelPresets.Get(preset);
        var model = new Transformer(config, backend, dtype) { RecomputeActivations = recompute };
        BenchmarkWeights.Initialize(model, seed: 1);   // all cores: InitializeWeights draws one normal at a time (~20 s per 1B parameters)

        var shard = Path.Combine(Path.GetTempPath(), $"tessera-offload-{Environment.ProcessId}.bin");
        var rng = new Random(3);
        TokenShard.Write(shard, Enumerable.Range(0, batch * seq * (steps + warmup + 1) + 1).Select(_ => rng.Next(Math.Min(config.VocabSize, 65536))).ToArray());
        try
        {
            var options = new TrainerOptions { BatchSize = batch, SequenceLength = seq, Steps = steps + warmup, WarmupSteps = 1, LearningRate = 1e-4 };
            var parallelism = DataParallelism.Create(model, group, new DataParallelOptions { Stage = ZeroStage.OptimizerStates, OffloadOptimizer = offload },
                new AdamWOptions(), offload ? new CpuBackend() : null);
            var trainer = new Trainer(model, parallelism, new TokenDataLoader([shard], batch, seq, 0, 1), null, options);
            backend.Allocator.ResetPeak();
            var times = new List<double>();
            double loss = 0;
            for (int s = 0; s < steps + warmup; s++)
            {
                var clock = Stopwatch.StartNew();
                loss = trainer.TrainStep();
                backend.Synchronize();
                if (s >= warmup) times.Add(clock.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            double ms = times[times.Count / 2];
            double gpuGiB = backend.Allocator.Statistics.PeakBytesInUse / (double)(1L << 30);
            double hostGiB = Process.GetCurrentProcess().PeakWorkingSet64 / (double)(1L << 30);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {preset} | {model.Layout.ParameterCount / 1e9:F2}B | {(model.DType != DType.BF16 ? "F32" : "BF16 + F32 masters")} | {batch} x {seq} | {(recompute ? "yes" : "no")} | {(offload ? "offloaded (host AdamW)" : "on GPU")} | {ms:F0} | {batch * seq / (ms / 1000):F0} | {gpuGiB:F1} | {hostGiB:F1} |"));
            Console.Error.WriteLine($"gpu-offload: {preset} {dtype} offload={offload} final loss {loss:F4}");
        }
        finally
        {
            File.Delete(shard);
        }
        return 0;
    }
}
