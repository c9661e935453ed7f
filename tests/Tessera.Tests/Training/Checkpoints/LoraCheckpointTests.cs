using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Tests.Support;
using Xunit;

namespace Tessera.Tests.Training.Checkpoints;

/// <summary>
/// LoRA checkpoints: a run stopped at step k and resumed from its checkpoint equals the uninterrupted run bit for bit (adapters,
/// moments, losses; dropout on, so its random state must come back too), on one device and under ZeRO; a checkpoint is a PEFT
/// adapter; mismatched checkpoints are refused naming what differs, before anything is written.
/// </summary>
public sealed class LoraCheckpointTests : IDisposable
{
    private const int T = 12, Seed = 9, Steps = 6, StopAt = 3;
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-lora-ckpt-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static List<ChatExample> Examples() => RandomChatExamples.Draw(Seed, 10);

    private static Transformer Model(IBackend backend, int rank = 4, string[]? targets = null, TransformerConfig? config = null)
    {
        config ??= ModelPresets.Get("llama-debug");
        var lora = new LoraOptions { Rank = rank, Alpha = 8, Dropout = 0.1, Seed = Seed, Targets = LoraTargets.Parse(config, targets ?? ["q", "v", "down"]) };
        var model = new Transformer(config, backend, DType.F32, ArenaStorage.Frozen, lora: lora);
        model.InitializeWeights(Seed);
        return model;
    }

    private static TrainerOptions Options(int batch) => new()
    {
        BatchSize = batch, SequenceLength = T, Steps = Steps, LearningRate = 1e-2, WarmupSteps = 2, Seed = Seed, EvalEvery = 0, LogEvery = 1, CheckpointEvery = 0,
    };

    /// <summary>
    /// Trains steps [from, to) on <paramref name="world"/> ranks (one device when 1) with 2 rows per rank, after restoring
    /// <paramref name="restore"/> when given; saves a checkpoint into <paramref name="store"/> at the end. Returns the losses.
    /// </summary>
    private static double[] Train(int world, ZeroStage stage, int to, string store, string? restore, string preset = "llama-debug")
    {
        // phi3-debug: PEFT's fused modules (gate and up share one A and draw one dropout stream), restored as any other adapters.
        Transformer Build(IBackend backend) => preset == "phi3-debug"
            ? Model(backend, targets: Tessera.Tests.Nn.Adapters.LoraTests.AllPhi3Targets, config: ModelPresets.Get(preset)) : Model(backend);
        if (world == 1)
        {
            var model = Build(new CpuBackend(2));
            var trainer = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new ChatExampleLoader(Examples(), 2, T), null, Options(2));
            return Run(trainer, model, to, store, restore);
        }
        var losses = ParallelTraining.RunThreadRanks(world, ctx =>
        {
            var model = Build(ctx.Backend);
            var strategy = DataParallelism.Create(model, ctx.Group, new DataParallelOptions { Stage = stage, BucketElements = 200 }, new AdamWOptions());
            var trainer = new Trainer(model, strategy, new ChatExampleLoader(Examples(), 2, T, ctx.Rank, world), null, Options(2));
            return Run(trainer, model, to, store, restore);
        }, TimeSpan.FromSeconds(60));
        return losses[0];
    }

    private static double[] Run(Trainer trainer, Transformer model, int to, string store, string? restore)
    {
        if (restore is not null) LoraCheckpoint.Restore(restore, trainer, model.Adapters!);
        var losses = new List<double>();
        while (trainer.Step < to) losses.Add(trainer.TrainStep());
        LoraCheckpoint.Save(new CheckpointStore(store), trainer, model.Adapters!, "base-dir", "byte");
        return [.. losses];
    }

    private static Dictionary<string, byte[]> Tensors(string checkpoint)
    {
        using var file = SafetensorsFile.Open(Path.Combine(checkpoint, LoraCheckpoint.StateFile));
        return file.Tensors.ToDictionary(t => t.Name, t => System.Runtime.InteropServices.MemoryMarshal.AsBytes(file.ReadAsSingle(t.Name).AsSpan()).ToArray());
    }

    [Theory]
    [InlineData(1, ZeroStage.None)]
    [InlineData(2, ZeroStage.Gradients)]
    [InlineData(2, ZeroStage.Parameters)]
    [InlineData(1, ZeroStage.None, "phi3-debug")]
    [InlineData(2, ZeroStage.Parameters, "phi3-debug")]
    public void AResumedRunEqualsTheUninterruptedOneBitForBit(int world, ZeroStage stage, string preset = "llama-debug")
    {
        string whole = Path.Combine(_dir, "whole"), stopped = Path.Combine(_dir, "stopped"), resumed = Path.Combine(_dir, "resumed");
        var uninterrupted = Train(world, stage, Steps, whole, null, preset);
        var first = Train(world, stage, StopAt, stopped, null, preset);
        var rest = Train(world, stage, Steps, resumed, Path.Combine(stopped, CheckpointStore.StepName(StopAt)), preset);
        double[] trajectory = [.. first, .. rest];
        Assert.Equal(uninterrupted, trajectory);                                  // bit for bit: double equality
        var expected = Tensors(Path.Combine(whole, CheckpointStore.StepName(Steps)));
        var actual = Tensors(Path.Combine(resumed, CheckpointStore.StepName(Steps)));
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        foreach (var (name, bytes) in expected) Assert.True(bytes.AsSpan().SequenceEqual(actual[name]), $"{name} differs after the resume");
        // Not vacuous: training moved the adapters and the moments, and dropout drew masks.
        var atStop = Tensors(Path.Combine(stopped, CheckpointStore.StepName(StopAt)));
        Assert.Contains(expected, kv => kv.Key.StartsWith("value/", StringComparison.Ordinal) && !kv.Value.AsSpan().SequenceEqual(atStop[kv.Key]));
        Assert.All(TrainingCheckpoint.ReadState(Path.Combine(whole, CheckpointStore.StepName(Steps))).Lora!.MasksDrawn, n => Assert.Equal(Steps, n));
    }

    [Fact]
    public void ACheckpointIsAPeftAdapterAndMismatchedRunsAreRefusedNamingTheDifference()
    {
        string store = Path.Combine(_dir, "store");
        Train(1, ZeroStage.None, 2, store, null);
        string checkpoint = Path.Combine(store, CheckpointStore.StepName(2));
        var saved = Model(new CpuBackend(1));
        PeftAdapter.Load(checkpoint, saved.Adapters!);                           // the directory is a PEFT adapter too
        Assert.Equal(["q", "v", "down"], PeftAdapter.ReadOptions(checkpoint, saved.Config).Targets.Select(t => t.Name));

        string Refusal(Transformer model)
        {
            var trainer = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new ChatExampleLoader(Examples(), 2, T), null, Options(2));
            var before = model.Backend.ToArray<float>(model.Adapters!.Arena.Values);
            var e = Assert.Throws<CheckpointException>(() => LoraCheckpoint.Restore(checkpoint, trainer, model.Adapters!));
            Assert.Equal(before, model.Backend.ToArray<float>(model.Adapters.Arena.Values));   // nothing written
            Assert.Equal(0, trainer.Step);
            return e.Message;
        }
        Assert.Contains("r = 4, this run's r = 8", Refusal(Model(new CpuBackend(1), rank: 8)));
        Assert.Contains("on q,v,down, this run's on q,k,v", Refusal(Model(new CpuBackend(1), targets: ["q", "k", "v"])));
        Assert.Contains("another model", Refusal(Model(new CpuBackend(1), config: ModelPresets.Get("llama-debug") with { Layers = 3 })));

        // A damaged file is caught by the manifest before anything is read.
        var state = Path.Combine(checkpoint, LoraCheckpoint.StateFile);
        var bytes = File.ReadAllBytes(state);
        bytes[^1] ^= 0x40;
        File.WriteAllBytes(state, bytes);
        Assert.Contains("SHA-256", Refusal(Model(new CpuBackend(1))));
    }
}
