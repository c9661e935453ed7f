using Tessera.Distributed;
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
/// Mixture-of-experts models (Mixtral, Qwen3-MoE, Qwen2-MoE with its shared expert) under tensor parallelism on CPU thread
/// ranks against one device, in F64, with the load-balancing loss on (coefficient 0.02): the same AdamW steps (clipping at
/// 1.0, so the global norm counts the experts' slices and the replicated router once), every step's loss and every parameter
/// gathered from the ranks within 1e-10 (the ranks' partial products and reductions reorder sums, ~1e-16 relative each,
/// which a few steps amplify; a missed or extra reduction, or a router gradient from partial dot products, is >= 1e-4).
/// The replicated router and shared gate must stay bit-identical on every rank: the routing decisions depend on them.
/// </summary>
public sealed class MixtureOfExpertsTensorParallelTests : IDisposable
{
    private const int Steps = 4;
    private const double AuxCoefficient = 0.02;
    private readonly TemporaryRunFolder _run = new("tessera-moe-tp-");

    public void Dispose() => _run.Dispose();

    private static TransformerConfig Config(string preset) => ModelPresets.Get(preset) with { RouterAuxLossCoefficient = AuxCoefficient };

    private (double[] Losses, double[] Aux, Dictionary<string, double[]> Parameters) RunOneDevice(string preset)
    {
        var backend = new Tessera.Tensors.Cpu.CpuBackend(2);
        var model = new Transformer(Config(preset), backend, DType.F64);
        model.InitializeWeights(ParallelRun.Seed);
        var trainer = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(Steps));
        var losses = new double[Steps];
        var aux = new double[Steps];
        for (int s = 0; s < Steps; s++)
        {
            losses[s] = trainer.TrainStep();
            aux[s] = model.RouterAuxiliaryLoss;
        }
        return (losses, aux, model.Layout.Parameters.ToDictionary(p => p.Name, p => backend.ToArray<double>(p.Value)));
    }

    [Theory]
    [InlineData("mixtral-debug", 2, false)]
    [InlineData("qwen3-moe-debug", 2, false)]
    [InlineData("qwen2-moe-debug", 2, false)]   // the shared expert split, its gate replicated
    [InlineData("mixtral-debug", 4, false)]     // 12 of each expert's 48 units a rank; 2 key/value heads replicated on 2 ranks each
    [InlineData("qwen2-moe-debug", 2, true)]    // sequence parallelism: rows gathered before routing, reduce-scattered after
    [InlineData("qwen3-moe-debug", 2, true)]
    public void MixtureOfExpertsTensorParallelRanksTrainLikeOneDevice(string preset, int tp, bool sequenceParallel)
    {
        var (expectedLosses, expectedAux, expectedParameters) = RunOneDevice(preset);
        Assert.All(expectedAux, a => Assert.True(a > 0, "the load-balancing loss is on"));
        var ranks = ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var model = new Transformer(Config(preset), ctx.Backend, DType.F64, tensorParallelism: tensor);
            model.InitializeWeights(ParallelRun.Seed);
            var trainer = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null,
                ParallelRun.Options(Steps));
            var losses = new double[Steps];
            var aux = new double[Steps];
            for (int s = 0; s < Steps; s++)
            {
                losses[s] = trainer.TrainStep();
                aux[s] = model.RouterAuxiliaryLoss;
            }
            return (Losses: losses, Aux: aux, Parameters: model.Layout.Parameters.Select(p => (Parameter: p, Values: ctx.Backend.ToArray<double>(p.Value))).ToList());
        }, TimeSpan.FromSeconds(180));
        string where = $"{preset}, tp {tp}{(sequenceParallel ? " + sp" : "")}";
        for (int r = 0; r < tp; r++)
        {
            DataParallelTests.AssertClose(expectedLosses, ranks[r].Losses, $"{where}: rank {r} loss");
            DataParallelTests.AssertClose(expectedAux, ranks[r].Aux, $"{where}: rank {r} load-balancing loss");
        }
        TensorParallelTests.AssertParametersMatchOneDevice(expectedParameters, ranks.Select(r => r.Parameters), where);
    }

    [Fact]
    public void AnExpertWidthThatTpDoesNotDivideIsRefusedNamingTheField()
    {
        // qwen2-moe-debug at tp 4 (its 4 heads split), with widths 4 does not divide.
        var config = ModelPresets.Get("qwen2-moe-debug");
        var e = Assert.Throws<ArgumentException>(() => Transformer.CheckTensorParallel(config with { ExpertHidden = 22 }, 4));
        Assert.Contains("tp (4) must divide the experts' width (ExpertHidden = 22)", e.Message);
        e = Assert.Throws<ArgumentException>(() => Transformer.CheckTensorParallel(config with { SharedExpertHidden = 42 }, 4));
        Assert.Contains("tp (4) must divide the shared expert's width (SharedExpertHidden = 42)", e.Message);
        Transformer.CheckTensorParallel(config, 4);                  // 24 / 4 and 40 / 4: accepted
    }
}
