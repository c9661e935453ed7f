using Xunit;

namespace Tessera.Tests.Cli;

/// <summary>Ctrl-C and SIGTERM during tessera train: the step in progress finishes, a checkpoint is saved, the exit code says which signal.</summary>
public sealed class TrainSignalTests : IDisposable
{
    private readonly TrainRunFolder _folder = new();

    public void Dispose() => _folder.Dispose();

    // 200 steps of 4 x 32 tokens take about four seconds on one thread: a signal sent when step 3 is printed arrives mid-run
    // even when a loaded machine delays the test's reading of that line by seconds (at 50 steps a loaded run once ended first).
    private string[] Args(string run, params string[] extra) =>
        _folder.Args(run, ["--steps", "200", "--batch", "4", "--seq", "32", "--log-every", "1", "--checkpoint-every", "0", .. extra]);

    [Fact]
    public void CtrlCSavesTheStepReachedExits130AndTheResumedRunEqualsAnUninterruptedOne()
    {
        var straight = _folder.Run("straight");
        var (code, _, err) = CliProcess.Run(Args(straight));
        Assert.True(code == 0, err);

        var stopped = _folder.Run("stopped");
        int at;
        using (var run = CliProcess.Start(Args(stopped)))
        {
            run.WaitForLine(l => l.StartsWith("step     3/200", StringComparison.Ordinal));
            run.Signal(2);
            Assert.Equal(130, run.WaitForExit());
            var line = run.WaitForLine(l => l.StartsWith("stopped by SIGINT after step ", StringComparison.Ordinal));
            at = int.Parse(line["stopped by SIGINT after step ".Length..].Split(' ')[0]);
            Assert.InRange(at, 3, 199);
            Assert.Contains($"resume with: tessera train --out {stopped} --resume", run.Stdout);
            Assert.Contains("finishing the step in progress", run.Stderr);
        }
        var checkpoint = Path.Combine(stopped, "checkpoints", $"step_{at:D6}");
        Assert.True(File.Exists(Path.Combine(checkpoint, "manifest.json")), $"no checkpoint at the step reached ({at})");
        Assert.Equal($"step_{at:D6}", File.ReadAllText(Path.Combine(stopped, "checkpoints", "latest")).Trim());

        // The run directory alone resumes it: the data's location comes from its run.json, the settings from the checkpoint.
        (code, var stdout, err) = CliProcess.Run(["train", "--out", stopped, "--resume", "--threads", "1", "--sample-tokens", "0"]);
        Assert.True(code == 0, err);
        Assert.Contains($"resuming {checkpoint} at step {at} of 200", stdout);
        // Bit for bit: the weights and the AdamW moments of the interrupted-and-resumed run are those of the straight one.
        foreach (var file in new[] { "model.safetensors", "optimizer.safetensors" })
            Assert.True(File.ReadAllBytes(Path.Combine(straight, "checkpoints", "step_000200", file))
                .AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(stopped, "checkpoints", "step_000200", file))), $"{file} differs after the resume");
    }

    [Fact]
    public void SigtermSavesACheckpointAndExits143()
    {
        var run = _folder.Run("term");
        using var process = CliProcess.Start(Args(run));
        process.WaitForLine(l => l.StartsWith("step     2/200", StringComparison.Ordinal));
        process.Signal(15);
        Assert.Equal(143, process.WaitForExit());
        Assert.Contains("stopped by SIGTERM after step", process.Stdout);
        var latest = File.ReadAllText(Path.Combine(run, "checkpoints", "latest")).Trim();
        Assert.True(File.Exists(Path.Combine(run, "checkpoints", latest, "manifest.json")));
        Assert.True(File.Exists(Path.Combine(run, "metrics.png")), "the plot is written on a stop too");
    }

    [Fact]
    public void ASecondCtrlCExitsAtOnceWithoutWaitingForTheStep()
    {
        // Steps of 8 x 128 tokens take a few hundred milliseconds: the second signal, 50 ms after the first, lands while the
        // step that the first one waits for is still running.
        var run = _folder.Run("twice");
        using var process = CliProcess.Start(_folder.Args(run, "--steps", "50", "--batch", "8", "--seq", "128", "--log-every", "1", "--checkpoint-every", "0"));
        process.WaitForLine(l => l.StartsWith("step     1/50", StringComparison.Ordinal));
        process.Signal(2);
        Thread.Sleep(50);
        process.Signal(2);
        Assert.Equal(130, process.WaitForExit());
        Assert.Contains("second Ctrl-C: exiting at once", process.Stderr);
        Assert.DoesNotContain("stopped by SIGINT", process.Stdout);   // it did not wait to save
    }
}
