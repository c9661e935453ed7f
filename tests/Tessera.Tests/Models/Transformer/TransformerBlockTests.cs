using Tessera.Models;
using Tessera.Models.Blocks;
using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Models.Transformer;

/// <summary>A whole decoder block (norms, attention, MLP, residuals) against finite differences, in F64.</summary>
public class TransformerBlockTests
{
    private const int B = 2, T = 8;
    private readonly CpuBackend _cpu = new(1);

    [Theory]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
    public void BlockBackwardMatchesFiniteDifferences(string preset)
    {
        var config = ModelPresets.Get(preset);
        var rng = new Random(11);
        var parameters = new ParameterLayoutBuilder();
        var store = new ActivationStore(_cpu);
        var block = new TransformerBlock(new LayerFactory(parameters), config, 0);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, B, T, config.Embedding);
        var check = new LayerCheck(_cpu, () => block.Forward(PassContext.Transient(store), x));
        var ctx = PassContext.Training(store, 0);
        var dy = check.OutputGradient(rng, block.Forward(ctx, x));
        block.Backward(ctx, dy);                                  // in place: dy becomes dx
        check.Assert(x, dy, "dx");
        // Every element of dx; 40 random elements of each parameter keep the test well under a second.
        check.AssertParameters(arena, sample: 40, rng);
    }

    [Theory]
    [InlineData("gpt2-debug")]
    [InlineData("llama-debug")]
    public void CheckpointedBlockGivesBitIdenticalGradients(string preset)
    {
        var config = ModelPresets.Get(preset);
        var rng = new Random(12);
        var parameters = new ParameterLayoutBuilder();
        var store = new ActivationStore(_cpu);
        var block = new TransformerBlock(new LayerFactory(parameters), config, 0);
        var arena = new ParameterArena(parameters.Build(), _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, arena, rng);
        var x = TestTensors.RandomNormal(_cpu, rng, DType.F64, B, T, config.Embedding);
        var dyValues = TestTensors.Normal(rng, x.NumElements);

        (double[] Dx, double[] Grads) Run(bool checkpoint)
        {
            arena.ZeroGrad();
            var ctx = PassContext.Training(store, 0);
            var y = TestTensors.ToDoubles(_cpu, block.Forward(ctx, x, checkpoint));
            Assert.Equal(checkpoint, store.Contains(0, block.Name + ".checkpoint"));
            var d = TestTensors.FromDoubles(_cpu, dyValues, DType.F64, B, T, config.Embedding);
            block.Backward(ctx, d);
            store.Release(0);
            return (TestTensors.ToDoubles(_cpu, d), TestTensors.ToDoubles(_cpu, arena.Grads));
        }

        var plain = Run(checkpoint: false);
        var recomputed = Run(checkpoint: true);
        // The same ops on the same inputs in the same order: exactly equal.
        Assert.Equal(plain.Dx, recomputed.Dx);
        Assert.Equal(plain.Grads, recomputed.Grads);
    }
}
