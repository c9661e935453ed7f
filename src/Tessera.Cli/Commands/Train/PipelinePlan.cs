using System.Globalization;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Training;
using Tessera.Training.Pipeline;

namespace Tessera.Cli.Commands.Train;

/// <summary>
/// The pipeline a <c>tessera train --pp</c> asks for, checked at the edge against the model and the batch (every bad
/// combination a usage error naming the options and the numbers), and drawn by <c>--print-schedule</c>.
/// </summary>
public static class PipelinePlan
{
    /// <summary>The partition of <paramref name="config"/>'s blocks and the schedule of a step of <paramref name="options"/>; throws <see cref="UsageException"/>.</summary>
    public static (PipelinePartition Partition, PipelineSchedule Schedule) Check(TrainSettings settings, TransformerConfig config, TrainerOptions options)
    {
        int pp = settings.Pp, chunks = settings.Chunks, m = options.GradientAccumulationSteps;
        string schedule = Name(settings.Schedule);
        if (chunks > 1 && settings.Schedule != PipelineScheduleKind.Interleaved)
            throw new UsageException($"--virtual-stages ({chunks}) needs --schedule interleaved; {schedule} runs one model chunk per stage");
        if (settings.Schedule == PipelineScheduleKind.Interleaved && chunks < 2)
            throw new UsageException("--schedule interleaved needs --virtual-stages of at least 2 (one chunk per stage is --schedule 1f1b)");
        if (pp > 1 && settings.Zero == 3)
            throw new UsageException("--zero 3 does not combine with --pp: it would gather and reduce-scatter every unit on every micro-batch of the schedule; the stages already split the parameters, so use --zero 1");
        if (pp > 1 && settings.Zero == 2 && config.TiedEmbeddings)
            throw new UsageException("--zero 2 does not combine with --pp for a model with tied embeddings (the first and last stages hold the table's reduced gradient only as differently laid-out shards); use --zero 1");
        PipelinePartition partition;
        try
        {
            partition = PipelinePartition.Even(config.Layers, pp, chunks);
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--pp {pp}{(chunks > 1 ? $" x --virtual-stages {chunks}" : "")}: {e.Message}");
        }
        try
        {
            return (partition, PipelineSchedule.Create(settings.Schedule, pp, chunks, m));
        }
        catch (ArgumentException e)
        {
            throw new UsageException($"--schedule {schedule} with --pp {pp}: {e.Message} (a step's micro-batches are --batch / --micro = " +
                $"{options.BatchSize * m} / {options.BatchSize} = {m})");
        }
    }

    /// <summary>Prints the timeline of <paramref name="schedule"/> with equal stages (forward 1, backward 2 time units) and what it keeps in flight; returns the exit code.</summary>
    public static int Print(Terminal terminal, PipelineSchedule schedule, PipelinePartition partition, TrainerOptions options)
    {
        var timeline = PipelineSimulator.Simulate(schedule, PipelineCosts.Uniform(schedule.VirtualStageCount));
        terminal.Line($"{schedule}: a step of {options.BatchSize * schedule.MicroBatches} rows as {schedule.MicroBatches} micro-batches of {options.BatchSize} x {options.SequenceLength}; {partition}");
        terminal.Line("one column per time unit (a forward 1, a backward 2, every virtual stage alike): F3 the forward of micro-batch 3, B3 its backward" +
            (schedule.Chunks == 2 ? ", lower case the stage's second model chunk" : schedule.Chunks > 2 ? ", .c the model chunk" : "") + ", '.' idle");
        terminal.Line();
        foreach (var row in timeline.Render().Split('\n', StringSplitOptions.RemoveEmptyEntries)) terminal.Line(row);
        terminal.Line();
        terminal.Line(string.Create(CultureInfo.InvariantCulture,
            $"idle {timeline.IdleFraction:P1} of the step (the bubble; (p-1)/(vm+p-1) = {PipelineSimulator.IdealIdleFraction(schedule):P1}); " +
            $"micro-batches in flight per stage at most: {string.Join(" ", timeline.PeakInFlight)}"));
        return ExitCodes.Success;
    }

    /// <summary>The command-line name of a schedule.</summary>
    public static string Name(PipelineScheduleKind kind) => kind switch
    {
        PipelineScheduleKind.GPipe => "gpipe",
        PipelineScheduleKind.Interleaved => "interleaved",
        _ => "1f1b",
    };
}
