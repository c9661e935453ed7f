using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;

namespace Tessera.Tests.Training.Parallel;

/// <summary>What a run recorded: per step the global loss, the reduced gradient (before the update) and the collectives issued; then the final weights and moments.</summary>
internal sealed record RunRecord(double[] Losses, double[][] Gradients, long[] Collectives, int ExpectedCollectives, double[] Values, double[] M, double[] V);

/// <summary>Runs the same tiny F64 training on W thread ranks or on one rank with W accumulation micro-batches.</summary>
internal static class ParallelRun
{
    public const int B = 2, T = 8, Seed = 5;

    // Steps stays 20 whatever a test runs, so every run follows the same learning-rate schedule.
    public static TrainerOptions Options(int steps, int accumulation = 1, int batch = B) => new()
    {
        BatchSize = batch, SequenceLength = T, Steps = 20, GradientAccumulationSteps = accumulation,
        LearningRate = 3e-3, WarmupSteps = 2, Seed = Seed, LogEvery = 1,
    };

    public static Transformer NewModel(string preset, IBackend backend)
    {
        var model = new Transformer(ModelPresets.Get(preset), backend, DType.F64);
        model.InitializeWeights(Seed);
        return model;
    }

    public static string WriteShard(string dir)
    {
        var path = Path.Combine(dir, "train.bin");
        var rng = new Random(11);
        TokenShard.Write(path, Enumerable.Range(0, 2000).Select(_ => rng.Next(96)).ToArray());
        return path;
    }

    /// <summary>The reference: one rank, micro-batches of B, W accumulation steps (rank r's slice is micro-batch r).</summary>
    public static RunRecord Single(string preset, string shard, int world, int steps, AdamWOptions adamW)
    {
        var model = NewModel(preset, new CpuBackend(2));
        var trainer = new Trainer(model, new AdamWOptimizer(model.Parameters, adamW), new TokenDataLoader([shard], B, T), null, Options(steps, world));
        var losses = new double[steps];
        var grads = new double[steps][];
        for (int s = 0; s < steps; s++)
        {
            losses[s] = trainer.TrainStep();
            grads[s] = model.Backend.ToArray<double>(model.Parameters.Grads);   // AdamW leaves the gradients as they were
        }
        return new RunRecord(losses, grads, [], 0, model.Backend.ToArray<double>(model.Parameters.Values),
            model.Backend.ToArray<double>(((SingleDevice)trainer.Parallelism).Optimizer.M), model.Backend.ToArray<double>(((SingleDevice)trainer.Parallelism).Optimizer.V));
    }

    /// <summary>
    /// W thread ranks, each with micro-batches of B and <paramref name="accumulation"/> steps; pieces of every rank assembled
    /// into full arrays. <paramref name="shardedConstruction"/> (ZeRO-3): the model is built deferred and initialized through
    /// the trainer into the rank's shards, instead of built and initialized whole, then sharded.
    /// </summary>
    public static RunRecord Parallel(string preset, string shard, int world, int steps, DataParallelOptions parallel, AdamWOptions adamW, int accumulation = 1,
        bool shardedConstruction = false)
    {
        var perRank = ParallelTraining.RunThreadRanks(world, ctx =>
        {
            var model = shardedConstruction ? new Transformer(ModelPresets.Get(preset), ctx.Backend, DType.F64, ArenaStorage.Deferred) : NewModel(preset, ctx.Backend);
            var loader = new TokenDataLoader([shard], B, T, ctx.Rank, world);
            var strategy = DataParallelism.Create(model, ctx.Group, parallel, adamW, ctx.Host);
            var trainer = new Trainer(model, strategy, loader, null, Options(steps, accumulation));
            if (shardedConstruction) trainer.InitializeWeights(Seed);
            var losses = new double[steps];
            var grads = new List<(long, double[])>[steps];
            var counts = new long[steps];
            for (int s = 0; s < steps; s++)
            {
                long before = ctx.Group.CollectiveCount;
                losses[s] = trainer.TrainStep();
                counts[s] = ctx.Group.CollectiveCount - before;
                grads[s] = strategy.Layout.Owned.Select(r => (r.ArenaOffset, ctx.Backend.ToArray<double>(strategy.Gradient(r)))).ToList();
            }
            return (losses, grads, counts, trainer.CollectivesPerStep, Owned(strategy));
        }, TimeSpan.FromSeconds(60));
        long length = ArenaLength(preset);
        // Plain data parallelism: every rank owns the whole arena; take rank 0's.
        var owners = parallel.Stage == ZeroStage.None ? perRank.Take(1).ToArray() : perRank;
        var gradients = Enumerable.Range(0, steps).Select(s => Assemble(length, owners.Select(r => r.grads[s]))).ToArray();
        var (values, m, v) = AssembleState(length, owners.Select(r => r.Item5));
        for (int r = 1; r < world; r++)
            if (!perRank[r].losses.SequenceEqual(perRank[0].losses)) throw new InvalidOperationException($"rank {r} logged other losses than rank 0");
        return new RunRecord(perRank[0].losses, gradients, perRank[0].counts, perRank[0].Item4, values, m, v);
    }

    /// <summary>A rank's owned values and moments: (arena offset, value, m, v) per owned range.</summary>
    public static List<(long Offset, double[] Value, double[] M, double[] V)> Owned(DataParallelism strategy)
    {
        var device = strategy.Model.Backend;
        var state = strategy.Optimizer.Host ?? device;
        return strategy.Layout.Owned.Select(r =>
        {
            var shape = new Shape((int)r.Length);
            return (r.ArenaOffset, device.ToArray<double>(strategy.Value(r)),
                state.ToArray<double>(strategy.Optimizer.M.Narrow(r.ShardOffset, shape)), state.ToArray<double>(strategy.Optimizer.V.Narrow(r.ShardOffset, shape)));
        }).ToList();
    }

    public static (double[] Values, double[] M, double[] V) AssembleState(long length, IEnumerable<List<(long Offset, double[] Value, double[] M, double[] V)>> ranks)
    {
        var all = ranks.SelectMany(x => x).ToList();
        return (Assemble(length, all.Select(x => (x.Offset, x.Value))), Assemble(length, all.Select(x => (x.Offset, x.M))), Assemble(length, all.Select(x => (x.Offset, x.V))));
    }

    public static double[] Assemble(long length, IEnumerable<List<(long, double[])>> ranks) => Assemble(length, ranks.SelectMany(x => x));

    /// <summary>Places pieces into one arena-long array; every element must be covered exactly once.</summary>
    public static double[] Assemble(long length, IEnumerable<(long Offset, double[] Data)> pieces)
    {
        var full = new double[length];
        var covered = new int[length];
        foreach (var (offset, data) in pieces)
        {
            data.CopyTo(full, offset);
            for (long i = offset; i < offset + data.Length; i++) covered[i]++;
        }
        int bad = Array.FindIndex(covered, c => c != 1);
        if (bad >= 0) throw new InvalidOperationException($"arena element {bad} is owned {covered[bad]} times across ranks");
        return full;
    }

    public static long ArenaLength(string preset) => new ParameterArenaProbe(preset).Length;

    private sealed class ParameterArenaProbe(string preset)
    {
        public long Length { get; } = new Transformer(ModelPresets.Get(preset), new CpuBackend(1), DType.F64).Parameters.Length;
    }
}
