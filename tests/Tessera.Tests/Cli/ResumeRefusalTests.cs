using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>A resume continues exactly the saved run, or says what would change; a run directory holds one run.</summary>
public sealed class ResumeRefusalTests : IClassFixture<ResumeRefusalTests.SavedRun>
{
    private readonly SavedRun _saved;

    public ResumeRefusalTests(SavedRun saved) => _saved = saved;

    /// <summary>One finished 4-step run, shared by the tests (each copies it before changing anything).</summary>
    public sealed class SavedRun : IDisposable
    {
        public SavedRun()
        {
            var (code, _, err) = CliProcess.Run(Folder.Args(Run, "--steps", "4", "--batch", "2", "--seq", "16", "--log-every", "1", "--lr", "1e-3"));
            if (code != 0) throw new InvalidOperationException(err);
        }

        public TrainRunFolder Folder { get; } = new();

        public string Run => Folder.Run("saved");

        public void Dispose() => Folder.Dispose();
    }

    [Theory]
    [InlineData("--batch (rows per update over all ranks) 2 rows -> 4 rows", "--batch", "4")]
    [InlineData("--seq 16 -> 32", "--seq", "32")]
    [InlineData("--lr 0.001 -> 0.002", "--lr", "2e-3")]
    [InlineData("--warmup 50 -> 10", "--warmup", "10")]
    public void ResumeWithAChangedSettingIsRefusedNamingItUnlessChangesAreAllowed(string change, string option, string value)
    {
        var (code, _, err) = CliProcess.Run(_saved.Folder.Args(_saved.Run, "--resume", "--steps", "5", option, value));
        Assert.Equal(2, code);
        Assert.Contains($"resuming would change {change}", err);
        Assert.Contains("--allow-changes", err);
        Assert.Equal("step_000004", File.ReadAllText(Path.Combine(_saved.Run, "checkpoints", "latest")).Trim());   // nothing ran

        var copy = CopyOfRun();
        (code, var stdout, err) = CliProcess.Run(_saved.Folder.Args(copy, "--resume", "--steps", "5", option, value, "--allow-changes"));
        Assert.True(code == 0, err);
        Assert.Contains($"--allow-changes: {change}", stdout);
        Assert.True(Directory.Exists(Path.Combine(copy, "checkpoints", "step_000005")));
    }

    [Fact]
    public void ExtendingTheStepsSaysHowTheScheduleIsReplanned()
    {
        var copy = CopyOfRun();
        var (code, stdout, err) = CliProcess.Run(_saved.Folder.Args(copy, "--resume", "--steps", "6"));
        Assert.True(code == 0, err);
        Assert.Contains("--steps 4 -> 6: the learning-rate schedule is re-planned from 4 to 6 steps in all", stdout);
        Assert.Contains("step     6/6", stdout);
        // The saved settings are the defaults of a resume: the batch and sequence of the saved run, not 16 x 128.
        Assert.Contains("training 2 steps (from step 4) of 2 x 16 tokens", stdout);
        // metrics.jsonl continues: steps 1-4 from the first run, 5-6 from the resume.
        Assert.Equal([1, 2, 3, 4, 5, 6], File.ReadAllLines(Path.Combine(copy, "metrics.jsonl"))
            .Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement.GetProperty("step").GetInt32()));
    }

    [Fact]
    public void ResumingAFinishedRunWithoutMoreStepsSaysTheStepsAreATotal()
    {
        var (code, _, err) = CliProcess.Run(_saved.Folder.Args(_saved.Run, "--resume"));
        Assert.Equal(2, code);
        Assert.Contains("the run is complete at step 4 of 4", err);
        Assert.Contains("give more than 4", err);
    }

    [Fact]
    public void TrainingIntoADirectoryThatHoldsARunWithoutResumeIsRefusedAndChangesNothing()
    {
        var metrics = File.ReadAllBytes(Path.Combine(_saved.Run, "metrics.jsonl"));
        var (code, _, err) = CliProcess.Run(_saved.Folder.Args(_saved.Run, "--steps", "4", "--batch", "2", "--seq", "16"));
        Assert.Equal(2, code);
        Assert.Contains("already holds a run", err);
        Assert.Contains("--resume", err);
        Assert.Equal(metrics, File.ReadAllBytes(Path.Combine(_saved.Run, "metrics.jsonl")));
    }

    [Fact]
    public void ResumeWithoutACheckpointIsAUsageError()
    {
        var (code, _, err) = CliProcess.Run(_saved.Folder.Args(_saved.Folder.Run("empty"), "--resume"));
        Assert.Equal(2, code);
        Assert.Contains("no checkpoint to resume", err);
    }

    [Fact]
    public void LeftoverTemporaryDirectoriesAreRemovedAtStartAndOnlyTheLastCheckpointsAreKept()
    {
        var copy = CopyOfRun();
        var leftover = Directory.CreateDirectory(Path.Combine(copy, "checkpoints", ".step_000005.tmp-0123456789abcdef")).FullName;
        File.WriteAllText(Path.Combine(leftover, "model.safetensors"), "half written");
        var (code, _, err) = CliProcess.Run(_saved.Folder.Args(copy, "--resume", "--steps", "8", "--checkpoint-every", "1", "--keep-last", "2"));
        Assert.True(code == 0, err);
        Assert.False(Directory.Exists(leftover));
        Assert.Contains($"removed {leftover}", err);
        Assert.Equal(["step_000007", "step_000008"], Directory.GetDirectories(Path.Combine(copy, "checkpoints")).Select(Path.GetFileName).Order());
    }

    private string CopyOfRun()
    {
        var copy = _saved.Folder.Run("copy-" + Guid.NewGuid().ToString("N")[..8]);
        foreach (var file in Directory.GetFiles(_saved.Run, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(copy, Path.GetRelativePath(_saved.Run, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
        return copy;
    }
}
