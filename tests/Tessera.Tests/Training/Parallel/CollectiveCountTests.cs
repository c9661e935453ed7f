using Tessera.Distributed;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

public sealed class CollectiveCountTests : IDisposable
{
    private readonly TemporaryRunFolder _run = new("tessera-dp-count-");

    public void Dispose() => _run.Dispose();

    private (int Buckets, Dictionary<CollectiveKind, long> PerStep, long[] BucketStarts) Measure(ZeroStage stage, string preset = "gpt2-debug", int accumulation = 1)
    {
        var results = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = ParallelRun.NewModel(preset, ctx.Backend);
            var trainer = TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], 2, ParallelRun.T, ctx.Rank, 2),
                ParallelRun.Options(2, accumulation), new AdamWOptions(), new DataParallelOptions { Stage = stage, BucketElements = 1500 }, ctx.Host);
            trainer.TrainStep();   // measure a steady-state step (the second)
            var before = Enum.GetValues<CollectiveKind>().ToDictionary(k => k, ctx.Group.Count);
            trainer.TrainStep();
            var delta = Enum.GetValues<CollectiveKind>().ToDictionary(k => k, k => ctx.Group.Count(k) - before[k]);
            return (trainer.Strategy().Layout.Units.Count, delta, trainer.Strategy().Layout.Units.Select(u => u.Start).ToArray());
        }, TimeSpan.FromSeconds(60));
        return results[0];
    }

    [Fact]
    public void BucketsAreIssuedFromTheLastParametersBackwards()
    {
        var (buckets, _, starts) = Measure(ZeroStage.None);
        Assert.True(buckets >= 3, $"1500-element buckets should split gpt2-debug into several, got {buckets}");
        for (int i = 1; i < starts.Length; i++) Assert.True(starts[i] < starts[i - 1], "bucket starts must decrease in issue order");
        Assert.Equal(0, starts[^1]);
    }

    [Fact]
    public void EachStageIssuesItsDocumentedCollectivesPerStep()
    {
        // DP: k bucket all-reduces + 1 loss all-reduce.
        var (k, dp, _) = Measure(ZeroStage.None);
        Assert.Equal((k + 1, 0L, 0L), (dp[CollectiveKind.AllReduce], dp[CollectiveKind.ReduceScatter], dp[CollectiveKind.AllGather]));
        // ZeRO-1: k gradient all-reduces + loss + norm; k all-gathers of the updated shards.
        var (k1, z1, _) = Measure(ZeroStage.OptimizerStates);
        Assert.Equal((k1 + 2, 0L, (long)k1), (z1[CollectiveKind.AllReduce], z1[CollectiveKind.ReduceScatter], z1[CollectiveKind.AllGather]));
        // ZeRO-2: k reduce-scatters + loss + norm all-reduces + k all-gathers.
        var (k2, z2, _) = Measure(ZeroStage.Gradients);
        Assert.Equal((2L, (long)k2, (long)k2), (z2[CollectiveKind.AllReduce], z2[CollectiveKind.ReduceScatter], z2[CollectiveKind.AllGather]));
        // ZeRO-3, gpt2-debug (2 blocks, tied head): 4 segments; forward gathers 4, backward re-gathers the 2 blocks
        // (the head is kept from its forward, the tied embeddings through the pass); 4 reduce-scatters; loss + norm.
        var (_, z3, _) = Measure(ZeroStage.Parameters);
        Assert.Equal((2L, 4L, 6L), (z3[CollectiveKind.AllReduce], z3[CollectiveKind.ReduceScatter], z3[CollectiveKind.AllGather]));
        // Untied llama-debug: backward also re-gathers the embeddings: 4 + 3.
        var (_, l3, _) = Measure(ZeroStage.Parameters, "llama-debug");
        Assert.Equal((2L, 4L, 7L), (l3[CollectiveKind.AllReduce], l3[CollectiveKind.ReduceScatter], l3[CollectiveKind.AllGather]));
        // Two micro-batches: ZeRO-3 reduce-scatters every segment on each (no full gradient outlives a segment's
        // backward) and gathers as often; ZeRO-2 still reduces once per step, after the last.
        var (_, a3, _) = Measure(ZeroStage.Parameters, accumulation: 2);
        Assert.Equal((2L, 8L, 12L), (a3[CollectiveKind.AllReduce], a3[CollectiveKind.ReduceScatter], a3[CollectiveKind.AllGather]));
        var (k2a, a2, _) = Measure(ZeroStage.Gradients, accumulation: 2);
        Assert.Equal((2L, (long)k2a, (long)k2a), (a2[CollectiveKind.AllReduce], a2[CollectiveKind.ReduceScatter], a2[CollectiveKind.AllGather]));
        Assert.All(new[] { dp, z1, z2, z3, l3, a3, a2 }, d => Assert.Equal(0L, d[CollectiveKind.Barrier] + d[CollectiveKind.Broadcast]));
    }

    [Fact]
    public void LoaderOfAnotherSliceIsRefused()
    {
        var e = Assert.Throws<AggregateException>(() => ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var model = ParallelRun.NewModel("gpt2-debug", ctx.Backend);
            return TrainerStrategies.DataParallel(model, ctx.Group, new TokenDataLoader([_run.Shard], 2, ParallelRun.T, 0, 1),
                ParallelRun.Options(2), new AdamWOptions(), new DataParallelOptions(), ctx.Host);
        }, TimeSpan.FromSeconds(10)));
        Assert.Contains("slice 0 of 1", e.InnerExceptions[0].Message);
    }

    [Fact]
    public void TrainEntryPointRunsEveryRankAndOnlyRankZeroReports()
    {
        var reports = new List<StepMetrics>();
        int step = ParallelTraining.Train(2, new DataParallelOptions { Stage = ZeroStage.Gradients, OffloadOptimizer = true },
            ParallelRun.Options(3) with { Steps = 3 }, new AdamWOptions(),
            ctx => (ParallelRun.NewModel("llama-debug", ctx.Backend), new TokenDataLoader([_run.Shard], 2, ParallelRun.T, ctx.Rank, 2)),
            onStep: m => { lock (reports) reports.Add(m); }, cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(3, step);
        Assert.Equal([1, 2, 3], reports.Select(r => r.Step));
        Assert.All(reports, r => Assert.True(double.IsFinite(r.Loss) && r.GradNorm > 0));
    }
}
