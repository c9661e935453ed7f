using Tessera.Distributed;
using Tessera.Distributed.Mesh;
using Tessera.Models;
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
/// The fused, chunked LM head (<see cref="Transformer.LossChunkRows"/>) under data parallelism (every ZeRO stage: the head's
/// gradient is taken at the loss, inside the head unit's backward hooks, which ZeRO-3 binds its gradient buffers in) and
/// under tensor parallelism (the vocabulary-parallel loss all-gathers each chunk's statistics), on CPU thread ranks in F64,
/// against one device with the unfused head: 6 AdamW steps with clipping and a validation loss after each. Tolerance as in
/// <see cref="DataParallelTests"/> (1e-10: sums in other orders, amplified by the steps).
/// </summary>
public sealed class FusedHeadParallelTests : IDisposable
{
    private const int Steps = 6, ChunkRows = 5;   // 16 rows per rank and micro-batch: chunks of 5, 5, 5 and 1
    private readonly TemporaryRunFolder _run = new("tessera-fused-head-");

    public void Dispose() => _run.Dispose();

    // Validation: 2 batches of every rank's rows, so a one-device reference with W micro-batches per step evaluates 2 W of its own.
    private static TrainerOptions Options(int accumulation, int evalBatches = 2) => ParallelRun.Options(Steps, accumulation) with { EvalBatches = evalBatches };

    /// <summary>One device, unfused head, <paramref name="accumulation"/> micro-batches per step: losses, validation losses, final weights.</summary>
    private (double[] Losses, double[] Validation, Dictionary<string, double[]> Parameters) OneDeviceUnfused(string preset, int accumulation)
    {
        var backend = new CpuBackend(2);
        var model = ParallelRun.NewModel(preset, backend);
        model.LossChunkRows = 0;
        var trainer = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T),
            new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), Options(accumulation, evalBatches: 2 * accumulation));
        var losses = new double[Steps];
        var validation = new double[Steps];
        for (int s = 0; s < Steps; s++)
        {
            losses[s] = trainer.TrainStep();
            validation[s] = trainer.Evaluate();
        }
        return (losses, validation, model.Layout.Parameters.ToDictionary(p => p.Name, p => backend.ToArray<double>(p.Value)));
    }

    [Theory]
    [InlineData("gpt2-debug", ZeroStage.None)]
    [InlineData("llama-debug", ZeroStage.Gradients)]
    [InlineData("gpt2-debug", ZeroStage.Parameters)]      // tied: the head writes the borrowed embeddings' bound gradient
    [InlineData("llama-debug", ZeroStage.Parameters)]
    public void DataParallelRanksWithTheFusedHeadTrainLikeOneUnfusedDevice(string preset, ZeroStage stage)
    {
        const int world = 2;
        var (expectedLosses, expectedValidation, expected) = OneDeviceUnfused(preset, accumulation: world);
        var ranks = ParallelTraining.RunThreadRanks(world, ctx =>
        {
            var model = ParallelRun.NewModel(preset, ctx.Backend);
            model.LossChunkRows = ChunkRows;
            var strategy = DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = stage }, new AdamWOptions(), ctx.Host);
            var trainer = new Trainer(model, strategy, new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, world),
                new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, world), Options(accumulation: 1));
            var losses = new double[Steps];
            var validation = new double[Steps];
            for (int s = 0; s < Steps; s++)
            {
                losses[s] = trainer.TrainStep();
                validation[s] = trainer.Evaluate();       // ZeRO-3: a loss without gradient leaves no gradient buffer bound
            }
            return (losses, validation, ParallelRun.Owned(strategy));
        }, TimeSpan.FromSeconds(60));
        foreach (var (losses, validation, _) in ranks)
        {
            DataParallelTests.AssertClose(expectedLosses, losses, $"{preset} {stage}: loss");
            DataParallelTests.AssertClose(expectedValidation, validation, $"{preset} {stage}: validation loss");
        }
        var owners = stage == ZeroStage.None ? ranks.Take(1) : ranks;
        var (values, _, _) = ParallelRun.AssembleState(ParallelRun.ArenaLength(preset), owners.Select(r => r.Item3));
        var reference = new Transformer(ModelPresets.Get(preset), new CpuBackend(1), DType.F64);
        foreach (var p in reference.Layout.Parameters)
            DataParallelTests.AssertClose(expected[p.Name], values[(int)p.Offset..(int)(p.Offset + p.NumElements)], $"{preset} {stage}: {p.Name}");
    }

    [Theory]
    [InlineData("gpt2-debug", false)]
    [InlineData("llama-debug", false)]
    [InlineData("gpt2-debug", true)]
    [InlineData("llama-debug", true)]
    public void TensorParallelRanksWithTheFusedHeadTrainLikeOneUnfusedDeviceGatheringStatisticsPerChunk(string preset, bool sequenceParallel)
    {
        const int tp = 2;
        var (expectedLosses, expectedValidation, expected) = OneDeviceUnfused(preset, accumulation: 1);
        var ranks = ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var model = new Transformer(ModelPresets.Get(preset), ctx.Backend, DType.F64, tensorParallelism: tensor);
            model.InitializeWeights(ParallelRun.Seed);
            model.LossChunkRows = ChunkRows;
            var trainer = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T),
                new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), Options(accumulation: 1));
            var losses = new double[Steps];
            var validation = new double[Steps];
            long gathers = 0;
            for (int s = 0; s < Steps; s++)
            {
                long before = groups.Tp.Count(CollectiveKind.AllGather);
                losses[s] = trainer.TrainStep();
                gathers = groups.Tp.Count(CollectiveKind.AllGather) - before;
                validation[s] = trainer.Evaluate();
            }
            var parameters = model.Layout.Parameters.Select(p => (p, ctx.Backend.ToArray<double>(p.Value))).ToList();
            return (losses, validation, gathers, parameters);
        }, TimeSpan.FromSeconds(60));
        string where = $"{preset}, tp {tp}{(sequenceParallel ? " + sp" : "")}";
        int layers = ModelPresets.Get(preset).Layers, chunks = 4;
        foreach (var (losses, validation, gathers, _) in ranks)
        {
            DataParallelTests.AssertClose(expectedLosses, losses, $"{where}: loss");
            DataParallelTests.AssertClose(expectedValidation, validation, $"{where}: validation loss");
            // One all-gather of (tp, R, 3) statistics per chunk; under SP also the 4L + 2 gathers of the residual regions.
            Assert.Equal(chunks + (sequenceParallel ? 4 * layers + 2 : 0), gathers);
        }
        foreach (var (name, values) in expected)
        {
            var gathered = new double[values.Length];
            foreach (var rank in ranks)
            {
                var (p, local) = rank.parameters.Single(x => x.p.Name == name);
                p.ScatterToGlobal<double>(local, gathered);
            }
            DataParallelTests.AssertClose(values, gathered, $"{where}: parameter {name}");
        }
    }
}
