using System.Collections.Concurrent;
using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Tests.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training;

/// <summary>
/// Stopping a run through its cancellation token: between two steps, on every rank at the same one, leaving a state
/// that a checkpoint saves and a resume continues exactly.
/// </summary>
public sealed class StopTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-stop-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private string Shard(int seed)
    {
        var rng = new Random(seed);
        var path = Path.Combine(_dir, "train.bin");
        TokenShard.Write(path, Enumerable.Range(0, 2000).Select(_ => rng.Next(96)).ToArray());
        return path;
    }

    private static readonly TrainerOptions Options = new() { BatchSize = 2, SequenceLength = 8, Steps = 12, LearningRate = 3e-3, WarmupSteps = 2, Seed = 5, LogEvery = 1 };

    [Fact]
    public void CancelledTrainerStopsAfterTheStepInProgressAndResumesBitIdentically()
    {
        var shard = Shard(seed: 21);
        (Transformer, Trainer) Build()
        {
            var model = new Transformer(ModelPresets.Get("gpt2-debug"), new CpuBackend(1), DType.F32);
            model.InitializeWeights(Options.Seed);
            return (model, new Trainer(model, new AdamWOptimizer(model.Parameters, new AdamWOptions()), new TokenDataLoader([shard], 2, 8), null, Options));
        }
        var (_, straight) = Build();
        var expected = new List<double>();
        straight.Run(m => expected.Add(m.Loss), cancellation: TestContext.Current.CancellationToken);

        var (model, stopped) = Build();
        using var cancel = new CancellationTokenSource();
        var losses = new List<double>();
        // The request comes during step 5's report: step 5 is complete, step 6 never starts.
        Assert.Throws<OperationCanceledException>(() => stopped.Run(m => { losses.Add(m.Loss); if (m.Step == 5) cancel.Cancel(); }, cancellation: cancel.Token));
        Assert.Equal(5, stopped.Step);
        var store = new CheckpointStore(Path.Combine(_dir, "checkpoints"));
        TrainingCheckpoint.Save(store, model, stopped, "byte");

        var (resumedModel, resumed) = Build();
        TrainingCheckpoint.Restore(store.Latest()!, resumedModel, resumed);
        resumed.Run(m => losses.Add(m.Loss), cancellation: TestContext.Current.CancellationToken);
        Assert.Equal(expected.Select(BitConverter.DoubleToInt64Bits), losses.Select(BitConverter.DoubleToInt64Bits));
    }

    [Fact]
    public void ThreadRanksStopTogetherAndEachSavesTheSameStepWhenOneRankIsAsked()
    {
        var shard = Shard(seed: 22);
        var config = ModelPresets.Get("gpt2-debug");
        var savedSteps = new ConcurrentBag<(int Rank, int Step)>();
        using var cancel = new CancellationTokenSource();
        var e = Assert.Throws<AggregateException>(() => ParallelTraining.Train(2, new DataParallelOptions { Stage = ZeroStage.OptimizerStates }, Options, new AdamWOptions(),
            ctx =>
            {
                var model = new Transformer(config, ctx.Backend, DType.F32);
                model.InitializeWeights(Options.Seed);
                return (model, new TokenDataLoader([shard], 2, 8, ctx.Rank, 2));
            },
            // Only rank 0 reports, so only rank 0's view of the token changes at step 4; rank 1 learns of it through the agreement.
            onStep: m => { if (m.Step == 4) cancel.Cancel(); },
            checkpoint: t => savedSteps.Add((t.Parallelism.Group!.Rank, t.Step)),
            cancellation: cancel.Token));
        Assert.All(e.InnerExceptions, x => Assert.IsType<OperationCanceledException>(x));
        Assert.Equal(2, e.InnerExceptions.Count);
        // Both ranks stopped after step 4 and called the (collective) checkpoint there; no collective timed out.
        Assert.Equal([(0, 4), (1, 4)], savedSteps.OrderBy(s => s.Rank));
    }

    [Fact]
    public void OneRankOfATensorTimesDataParallelMeshAskedToStopStopsEveryRankAtTheSameStep()
    {
        // tp 2 x dp 2: rank (tp 1, dp 1) alone is asked, at step 2. Agreeing over its data-parallel group only would stop
        // (tp 1, dp 0) too but leave (tp 0, *) training, and their tensor-parallel collectives would time out.
        var shard = ParallelRun.WriteShard(_dir);
        var mesh = new DeviceMesh(dp: 2, tp: 2);
        var options = ParallelRun.Options(6) with { CheckpointEvery = 1 };
        var stepsReached = ParallelTraining.RunThreadRanks(mesh.WorldSize, ctx =>
        {
            var groups = mesh.CreateGroups(ctx.Factory);
            var model = new Transformer(ModelPresets.Get("gpt2-debug"), ctx.Backend, DType.F64,
                tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(false), ctx.Factory));
            model.InitializeWeights(ParallelRun.Seed);
            var trainer = new Trainer(model, DataParallelism.Create(model, groups.Dp, new DataParallelOptions(), new AdamWOptions(), ctx.Host),
                new TokenDataLoader([shard], ParallelRun.B, ParallelRun.T, groups.Coordinate.Dp, 2), null, options);
            using var mine = new CancellationTokenSource();
            bool asked = groups.Coordinate is { Tp: 1, Dp: 1 };
            Assert.Throws<OperationCanceledException>(() => trainer.Run(checkpoint: t => { if (asked && t.Step == 2) mine.Cancel(); }, cancellation: mine.Token));
            return trainer.Step;
        }, TimeSpan.FromSeconds(30));
        Assert.Equal([2, 2, 2, 2], stepsReached);
    }
}
