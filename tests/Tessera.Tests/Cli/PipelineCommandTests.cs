using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>
/// <c>tessera train --pp</c>: the schedule's timeline printed without touching anything, bad pipeline requests refused as
/// usage errors naming the options and the numbers, and a short pipeline run that saves a checkpoint another pipeline layout
/// resumes.
/// </summary>
public sealed class PipelineCommandTests : IDisposable
{
    private readonly TrainRunFolder _folder = new();

    public void Dispose() => _folder.Dispose();

    [Fact]
    public void PrintScheduleDrawsTheOneForwardOneBackwardTimelineAndExitsWithoutARun()
    {
        var run = _folder.Run("print");
        var (code, output, err) = CliProcess.Run(_folder.Args(run, "--pp", "4", "--schedule", "1f1b", "--batch", "16", "--micro", "2", "--print-schedule"));
        Assert.True(code == 0, err);
        Assert.Contains("1F1B, pp 4, 8 micro-batches", output);
        Assert.Contains("stage 0 | F0  F1  F2  F3  .   .   .   .   .   .   B0  B0  F4  B1  B1", output);
        Assert.Contains("stage 3 | .   .   .   F0  B0  B0  F1", output);
        Assert.Contains("idle 27.3 % of the step", output);
        Assert.Contains("micro-batches in flight per stage at most: 4 3 2 1", output);
        Assert.False(Directory.Exists(run), "printing the schedule must not create the run directory");
    }

    [Theory]
    [InlineData("pp (8) stages need at least one block each, but the model has 4 blocks (Layers)", "--pp", "8", "--print-schedule")]
    [InlineData("must be a multiple of pp (2)", "--pp", "2", "--schedule", "interleaved", "--batch", "12", "--micro", "4")]
    [InlineData("--micro (3) must divide --batch (16)", "--pp", "2", "--batch", "16", "--micro", "3")]
    [InlineData("--virtual-stages (2) needs --schedule interleaved", "--pp", "2", "--virtual-stages", "2")]
    [InlineData("--zero 3 does not combine with --pp", "--pp", "2", "--ranks", "2", "--zero", "3")]
    public void BadPipelineRequestsAreUsageErrorsNamingTheNumbers(string message, params string[] args)
    {
        var run = _folder.Run("bad");
        // gpt2-tiny has 4 blocks: 8 stages cannot each have one.
        var (code, _, err) = CliProcess.Run(_folder.Args(run, args));
        Assert.Equal(2, code);
        Assert.Contains(message, err);
        Assert.False(Directory.Exists(Path.Combine(run, "checkpoints")));
    }

    [Fact]
    public void APipelineRunSavesACheckpointThatAnotherPipelineLayoutResumes()
    {
        var run = _folder.Run("pp");
        var (code, output, err) = CliProcess.Run(_folder.Args(run, "--pp", "2", "--steps", "3", "--batch", "4", "--seq", "16", "--log-every", "1", "--checkpoint-every", "3"));
        Assert.True(code == 0, err);
        Assert.Contains("thread ranks: 2 ranks as dp 1 x pp 2, 1f1b schedule over 4 micro-batches", output);
        Assert.Contains("pipeline: pp 2: blocks 0-1 | 2-3", output);
        Assert.Contains("step_000003", File.ReadAllText(Path.Combine(run, "checkpoints", "latest")));
        // The same run continued as 4 stages under GPipe (and recomputation): the checkpoint reshards across the pipeline axis.
        (code, output, err) = CliProcess.Run(_folder.Args(run, "--resume", "--steps", "4", "--pp", "4", "--schedule", "gpipe", "--batch", "4", "--seq", "16", "--log-every", "1"));
        Assert.True(code == 0, err);
        Assert.Contains("4 ranks as dp 1 x pp 4, gpipe schedule over 4 micro-batches, recomputing activations", output);
        Assert.Contains("step     4/4", output);
        Assert.Contains("step_000004", File.ReadAllText(Path.Combine(run, "checkpoints", "latest")));
    }
}
