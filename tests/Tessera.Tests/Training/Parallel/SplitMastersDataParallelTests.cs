using Tessera.Distributed.InProcess;
using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// Split F32 masters (<see cref="MasterWeights.Split"/>) under plain data parallelism and ZeRO 1-3 on CPU thread ranks, against
/// the same layout with separate masters. The CPU backend cannot run a BF16 model's forward and backward, and its thread ranks
/// cannot reduce BF16, so each step plants the same reduced BF16 gradient (random, seed logged) where the strategy's
/// optimizer reads it (the arena's gradients, ZeRO-2's gradient shard, ZeRO-3's) and runs what a training step runs after the
/// reduction: the strategy's sharded AdamW (the norm all-reduce, clipping active, weight decay) and its all-gather of the
/// updated BF16 values. The split update is <see cref="IBackend.AdamWSplit"/>, op for op the separate update, so the tolerance
/// is zero: the joined masters, m and v are bitwise those of separate masters at every stage and world size, the values every
/// rank holds are exactly the joined masters' high halves, and they differ from the separate run's (round to nearest even) only
/// where a master is an exact tie (some are planted). Losses need the BF16 forward: they are compared on the GPU
/// (<c>Cuda/Training/SplitMastersDataParallelGpuTests</c>), where the two kinds of masters can differ after the first step
/// because the values differ at ties.
/// </summary>
public sealed class SplitMastersDataParallelTests : IDisposable
{
    private const string Preset = "gpt2-debug";
    private const int Steps = 3;
    private static readonly AdamWOptions AdamW = new() { MaxGradNorm = 1.0, WeightDecay = 0.1 };
    private readonly TemporaryRunFolder _run = new("tessera-split-dp-");

    public void Dispose() => _run.Dispose();

    /// <summary>What a run leaves: gathered to the test thread in arena layout.</summary>
    private sealed record RunState(uint[] InitialValues, uint[] Masters, uint[] Values, uint[] M, uint[] V, double[] GradNorms, uint[]?[] Synchronized);

    public static TheoryData<ZeroStage, int, bool> Layouts() => new()
    {
        { ZeroStage.None, 2, false }, { ZeroStage.OptimizerStates, 2, false }, { ZeroStage.Gradients, 2, false },
        { ZeroStage.Parameters, 2, false }, { ZeroStage.Parameters, 2, true },
        { ZeroStage.None, 4, false }, { ZeroStage.OptimizerStates, 4, false }, { ZeroStage.Gradients, 4, false }, { ZeroStage.Parameters, 4, true },
    };

    [Theory]
    [MemberData(nameof(Layouts))]
    public void SplitMastersGiveBitwiseTheSeparateMastersAndMomentsAndTheirHighHalvesAsValues(ZeroStage stage, int world, bool deferred)
    {
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}; {stage} on {world} ranks{(deferred ? ", sharded construction" : "")}");
        var separate = Run(MasterWeights.Separate, stage, world, deferred, seed);
        var split = Run(MasterWeights.Split, stage, world, deferred, seed);
        string where = $"{stage}, {world} ranks, seed {seed}";

        Assert.Equal(separate.GradNorms, split.GradNorms);
        Assert.True(separate.GradNorms.All(n => n > AdamW.MaxGradNorm), $"{where}: clipping never acted (norms {string.Join(", ", separate.GradNorms)})");
        AssertBitwise(separate.Masters, split.Masters, $"{where}: joined master");
        AssertBitwise(separate.M, split.M, $"{where}: m");
        AssertBitwise(separate.V, split.V, $"{where}: v");
        // Every rank's synchronized masters (stages 0-2: the low words gathered, the values whole already) are the gathered ones.
        for (int r = 0; r < world; r++)
            if (split.Synchronized[r] is { } synchronized) AssertBitwise(split.Masters, synchronized, $"{where}: rank {r}'s synchronized master");
        for (int r = 0; r < world; r++)
            if (separate.Synchronized[r] is { } synchronized) AssertBitwise(separate.Masters, synchronized, $"{where}: rank {r}'s synchronized separate master");

        // The values the stages gathered are exactly the masters' high halves; the separate copy rounds to nearest even.
        int differ = 0;
        for (int i = 0; i < split.Masters.Length; i++)
        {
            uint u = split.Masters[i];
            Assert.True(split.Values[i] == (u + 0x8000u) >> 16, $"{where}: element {i}: value 0x{split.Values[i]:X4} is not the high half of master 0x{u:X8}");
            if (split.Values[i] == separate.Values[i]) continue;
            differ++;
            Assert.True((u & 0xFFFFu) == 0x8000u, $"{where}: element {i}: values 0x{split.Values[i]:X4} (split) and 0x{separate.Values[i]:X4} (separate) differ though master 0x{u:X8} is no tie");
        }
        // The planted ties: the initial values differ exactly where a tie's truncated high half is even (split rounds away, RNE stays).
        int initialDiffer = split.InitialValues.Zip(separate.InitialValues).Count(p => p.First != p.Second);
        Assert.True(initialDiffer > 0, $"{where}: no planted tie changed a value");
        TestContext.Current.TestOutputHelper?.WriteLine($"{where}: {split.Masters.Length} elements, {initialDiffer} initial values and {differ} final values differ at ties; norms {string.Join(", ", split.GradNorms.Select(n => n.ToString("F4")))}");
    }

    /// <summary>
    /// ZeRO-3's persistent shards: a value and a gradient shard (BF16) and, for the masters, a U16 low-word shard with split
    /// masters (2 bytes a shard element) instead of an F32 master shard (4): 2 bytes a shard element less. Under ZeRO-1 the
    /// whole arena keeps its low-word plane (6 bytes an element against 8).
    /// </summary>
    [Fact]
    public void ZeroThreeKeepsALowWordShardTwoBytesAnElementSmallerThanTheMasterShard()
    {
        var bytes = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var result = new List<(long Persistent, long ShardLength, bool LowWords, bool Masters)>();
            foreach (var kind in new[] { MasterWeights.Separate, MasterWeights.Split })
            {
                var model = new Transformer(ModelPresets.Get(Preset), ctx.Backend, DType.BF16, ArenaStorage.Deferred, masters: kind);
                var dp = (FullyShardedDataParallel)DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = ZeroStage.Parameters, BucketElements = 1500 }, AdamW);
                result.Add((dp.PersistentBytes, dp.Layout.ShardLength, dp.LowWordShard is not null, dp.MasterShard is not null));
            }
            return result;
        }, TimeSpan.FromSeconds(60));
        foreach (var rank in bytes)
        {
            var (separate, split) = (rank[0], rank[1]);
            Assert.Equal(separate.ShardLength, split.ShardLength);
            Assert.True(separate.Masters && !separate.LowWords && split.LowWords && !split.Masters);
            Assert.Equal((2 + 2 + 4) * separate.ShardLength, separate.Persistent);
            Assert.Equal((2 + 2 + 2) * split.ShardLength, split.Persistent);
            Assert.Equal(2 * split.ShardLength, separate.Persistent - split.Persistent);
        }
        var config = ModelPresets.Get(Preset);
        var cpu = new CpuBackend(1);
        var arena = new Transformer(config, cpu, DType.BF16, masters: MasterWeights.Split).Parameters;
        ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = new Transformer(config, ctx.Backend, DType.BF16, masters: MasterWeights.Split);
            _ = DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = ZeroStage.OptimizerStates }, AdamW);
            Assert.Equal(6 * model.Parameters.Length, model.Parameters.AllocatedBytes);
            Assert.Null(model.Parameters.Masters);
            return 0;
        }, TimeSpan.FromSeconds(60));
        Assert.Equal(6 * arena.Length, arena.AllocatedBytes);
    }

    /// <summary>
    /// A sharded checkpoint of a split-master run (ZeRO-2 on 2 ranks, 2 steps) holds the joined F32 masters; restored into a
    /// split run on another stage and world (ZeRO-3 on 2 ranks, ZeRO-1 on 4, plain DP on 2) it gives back the values, low words
    /// (joined masters) and moments bit for bit, and one more step from there is the uninterrupted run's next step bit for bit.
    /// Restored into a separate-master run it gives the same F32 masters. The next step's gradient is small enough that clipping
    /// does not act: the clipping factor comes from the F32 sum of squares, whose roundings follow the sharding (per owned range,
    /// then across ranks), so under clipping a step on another world size may differ in the last bit of every element.
    /// </summary>
    [Theory]
    [InlineData(ZeroStage.Parameters, 2, MasterWeights.Split)]
    [InlineData(ZeroStage.OptimizerStates, 4, MasterWeights.Split)]
    [InlineData(ZeroStage.None, 2, MasterWeights.Split)]
    [InlineData(ZeroStage.Gradients, 2, MasterWeights.Separate)]
    public void CheckpointOfASplitRunResumesBitwiseOnAnotherLayout(ZeroStage loadedStage, int loadedWorld, MasterWeights loadedMasters)
    {
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        const int saved = 2;
        const float NextScale = 0.0005f;   // the next step's gradient: a norm of about 0.05, below MaxGradNorm
        var store = _run.Checkpoints;
        // The uninterrupted run: 2 steps, a checkpoint, a third step.
        var uninterrupted = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var trainer = NewTrainer(ctx, MasterWeights.Split, ZeroStage.Gradients, deferred: false);
            var dp = trainer.Strategy();
            WriteInitialMasters(dp, seed);
            for (int s = 1; s <= saved; s++) TakeStep(dp, seed, s);
            trainer.Step = saved;
            ShardedCheckpoint.Save(store, trainer, "byte");
            var atSave = Collect(dp);
            TakeStep(dp, seed, saved + 1, NextScale);
            return (AtSave: atSave, Next: Collect(dp));
        }, TimeSpan.FromSeconds(60));
        var dir = store.Latest()!;
        var expectedSave = Assemble(uninterrupted.Select(u => u.AtSave).ToArray());
        var expectedNext = Assemble(uninterrupted.Select(u => u.Next).ToArray());

        var resumed = ParallelTraining.RunThreadRanks(loadedWorld, ctx =>
        {
            var trainer = NewTrainer(ctx, loadedMasters, loadedStage, deferred: loadedStage == ZeroStage.Parameters);
            ShardedCheckpoint.Restore(dir, trainer);
            Assert.Equal(saved, trainer.Step);
            Assert.Equal(saved, trainer.Strategy().StepCount);
            var atLoad = Collect(trainer.Strategy());
            Assert.True(TakeStep(trainer.Strategy(), seed, saved + 1, NextScale) < AdamW.MaxGradNorm);
            return (AtLoad: atLoad, Next: Collect(trainer.Strategy()));
        }, TimeSpan.FromSeconds(60));
        var atLoad = Assemble(resumed.Select(r => r.AtLoad).ToArray());
        var next = Assemble(resumed.Select(r => r.Next).ToArray());
        string where = $"ZeRO-2 x 2 split -> {loadedStage} x {loadedWorld} {loadedMasters}";
        AssertBitwise(expectedSave.Masters, atLoad.Masters, $"{where}: restored master");
        AssertBitwise(expectedSave.M, atLoad.M, $"{where}: restored m");
        AssertBitwise(expectedSave.V, atLoad.V, $"{where}: restored v");
        AssertBitwise(expectedNext.Masters, next.Masters, $"{where}: master after the next step");
        AssertBitwise(expectedNext.M, next.M, $"{where}: m after the next step");
        AssertBitwise(expectedNext.V, next.V, $"{where}: v after the next step");
        if (loadedMasters == MasterWeights.Split)
        {
            AssertBitwise(expectedSave.Values, atLoad.Values, $"{where}: restored value");
            AssertBitwise(expectedNext.Values, next.Values, $"{where}: value after the next step");
        }
    }

    /// <summary>
    /// Sharded checkpoints of tensor-parallel ranks (one device's optimizer per rank, no data parallelism) keep split masters
    /// too: tp 2 ranks of llama-debug with split masters, planted F32 masters (exact ties among them) and moments, saved and
    /// restored on one device with split masters (the joined masters and moments bit for bit) and back on tp 2 (the values and
    /// low words bit for bit).
    /// </summary>
    [Fact]
    public void TensorParallelCheckpointOfSplitMastersLoadsExactlyOnOneDeviceAndBackOnTp2()
    {
        int seed = Environment.TickCount;
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {seed}");
        var config = ModelPresets.Get("llama-debug");
        var whole = new Transformer(config, new CpuBackend(1), DType.BF16, ArenaStorage.Deferred).Layout;
        var rng = new Random(seed);
        var expected = whole.Parameters.ToDictionary(p => p.Name, p => (
            Master: Enumerable.Range(0, (int)p.NumElements).Select(i => (double)Tie((float)(rng.NextDouble() * 2 - 1) * 0.1f, i % 41 == 0)).ToArray(),
            M: Enumerable.Range(0, (int)p.NumElements).Select(_ => (double)(float)((rng.NextDouble() * 2 - 1) * 1e-3)).ToArray(),
            V: Enumerable.Range(0, (int)p.NumElements).Select(_ => (double)(float)(rng.NextDouble() * 1e-6)).ToArray()));
        var store = _run.Checkpoints;
        (ushort[] Values, ushort[] Low)[] RunTp2(bool save) => ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var model = new Transformer(config, ctx.Backend, DType.BF16, tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory),
                masters: MasterWeights.Split);
            var single = SingleDevice.For(model, AdamW);
            var trainer = new Trainer(model, single, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(Steps));
            if (save)
            {
                foreach (var p in model.Layout.Parameters)
                {
                    var (master, m, v) = expected[p.Name];
                    var local = Array.ConvertAll(p.LocalValues(master), x => (float)x);
                    p.WriteMasterOrValue(t => ctx.Backend.CopyFromHost<float>(local, t));
                    var shape = new Shape((int)p.NumElements);
                    ctx.Backend.CopyFromHost<float>(Array.ConvertAll(p.LocalValues(m), x => (float)x), single.Optimizer.M.Narrow(p.Offset, shape));
                    ctx.Backend.CopyFromHost<float>(Array.ConvertAll(p.LocalValues(v), x => (float)x), single.Optimizer.V.Narrow(p.Offset, shape));
                }
                trainer.Step = 2;
                single.StepCount = 2;
                ShardedCheckpoint.Save(store, trainer, "byte");
            }
            else ShardedCheckpoint.Restore(store.Latest()!, trainer);
            return (ctx.Backend.ToArray<BFloat16>(model.Parameters.Values).Select(x => x.Bits).ToArray(), ctx.Backend.ToArray<ushort>(model.Parameters.LowWords!));
        }, TimeSpan.FromSeconds(60));
        var saved = RunTp2(save: true);

        var cpu = new CpuBackend(2);
        var one = new Transformer(config, cpu, DType.BF16, masters: MasterWeights.Split);
        var oneDevice = SingleDevice.For(one, AdamW);
        var oneTrainer = new Trainer(one, oneDevice, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(Steps));
        ShardedCheckpoint.Restore(store.Latest()!, oneTrainer);
        Assert.Equal(2, oneTrainer.Step);
        foreach (var p in one.Layout.Parameters)
        {
            var (master, m, v) = expected[p.Name];
            var shape = new Shape((int)p.NumElements);
            AssertBitwise(Bits(master), Array.ConvertAll(p.ReadMasterOrValue(t => cpu.ToArray<float>(t)), BitConverter.SingleToUInt32Bits), $"one device: master of {p.Name}");
            AssertBitwise(Bits(m), Array.ConvertAll(cpu.ToArray<float>(oneDevice.Optimizer.M.Narrow(p.Offset, shape)), BitConverter.SingleToUInt32Bits), $"one device: m of {p.Name}");
            AssertBitwise(Bits(v), Array.ConvertAll(cpu.ToArray<float>(oneDevice.Optimizer.V.Narrow(p.Offset, shape)), BitConverter.SingleToUInt32Bits), $"one device: v of {p.Name}");
        }
        var restored = RunTp2(save: false);
        for (int r = 0; r < 2; r++)
        {
            Assert.Equal(saved[r].Values, restored[r].Values);
            Assert.Equal(saved[r].Low, restored[r].Low);
        }

        static float Tie(float f, bool tie) => tie ? BitConverter.UInt32BitsToSingle((BitConverter.SingleToUInt32Bits(f) & 0xFFFF_0000u) | 0x8000u) : f;
        static uint[] Bits(double[] floats) => Array.ConvertAll(floats, x => BitConverter.SingleToUInt32Bits((float)x));
    }

    /// <summary>Whatever stays refused says so with the option's name: offload (it keeps whole F32 masters on the host).</summary>
    [Fact]
    public void OffloadRefusesSplitMastersNamingTheOption()
    {
        var cpu = new CpuBackend(1);
        var group = InProcessProcessGroup.Create(1, TimeSpan.FromSeconds(10))[0];
        foreach (var stage in new[] { ZeroStage.OptimizerStates, ZeroStage.Parameters })
        {
            var model = new Transformer(ModelPresets.Get(Preset), cpu, DType.BF16, masters: MasterWeights.Split);
            var e = Assert.Throws<NotSupportedException>(() => DataParallelism.Create(model, group, new DataParallelOptions { Stage = stage, OffloadOptimizer = true }, AdamW, new CpuBackend(1)));
            Assert.Contains("MasterWeights.Split", e.Message);
            Assert.Contains("offload", e.Message);
        }
    }

    private Trainer NewTrainer(RankContext ctx, MasterWeights masters, ZeroStage stage, bool deferred)
    {
        var model = new Transformer(ModelPresets.Get(Preset), ctx.Backend, DType.BF16, deferred ? ArenaStorage.Deferred : ArenaStorage.Full, masters: masters);
        return TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, ctx.WorldSize),
            ParallelRun.Options(Steps + 1), AdamW, new DataParallelOptions { Stage = stage, BucketElements = 1500 });
    }

    /// <summary>One kind of masters on <paramref name="world"/> thread ranks: initial masters, <see cref="Steps"/> planted steps, the state gathered.</summary>
    private static RunState Run(MasterWeights masters, ZeroStage stage, int world, bool deferred, int seed)
    {
        var ranks = ParallelTraining.RunThreadRanks(world, ctx =>
        {
            var model = new Transformer(ModelPresets.Get(Preset), ctx.Backend, DType.BF16, deferred ? ArenaStorage.Deferred : ArenaStorage.Full, masters: masters);
            var dp = DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = stage, BucketElements = 1500, PoisonReleasedParameters = true }, AdamW);
            Assert.Equal(masters, dp.MasterWeights);
            Assert.Equal(masters == MasterWeights.Split, dp.Optimizer.SplitMasters);
            WriteInitialMasters(dp, seed);
            var initialValues = dp.GatherValuesToHost(root: 0);
            var norms = new double[Steps];
            for (int s = 1; s <= Steps; s++) norms[s - 1] = TakeStep(dp, seed, s);
            var state = Collect(dp);
            uint[]? synchronized = null;
            if (dp is BucketedDataParallel bucketed)
            {
                bucketed.SynchronizeMasters();
                var arena = (ParameterArena)dp.Trained.Storage!;
                synchronized = masters == MasterWeights.Split
                    ? SplitMasterBits(ctx.Backend, arena.Values, arena.LowWords!)
                    : Array.ConvertAll(ctx.Backend.ToArray<float>(arena.Masters!), BitConverter.SingleToUInt32Bits);
            }
            return (Initial: initialValues, State: state, Norms: norms, Synchronized: synchronized);
        }, TimeSpan.FromSeconds(120));
        var whole = Assemble(ranks.Select(r => r.State).ToArray());
        return whole with
        {
            InitialValues = ValueBits(ranks[0].Initial!), GradNorms = ranks[0].Norms,
            Synchronized = ranks.Select(r => r.Synchronized).ToArray(),
        };
    }

    /// <summary>The initial F32 masters, the same for every run of a seed: random, with exact ties (low half 0x8000) planted.</summary>
    private static void WriteInitialMasters(DataParallelism dp, int seed)
    {
        var rng = new Random(seed);
        int planted = 0;
        foreach (var p in dp.Trained.Parameters)
        {
            var values = new double[p.NumElements];
            for (int i = 0; i < values.Length; i++)
            {
                float f = (float)(rng.NextDouble() * 2 - 1) * 0.1f;
                if (planted++ % 53 == 0) f = BitConverter.UInt32BitsToSingle((BitConverter.SingleToUInt32Bits(f) & 0xFFFF_0000u) | 0x8000u);
                values[i] = f;
            }
            dp.WriteWeights(p, values);
        }
        dp.MarkWeightsWritten();
    }

    /// <summary>
    /// Step <paramref name="step"/>: plants the reduced BF16 gradient (the same on every rank and for both kinds of masters)
    /// where this rank's optimizer reads it, updates and gathers the values. Returns the global gradient norm.
    /// </summary>
    private static double TakeStep(DataParallelism dp, int seed, int step, float scale = 0.05f)
    {
        var backend = dp.Model.Backend;
        var layout = dp.Trained;
        var rng = new Random(unchecked(seed * 31 + step));
        var g = new BFloat16[layout.Length];   // zero in the alignment padding, as a reduced gradient is
        foreach (var p in layout.Parameters)
            for (long i = 0; i < p.NumElements; i++) g[p.Offset + i] = BFloat16.FromSingle((float)(rng.NextDouble() * 2 - 1) * scale);
        if (layout.Storage is ParameterArena { Frozen: false } arena && dp.Options.Stage <= ZeroStage.OptimizerStates)
            backend.CopyFromHost<BFloat16>(g, arena.Grads);   // plain DP and ZeRO-1: the whole all-reduced gradient arena
        foreach (var r in dp.Layout.Owned)
            backend.CopyFromHost<BFloat16>(g.AsSpan((int)r.ArenaOffset, (int)r.Length), dp.Gradient(r));
        dp.Step(3e-3);
        dp.AfterUpdate();
        return dp.LastGradNorm();
    }

    /// <summary>This rank's part of the state: the whole joined masters and values (rank 0), and the moments of its owned ranges.</summary>
    private static (float[]? Masters, float[]? Values, List<(long Offset, float[] M, float[] V)> Moments, long Length) Collect(DataParallelism dp)
    {
        var masters = dp.GatherMastersToHost(root: 0);
        var values = dp.GatherValuesToHost(root: 0);
        var backend = dp.Optimizer.Host ?? dp.Model.Backend;
        var moments = new List<(long, float[], float[])>();
        if (dp.Options.Stage != ZeroStage.None || dp.Group.Rank == 0)
            foreach (var r in dp.Layout.Owned)
            {
                var shape = new Shape((int)r.Length);
                moments.Add((r.ArenaOffset, backend.ToArray<float>(dp.Optimizer.M.Narrow(r.ShardOffset, shape)), backend.ToArray<float>(dp.Optimizer.V.Narrow(r.ShardOffset, shape))));
            }
        return (masters, values, moments, dp.Trained.Length);
    }

    private static RunState Assemble((float[]? Masters, float[]? Values, List<(long Offset, float[] M, float[] V)> Moments, long Length)[] ranks)
    {
        long length = ranks[0].Length;
        var m = new uint[length];
        var v = new uint[length];
        foreach (var rank in ranks)
            foreach (var (offset, rm, rv) in rank.Moments)
                for (int i = 0; i < rm.Length; i++)
                {
                    m[offset + i] = BitConverter.SingleToUInt32Bits(rm[i]);
                    v[offset + i] = BitConverter.SingleToUInt32Bits(rv[i]);
                }
        return new RunState([], Array.ConvertAll(ranks[0].Masters!, BitConverter.SingleToUInt32Bits), ValueBits(ranks[0].Values!), m, v, [], []);
    }

    /// <summary>BF16 values gathered as F32 (exact): their 16 bits, as uint.</summary>
    private static uint[] ValueBits(float[] widened) => Array.ConvertAll(widened, f => BitConverter.SingleToUInt32Bits(f) >> 16);

    private static uint[] SplitMasterBits(IBackend backend, Tensor values, Tensor lowWords)
    {
        var joined = backend.Allocate(values.Shape, DType.F32);
        backend.JoinMasters(values, lowWords, joined);
        return Array.ConvertAll(backend.ToArray<float>(joined), BitConverter.SingleToUInt32Bits);
    }

    private static void AssertBitwise(uint[] expected, uint[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (expected[i] != actual[i])
                Assert.Fail($"{what}: element {i} is 0x{actual[i]:X8}, expected 0x{expected[i]:X8} ({expected.Zip(actual).Count(p => p.First != p.Second)} of {expected.Length} differ)");
    }
}
