using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Models.Adapters;
using Tessera.Models.Safetensors;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Nn.Adapters;
using Tessera.Tests.Support;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Training.Parallel;

/// <summary>
/// LoRA fine-tuning under tensor parallelism (with and without sequence parallelism, and tp x dp with ZeRO) on CPU thread ranks,
/// against one device's LoRA run of the same global batch: the adapters are cut as the base weights are (column-parallel: A
/// replicated, B by rows; row-parallel: A by columns, B replicated), the replicated factor's partial gradient is summed over tp,
/// and rank 0 writes the whole adapters. Every case trains every linear target of its family (Llama: q, k, v parts of the fused
/// QKV, o, gate, up, down; Phi-3: PEFT's fused qkv_proj and gate_up_proj (one A over gate and up), o_proj, down_proj; GPT-2:
/// c_attn over the fused heads, attn.c_proj and mlp.c_proj with their biases, c_fc before the GELU) with clipping active
/// (MaxGradNorm below every step's norm). Seeds: <see cref="Seed"/> for the base, the adapters and the data, <see cref="Seed"/> + 1
/// for B's starting values (nonzero, so A gets a gradient from the first step).
/// </summary>
public sealed class LoraTensorParallelTests : IDisposable
{
    // F64: the ranks compute the one device's sums in another order (x W^T over column slices, partial products summed by the
    // all-reduce, the replicated factor's gradient summed over tp), equal to rounding, ~1e-16 per operation; 1e-10 (norm-wise
    // relative, per tensor) leaves room for a few AdamW steps, whose update divides by sqrt(v) and so carries a gradient's
    // relative rounding into the value, while a dropped reduction (a rank's share of dA or dB alone, a replicated factor counted
    // tp times in the norm, the wrong columns of a dropout mask) is off by 1e-5 or more (the mutations of the architecture
    // notes: 1e-5 to 1e-2). Seen: at most 2e-13 (tp x dp's gradient norms), most cases ~1e-15.
    private const double Tolerance = 1e-10;
    private const int T = 12, B = 2, Steps = 4, Seed = 37;
    private static readonly AdamWOptions AdamW = new() { MaxGradNorm = 0.05 };
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-lora-tp-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static List<ChatExample> Examples() => RandomChatExamples.Draw(Seed, 24);

    private static TrainerOptions Options(int batch, int steps = Steps, int accumulation = 1) => new()
    {
        BatchSize = batch, SequenceLength = T, Steps = steps, LearningRate = 1e-2, WarmupSteps = 1, Seed = Seed, EvalEvery = 0, LogEvery = 1, CheckpointEvery = 0,
        GradientAccumulationSteps = accumulation,
    };

    internal static string[] Targets(string preset) => preset switch
    {
        "gpt2-debug" => LoraTests.AllGpt2Targets,
        "phi3-debug" => LoraTests.AllPhi3Targets,
        _ => ["q", "k", "v", "o", "gate", "up", "down"],
    };

    /// <summary>A LoRA model over a frozen F64 base, split over <paramref name="tensor"/> when given: every rank holds its share of one device's values.</summary>
    private static Transformer Model(IBackend backend, string preset, TensorParallelism? tensor, double dropout, string[]? targets = null)
    {
        var config = ModelPresets.Get(preset);
        var lora = new LoraOptions { Rank = 4, Alpha = 8, Dropout = dropout, Seed = Seed, Targets = LoraTargets.Parse(config, targets ?? Targets(preset)) };
        var model = new Transformer(config, backend, DType.F64, ArenaStorage.Frozen, tensorParallelism: tensor, lora: lora);
        model.InitializeWeights(Seed);
        var rng = new Random(Seed + 1);
        foreach (var p in model.Adapters!.Layout.Parameters)
            if (p.Name.EndsWith(".lora_B", StringComparison.Ordinal))
                model.Adapters.Write(p, p.LocalValues(TestTensors.Normal(rng, p.GlobalShape.NumElements, 0.3)));
        return model;
    }

    private sealed record Run(double[] Losses, double[] Norms, string Checkpoint);

    private static (double[] Losses, double[] Norms) Train(Trainer trainer, int to)
    {
        var losses = new List<double>();
        var norms = new List<double>();
        while (trainer.Step < to)
        {
            losses.Add(trainer.TrainStep());
            norms.Add(trainer.Parallelism.LastGradNorm());
        }
        return ([.. losses], [.. norms]);
    }

    private Run OneDevice(string preset, int batch, double dropout, string name, int steps = Steps, string? restore = null, int accumulation = 1)
    {
        var model = Model(new CpuBackend(2), preset, null, dropout);
        var trainer = new Trainer(model, SingleDevice.For(model, AdamW), new ChatExampleLoader(Examples(), batch, T), null, Options(batch, steps, accumulation));
        if (restore is not null) LoraCheckpoint.Restore(restore, trainer, model.Adapters!);
        var (losses, norms) = Train(trainer, steps);
        var dir = LoraCheckpoint.Save(new CheckpointStore(Path.Combine(_dir, name)), trainer, model.Adapters!, "base-model", "byte");
        return new Run(losses, norms, dir);
    }

    /// <summary>
    /// Trains on a dp x tp mesh of thread ranks (<see cref="SingleDevice"/> per tp rank when dp is 1, else ZeRO
    /// <paramref name="stage"/> over each dp group) until step <paramref name="to"/>, after restoring <paramref name="restore"/>
    /// when given; saves a checkpoint (collective, rank 0 writes). Returns rank 0's losses and norms (every rank's are checked equal).
    /// </summary>
    private Run Ranks(string preset, int tp, int dp, bool sequenceParallel, ZeroStage stage, double dropout, string name,
        int steps = Steps, int? to = null, string? restore = null, int accumulation = 1)
    {
        var mesh = new DeviceMesh(dp: dp, tp: tp);
        string store = Path.Combine(_dir, name);
        var ranks = ParallelTraining.RunThreadRanks(mesh.WorldSize, ctx =>
        {
            using var groups = mesh.CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var model = Model(ctx.Backend, preset, tensor, dropout);
            IDataParallelism strategy = dp == 1
                ? SingleDevice.For(model, AdamW)
                : DataParallelism.Create(model, groups.Dp, new DataParallelOptions { Stage = stage, BucketElements = 300, PoisonReleasedParameters = true }, AdamW);
            var trainer = new Trainer(model, strategy, new ChatExampleLoader(Examples(), B, T, groups.Coordinate.Dp, dp), null, Options(B, steps, accumulation));
            if (restore is not null) LoraCheckpoint.Restore(restore, trainer, model.Adapters!);
            var (losses, norms) = Train(trainer, to ?? steps);
            var dir = LoraCheckpoint.Save(new CheckpointStore(store), trainer, model.Adapters!, "base-model", "byte");
            // The replicated factors (A over column-parallel layers, B over row-parallel ones), which only rank 0's copy of is saved.
            var replicated = dp == 1
                ? model.Adapters!.Layout.Parameters.Where(p => p.Placement.IsReplicated).SelectMany(p => model.Adapters.Read(p)).ToArray()
                : [];
            return (losses, norms, dir, replicated);
        }, TimeSpan.FromSeconds(120));
        foreach (var r in ranks)
        {
            Assert.Equal(ranks[0].losses, r.losses);
            Assert.Equal(ranks[0].norms, r.norms);
            Assert.True(ranks[0].replicated.SequenceEqual(r.replicated), "a replicated adapter factor differs between tensor-parallel ranks");
        }
        return new Run(ranks[0].losses, ranks[0].norms, ranks[0].dir);
    }

    private static Dictionary<string, (Shape Shape, double[] Values)> Tensors(string file)
    {
        using var f = SafetensorsFile.Open(file);
        return f.Tensors.ToDictionary(t => t.Name, t => (t.Shape, f.ReadAsDouble(t.Name)));
    }

    /// <summary>The two files hold the same tensor names and shapes, and values within <paramref name="tolerance"/> (norm-wise per tensor).</summary>
    private static void AssertSameTensors(string expectedFile, string actualFile, double tolerance, string what)
    {
        var expected = Tensors(expectedFile);
        var actual = Tensors(actualFile);
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        foreach (var (name, (shape, values)) in expected)
        {
            Assert.Equal(shape, actual[name].Shape);
            NumericAssert.Close(values, actual[name].Values, tolerance, $"{what}: {name}");
        }
    }

    [Theory]
    [InlineData("llama-debug", 2, 1, false, ZeroStage.None, 0.1)]
    [InlineData("llama-debug", 2, 1, true, ZeroStage.None, 0.0)]
    [InlineData("llama-debug", 4, 1, false, ZeroStage.None, 0.0)]     // tp 4 over 2 key/value heads: their B rows replicated in pairs
    [InlineData("llama-debug", 4, 1, true, ZeroStage.None, 0.1)]
    [InlineData("phi3-debug", 2, 1, true, ZeroStage.None, 0.1)]
    [InlineData("phi3-debug", 4, 1, false, ZeroStage.None, 0.0)]
    [InlineData("gpt2-debug", 2, 1, false, ZeroStage.None, 0.1)]
    [InlineData("gpt2-debug", 4, 1, true, ZeroStage.None, 0.0)]
    [InlineData("llama-debug", 2, 2, false, ZeroStage.None, 0.0)]
    [InlineData("llama-debug", 2, 2, true, ZeroStage.OptimizerStates, 0.0)]
    [InlineData("phi3-debug", 2, 2, true, ZeroStage.Parameters, 0.0)]
    [InlineData("gpt2-debug", 2, 2, false, ZeroStage.Gradients, 0.0)]
    public void TensorParallelLoraTrainsAndSavesWhatOneDeviceDoes(string preset, int tp, int dp, bool sequenceParallel, ZeroStage stage, double dropout)
    {
        // dp ranks of B rows each are one device's batch of dp B rows (with dropout only at dp 1: a dp rank draws its own masks).
        string where = $"{preset}, tp {tp} x dp {dp}{(sequenceParallel ? ", sp" : "")}, ZeRO {(int)stage}, dropout {dropout}";
        var single = OneDevice(preset, dp * B, dropout, "one");
        var split = Ranks(preset, tp, dp, sequenceParallel, stage, dropout, "split");

        NumericAssert.Close(single.Losses, split.Losses, Tolerance, $"{where}: losses");
        NumericAssert.Close(single.Norms, split.Norms, Tolerance, $"{where}: gradient norms before clipping");
        Assert.All(single.Norms, n => Assert.True(n > AdamW.MaxGradNorm, $"{where}: norm {n} does not clip; the check of the norm would be vacuous"));
        // The checkpoint: the adapters' masters and moments in global shapes, and the PEFT adapter one device writes.
        AssertSameTensors(Path.Combine(single.Checkpoint, LoraCheckpoint.StateFile), Path.Combine(split.Checkpoint, LoraCheckpoint.StateFile), Tolerance, $"{where}: lora_state");
        AssertSameTensors(Path.Combine(single.Checkpoint, PeftAdapter.WeightsFile), Path.Combine(split.Checkpoint, PeftAdapter.WeightsFile), 1e-6, $"{where}: adapter");   // F32 on file
        Assert.Equal(File.ReadAllText(Path.Combine(single.Checkpoint, PeftAdapterConfig.FileName)), File.ReadAllText(Path.Combine(split.Checkpoint, PeftAdapterConfig.FileName)));
        // Not vacuous: the adapters moved from where they started.
        var start = Model(new CpuBackend(1), preset, null, dropout).Adapters!;
        var trained = Tensors(Path.Combine(single.Checkpoint, LoraCheckpoint.StateFile));
        Assert.All(start.Layout.Parameters, p => Assert.True(NumericAssert.MaxRelativeError(start.Read(p), trained["value/" + p.Name].Values) > 1e-4, $"{p.Name} did not train"));
    }

    /// <summary>
    /// Two accumulated micro-batches a step: the partial factors are summed over tp once, on the step's last micro-batch (ZeRO-3
    /// reduces every micro-batch, and so does the tp sum then), and the step equals one device's with the same micro-batches.
    /// </summary>
    [Theory]
    [InlineData(1, ZeroStage.None)]
    [InlineData(2, ZeroStage.Parameters)]
    public void AccumulatedMicroBatchesSumThePartialFactorsOnceAStep(int dp, ZeroStage stage)
    {
        var single = OneDevice("llama-debug", dp * B, 0.0, "one", accumulation: 2);
        var split = Ranks("llama-debug", 2, dp, sequenceParallel: true, stage, 0.0, "split", accumulation: 2);
        NumericAssert.Close(single.Losses, split.Losses, Tolerance, "losses with accumulation");
        NumericAssert.Close(single.Norms, split.Norms, Tolerance, "gradient norms with accumulation");
        AssertSameTensors(Path.Combine(single.Checkpoint, LoraCheckpoint.StateFile), Path.Combine(split.Checkpoint, LoraCheckpoint.StateFile), Tolerance, "lora_state with accumulation");
    }

    [Theory]
    [InlineData(true, 0.1)]
    [InlineData(false, 0.0)]
    public void AResumedTensorParallelRunEqualsTheUninterruptedOneAndLoadsOnOneDevice(bool sequenceParallel, double dropout)
    {
        const int total = 6, stop = 3;
        var whole = Ranks("llama-debug", 2, 1, sequenceParallel, ZeroStage.None, dropout, "whole", total);
        var first = Ranks("llama-debug", 2, 1, sequenceParallel, ZeroStage.None, dropout, "stopped", total, to: stop);
        var rest = Ranks("llama-debug", 2, 1, sequenceParallel, ZeroStage.None, dropout, "resumed", total, restore: first.Checkpoint);
        double[] trajectory = [.. first.Losses, .. rest.Losses];
        Assert.Equal(whole.Losses, trajectory);                                   // bit for bit
        AssertSameTensors(Path.Combine(whole.Checkpoint, LoraCheckpoint.StateFile), Path.Combine(rest.Checkpoint, LoraCheckpoint.StateFile), 0, "resumed at tp 2");
        Assert.All(TrainingCheckpoint.ReadState(rest.Checkpoint).Lora!.MasksDrawn, n => Assert.Equal(dropout > 0 ? total : 0, n));
        Assert.Equal(2, TrainingCheckpoint.ReadState(rest.Checkpoint).Lora!.TensorParallel);
        // The checkpoint holds the whole adapters: one device continues the tp run as tp 2 does (the sums' order differs: 1e-10).
        var onOne = OneDevice("llama-debug", B, dropout, "one", total, restore: first.Checkpoint);
        NumericAssert.Close(rest.Losses, onOne.Losses, Tolerance, "tp 2 checkpoint resumed on one device: losses");
        AssertSameTensors(Path.Combine(whole.Checkpoint, LoraCheckpoint.StateFile), Path.Combine(onOne.Checkpoint, LoraCheckpoint.StateFile), Tolerance, "resumed on one device");
    }

    /// <summary>
    /// The collectives an adapter adds on the tensor-parallel group per step, with and without SP: one all-reduce of its partial
    /// factor (A over the column-parallel q, B over the row-parallel o and down; nothing in the forward, the row-parallel term
    /// riding the layer's own reduction), counted as the difference between two target sets over the same frozen base.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EachAdaptedLayerAddsOneTensorParallelAllReduceAStep(bool sequenceParallel)
    {
        long[] PerStep(string[] targets) => ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var model = Model(ctx.Backend, "llama-debug", new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory), 0.0, targets);
            var trainer = new Trainer(model, SingleDevice.For(model, AdamW), new ChatExampleLoader(Examples(), B, T), null, Options(B));
            trainer.TrainStep();
            long allReduces = groups.Tp.Count(Tessera.Distributed.CollectiveKind.AllReduce), all = groups.Tp.CollectiveCount;
            trainer.TrainStep();
            return new[] { groups.Tp.Count(Tessera.Distributed.CollectiveKind.AllReduce) - allReduces, groups.Tp.CollectiveCount - all };
        }, TimeSpan.FromSeconds(60))[0];
        var q = PerStep(["q"]);
        var qo = PerStep(["q", "o"]);
        var qoDown = PerStep(["q", "o", "down"]);
        int layers = ModelPresets.Get("llama-debug").Layers;
        Assert.Equal(new[] { q[0] + layers, q[1] + layers }, qo);               // o's B: one all-reduce a block, nothing else
        Assert.Equal(new[] { qo[0] + layers, qo[1] + layers }, qoDown);          // down's B likewise
    }

    /// <summary>
    /// --adapter under tp: a one-device PEFT adapter loads into a tp 2 model as each rank's share of its tensors (bit for bit: F32 on
    /// file into an F64 arena), while writing a split layout straight to a PEFT directory is refused (a rank holds only its share).
    /// </summary>
    [Fact]
    public void APeftAdapterLoadsAsEachRanksShareAndASplitLayoutIsNotSavedWhole()
    {
        var single = OneDevice("phi3-debug", B, 0.0, "one", steps: 1);
        var file = Tensors(Path.Combine(single.Checkpoint, PeftAdapter.WeightsFile));
        var results = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var model = Model(ctx.Backend, "phi3-debug", new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory), 0.0);
            PeftAdapter.Load(single.Checkpoint, model.Adapters!);
            var refusal = Assert.Throws<InvalidOperationException>(() => PeftAdapter.Save(Path.Combine(_dir, $"split-{ctx.Rank}"), model.Adapters!, null)).Message;
            // Each adapter's local values against its file tensor (phi3's gate_up_proj: one A shared, B the gate's rows then the up's).
            var checks = model.Adapters!.Layers.SelectMany(l => l.Parts.SelectMany(part => new[]
            {
                (part.A, Global: file[LoraTargets.PeftName(part, l.Name, isA: true)].Values),
                (part.B, Global: Rows(file[LoraTargets.PeftName(part, l.Name, isA: false)].Values, l.Name)),
            })).Select(c => (c.Item1.Name, Expected: c.Item1.LocalValues(c.Global), Actual: model.Adapters.Read(c.Item1))).ToArray();
            return (checks, refusal);
        }, TimeSpan.FromSeconds(60));
        foreach (var (checks, refusal) in results)
        {
            Assert.Contains("split over tensor-parallel ranks", refusal);
            Assert.All(checks, c => Assert.True(c.Expected.SequenceEqual(c.Actual), $"{c.Name}: not this rank's share of the file's tensor"));
        }

        static double[] Rows(double[] b, string layer) =>
            layer.EndsWith("mlp.gate", StringComparison.Ordinal) ? b.AsSpan(0, b.Length / 2).ToArray()
            : layer.EndsWith("mlp.up", StringComparison.Ordinal) ? b.AsSpan(b.Length / 2).ToArray() : b;
    }

    [Fact]
    public void ATensorParallelMixtureOfExpertsStillRefusesLora()
    {
        var config = ModelPresets.Get("mixtral-debug");
        var messages = ParallelTraining.RunThreadRanks(2, ctx =>
        {
            using var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var lora = new LoraOptions { Rank = 2, Targets = LoraTargets.Parse(config, ["q", "down"]) };
            return Assert.Throws<NotSupportedException>(() => new Transformer(config, ctx.Backend, DType.F64, ArenaStorage.Deferred, tensor, lora: lora)).Message;
        }, TimeSpan.FromSeconds(60));
        Assert.All(messages, m => Assert.Contains("mixture of experts", m));
        Assert.All(messages, m => Assert.Contains("without --tp", m));
    }
}
