using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// A checkpoint saved by a tp 2 x dp 2 run (ZeRO-1, F64, llama-debug: its key/value heads are split, its norms replicated)
/// loads into other layouts: one device, tp 4 (key/value heads replicated on pairs of ranks), and dp 4 under ZeRO-2. Each
/// must hold exactly (bitwise: the values are copied, never computed) the saved run's whole parameters and AdamW moments,
/// put back together from its shards; and the first step after the restore must give the loss the saved run itself took
/// (within 1e-10: the layouts sum the same numbers in other orders). The same for qwen2-moe-debug, whose experts and shared
/// expert are saved as each tp rank's slices of their hidden units (its router and shared gate replicated) and put back
/// together at tp 4, on one device and under data parallelism.
/// </summary>
public sealed class ReshardingCheckpointTests : IDisposable
{
    private const string Preset = "llama-debug";
    private string _preset = Preset;
    private readonly TemporaryRunFolder _run = new("tessera-reshard-");

    public void Dispose() => _run.Dispose();

    /// <summary>A rank's local state: its tp coordinate, its parameters, and its owned pieces (arena offset, value, m, v).</summary>
    private sealed record RankState(int TensorRank, IReadOnlyList<Parameter> Parameters, long Length, List<(long Offset, double[] Value, double[] M, double[] V)> Owned);

    /// <summary>The whole parameters and moments by name, from every tp rank's local arena (assembled from the owned pieces of its dp group).</summary>
    private static Dictionary<string, (double[] Value, double[] M, double[] V)> Whole(IEnumerable<RankState> ranks, bool everyRankOwnsAll)
    {
        var result = new Dictionary<string, (double[] Value, double[] M, double[] V)>();
        foreach (var column in ranks.GroupBy(r => r.TensorRank))
        {
            var owners = everyRankOwnsAll ? column.Take(1) : column;
            var (values, m, v) = ParallelRun.AssembleState(column.First().Length, owners.Select(r => r.Owned));
            foreach (var p in column.First().Parameters)
            {
                if (!result.TryGetValue(p.Name, out var whole))
                    result[p.Name] = whole = (new double[p.GlobalShape.NumElements], new double[p.GlobalShape.NumElements], new double[p.GlobalShape.NumElements]);
                p.ScatterToGlobal<double>(values.AsSpan((int)p.Offset, (int)p.NumElements), whole.Value);
                p.ScatterToGlobal<double>(m.AsSpan((int)p.Offset, (int)p.NumElements), whole.M);
                p.ScatterToGlobal<double>(v.AsSpan((int)p.Offset, (int)p.NumElements), whole.V);
            }
        }
        return result;
    }

    private static RankState Local(Transformer model, int tensorRank, SingleDevice single)
    {
        var backend = model.Backend;
        var arena = model.Parameters;
        return new RankState(tensorRank, model.Layout.Parameters, model.Layout.Length,
            [(0, backend.ToArray<double>(arena.Values), backend.ToArray<double>(single.Optimizer.M), backend.ToArray<double>(single.Optimizer.V))]);
    }

    private Transformer NewModel(IBackend backend, TensorParallelism? tensor)
    {
        var model = new Transformer(ModelPresets.Get(_preset), backend, DType.F64, tensorParallelism: tensor);
        model.InitializeWeights(seed: 99);   // the checkpoint must overwrite these
        return model;
    }

    [Theory]
    [InlineData(Preset)]
    [InlineData("qwen2-moe-debug")]   // every expert's slices (and the shared expert's) saved by each tp rank, regathered at tp 4
    public void CheckpointOfTensorTimesDataParallelRunLoadsExactlyAtOneDeviceTp4AndDp4(string preset)
    {
        _preset = preset;
        var adamW = new AdamWOptions();
        var store = _run.Checkpoints;
        // The saving run: tp 2 x dp 2, ZeRO-1, micro-batches of B per dp rank (global batch 2B); three steps, save, one more.
        var saveMesh = new DeviceMesh(dp: 2, tp: 2);
        var saved = ParallelTraining.RunThreadRanks(4, ctx =>
        {
            var groups = saveMesh.CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var model = new Transformer(ModelPresets.Get(preset), ctx.Backend, DType.F64, tensorParallelism: tensor);
            model.InitializeWeights(ParallelRun.Seed);
            var strategy = DataParallelism.Create(model, groups.Dp, new DataParallelOptions { Stage = ZeroStage.OptimizerStates, BucketElements = 1500 }, adamW, ctx.Host);
            var trainer = new Trainer(model, strategy, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, groups.Coordinate.Dp, 2), null, ParallelRun.Options(5));
            for (int s = 0; s < 3; s++) trainer.TrainStep();
            ShardedCheckpoint.Save(store, trainer, "byte");
            var state = new RankState(groups.Coordinate.Tp, model.Layout.Parameters, model.Layout.Length, ParallelRun.Owned(strategy));
            return (state, next: trainer.TrainStep());
        }, TimeSpan.FromSeconds(120));
        var expected = Whole(saved.Select(r => r.state), everyRankOwnsAll: false);
        double nextLoss = saved[0].next;
        var dir = store.Latest()!;
        Assert.True(File.Exists(Path.Combine(dir, ShardedCheckpoint.LayoutFile)));
        Assert.Equal(4, Directory.GetFiles(dir, "zero_shard_*").Length);

        void AssertExact(Dictionary<string, (double[] Value, double[] M, double[] V)> loaded, string where)
        {
            Assert.Equal(expected.Keys.Order(), loaded.Keys.Order());
            foreach (var (name, (value, m, v)) in expected)
            {
                DataParallelTests.AssertBitIdentical(value, loaded[name].Value, $"{where}: {name}");
                DataParallelTests.AssertBitIdentical(m, loaded[name].M, $"{where}: m of {name}");
                DataParallelTests.AssertBitIdentical(v, loaded[name].V, $"{where}: v of {name}");
            }
        }

        // One device, the global batch as 2 accumulated micro-batches.
        var cpu = new CpuBackend(2);
        var one = NewModel(cpu, null);
        var single = SingleDevice.For(one, adamW);
        var oneTrainer = new Trainer(one, single, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(5, accumulation: 2));
        ShardedCheckpoint.Restore(dir, oneTrainer);
        Assert.Equal(3, oneTrainer.Step);
        AssertExact(Whole([Local(one, 0, single)], everyRankOwnsAll: true), "one device");
        DataParallelTests.AssertClose([nextLoss], [oneTrainer.TrainStep()], "one device: next loss");

        // tp 4 (2 key/value heads: each on a pair of ranks), no data parallelism, 2 accumulated micro-batches.
        var tp4 = ParallelTraining.RunThreadRanks(4, ctx =>
        {
            var groups = new DeviceMesh(tp: 4).CreateGroups(ctx.Factory);
            var model = NewModel(ctx.Backend, new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: true), ctx.Factory));
            var strategy = SingleDevice.For(model, adamW);
            var trainer = new Trainer(model, strategy, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(5, accumulation: 2));
            ShardedCheckpoint.Restore(dir, trainer);
            return (state: Local(model, groups.Coordinate.Tp, strategy), next: trainer.TrainStep());
        }, TimeSpan.FromSeconds(120));
        AssertExact(Whole(tp4.Select(r => r.state), everyRankOwnsAll: true), "tp 4");
        DataParallelTests.AssertClose([nextLoss], [tp4[0].next], "tp 4: next loss");

        // dp 4 under ZeRO-2, micro-batches of B/2: the same global batch.
        var dp4 = ParallelTraining.RunThreadRanks(4, ctx =>
        {
            var model = NewModel(ctx.Backend, null);
            var strategy = DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = ZeroStage.Gradients, BucketElements = 1000 }, adamW, ctx.Host);
            var trainer = new Trainer(model, strategy, new TokenDataLoader([_run.Shard], ParallelRun.B / 2, ParallelRun.T, ctx.Rank, 4), null, ParallelRun.Options(5, batch: ParallelRun.B / 2));
            ShardedCheckpoint.Restore(dir, trainer);
            return (state: new RankState(0, model.Layout.Parameters, model.Layout.Length, ParallelRun.Owned(strategy)), next: trainer.TrainStep());
        }, TimeSpan.FromSeconds(120));
        AssertExact(Whole(dp4.Select(r => r.state), everyRankOwnsAll: false), "dp 4 ZeRO-2");
        DataParallelTests.AssertClose([nextLoss], [dp4[0].next], "dp 4: next loss");
    }

    [Fact]
    public void CheckpointWhoseParameterShapeDiffersIsRefusedNamingTheParameterAndShapes()
    {
        var store = _run.Checkpoints;
        var cpu = new CpuBackend(1);
        var model = NewModel(cpu, null);
        var trainer = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(2));
        trainer.TrainStep();
        var dir = ShardedCheckpoint.Save(store, trainer, "byte");
        var layoutPath = Path.Combine(dir, ShardedCheckpoint.LayoutFile);
        // Tamper with the recorded shape (and re-manifest, so that only the shape is wrong).
        var text = File.ReadAllText(layoutPath).Replace("\"shape\": [\n        96,", "\"shape\": [\n        97,");
        Assert.Contains("97", text);
        File.WriteAllText(layoutPath, text);
        var manifest = CheckpointManifest.Read(dir);
        manifest.Files[ShardedCheckpoint.LayoutFile] = CheckpointManifest.Describe(layoutPath);
        File.WriteAllText(Path.Combine(dir, "manifest.json"), System.Text.Json.JsonSerializer.Serialize(manifest));
        var e = Assert.Throws<CheckpointException>(() => ShardedCheckpoint.Restore(dir, trainer));
        Assert.Contains("'tok_emb.weight' was saved with shape (97, 32), this model's is (96, 32)", e.Message);
    }
}
