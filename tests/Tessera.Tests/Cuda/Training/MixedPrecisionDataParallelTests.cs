using Tessera.Cuda.Distributed;
using Tessera.Distributed.Nccl;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Tests.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// BF16 mixed precision (BF16 values, gradients and activations; F32 masters and moments) through the data-parallel
/// trainer on one GPU and a one-rank NCCL group, under ZeRO 0-3 and ZeRO-1 with the optimizer offloaded to the host,
/// against the one-rank <see cref="Trainer"/> from the same initialization on the same batches. One rank is what one
/// GPU allows; the multi-rank shard bookkeeping of the masters is tested on CPU thread ranks
/// (Training/Parallel/OffloadedAdamWTests, MixedPrecisionShardedCheckpointTests).
/// </summary>
[Collection("cuda")]
public sealed class MixedPrecisionDataParallelTests(CudaFixture fixture) : IDisposable
{
    private const string Preset = "gpt2-tiny";
    private const int Steps = 10, Batch = 4, Sequence = 64, Seed = 7;

    /// <summary>
    /// Relative tolerance of each step's loss (1e-3) and gradient norm (1e-2). Over one rank the data-parallel step is
    /// nearly the plain step's arithmetic (an NCCL sum over one rank is a copy, AdamW is elementwise over other launch
    /// ranges), but not bit for bit: measured on the H200 (2026-12-01) the losses stayed within 1.7e-4 over 10 steps while
    /// the gradient norms drifted apart by up to 4.9e-3, as BF16 roundings (2^-8 relative) of gradients and values that
    /// flip once make later steps differ. The issue asks BF16 curves to agree within 1 %; 1e-3 on the loss is tighter.
    /// A skipped master update, a stale BF16 copy, clipping with the wrong norm or a BF16 loss sum moves the loss by more
    /// than 1e-2 within these steps (the reference loss falls by more than <see cref="MinimumLossDrop"/>, asserted).
    /// </summary>
    private const double LossTolerance = 1e-3, NormTolerance = 1e-2;

    /// <summary>
    /// Final F32 masters: ||dp - reference|| / ||reference - initial|| (relative to how far training moved them): 5e-2.
    /// Measured 1.6e-2 to 2.0e-2 on the H200 for every stage and for offload: Adam turns a gradient perturbed near zero by a
    /// flipped BF16 rounding into an update of up to the learning rate, so a few per cent of the movement differs. A run
    /// that does not update, or updates the BF16 copy instead of the masters, is off by order 1.
    /// </summary>
    private const double MasterTolerance = 5e-2, OffloadMasterTolerance = 5e-2;

    private const double MinimumLossDrop = 0.05;

    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-bf16-dp-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private (NcclProcessGroup Group, CudaCommunication Access) World()
    {
        var backend = fixture.Backend;   // skips without a GPU
        if (!NcclProcessGroup.IsAvailable()) Assert.Skip("libnccl.so.2 not found");
        var access = new CudaCommunication(backend);
        var group = NcclProcessGroup.Create("world", 0, 1, NcclProcessGroup.CreateUniqueId(), access, TimeSpan.FromSeconds(60));
        return (group, access);
    }

    private static TrainerOptions Options => new() { BatchSize = Batch, SequenceLength = Sequence, Steps = Steps, WarmupSteps = 2, LearningRate = 3e-3, Seed = Seed };

    private Transformer NewModel(int seed = Seed)
    {
        var model = new Transformer(ModelPresets.Get(Preset), fixture.Backend, DType.BF16);
        model.InitializeWeights(seed);
        return model;
    }

    private Trainer NewDataParallel(Transformer model, NcclProcessGroup group, string shard, ZeroStage stage, bool offload) =>
        TrainerStrategies.DataParallel(model, group, new TokenDataLoader([shard], Batch, Sequence, 0, 1), Options, new AdamWOptions(),
            // Small buckets, so that a step has many gradient buckets (units), as a large model would.
            new DataParallelOptions { Stage = stage, OffloadOptimizer = offload, BucketElements = 1 << 15, OffloadPieceElements = 1 << 16 },
            offload ? new CpuBackend() : null);

    [Theory]
    [InlineData(ZeroStage.None, false)]
    [InlineData(ZeroStage.OptimizerStates, false)]
    [InlineData(ZeroStage.Gradients, false)]
    [InlineData(ZeroStage.Parameters, false)]
    [InlineData(ZeroStage.OptimizerStates, true)]
    public void Bf16DataParallelTrainingMatchesTheOneRankTrainer(ZeroStage stage, bool offload)
    {
        var backend = fixture.Backend;
        var (group, access) = World();
        using var _ = group;
        using var __ = access;
        var shard = AffineChainTokens.WriteShard(_dir, Steps * Batch * Sequence + 1, vocab: 256, seed: 3);

        var plainModel = NewModel();
        var initial = backend.ToArray<float>(plainModel.Parameters.Masters!);
        var plain = new Trainer(plainModel, new AdamWOptimizer(plainModel.Parameters, new AdamWOptions()), new TokenDataLoader([shard], Batch, Sequence), null, Options);
        var expectedLoss = new double[Steps];
        var expectedNorm = new double[Steps];
        for (int s = 0; s < Steps; s++)
        {
            expectedLoss[s] = plain.TrainStep();
            expectedNorm[s] = plain.AdamW().LastGradNorm();
        }
        var expectedMasters = backend.ToArray<float>(plainModel.Parameters.Masters!);

        var dpModel = NewModel();
        var dp = NewDataParallel(dpModel, group, shard, stage, offload);
        var loss = new double[Steps];
        var norm = new double[Steps];
        var collectives = new long[Steps];
        for (int s = 0; s < Steps; s++)
        {
            long before = group.CollectiveCount;
            loss[s] = dp.TrainStep();
            collectives[s] = group.CollectiveCount - before;
            norm[s] = dp.Strategy().Optimizer.LastGradNorm();
        }
        // The whole F32 masters and BF16 values (as F32), from wherever they live (host shard under offload, value shards under ZeRO-3).
        var masters = dp.Strategy().GatherMastersToHost()!;
        var values = dp.Strategy().GatherValuesToHost()!;

        double maxLoss = Enumerable.Range(0, Steps).Max(s => Math.Abs(loss[s] - expectedLoss[s]) / expectedLoss[s]);
        double maxNorm = Enumerable.Range(0, Steps).Max(s => Math.Abs(norm[s] - expectedNorm[s]) / expectedNorm[s]);
        double masterDiff = Distance(masters, expectedMasters) / Distance(expectedMasters, initial);
        string summary = $"ZeRO-{(int)stage}{(offload ? " offload" : "")}: loss {expectedLoss[0]:F4} -> {expectedLoss[^1]:F4}; max relative loss difference {maxLoss:E2}, " +
            $"gradient norm {maxNorm:E2}; masters {masterDiff:E2} of the distance training moved them";
        TestContext.Current.TestOutputHelper?.WriteLine(summary);

        Assert.True(expectedLoss[^1] < expectedLoss[0] - MinimumLossDrop, $"the reference did not learn, so the comparison has no power: {summary}");
        for (int s = 0; s < Steps; s++)
        {
            Assert.True(Math.Abs(loss[s] - expectedLoss[s]) <= LossTolerance * expectedLoss[s], $"step {s + 1}: loss {loss[s]:R} vs one-rank {expectedLoss[s]:R}; {summary}");
            Assert.True(Math.Abs(norm[s] - expectedNorm[s]) <= NormTolerance * expectedNorm[s], $"step {s + 1}: gradient norm {norm[s]:R} vs one-rank {expectedNorm[s]:R}; {summary}");
            Assert.Equal((long)dp.CollectivesPerStep, collectives[s]);
        }
        Assert.True(masterDiff <= (offload ? OffloadMasterTolerance : MasterTolerance), summary);
        for (int i = 0; i < masters.Length; i++)
            if (BFloat16.FromSingle(masters[i]).ToSingle() != values[i])
                Assert.Fail($"arena element {i}: BF16 value {values[i]} is not the F32 master {masters[i]:R} rounded; the BF16 copy was not written from the masters ({summary})");
    }

    [Theory]
    [InlineData(ZeroStage.Parameters, false)]
    [InlineData(ZeroStage.OptimizerStates, true)]
    public void ShardedCheckpointOfABf16RunLoadsIntoThePlainTrainerWithIdenticalMasters(ZeroStage stage, bool offload)
    {
        var backend = fixture.Backend;
        var (group, access) = World();
        using var _ = group;
        using var __ = access;
        var shard = AffineChainTokens.WriteShard(_dir, Steps * Batch * Sequence + 1, vocab: 256, seed: 3);

        var dpModel = NewModel();
        var dp = NewDataParallel(dpModel, group, shard, stage, offload);
        for (int s = 0; s < 3; s++) dp.TrainStep();
        var store = new CheckpointStore(Path.Combine(_dir, "checkpoints"));
        var dir = ShardedCheckpoint.Save(store, dp, "byte");
        if (offload) Assert.Null(dpModel.Parameters.Masters);   // the host shard is the only F32 copy
        var masters = dp.Strategy().GatherMastersToHost()!;
        var values = dp.Strategy().GatherValuesToHost()!;   // BF16 values as F32
        var stateBackend = dp.Strategy().Optimizer.Host ?? backend;
        var layout = dp.Strategy().Layout;

        var model = NewModel(seed: 99);   // the checkpoint must overwrite these weights
        var plain = new Trainer(model, new AdamWOptimizer(model.Parameters, new AdamWOptions()), new TokenDataLoader([shard], Batch, Sequence), null, Options);
        ShardedCheckpoint.Restore(dir, plain);
        Assert.Equal(3, plain.Step);
        Assert.Equal(3, plain.AdamW().StepCount);
        var restoredMasters = backend.ToArray<float>(model.Parameters.Masters!);
        var restoredValues = backend.ToArray<BFloat16>(model.Parameters.Values);
        var restoredM = backend.ToArray<float>(plain.AdamW().M);
        foreach (var p in model.Parameters.Parameters)
            for (long i = p.Offset; i < p.Offset + p.NumElements; i++)
            {
                if (BitConverter.SingleToInt32Bits(masters[i]) != BitConverter.SingleToInt32Bits(restoredMasters[i]))
                    Assert.Fail($"'{p.Name}' [{i - p.Offset}]: restored master {restoredMasters[i]:R}, saved {masters[i]:R}");
                if (values[i] != restoredValues[i].ToSingle())
                    Assert.Fail($"'{p.Name}' [{i - p.Offset}]: restored BF16 value {restoredValues[i]}, saved {values[i]}");
            }
        // Moments: the data-parallel shard buffers are laid out by unit (last parameters first), the plain ones like the arena.
        foreach (var r in layout.Owned)
        {
            var m = stateBackend.ToArray<float>(dp.Strategy().Optimizer.M.Narrow(r.ShardOffset, new Shape((int)r.Length)));
            foreach (var p in model.Parameters.Parameters)
            {
                long lo = Math.Max(r.ArenaOffset, p.Offset), hi = Math.Min(r.ArenaOffset + r.Length, p.Offset + p.NumElements);
                for (long i = lo; i < hi; i++)
                    if (BitConverter.SingleToInt32Bits(m[i - r.ArenaOffset]) != BitConverter.SingleToInt32Bits(restoredM[i]))
                        Assert.Fail($"'{p.Name}' [{i - p.Offset}]: restored m {restoredM[i]:R}, saved {m[i - r.ArenaOffset]:R}");
            }
        }
        // Both continue with the same step (see LossTolerance).
        double next = dp.TrainStep(), resumed = plain.TrainStep();
        Assert.True(Math.Abs(next - resumed) <= LossTolerance * next, $"next step: data-parallel {next:R}, resumed one-rank {resumed:R}");
    }

    private static double Distance(float[] a, float[] b)
    {
        double sum = 0;
        for (int i = 0; i < a.Length; i++) sum += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        return Math.Sqrt(sum);
    }
}
