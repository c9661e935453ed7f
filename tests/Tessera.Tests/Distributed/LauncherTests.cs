using System.Diagnostics;
using Tessera.Distributed.Launch;
using Xunit;

namespace Tessera.Tests.Distributed;

public class LauncherTests
{
    private static LaunchOptions Shell(string script, int processes, StringWriter output) => new()
    {
        Program = "/bin/sh",
        Arguments = ["-c", script],
        ProcessesPerNode = processes,
        Output = output,
        Error = output,
    };

    private static void SkipOnWindows()
    {
        if (OperatingSystem.IsWindows()) Assert.Skip("launcher tests run /bin/sh scripts");
    }

    [Fact]
    public void EveryRankSeesItsRankWorldSizeAndMasterInItsEnvironment()
    {
        SkipOnWindows();
        var output = new StringWriter();
        var options = Shell("echo \"r=$RANK w=$WORLD_SIZE l=$LOCAL_RANK lw=$LOCAL_WORLD_SIZE g=$GROUP_RANK m=$MASTER_ADDR:$MASTER_PORT nvls=$NCCL_NVLS_ENABLE x=$EXTRA\"", 2, output)
            with { Nodes = 2, NodeRank = 1, MasterAddress = "10.1.2.3", MasterPort = 29511, Environment = new Dictionary<string, string> { ["EXTRA"] = "yes" } };
        var result = Launcher.Run(options, TestContext.Current.CancellationToken);
        Assert.True(result.Succeeded, result.Summary);
        Assert.Equal(0, result.ExitCode);
        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Order().ToArray();
        Assert.Equal([
            "[rank 2] r=2 w=4 l=0 lw=2 g=1 m=10.1.2.3:29511 nvls=0 x=yes",
            "[rank 3] r=3 w=4 l=1 lw=2 g=1 m=10.1.2.3:29511 nvls=0 x=yes",
        ], lines);
        Assert.Equal([2, 3], result.Ranks.Select(r => r.Rank));
        Assert.Contains("all 2 ranks exited with code 0", result.Summary);
    }

    [Fact]
    public void ARankThatExitsNonZeroGetsTheOthersKilledAndIsReportedWithItsCode()
    {
        SkipOnWindows();
        var output = new StringWriter();
        var sw = Stopwatch.StartNew();
        var result = Launcher.Run(Shell("if [ \"$RANK\" = 1 ]; then sleep 0.2; echo failing; exit 3; fi; sleep 30", 3, output), TestContext.Current.CancellationToken);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"took {sw.Elapsed}");
        Assert.False(result.Succeeded);
        Assert.Equal(1, result.FailedRank);
        Assert.Equal(3, result.ExitCode);
        Assert.Equal(3, result.Ranks[1].ExitCode);
        Assert.False(result.Ranks[1].KilledByLauncher);
        Assert.True(result.Ranks[0].KilledByLauncher);
        Assert.True(result.Ranks[2].KilledByLauncher);
        Assert.Contains("rank 1 (local rank 1) exited with code 3", result.Summary);
        Assert.Contains("killed ranks 0, 2", result.Summary);
        Assert.Contains("[rank 1] failing", output.ToString());
    }

    [Fact]
    public void ARankKilledByASignalIsReportedWithTheSignal()
    {
        SkipOnWindows();
        var output = new StringWriter();
        var sw = Stopwatch.StartNew();
        var result = Launcher.Run(Shell("if [ \"$RANK\" = 0 ]; then kill -9 $$; fi; sleep 30", 2, output), TestContext.Current.CancellationToken);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"took {sw.Elapsed}");
        Assert.Equal(0, result.FailedRank);
        Assert.Equal(9, result.Ranks[0].Signal);
        Assert.Equal(137, result.ExitCode);
        Assert.Contains("killed by signal 9 (SIGKILL)", result.Summary);
        Assert.True(result.Ranks[1].KilledByLauncher);
    }

    [Fact]
    public void CancellationKillsEveryRank()
    {
        SkipOnWindows();
        using var cts = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
        var sw = Stopwatch.StartNew();
        var result = Launcher.Run(Shell("sleep 30", 2, new StringWriter()), cts.Token);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"took {sw.Elapsed}");
        Assert.True(result.Interrupted);
        Assert.Equal(Launcher.InterruptedExitCode, result.ExitCode);
        Assert.All(result.Ranks, r => Assert.True(r.KilledByLauncher));
    }

    [Fact]
    public void MoreProcessesThanVisibleGpusIsRejected()
    {
        var e = Assert.Throws<ArgumentException>(() => Launcher.Run(Shell("true", 4, new StringWriter()) with { VisibleGpus = 2 }, TestContext.Current.CancellationToken));
        Assert.Contains("--nproc-per-node 4 exceeds the 2 visible GPUs", e.Message);
        Assert.Contains("--node-rank 2", Assert.Throws<ArgumentException>(() => Launcher.Run(Shell("true", 1, new StringWriter()) with { Nodes = 2, NodeRank = 2 }, TestContext.Current.CancellationToken)).Message);
    }

    [Fact]
    public void AMissingProgramIsReportedByName()
    {
        var e = Assert.Throws<InvalidOperationException>(() => Launcher.Run(new LaunchOptions { Program = "/nonexistent/tessera-no-such-program", ProcessesPerNode = 2, Output = new StringWriter() }, TestContext.Current.CancellationToken));
        Assert.Contains("/nonexistent/tessera-no-such-program", e.Message);
        Assert.Contains("rank 0", e.Message);
    }
}
