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
/// Expert parallelism inside data parallelism on thread ranks, in F64: dp ranks, each group of ep consecutive ones holding
/// E / ep experts of every layer and exchanging tokens, train like one rank with dp accumulation micro-batches (the same global
/// batch): the same losses, every parameter's reduced gradient after each step (experts on their holders), and the weights after
/// the steps; the dp group issues the collectives the strategy announces, the ep group its all-to-alls. And the usage errors.
/// </summary>
public sealed class ExpertParallelTrainingTests(ITestOutputHelper output) : IDisposable
{
    // The one-rank reference sums the same terms in another order (each expert's gradient over one product of the rows of all
    // ep ranks, then over the expert-data-parallel group; the others over the dp all-reduce): ~1e-16 relative per operation,
    // and over 4 AdamW steps the largest deviation measured is ~2e-15 (logged). 1e-12 keeps a margin and fails both for expert
    // gradients left unsummed over edp (~1e-5 in the loss) and for a global norm that misses the other ranks' experts (~4e-11).
    private const double Tolerance = 1e-12;
    private const int Steps = 4;
    private readonly TemporaryRunFolder _run = new("tessera-ep-");

    public void Dispose() => _run.Dispose();

    private static TransformerConfig Config(string preset, double aux) => ModelPresets.Get(preset) with { RouterAuxLossCoefficient = aux };

    private static Dictionary<string, double[]> Read(Transformer model, bool gradients) =>
        model.Layout.Parameters.ToDictionary(p => p.Name, p => model.Backend.ToArray<double>(gradients ? p.Grad : p.Value));

    private sealed record Record(double[] Losses, Dictionary<string, double[]>[] Gradients, Dictionary<string, double[]> Values);

    private static Record Single(TransformerConfig config, string shard, int world, AdamWOptions adamW)
    {
        var model = new Transformer(config, new CpuBackend(2), DType.F64);
        model.InitializeWeights(ParallelRun.Seed);
        var trainer = new Trainer(model, new AdamWOptimizer(model.Parameters, adamW), new TokenDataLoader([shard], ParallelRun.B, ParallelRun.T), null,
            ParallelRun.Options(Steps, world));
        var losses = new double[Steps];
        var grads = new Dictionary<string, double[]>[Steps];
        for (int s = 0; s < Steps; s++)
        {
            losses[s] = trainer.TrainStep();
            grads[s] = Read(model, gradients: true);
        }
        return new Record(losses, grads, Read(model, gradients: false));
    }

    private double _worst;

    private void AssertClose(double[] expected, double[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++) _worst = Math.Max(_worst, Math.Abs(expected[i] - actual[i]) / Math.Max(1, Math.Abs(expected[i])));
        for (int i = 0; i < expected.Length; i++)
            if (!(Math.Abs(expected[i] - actual[i]) <= Tolerance * Math.Max(1, Math.Abs(expected[i]))))
                Assert.Fail($"{what}[{i}]: expected {expected[i]:R}, got {actual[i]:R}");
    }

    [Theory]
    [InlineData("mixtral-debug", 2, 2, 0.0)]
    [InlineData("mixtral-debug", 2, 2, 0.02)]      // the load-balancing loss: each rank's own tokens, as each micro-batch's on one rank
    [InlineData("qwen3-moe-debug", 2, 2, 0.02)]
    [InlineData("mixtral-debug", 4, 2, 0.02)]      // two expert-parallel groups: expert gradients summed over edp (2 ranks)
    [InlineData("qwen3-moe-debug", 4, 2, 0.0)]
    [InlineData("qwen2-moe-debug", 2, 2, 0.02)]    // the shared expert and its gate replicated: reduced over dp (edp is one rank here)
    [InlineData("qwen2-moe-debug", 4, 2, 0.0)]     // edp 2 != dp 4: a shared expert reduced over edp only would differ
    [InlineData("qwen3-moe-debug", 4, 4, 0.02)]    // one expert a rank, edp of one rank
    public void ExpertParallelRanksTrainLikeOneDevice(string preset, int dp, int ep, double aux)
    {
        var config = Config(preset, aux);
        var shard = _run.Shard;
        var adamW = new AdamWOptions();                              // clipping at 1.0: the global norm (experts summed over ep) matters
        var single = Single(config, shard, dp, adamW);
        var ranks = ParallelTraining.RunThreadRanks(dp, ctx =>
        {
            using var groups = ExpertParallelGroups.Create(ctx.Group, ep, ctx.Factory);
            var model = new Transformer(config, ctx.Backend, DType.F64, expertParallelism: new ExpertParallelism(groups.Expert));
            model.InitializeWeights(ParallelRun.Seed);
            var strategy = DataParallelism.Create(model, ctx.Group, new DataParallelOptions { BucketElements = 1500 }, adamW, ctx.Host,
                expertData: groups.ExpertData);
            var trainer = new Trainer(model, strategy, new TokenDataLoader([shard], ParallelRun.B, ParallelRun.T, ctx.Rank, dp), null, ParallelRun.Options(Steps));
            var losses = new double[Steps];
            var grads = new Dictionary<string, double[]>[Steps];
            var collectives = new long[Steps];
            var exchanges = new long[Steps];
            for (int s = 0; s < Steps; s++)
            {
                long before = ctx.Group.CollectiveCount, exchangesBefore = groups.Expert.Count(CollectiveKind.AllToAll);
                losses[s] = trainer.TrainStep();
                collectives[s] = ctx.Group.CollectiveCount - before;
                exchanges[s] = groups.Expert.Count(CollectiveKind.AllToAll) - exchangesBefore;
                grads[s] = Read(model, gradients: true);
            }
            int held = model.Layout.Parameters.Count(p => p.Name.Contains(".experts.", StringComparison.Ordinal));
            return (losses, grads, Values: Read(model, gradients: false), collectives, exchanges, trainer.CollectivesPerStep, held);
        }, TimeSpan.FromSeconds(120));

        int layers = config.Layers;
        foreach (var (r, rank) in ranks.Select((x, i) => (i, x)))
        {
            Assert.Equal(3 * layers * config.Experts / ep, rank.held);    // gate, up and proj of E / ep experts a layer
            Assert.All(rank.collectives, c => Assert.Equal(rank.CollectivesPerStep, c));
            Assert.All(rank.exchanges, c => Assert.Equal(5 * layers, c)); // per MoE layer: counts, rows, results; two backward
            AssertClose(single.Losses, rank.losses, $"rank {r} loss");
            for (int s = 0; s < Steps; s++)
                foreach (var (name, grad) in rank.grads[s]) AssertClose(single.Gradients[s][name], grad, $"rank {r} step {s + 1} gradient of {name}");
            foreach (var (name, value) in rank.Values) AssertClose(single.Values[name], value, $"rank {r} {name} after {Steps} steps");
        }
        output.WriteLine($"largest deviation from one device: {_worst:E2} (tolerance {Tolerance:E0})");
        // Every expert is held by dp / ep ranks: ep groups together hold all of them.
        foreach (var name in single.Values.Keys.Where(n => n.Contains(".experts.", StringComparison.Ordinal)))
            Assert.Equal(dp / ep, ranks.Count(x => x.Values.ContainsKey(name)));
    }

    [Fact]
    public void EpMustDivideDpAndStandAloneWithPlainDataParallelism()
    {
        var plain = new DataParallelOptions();
        Assert.Contains("ep (3) must divide dp (4)", Assert.Throws<ArgumentException>(() => ParallelTraining.CheckExpertParallel(new DeviceMesh(dp: 4), plain, 3)).Message);
        Assert.Contains("data parallelism only", Assert.Throws<NotSupportedException>(() => ParallelTraining.CheckExpertParallel(new DeviceMesh(tp: 2, dp: 2), plain, 2)).Message);
        Assert.Contains("data parallelism only", Assert.Throws<NotSupportedException>(() => ParallelTraining.CheckExpertParallel(new DeviceMesh(dp: 2, pp: 2), plain, 2)).Message);
        foreach (var stage in new[] { ZeroStage.OptimizerStates, ZeroStage.Gradients, ZeroStage.Parameters })
            Assert.Contains($"ZeRO stage {(int)stage} is not built", Assert.Throws<NotSupportedException>(() =>
                ParallelTraining.CheckExpertParallel(new DeviceMesh(dp: 2), new DataParallelOptions { Stage = stage }, 2)).Message);
        Assert.Contains("offloaded optimizer", Assert.Throws<NotSupportedException>(() =>
            ParallelTraining.CheckExpertParallel(new DeviceMesh(dp: 2), new DataParallelOptions { Stage = ZeroStage.None, OffloadOptimizer = true }, 2)).Message);
        ParallelTraining.CheckExpertParallel(new DeviceMesh(dp: 4), plain, 2);     // fine
    }

    [Fact]
    public void ModelsAndStrategiesRefuseWhatExpertParallelismDoesNotServe()
    {
        var messages = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var ep = new ExpertParallelism(ctx.Group);
            var list = new List<string>
            {
                Assert.Throws<ArgumentException>(() => new Transformer(ModelPresets.Get("llama-debug"), ctx.Backend, DType.F64, expertParallelism: ep)).Message,
                Assert.Throws<ArgumentException>(() => ExpertParallelGroups.Create(ctx.Group, 3, ctx.Factory)).Message,
            };
            var model = new Transformer(ModelPresets.Get("mixtral-debug"), ctx.Backend, DType.F64, expertParallelism: ep);
            list.Add(Assert.Throws<ArgumentException>(() => DataParallelism.Create(model, ctx.Group, new DataParallelOptions(), new AdamWOptions(), ctx.Host)).Message);
            using var groups = ExpertParallelGroups.Create(ctx.Group, 2, ctx.Factory);
            list.Add(Assert.Throws<NotSupportedException>(() =>
                DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = ZeroStage.OptimizerStates }, new AdamWOptions(), ctx.Host, expertData: groups.ExpertData)).Message);
            list.Add(Assert.Throws<NotSupportedException>(() =>
                DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = ZeroStage.Parameters }, new AdamWOptions(), ctx.Host, expertData: groups.ExpertData)).Message);
            return list;
        });
        Assert.Contains("ep (2) applies to mixture-of-experts models", messages[0][0]);
        Assert.Contains("ep (3) must be at least 1 and divide the data-parallel ranks (dp 2)", messages[0][1]);
        Assert.Contains("give the expert-data-parallel group", messages[0][2]);
        Assert.Contains("with ZeRO stage 1 is not built", messages[0][3]);
        Assert.Contains("with ZeRO stage 3 is not built", messages[0][4]);
    }
}
