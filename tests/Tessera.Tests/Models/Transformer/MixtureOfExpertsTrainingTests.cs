using Tessera.Models;
using Tessera.Nn.Layers;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Transformer;

/// <summary>
/// Training a mixture-of-experts model (F64, CPU): the load-balancing loss's gradient through the whole model, and
/// recomputation (checkpointed blocks re-route on the host) giving the gradients of the saved pass.
/// </summary>
public sealed class MixtureOfExpertsTrainingTests
{
    private const int B = 2, T = 8;
    private readonly CpuBackend _cpu = new(1);

    private Model RandomModel(TransformerConfig config, int seed)
    {
        var model = new Model(config, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));   // O(0.3) weights: gradients far above the noise
        return model;
    }

    private (Tensor Tokens, Tensor Targets) RandomBatch(TransformerConfig config, int seed)
    {
        var rng = new Random(seed);
        int[] Draw() => Enumerable.Range(0, B * T).Select(_ => rng.Next(config.VocabSize)).ToArray();
        return (_cpu.FromArray(Draw(), B, T), _cpu.FromArray(Draw(), B, T));
    }

    /// <summary>Mean cross-entropy plus the blocks' load-balancing losses: the objective of a step with lossScale 1 / (B T).</summary>
    private double Objective(Model model, Tensor tokens, Tensor targets)
    {
        var losses = _cpu.ToArray<double>(model.Loss(tokens, targets, 0, lossScale: 0));
        model.ReleaseActivations(0);
        return losses.Sum() / (B * T) + model.RouterAuxiliaryLoss;
    }

    [Theory]
    [InlineData("mixtral-debug")]
    [InlineData("qwen3-moe-debug")]
    [InlineData("qwen2-moe-debug")]
    public void TheLoadBalancingLossGradientMatchesCentralDifferences(string preset)
    {
        const int seed = 6101;
        var config = ModelPresets.Get(preset) with { RouterAuxLossCoefficient = 0.05 };
        var model = RandomModel(config, seed);
        var (tokens, targets) = RandomBatch(config, seed + 1);
        model.Parameters.ZeroGrad();
        model.Loss(tokens, targets, 0, 1.0 / (B * T));               // the aux losses weigh lossScale · B T = 1 each
        model.Backward(0);
        Assert.True(model.RouterAuxiliaryLoss > 0);
        var rng = new Random(seed + 2);
        foreach (var p in model.Parameters.Parameters.Where(p => p.Name.Contains(".mlp.", StringComparison.Ordinal)))
        {
            var values = TestTensors.ToDoubles(_cpu, p.Value);
            var grads = TestTensors.ToDoubles(_cpu, p.Grad);
            // Every router weight; three of each expert matrix.
            var index = p.Name.EndsWith("router.weight", StringComparison.Ordinal)
                ? Enumerable.Range(0, values.Length).ToArray()
                : Enumerable.Range(0, 3).Select(_ => rng.Next(values.Length)).Distinct().ToArray();
            var picked = index.Select(i => values[i]).ToArray();
            var numeric = GradientCheck.Numerical(() =>
            {
                for (int k = 0; k < index.Length; k++) values[index[k]] = picked[k];
                TestTensors.Write(_cpu, p.Value, values);
                return Objective(model, tokens, targets);
            }, picked);
            for (int k = 0; k < index.Length; k++) values[index[k]] = picked[k];
            TestTensors.Write(_cpu, p.Value, values);
            // Central differences in F64 (step 1e-5; no routing decision within a step at this seed) are good to ~1e-9
            // relative; 1e-6 per tensor fails without the aux term (checked below for the routers).
            NumericAssert.Close(numeric, index.Select(i => grads[i]).ToArray(), 1e-6, $"{preset} {p.Name} (seed {seed})");
        }

        // Without the load-balancing loss the routers' gradients are others: the term above was there and mattered.
        var off = RandomModel(config with { RouterAuxLossCoefficient = 0 }, seed);
        off.Parameters.ZeroGrad();
        off.Loss(tokens, targets, 0, 1.0 / (B * T));
        off.Backward(0);
        var with = TestTensors.ToDoubles(_cpu, model.Parameters["blocks.0.mlp.router.weight"].Grad);
        var without = TestTensors.ToDoubles(_cpu, off.Parameters["blocks.0.mlp.router.weight"].Grad);
        Assert.True(NumericAssert.MaxRelativeError(with, without) > 1e-3, $"{preset}: the load-balancing loss did not reach the router (seed {seed})");
    }

    [Theory]
    [InlineData("mixtral-debug")]
    [InlineData("qwen3-moe-debug")]
    [InlineData("qwen2-moe-debug")]
    public void RecomputedBlocksGiveTheSavedPassGradientsBitForBit(string preset)
    {
        const int seed = 6201;
        var config = ModelPresets.Get(preset) with { RouterAuxLossCoefficient = 0.01 };
        var (tokens, targets) = RandomBatch(config, seed + 1);
        (double[] Gradients, double Aux) Run(bool recompute)
        {
            var model = RandomModel(config, seed);
            model.RecomputeActivations = recompute;
            model.Parameters.ZeroGrad();
            model.Loss(tokens, targets, 0, 1.0 / (B * T));
            double aux = model.RouterAuxiliaryLoss;                  // known after the forward, checkpointed or not
            model.Backward(0);
            return (TestTensors.ToDoubles(_cpu, model.Parameters.Grads), aux);
        }
        // The recomputation runs the same ops on the same input and routes the same way: the same bits.
        var (saved, recomputed) = (Run(false), Run(true));
        Assert.Equal(saved.Gradients, recomputed.Gradients);
        Assert.True(saved.Aux > 0);
        Assert.Equal(saved.Aux, recomputed.Aux);
    }

    [Fact]
    public void TheTrainerLowersTheLossAndReportsTheLoadBalancingLoss()
    {
        using var run = new Tessera.Tests.Training.Parallel.TemporaryRunFolder("tessera-moe-");
        // A learnable shard: a cycle of 12 tokens, each next token fixed by the current one.
        string shard = Path.Combine(run.Root, "cycle.bin");
        Tessera.Training.Data.TokenShard.Write(shard, Enumerable.Range(0, 4000).Select(i => i % 12 * 7 % 96).ToArray());
        var config = ModelPresets.Get("mixtral-debug") with { RouterAuxLossCoefficient = 0.02 };
        var model = new Model(config, _cpu, DType.F32);
        model.InitializeWeights(Tessera.Tests.Training.Parallel.ParallelRun.Seed);
        var trainer = new Tessera.Training.Trainer(model, Tessera.Training.SingleDevice.For(model, new Tessera.Training.Optim.AdamWOptions()),
            new Tessera.Training.Data.TokenDataLoader([shard], 4, Tessera.Tests.Training.Parallel.ParallelRun.T), null,
            Tessera.Tests.Training.Parallel.ParallelRun.Options(30, batch: 4) with { LearningRate = 1e-2 });
        var steps = new List<Tessera.Training.StepMetrics>();
        var log = Path.Combine(run.Root, "metrics.jsonl");
        using (var metrics = new Tessera.Training.MetricsLog(log)) trainer.Run(steps.Add, metrics: metrics, cancellation: TestContext.Current.CancellationToken);
        // 30 AdamW steps at 1e-2 on the cycle: well below the first step's loss (ln 96 = 4.56 at a small init).
        Assert.True(steps[^1].Loss < 0.9 * steps[0].Loss, $"loss went from {steps[0].Loss} to {steps[^1].Loss}");
        // The load-balancing loss is reported beside it: coef · E · Σ f P lies in (0, coef · E] (f_e <= 1, Σ P = 1) per block,
        // two blocks; balanced routing gives coef · k per block.
        Assert.All(steps, m => Assert.InRange(m.RouterAuxLoss!.Value, 1e-6, 2 * 0.02 * 4));
        Assert.Contains("\"router_aux_loss\":", File.ReadAllLines(log)[0]);
    }

    [Fact]
    public void LoraAdaptsTheAttentionOfAnMoeModelAndItsExperts()
    {
        var config = ModelPresets.Get("mixtral-debug");
        var attention = new Tessera.Nn.Adapters.LoraOptions { Targets = Tessera.Models.Adapters.LoraTargets.Parse(config, ["q", "v"]) };
        var model = new Model(config, _cpu, DType.F64, lora: attention);
        Assert.NotEmpty(model.Layers.AdaptedLayers);
        Assert.All(model.Layers.AdaptedLayers, l => Assert.EndsWith(".attn.qkv", l.Name));
        // The MLP's short names are the experts' products here (MixtureOfExpertsLoraTests covers them).
        var mlp = new Tessera.Nn.Adapters.LoraOptions { Targets = Tessera.Models.Adapters.LoraTargets.Parse(config, ["gate"]) };
        var experts = new Model(config, _cpu, DType.F64, lora: mlp);
        Assert.Equal(config.Layers * config.Experts, experts.Layers.AdaptedLayers.Count);
        Assert.All(experts.Layers.AdaptedLayers, l => Assert.Matches(@"^blocks\.\d\.mlp\.experts\.\d\.gate$", l.Name));
    }

    [Fact]
    public void TheModelBuildsASparseBlockPerLayer()
    {
        var model = new Model(ModelPresets.Get("qwen3-moe-debug"), _cpu, DType.F32, Tessera.Nn.ArenaStorage.Deferred);
        Assert.All(model.Blocks, b => Assert.IsType<SparseMoeFeedForward>(b.Mlp));
        var moe = (SparseMoeFeedForward)model.Blocks[1].Mlp;
        Assert.Equal(4, moe.Experts.Count);
        Assert.Equal(48, moe.Experts[3].Gate.OutFeatures);
        Assert.False(moe.NormalizeWeights);
        Assert.True(model.Layout.Contains("blocks.1.mlp.experts.3.proj.weight"));
        Assert.False(model.Layout.Contains("blocks.1.mlp.gate.weight"));
    }
}
