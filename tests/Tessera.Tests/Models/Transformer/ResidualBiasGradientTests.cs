using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Models.Blocks;
using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Tessera.Training.Parallel;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Transformer;

/// <summary>
/// The output projections' bias gradients taken from the LayerNorm backwards that write the residual gradient
/// (<see cref="Model.ResidualBiasGradientsFromNorms"/>) against each projection's own reduction: the whole model's gradients,
/// the block's use of the sums it is given and of those it hands down, and where the path must not apply.
/// </summary>
public sealed class ResidualBiasGradientTests
{
    private const int B = 2, T = 8;
    private readonly CpuBackend _cpu = new(2);

    /// <summary>The two bias gradients per block that the path computes differently (as sums of dx in the norm's order).</summary>
    private static bool IsProjectionBias(string name) => name.EndsWith(".attn.proj.bias") || name.EndsWith(".mlp.proj.bias");

    private Dictionary<string, double[]> Gradients(Model model, Tensor tokens, Tensor targets, int counted, bool fromNorms, int microBatches)
    {
        model.ResidualBiasGradientsFromNorms = fromNorms;
        model.Parameters.ZeroGrad();
        for (int m = 0; m < microBatches; m++)
        {
            model.Loss(tokens, targets, 0, 1.0 / (counted * microBatches));
            model.Backward(0);
        }
        return model.Parameters.Parameters.ToDictionary(p => p.Name, p => TestTensors.ToDoubles(_cpu, p.Grad));
    }

    /// <summary>
    /// gpt2-debug (2 blocks: the final norm hands sums to block 1, block 1's norm1 to block 0, and each norm2 to its own
    /// attention projection), two micro-batches accumulating, with and without checkpointed blocks, the fused and the unfused
    /// LM head. Every gradient but the 4 projection biases is computed by the same ops on the same inputs either way, so it
    /// must be bit-identical; the biases are the same column sums added in another order. Tolerance (norm-wise relative,
    /// <see cref="NumericAssert"/>): F64 1e-12; F32 1e-5 (16 rows a micro-batch of gradients ~1, so a reordering moves a sum
    /// by ~16 x 6e-8 of the terms' scale; 1e-5 leaves room for cancellation in the sums). Random weights of seed 201 and
    /// tokens of seed 202.
    /// </summary>
    [Theory]
    [InlineData(DType.F64, false, 0)]
    [InlineData(DType.F64, true, 0)]
    [InlineData(DType.F64, true, 5)]
    [InlineData(DType.F32, false, 5)]
    [InlineData(DType.F32, true, 0)]
    public void NormSummedBiasGradientsEqualTheProjectionsOwnOverTwoMicroBatches(DType dtype, bool recompute, int chunkRows)
    {
        const int weightSeed = 201, batchSeed = 202;
        var config = ModelPresets.Get("gpt2-debug");
        var model = new Model(config, _cpu, dtype) { RecomputeActivations = recompute, LossChunkRows = chunkRows };
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(weightSeed));
        var rng = new Random(batchSeed);
        var tokens = _cpu.FromArray(Enumerable.Range(0, B * T).Select(_ => rng.Next(config.VocabSize)).ToArray(), B, T);
        var targets = _cpu.FromArray(Enumerable.Range(0, B * T).Select(_ => rng.Next(config.VocabSize)).ToArray(), B, T);
        Assert.All(model.Blocks, b => Assert.True(b.TakesAttentionBiasGradientFromNorm && b.TakesMlpBiasGradientFromAbove, b.Name));

        var expected = Gradients(model, tokens, targets, B * T, fromNorms: false, microBatches: 2);
        var actual = Gradients(model, tokens, targets, B * T, fromNorms: true, microBatches: 2);
        double tolerance = dtype == DType.F32 ? 1e-5 : 1e-12;
        Assert.Equal(4, expected.Keys.Count(IsProjectionBias));
        foreach (var (name, e) in expected)
        {
            Assert.Contains(e, g => g != 0);
            string what = $"{dtype} recompute={recompute} chunkRows={chunkRows} (seeds {weightSeed}, {batchSeed}): gradient of {name}";
            if (IsProjectionBias(name)) NumericAssert.Close(e, actual[name], tolerance, what);
            else Assert.True(e.AsSpan().SequenceEqual(actual[name]), what + " must be bit-identical");
        }
    }

    /// <summary>
    /// A block given the column sums of its output gradient adds them to its MLP projection's bias gradient and takes none of
    /// its own there (given arbitrary values, that gradient is exactly those values), leaves every other gradient and dx
    /// bit-identical, and hands down the column sums of dx (SumRows of the returned dx, 1e-12 in F64: another order of the
    /// same additions), overwriting what the vector held, also when both are one buffer. Seed 203.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BlockUsesTheSumsItIsGivenAndHandsDownTheColumnSumsOfDx(bool oneBuffer)
    {
        const int seed = 203;
        var config = ModelPresets.Get("gpt2-debug");
        int c = config.Embedding;
        var rng = new Random(seed);
        var parameters = new ParameterLayoutBuilder();
        var store = new ActivationStore(_cpu);
        var block = new TransformerBlock(new LayerFactory(parameters), config, 0);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, B, T, c);
        var dyValues = TestTensors.Normal(rng, x.NumElements);
        var given = TestTensors.Normal(rng, c);
        var mlpBias = arena.Parameters.Single(p => p.Name == block.Name + ".mlp.proj.bias");

        (double[] Dx, Dictionary<string, double[]> Grads, double[]? Handed) Run(bool withSums)
        {
            arena.ZeroGrad();
            var ctx = PassContext.Training(store, 0);
            block.Forward(ctx, x);
            var d = TestTensors.FromDoubles(_cpu, dyValues, DType.F64, B, T, c);
            Tensor? output = withSums ? TestTensors.FromDoubles(_cpu, given, DType.F64, c) : null;
            Tensor? input = withSums ? (oneBuffer ? output : TestTensors.FromDoubles(_cpu, TestTensors.Normal(rng, c), DType.F64, c)) : null;
            block.Backward(ctx, d, normSumsBiasGradients: false, outputGradientSums: output, inputGradientSums: input);
            store.Release(0);
            return (TestTensors.ToDoubles(_cpu, d), arena.Parameters.ToDictionary(p => p.Name, p => TestTensors.ToDoubles(_cpu, p.Grad)),
                input is null ? null : TestTensors.ToDoubles(_cpu, input));
        }

        var plain = Run(withSums: false);
        var summed = Run(withSums: true);
        Assert.Equal(plain.Dx, summed.Dx);
        foreach (var (name, g) in plain.Grads)
            if (name == mlpBias.Name) Assert.Equal(given, summed.Grads[name]);
            else Assert.True(g.AsSpan().SequenceEqual(summed.Grads[name]), $"gradient of {name} (seed {seed}) must be bit-identical");
        var sums = _cpu.Zeros(new Shape(c), DType.F64);
        _cpu.SumRows(TestTensors.FromDoubles(_cpu, summed.Dx, DType.F64, B * T, c), sums);
        NumericAssert.Close(TestTensors.ToDoubles(_cpu, sums), summed.Handed!, 1e-12, $"column sums of dx handed down (seed {seed})");
    }

    [Fact]
    public void LlamaBlocksKeepTheProjectionsOwnReductionsAndRmsNormRejectsSums()
    {
        var model = new Model(ModelPresets.Get("llama-debug"), _cpu, DType.F64);
        Assert.All(model.Blocks, b => Assert.False(b.TakesAttentionBiasGradientFromNorm || b.TakesMlpBiasGradientFromAbove, b.Name));
        Assert.False(model.Blocks[0].Norm1.SumsInputGradientColumns);
        var sums = _cpu.Zeros(new Shape(model.Config.Embedding), DType.F64);
        var rows = _cpu.Zeros(new Shape(B * T, model.Config.Embedding), DType.F64);
        var ctx = PassContext.Training(model.Activations, 0);
        Assert.Throws<NotSupportedException>(() => model.Blocks[0].Norm1.Backward(ctx, rows, rows, sums));
        var ex = Assert.Throws<InvalidOperationException>(() => model.Blocks[0].Backward(ctx, rows, outputGradientSums: sums));
        Assert.Contains("mlp", ex.Message, StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>Under tensor parallelism (with and without sequence parallelism) the row-parallel projections keep their own
    /// bias reductions: their dy is gathered (SP) or the plan leaves it to them.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TensorParallelBlocksKeepTheProjectionsOwnReductions(bool sequenceParallel)
    {
        var config = ModelPresets.Get("gpt2-debug");
        var takes = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var model = new Model(config, ctx.Backend, DType.F32, tensorParallelism: tensor);
            return model.Blocks.Any(b => b.TakesAttentionBiasGradientFromNorm || b.TakesMlpBiasGradientFromAbove);
        });
        Assert.All(takes, Assert.False);
    }
}
