using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

public sealed class DataParallelTests : IDisposable
{
    // F64 throughout: the parallel runs and the one-rank reference compute the same sums in a different order
    // (rank-order all-reduce vs accumulation into the gradient buffer; per-rank loss sums), so they agree to
    // rounding, ~1e-16 relative per operation; 1e-10 leaves room for 10 AdamW steps to amplify it while
    // still catching any real error (a missing 1/W, a stale bucket, a wrong shard: >= 1e-4).
    private const double Tolerance = 1e-10;
    private readonly TemporaryRunFolder _run = new("tessera-dp-");

    public void Dispose() => _run.Dispose();

    internal static void AssertClose(double[] expected, double[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (!(Math.Abs(expected[i] - actual[i]) <= Tolerance * Math.Max(1, Math.Abs(expected[i]))))
                Assert.Fail($"{what}[{i}]: expected {expected[i]:R}, got {actual[i]:R}");
    }

    internal static void AssertBitIdentical(double[] expected, double[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            if (BitConverter.DoubleToInt64Bits(expected[i]) != BitConverter.DoubleToInt64Bits(actual[i]))
                Assert.Fail($"{what}[{i}]: expected {expected[i]:R}, got {actual[i]:R} (bit-identity expected)");
    }

    private static void AssertMatchesSingle(RunRecord single, RunRecord run)
    {
        AssertClose(single.Losses, run.Losses, "loss");
        for (int s = 0; s < single.Gradients.Length; s++) AssertClose(single.Gradients[s], run.Gradients[s], $"gradient of step {s + 1}");
        AssertClose(single.Values, run.Values, "parameters");
        AssertClose(single.M, run.M, "m");
        AssertClose(single.V, run.V, "v");
        Assert.All(run.Collectives, c => Assert.Equal(run.ExpectedCollectives, c));
    }

    [Theory]
    [InlineData("gpt2-debug", 2, ZeroStage.None, false, 10)]
    [InlineData("llama-debug", 4, ZeroStage.None, false, 10)]
    [InlineData("gpt2-debug", 2, ZeroStage.OptimizerStates, false, 10)]
    [InlineData("llama-debug", 2, ZeroStage.Gradients, false, 10)]
    [InlineData("gpt2-debug", 4, ZeroStage.Parameters, false, 10)]
    [InlineData("llama-debug", 2, ZeroStage.Parameters, false, 10)]
    [InlineData("llama-debug", 2, ZeroStage.OptimizerStates, true, 4)]
    [InlineData("gpt2-debug", 2, ZeroStage.Gradients, true, 4)]
    [InlineData("gpt2-debug", 2, ZeroStage.Parameters, true, 4)]
    [InlineData("mixtral-debug", 2, ZeroStage.None, false, 4)]            // routing is per token: each rank's tokens route as on one rank
    [InlineData("qwen2-moe-debug", 2, ZeroStage.None, false, 4)]          // the shared expert on each rank's rows
    [InlineData("qwen3-moe-debug", 2, ZeroStage.Parameters, false, 4)]    // the experts' weights gathered and their gradients scattered as any
    public void RanksMatchOneRankWithTheSameGlobalBatch(string preset, int world, ZeroStage stage, bool offload, int steps)
    {
        var adamW = new AdamWOptions();   // clipping at 1.0: the global norm matters
        var single = ParallelRun.Single(preset, _run.Shard, world, steps, adamW);
        var run = ParallelRun.Parallel(preset, _run.Shard, world, steps,
            new DataParallelOptions { Stage = stage, OffloadOptimizer = offload, BucketElements = 1500, PoisonReleasedParameters = true }, adamW);
        AssertMatchesSingle(single, run);
    }

    [Fact]
    public void ZeroStagesAndOffloadAreBitIdenticalToPlainDataParallel()
    {
        // Every stage sums each gradient element over ranks in rank order, exactly like the DP all-reduce; the AdamW
        // kernel is elementwise; clipping is off (1e9) so the per-shard norm summation order cannot enter the update.
        // The offloaded update is also run in pieces of 700 elements (not a multiple of the alignment), so that its
        // two-slot pipeline cuts parameters and buckets and reuses each slot many times.
        var adamW = new AdamWOptions { MaxGradNorm = 1e9 };
        const int steps = 3;
        var dp = ParallelRun.Parallel("gpt2-debug", _run.Shard, 2, steps, new DataParallelOptions { BucketElements = 1500 }, adamW);
        foreach (var (stage, offload, pieces) in new[]
        {
            (ZeroStage.OptimizerStates, false, OffloadedAdamW.DefaultPieceElements), (ZeroStage.Gradients, false, OffloadedAdamW.DefaultPieceElements),
            (ZeroStage.Parameters, false, OffloadedAdamW.DefaultPieceElements), (ZeroStage.Parameters, true, OffloadedAdamW.DefaultPieceElements),
            (ZeroStage.Gradients, true, 700L),
        })
        {
            var run = ParallelRun.Parallel("gpt2-debug", _run.Shard, 2, steps,
                new DataParallelOptions { Stage = stage, OffloadOptimizer = offload, BucketElements = 1500, OffloadPieceElements = pieces }, adamW);
            AssertBitIdentical(dp.Losses, run.Losses, $"{stage} offload={offload} loss");
            for (int s = 0; s < steps; s++) AssertBitIdentical(dp.Gradients[s], run.Gradients[s], $"{stage} offload={offload} gradient {s + 1}");
            AssertBitIdentical(dp.Values, run.Values, $"{stage} offload={offload} parameters");
            AssertBitIdentical(dp.M, run.M, $"{stage} offload={offload} m");
        }
    }

    [Fact]
    public void ZeroThreeReduceScattersEveryMicroBatchIntoTheShardAndMatchesOneRank()
    {
        // DP=4, ZeRO-3, 2 micro-batches per rank against one rank with 8: the first micro-batch's reduce-scatter writes the
        // gradient shard, the second's is added to it ((a1 + b1) + (a2 + b2) instead of DP's (a1 + a2) + (b1 + b2)): equal
        // to rounding (Tolerance). A second micro-batch that overwrote the shard, or was dropped, is off by O(1) relatively.
        var adamW = new AdamWOptions();
        var single = ParallelRun.Single("gpt2-debug", _run.Shard, 8, 4, adamW);
        var run = ParallelRun.Parallel("gpt2-debug", _run.Shard, 4, 4, new DataParallelOptions { Stage = ZeroStage.Parameters, PoisonReleasedParameters = true }, adamW, accumulation: 2);
        AssertMatchesSingle(single, run);
    }

    [Fact]
    public void AccumulationMicroBatchesBeforeTheLastCommunicateNothing()
    {
        // DP=2 with 2 micro-batches per rank against one rank with 4: the same 4 slices, summed in another order.
        var adamW = new AdamWOptions();
        var single = ParallelRun.Single("llama-debug", _run.Shard, 4, 3, adamW);
        foreach (var stage in new[] { ZeroStage.None, ZeroStage.Gradients })
        {
            var run = ParallelRun.Parallel("llama-debug", _run.Shard, 2, 3, new DataParallelOptions { Stage = stage, BucketElements = 1500 }, adamW, accumulation: 2);
            AssertClose(single.Losses, run.Losses, $"{stage} loss");
            AssertClose(single.Values, run.Values, $"{stage} parameters");
            Assert.All(run.Collectives, c => Assert.Equal(run.ExpectedCollectives, c));
        }
    }

    [Fact]
    public void PlainDataParallelGathersTheWholeModelFromItsOwnArenaWithoutACollective()
    {
        // Plain data parallelism: every rank owns every unit whole, so assembling the model (a checkpoint's export) reads the
        // rank's own arena; an all-gather there would ask for Size x the unit (it did, and failed, on two GPU thread ranks).
        var ranks = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = ParallelRun.NewModel("gpt2-debug", ctx.Backend);
            var strategy = DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = ZeroStage.None }, new AdamWOptions());
            long before = ctx.Group.CollectiveCount;
            var gathered = strategy.GatherMastersToHost(root: 0);
            return (Gathered: gathered, Collectives: ctx.Group.CollectiveCount - before, Values: Tessera.Tensors.BackendExtensions.ToArray<double>(ctx.Backend, model.Parameters.Values));
        }, TimeSpan.FromSeconds(30));
        Assert.All(ranks, r => Assert.Equal(0, r.Collectives));
        Assert.Null(ranks[1].Gathered);
        Assert.Equal(ranks[0].Values.Select(v => (float)v).ToArray(), ranks[0].Gathered);
    }
}
