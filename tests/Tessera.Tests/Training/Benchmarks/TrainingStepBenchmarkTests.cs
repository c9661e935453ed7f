using Tessera.Models;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Benchmarks;
using Xunit;

namespace Tessera.Tests.Training.Benchmarks;

public sealed class TrainingStepBenchmarkTests
{
    private static global::Tessera.Models.Transformer DebugModel()
    {
        var model = new global::Tessera.Models.Transformer(ModelPresets.Get("gpt2-debug"), new CpuBackend(1), DType.F32);
        model.InitializeWeights(1);
        return model;
    }

    /// <summary>Marks in call order; each interval lasts 1.5 ms per mark index it spans, so every median is known exactly.</summary>
    private sealed class FixedTimeline : IDeviceTimeline
    {
        public List<int> Marks { get; } = [];
        public void Mark(int index) => Marks.Add(index);
        public double ElapsedMilliseconds(int from, int to) => (to - from) * 1.5;
    }

    [Fact]
    public void TimedStepsAreRealUpdatesAndTheReportedLossIsTheMeanTokenLoss()
    {
        var model = DebugModel();
        var bench = new TrainingStepBenchmark(model, new TrainingStepBenchmarkOptions
        {
            BatchSize = 2, SequenceLength = 16, Steps = 1, WarmupSteps = 10, LearningRate = 1e-2,
        });
        // Measure before WarmUp: its one step's loss is the untrained model's (the loss is read before the update).
        double initial = bench.Measure().FinalLoss;
        bench.WarmUp();
        double trained = bench.Measure().FinalLoss;
        // Near-uniform logits at init give about ln(96) = 4.56 nats per token; a wrong loss scale would not.
        Assert.InRange(initial, Math.Log(96) - 0.3, Math.Log(96) + 0.3);
        // 11 AdamW updates at 1e-2 on one fixed batch of 32 tokens memorize a good part of it.
        Assert.True(trained < initial - 0.5, $"loss {initial:F3} -> {trained:F3}: the steps did not train");
    }

    [Fact]
    public void LossCurveTrainsOnConsecutiveWindowsOfTheStreamAndRepeatsRunForRun()
    {
        // A learnable stream: each token is the previous plus 1 modulo 7 (tokens 10..16 of gpt2-debug's 96).
        var stream = Enumerable.Range(0, 500).Select(i => 10 + i % 7).ToArray();
        double[] Curve() => new TrainingStepBenchmark(DebugModel(), new TrainingStepBenchmarkOptions
        {
            BatchSize = 2, SequenceLength = 16, Steps = 1, WarmupSteps = 0, LearningRate = 1e-2,
        }).LossCurve(stream, 12);
        var first = Curve();
        // Untrained: about ln(96) nats a token; 12 AdamW steps at 1e-2 on a deterministic successor rule learn most of it.
        Assert.InRange(first[0], Math.Log(96) - 0.3, Math.Log(96) + 0.3);
        Assert.True(first[^1] < first[0] - 2.0, $"loss {first[0]:F3} -> {first[^1]:F3}: the curve did not train");
        // The same initial weights and stream on a fresh model give the same curve bit for bit (CPU, one thread).
        Assert.Equal(first, Curve());
    }

    [Fact]
    public void LearningRateWarmupScalesTheFirstUpdates()
    {
        var stream = Enumerable.Range(0, 500).Select(i => 10 + i % 7).ToArray();
        double[] Curve(int warmup) => new TrainingStepBenchmark(DebugModel(), new TrainingStepBenchmarkOptions
        {
            BatchSize = 2, SequenceLength = 16, Steps = 1, WarmupSteps = 0, LearningRate = 1e-2, LearningRateWarmupSteps = warmup,
        }).LossCurve(stream, 2);
        var constant = Curve(0);
        var warmed = Curve(1000);
        // The same forward at step 1; step 1's update at 1/1000 of the rate moves step 2's loss about 1/1000 as far
        // (AdamW's first step is lr times the gradient's sign): under 1/20 of it leaves room for the second-order terms.
        Assert.Equal(constant[0], warmed[0]);
        double full = Math.Abs(constant[1] - constant[0]), small = Math.Abs(warmed[1] - warmed[0]);
        Assert.True(full > 0.05, $"the constant rate moved the loss only {full:E2}");
        Assert.True(small < full / 20, $"warmed up over 1000 steps the first update moved the loss {small:E2}, against {full:E2} at the full rate");
        Assert.Throws<ArgumentException>(() => new TrainingStepBenchmark(DebugModel(), new TrainingStepBenchmarkOptions { LearningRateWarmupSteps = -1 }));
    }

    [Fact]
    public void LossCurveRefusesATokenOutsideTheVocabularyAndAStreamShorterThanARow()
    {
        var bench = new TrainingStepBenchmark(DebugModel(), new TrainingStepBenchmarkOptions { BatchSize = 1, SequenceLength = 8, Steps = 1, WarmupSteps = 0 });
        var e = Assert.Throws<ArgumentException>(() => bench.LossCurve([1, 2, 3, 96, 4, 5, 6, 7, 8, 9], 1));
        Assert.Contains("token 96 at 3", e.Message);
        e = Assert.Throws<ArgumentException>(() => bench.LossCurve([1, 2, 3], 1));
        Assert.Contains("one row needs 9", e.Message);
    }

    [Fact]
    public void MicroBatchesAreTimedPhaseByPhaseAndThroughputFollowsTheMedianStep()
    {
        var model = DebugModel();
        var timeline = new FixedTimeline();
        var bench = new TrainingStepBenchmark(model,
            new TrainingStepBenchmarkOptions { BatchSize = 4, MicroBatchSize = 2, SequenceLength = 8, Steps = 3, WarmupSteps = 1 },
            timeline, peakDeviceBytes: () => 12345);
        var r = bench.Run();

        // Per step: start, (forward + loss, backward) for each of the 2 micro-batches, after the update.
        Assert.Equal(Enumerable.Repeat(new[] { 0, 1, 2, 3, 4, 5 }, 4).SelectMany(x => x), timeline.Marks);
        Assert.Equal(5 * 1.5, r.StepMilliseconds);
        Assert.Equal(2 * 1.5, r.ForwardMilliseconds);
        Assert.Equal(2 * 1.5, r.BackwardMilliseconds);
        Assert.Equal(1.5, r.OptimizerMilliseconds);
        Assert.Equal(2, r.MicroBatchSize);
        Assert.Equal(3, r.TimedSteps);
        Assert.Equal(12345, r.PeakDeviceBytes);
        Assert.True(r.WallMilliseconds > 0);

        var c = model.Config;
        long n = model.Parameters.ParameterCount;
        Assert.Equal(6.0 * n + 12.0 * c.Layers * 8 * c.Embedding, r.FlopsPerToken);
        Assert.Equal(32, r.TokensPerStep);
        Assert.Equal(32 / 0.0075, r.TokensPerSecond, 1e-9);
        Assert.Equal(r.FlopsPerToken * 32 / 0.0075 / 1e12, r.ModelFlopsUtilization(1e12), 1e-12);
    }

    [Fact]
    public void WithoutATimelineTheStepIsTheHostWallClockAndPhasesAreAbsent()
    {
        var r = new TrainingStepBenchmark(DebugModel(), new TrainingStepBenchmarkOptions { BatchSize = 1, SequenceLength = 8, Steps = 2, WarmupSteps = 0 }).Run();
        Assert.Equal(r.WallMilliseconds, r.StepMilliseconds);
        Assert.True(r.StepMilliseconds > 0);
        Assert.True(r.TokensPerSecond > 0);
        Assert.Null(r.ForwardMilliseconds);
        Assert.Null(r.BackwardMilliseconds);
        Assert.Null(r.OptimizerMilliseconds);
        Assert.Null(r.PeakDeviceBytes);
    }

    [Fact]
    public void AFrozenBaseWithLoraAdaptersTrainsTheAdaptersOnlyAndCountsTheirFlops()
    {
        var config = ModelPresets.Get("llama-debug");
        var lora = new global::Tessera.Nn.Adapters.LoraOptions
        {
            Rank = 2, Targets = global::Tessera.Models.Adapters.LoraTargets.Parse(config, global::Tessera.Models.Adapters.LoraTargets.Default),
        };
        var cpu = new CpuBackend(1);
        var model = new global::Tessera.Models.Transformer(config, cpu, DType.F32, global::Tessera.Nn.ArenaStorage.Frozen, lora: lora);
        BenchmarkWeights.Initialize(model, seed: 1);
        var baseBefore = cpu.ToArray<float>(model.Parameters.Values);
        var adaptersBefore = cpu.ToArray<float>(model.Adapters!.Arena.Values);
        var r = new TrainingStepBenchmark(model, new TrainingStepBenchmarkOptions { BatchSize = 2, SequenceLength = 8, Steps = 2, WarmupSteps = 1, LearningRate = 1e-2 }).Run();

        Assert.Equal(baseBefore, cpu.ToArray<float>(model.Parameters.Values));            // the base is not updated
        Assert.NotEqual(adaptersBefore, cpu.ToArray<float>(model.Adapters.Arena.Values)); // the adapters are
        long n = model.Parameters.ParameterCount, adapters = model.Adapters.ParameterCount;
        Assert.Equal(n, r.ParameterCount);
        Assert.Equal(adapters, r.TrainableParameterCount);
        // q,k,v,o at r = 2 on 2 blocks of width 32 (kv 16): A is (2, 32) for each, B (32 | 16 | 16 | 32, 2).
        Assert.Equal(2 * (4 * 2 * 32 + 2 * (32 + 16 + 16 + 32)), adapters);
        Assert.Equal(4.0 * n + 6.0 * adapters + 12.0 * config.Layers * 8 * config.Embedding, r.FlopsPerToken);

        // A frozen base without adapters has nothing to train.
        var frozen = new global::Tessera.Models.Transformer(config, cpu, DType.F32, global::Tessera.Nn.ArenaStorage.Frozen);
        var e = Assert.Throws<ArgumentException>(() => new TrainingStepBenchmark(frozen, new TrainingStepBenchmarkOptions { BatchSize = 1, SequenceLength = 8 }));
        Assert.Contains("no LoRA adapters", e.Message);
    }

    public static TheoryData<TrainingStepBenchmarkOptions, string> InvalidOptions => new()
    {
        { new() { BatchSize = 0 }, "BatchSize (0)" },
        { new() { Steps = 0 }, "Steps (0)" },
        { new() { WarmupSteps = -1 }, "WarmupSteps (-1)" },
        { new() { BatchSize = 4, MicroBatchSize = 3 }, "MicroBatchSize (3)" },
        { new() { LearningRate = 0 }, "LearningRate (0)" },
        { new() { SequenceLength = 33 }, "context of 32" },   // gpt2-debug holds 32 positions
    };

    [Theory]
    [MemberData(nameof(InvalidOptions))]
    public void InvalidOptionsAreRefusedNamingTheField(TrainingStepBenchmarkOptions options, string expected)
    {
        var e = Assert.Throws<ArgumentException>(() => new TrainingStepBenchmark(DebugModel(), options));
        Assert.Contains(expected, e.Message);
    }
}
