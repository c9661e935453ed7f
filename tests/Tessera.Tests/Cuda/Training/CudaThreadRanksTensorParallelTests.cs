using Tessera.Cuda.Distributed;
using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// Tensor parallelism (Megatron's plan, with and without sequence parallelism) on two CUDA thread ranks sharing the one GPU:
/// the CUDA kernels run with the sharded shapes (heads split, the vocabulary-parallel embedding and loss) and the
/// conjugate ops' collectives run on the device through the in-process group's CUDA transport. Against the same model
/// trained on one device on the same batches.
/// </summary>
[Collection("cuda")]
public sealed class CudaThreadRanksTensorParallelTests(CudaFixture fixture) : IDisposable
{
    private const int Tp = 2, Steps = 8, Batch = 4, Sequence = 64, Seed = 11;

    /// <summary>
    /// Relative tolerance of each step's loss. F32: 1e-5; the row-parallel products sum their two halves of K in another
    /// order than one product does (fp32 rounding): the same runs on CPU thread ranks in F32 measured 3.6e-7 (gpt2-tiny,
    /// with and without SP) and 0 (llama-debug + SP) over these 8 steps, so 1e-5 leaves the GPU's atomics room.
    /// BF16: 1e-2, the issue's bar for BF16 curves under TP: each rank's partial product is rounded to BF16 before the
    /// reduction, one more rounding (2^-9 relative) per row-parallel output than on one device.
    /// </summary>
    private static double LossTolerance(DType dtype) => dtype == DType.F32 ? 1e-5 : 1e-2;

    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-cuda-tp-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static TrainerOptions Options => new() { BatchSize = Batch, SequenceLength = Sequence, Steps = Steps, WarmupSteps = 2, LearningRate = 3e-3, Seed = Seed };

    [Theory]
    [InlineData("gpt2-tiny", DType.F32, false)]
    [InlineData("gpt2-tiny", DType.F32, true)]
    [InlineData("gpt2-tiny", DType.BF16, false)]
    [InlineData("llama-debug", DType.F32, false)]
    [InlineData("llama-debug", DType.BF16, true)]
    public void TwoTensorParallelThreadRanksOnOneGpuFollowOneDevice(string preset, DType dtype, bool sequenceParallel)
    {
        var backend = fixture.Backend;   // skips without a GPU
        var config = ModelPresets.Get(preset);
        var shard = AffineChainTokens.WriteShard(_dir, Steps * Batch * Sequence + 1, config.VocabSize, seed: 5);

        var reference = new Transformer(config, backend, dtype);
        reference.InitializeWeights(Seed);
        var plain = new Trainer(reference, new AdamWOptimizer(reference.Parameters, new AdamWOptions()), new TokenDataLoader([shard], Batch, Sequence), null, Options);
        var expected = Enumerable.Range(0, Steps).Select(_ => plain.TrainStep()).ToArray();

        var mesh = new DeviceMesh(tp: Tp);
        var losses = CudaThreadRanks.Run(mesh.WorldSize, ctx =>
        {
            var groups = mesh.CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var model = new Transformer(config, ctx.Backend, dtype, tensorParallelism: tensor);
            model.InitializeWeights(Seed);
            var strategy = DataParallelism.Create(model, groups.Dp, new DataParallelOptions(), new AdamWOptions(), ctx.Host);
            var trainer = new Trainer(model, strategy, new TokenDataLoader([shard], Batch, Sequence), null, Options);
            return Enumerable.Range(0, Steps).Select(_ => trainer.TrainStep()).ToArray();
        }, timeout: TimeSpan.FromMinutes(2));

        double maxLoss = Enumerable.Range(0, Steps).Max(s => Math.Abs(losses[0][s] - expected[s]) / expected[s]);
        string summary = $"{preset} {dtype} TP={Tp}{(sequenceParallel ? "+SP" : "")} on CUDA thread ranks: loss {expected[0]:F4} -> {expected[^1]:F4}, " +
            $"max relative loss difference {maxLoss:E2}";
        TestContext.Current.TestOutputHelper?.WriteLine(summary);
        Assert.True(expected[^1] < expected[0] - 0.05, $"the reference did not learn, so the comparison has no power: {summary}");
        Assert.Equal(losses[0], losses[1]);   // the loss is reduced over the tp group: both ranks log the same
        for (int s = 0; s < Steps; s++)
            Assert.True(Math.Abs(losses[0][s] - expected[s]) <= LossTolerance(dtype) * expected[s], $"step {s + 1}: loss {losses[0][s]:R} vs one device {expected[s]:R}; {summary}");
    }

    /// <summary>
    /// Generation under TP on the GPU: each rank caches its own key/value heads, the decode step's products reduce over the
    /// ranks, and the vocabulary's columns are gathered for sampling; in F32 the greedy tokens must be one device's (the
    /// logits differ by rounding, about 1e-6 relative, far below the gaps between the top two of a trained-from-seed model's
    /// logits over 24 steps; a tie would show as a differing token and the logged logits).
    /// </summary>
    [Theory]
    [InlineData("gpt2-tiny")]
    [InlineData("llama-debug")]
    public void TwoTensorParallelThreadRanksOnOneGpuGenerateOneDevicesGreedyTokens(string preset)
    {
        var backend = fixture.Backend;   // skips without a GPU
        var config = ModelPresets.Get(preset);
        int[] prompt = [3, 14, 15, 92, 65, 35];
        var greedy = new Tessera.Inference.GenerationOptions { MaxNewTokens = 24, Sampling = new Tessera.Inference.Sampling.SamplingOptions { Temperature = 0 } };

        var one = new Transformer(config, backend, DType.F32);
        one.InitializeWeights(Seed);
        var expected = new Tessera.Inference.TextGenerator(one).Generate(prompt, greedy).ToArray();

        var mesh = new DeviceMesh(tp: Tp);
        var tokens = CudaThreadRanks.Run(mesh.WorldSize, ctx =>
        {
            var groups = mesh.CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory);
            var model = new Transformer(config, ctx.Backend, DType.F32, tensorParallelism: tensor);
            model.InitializeWeights(Seed);
            return new Tessera.Inference.TextGenerator(model).Generate(prompt, greedy).ToArray();
        }, timeout: TimeSpan.FromMinutes(2));

        TestContext.Current.TestOutputHelper?.WriteLine($"{preset} TP={Tp} greedy on CUDA thread ranks: one device [{string.Join(", ", expected)}], rank 0 [{string.Join(", ", tokens[0])}]");
        Assert.Equal(24, expected.Length);
        Assert.Equal(expected, tokens[0]);
        Assert.Equal(expected, tokens[1]);
    }

    /// <summary>
    /// LoRA under tensor parallelism on the GPU (two CUDA thread ranks sharing it): adapters on every Llama projection, cut as
    /// their base layers (A whole and B by rows on column-parallel ones, A by columns and B whole on row-parallel ones), their
    /// partial gradients reduced over the tp group through the CUDA transport, clipping active, one batch of two chat
    /// examples every step (so the loss must fall: 4.518 to 4.394 on the CPU in F32); against the same LoRA run on one device
    /// in F32, losses within 1e-5 relative (as the base's TP rows above: the row-parallel partial sums add in another order;
    /// 2e-7 seen on an H100), both ranks logging the same loss. B starts random (seed logged) so the adapters matter at once.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void LoraUnderTwoTensorParallelThreadRanksOnOneGpuFollowsOneDevice(bool sequenceParallel)
    {
        var backend = fixture.Backend;   // skips without a GPU
        const int steps = 6, batch = 2, sequence = 12;
        var config = ModelPresets.Get("llama-debug");
        var adamW = new AdamWOptions { MaxGradNorm = 0.05 };
        var examples = Support.RandomChatExamples.Draw(Seed, batch);   // one batch, seen every step: the loss must fall
        var options = new TrainerOptions { BatchSize = batch, SequenceLength = sequence, Steps = steps, LearningRate = 1e-2, WarmupSteps = 1, Seed = Seed, EvalEvery = 0, CheckpointEvery = 0 };
        TestContext.Current.TestOutputHelper?.WriteLine($"seed {Seed}");

        Transformer LoraModel(IBackend b, TensorParallelism? tensor)
        {
            var lora = new Tessera.Nn.Adapters.LoraOptions { Rank = 4, Alpha = 8, Seed = Seed, Targets = Tessera.Models.Adapters.LoraTargets.Parse(config, ["q", "k", "v", "o", "gate", "up", "down"]) };
            var model = new Transformer(config, b, DType.F32, Tessera.Nn.ArenaStorage.Frozen, tensorParallelism: tensor, lora: lora);
            model.InitializeWeights(Seed);
            var rng = new Random(Seed + 1);
            foreach (var p in model.Adapters!.Layout.Parameters)
                if (p.Name.EndsWith(".lora_B", StringComparison.Ordinal))
                    model.Adapters.Write(p, p.LocalValues(Support.TestTensors.Normal(rng, p.GlobalShape.NumElements, 0.3)));
            return model;
        }

        var one = LoraModel(backend, null);
        var plain = new Trainer(one, SingleDevice.For(one, adamW), new ChatExampleLoader(examples, batch, sequence), null, options);
        var expected = Enumerable.Range(0, steps).Select(_ => plain.TrainStep()).ToArray();

        var mesh = new DeviceMesh(tp: Tp);
        var losses = CudaThreadRanks.Run(mesh.WorldSize, ctx =>
        {
            var groups = mesh.CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var model = LoraModel(ctx.Backend, tensor);
            var trainer = new Trainer(model, SingleDevice.For(model, adamW), new ChatExampleLoader(examples, batch, sequence), null, options);
            return Enumerable.Range(0, steps).Select(_ => trainer.TrainStep()).ToArray();
        }, timeout: TimeSpan.FromMinutes(2));

        string summary = $"LoRA llama-debug F32 TP={Tp}{(sequenceParallel ? "+SP" : "")} on CUDA thread ranks: loss {expected[0]:F4} -> {expected[^1]:F4}, " +
            $"max relative loss difference {Enumerable.Range(0, steps).Max(s => Math.Abs(losses[0][s] - expected[s]) / expected[s]):E2}";
        TestContext.Current.TestOutputHelper?.WriteLine(summary);
        Assert.True(expected[^1] < expected[0], $"the one-device LoRA run did not learn, so the comparison has no power: {summary}");
        Assert.Equal(losses[0], losses[1]);
        for (int s = 0; s < steps; s++)
            Assert.True(Math.Abs(losses[0][s] - expected[s]) <= 1e-5 * expected[s], $"step {s + 1}: loss {losses[0][s]:R} vs one device {expected[s]:R}; {summary}");
    }
}
