using System.Globalization;
using Tessera.Tests.Training.Parallel;
using Tessera.Training.Optim;
using Tessera.Training.Pipeline;
using Xunit;

namespace Tessera.Tests.Training.Pipeline;

/// <summary>
/// What each schedule keeps in flight, measured on the real model (GPT-2 debug at 8 blocks, pp 4, 8 micro-batches, one F64 step
/// on thread ranks): the executor's slots (micro-batches whose activations a rank holds at once) and the bytes of the activation
/// buffers those slots pool. 1F1B keeps at most p - s micro-batches on stage s (p = 4 on the first), GPipe all m = 8, so stage 0
/// under GPipe pools exactly twice the activation bytes of 1F1B (every slot holds the same buffers).
/// </summary>
public sealed class PipelineMemoryTests : IDisposable
{
    private const int Pp = 4, MicroBatches = 8;
    private readonly TemporaryRunFolder _run = new("tessera-pp-memory-");

    public void Dispose() => _run.Dispose();

    private PipelineRankRecord[] Run(PipelineScheduleKind kind, int chunks = 1) =>
        PipelineRun.Train(PipelineRun.Config("gpt2-debug"), _run.Shard, new PipelineLayout(Pp, kind, MicroBatches, chunks), steps: 1, new AdamWOptions());

    [Fact]
    public void OneForwardOneBackwardKeepsPMicroBatchesOnTheFirstStageWhereGPipeKeepsM()
    {
        var oneForwardOneBackward = Run(PipelineScheduleKind.OneForwardOneBackward).OrderBy(r => r.Coordinate.Pp).ToArray();
        var gpipe = Run(PipelineScheduleKind.GPipe).OrderBy(r => r.Coordinate.Pp).ToArray();
        var interleaved = Run(PipelineScheduleKind.Interleaved, chunks: 2).OrderBy(r => r.Coordinate.Pp).ToArray();
        var simulated = PipelineSimulator.Simulate(PipelineSchedule.Interleaved(Pp, 2, MicroBatches), PipelineCosts.Uniform(2 * Pp));
        for (int s = 0; s < Pp; s++)
        {
            TestContext.Current.TestOutputHelper?.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"stage {s}: 1F1B {oneForwardOneBackward[s].LastRun!.PeakSlots} micro-batches, {oneForwardOneBackward[s].ActivationBytes:N0} B; " +
                $"GPipe {gpipe[s].LastRun!.PeakSlots}, {gpipe[s].ActivationBytes:N0} B; interleaved v 2 {interleaved[s].LastRun!.PeakSlots}, {interleaved[s].ActivationBytes:N0} B"));
            Assert.Equal(Pp - s, oneForwardOneBackward[s].LastRun!.PeakSlots);
            Assert.True(oneForwardOneBackward[s].LastRun!.PeakMessageSlots <= Pp - s + 1);
            Assert.Equal(MicroBatches, gpipe[s].LastRun!.PeakSlots);
            // Interleaving holds more (its warmup is longer): at least what the schedule's forwards keep in flight.
            Assert.True(interleaved[s].LastRun!.PeakSlots >= simulated.PeakInFlight[s], $"stage {s}: {interleaved[s].LastRun!.PeakSlots} slots, the schedule keeps {simulated.PeakInFlight[s]}");
        }
        Assert.Equal(MicroBatches / Pp * oneForwardOneBackward[0].ActivationBytes, gpipe[0].ActivationBytes);
        Assert.True(oneForwardOneBackward[0].ActivationBytes > 0);
    }
}
