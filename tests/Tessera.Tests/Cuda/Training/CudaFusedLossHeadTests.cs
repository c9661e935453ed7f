using Tessera.Models;
using Tessera.Nn.Layers;
using Tessera.Tensors;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// The fused, chunked LM head (<see cref="Transformer.LossChunkRows"/>) on the GPU against the unfused head on the GPU, from the
/// same weights and tokens: the same cuBLASLt products and cross-entropy kernel on row slices of the micro-batch.
/// </summary>
[Collection("cuda")]
public sealed class CudaFusedLossHeadTests(CudaFixture fixture)
{
    /// <summary>A GPT-2 shape with GPT-2's padded vocabulary (50257 of 50304) and narrow layers, so the head dominates.</summary>
    private static TransformerConfig NarrowGpt2(int layers = 2) => ModelPresets.Get("gpt2-124m") with { Layers = layers, Embedding = 64, Heads = 1 };

    private static (Tensor Tokens, Tensor Targets) Batch(IBackend backend, TransformerConfig config, int b, int t, int seed)
    {
        var rng = new Random(seed);
        var tokens = Enumerable.Range(0, b * t).Select(_ => rng.Next(config.VocabSize)).ToArray();
        var targets = Enumerable.Range(0, b * t).Select(i => i % 97 == 5 ? -1 : rng.Next(config.VocabSize)).ToArray();
        return (backend.FromHost<int>(tokens, new Shape(b, t)), backend.FromHost<int>(targets, new Shape(b, t)));
    }

    private static (double[] Losses, double[] Grads) Step(Transformer model, Tensor tokens, Tensor targets, int chunkRows, double scale)
    {
        model.LossChunkRows = chunkRows;
        model.Parameters.ZeroGrad();
        var losses = TestTensors.ToDoubles(model.Backend, model.Loss(tokens, targets, 0, scale));
        model.Backward(0);
        return (losses, TestTensors.ToDoubles(model.Backend, model.Parameters.Grads));
    }

    /// <summary>
    /// 2 x 256 rows in chunks of 200 (200, 200, 112: a chunk boundary inside a sequence, a short last chunk). F32 (TF32 off):
    /// the only difference is the head weight's sum over rows split into 3 partial sums, ~1e-7 relative; 1e-5 as the other
    /// F32 GPU tests. BF16: each chunk's weight gradient is added to the BF16 gradient (rounded to 8 bits, 2^-9 relative) 3
    /// times instead of once; 1e-2 norm-wise as the other BF16 tests, where a missing chunk or a wrong row is O(1).
    /// </summary>
    [Theory]
    [InlineData(DType.F32, 1e-5)]
    [InlineData(DType.BF16, 1e-2)]
    public void FusedHeadOnTheGpuGivesTheUnfusedLossesAndGradients(DType dtype, double tolerance)
    {
        var gpu = fixture.Backend;
        var config = NarrowGpt2();
        var model = new Transformer(config, gpu, dtype);
        model.InitializeWeights(seed: 7);
        var (tokens, targets) = Batch(gpu, config, 2, 256, seed: Environment.TickCount);
        double scale = 1.0 / 512;
        var (expectedLosses, expectedGrads) = Step(model, tokens, targets, chunkRows: 0, scale);
        var (losses, grads) = Step(model, tokens, targets, chunkRows: 200, scale);
        NumericAssert.Close(expectedLosses, losses, dtype == DType.F32 ? 1e-6 : 1e-3, $"{dtype} losses");
        Assert.Contains(expectedGrads, g => g != 0);
        foreach (var p in model.Parameters.Parameters)
        {
            var range = (int)p.Offset..(int)(p.Offset + p.NumElements);
            NumericAssert.Close(expectedGrads[range], grads[range], tolerance, $"{dtype} gradient of {p.Name}");
        }
    }

    /// <summary>
    /// 48 x 1024 rows over 50304 columns are 2.47e9 logits, past the 2^31 elements a buffer holds: the unfused head refuses
    /// the micro-batch, the fused head (default chunks) trains it, and its losses and gradients are those of its two halves
    /// through the unfused head, accumulated (F32; the halves' rows are independent in the forward pass, and the gradients
    /// differ only in the order of the sums over rows: 1e-5).
    /// </summary>
    [Fact]
    public void MicroBatchPastTwoToThe31LogitsTrainsAndEqualsItsHalves()
    {
        var gpu = fixture.Backend;
        var config = NarrowGpt2(layers: 1);
        const int b = 48, t = 1024;
        var model = new Transformer(config, gpu, DType.F32);
        model.InitializeWeights(seed: 9);
        var (tokens, targets) = Batch(gpu, config, b, t, seed: Environment.TickCount);
        double scale = 1.0 / (b * t);

        model.LossChunkRows = 0;
        var refused = Assert.Throws<ArgumentException>(() => model.Loss(tokens, targets, 0, scale));
        Assert.Contains("more than one buffer holds", refused.Message);
        model.ReleaseActivations(0);

        var (losses, grads) = Step(model, tokens, targets, FusedLinearCrossEntropy.DefaultChunkRows(config.EffectivePaddedVocab), scale);
        Assert.All(losses, l => Assert.True(double.IsFinite(l)));

        model.LossChunkRows = 0;
        model.Parameters.ZeroGrad();
        var halves = new List<double>();
        foreach (int start in new[] { 0, b / 2 })
        {
            var half = model.Loss(Slice(gpu, tokens, start, b / 2), Slice(gpu, targets, start, b / 2), 0, scale);
            halves.AddRange(TestTensors.ToDoubles(gpu, half));
            model.Backward(0);
        }
        NumericAssert.Close(halves.ToArray(), losses, 1e-6, "losses of the whole micro-batch against its halves");
        NumericAssert.Close(TestTensors.ToDoubles(gpu, model.Parameters.Grads), grads, 1e-5, "gradients of the whole micro-batch against its halves");
    }

    private static Tensor Slice(IBackend backend, Tensor rows, int start, int count)
    {
        var part = backend.Allocate(new Shape(count, rows.Size(1)), rows.DType);
        backend.Copy(rows.Slice(0, start, count), part);
        return part;
    }
}
