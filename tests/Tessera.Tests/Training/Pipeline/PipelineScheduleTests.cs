using Tessera.Training.Pipeline;
using Xunit;

namespace Tessera.Tests.Training.Pipeline;

/// <summary>
/// The schedules as data: every generated schedule passes the simulator (each action once and in order, each send paired with
/// its receive, no deadlock under NCCL's in-order point-to-point semantics), its simulated idle time with equal stages is the
/// formula it is known for, and the simulator rejects schedules that would mix up micro-batches or deadlock, naming the rank,
/// the action and the micro-batch.
/// </summary>
public sealed class PipelineScheduleTests
{
    public static TheoryData<PipelineScheduleKind, int, int, int> Generated()
    {
        var data = new TheoryData<PipelineScheduleKind, int, int, int>();
        foreach (int p in new[] { 1, 2, 3, 4, 8 })
            foreach (int m in new[] { 1, 2, p, 2 * p, 8, 3 * p + 1 }.Distinct())
            {
                data.Add(PipelineScheduleKind.GPipe, p, 1, m);
                data.Add(PipelineScheduleKind.OneForwardOneBackward, p, 1, m);
                if (p >= 2 && m % p == 0)
                    foreach (int v in new[] { 2, 3 }) data.Add(PipelineScheduleKind.Interleaved, p, v, m);
            }
        return data;
    }

    /// <summary>
    /// With every virtual stage's forward costing 1/v and backward 2/v (a rank's work per micro-batch the same whatever v) and free
    /// messages, the simulated share of idle time is exactly (p - 1) / (v m + p - 1): GPipe's and 1F1B's (p - 1) / (m + p - 1),
    /// the interleaved schedule's bubble shrunk v times. Exact up to the rounding of the sums (1e-12).
    /// </summary>
    [Theory]
    [MemberData(nameof(Generated))]
    public void GeneratedSchedulesPassTheSimulatorWithTheirKnownBubble(PipelineScheduleKind kind, int p, int v, int m)
    {
        var schedule = PipelineSchedule.Create(kind, p, v, m);
        var timeline = PipelineSimulator.Simulate(schedule, PipelineCosts.Uniform(p * v, 1.0 / v, 2.0 / v));
        double expected = (p - 1) / (double)(v * m + p - 1);
        Assert.True(Math.Abs(timeline.IdleFraction - expected) < 1e-12, $"{schedule}: idle {timeline.IdleFraction:R}, expected (p-1)/(vm+p-1) = {expected:R}");
        Assert.Equal(expected, PipelineSimulator.IdealIdleFraction(schedule), 12);
        for (int r = 0; r < p; r++)
        {
            var computes = schedule.ActionsOf(r).Where(a => a.IsCompute).ToList();
            Assert.Equal(2 * m * v, computes.Count);
            Assert.Equal(PipelineAction.OptimizerStep, schedule.ActionsOf(r)[^1]);
        }
    }

    [Theory]
    [InlineData(4, 8)]
    [InlineData(4, 3)]
    [InlineData(2, 8)]
    public void OneForwardOneBackwardHoldsAtMostPMinusSMicroBatchesWhereGPipeHoldsAll(int p, int m)
    {
        var oneForwardOneBackward = PipelineSimulator.Simulate(PipelineSchedule.OneForwardOneBackward(p, m), PipelineCosts.Uniform(p));
        var gpipe = PipelineSimulator.Simulate(PipelineSchedule.GPipe(p, m), PipelineCosts.Uniform(p));
        for (int s = 0; s < p; s++)
        {
            Assert.Equal(Math.Min(p - s, m), oneForwardOneBackward.PeakInFlight[s]);
            Assert.Equal(m, gpipe.PeakInFlight[s]);
        }
    }

    [Fact]
    public void TheTimelineOfOneForwardOneBackwardDrawsWarmupSteadyStateAndCooldown()
    {
        var timeline = PipelineSimulator.Simulate(PipelineSchedule.OneForwardOneBackward(4, 8), PipelineCosts.Uniform(4));
        var rows = timeline.Render().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4, rows.Length);
        Assert.Equal("stage 0 | F0  F1  F2  F3  .   .   .   .   .   .   B0  B0  F4  B1  B1  F5  B2  B2  F6  B3  B3  F7  B4  B4  .   B5  B5  .   B6  B6  .   B7  B7", rows[0]);
        Assert.Equal("stage 3 | .   .   .   F0  B0  B0  F1  B1  B1  F2  B2  B2  F3  B3  B3  F4  B4  B4  F5  B5  B5  F6  B6  B6  F7  B7  B7  .   .   .   .   .   .", rows[3]);
        Assert.Equal(33, timeline.Makespan);
    }

    [Fact]
    public void AnInterleavedScheduleWithJustInTimeReceivesDeadlocksUnderNcclAndTheSimulatorSaysWhere()
    {
        // The interleaved compute order with each receive placed right before its compute and each send right after its
        // compute (the placement that is safe for 1F1B): the ring of ranks then waits on itself, which is why Megatron's
        // interleaved schedule exchanges in lock step. The simulator must find the cycle, naming ranks and actions.
        const int p = 2, v = 2, m = 8;
        var lockstep = PipelineSchedule.Interleaved(p, v, m);
        var lists = Enumerable.Range(0, p).Select(r =>
        {
            var list = new List<PipelineAction>();
            foreach (var c in lockstep.ActionsOf(r).Where(a => a.IsCompute))
            {
                bool forward = c.Kind == PipelineActionKind.Forward;
                if (forward && c.VirtualStage > 0) list.Add(new(PipelineActionKind.ReceiveActivation, c.VirtualStage, c.MicroBatch));
                if (!forward && c.VirtualStage < p * v - 1) list.Add(new(PipelineActionKind.ReceiveGradient, c.VirtualStage, c.MicroBatch));
                list.Add(c);
                if (forward && c.VirtualStage < p * v - 1) list.Add(new(PipelineActionKind.SendActivation, c.VirtualStage, c.MicroBatch));
                if (!forward && c.VirtualStage > 0) list.Add(new(PipelineActionKind.SendGradient, c.VirtualStage, c.MicroBatch));
            }
            list.Add(PipelineAction.OptimizerStep);
            return (IReadOnlyList<PipelineAction>)list;
        }).ToList();
        var justInTime = new PipelineSchedule("interleaved, receives just in time", p, v, m, training: true, lists);
        var e = Assert.Throws<PipelineScheduleException>(() => PipelineSimulator.Validate(justInTime));
        Assert.Contains("deadlocks", e.Message);
        Assert.Contains("rank 0", e.Message);
        Assert.Contains("rank 1", e.Message);
        Assert.Matches("micro-batch [0-9]+", e.Message);
        PipelineSimulator.Validate(lockstep);   // the same computes, exchanged in lock step, run
    }

    [Fact]
    public void SendsThatWouldPairWithTheWrongReceiveAreRefusedNamingBothMicroBatches()
    {
        // Rank 0 of 1F1B (pp 2, m 2) sends micro-batch 1's activation before micro-batch 0's: messages pair in issue order, so
        // rank 1's receive of micro-batch 0 would get micro-batch 1's tensor.
        var good = PipelineSchedule.OneForwardOneBackward(2, 2);
        var rank0 = good.ActionsOf(0).ToList();
        // rank 0: F0 SA0 F1 SA1 RG0 B0 RG1 B1 STEP -> F0 F1 SA1 SA0 ...
        var swapped = new List<PipelineAction>
        {
            PipelineAction.Forward(0, 0), PipelineAction.Forward(0, 1),
            new(PipelineActionKind.SendActivation, 0, 1), new(PipelineActionKind.SendActivation, 0, 0),
        };
        swapped.AddRange(rank0.SkipWhile(a => a.Kind != PipelineActionKind.ReceiveGradient));
        var bad = new PipelineSchedule("swapped sends", 2, 1, 2, training: true, [swapped, good.ActionsOf(1)]);
        var e = Assert.Throws<PipelineScheduleException>(() => PipelineSimulator.Validate(bad));
        Assert.Contains("pair in issue order", e.Message);
        Assert.Contains("sending virtual stage 0's activation of micro-batch 1", e.Message);
        Assert.Contains("receiving the activation of micro-batch 0 for virtual stage 1", e.Message);
    }

    [Fact]
    public void AMissingReceiveOrComputeIsNamed()
    {
        var good = PipelineSchedule.GPipe(2, 2);
        var noReceive = good.ActionsOf(1).Where(a => a != new PipelineAction(PipelineActionKind.ReceiveActivation, 1, 1)).ToList();
        var e = Assert.Throws<PipelineScheduleException>(() =>
            PipelineSimulator.Validate(new PipelineSchedule("no receive", 2, 1, 2, true, [good.ActionsOf(0), noReceive])));
        Assert.Contains("rank 1", e.Message);
        Assert.Contains("the forward of micro-batch 1 on virtual stage 1 comes before receiving its input activation", e.Message);

        var noBackward = good.ActionsOf(0).Where(a => a != PipelineAction.Backward(0, 1)).ToList();
        e = Assert.Throws<PipelineScheduleException>(() =>
            PipelineSimulator.Validate(new PipelineSchedule("no backward", 2, 1, 2, true, [noBackward, good.ActionsOf(1)])));
        Assert.Contains("rank 0", e.Message);
        Assert.Contains("the backward of micro-batch 1 on virtual stage 0 is missing", e.Message);

        var unsent = good.ActionsOf(0).Where(a => a != new PipelineAction(PipelineActionKind.SendActivation, 0, 1)).ToList();
        e = Assert.Throws<PipelineScheduleException>(() =>
            PipelineSimulator.Validate(new PipelineSchedule("unsent", 2, 1, 2, true, [unsent, good.ActionsOf(1)])));
        Assert.Contains("sending virtual stage 0's activation of micro-batch 1 is missing", e.Message);

        var stepFirst = good.ActionsOf(0).Prepend(PipelineAction.OptimizerStep).SkipLast(1).ToList();
        e = Assert.Throws<PipelineScheduleException>(() =>
            PipelineSimulator.Validate(new PipelineSchedule("step first", 2, 1, 2, true, [stepFirst, good.ActionsOf(1)])));
        Assert.Contains("the optimizer step must be the rank's last action", e.Message);

        var foreign = good.ActionsOf(0).Prepend(PipelineAction.Forward(1, 0)).ToList();
        e = Assert.Throws<PipelineScheduleException>(() =>
            PipelineSimulator.Validate(new PipelineSchedule("foreign", 2, 1, 2, true, [foreign, good.ActionsOf(1)])));
        Assert.Contains("virtual stage 1 is not on this rank", e.Message);
    }

    [Fact]
    public void BadScheduleShapesAreRefusedNamingTheNumbers()
    {
        var e = Assert.Throws<ArgumentException>(() => PipelineSchedule.Interleaved(4, 2, 6));
        Assert.Contains("micro-batches per step (6) must be a multiple of pp (4)", e.Message);
        e = Assert.Throws<ArgumentException>(() => PipelineSchedule.Interleaved(1, 2, 4));
        Assert.Contains("pp (1) must be at least 2", e.Message);
        e = Assert.Throws<ArgumentException>(() => PipelineSchedule.GPipe(4, 8, chunks: 2));
        Assert.Contains("virtual stages 2", e.Message);
        e = Assert.Throws<ArgumentException>(() => PipelineSchedule.OneForwardOneBackward(4, 0));
        Assert.Contains("micro-batches per step (0)", e.Message);
    }

    [Fact]
    public void ForwardOnlySchedulesPassTheSimulator()
    {
        foreach (var (p, v, m) in new[] { (1, 1, 3), (2, 1, 4), (4, 2, 5), (3, 3, 2) })
        {
            var schedule = PipelineSchedule.ForwardOnly(p, v, m);
            var timeline = PipelineSimulator.Simulate(schedule, PipelineCosts.Uniform(p * v));
            Assert.Equal(m * v, timeline.Compute[0].Count);
            Assert.False(schedule.IsTraining);
        }
    }
}
