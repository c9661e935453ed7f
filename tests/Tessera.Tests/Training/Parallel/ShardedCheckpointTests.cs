using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

public sealed class ShardedCheckpointTests : IDisposable
{
    private const string Preset = "gpt2-debug";
    private readonly TemporaryRunFolder _run = new("tessera-zero-ckpt-");

    public void Dispose() => _run.Dispose();

    [Fact]
    public void ZeroThreeCheckpointOfFourRanksResumesOnTwoAndOnOneWithIdenticalState()
    {
        var adamW = new AdamWOptions();
        var store = _run.Checkpoints;
        long length = ParallelRun.ArenaLength(Preset);

        // Four ranks, ZeRO-3: three steps, save, then one more step (the run that never stopped).
        var saved = ParallelTraining.RunThreadRanks(4, ctx =>
        {
            var model = ParallelRun.NewModel(Preset, ctx.Backend);
            var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], 2, ParallelRun.T, ctx.Rank, 4),
                ParallelRun.Options(4), adamW, new DataParallelOptions { Stage = ZeroStage.Parameters, PoisonReleasedParameters = true }, ctx.Host);
            for (int s = 0; s < 3; s++) trainer.TrainStep();
            ShardedCheckpoint.Save(store, trainer, "byte");
            var owned = ParallelRun.Owned(trainer.Strategy());
            return (owned, next: trainer.TrainStep());
        }, TimeSpan.FromSeconds(60));
        var (values, m, v) = ParallelRun.AssembleState(length, saved.Select(r => r.owned));
        double nextLoss = saved[0].next;
        var dir = store.Latest()!;
        Assert.True(File.Exists(Path.Combine(dir, "model.safetensors")));
        Assert.Equal(4, Directory.GetFiles(dir, "zero_shard_*").Length);

        // Two ranks, ZeRO-1, micro-batches of 4 rows: the same global batch of 8 rows.
        var two = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = ParallelRun.NewModel(Preset, ctx.Backend);
            model.InitializeWeights(seed: 99);   // the checkpoint must overwrite these
            var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], 4, ParallelRun.T, ctx.Rank, 2),
                ParallelRun.Options(4, batch: 4), adamW, new DataParallelOptions { Stage = ZeroStage.OptimizerStates }, ctx.Host);
            ShardedCheckpoint.Restore(dir, trainer);
            Assert.Equal(3, trainer.Step);
            var owned = ParallelRun.Owned(trainer.Strategy());
            return (owned, next: trainer.TrainStep());
        }, TimeSpan.FromSeconds(60));
        var (values2, m2, v2) = ParallelRun.AssembleState(length, two.Select(r => r.owned));
        DataParallelTests.AssertBitIdentical(values, values2, "parameters on 2 ranks");
        DataParallelTests.AssertBitIdentical(m, m2, "m on 2 ranks");
        DataParallelTests.AssertBitIdentical(v, v2, "v on 2 ranks");
        // The next step sums the same 8 rows in another grouping: equal to rounding (see DataParallelTests.Tolerance).
        DataParallelTests.AssertClose([nextLoss], [two[0].next], "next loss on 2 ranks");

        // Two ranks, ZeRO-3 built deferred (sharded construction): the restore writes the owned ranges straight into the shards.
        var deferred = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = new Tessera.Models.Transformer(Tessera.Models.ModelPresets.Get(Preset), ctx.Backend, DType.F64, Tessera.Nn.ArenaStorage.Deferred);
            var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], 4, ParallelRun.T, ctx.Rank, 2),
                ParallelRun.Options(4, batch: 4), adamW, new DataParallelOptions { Stage = ZeroStage.Parameters }, ctx.Host);
            ShardedCheckpoint.Restore(dir, trainer);
            Assert.Equal(3, trainer.Step);
            Assert.IsType<ShardedParameterStorage>(model.Layout.Storage);   // no full arena was ever built
            var owned = ParallelRun.Owned(trainer.Strategy());
            return (owned, next: trainer.TrainStep());
        }, TimeSpan.FromSeconds(60));
        var (values3, m3, v3) = ParallelRun.AssembleState(length, deferred.Select(r => r.owned));
        DataParallelTests.AssertBitIdentical(values, values3, "parameters on 2 deferred ZeRO-3 ranks");
        DataParallelTests.AssertBitIdentical(m, m3, "m on 2 deferred ZeRO-3 ranks");
        DataParallelTests.AssertBitIdentical(v, v3, "v on 2 deferred ZeRO-3 ranks");
        DataParallelTests.AssertClose([nextLoss], [deferred[0].next], "next loss on 2 deferred ZeRO-3 ranks");

        // One rank, the plain trainer, 4 micro-batches of 2 rows (micro-batch r = rank r's slice).
        var backend = new CpuBackend(2);
        var single = ParallelRun.NewModel(Preset, backend);
        single.InitializeWeights(seed: 99);
        var trainer1 = new Trainer(single, new AdamWOptimizer(single.Parameters, adamW), new TokenDataLoader([_run.Shard], 2, ParallelRun.T), null, ParallelRun.Options(4, accumulation: 4));
        ShardedCheckpoint.Restore(dir, trainer1);
        Assert.Equal(3, trainer1.Step);
        DataParallelTests.AssertBitIdentical(values, backend.ToArray<double>(single.Parameters.Values), "parameters on 1 rank");
        DataParallelTests.AssertBitIdentical(m, backend.ToArray<double>(trainer1.AdamW().M), "m on 1 rank");
        DataParallelTests.AssertBitIdentical(v, backend.ToArray<double>(trainer1.AdamW().V), "v on 1 rank");
        DataParallelTests.AssertClose([nextLoss], [trainer1.TrainStep()], "next loss on 1 rank");
    }

    [Fact]
    public void MissingShardIsRefusedByTheManifest()
    {
        var store = _run.Checkpoints;
        ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = ParallelRun.NewModel(Preset, ctx.Backend);
            var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], 2, ParallelRun.T, ctx.Rank, 2),
                ParallelRun.Options(2), new AdamWOptions(), new DataParallelOptions { Stage = ZeroStage.Gradients }, ctx.Host);
            trainer.TrainStep();
            return ShardedCheckpoint.Save(store, trainer, "byte");
        }, TimeSpan.FromSeconds(60));
        var dir = store.Latest()!;
        File.Delete(Path.Combine(dir, ShardedCheckpoint.ShardFile(1, 2)));
        var model1 = ParallelRun.NewModel(Preset, new CpuBackend(1));
        var t = new Trainer(model1, new AdamWOptimizer(model1.Parameters, new AdamWOptions()), new TokenDataLoader([_run.Shard], 2, ParallelRun.T), null, ParallelRun.Options(2));
        var e = Assert.Throws<CheckpointException>(() => ShardedCheckpoint.Restore(dir, t));
        Assert.Contains("zero_shard_00001_of_00002", e.Message);
    }
}
