using Tessera.Models;
using Tessera.Models.HuggingFace;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// ZeRO-3's sharded construction (<see cref="ArenaStorage.Deferred"/>, DeepSpeed's zero.Init): the model is declared
/// without storage and every rank writes only its owned ranges of the initialized or loaded weights into its shards.
/// The values must be exactly those of a full initialization (no tolerance: the same F64 numbers from the same random
/// stream, rounded by the same casts), so training from them is bit-identical to the construct-then-shard run.
/// </summary>
public sealed class ShardedConstructionTests : IDisposable
{
    private readonly TemporaryRunFolder _run = new("tessera-zero3-init-");

    public void Dispose() => _run.Dispose();

    private static Trainer NewTrainer(Transformer model, RankContext ctx, string shard, bool offload, int accumulation = 1) =>
        new(model, new FullyShardedDataParallel(model, ctx.Group, new DataParallelOptions { Stage = ZeroStage.Parameters, OffloadOptimizer = offload }, new AdamWOptions(), ctx.Host),
            new TokenDataLoader([shard], ParallelRun.B, ParallelRun.T, ctx.Rank, ctx.WorldSize), null, ParallelRun.Options(3, accumulation));

    /// <summary>A tensor's elements widened to F64 (exact for F64, F32 and BF16), so bit identity is checked on the stored values.</summary>
    private static double[] Read(IBackend backend, Tensor t) => t.DType switch
    {
        DType.F64 => backend.ToArray<double>(t),
        DType.F32 => Array.ConvertAll(backend.ToArray<float>(t), x => (double)x),
        DType.BF16 => Array.ConvertAll(backend.ToArray<BFloat16>(t), x => (double)x.ToSingle()),
        _ => throw new NotSupportedException(t.DType.ToString()),
    };

    /// <summary>A rank's owned values (arena dtype: the value shard) and masters (wherever they live), per owned range.</summary>
    private static (List<(long, double[])> Values, List<(long, double[])> Masters) OwnedWeights(Trainer trainer)
    {
        var strategy = (DataParallelism)trainer.Parallelism;
        var backend = trainer.Model.Backend;
        var values = new List<(long, double[])>();
        var masters = new List<(long, double[])>();
        foreach (var r in strategy.Layout.Owned)
        {
            values.Add((r.ArenaOffset, Read(backend, strategy.Value(r))));
            var (where, master) = strategy.Optimizer.MasterOf(r);
            masters.Add((r.ArenaOffset, Read(where, master)));
        }
        return (values, masters);
    }

    [Theory]
    [InlineData("gpt2-debug", 4, false)]
    [InlineData("llama-debug", 3, true)]
    public void ShardedConstructionTrainsBitIdenticallyToConstructThenShard(string preset, int world, bool offload)
    {
        // Tolerance 0: both runs execute the same operations on the same F64 numbers; only where the initial weights
        // were written differs (whole arena then copied, or the owned ranges straight into the shards).
        var parallel = new DataParallelOptions { Stage = ZeroStage.Parameters, OffloadOptimizer = offload };
        var adamW = new AdamWOptions();
        foreach (int accumulation in new[] { 1, 2 })
        {
            var shardThenCopy = ParallelRun.Parallel(preset, _run.Shard, world, 3, parallel, adamW, accumulation);
            var sharded = ParallelRun.Parallel(preset, _run.Shard, world, 3, parallel, adamW, accumulation, shardedConstruction: true);
            string where = $"{preset}, {world} ranks, offload {offload}, accumulation {accumulation}";
            DataParallelTests.AssertBitIdentical(shardThenCopy.Losses, sharded.Losses, $"{where}: losses");
            for (int s = 0; s < shardThenCopy.Gradients.Length; s++)
                DataParallelTests.AssertBitIdentical(shardThenCopy.Gradients[s], sharded.Gradients[s], $"{where}: gradient of step {s + 1}");
            DataParallelTests.AssertBitIdentical(shardThenCopy.Values, sharded.Values, $"{where}: values");
            DataParallelTests.AssertBitIdentical(shardThenCopy.M, sharded.M, $"{where}: m");
            DataParallelTests.AssertBitIdentical(shardThenCopy.V, sharded.V, $"{where}: v");
            Assert.Equal(shardThenCopy.Collectives, sharded.Collectives);
        }
    }

    [Theory]
    [InlineData("gpt2-debug", DType.F64, 3, false)]
    [InlineData("llama-debug", DType.F64, 4, true)]
    [InlineData("gpt2-debug", DType.BF16, 4, false)]
    [InlineData("llama-debug", DType.BF16, 3, true)]
    public void ShardedInitializationWritesExactlyTheFullInitializationsValues(string preset, DType dtype, int world, bool offload)
    {
        // The reference: a whole model initialized on one backend (BF16: F32 masters, BF16 values cast by the backend).
        var config = ModelPresets.Get(preset);
        var reference = new Transformer(config, new CpuBackend(1), dtype);
        reference.InitializeWeights(ParallelRun.Seed);
        var arena = reference.Parameters;
        var expectedValues = Read(arena.Backend, arena.Values);
        var expectedMasters = Read(arena.Backend, arena.Masters ?? arena.Values);

        var ranks = ParallelTraining.RunThreadRanks(world, ctx =>
        {
            var model = new Transformer(config, ctx.Backend, dtype, ArenaStorage.Deferred);
            Assert.Null(model.Layout.Storage);                       // declared only: nothing allocated
            var trainer = NewTrainer(model, ctx, _run.Shard, offload);
            trainer.InitializeWeights(ParallelRun.Seed);
            return OwnedWeights(trainer);
        }, TimeSpan.FromSeconds(60));
        string where = $"{preset} {dtype}, {world} ranks, offload {offload}";
        DataParallelTests.AssertBitIdentical(expectedValues, ParallelRun.Assemble(arena.Length, ranks.Select(r => r.Values)), $"{where}: values");
        DataParallelTests.AssertBitIdentical(expectedMasters, ParallelRun.Assemble(arena.Length, ranks.Select(r => r.Masters)), $"{where}: masters");
    }

    [Theory]
    [InlineData("gpt2-debug", DType.F64, false)]
    [InlineData("llama-debug", DType.BF16, true)]
    public void ShardedLoadingOfAHuggingFaceDirectoryEqualsTheFullLoad(string preset, DType dtype, bool offload)
    {
        var config = ModelPresets.Get(preset);
        var source = new Transformer(config, new CpuBackend(1), DType.F64);
        source.InitializeWeights(seed: 17);
        string dir = Path.Combine(_run.Root, "hf");
        HuggingFaceModelDirectory.Export(dir, config, source.Parameters.Parameters, source.Backend);
        var full = PretrainedModel.Load(dir, new CpuBackend(1), dtype, config);
        var expectedValues = Read(full.Backend, full.Parameters.Values);
        var expectedMasters = Read(full.Backend, full.Parameters.Masters ?? full.Parameters.Values);

        var ranks = ParallelTraining.RunThreadRanks(3, ctx =>
        {
            var model = new Transformer(config, ctx.Backend, dtype, ArenaStorage.Deferred);
            var trainer = NewTrainer(model, ctx, _run.Shard, offload);
            trainer.LoadWeights(dir);
            return OwnedWeights(trainer);
        }, TimeSpan.FromSeconds(60));
        long length = full.Parameters.Length;
        DataParallelTests.AssertBitIdentical(expectedValues, ParallelRun.Assemble(length, ranks.Select(r => r.Values)), "loaded values");
        DataParallelTests.AssertBitIdentical(expectedMasters, ParallelRun.Assemble(length, ranks.Select(r => r.Masters)), "loaded masters");
    }

    [Fact]
    public void OffloadedShardedRunGathersTheFullInitializationsMastersIncludingFromRanksThatOwnNothingOfAUnit()
    {
        // BF16, offloaded: the only F32 masters are the host shards; GatherMastersToHost copies each rank's chunk of every
        // unit to the device (OffloadedAdamW.CopyMastersToDevice). At 4 ranks the head segment (final norm, 128 elements)
        // has a chunk of 64, so ranks 2 and 3 own nothing of it and send zeros. Exact: the masters are copied, not computed.
        var config = ModelPresets.Get("gpt2-debug");
        var reference = new Transformer(config, new CpuBackend(1), DType.BF16);
        reference.InitializeWeights(ParallelRun.Seed);
        var expected = reference.Backend.ToArray<float>(reference.Parameters.Masters!);
        var ranks = ParallelTraining.RunThreadRanks(4, ctx =>
        {
            var model = new Transformer(config, ctx.Backend, DType.BF16, ArenaStorage.Deferred);
            var trainer = NewTrainer(model, ctx, _run.Shard, offload: true);
            trainer.InitializeWeights(ParallelRun.Seed);
            var strategy = (DataParallelism)trainer.Parallelism;
            var layout = strategy.Layout;
            bool ownsNothingOfSome = layout.Units.Any(u => layout.OwnedSpan(u).Start == layout.OwnedSpan(u).End);
            return (Gathered: strategy.GatherMastersToHost(root: 0), ownsNothingOfSome);
        }, TimeSpan.FromSeconds(60));
        Assert.Contains(ranks, r => r.ownsNothingOfSome);
        var gathered = ranks[0].Gathered!;
        Assert.Equal(expected.Length, gathered.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.SingleToInt32Bits(expected[i]) != BitConverter.SingleToInt32Bits(gathered[i]))
                Assert.Fail($"master [{i}]: expected {expected[i]:R}, gathered {gathered[i]:R}");
        Assert.All(ranks.Skip(1), r => Assert.Null(r.Gathered));
    }

    [Fact]
    public void DeferredModelRefusesOtherStagesAndTrainingBeforeItsWeightsAreWritten()
    {
        var config = ModelPresets.Get("gpt2-debug");
        ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = new Transformer(config, ctx.Backend, DType.F64, ArenaStorage.Deferred);
            var e = Assert.Throws<InvalidOperationException>(() => model.InitializeWeights(1));
            Assert.Contains("Trainer.InitializeWeights", e.Message);
            var stage2 = Assert.Throws<ArgumentException>(() => DataParallelism.Create(model, ctx.Group,
                new DataParallelOptions { Stage = ZeroStage.Gradients }, new AdamWOptions(), ctx.Host));
            Assert.Contains("only ZeRO-3", stage2.Message);
            var trainer = NewTrainer(model, ctx, _run.Shard, offload: false);
            var early = Assert.Throws<InvalidOperationException>(() => trainer.TrainStep());
            Assert.Contains("never written", early.Message);
            trainer.InitializeWeights(1);
            Assert.True(double.IsFinite(trainer.TrainStep()));
            return 0;
        }, TimeSpan.FromSeconds(60));
    }
}
