using System.Diagnostics;
using System.Globalization;
using Tessera.Cuda;
using Tessera.Cuda.Distributed;
using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Training.Benchmarks;

namespace Tessera.Bench.Gpu;

/// <summary>
/// Tensor parallelism's compute on one GPU: a model split over tp CUDA thread ranks sharing the GPU (each its own stream,
/// the collectives on the device), one training forward + backward (no optimizer) of a B x T batch per step, in BF16.
/// Every rank profiles its own stream (<see cref="CudaOpProfiler"/>); the collectives run on the group's stream, so a rank's
/// summed op time is its compute alone. On one device the overhead of TP must be communication only: each rank's compute at
/// tp should be TP=1's divided by tp. Also reported: the wall time of a step (all ranks sharing the GPU, so about the sum
/// of their compute plus the collectives), the bytes the rank's allocator holds after building the model (parameters,
/// gradients and F32 masters: predicted from the layout as 8 bytes per local parameter element) and its peak during the
/// steps (that plus activations).
/// <para>
/// With <c>--isolated</c> each tp runs rank 0's shard alone on the GPU, its collectives replaced by a
/// <see cref="ComputeOnlyGroup"/> that moves nothing and counts the bytes each would have sent: the rank's compute with no
/// other rank's kernels sharing the GPU (against TP=1's divided by tp), and the communication volume of a step.
/// </para>
/// <para>
/// With <c>--curve N</c> each tp trains N AdamW steps (bf16, F32 masters, clipping at 1) on a learnable synthetic stream (a
/// noisy affine chain over the first 1024 token ids: the loss falls from ln V within the N steps), and the losses are printed beside TP=1's with the
/// largest relative difference: the loss curves of a split model must follow one device's.
/// </para>
/// <para>Usage: gpu-tp [--preset llama-1b] [--tp 1,2,4] [--batch 1] [--seq 2048] [--sp] [--isolated | --curve N] [--steps 4] [--warmup 2] [--cuda-options SETTINGS]</para>
/// </summary>
public static class TensorParallelComputeBench
{
    private sealed record RankResult(double ComputeMs, double WallMs, long AfterBuild, long PredictedParameters, long Peak, double Loss);

    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        string preset = "llama-1b";
        int[] tps = [1, 2, 4];
        int batch = 1, seq = 2048, steps = 4, warmup = 2;
        bool sequenceParallel = false, isolated = false;
        int curve = 0;
        var cudaOptions = CudaBackendOptions.Default;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--preset": preset = args[++i]; break;
                case "--tp": tps = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray(); break;
                case "--batch": batch = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--seq": seq = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--sp": sequenceParallel = true; break;
                case "--isolated": isolated = true; break;
                case "--curve": curve = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--steps": steps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmup": warmup = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--cuda-options": cudaOptions = CudaBackendOptions.Parse(args[++i]); break;
                case "--no-header": break;
                default: throw new ArgumentException($"gpu-tp: unknown argument '{args[i]}'");
            }
        }
        var config = ModelPresets.Get(preset);
        if (isolated) return RunIsolated(config, preset, tps, sequenceParallel, batch, seq, steps, warmup, cudaOptions);
        if (curve > 0) return RunCurves(config, preset, tps, sequenceParallel, batch, seq, curve, cudaOptions);
        var profiled = cudaOptions with { ProfileOps = true };
        Console.WriteLine("| model | B x T | tp | SP | compute ms/step per rank (max) | TP=1 / tp | ratio | wall ms/step | GiB after build per rank (predicted) | peak GiB per rank |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
        double? single = null;
        foreach (int tp in tps)
        {
            var ranks = CudaThreadRanks.Run(tp, ctx => Measure(ctx, config, tp, sequenceParallel, batch, seq, steps, warmup), profiled, TimeSpan.FromMinutes(10));
            double compute = ranks.Max(r => r.ComputeMs);
            if (tp == 1) single = compute;
            string ideal = single is double s ? (s / tp).ToString("F1", CultureInfo.InvariantCulture) : "-";
            string ratio = single is double s1 ? (compute / (s1 / tp)).ToString("F3", CultureInfo.InvariantCulture) : "-";
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {preset} | {batch} x {seq} | {tp} | {(sequenceParallel && tp > 1 ? "yes" : "no")} | {compute:F1} | {ideal} | {ratio} | {ranks.Max(r => r.WallMs):F1} | " +
                $"{ranks.Max(r => r.AfterBuild) / Gib:F2} ({ranks.Max(r => r.PredictedParameters) / Gib:F2}) | {ranks.Max(r => r.Peak) / Gib:F2} |"));
            Console.Error.WriteLine($"gpu-tp: {preset} tp {tp}: losses {string.Join(", ", ranks.Select(r => r.Loss.ToString("F4", CultureInfo.InvariantCulture)))}");
        }
        return 0;
    }

    private const double Gib = 1L << 30;

    /// <summary>N training steps per tp on CUDA thread ranks; the losses beside TP=1's.</summary>
    private static int RunCurves(TransformerConfig config, string preset, int[] tps, bool sequenceParallel, int batch, int seq, int steps, CudaBackendOptions options)
    {
        var shard = Path.Combine(Path.GetTempPath(), $"tessera-tp-curve-{Environment.ProcessId}.bin");
        var rng = new Random(5);
        var tokens = new int[steps * batch * seq + 1];
        // Over a sub-vocabulary, so that 50 steps show a falling curve (first the unigram, then the transitions), not a plateau at ln V.
        int used = Math.Min(config.VocabSize, 1024);
        tokens[0] = rng.Next(used);
        for (int i = 1; i < tokens.Length; i++) tokens[i] = (int)((5L * tokens[i - 1] + 17 + rng.Next(4)) % used);
        if (config.VocabSize > ushort.MaxValue + 1) Tessera.Training.Data.TokenShard.Write(shard, tokens, Tessera.Training.Data.TokenShardFormat.Uint32);
        else Tessera.Training.Data.TokenShard.Write(shard, tokens);
        try
        {
            var curves = new Dictionary<int, double[]>();
            foreach (int tp in tps)
            {
                var losses = CudaThreadRanks.Run(tp, ctx =>
                {
                    var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
                    var tensor = tp > 1 ? new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory) : null;
                    var model = new Transformer(config, ctx.Backend, DType.BF16, tensorParallelism: tensor);
                    model.InitializeWeights(seed: 3);
                    var trainer = new Tessera.Training.Trainer(model, Tessera.Training.SingleDevice.For(model, new Tessera.Training.Optim.AdamWOptions()),
                        new Tessera.Training.Data.TokenDataLoader([shard], batch, seq), null,
                        new Tessera.Training.TrainerOptions { BatchSize = batch, SequenceLength = seq, Steps = steps, WarmupSteps = 5, LearningRate = 1e-3 });
                    return Enumerable.Range(0, steps).Select(_ => trainer.TrainStep()).ToArray();
                }, options, TimeSpan.FromMinutes(10));
                curves[tp] = losses[0];
            }
            Console.WriteLine($"| step | {string.Join(" | ", tps.Select(t => $"tp {t}{(sequenceParallel && t > 1 ? " + SP" : "")}"))} |");
            Console.WriteLine($"|---|{string.Concat(tps.Select(_ => "---|"))}");
            foreach (int s in new[] { 1 }.Concat(Enumerable.Range(1, steps / 10).Select(k => 10 * k)).Where(s => s <= steps))
                Console.WriteLine($"| {s} | {string.Join(" | ", tps.Select(t => curves[t][s - 1].ToString("F4", CultureInfo.InvariantCulture)))} |");
            foreach (int tp in tps.Where(t => t != tps[0]))
            {
                double worst = curves[tp].Zip(curves[tps[0]], (a, b) => Math.Abs(a - b) / Math.Abs(b)).Max();
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{preset} {batch} x {seq}: tp {tp} against tp {tps[0]}: largest relative loss difference over {steps} steps {worst:E2}"));
            }
            return 0;
        }
        finally
        {
            File.Delete(shard);
        }
    }

    /// <summary>Rank 0's shard of each tp alone on the GPU: compute ms per step (CUDA-synchronized wall time) and wire bytes per rank.</summary>
    private static int RunIsolated(TransformerConfig config, string preset, int[] tps, bool sequenceParallel, int batch, int seq, int steps, int warmup,
        CudaBackendOptions options)
    {
        Console.WriteLine("| model | B x T | tp | SP | rank-0 compute ms/step alone | TP=1 / tp | ratio | MB per rank per step: all-reduce / all-gather / reduce-scatter | GiB after build | peak GiB | activation GiB estimated (kept + shared) |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|");
        double? single = null;
        foreach (int tp in tps)
        {
            using var backend = new CudaBackend(0, options);
            var group = new ComputeOnlyGroup("tp", 0, tp);
            var tensor = tp > 1 ? new TensorParallelism(group, ParallelPlan.Megatron(sequenceParallel), new ComputeOnlyGroup.Factory()) : null;
            var model = new Transformer(config, backend, DType.BF16, tensorParallelism: tensor) { ValidateInputs = false };
            BenchmarkWeights.Initialize(model, seed: 1);
            backend.Synchronize();
            long afterBuild = backend.Allocator.Statistics.BytesInUse;
            var rng = new Random(7);
            var x = backend.FromHost<int>(Enumerable.Range(0, batch * seq).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(batch, seq));
            var y = backend.FromHost<int>(Enumerable.Range(0, batch * seq).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(batch, seq));
            backend.Allocator.ResetPeak();
            var times = new List<double>();
            for (int s = 0; s < warmup + steps; s++)
            {
                if (s == warmup) group.WireBytes.Clear();
                var clock = Stopwatch.StartNew();
                model.Loss(x, y, lossScale: 1.0 / (batch * seq));
                model.Backward();
                backend.Synchronize();
                if (s >= warmup) times.Add(clock.Elapsed.TotalMilliseconds);
            }
            times.Sort();
            double ms = times[times.Count / 2];
            if (tp == 1) single = ms;
            double Mb(Tessera.Distributed.CollectiveKind k) => group.WireBytes.GetValueOrDefault(k) / steps / 1e6;
            // What the peak above the build should hold besides the gradients' transients: the activations a step keeps.
            var activations = ActivationMemory.Estimate(config, batch, seq, DType.BF16, tp, sequenceParallel, recompute: false, model.LossChunkRows);
            string ideal = single is double s0 ? (s0 / tp).ToString("F1", CultureInfo.InvariantCulture) : "-";
            string ratio = single is double s1 ? (ms / (s1 / tp)).ToString("F3", CultureInfo.InvariantCulture) : "-";
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {preset} | {batch} x {seq} | {tp} | {(sequenceParallel && tp > 1 ? "yes" : "no")} | {ms:F1} | {ideal} | {ratio} | " +
                $"{Mb(Tessera.Distributed.CollectiveKind.AllReduce):F0} / {Mb(Tessera.Distributed.CollectiveKind.AllGather):F0} / {Mb(Tessera.Distributed.CollectiveKind.ReduceScatter):F0} | " +
                $"{afterBuild / Gib:F2} | {backend.Allocator.Statistics.PeakBytesInUse / Gib:F2} | {activations.PerMicroBatchBytes / Gib:F2} + {activations.SharedBytes / Gib:F2} |"));
        }
        return 0;
    }

    private static RankResult Measure(CudaRankContext ctx, TransformerConfig config, int tp, bool sequenceParallel, int batch, int seq, int steps, int warmup)
    {
        var backend = ctx.Backend;
        var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
        var tensor = tp > 1 ? new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory) : null;
        var model = new Transformer(config, backend, DType.BF16, tensorParallelism: tensor) { ValidateInputs = false };
        BenchmarkWeights.Initialize(model, seed: 1);
        backend.Synchronize();
        long afterBuild = backend.Allocator.Statistics.BytesInUse;
        long predicted = model.Layout.Length * (2 + 2 + 4);   // BF16 values and gradients, F32 masters
        var rng = new Random(7);   // the same tokens on every rank of the group
        var tokens = Enumerable.Range(0, batch * seq).Select(_ => rng.Next(config.VocabSize)).ToArray();
        var targets = Enumerable.Range(0, batch * seq).Select(_ => rng.Next(config.VocabSize)).ToArray();
        var x = backend.FromHost<int>(tokens, new Shape(batch, seq));
        var y = backend.FromHost<int>(targets, new Shape(batch, seq));
        double loss = 0;
        var wall = new List<double>();
        backend.Allocator.ResetPeak();
        for (int s = 0; s < warmup + steps; s++)
        {
            if (s == warmup) backend.Profiler!.Reset();
            ctx.Group.Barrier().Wait();
            var clock = Stopwatch.StartNew();
            var losses = model.Loss(x, y, lossScale: 1.0 / (batch * seq));
            model.Backward();
            backend.Synchronize();
            if (s >= warmup) wall.Add(clock.Elapsed.TotalMilliseconds);
            if (s == warmup + steps - 1) loss = backend.ToArray<float>(losses).Average();
        }
        double compute = backend.Profiler!.Totals().Sum(t => t.Milliseconds) / steps;
        wall.Sort();
        return new RankResult(compute, wall[wall.Count / 2], afterBuild, predicted, backend.Allocator.Statistics.PeakBytesInUse, loss);
    }
}
