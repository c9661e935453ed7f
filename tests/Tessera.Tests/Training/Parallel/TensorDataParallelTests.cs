using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// Tensor x data parallelism on one 2-D mesh of CPU thread ranks (tp innermost, Megatron's order): the model split over
/// each tp group, the batch over the dp axis, and ZeRO 0-3 (with and without offload) sharding each tp rank's local arena
/// over its dp group. Against one device training the same global batch (dp micro-batches accumulated), in F64: every loss
/// and every parameter, gathered from its ZeRO shards and then from its tensor-parallel shards, within 1e-10 (the
/// tolerance and its reasoning are <see cref="DataParallelTests"/>').
/// </summary>
public sealed class TensorDataParallelTests : IDisposable
{
    private const int Steps = 6;
    private readonly TemporaryRunFolder _run = new("tessera-tpdp-");

    public void Dispose() => _run.Dispose();

    [Theory]
    [InlineData("gpt2-debug", ZeroStage.None, false, false)]
    [InlineData("llama-debug", ZeroStage.OptimizerStates, false, true)]
    [InlineData("gpt2-debug", ZeroStage.Gradients, false, true)]
    [InlineData("llama-debug", ZeroStage.Parameters, false, false)]
    [InlineData("gpt2-debug", ZeroStage.Parameters, true, true)]
    [InlineData("llama-debug", ZeroStage.OptimizerStates, true, false)]
    public void TensorTimesDataParallelRanksTrainLikeOneDevice(string preset, ZeroStage stage, bool offload, bool sequenceParallel)
    {
        const int tp = 2, dp = 2;
        var adamW = new AdamWOptions();
        var single = ParallelRun.Single(preset, _run.Shard, world: dp, Steps, adamW);
        var mesh = new DeviceMesh(dp: dp, tp: tp);
        var ranks = ParallelTraining.RunThreadRanks(mesh.WorldSize, ctx =>
        {
            var groups = mesh.CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var model = new Transformer(ModelPresets.Get(preset), ctx.Backend, DType.F64, tensorParallelism: tensor);
            model.InitializeWeights(ParallelRun.Seed);
            var strategy = DataParallelism.Create(model, groups.Dp,
                new DataParallelOptions { Stage = stage, OffloadOptimizer = offload, BucketElements = 1500, PoisonReleasedParameters = true }, adamW, ctx.Host);
            var loader = new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, groups.Coordinate.Dp, dp);
            var trainer = new Trainer(model, strategy, loader, null, ParallelRun.Options(Steps));
            var losses = new double[Steps];
            for (int s = 0; s < Steps; s++) losses[s] = trainer.TrainStep();
            return (Coordinate: groups.Coordinate, Losses: losses, Owned: ParallelRun.Owned(strategy), Parameters: model.Layout.Parameters, Length: model.Layout.Length);
        }, TimeSpan.FromSeconds(120));

        string where = $"{preset}, tp {tp} x dp {dp}, ZeRO {(int)stage}{(offload ? " + offload" : "")}{(sequenceParallel ? ", sp" : "")}";
        foreach (var r in ranks) DataParallelTests.AssertClose(single.Losses, r.Losses, $"{where}: loss of rank {r.Coordinate}");
        // Each tp rank's local arena from its dp group's owned ranges (plain DP: every dp rank owns it all; take dp rank 0's).
        var globalValues = new Dictionary<string, double[]>();
        for (int t = 0; t < tp; t++)
        {
            var column = ranks.Where(r => r.Coordinate.Tp == t).ToArray();
            var owners = stage == ZeroStage.None ? column.Where(r => r.Coordinate.Dp == 0) : column;
            var (local, _, _) = ParallelRun.AssembleState(column[0].Length, owners.Select(r => r.Owned));
            foreach (var p in column[0].Parameters)
            {
                if (!globalValues.TryGetValue(p.Name, out var global)) globalValues[p.Name] = global = new double[p.GlobalShape.NumElements];
                p.ScatterToGlobal<double>(local.AsSpan((int)p.Offset, (int)p.NumElements), global);
            }
        }
        var reference = ParallelRun.NewModel(preset, new Tessera.Tensors.Cpu.CpuBackend(1));
        var expected = single.Values;
        foreach (var p in reference.Layout.Parameters)
            DataParallelTests.AssertClose(expected.AsSpan((int)p.Offset, (int)p.NumElements).ToArray(), globalValues[p.Name], $"{where}: parameter {p.Name}");
    }
}
