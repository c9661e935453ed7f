using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// GPT-2's output-projection bias gradients from the LayerNorm backwards (<see cref="Transformer.ResidualBiasGradientsFromNorms"/>)
/// on the GPU against the projections' own reductions (SumRows), from the same weights and tokens, at GPT-2's width (the
/// warp-per-row sums kernel for BF16; the block kernel for F32 at C = 768).
/// </summary>
[Collection("cuda")]
public sealed class CudaResidualBiasGradientTests(CudaFixture fixture)
{
    private static TransformerConfig Gpt2Width() => ModelPresets.Get("gpt2-124m") with { Layers = 2, VocabSize = 1000, PaddedVocabSize = 1024 };

    private static double[] Gradients(Transformer model, Tensor tokens, Tensor targets, bool fromNorms, double scale)
    {
        model.ResidualBiasGradientsFromNorms = fromNorms;
        model.Parameters.ZeroGrad();
        for (int m = 0; m < 2; m++)                                   // two micro-batches: the gradients accumulate
        {
            model.Loss(tokens, targets, 0, scale);
            model.Backward(0);
        }
        return TestTensors.ToDoubles(model.Backend, model.Parameters.Grads);
    }

    /// <summary>
    /// 4 x 256 rows, two micro-batches, with and without checkpointed blocks; every parameter's gradient compared. F32 (TF32
    /// off): the biases are the same sums in another order, ~1e-7 relative; 1e-5 as the other F32 GPU tests. BF16: each bias
    /// gradient is rounded to 8 bits once a micro-batch either way (the cross-block sums reach it in F32); 1e-2 norm-wise as
    /// the other BF16 tests, where a missing or doubled sum is O(1). Weights of seed 11, tokens of the logged seed.
    /// </summary>
    [Theory]
    [InlineData(DType.F32, false)]
    [InlineData(DType.BF16, false)]
    [InlineData(DType.BF16, true)]
    public void NormSummedBiasGradientsOnTheGpuEqualTheProjectionsOwn(DType dtype, bool recompute)
    {
        var gpu = fixture.Backend;
        var config = Gpt2Width();
        var model = new Transformer(config, gpu, dtype) { RecomputeActivations = recompute };
        model.InitializeWeights(seed: 11);
        var rng = TestRandom.Create();
        const int b = 4, t = 256;
        var tokens = gpu.FromHost<int>(Enumerable.Range(0, b * t).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(b, t));
        var targets = gpu.FromHost<int>(Enumerable.Range(0, b * t).Select(_ => rng.Next(config.VocabSize)).ToArray(), new Shape(b, t));
        var expected = Gradients(model, tokens, targets, fromNorms: false, 1.0 / (2 * b * t));
        var actual = Gradients(model, tokens, targets, fromNorms: true, 1.0 / (2 * b * t));
        double tolerance = dtype == DType.F32 ? 1e-5 : 1e-2;
        foreach (var p in model.Parameters.Parameters)
        {
            var range = (int)p.Offset..(int)(p.Offset + p.NumElements);
            Assert.Contains(expected[range], g => g != 0);
            NumericAssert.Close(expected[range], actual[range], tolerance, $"{dtype} recompute={recompute}: gradient of {p.Name}");
        }
    }
}
