using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Xunit;

namespace Tessera.Tests.Training;

/// <summary>The validation loss the trainer reports is the model's loss on the validation shard's first tokens.</summary>
public sealed class ValidationLossTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-val-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void EvaluateEqualsTheMeanLossOverTheShardsLeadingBatchesComputedIndependently()
    {
        const int seed = 11, b = 2, t = 8, batches = 3;
        var rng = new Random(seed);
        var tokens = Enumerable.Range(0, 400).Select(_ => rng.Next(96)).ToArray();
        var shard = Path.Combine(_dir, "val.bin");
        TokenShard.Write(shard, tokens);
        var backend = new CpuBackend(1);
        var model = new Transformer(ModelPresets.Get("gpt2-debug"), backend, DType.F64);
        model.InitializeWeights(seed);
        var options = new TrainerOptions { BatchSize = b, SequenceLength = t, Steps = 1, EvalBatches = batches, EvalEvery = 1 };
        var trainer = new Trainer(model, new AdamWOptimizer(model.Parameters, new AdamWOptions()), new TokenDataLoader([shard], b, t),
            new TokenDataLoader([shard], b, t), options);

        double reported = trainer.Evaluate();

        // Expected: batch k holds tokens [k·B·T, (k+1)·B·T) as inputs and the next token of each as its target, row-major;
        // its loss is the mean over its B·T positions of -log softmax(logits)[target]; the validation loss averages the batches.
        double expected = 0;
        for (int k = 0; k < batches; k++)
        {
            int start = k * b * t;
            var inputs = backend.FromHost<int>(tokens[start..(start + b * t)], new Shape(b, t));
            var logits = backend.ToArray<double>(model.Forward(inputs));   // (B, T, Vpad)
            int vpad = logits.Length / (b * t), vocab = model.Config.VocabSize;
            double sum = 0;
            for (int i = 0; i < b * t; i++)
            {
                var row = logits.AsSpan(i * vpad, vocab);
                double max = double.NegativeInfinity;
                foreach (var v in row) max = Math.Max(max, v);
                double z = 0;
                foreach (var v in row) z += Math.Exp(v - max);
                sum += max + Math.Log(z) - row[tokens[start + i + 1]];
            }
            expected += sum / (b * t) / batches;
        }
        // F64 end to end; the two sums differ only in order (1e-12 relative covers it with a wide margin).
        Assert.Equal(expected, reported, 1e-12 * Math.Abs(expected));
    }
}
