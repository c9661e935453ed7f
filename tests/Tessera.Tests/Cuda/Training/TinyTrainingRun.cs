using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Tests.Training.Parallel;
using Tessera.Training.Optim;

namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// The GPU precision tests' run: gpt2-tiny initialized with seed 5, trained by a <see cref="Trainer"/> with AdamW at lr 3e-3
/// (5 warm-up steps) on B x T windows of the token shards in a folder, so that two runs that differ in one setting (dtype,
/// master weights) see the same weights and data.
/// </summary>
internal static class TinyTrainingRun
{
    /// <summary>A fresh model and trainer over the shards <c>train_*.bin</c> of <paramref name="dataDir"/>.</summary>
    public static (Trainer Trainer, Transformer Model) Create(IBackend backend, DType dtype, string dataDir, int steps, int batch, int sequence,
        MasterWeights masters = MasterWeights.Separate)
    {
        var model = new Transformer(ModelPresets.Get("gpt2-tiny"), backend, dtype, masters: masters);
        model.InitializeWeights(seed: 5);
        var options = new TrainerOptions { BatchSize = batch, SequenceLength = sequence, Steps = steps, LearningRate = 3e-3, WarmupSteps = 5 };
        var loader = new TokenDataLoader(ShardWriter.Expand(Path.Combine(dataDir, "train_*.bin")), batch, sequence);
        var trainer = new Trainer(model, new AdamWOptimizer(model.Parameters, new AdamWOptions()), loader, null, options);
        return (trainer, model);
    }

    /// <summary>The losses of <paramref name="steps"/> steps of a fresh run.</summary>
    public static double[] Losses(IBackend backend, DType dtype, string dataDir, int steps, int batch, int sequence,
        MasterWeights masters = MasterWeights.Separate)
    {
        var (trainer, _) = Create(backend, dtype, dataDir, steps, batch, sequence, masters);
        var losses = new double[steps];
        for (int i = 0; i < steps; i++) losses[i] = trainer.TrainStep();
        return losses;
    }

    /// <summary>
    /// Two fresh runs of <paramref name="steps"/> steps on the same token shards (an affine chain over 256 tokens, seed 3,
    /// written to a temporary folder and removed after), one per (dtype, masters) setting, as a <see cref="LossCurveComparison"/>
    /// (printed to the test output).
    /// </summary>
    public static LossCurveComparison Compare(IBackend backend, int steps, int batch, int sequence,
        (string Name, DType DType, MasterWeights Masters) first, (string Name, DType DType, MasterWeights Masters) second)
    {
        var dir = Directory.CreateTempSubdirectory("tessera-curves-");
        try
        {
            ShardWriter.WriteSplit(AffineChainTokens.Generate(steps * batch * sequence + 1, vocab: 256, seed: 3), dir.FullName, 0, 1 << 20);
            var a = Losses(backend, first.DType, dir.FullName, steps, batch, sequence, first.Masters);
            var b = Losses(backend, second.DType, dir.FullName, steps, batch, sequence, second.Masters);
            var comparison = new LossCurveComparison(first.Name, a, second.Name, b);
            Xunit.TestContext.Current.TestOutputHelper?.WriteLine(comparison.ToString());
            return comparison;
        }
        finally { dir.Delete(recursive: true); }
    }
}
