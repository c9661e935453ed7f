using System.Globalization;
using System.Text;

namespace Tessera.Training.Pipeline;

/// <summary>
/// When each compute action of a schedule runs under given costs (<see cref="PipelineSimulator.Simulate"/>): per rank the
/// (action, start, end) of its forwards and backwards, the step's makespan, the idle (bubble) fraction and the most
/// micro-batches each rank holds at once.
/// </summary>
public sealed class PipelineTimeline
{
    internal PipelineTimeline(PipelineSchedule schedule, IReadOnlyList<IReadOnlyList<(PipelineAction Action, double Start, double End)>> compute, int[] peakInFlight)
    {
        Schedule = schedule;
        Compute = compute;
        PeakInFlight = peakInFlight;
        Makespan = compute.SelectMany(c => c).Select(c => c.End).DefaultIfEmpty(0).Max();
        Busy = compute.Select(c => c.Sum(x => x.End - x.Start)).ToArray();
    }

    /// <summary>The schedule simulated.</summary>
    public PipelineSchedule Schedule { get; }

    /// <summary>Per rank, its compute actions with their start and end times.</summary>
    public IReadOnlyList<IReadOnlyList<(PipelineAction Action, double Start, double End)>> Compute { get; }

    /// <summary>When the last compute of any rank ends (every rank starts at 0).</summary>
    public double Makespan { get; }

    /// <summary>Per rank, the time it computes.</summary>
    public IReadOnlyList<double> Busy { get; }

    /// <summary>The share of the ranks' time spent idle: 1 - (sum of busy times) / (p x makespan). Megatron's bubble fraction of the step.</summary>
    public double IdleFraction => Makespan == 0 ? 0 : 1 - Busy.Sum() / (Schedule.Stages * Makespan);

    /// <summary>Per rank, the most (virtual stage, micro-batch) pairs whose forward has started and whose backward has not ended: activations held at once.</summary>
    public IReadOnlyList<int> PeakInFlight { get; }

    /// <summary>
    /// The timeline as text, one row per rank and one cell of four characters per <paramref name="unit"/> of time (costs must be
    /// multiples of it): "F3" a forward of micro-batch 3, "B3" each unit of its backward, lower case for odd model chunks, the
    /// chunk number after a dot with more than two, "." idle.
    /// </summary>
    public string Render(double unit = 1)
    {
        if (!(unit > 0)) throw new ArgumentOutOfRangeException(nameof(unit), $"pipeline timeline: unit {unit} must be positive");
        int cells = (int)Math.Round(Makespan / unit);
        var text = new StringBuilder();
        for (int r = 0; r < Schedule.Stages; r++)
        {
            var row = Enumerable.Repeat(".   ", cells).ToArray();
            foreach (var (action, start, end) in Compute[r])
            {
                int chunk = action.VirtualStage / Schedule.Stages;
                char letter = action.Kind == PipelineActionKind.Forward ? 'F' : 'B';
                if (Schedule.Chunks == 2 && chunk == 1) letter = char.ToLowerInvariant(letter);
                string label = Schedule.Chunks > 2
                    ? string.Create(CultureInfo.InvariantCulture, $"{letter}{action.MicroBatch}.{chunk}")
                    : string.Create(CultureInfo.InvariantCulture, $"{letter}{action.MicroBatch}");
                for (int c = (int)Math.Round(start / unit); c < (int)Math.Round(end / unit) && c < cells; c++) row[c] = label.PadRight(4);
            }
            text.Append(CultureInfo.InvariantCulture, $"stage {r,-2}| ").AppendLine(string.Concat(row).TrimEnd());
        }
        return text.ToString();
    }
}
