using System.Globalization;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;

namespace Tessera.Bench.Training;

/// <summary>
/// The bubble of each pipeline schedule measured on CPU thread ranks: the executor runs the schedule with stages whose forward
/// waits F / v ms and backward 2F / v ms (a rank's work per micro-batch the same whatever v), and the share of the ranks' time
/// not spent in them is printed beside the simulator's prediction and the formula (p - 1) / (v m + p - 1). Each case runs once
/// to warm up and then <c>--runs</c> times; the least disturbed run (shortest step) is reported.
/// <para>Usage: pipeline-bubble [--forward-ms 12] [--runs 3] [--pp 2,4,8] [--micro-batches 4,8,16]</para>
/// </summary>
public static class PipelineBubbleBench
{
    /// <summary>Entry point; returns the process exit code.</summary>
    public static int Run(string[] args)
    {
        double forwardMs = 12;
        int runs = 3;
        int[] pps = [2, 4, 8], ms = [4, 8, 16];
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--forward-ms": forwardMs = double.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--pp": pps = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray(); break;
                case "--micro-batches": ms = args[++i].Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray(); break;
                default: throw new ArgumentException($"pipeline-bubble: unknown argument '{args[i]}'");
            }
        }
        Console.WriteLine($"| pp | schedule | micro-batches | step ms | idle measured | idle simulated | (p-1)/(vm+p-1) | peak micro-batches on stage 0 |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (int p in pps)
            foreach (int m in ms)
                foreach (var (kind, v) in new[] { (PipelineScheduleKind.GPipe, 1), (PipelineScheduleKind.OneForwardOneBackward, 1), (PipelineScheduleKind.Interleaved, 2) })
                {
                    if (kind == PipelineScheduleKind.Interleaved && m % p != 0) continue;
                    var schedule = PipelineSchedule.Create(kind, p, v, m);
                    var ranks = ParallelTraining.RunThreadRanks(p, ctx =>
                    {
                        var stage = new FixedCostStage(ctx.Backend, TimeSpan.FromMilliseconds(forwardMs / v), TimeSpan.FromMilliseconds(2 * forwardMs / v));
                        var executor = new PipelineExecutor(schedule, ctx.Group);
                        executor.Run(stage);
                        var measured = new List<PipelineRunStatistics>();
                        for (int run = 0; run < runs; run++)
                        {
                            ctx.Group.Barrier().Wait();
                            measured.Add(executor.Run(stage));
                        }
                        return measured;
                    }, TimeSpan.FromMinutes(2));
                    int best = Enumerable.Range(0, runs).MinBy(k => ranks.Max(r => r[k].WallMilliseconds));
                    double makespan = ranks.Max(r => r[best].WallMilliseconds);
                    double idle = 1 - ranks.Sum(r => r[best].ComputeMilliseconds) / (p * makespan);
                    var simulated = PipelineSimulator.Simulate(schedule, PipelineCosts.Uniform(p * v, forwardMs / v, 2 * forwardMs / v));
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"| {p} | {schedule.Name}{(v > 1 ? $" (v {v})" : "")} | {m} | {makespan:F0} | {idle:F3} | {simulated.IdleFraction:F3} | {PipelineSimulator.IdealIdleFraction(schedule):F3} | {ranks[0][best].PeakSlots} |"));
                }
        return 0;
    }
}
