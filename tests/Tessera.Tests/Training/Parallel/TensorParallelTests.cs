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
/// Tensor (and sequence) parallelism on CPU thread ranks against one device, in F64: the same 10 AdamW steps (clipping at
/// 1.0, so the global norm matters), the same global batch, the loss of every step and every parameter gathered from the
/// ranks' shards within <see cref="Tolerance"/> of the one-device run. The ranks compute the same sums in other orders
/// (partial products reduced over ranks, the loss from per-shard statistics), ~1e-16 relative per operation; 1e-10 leaves
/// room for 10 steps to amplify that while catching any real error (a missed reduction, a head dealt to the wrong rank,
/// a bias added twice: all >= 1e-4).
/// </summary>
public sealed class TensorParallelTests : IDisposable
{
    private const double Tolerance = 1e-10;
    private const int Steps = 10;
    private readonly TemporaryRunFolder _run = new("tessera-tp-");

    public void Dispose() => _run.Dispose();

    /// <summary>What one rank recorded: its losses, the collectives of each kind per step on its groups, its parameters (name, local values, the parameter).</summary>
    private sealed record RankRun(double[] Losses, Dictionary<CollectiveKind, long> TensorCollectives, long ReplicaCollectives,
        List<(Tessera.Nn.Parameter Parameter, double[] Values)> Parameters);

    private RankRun[] RunTensorParallel(string preset, int tp, bool sequenceParallel, AdamWOptions adamW) =>
        ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var model = new Transformer(ModelPresets.Get(preset), ctx.Backend, DType.F64, tensorParallelism: tensor);
            model.InitializeWeights(ParallelRun.Seed);
            var trainer = new Trainer(model, SingleDevice.For(model, adamW), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null,
                ParallelRun.Options(Steps));
            var losses = new double[Steps];
            var kinds = Enum.GetValues<CollectiveKind>();
            var before = kinds.ToDictionary(k => k, k => groups.Tp.Count(k));
            var replica = tensor.ReplicaGroup(model.Config.EffectiveKvHeads);
            long replicaBefore = replica?.CollectiveCount ?? 0;
            for (int s = 0; s < Steps; s++) losses[s] = trainer.TrainStep();
            var perStep = kinds.ToDictionary(k => k, k => (groups.Tp.Count(k) - before[k]) / Steps);
            long replicaPerStep = ((replica?.CollectiveCount ?? 0) - replicaBefore) / Steps;
            var parameters = model.Layout.Parameters.Select(p => (p, ctx.Backend.ToArray<double>(p.Value))).ToList();
            return new RankRun(losses, perStep, replicaPerStep, parameters);
        }, TimeSpan.FromSeconds(120));

    /// <summary>The one-device run: the same model, batch and steps.</summary>
    private (double[] Losses, Dictionary<string, double[]> Parameters) RunOneDevice(string preset, AdamWOptions adamW)
    {
        var backend = new Tessera.Tensors.Cpu.CpuBackend(2);
        var model = ParallelRun.NewModel(preset, backend);
        var trainer = new Trainer(model, SingleDevice.For(model, adamW), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(Steps));
        var losses = new double[Steps];
        for (int s = 0; s < Steps; s++) losses[s] = trainer.TrainStep();
        return (losses, model.Layout.Parameters.ToDictionary(p => p.Name, p => backend.ToArray<double>(p.Value)));
    }

    [Theory]
    [InlineData("gpt2-debug", 2, false)]
    [InlineData("gpt2-debug", 4, false)]
    [InlineData("llama-debug", 2, false)]
    [InlineData("llama-debug", 4, false)]   // 2 key/value heads over 4 ranks: each head replicated on 2 ranks
    [InlineData("llama-headsize-debug", 2, false)]   // head size 16 != C / H = 12
    [InlineData("qwen3-debug", 2, false)]            // q/k norm gradients are partial on each rank and summed over them
    [InlineData("qwen3-debug", 2, true)]
    [InlineData("gemma2-debug", 2, false)]           // post-norms replicated after the row-parallel reductions
    [InlineData("gemma3-debug", 2, false)]
    [InlineData("gemma3-debug", 2, true)]            // sequence-parallel post-norms: partial gradients summed
    [InlineData("phi3-debug", 2, false)]
    [InlineData("phi4-mini-debug", 2, false)]
    [InlineData("gemma2-debug", 2, true)]            // and the capped logits through the vocabulary-parallel loss
    [InlineData("gpt2-debug", 2, true)]
    [InlineData("gpt2-debug", 4, true)]
    [InlineData("llama-debug", 2, true)]
    [InlineData("llama-debug", 4, true)]
    public void TensorParallelRanksTrainLikeOneDevice(string preset, int tp, bool sequenceParallel)
    {
        var adamW = new AdamWOptions();   // clipping at 1.0: the norm over the ranks' shards must be the whole gradient's
        var (expectedLosses, expectedParameters) = RunOneDevice(preset, adamW);
        var ranks = RunTensorParallel(preset, tp, sequenceParallel, adamW);
        string where = $"{preset}, tp {tp}{(sequenceParallel ? " + sp" : "")}";
        for (int r = 0; r < tp; r++)
            DataParallelTests.AssertClose(expectedLosses, ranks[r].Losses, $"{where}: rank {r} loss");
        AssertParametersMatchOneDevice(expectedParameters, ranks.Select(r => r.Parameters), where);
    }

    /// <summary>
    /// Every parameter gathered from the tensor-parallel ranks' shares equals one device's (as <see cref="DataParallelTests.AssertClose"/>
    /// compares), and a replicated parameter stays bit-identical on every rank (its gradient is whole, or summed, on each).
    /// </summary>
    internal static void AssertParametersMatchOneDevice(Dictionary<string, double[]> expectedParameters,
        IEnumerable<List<(Tessera.Nn.Parameter Parameter, double[] Values)>> ranks, string where)
    {
        var all = ranks.ToList();
        foreach (var (name, expected) in expectedParameters)
        {
            var gathered = new double[expected.Length];
            var replicated = new List<double[]>();
            foreach (var rank in all)
            {
                var (p, values) = rank.Single(x => x.Parameter.Name == name);
                if (p.Placement.IsReplicated) replicated.Add(values);
                p.ScatterToGlobal<double>(values, gathered);
            }
            DataParallelTests.AssertClose(expected, gathered, $"{where}: parameter {name}");
            foreach (var copy in replicated.Skip(1)) DataParallelTests.AssertBitIdentical(replicated[0], copy, $"{where}: replicas of {name}");
        }
    }

    [Theory]
    [InlineData("gpt2-debug", false)]
    [InlineData("gpt2-debug", true)]
    [InlineData("llama-debug", false)]
    [InlineData("llama-debug", true)]
    public void CollectivesPerStepAreMegatronsForEachBlock(string preset, bool sequenceParallel)
    {
        // Per step (one micro-batch) on the tensor-parallel group, L blocks:
        //   TP:  all-reduces  = 2L forward (attention and MLP outputs) + 1 (embedding) + 2L backward (their inputs) + 1 (head
        //        input) + 1 (gradient norm); all-gathers = 1 (the loss's per-row statistics); nothing else.
        //   SP:  the all-reduces of the residual regions become pairs: all-gathers = 2L forward (attention and MLP inputs) + 1
        //        (head input) + 1 (loss statistics) + 2L backward (row-parallel output gradients) + 1 (embedding gradient)
        //        = 4L + 3;
        //        reduce-scatters = 2L forward (outputs) + 1 (embedding) + 2L backward (inputs) + 1 (head input); all-reduces
        //        = the partial gradients (norm weights, LayerNorm biases, GPT-2's positions) + 1 (gradient norm).
        // Key/value heads replicated over 2 ranks (llama-debug at tp 4) add one all-reduce per block on their replica group
        // (the key and value rows of the QKV weight, adjacent, as one range).
        const int tp = 4;
        var config = ModelPresets.Get(preset);
        int l = config.Layers;
        var rank = RunTensorParallel(preset, tp, sequenceParallel, new AdamWOptions())[0];
        var c = rank.TensorCollectives;
        bool gpt2 = config.Family == ModelFamily.Gpt2;
        if (!sequenceParallel)
        {
            Assert.Equal(4 * l + 3, c[CollectiveKind.AllReduce]);
            Assert.Equal(1, c[CollectiveKind.AllGather]);
            Assert.Equal(0, c[CollectiveKind.ReduceScatter]);
        }
        else
        {
            int partials = gpt2 ? 2 * (2 * l + 1) + 1 : 2 * l + 1;
            Assert.Equal(4 * l + 3, c[CollectiveKind.AllGather]);
            Assert.Equal(4 * l + 2, c[CollectiveKind.ReduceScatter]);
            Assert.Equal(partials + 1, c[CollectiveKind.AllReduce]);
        }
        Assert.Equal(config.EffectiveKvHeads < tp ? l : 0, rank.ReplicaCollectives);
    }

    [Theory]
    [InlineData("llama-debug", 3, "tp (3) must divide the attention heads (Heads = 4)")]
    [InlineData("gpt2-debug", 8, "tp (8) must divide the attention heads (Heads = 4)")]
    public void TensorParallelSizeThatDoesNotDivideTheModelIsRefusedNamingTheField(string preset, int tp, string message)
    {
        var errors = Assert.Throws<AggregateException>(() => ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            return new Transformer(ModelPresets.Get(preset), ctx.Backend, DType.F64,
                tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(false), ctx.Factory));
        }, TimeSpan.FromSeconds(30)));
        Assert.All(errors.InnerExceptions, e => Assert.Contains(message, e.Message));
    }

    [Fact]
    public void PaddedVocabularyThatTpDoesNotDivideIsRefused()
    {
        var config = ModelPresets.Get("gpt2-debug") with { VocabSize = 90, PaddedVocabSize = 94 };
        var errors = Assert.Throws<AggregateException>(() => ParallelTraining.RunThreadRanks(4, ctx =>
        {
            var groups = new DeviceMesh(tp: 4).CreateGroups(ctx.Factory);
            return new Transformer(config, ctx.Backend, DType.F64,
                tensorParallelism: new TensorParallelism(groups.Tp, ParallelPlan.Megatron(false), ctx.Factory));
        }, TimeSpan.FromSeconds(30)));
        Assert.All(errors.InnerExceptions, e => Assert.Contains("tp (4) must divide the padded vocabulary (PaddedVocabSize = 94)", e.Message));
    }
}
