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
/// NCCL through Tessera's binding on one GPU: a one-rank communicator runs every collective on its own
/// stream, ordered after the compute that produced its input; the data-parallel trainer runs through it.
/// </summary>
[Collection("cuda")]
public sealed class NcclOneRankTests(CudaFixture fixture) : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-nccl-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private (NcclProcessGroup Group, CudaCommunication Access) World()
    {
        var backend = fixture.Backend;
        if (!NcclProcessGroup.IsAvailable()) Assert.Skip("libnccl.so.2 not found");
        var access = new CudaCommunication(backend);
        var group = NcclProcessGroup.Create("world", 0, 1, NcclProcessGroup.CreateUniqueId(), access, TimeSpan.FromSeconds(30));
        return (group, access);
    }

    [Fact]
    public void EveryCollectiveCompletesWithTheRightValuesAfterTheComputeThatFeedsIt()
    {
        var backend = fixture.Backend;
        var (group, access) = World();
        using var _ = group;
        using var __ = access;
        var rng = new Random(11);
        var host = Enumerable.Range(0, 1 << 24).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var t = backend.FromHost<float>(host, new Shape(host.Length));
        var output = backend.Allocate(new Shape(host.Length), DType.F32);
        backend.Fill(output, double.NaN);
        backend.Synchronize();
        // Ordering: 32 scalings of 64 MB (milliseconds of queued compute) and, with no host sync in between, an
        // out-of-place all-gather (a copy for one rank) on NCCL's own stream. Unless that stream waits for the
        // compute, the copy reads partly scaled values (or NaN stays in the output).
        for (int i = 0; i < 32; i++) backend.Scale(t, 2.0);
        group.AllGather(t, output).Wait();
        var gathered = backend.ToArray<float>(output);
        const float factor = 4294967296f;   // 2^32: every scaling is exact in float
        for (int i = 0; i < host.Length; i += 997) Assert.Equal(host[i] * factor, gathered[i]);
        Assert.Equal(host[^1] * factor, gathered[^1]);

        group.AllReduce(t, ReduceOp.Sum).Wait();
        var got = backend.ToArray<float>(t);
        Assert.Equal(gathered, got);   // one rank: the sum is the value itself
        backend.Fill(output, double.NaN);
        group.ReduceScatter(t, output).Wait();
        Assert.Equal(got, backend.ToArray<float>(output));
        group.Broadcast(t, root: 0).Wait();
        group.AllReduce(t, ReduceOp.Average).Wait();
        Assert.Equal(got, backend.ToArray<float>(t));
        group.Barrier().Wait();
        Assert.Equal(1, group.Count(CollectiveKind.AllGather));
        Assert.Equal(2, group.Count(CollectiveKind.AllReduce));
        Assert.Equal(6, group.CollectiveCount);   // 2 all-reduces, all-gather, reduce-scatter, broadcast, barrier
    }

    [Fact]
    public void DataParallelTrainerRunsThroughNcclAndMatchesThePlainTrainer()
    {
        var backend = fixture.Backend;
        var (group, access) = World();
        using var _ = group;
        using var __ = access;
        var shard = Path.Combine(_dir, "train.bin");
        var rng = new Random(5);
        TokenShard.Write(shard, Enumerable.Range(0, 4000).Select(_ => rng.Next(96)).ToArray());
        var options = new TrainerOptions { BatchSize = 2, SequenceLength = 16, Steps = 5, WarmupSteps = 1, LearningRate = 1e-3, Seed = 3 };
        var adam = new AdamWOptions();

        Transformer NewModel()
        {
            var m = new Transformer(ModelPresets.Get("gpt2-debug"), backend, DType.F32);
            m.InitializeWeights(options.Seed);
            return m;
        }

        var plainModel = NewModel();
        var plain = new Trainer(plainModel, new AdamWOptimizer(plainModel.Parameters, adam), new TokenDataLoader([shard], 2, 16), null, options);
        var expected = Enumerable.Range(0, 5).Select(_ => plain.TrainStep()).ToArray();

        var dpModel = NewModel();
        var dp = TrainerStrategies.DataParallel(dpModel, group, new TokenDataLoader([shard], 2, 16, 0, 1), options, adam,
            new DataParallelOptions { Stage = ZeroStage.Gradients, BucketElements = 4096 });
        var losses = Enumerable.Range(0, 5).Select(_ => dp.TrainStep()).ToArray();
        // One rank: the same arithmetic except the sharded optimizer's norm order; float32 rounding only.
        for (int i = 0; i < 5; i++) Assert.True(Math.Abs(losses[i] - expected[i]) <= 1e-5 * expected[i], $"step {i}: {losses[i]} vs {expected[i]}");
        Assert.True(group.Count(CollectiveKind.ReduceScatter) > 0);
    }

    [Fact]
    public void OptimizerOffloadOnTheGpuMatchesThePlainRunOverTenSteps()
    {
        var backend = fixture.Backend;
        var (group, access) = World();
        using var _ = group;
        using var __ = access;
        var shard = Path.Combine(_dir, "offload.bin");
        var rng = new Random(8);
        TokenShard.Write(shard, Enumerable.Range(0, 8000).Select(_ => rng.Next(256)).ToArray());
        var options = new TrainerOptions { BatchSize = 4, SequenceLength = 32, Steps = 10, WarmupSteps = 2, LearningRate = 2e-3, Seed = 9 };
        // No clipping: the clipping factor comes from a sum of squares that the two paths order differently, and its
        // last-bit differences scale every update. Without it the device and host AdamW are bitwise the same
        // (AdamWIsBitwiseTheCpuBackends), and what remains is the GPU backward's own run-to-run noise (fp32 atomics in
        // the attention and embedding gradients).
        var adam = new AdamWOptions { MaxGradNorm = 0 };

        Transformer NewModel()
        {
            var m = new Transformer(ModelPresets.Get("gpt2-tiny"), backend, DType.F32);
            m.InitializeWeights(options.Seed);
            return m;
        }

        (double[] Losses, float[] Values) Plain()
        {
            var model = NewModel();
            var trainer = new Trainer(model, new AdamWOptimizer(model.Parameters, adam), new TokenDataLoader([shard], 4, 32), null, options);
            var l = Enumerable.Range(0, 10).Select(_ => trainer.TrainStep()).ToArray();
            return (l, backend.ToArray<float>(model.Parameters.Values));
        }

        static double RelativeMaxDiff(float[] a, float[] b)
        {
            double diff = 0, scale = 0;
            for (int i = 0; i < a.Length; i++) { diff = Math.Max(diff, Math.Abs(a[i] - b[i])); scale = Math.Max(scale, Math.Abs(b[i])); }
            return diff / scale;
        }

        var (expected, expectedValues) = Plain();
        var (_, repeatValues) = Plain();
        double noise = RelativeMaxDiff(repeatValues, expectedValues);   // the plain run against itself

        var offModel = NewModel();
        var host = new Tessera.Tensors.Cpu.CpuBackend();
        var off = TrainerStrategies.DataParallel(offModel, group, new TokenDataLoader([shard], 4, 32, 0, 1), options, adam,
            new DataParallelOptions { Stage = ZeroStage.OptimizerStates, OffloadOptimizer = true }, host);
        var losses = Enumerable.Range(0, 10).Select(_ => off.TrainStep()).ToArray();
        for (int i = 0; i < 10; i++) Assert.True(Math.Abs(losses[i] - expected[i]) <= 1e-5 * expected[i], $"step {i}: {losses[i]} vs {expected[i]}");
        double diff = RelativeMaxDiff(backend.ToArray<float>(offModel.Parameters.Values), expectedValues);
        // The bar, 1e-5 of the largest parameter, or twice the plain run's distance from itself where that is larger.
        double tolerance = Math.Max(1e-5, 2 * noise);
        Assert.True(diff <= tolerance, $"parameters after 10 steps differ by {diff:E2} of their largest magnitude (tolerance {tolerance:E1}; plain against plain {noise:E2})");
    }
}
