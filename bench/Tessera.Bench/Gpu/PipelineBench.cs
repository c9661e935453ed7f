using System.Diagnostics;
using System.Globalization;
using Tessera.Cuda;
using Tessera.Cuda.Distributed;
using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Pipeline;

namespace Tessera.Bench.Gpu;

/// <summary>
/// Pipeline parallelism on one GPU, two ways.
/// <para>
/// <c>--stages</c> (default): each pipeline stage of a model (llama-8b) alone on the GPU at pp = 2, 4 and 8 (the first, a middle
/// and the last stage: the others equal the middle one), in BF16: the forward and backward time of one micro-batch through the
/// stage's units (CUDA-synchronized wall time, median of the timed repetitions), the bytes after building the stage (BF16
/// values and gradients, F32 masters) and at the peak of one micro-batch, and the activations a micro-batch keeps in flight
/// (the activation store's slot). The stage's pipeline group moves nothing (<see cref="ComputeOnlyGroup"/>); weights stay zero
/// (a kernel's time does not depend on the values). From the measured per-block, embedding and head times it then predicts,
/// with <see cref="PipelineSimulator"/>, the step time and idle fraction of GPipe, 1F1B and interleaved 1F1B on p GPUs for
/// several micro-batch counts, each stage on its own GPU and each message taking its bytes over an assumed point-to-point
/// bandwidth (<c>--p2p-gbps</c>, default 300 GB/s: NVLink 4 carries 450 GB/s each way, NCCL's send/receive reaches less), and the
/// peak memory of the first stage under each schedule (AdamW's F32 moments added: 8 bytes per parameter).
/// </para>
/// <para>
/// <c>--curve N</c>: the loss curve of a model (gpt2-124m) trained N AdamW steps in BF16 on one device and as 2 pipeline stages on
/// CUDA thread ranks sharing the GPU (the stages' kernels on their own streams, activations and gradients as device copies),
/// on a learnable synthetic stream (a noisy affine chain over the vocabulary), with the largest relative difference.
/// </para>
/// <para>Usage: gpu-pp [--stages] [--preset llama-8b] [--pp 2,4,8] [--batch 1] [--seq 4096] [--reps 5] [--warmup 2] [--p2p-gbps 300]
/// [--curve N [--preset gpt2-124m] [--batch 8] [--seq 1024] [--micro-batches 4] [--schedule 1f1b|gpipe|interleaved]] [--cuda-options SETTINGS]</para>
/// </summary>
public static class PipelineBench
{
    private const double Gib = 1L << 30;

    private sealed record StageResult(int Pp, int Stage, int Blocks, long Parameters, double ForwardMs, double BackwardMs, long AfterBuild, long Peak, long Activations, long MessageBytes);

    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        string? preset = null, schedule = "1f1b";
        int[] pps = [2, 4, 8];
        int? batch = null, seq = null;
        int reps = 5, warmup = 2, curve = 0, microBatches = 4;
        double p2p = 300;
        bool cpu = false;
        var cudaOptions = CudaBackendOptions.Default;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--stages": break;
                case "--preset": preset = args[++i]; break;
                case "--pp": pps = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray(); break;
                case "--batch": batch = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--seq": seq = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--reps": reps = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--warmup": warmup = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--p2p-gbps": p2p = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--curve": curve = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--micro-batches": microBatches = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--schedule": schedule = args[++i]; break;
                case "--cuda-options": cudaOptions = CudaBackendOptions.Parse(args[++i]); break;
                case "--cpu": cpu = true; break;
                default: throw new ArgumentException($"gpu-pp: unknown argument '{args[i]}'");
            }
        }
        if (curve > 0)
        {
            var kind = schedule switch
            {
                "1f1b" => PipelineScheduleKind.OneForwardOneBackward,
                "gpipe" => PipelineScheduleKind.GPipe,
                "interleaved" => PipelineScheduleKind.Interleaved,
                _ => throw new ArgumentException($"gpu-pp: --schedule {schedule}: expected 1f1b, gpipe or interleaved"),
            };
            return RunCurve(preset ?? "gpt2-124m", batch ?? 8, seq ?? 1024, microBatches, curve, kind, cudaOptions);
        }
        return RunStages(preset ?? "llama-8b", pps, batch ?? 1, seq ?? 4096, reps, warmup, p2p, cudaOptions, cpu);
    }

    private static int RunStages(string preset, int[] pps, int batch, int seq, int reps, int warmup, double p2pGbps, CudaBackendOptions options, bool cpu)
    {
        var config = ModelPresets.Get(preset);
        var results = new List<StageResult>();
        Console.WriteLine($"each stage of {preset} alone on the {(cpu ? "CPU (a dry run of the bench), F32" : "GPU, BF16")}, micro-batch {batch} x {seq}, one micro-batch in flight (medians of {reps} after {warmup} warm-ups):");
        Console.WriteLine();
        Console.WriteLine("| pp | stage | blocks | parameters | forward ms | backward ms | GiB after build | peak GiB (1 micro-batch) | activations GiB per micro-batch |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
        foreach (int pp in pps)
            foreach (int stage in new[] { 0, 1, pp - 1 }.Where(s => s < pp).Distinct())
            {
                var r = MeasureStage(config, pp, stage, batch, seq, reps, warmup, options, cpu);
                results.Add(r);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {pp} | {(stage == 0 ? "first" : stage == pp - 1 ? "last" : "middle")} ({stage}) | {r.Blocks} | {r.Parameters / 1e9:F2} B | {r.ForwardMs:F1} | {r.BackwardMs:F1} | " +
                    $"{r.AfterBuild / Gib:F2} | {r.Peak / Gib:F2} | {r.Activations / Gib:F2} |"));
            }

        // Unit costs from the measurements: a block from the widest split's middle stage; the vocabulary layers from how much
        // the first and last stages of the same split take beyond it.
        var middle = results.Where(r => r.Stage > 0 && r.Stage < r.Pp - 1).OrderByDescending(r => r.Pp).FirstOrDefault();
        if (middle is null) { Console.WriteLine("(no middle stage measured: give a pp of at least 3 to predict schedules)"); return 0; }
        var first = results.Single(r => r.Pp == middle.Pp && r.Stage == 0);
        var last = results.Single(r => r.Pp == middle.Pp && r.Stage == middle.Pp - 1);
        double blockF = middle.ForwardMs / middle.Blocks, blockB = middle.BackwardMs / middle.Blocks;
        double embF = first.ForwardMs - first.Blocks * blockF, embB = first.BackwardMs - first.Blocks * blockB;
        double headF = last.ForwardMs - last.Blocks * blockF, headB = last.BackwardMs - last.Blocks * blockB;
        double transfer = middle.MessageBytes / (p2pGbps * 1e9) * 1e3;
        Console.WriteLine();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"unit costs (ms, forward / backward): block {blockF:F2} / {blockB:F2}, embedding {embF:F2} / {embB:F2}, head + loss {headF:F2} / {headB:F2}; " +
            $"message {middle.MessageBytes / 1e6:F1} MB, {transfer:F3} ms at {p2pGbps} GB/s"));
        Console.WriteLine();
        Console.WriteLine("predicted, each stage on its own GPU (PipelineSimulator over the measured costs; blocks split evenly, or balanced against the measured");
        Console.WriteLine("vocabulary layers with PipelinePartition.Balanced):");
        Console.WriteLine();
        Console.WriteLine("| pp | schedule | blocks per virtual stage | micro-batches | step ms | idle (simulated) | (p-1)/(vm+p-1) | ideal ms (no bubble) | first stage peak GiB (+ AdamW moments) |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
        var unitCosts = new PipelineUnitCosts(Math.Max(0, embF + embB), blockF + blockB, Math.Max(0, headF + headB));
        foreach (int pp in pps.Where(p => p > 1))
        {
            var stage0 = results.Single(r => r.Pp == pp && r.Stage == 0);
            long transient = stage0.Peak - stage0.AfterBuild - stage0.Activations;
            double activationsPerBlock = stage0.Activations / (double)stage0.Blocks;
            double blockParameters = middle.Parameters / (double)middle.Blocks, embeddingParameters = first.Parameters - first.Blocks * blockParameters;
            foreach (int m in new[] { pp, 2 * pp, 8 * pp }.Distinct())
                foreach (var (kind, chunks, balanced) in new[]
                {
                    (PipelineScheduleKind.GPipe, 1, false), (PipelineScheduleKind.OneForwardOneBackward, 1, false), (PipelineScheduleKind.OneForwardOneBackward, 1, true),
                    (PipelineScheduleKind.Interleaved, 2, false), (PipelineScheduleKind.Interleaved, 2, true),
                })
                {
                    if (config.Layers < pp * chunks) continue;
                    var partition = balanced ? PipelinePartition.Balanced(config.Layers, pp, chunks, unitCosts) : PipelinePartition.Even(config.Layers, pp, chunks);
                    var forward = new double[partition.VirtualStageCount];
                    var backward = new double[partition.VirtualStageCount];
                    for (int s = 0; s < forward.Length; s++)
                    {
                        int blocks = partition.BlocksOf(s).Count;
                        forward[s] = blocks * blockF + (partition.HasEmbeddings(s) ? embF : 0) + (partition.HasHead(s) ? headF : 0);
                        backward[s] = blocks * blockB + (partition.HasEmbeddings(s) ? embB : 0) + (partition.HasHead(s) ? headB : 0);
                    }
                    var schedule = PipelineSchedule.Create(kind, pp, chunks, m);
                    var timeline = PipelineSimulator.Simulate(schedule, new PipelineCosts(forward, backward, transfer));
                    double ideal = timeline.Busy.Max();
                    // The first stage's memory: its chunks' parameters (8 bytes each: BF16 value and gradient, F32 master) and AdamW's
                    // F32 moments (8 more), the shared transient buffers, and its micro-batches in flight, each holding its chunk's blocks.
                    int firstBlocks = Enumerable.Range(0, chunks).Sum(c => partition.BlocksOf(partition.VirtualStage(0, c)).Count);
                    double parameters = embeddingParameters + firstBlocks * blockParameters;
                    double inFlight = Enumerable.Range(0, chunks).Sum(c => partition.BlocksOf(partition.VirtualStage(0, c)).Count) / (double)chunks;
                    double peak = parameters * 16 + transient + timeline.PeakInFlight[0] * inFlight * activationsPerBlock;
                    string split = string.Join("-", Enumerable.Range(0, partition.VirtualStageCount).Select(s => partition.BlocksOf(s).Count));
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {pp} | {schedule.Name}{(chunks > 1 ? $" (v {chunks})" : "")} | {split}{(balanced ? " (balanced)" : "")} | {m} | {timeline.Makespan:F0} | {timeline.IdleFraction:P1} | " +
                        $"{PipelineSimulator.IdealIdleFraction(schedule):P1} | {ideal:F0} | {peak / Gib:F1} ({timeline.PeakInFlight[0]} in flight) |"));
                }
        }
        return 0;
    }

    /// <summary>A backend for one stage and its memory counters: the GPU's allocator, or (<c>--cpu</c>: a dry run of the bench itself with a small preset) the CPU backend's allocation counter.</summary>
    private sealed class Device : IDisposable
    {
        private readonly CudaBackend? _cuda;
        private readonly Tessera.Tensors.Cpu.CpuBackend? _cpu;

        public Device(bool cpu, CudaBackendOptions options)
        {
            if (cpu) _cpu = new Tessera.Tensors.Cpu.CpuBackend(Environment.ProcessorCount);
            else _cuda = new CudaBackend(0, options);
        }

        public IBackend Backend => (IBackend?)_cuda ?? _cpu!;

        public long InUse => _cuda?.Allocator.Statistics.BytesInUse ?? _cpu!.AllocatedBytes;

        public long Peak => _cuda?.Allocator.Statistics.PeakBytesInUse ?? _cpu!.PeakAllocatedBytes;

        public void ResetPeak()
        {
            if (_cuda is not null) _cuda.Allocator.ResetPeak();
            else _cpu!.ResetPeakAllocatedBytes();
        }

        public void Dispose() => _cuda?.Dispose();
    }

    private static StageResult MeasureStage(TransformerConfig config, int pp, int stage, int batch, int seq, int reps, int warmup, CudaBackendOptions options, bool cpu)
    {
        using var device = new Device(cpu, options);
        var backend = device.Backend;
        var pipeline = new PipelineParallelism(new ComputeOnlyGroup("pp", stage, pp), PipelinePartition.Even(config.Layers, pp), new ComputeOnlyGroup.Factory());
        var dtype = cpu ? DType.F32 : DType.BF16;
        var model = new Transformer(config, backend, dtype, pipeline: pipeline) { ValidateInputs = false };
        backend.Synchronize();
        long afterBuild = device.InUse;
        int units = model.Layout.Units.Count, rows = batch * seq;
        var rng = new Random(7);
        Tensor input = stage == 0
            ? backend.FromHost<int>(Enumerable.Range(0, rows).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(batch, seq))
            : backend.FromHost<float>(Enumerable.Range(0, rows * config.Embedding).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray(), new Shape(rows, config.Embedding));
        if (stage > 0 && dtype != DType.F32)
        {
            var cast = backend.Allocate(input.Shape, dtype);
            backend.Copy(input, cast);
            input = cast;
        }
        var targets = backend.FromHost<int>(Enumerable.Range(0, rows).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(batch, seq));
        var gradient = backend.Zeros(new Shape(rows, config.Embedding), dtype);
        device.ResetPeak();
        var forward = new List<double>();
        var backwardTimes = new List<double>();
        for (int r = 0; r < warmup + reps; r++)
        {
            backend.Synchronize();
            var clock = Stopwatch.StartNew();
            if (pipeline.IsLast) model.LossUnits(0, units, 0, input, targets, 1.0 / rows, batch, seq);
            else backend.Copy(model.ForwardUnits(0, units, 0, input, batch, seq), gradient);   // stands for the next stage's gradient
            backend.Synchronize();
            double f = clock.Elapsed.TotalMilliseconds;
            clock.Restart();
            model.BackwardUnits(0, units, 0, gradient, batch, seq);
            backend.Synchronize();
            if (r >= warmup)
            {
                forward.Add(f);
                backwardTimes.Add(clock.Elapsed.TotalMilliseconds);
            }
        }
        // What one micro-batch in flight keeps: the buffers of its slot (the shared slots serve every micro-batch).
        long activations = model.Activations.BufferedBytes(slot => slot == 0);
        forward.Sort();
        backwardTimes.Sort();
        var (_, blocks) = pipeline.Partition.BlocksOf(stage);
        return new StageResult(pp, stage, blocks, model.Layout.ParameterCount, forward[reps / 2], backwardTimes[reps / 2], afterBuild,
            device.Peak, activations, (long)rows * config.Embedding * dtype.SizeInBytes());
    }

    private static int RunCurve(string preset, int batch, int seq, int microBatches, int steps, PipelineScheduleKind kind, CudaBackendOptions options)
    {
        var config = ModelPresets.Get(preset);
        var shard = Path.Combine(Path.GetTempPath(), $"tessera-pp-curve-{Environment.ProcessId}.bin");
        var rng = new Random(5);
        var tokens = new int[steps * microBatches * batch * seq + 1];
        tokens[0] = rng.Next(config.VocabSize);
        for (int i = 1; i < tokens.Length; i++) tokens[i] = (int)((5L * tokens[i - 1] + 17 + rng.Next(4)) % config.VocabSize);
        if (config.VocabSize > ushort.MaxValue + 1) TokenShard.Write(shard, tokens, TokenShardFormat.Uint32);
        else TokenShard.Write(shard, tokens);
        var trainerOptions = new TrainerOptions
        {
            BatchSize = batch, SequenceLength = seq, GradientAccumulationSteps = microBatches, Steps = steps, WarmupSteps = 5, LearningRate = 3e-4,
        };
        try
        {
            int chunks = kind == PipelineScheduleKind.Interleaved ? 2 : 1;
            var curves = new Dictionary<int, double[]>();
            var clocks = new Dictionary<int, double>();
            foreach (int pp in new[] { 1, 2 })
            {
                var clock = Stopwatch.StartNew();
                var losses = CudaThreadRanks.Run(pp, ctx =>
                {
                    var groups = new DeviceMesh(pp: pp).CreateGroups(ctx.Factory);
                    var pipeline = pp > 1 ? new PipelineParallelism(groups.Pp, PipelinePartition.Even(config.Layers, pp, chunks), ctx.Factory) : null;
                    var model = new Transformer(config, ctx.Backend, DType.BF16, pipeline: pipeline);
                    model.InitializeWeights(seed: 3);
                    var trainer = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new TokenDataLoader([shard], batch, seq), null, trainerOptions, kind);
                    return Enumerable.Range(0, steps).Select(_ => trainer.TrainStep()).ToArray();
                }, options, TimeSpan.FromMinutes(10));
                curves[pp] = losses[0];
                clocks[pp] = clock.Elapsed.TotalSeconds;
            }
            string name = kind switch { PipelineScheduleKind.GPipe => "GPipe", PipelineScheduleKind.Interleaved => "interleaved 1F1B (v 2)", _ => "1F1B" };
            Console.WriteLine($"{preset}, BF16 with F32 masters, {microBatches} micro-batches of {batch} x {seq} per step, {steps} AdamW steps; pp 2 under {name} on CUDA thread ranks sharing the GPU:");
            Console.WriteLine();
            Console.WriteLine("| step | pp 1 | pp 2 | relative difference |");
            Console.WriteLine("|---|---|---|---|");
            foreach (int s in new[] { 1 }.Concat(Enumerable.Range(1, steps / 10).Select(k => 10 * k)).Where(s => s <= steps).Distinct())
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {s} | {curves[1][s - 1]:F4} | {curves[2][s - 1]:F4} | {Math.Abs(curves[2][s - 1] - curves[1][s - 1]) / curves[1][s - 1]:E2} |"));
            double worst = curves[2].Zip(curves[1], (a, b) => Math.Abs(a - b) / Math.Abs(b)).Max();
            Console.WriteLine();
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{preset}: pp 2 against pp 1: largest relative loss difference over {steps} steps {worst:E2} ({(worst <= 0.01 ? "within" : "OUTSIDE")} 1%); wall {clocks[1]:F0} s and {clocks[2]:F0} s"));
            return worst <= 0.01 ? 0 : 1;
        }
        finally
        {
            File.Delete(shard);
        }
    }
}
