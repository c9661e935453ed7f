using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn;
using Tessera.Tests.Support;
using Xunit;
using Model = Tessera.Models.Transformer;

namespace Tessera.Tests.Models.Transformer;

/// <summary>
/// <see cref="Model.Loss"/> with the fused, chunked LM head (<see cref="Model.LossChunkRows"/> &gt; 0) against the unfused head
/// (0), in F64, the same model and batch: the losses and every parameter's gradient. The two compute the same products on
/// row slices; only the head weight's sum over rows is split into chunks (and a tied table's gradient adds the head's part
/// at the loss rather than at the backward), so 1e-12 relative bounds the reassociation with a wide margin.
/// </summary>
public sealed class FusedLossHeadTests
{
    private const int B = 2, T = 8;
    private const double Tolerance = 1e-12;
    private readonly CpuBackend _cpu = new(2);

    private static TransformerConfig Config(string preset) => preset == "gpt2-padded"
        ? ModelPresets.Get("gpt2-debug") with { PaddedVocabSize = 128 }    // 32 padding rows in the tied table
        : ModelPresets.Get(preset);

    private Model RandomModel(TransformerConfig config, int seed)
    {
        var model = new Model(config, _cpu, DType.F64);
        LayerCheck.Randomize(_cpu, model.Parameters, new Random(seed));
        return model;
    }

    private (Tensor Tokens, Tensor Targets, int Counted) RandomBatch(TransformerConfig config, int seed)
    {
        var rng = new Random(seed);
        var tokens = Enumerable.Range(0, B * T).Select(_ => rng.Next(config.VocabSize)).ToArray();
        var targets = Enumerable.Range(0, B * T).Select(i => i % 5 == 3 ? -1 : rng.Next(config.VocabSize)).ToArray();
        return (_cpu.FromArray(tokens, B, T), _cpu.FromArray(targets, B, T), targets.Count(t => t >= 0));
    }

    private (double[] Losses, Dictionary<string, double[]> Grads) Step(Model model, Tensor tokens, Tensor targets, int counted, int chunkRows,
        int microBatches = 1)
    {
        model.LossChunkRows = chunkRows;
        model.Parameters.ZeroGrad();
        double[] losses = [];
        for (int m = 0; m < microBatches; m++)
        {
            losses = _cpu.ToArray<double>(model.Loss(tokens, targets, 0, 1.0 / (counted * microBatches)));
            model.Backward(0);
        }
        return (losses, model.Parameters.Parameters.ToDictionary(p => p.Name, p => _cpu.ToArray<double>(p.Grad)));
    }

    [Theory]
    [InlineData("gpt2-debug", 5)]       // tied head: the table's gradient gets the head's part at the loss
    [InlineData("gpt2-padded", 3)]      // tied, padded vocabulary
    [InlineData("llama-debug", 5)]      // untied head
    [InlineData("qwen2-debug", 1)]      // untied, a row per chunk
    [InlineData("llama3-debug", 16)]    // one chunk of the whole micro-batch
    public void FusedHeadGivesTheUnfusedLossesAndEveryGradient(string preset, int chunkRows)
    {
        var config = Config(preset);
        var model = RandomModel(config, 101);
        var (tokens, targets, counted) = RandomBatch(config, 102);
        // Two micro-batches each, so the second accumulates onto the first's gradients as in gradient accumulation.
        var (expectedLosses, expectedGrads) = Step(model, tokens, targets, counted, chunkRows: 0, microBatches: 2);
        var (losses, grads) = Step(model, tokens, targets, counted, chunkRows, microBatches: 2);
        NumericAssert.Close(expectedLosses, losses, Tolerance, $"{preset}: losses");
        Assert.Contains(expectedLosses, l => l == 0);                    // the ignored targets
        Assert.Equal(model.Parameters.Parameters.Count, expectedGrads.Count);
        foreach (var (name, expected) in expectedGrads)
        {
            Assert.Contains(expected, g => g != 0);
            NumericAssert.Close(expected, grads[name], Tolerance, $"{preset}: gradient of {name}");
        }
    }

    [Fact]
    public void FusedHeadNeverHoldsAMicroBatchOfLogits()
    {
        var config = Config("llama-debug");
        int v = config.EffectivePaddedVocab, chunkRows = 4;
        var unfused = RandomModel(config, 111);
        var fused = RandomModel(config, 111);
        var (tokens, targets, counted) = RandomBatch(config, 112);
        Step(unfused, tokens, targets, counted, chunkRows: 0);
        Step(fused, tokens, targets, counted, chunkRows);
        long saved = unfused.Activations.BufferedElements - fused.Activations.BufferedElements;
        // The unfused head keeps the (N, V) logits per micro-batch and a scratch (N, C) for the final norm's output gradient; the
        // fused one a chunk (R, V) of logits and the input's gradient (N, C), which the final norm's backward reads in place.
        Assert.Equal((long)B * T * v - (long)chunkRows * v, saved);
    }

    [Fact]
    public void EvaluationLossTakesNoGradientAndABackwardAfterItAddsOnlyZeros()
    {
        var config = Config("gpt2-debug");
        var model = RandomModel(config, 121);
        var (tokens, targets, counted) = RandomBatch(config, 122);
        model.LossChunkRows = 5;
        var (expectedLosses, _) = Step(model, tokens, targets, counted, chunkRows: 0);
        model.LossChunkRows = 5;
        var start = TestTensors.Normal(new Random(123), model.Parameters.Length);
        TestTensors.Write(_cpu, model.Parameters.Grads, start);
        var losses = _cpu.ToArray<double>(model.Loss(tokens, targets, 0, lossScale: 0));
        NumericAssert.Close(expectedLosses, losses, Tolerance, "losses");
        Assert.Equal(start, _cpu.ToArray<double>(model.Parameters.Grads));   // bit for bit: no gradient at the loss
        model.Backward(0);
        NumericAssert.Close(start, _cpu.ToArray<double>(model.Parameters.Grads), 1e-15, "gradients after a zero-scale backward");
    }

    [Fact]
    public void ANegativeChunkSizeIsRefusedNamingTheProperty()
    {
        var model = new Model(Config("gpt2-debug"), _cpu, DType.F64);
        Assert.Equal(FusedLinearCrossEntropyDefault(Config("gpt2-debug").EffectivePaddedVocab), model.LossChunkRows);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => model.LossChunkRows = -1);
        Assert.Contains("LossChunkRows (-1)", e.Message);
    }

    private static int FusedLinearCrossEntropyDefault(int columns) => Tessera.Nn.Layers.FusedLinearCrossEntropy.DefaultChunkRows(columns);
}
