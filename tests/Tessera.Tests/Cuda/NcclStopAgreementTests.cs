using Tessera.Cuda.Distributed;
using Tessera.Distributed;
using Tessera.Distributed.Nccl;
using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Tests.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Cuda;

/// <summary>
/// The stop agreement of a data-parallel run over NCCL (what `tessera launch -- train --device cuda` does on Ctrl-C or
/// SIGTERM): one all-reduce (max) of a device flag per step boundary, only while a cancellable token is given.
/// </summary>
[Collection("cuda")]
public sealed class NcclStopAgreementTests(CudaFixture fixture) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-nccl-stop-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void ACancelledRankStopsAfterTheStepInProgressWithOneAgreementPerStepBoundary()
    {
        var backend = fixture.Backend;
        if (!NcclProcessGroup.IsAvailable()) Assert.Skip("libnccl.so.2 not found");
        using var access = new CudaCommunication(backend);
        using var group = NcclProcessGroup.Create("world", 0, 1, NcclProcessGroup.CreateUniqueId(), access, TimeSpan.FromSeconds(30));
        var shard = Path.Combine(_dir, "train.bin");
        var rng = new Random(12);
        TokenShard.Write(shard, Enumerable.Range(0, 4000).Select(_ => rng.Next(96)).ToArray());
        var options = new TrainerOptions { BatchSize = 2, SequenceLength = 16, Steps = 4, WarmupSteps = 1, LearningRate = 1e-3, Seed = 3, LogEvery = 1 };
        Trainer NewTrainer()
        {
            var model = new Transformer(ModelPresets.Get("gpt2-debug"), backend, DType.F32);
            model.InitializeWeights(options.Seed);
            return TrainerStrategies.DataParallel(model, group, new TokenDataLoader([shard], 2, 16, 0, 1), options, new AdamWOptions(),
                new DataParallelOptions { Stage = ZeroStage.OptimizerStates });
        }

        // Without a token: the collectives of four steps. With a token that is never cancelled: four agreements more.
        long before = group.Count(CollectiveKind.AllReduce);
        NewTrainer().Run(cancellation: TestContext.Current.CancellationToken);
        long plain = group.Count(CollectiveKind.AllReduce) - before;
        using (var never = new CancellationTokenSource())
        {
            before = group.Count(CollectiveKind.AllReduce);
            NewTrainer().Run(cancellation: never.Token);
            Assert.Equal(plain + 4, group.Count(CollectiveKind.AllReduce) - before);
        }

        // Cancelled during step 2's report: the agreement before step 3 says stop, on the device, through NCCL.
        using var cancel = new CancellationTokenSource();
        var stopped = NewTrainer();
        Assert.Throws<OperationCanceledException>(() => stopped.Run(m => { if (m.Step == 2) cancel.Cancel(); }, cancellation: cancel.Token));
        Assert.Equal(2, stopped.Step);
    }
}
