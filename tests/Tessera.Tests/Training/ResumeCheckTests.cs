using Tessera.Models;
using Tessera.Tensors;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Runs;
using Xunit;

namespace Tessera.Tests.Training;

/// <summary>What a resume would change, read from trainer_state.json before anything is loaded.</summary>
public sealed class ResumeCheckTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-rcheck-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static readonly TrainerOptions Saved = new() { BatchSize = 4, GradientAccumulationSteps = 2, SequenceLength = 32, Steps = 100, LearningRate = 1e-3, WarmupSteps = 10 };

    private string Checkpoint(int step)
    {
        var state = new TrainerState { Step = step, Model = ModelPresets.Get("gpt2-debug"), Options = Saved, DType = "F32" };
        File.WriteAllText(Path.Combine(_dir, "trainer_state.json"), System.Text.Json.JsonSerializer.Serialize(state));
        return _dir;
    }

    private static ResumeCheck Compare(string dir, TrainerOptions requested, int world = 1, DType dtype = DType.F32, string preset = "gpt2-debug") =>
        ResumeCheck.Compare(dir, requested, world, ModelPresets.Get(preset), dtype);

    [Fact]
    public void TheSameGlobalBatchSplitDifferentlyIsNoChange()
    {
        // 4 rows x 2 micro-batches on one rank = 8 rows = 2 ranks x 4 rows.
        var check = Compare(Checkpoint(50), Saved with { GradientAccumulationSteps = 1 }, world: 2);
        Assert.Empty(check.Changes);
        Assert.Empty(check.Blockers);
        Assert.Null(check.ScheduleReplan);
        check.ThrowIfRefused(allowChanges: false);
    }

    [Fact]
    public void ChangedTrajectorySettingsAreListedAndRefusedUnlessAllowed()
    {
        var check = Compare(Checkpoint(50), Saved with { BatchSize = 8, SequenceLength = 64, LearningRate = 2e-3 });
        Assert.Equal(["GlobalBatch", "SequenceLength", "LearningRate"], check.Changes.Select(c => c.Setting));
        var e = Assert.Throws<ResumeMismatchException>(() => check.ThrowIfRefused(allowChanges: false));
        Assert.Contains("GlobalBatch 8 rows (4 x 2 micro-batches) -> 16 rows (8 x 2 micro-batches)", e.Message);
        Assert.Contains("SequenceLength 32 -> 64", e.Message);
        check.ThrowIfRefused(allowChanges: true);
    }

    [Fact]
    public void AnotherModelOrDtypeOrNoStepsLeftCannotBeResumedEvenWhenChangesAreAllowed()
    {
        var dir = Checkpoint(100);
        Assert.Throws<ResumeMismatchException>(() => Compare(dir, Saved with { Steps = 200 }, preset: "llama-debug").ThrowIfRefused(allowChanges: true));
        Assert.Throws<ResumeMismatchException>(() => Compare(dir, Saved with { Steps = 200 }, dtype: DType.BF16).ThrowIfRefused(allowChanges: true));
        var e = Assert.Throws<ResumeMismatchException>(() => Compare(dir, Saved).ThrowIfRefused(allowChanges: true));
        Assert.Contains("the run is complete at step 100 of 100", e.Message);
    }

    [Fact]
    public void ANewTotalOfStepsReplansTheCosineFromTheSavedStep()
    {
        var check = Compare(Checkpoint(100), Saved with { Steps = 150 });
        Assert.Empty(check.Changes);
        // Saved plan at step 100: the floor, 0.1 x 1e-3. New plan (warmup 10, 140 decay steps): progress 90/140 of the cosine.
        double expected = 1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + Math.Cos(Math.PI * 90 / 140));
        Assert.Contains($"at step 100 the rate goes from 1.00e-4 (the saved plan) to {expected.ToString("0.00e+0", System.Globalization.CultureInfo.InvariantCulture)}", check.ScheduleReplan);
    }
}
