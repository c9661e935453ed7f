using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Nn;
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
/// The shard bookkeeping of F32 masters for BF16 data-parallel runs, on CPU thread ranks (which store BF16 and move it,
/// but cannot train in it). Each rank is put in the state training leaves it in: its owned ranges of the F32 masters,
/// BF16 values and F32 moments hold the run's state, the masters elsewhere are stale (NaN here, so any leak shows),
/// and with offload the masters live only on the host. A checkpoint of that must hold the whole F32 model (its shards
/// and the Hugging Face export) and load on another world size and stage, and into the plain one-rank trainer,
/// bit for bit, with the BF16 values the masters rounded.
/// </summary>
public sealed class MixedPrecisionShardedCheckpointTests : IDisposable
{
    private const string Preset = "gpt2-debug";
    private const int SavedStep = 7;
    private readonly TemporaryRunFolder _run = new("tessera-bf16-zero-ckpt-");
    private readonly long _length;
    private readonly float[] _masters, _m, _v;   // the run's state, whole arena (F32; masters mostly not BF16-representable)

    public MixedPrecisionShardedCheckpointTests()
    {
        _length = NewModel(new CpuBackend(1)).Parameters.Length;
        var rng = new Random(42);
        _masters = Enumerable.Range(0, (int)_length).Select(_ => (float)(rng.NextDouble() * 2 - 1) * 0.1f).ToArray();
        _m = Enumerable.Range(0, (int)_length).Select(_ => (float)(rng.NextDouble() * 2 - 1) * 1e-3f).ToArray();
        _v = Enumerable.Range(0, (int)_length).Select(_ => (float)rng.NextDouble() * 1e-6f).ToArray();
    }

    public void Dispose() => _run.Dispose();

    private static Transformer NewModel(IBackend backend, int seed = ParallelRun.Seed)
    {
        var model = new Transformer(ModelPresets.Get(Preset), backend, DType.BF16);
        model.InitializeWeights(seed);
        return model;
    }

    private Trainer NewTrainer(RankContext ctx, DataParallelOptions parallel, int seed = ParallelRun.Seed) =>
        TrainerStrategies.DataParallel(NewModel(ctx.Backend, seed), ctx.Group, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, ctx.WorldSize),
            ParallelRun.Options(SavedStep + 1), new AdamWOptions(), parallel, ctx.Host);

    /// <summary>Puts a rank in the state training leaves it in (see the class summary).</summary>
    private void PlantTrainedState(Trainer trainer)
    {
        var model = trainer.Model;
        var device = model.Backend;
        var communication = trainer.Strategy();
        var opt = communication.Optimizer;
        var state = opt.Host ?? device;
        if (model.Layout.Storage is ParameterArena { Masters: { } deviceMasters }) device.Fill(deviceMasters, double.NaN);
        if (communication is FullyShardedDataParallel) Assert.IsType<ShardedParameterStorage>(model.Layout.Storage);   // ZeRO-3: only the shards exist
        foreach (var r in communication.Layout.Owned)
        {
            var shape = new Shape((int)r.Length);
            var masters = _masters.AsSpan((int)r.ArenaOffset, (int)r.Length);
            var (masterBackend, master) = opt.MasterOf(r);
            masterBackend.CopyFromHost<float>(masters, master);
            device.CopyFromHost<BFloat16>(ToBf16(masters), communication.Value(r));
            state.CopyFromHost<float>(_m.AsSpan((int)r.ArenaOffset, (int)r.Length), opt.M.Narrow(r.ShardOffset, shape));
            state.CopyFromHost<float>(_v.AsSpan((int)r.ArenaOffset, (int)r.Length), opt.V.Narrow(r.ShardOffset, shape));
        }
        trainer.Step = SavedStep;
        opt.StepCount = SavedStep;
    }

    [Theory]
    [InlineData(3, ZeroStage.Parameters, false, 2, ZeroStage.OptimizerStates, true)]
    [InlineData(2, ZeroStage.OptimizerStates, true, 3, ZeroStage.Gradients, false)]
    [InlineData(1, ZeroStage.None, true, 2, ZeroStage.Parameters, false)]
    public void Bf16CheckpointHoldsTheWholeF32MastersAndResumesOnAnotherWorldAndOnOneRank(
        int savedWorld, ZeroStage savedStage, bool savedOffload, int loadedWorld, ZeroStage loadedStage, bool loadedOffload)
    {
        var store = _run.Checkpoints;
        ParallelTraining.RunThreadRanks(savedWorld, ctx =>
        {
            var trainer = NewTrainer(ctx, new DataParallelOptions { Stage = savedStage, OffloadOptimizer = savedOffload, BucketElements = 1500, PoisonReleasedParameters = true });
            PlantTrainedState(trainer);
            return ShardedCheckpoint.Save(store, trainer, "byte");
        }, TimeSpan.FromSeconds(60));
        var dir = store.Latest()!;
        Assert.Equal(savedWorld, Directory.GetFiles(dir, "zero_shard_*").Length);
        Assert.Equal("BF16", TrainingCheckpoint.ReadState(dir).DType);

        // Rank 0's Hugging Face export is the whole F32 model, although rank 0 held only its shard of the masters.
        var exported = NewModel(new CpuBackend(1), seed: 99);
        using (var hf = HuggingFaceModelDirectory.Open(dir, exported.Config))
            hf.LoadInto(exported.Parameters.Parameters, exported.Backend);
        AssertParameters(_masters, exported.Backend.ToArray<float>(exported.Parameters.Masters!), exported.Layout, "exported master");

        // Another world size and stage: every rank gets the whole masters and their BF16 copy, and the moments of its shard.
        ParallelTraining.RunThreadRanks(loadedWorld, ctx =>
        {
            var trainer = NewTrainer(ctx, new DataParallelOptions { Stage = loadedStage, OffloadOptimizer = loadedOffload, BucketElements = 1000 }, seed: 99);
            ShardedCheckpoint.Restore(dir, trainer);
            Assert.Equal(SavedStep, trainer.Step);
            Assert.Equal(SavedStep, trainer.Strategy().StepCount);
            var arena = trainer.Model.Layout;
            var full = arena.Storage as ParameterArena;     // null under ZeRO-3: only shards
            var device = trainer.Model.Backend;
            string rank = $"rank {ctx.Rank} of {ctx.WorldSize}";
            bool wholeMasters = !loadedOffload && loadedStage != ZeroStage.Parameters;
            if (!wholeMasters) Assert.Null(full?.Masters);   // the host shard (offload) or the master shard (ZeRO-3) is the only F32 copy
            else AssertParameters(_masters, device.ToArray<float>(full!.Masters!), arena, $"{rank}: master");
            if (loadedStage != ZeroStage.Parameters) AssertBf16Copy(_masters, device.ToArray<BFloat16>(full!.Values), arena, $"{rank}: value");
            else
            {
                var values = trainer.Strategy().GatherValuesToHost(root: 0);
                if (ctx.Rank == 0) AssertBf16Copy(_masters, values!.Select(BFloat16.FromSingle).ToArray(), arena, $"{rank}: gathered value");
            }
            var opt = trainer.Strategy().Optimizer;
            var state = opt.Host ?? device;
            foreach (var r in trainer.Strategy().Layout.Owned)
            {
                var shape = new Shape((int)r.Length);
                AssertOwned(_m, state.ToArray<float>(opt.M.Narrow(r.ShardOffset, shape)), r, arena, $"{rank}: m");
                AssertOwned(_v, state.ToArray<float>(opt.V.Narrow(r.ShardOffset, shape)), r, arena, $"{rank}: v");
                if (opt.Masters is not null) AssertOwned(_masters, state.ToArray<float>(opt.Masters.Narrow(r.ShardOffset, shape)), r, arena, $"{rank}: host master");
            }
            // Offloaded or ZeRO-3: the whole F32 model comes from every rank's shard, through unit-size device buffers.
            if (!wholeMasters)
            {
                var gathered = trainer.Strategy().GatherMastersToHost(root: ctx.WorldSize - 1);
                if (ctx.Rank == ctx.WorldSize - 1) AssertParameters(_masters, gathered!, arena, $"{rank}: gathered host master");
                else Assert.Null(gathered);
                return 0;
            }
            // After training only the owned masters are current; synchronizing must rebuild them all.
            device.Fill(full!.Masters!, double.NaN);
            if (opt.Masters is null)
                foreach (var r in trainer.Strategy().Layout.Owned)
                    device.CopyFromHost<float>(_masters.AsSpan((int)r.ArenaOffset, (int)r.Length), full.Masters!.Narrow(r.ArenaOffset, new Shape((int)r.Length)));
            ((BucketedDataParallel)trainer.Parallelism).SynchronizeMasters();
            AssertParameters(_masters, device.ToArray<float>(full.Masters!), arena, $"{rank}: synchronized master");
            return 0;
        }, TimeSpan.FromSeconds(60));

        // The plain one-rank trainer.
        var backend = new CpuBackend(1);
        var single = NewModel(backend, seed: 99);
        var plain = new Trainer(single, new AdamWOptimizer(single.Parameters, new AdamWOptions()), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(SavedStep + 1));
        ShardedCheckpoint.Restore(dir, plain);
        Assert.Equal(SavedStep, plain.Step);
        AssertParameters(_masters, backend.ToArray<float>(single.Parameters.Masters!), single.Layout, "one rank: master");
        AssertBf16Copy(_masters, backend.ToArray<BFloat16>(single.Parameters.Values), single.Layout, "one rank: value");
        AssertParameters(_m, backend.ToArray<float>(plain.AdamW().M), single.Layout, "one rank: m");
        AssertParameters(_v, backend.ToArray<float>(plain.AdamW().V), single.Layout, "one rank: v");
    }

    [Theory]
    [InlineData(ZeroStage.OptimizerStates)]
    [InlineData(ZeroStage.Parameters)]
    public void OffloadedBf16RunKeepsNoDeviceMastersAndItsCheckpointReloadsIdentically(ZeroStage stage)
    {
        // The arena of an offloaded BF16 run holds BF16 values and gradients and nothing else: 2 x 2 bytes per element
        // (the F32 masters, 4 bytes per element, live only in the host shards). The save must then read the masters from
        // the host, and a reload into another offloaded run must give back the same host masters, BF16 values and moments.
        var store = _run.Checkpoints;
        var parallel = new DataParallelOptions { Stage = stage, OffloadOptimizer = true, BucketElements = 1500 };
        ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = NewModel(ctx.Backend);
            var arena = model.Parameters;
            var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, ctx.WorldSize),
                ParallelRun.Options(SavedStep + 1), new AdamWOptions(), parallel, ctx.Host);
            Assert.True(arena.MastersReleased);
            Assert.Null(arena.Masters);
            Assert.All(model.Layout.Parameters, p => Assert.Null(p.Master));
            // ZeRO-3 frees the arena's buffers as well (the value and gradient shards hold the rank's part).
            Assert.Equal(stage == ZeroStage.Parameters ? 0 : 2 * arena.Length * DType.BF16.SizeInBytes(), arena.AllocatedBytes);
            // Loading through the arena would write the BF16 copy in the master's place: refused.
            Assert.Throws<InvalidOperationException>(() => trainer.Model.InitializeWeights(1));
            PlantTrainedState(trainer);
            return ShardedCheckpoint.Save(store, trainer, "byte");
        }, TimeSpan.FromSeconds(60));
        var dir = store.Latest()!;
        var exported = NewModel(new CpuBackend(1), seed: 99);
        using (var hf = HuggingFaceModelDirectory.Open(dir, exported.Config))
            hf.LoadInto(exported.Parameters.Parameters, exported.Backend);
        AssertParameters(_masters, exported.Backend.ToArray<float>(exported.Parameters.Masters!), exported.Layout, "exported master");

        ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var trainer = NewTrainer(ctx, parallel, seed: 99);
            ShardedCheckpoint.Restore(dir, trainer);
            var arena = trainer.Model.Layout;
            Assert.Null((arena.Storage as ParameterArena)?.Masters);
            var opt = trainer.Strategy().Optimizer;
            string rank = $"rank {ctx.Rank}";
            foreach (var r in trainer.Strategy().Layout.Owned)
            {
                var shape = new Shape((int)r.Length);
                AssertOwned(_masters, opt.Host!.ToArray<float>(opt.Masters!.Narrow(r.ShardOffset, shape)), r, arena, $"{rank}: host master");
                AssertOwned(_m, opt.Host!.ToArray<float>(opt.M.Narrow(r.ShardOffset, shape)), r, arena, $"{rank}: m");
                AssertOwned(_v, opt.Host!.ToArray<float>(opt.V.Narrow(r.ShardOffset, shape)), r, arena, $"{rank}: v");
            }
            var gathered = trainer.Strategy().GatherMastersToHost(root: 0);
            if (ctx.Rank == 0) AssertParameters(_masters, gathered!, arena, $"{rank}: gathered master");
            var values = trainer.Strategy().GatherValuesToHost(root: 0);
            if (ctx.Rank == 0)
                foreach (var p in arena.Parameters)
                    for (long i = p.Offset; i < p.Offset + p.NumElements; i++)
                        if (BFloat16.FromSingle(_masters[i]).ToSingle() != values![i])
                            Assert.Fail($"{rank}: value of '{p.Name}' [{i - p.Offset}]: {values[i]:R} is not the master {_masters[i]:R} rounded to BF16");
            return 0;
        }, TimeSpan.FromSeconds(60));
    }

    [Fact]
    public void Bf16CheckpointDoesNotLoadIntoAnF32Run()
    {
        var store = _run.Checkpoints;
        ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var trainer = NewTrainer(ctx, new DataParallelOptions { Stage = ZeroStage.Gradients });
            PlantTrainedState(trainer);
            return ShardedCheckpoint.Save(store, trainer, "byte");
        }, TimeSpan.FromSeconds(60));
        var model = new Transformer(ModelPresets.Get(Preset), new CpuBackend(1), DType.F32);
        var trainer = new Trainer(model, new AdamWOptimizer(model.Parameters, new AdamWOptions()), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(2));
        var e = Assert.Throws<CheckpointException>(() => ShardedCheckpoint.Restore(store.Latest()!, trainer));
        Assert.Contains("saved in BF16", e.Message);
    }

    private static BFloat16[] ToBf16(ReadOnlySpan<float> values)
    {
        var result = new BFloat16[values.Length];
        for (int i = 0; i < values.Length; i++) result[i] = BFloat16.FromSingle(values[i]);
        return result;
    }

    /// <summary>Bitwise over every parameter element (the alignment padding between parameters is not state).</summary>
    private static void AssertParameters(float[] expected, float[] actual, ParameterLayout arena, string what)
    {
        foreach (var p in arena.Parameters)
            for (long i = p.Offset; i < p.Offset + p.NumElements; i++)
                if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i]))
                    Assert.Fail($"{what} of '{p.Name}' [{i - p.Offset}] (arena {i}): expected {expected[i]:R}, got {actual[i]:R}");
    }

    private static void AssertBf16Copy(float[] masters, BFloat16[] values, ParameterLayout arena, string what)
    {
        foreach (var p in arena.Parameters)
            for (long i = p.Offset; i < p.Offset + p.NumElements; i++)
                if (!BFloat16.FromSingle(masters[i]).Equals(values[i]))
                    Assert.Fail($"{what} of '{p.Name}' [{i - p.Offset}]: {values[i]} is not the master {masters[i]:R} rounded to BF16");
    }

    /// <summary>An owned range's state against the whole-arena expectation, on parameter elements only.</summary>
    private static void AssertOwned(float[] expected, float[] actual, OwnedRange r, ParameterLayout arena, string what)
    {
        foreach (var p in arena.Parameters)
        {
            long lo = Math.Max(r.ArenaOffset, p.Offset), hi = Math.Min(r.ArenaOffset + r.Length, p.Offset + p.NumElements);
            for (long i = lo; i < hi; i++)
                if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(actual[i - r.ArenaOffset]))
                    Assert.Fail($"{what} of '{p.Name}' [{i - p.Offset}]: expected {expected[i]:R}, got {actual[i - r.ArenaOffset]:R}");
        }
    }
}
