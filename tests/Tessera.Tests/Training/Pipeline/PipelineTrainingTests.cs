using Tessera.Tests.Training.Parallel;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;
using Xunit;

namespace Tessera.Tests.Training.Pipeline;

/// <summary>
/// Pipeline parallelism on CPU thread ranks against one device, in F64: GPT-2 (tied embeddings, so the first and last stages
/// share the table through the embedding group) and Llama (untied) debug presets with 8 blocks, PP = 2 and 4 under GPipe, 1F1B
/// and interleaved 1F1B (2 chunks per rank), for 1, p, 2p and 8 micro-batches per step; 10 AdamW steps with clipping at 1.0 (the
/// global norm spans the stages). Every rank's loss of every step and every parameter, taken from the stage that holds it,
/// within 1e-10 of one device accumulating the same micro-batches: the stages compute the same sums in other orders (the tied
/// table's two contributions are summed across stages, the norm's squares per stage), ~1e-16 relative per operation, which 10
/// steps amplify far less than 1e-10; any real error (a micro-batch's activation routed to another, a lost gradient, a missing
/// loss scale) is >= 1e-4.
/// </summary>
public sealed class PipelineTrainingTests : IDisposable
{
    private const int Steps = 10;
    private readonly TemporaryRunFolder _run = new("tessera-pp-");

    public void Dispose() => _run.Dispose();

    public static TheoryData<string, int, PipelineScheduleKind, int, int> Layouts()
    {
        var data = new TheoryData<string, int, PipelineScheduleKind, int, int>();
        foreach (var preset in new[] { "gpt2-debug", "llama-debug" })
            foreach (int pp in new[] { 2, 4 })
                foreach (int m in new[] { 1, pp, 2 * pp, 8 }.Distinct())
                {
                    data.Add(preset, pp, PipelineScheduleKind.GPipe, 1, m);
                    data.Add(preset, pp, PipelineScheduleKind.OneForwardOneBackward, 1, m);
                    if (m % pp == 0) data.Add(preset, pp, PipelineScheduleKind.Interleaved, 2, m);
                }
        return data;
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void PipelineStagesTrainLikeOneDevice(string preset, int pp, PipelineScheduleKind schedule, int chunks, int microBatches)
    {
        var config = PipelineRun.Config(preset);
        var adamW = new AdamWOptions();
        var layout = new PipelineLayout(pp, schedule, microBatches, chunks);
        var (losses, parameters) = PipelineRun.OneDevice(config, _run.Shard, microBatches, Steps, adamW);
        var ranks = PipelineRun.Train(config, _run.Shard, layout, Steps, adamW);
        foreach (var r in ranks) DataParallelTests.AssertClose(losses, r.Losses, $"{preset}, {layout}: loss of stage {r.Coordinate.Pp}");
        var gathered = PipelineRun.Gather(ranks);
        Assert.Equal(parameters.Keys.Order(), gathered.Keys.Order());
        foreach (var (name, expected) in parameters) DataParallelTests.AssertClose(expected, gathered[name], $"{preset}, {layout}: parameter {name}");
    }

    /// <summary>
    /// Mixture-of-experts blocks on pipeline stages, the load-balancing loss on: a stage without the head weighs its blocks'
    /// aux losses by the loss scale it was given (<see cref="Tessera.Models.Transformer.SetRouterLossScale"/>) as one device does.
    /// </summary>
    [Theory]
    [InlineData("mixtral-debug", PipelineScheduleKind.OneForwardOneBackward, 1, 4)]
    [InlineData("qwen3-moe-debug", PipelineScheduleKind.Interleaved, 2, 4)]
    public void MixtureOfExpertsStagesWithTheLoadBalancingLossTrainLikeOneDevice(string preset, PipelineScheduleKind schedule, int chunks, int microBatches)
    {
        var config = PipelineRun.Config(preset) with { RouterAuxLossCoefficient = 0.05 };
        var adamW = new AdamWOptions();
        var layout = new PipelineLayout(2, schedule, microBatches, chunks);
        var (losses, parameters) = PipelineRun.OneDevice(config, _run.Shard, microBatches, Steps, adamW);
        var ranks = PipelineRun.Train(config, _run.Shard, layout, Steps, adamW);
        foreach (var r in ranks) DataParallelTests.AssertClose(losses, r.Losses, $"{preset}, {layout}: loss of stage {r.Coordinate.Pp}");
        var gathered = PipelineRun.Gather(ranks);
        foreach (var (name, expected) in parameters) DataParallelTests.AssertClose(expected, gathered[name], $"{preset}, {layout}: parameter {name}");
    }

    /// <summary>
    /// PTD-P on one mesh of 8 thread ranks: pp 2 x tp 2 x dp 2 (tp innermost, Megatron's order), ZeRO-1 over dp, Megatron's
    /// tensor-parallel plan (with sequence parallelism for GPT-2, whose messages between stages are then each rank's half of the
    /// residual stream), 1F1B and interleaved 1F1B, and activation recomputation in one case. The one-device reference
    /// accumulates the same 2 x m micro-batches.
    /// </summary>
    [Theory]
    [InlineData("gpt2-debug", PipelineScheduleKind.OneForwardOneBackward, 1, 4, true, false)]
    [InlineData("llama-debug", PipelineScheduleKind.Interleaved, 2, 4, false, true)]
    [InlineData("gpt2-debug", PipelineScheduleKind.Interleaved, 2, 2, false, false)]
    public void PipelineTensorDataParallelRanksTrainLikeOneDevice(string preset, PipelineScheduleKind schedule, int chunks, int microBatches, bool sequenceParallel, bool recompute)
    {
        var config = PipelineRun.Config(preset);
        var adamW = new AdamWOptions();
        var layout = new PipelineLayout(2, schedule, microBatches, chunks, Tp: 2, Dp: 2, SequenceParallel: sequenceParallel, Zero: ZeroStage.OptimizerStates, Recompute: recompute);
        var (losses, parameters) = PipelineRun.OneDevice(config, _run.Shard, microBatches * layout.Dp, Steps, adamW);
        var ranks = PipelineRun.Train(config, _run.Shard, layout, Steps, adamW);
        Assert.Equal(8, ranks.Length);
        foreach (var r in ranks) DataParallelTests.AssertClose(losses, r.Losses, $"{preset}, {layout}: loss of rank {r.Coordinate}");
        var gathered = PipelineRun.Gather(ranks);
        Assert.Equal(parameters.Keys.Order(), gathered.Keys.Order());
        foreach (var (name, expected) in parameters) DataParallelTests.AssertClose(expected, gathered[name], $"{preset}, {layout}: parameter {name}");
    }

    /// <summary>Validation runs as a forward-only schedule: the mean loss of the evaluation batches, on every stage, as one device computes it (1e-10).</summary>
    [Theory]
    [InlineData("gpt2-debug", PipelineScheduleKind.OneForwardOneBackward, 1)]
    [InlineData("llama-debug", PipelineScheduleKind.Interleaved, 2)]
    public void EvaluationThroughThePipelineEqualsOneDevice(string preset, PipelineScheduleKind schedule, int chunks)
    {
        var config = PipelineRun.Config(preset);
        var options = ParallelRun.Options(2, accumulation: 4) with { EvalBatches = 6 };
        var model = new Tessera.Models.Transformer(config, new Tessera.Tensors.Cpu.CpuBackend(2), Tessera.Tensors.DType.F64);
        model.InitializeWeights(ParallelRun.Seed);
        var one = new Tessera.Training.Trainer(model, Tessera.Training.SingleDevice.For(model, new AdamWOptions()),
            new Tessera.Training.Data.TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), new Tessera.Training.Data.TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), options);
        one.TrainStep();
        double expected = one.Evaluate();
        var layout = new PipelineLayout(4, schedule, 4, chunks);
        var losses = ParallelTraining.RunThreadRanks(layout.World, ctx =>
        {
            var (stage, groups) = PipelineRun.BuildRank(ctx, config, layout);
            var trainer = new Tessera.Training.Trainer(stage, Tessera.Training.SingleDevice.For(stage, new AdamWOptions()),
                new Tessera.Training.Data.TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), new Tessera.Training.Data.TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T),
                options, schedule);
            trainer.TrainStep();
            return trainer.Evaluate();
        }, TimeSpan.FromSeconds(60));
        foreach (double loss in losses) DataParallelTests.AssertClose([expected], [loss], $"{preset}: validation loss through the pipeline");
    }

    /// <summary>Strategies that do not compose with a pipeline are refused when the trainer is built, with the reason.</summary>
    [Fact]
    public void ZeroThreeAndZeroTwoWithATiedTableAreRefusedUnderAPipeline()
    {
        var config = PipelineRun.Config("gpt2-debug");
        var layout = new PipelineLayout(2, PipelineScheduleKind.OneForwardOneBackward, 2, Dp: 2);
        var messages = ParallelTraining.RunThreadRanks(layout.World, ctx =>
        {
            var (stage, groups) = PipelineRun.BuildRank(ctx, config, layout);
            var loader = new Tessera.Training.Data.TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T, groups.Coordinate.Dp, 2);
            string Refusal(ZeroStage zero)
            {
                var strategy = DataParallelism.Create(stage, groups.Dp, new DataParallelOptions { Stage = zero }, new AdamWOptions(), ctx.Host);
                return Assert.Throws<ArgumentException>(() => new Tessera.Training.Trainer(stage, strategy, loader, null, ParallelRun.Options(1, 2))).Message;
            }
            var noScope = Assert.Throws<ArgumentException>(() => new Tessera.Training.Trainer(stage, new AdamWOptimizer(stage.Parameters, new AdamWOptions()),
                new Tessera.Training.Data.TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null, ParallelRun.Options(1, 2))).Message;
            return (Two: Refusal(ZeroStage.Gradients), Three: Refusal(ZeroStage.Parameters), NoScope: noScope);
        }, TimeSpan.FromSeconds(30));
        Assert.All(messages, m =>
        {
            Assert.Contains("ZeRO-2 does not combine with a tied token embedding over pipeline stages", m.Two);
            Assert.Contains("ZeRO-3 does not combine with pipeline parallelism", m.Three);
            Assert.Contains("split over pp (2) ranks but its optimizer sums only this rank's gradients", m.NoScope);
        });
    }
}
