using System.Globalization;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;
using Xunit;

namespace Tessera.Tests.Training.Pipeline;

/// <summary>Timing tests run alone: other tests' threads would delay the ranks' wake-ups and show up as idle time.</summary>
[CollectionDefinition("timing", DisableParallelization = true)]
public sealed class TimingCollection;

/// <summary>
/// The bubble measured: each schedule run by the executor on CPU thread ranks whose forward waits 12 / v ms and backward
/// 24 / v ms (a rank's work per micro-batch the same whatever v), the share of the ranks' time not spent computing against
/// (p - 1) / (m + p - 1) for GPipe and 1F1B and (p - 1) / (v m + p - 1) for interleaved 1F1B. Tolerance 0.05 absolute: the
/// messages, the thread wake-ups and the sleeps' overshoot (about 0.1 ms each) add idle time the formula leaves out, a few
/// percent here (the least disturbed of three runs after a warm-up), while the schedules' bubbles differ from each other by 0.09 to 0.12, so a schedule that filled the pipeline
/// the wrong way would fail.
/// </summary>
[Collection("timing")]
public sealed class PipelineBubbleTests
{
    private const int Runs = 3;

    [Theory]
    [InlineData(PipelineScheduleKind.GPipe, 4, 1, 8)]
    [InlineData(PipelineScheduleKind.OneForwardOneBackward, 4, 1, 8)]
    [InlineData(PipelineScheduleKind.Interleaved, 4, 2, 8)]
    [InlineData(PipelineScheduleKind.OneForwardOneBackward, 2, 1, 4)]
    [InlineData(PipelineScheduleKind.Interleaved, 2, 2, 4)]
    public void MeasuredIdleFractionFollowsTheBubbleFormula(PipelineScheduleKind kind, int p, int v, int m)
    {
        var schedule = PipelineSchedule.Create(kind, p, v, m);
        var runs = ParallelTraining.RunThreadRanks(p, ctx =>
        {
            var stage = new FixedCostStage(ctx.Backend, TimeSpan.FromMilliseconds(12.0 / v), TimeSpan.FromMilliseconds(24.0 / v));
            var executor = new PipelineExecutor(schedule, ctx.Group);
            executor.Run(stage);                      // warm-up: compiles the code paths, allocates the buffers
            var measured = new List<PipelineRunStatistics>();
            for (int run = 0; run < Runs; run++)
            {
                ctx.Group.Barrier().Wait();
                measured.Add(executor.Run(stage));
            }
            return measured;
        }, TimeSpan.FromSeconds(30));
        // The run with the shortest step: the one least disturbed by other processes on the machine.
        int best = Enumerable.Range(0, Runs).MinBy(k => runs.Max(r => r[k].WallMilliseconds));
        double makespan = runs.Max(r => r[best].WallMilliseconds);
        double idle = 1 - runs.Sum(r => r[best].ComputeMilliseconds) / (p * makespan);
        double formula = PipelineSimulator.IdealIdleFraction(schedule);
        TestContext.Current.TestOutputHelper?.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{schedule}: step {makespan:F1} ms, measured idle {idle:F3}, formula {formula:F3}"));
        Assert.True(Math.Abs(idle - formula) <= 0.05, string.Create(CultureInfo.InvariantCulture, $"{schedule}: measured idle fraction {idle:F3}, formula (p-1)/(vm+p-1) = {formula:F3}"));
    }
}
