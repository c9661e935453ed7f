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
/// Checkpoints of expert-parallel runs (F64, thread ranks): saved under dp 4 x ep 2, a checkpoint holds the whole model (every
/// expert once, by its global name), loads into one device with the same weights bit for bit and trains on there like the
/// saving run, and resumes under ep 2 exactly as the uninterrupted run.
/// </summary>
public sealed class ExpertParallelCheckpointTests : IDisposable
{
    private const int Dp = 4, Ep = 2, Before = 2, After = 2;
    private readonly TemporaryRunFolder _run = new("tessera-epckpt-");
    private readonly TransformerConfig _config = ModelPresets.Get("mixtral-debug") with { RouterAuxLossCoefficient = 0.02 };

    public void Dispose() => _run.Dispose();

    private static Dictionary<string, double[]> Values(Transformer model) =>
        model.Layout.Parameters.ToDictionary(p => p.Name, p => model.Backend.ToArray<double>(p.Value));

    /// <summary>Dp ranks of ep Ep train <paramref name="steps"/> steps after <paramref name="before"/> and before <paramref name="after"/>; each rank's weights and rank 0's losses.</summary>
    private (Dictionary<string, double[]>[] Values, double[] Losses) Run(int steps, Action<Trainer>? before, Action<Trainer>? after)
    {
        var ranks = ParallelTraining.RunThreadRanks(Dp, ctx =>
        {
            using var groups = ExpertParallelGroups.Create(ctx.Group, Ep, ctx.Factory);
            var model = new Transformer(_config, ctx.Backend, DType.F64, expertParallelism: new ExpertParallelism(groups.Expert));
            model.InitializeWeights(ParallelRun.Seed);
            var trainer = new Trainer(model, DataParallelism.Create(model, ctx.Group, new DataParallelOptions(), new AdamWOptions(), ctx.Host, expertData: groups.ExpertData),
                new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, ctx.Rank, Dp), null, ParallelRun.Options(Before + After));
            before?.Invoke(trainer);
            var losses = Enumerable.Range(0, steps).Select(_ => trainer.TrainStep()).ToArray();
            after?.Invoke(trainer);
            return (Values(model), losses);
        }, TimeSpan.FromSeconds(120));
        return (ranks.Select(r => r.Item1).ToArray(), ranks[0].losses);
    }

    [Fact]
    public void ACheckpointSavedUnderEp2LoadsExactlyIntoOneDeviceAndResumesUnderEp2()
    {
        string? directory = null;
        var (saved, _) = Run(Before, null, t => directory = ShardedCheckpoint.Save(_run.Checkpoints, t, "byte"));
        var (_, continued) = Run(After, t => ShardedCheckpoint.Restore(directory!, t), null);
        var (_, uninterrupted) = Run(Before + After, null, null);
        DataParallelTests.AssertBitIdentical(uninterrupted[Before..], continued, "ep 2 resumed against uninterrupted");

        var model = new Transformer(_config, new CpuBackend(2), DType.F64);
        model.InitializeWeights(99);                                 // the checkpoint must overwrite these
        var one = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null,
            ParallelRun.Options(Before + After, accumulation: Dp));
        ShardedCheckpoint.Restore(directory!, one);
        Assert.Equal(Before, one.Step);
        var loaded = Values(model);
        foreach (var (name, value) in loaded)
        {
            var holders = saved.Where(r => r.ContainsKey(name)).ToArray();
            Assert.Equal(name.Contains(".experts.", StringComparison.Ordinal) ? Dp / Ep : Dp, holders.Length);
            foreach (var rank in holders) DataParallelTests.AssertBitIdentical(rank[name], value, $"one device: {name}");
        }
        // The same sums in another order (see ExpertParallelTrainingTests): 1e-10 as the data-parallel tests allow.
        DataParallelTests.AssertClose(continued, Enumerable.Range(0, After).Select(_ => one.TrainStep()).ToArray(), "one device resumed");
    }
}
