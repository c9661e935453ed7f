using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Xunit;

namespace Tessera.Tests.Training;

public sealed class ResumeTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-resume-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly TrainerOptions Options = new()
    {
        BatchSize = 2, SequenceLength = 16, Steps = 20, LearningRate = 3e-3, WarmupSteps = 3, Seed = 7, LogEvery = 1,
    };

    private (global::Tessera.Models.Transformer Model, Trainer Trainer) NewRun(string shard)
    {
        var backend = new CpuBackend(2);
        var model = new global::Tessera.Models.Transformer(ModelPresets.Get("gpt2-debug"), backend, DType.F32);
        model.InitializeWeights(Options.Seed);
        var optimizer = new AdamWOptimizer(model.Parameters, new AdamWOptions());
        var loader = new TokenDataLoader([shard], Options.BatchSize, Options.SequenceLength);
        return (model, new Trainer(model, optimizer, loader, null, Options));
    }

    [Fact]
    public void TenStepsThenResumeThenTenAreBitIdenticalToTwentyStraight()
    {
        var shard = Path.Combine(_dir, "train.bin");
        var rng = new Random(3);
        // 500 tokens: the 20 steps of 32 tokens wrap around the shard, so the data position matters.
        TokenShard.Write(shard, Enumerable.Range(0, 500).Select(_ => rng.Next(96)).ToArray());

        var (_, straight) = NewRun(shard);
        var expected = Enumerable.Range(0, 20).Select(_ => straight.TrainStep()).ToArray();

        var store = new CheckpointStore(Path.Combine(_dir, "checkpoints"));
        var (firstModel, first) = NewRun(shard);
        var losses = Enumerable.Range(0, 10).Select(_ => first.TrainStep()).ToList();
        TrainingCheckpoint.Save(store, firstModel, first, "byte");

        var (resumedModel, resumed) = NewRun(shard);
        resumedModel.InitializeWeights(seed: 99);   // different weights: the checkpoint must overwrite them
        TrainingCheckpoint.Restore(store.Latest()!, resumedModel, resumed);
        Assert.Equal(10, resumed.Step);
        for (int i = 0; i < 10; i++) losses.Add(resumed.TrainStep());

        for (int i = 0; i < 20; i++)
            Assert.True(BitConverter.DoubleToInt64Bits(expected[i]) == BitConverter.DoubleToInt64Bits(losses[i]),
                $"step {i + 1}: straight {expected[i]:R} vs resumed {losses[i]:R}");
    }

    [Fact]
    public void CorruptCheckpointIsRefusedBeforeAnythingIsLoaded()
    {
        var shard = Path.Combine(_dir, "train.bin");
        TokenShard.Write(shard, Enumerable.Range(0, 200).Select(i => i % 96).ToArray());
        var store = new CheckpointStore(Path.Combine(_dir, "checkpoints"));
        var (model, trainer) = NewRun(shard);
        trainer.TrainStep();
        var dir = TrainingCheckpoint.Save(store, model, trainer, "byte");
        var weights = Path.Combine(dir, "model.safetensors");
        var bytes = File.ReadAllBytes(weights);
        bytes[^1] ^= 1;
        File.WriteAllBytes(weights, bytes);

        var (fresh, freshTrainer) = NewRun(shard);
        var before = fresh.Parameters.Backend.ToArray<float>(fresh.Parameters.Values);
        var e = Assert.Throws<CheckpointException>(() => TrainingCheckpoint.Restore(dir, fresh, freshTrainer));
        Assert.Contains("model.safetensors", e.Message);
        Assert.Equal(before, fresh.Parameters.Backend.ToArray<float>(fresh.Parameters.Values));
        Assert.Equal(0, freshTrainer.Step);

        bytes[^1] ^= 1;
        File.WriteAllBytes(weights, bytes);   // repaired; now a file goes missing instead
        File.Delete(Path.Combine(dir, "optimizer.safetensors"));
        e = Assert.Throws<CheckpointException>(() => TrainingCheckpoint.Restore(dir, fresh, freshTrainer));
        Assert.Contains("optimizer.safetensors", e.Message);
        Assert.Contains("missing", e.Message);
    }

    [Fact]
    public void CheckpointOfAnotherModelIsRefused()
    {
        var shard = Path.Combine(_dir, "train.bin");
        TokenShard.Write(shard, Enumerable.Range(0, 200).Select(i => i % 96).ToArray());
        var store = new CheckpointStore(Path.Combine(_dir, "checkpoints"));
        var (model, trainer) = NewRun(shard);
        var dir = TrainingCheckpoint.Save(store, model, trainer, "byte");
        var backend = new CpuBackend(1);
        var other = new global::Tessera.Models.Transformer(ModelPresets.Get("gpt2-debug") with { Layers = 3 }, backend, DType.F32);
        var otherTrainer = new Trainer(other, new AdamWOptimizer(other.Parameters, new AdamWOptions()),
            new TokenDataLoader([shard], 2, 16), null, Options);
        var e = Assert.Throws<CheckpointException>(() => TrainingCheckpoint.Restore(dir, other, otherTrainer));
        Assert.Contains("differs", e.Message);
    }
}
