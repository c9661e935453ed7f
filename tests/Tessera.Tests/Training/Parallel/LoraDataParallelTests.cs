using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn.Adapters;
using Tessera.Tests.Support;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// LoRA under data parallelism and ZeRO 1-3 on CPU thread ranks: the strategies train the adapters' layout (a unit per adapted
/// block) while every rank holds the frozen base whole. W ranks x micro-batch b give the one-device run with batch W b.
/// </summary>
public sealed class LoraDataParallelTests
{
    // F64: the ranks and the one device compute the same sums in another order (W forwards of b rows against one of W b,
    // gradients all-reduced in rank order), equal to rounding, ~1e-16 per operation; 1e-10 leaves room for 4 AdamW steps
    // while any real error (a dropped bucket, a rank's gradient counted twice, the mean over one rank's targets instead of
    // all ranks') is >= 1e-3.
    private const double Tolerance = 1e-10;
    private const int T = 12, Steps = 4, Seed = 31;

    /// <summary>24 conversations of 8-16 tokens whose assistant masks differ, so ranks count different numbers of targets.</summary>
    private static List<ChatExample> Examples() => RandomChatExamples.Draw(Seed, 24);

    private static TrainerOptions Options(int batch) => new()
    {
        BatchSize = batch, SequenceLength = T, Steps = 10, LearningRate = 1e-2, WarmupSteps = 1, Seed = Seed, EvalEvery = 0, LogEvery = 1, CheckpointEvery = 0,
    };

    private static Transformer Model(IBackend backend, string preset) =>
        LoraTests.Model((CpuBackend)backend, DType.F64, Seed, preset switch { "gpt2-debug" => LoraTests.AllGpt2Targets, "phi3-debug" => LoraTests.AllPhi3Targets, _ => ["q", "v", "o", "down"] }, preset: preset);

    private static (double[] Losses, double[] Adapters) OneDevice(string preset, int batch)
    {
        var model = Model(new CpuBackend(2), preset);
        var arena = model.Adapters!.Arena;
        var trainer = new Trainer(model, new SingleDevice(arena, new AdamWOptimizer(arena, new AdamWOptions())), new ChatExampleLoader(Examples(), batch, T), null, Options(batch));
        var losses = Enumerable.Range(0, Steps).Select(_ => trainer.TrainStep()).ToArray();
        return (losses, model.Backend.ToArray<double>(arena.Values));
    }

    [Theory]
    [InlineData("llama-debug", 2, ZeroStage.None)]
    [InlineData("llama-debug", 2, ZeroStage.OptimizerStates)]
    [InlineData("gpt2-debug", 2, ZeroStage.Gradients)]
    [InlineData("llama-debug", 3, ZeroStage.Parameters)]
    [InlineData("gpt2-debug", 2, ZeroStage.Parameters)]
    [InlineData("phi3-debug", 2, ZeroStage.Gradients)]
    [InlineData("phi3-debug", 2, ZeroStage.Parameters)]
    public void RanksTrainTheSameAdaptersAsOneDeviceWithTheWholeBatch(string preset, int world, ZeroStage stage)
    {
        const int b = 2;
        var (expectedLosses, expected) = OneDevice(preset, world * b);
        var ranks = ParallelTraining.RunThreadRanks(world, ctx =>
        {
            var model = Model(ctx.Backend, preset);
            var baseBefore = ctx.Backend.ToArray<double>(model.Parameters.Values);
            var strategy = DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = stage, BucketElements = 300, PoisonReleasedParameters = true },
                new AdamWOptions(), trained: model.Adapters!.Layout);
            var trainer = new Trainer(model, strategy, new ChatExampleLoader(Examples(), b, T, ctx.Rank, world), null, Options(b));
            var counts = new long[Steps];
            var losses = new double[Steps];
            for (int s = 0; s < Steps; s++)
            {
                long before = ctx.Group.CollectiveCount;
                losses[s] = trainer.TrainStep();
                counts[s] = ctx.Group.CollectiveCount - before;
            }
            bool baseUnchanged = baseBefore.SequenceEqual(ctx.Backend.ToArray<double>(model.Parameters.Values));
            return (losses, counts, trainer.CollectivesPerStep, Masters: strategy.GatherMastersToHostF64(), baseUnchanged, strategy.Layout.Units.Count);
        }, TimeSpan.FromSeconds(60));

        var rank0 = ranks[0];
        NumericAssert.Close(expectedLosses, rank0.losses, Tolerance, $"{stage} losses");
        NumericAssert.Close(expected, rank0.Masters!, Tolerance, $"{stage} adapters after {Steps} steps");
        Assert.True(NumericAssert.MaxRelativeError(OneDevice(preset, b).Adapters, expected) > 1e-3);   // the batch matters: the check is not vacuous
        Assert.All(ranks, r => Assert.True(r.baseUnchanged, "the frozen base changed"));
        Assert.All(ranks, r => Assert.Equal(rank0.losses, r.losses));
        // The loss and the step's target count are all-reduced besides the strategy's own collectives.
        Assert.All(rank0.counts, c => Assert.Equal(rank0.CollectivesPerStep, c));
        if (stage == ZeroStage.Parameters) Assert.Equal(ModelPresets.Get(preset).Layers, rank0.Item6);   // one ZeRO-3 unit per adapted block
    }

    [Fact]
    public void ALoraModelTrainsItsAdaptersByDefaultAndAFrozenArenaIsRefused()
    {
        var trained = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = Model(ctx.Backend, "llama-debug");
            return ReferenceEquals(DataParallelism.Create(model, ctx.Group, new DataParallelOptions(), new AdamWOptions()).Trained, model.Adapters!.Layout);
        });
        Assert.All(trained, Assert.True);
        var e = Assert.Throws<AggregateException>(() => ParallelTraining.RunThreadRanks(2, ctx =>
            DataParallelism.Create(new Transformer(ModelPresets.Get("llama-debug"), ctx.Backend, DType.F64, ArenaStorage.Frozen), ctx.Group, new DataParallelOptions(), new AdamWOptions())));
        Assert.Contains("frozen", e.InnerExceptions[0].Message);
    }
}
