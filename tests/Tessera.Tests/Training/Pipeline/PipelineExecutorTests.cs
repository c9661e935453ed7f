using System.Diagnostics;
using Tessera.Distributed;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;
using Xunit;

namespace Tessera.Tests.Training.Pipeline;

/// <summary>
/// The executor on CPU thread ranks with stand-in stages: every message reaches the compute it was meant for, in every
/// generated schedule; a stage that never sends makes its neighbour time out with a message naming the stage, the micro-batch
/// and the operation.
/// </summary>
public sealed class PipelineExecutorTests
{
    /// <summary>
    /// A stage whose forward writes its (virtual stage, micro-batch) into the activation it sends and checks that the one it
    /// received came from (virtual stage - 1, same micro-batch); its backward does the same with gradients, in place. One
    /// element per message.
    /// </summary>
    private sealed class RoutingStage(IBackend backend, int stages, int lastStage) : IPipelineStage
    {
        private readonly Dictionary<(int, bool), Tensor> _buffers = [];
        private readonly Dictionary<int, Tensor> _outputs = [];
        public List<string> Errors { get; } = [];
        public int Stage { get; init; }

        public IBackend Backend => backend;

        public Tensor MessageBuffer(int slot, bool gradient)
        {
            if (!_buffers.TryGetValue((slot, gradient), out var t)) _buffers[(slot, gradient)] = t = backend.Zeros(new Shape(1), DType.F64);
            return t;
        }

        private static double Tag(int virtualStage, int microBatch, bool gradient) => (gradient ? -1 : 1) * (1000 * (virtualStage + 1) + microBatch);

        public Tensor? Forward(int chunk, int microBatch, int slot, Tensor? input)
        {
            int vs = chunk * stages + Stage;
            if (input is not null && backend.ReadScalar(input) != Tag(vs - 1, microBatch, false))
                Errors.Add($"forward of micro-batch {microBatch} on virtual stage {vs} received {backend.ReadScalar(input)}");
            if (vs == lastStage) return null;
            if (!_outputs.TryGetValue(slot, out var output)) _outputs[slot] = output = backend.Zeros(new Shape(1), DType.F64);
            backend.Fill(output, Tag(vs, microBatch, false));
            return output;
        }

        public void Backward(int chunk, int microBatch, int slot, Tensor gradient, bool lastOfChunk)
        {
            int vs = chunk * stages + Stage;
            if (vs < lastStage && backend.ReadScalar(gradient) != Tag(vs + 1, microBatch, true))
                Errors.Add($"backward of micro-batch {microBatch} on virtual stage {vs} received {backend.ReadScalar(gradient)}");
            backend.Fill(gradient, Tag(vs, microBatch, true));
        }

        public void Release(int slot) { }
    }

    [Theory]
    [InlineData(PipelineScheduleKind.GPipe, 4, 1, 8)]
    [InlineData(PipelineScheduleKind.OneForwardOneBackward, 4, 1, 8)]
    [InlineData(PipelineScheduleKind.OneForwardOneBackward, 3, 1, 2)]
    [InlineData(PipelineScheduleKind.Interleaved, 4, 2, 8)]
    [InlineData(PipelineScheduleKind.Interleaved, 2, 3, 6)]
    [InlineData(PipelineScheduleKind.Interleaved, 4, 2, 4)]
    public void EveryMessageReachesTheComputeItWasMeantFor(PipelineScheduleKind kind, int p, int v, int m)
    {
        var schedule = PipelineSchedule.Create(kind, p, v, m);
        var errors = ParallelTraining.RunThreadRanks(p, ctx =>
        {
            var stage = new RoutingStage(ctx.Backend, p, p * v - 1) { Stage = ctx.Rank };
            var executor = new PipelineExecutor(schedule, ctx.Group);
            for (int step = 0; step < 2; step++) executor.Run(stage);   // twice: slots and buffers are reused
            var forward = new PipelineExecutor(PipelineSchedule.ForwardOnly(p, v, m), ctx.Group);
            forward.Run(stage);
            return stage.Errors;
        }, TimeSpan.FromSeconds(30));
        Assert.All(errors, e => Assert.Empty(e));
    }

    [Fact]
    public void AStageThatNeverSendsMakesItsNeighbourTimeOutNamingStageMicroBatchAndOperation()
    {
        // 1F1B over 2 stages and 2 micro-batches, but stage 0 never sends micro-batch 1's activation (its list lacks the send;
        // the schedule is not validated, as a stage stuck in its compute would look from outside).
        var schedule = PipelineSchedule.OneForwardOneBackward(2, 2);
        var broken = new PipelineSchedule("stuck stage 0", 2, 1, 2, true,
            [schedule.ActionsOf(0).Where(a => a != new PipelineAction(PipelineActionKind.SendActivation, 0, 1)).ToList(), schedule.ActionsOf(1)]);
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<AggregateException>(() => ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var stage = new RoutingStage(ctx.Backend, 2, 1) { Stage = ctx.Rank };
            new PipelineExecutor(broken, ctx.Group, validate: false).Run(stage);
            return 0;
        }, TimeSpan.FromMilliseconds(500)));
        var stall = e.Flatten().InnerExceptions.OfType<PipelineStallException>().FirstOrDefault(x => x.Message.StartsWith("pipeline stage 1", StringComparison.Ordinal));
        Assert.NotNull(stall);
        Assert.Contains("pipeline stage 1 of 2", stall!.Message);
        Assert.Contains("receiving the activation of micro-batch 1 for virtual stage 1", stall.Message);
        Assert.Contains("for stage 0", stall.Message);
        Assert.IsType<CollectiveTimeoutException>(stall.InnerException);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"the stall took {clock.Elapsed} to surface");
    }
}
