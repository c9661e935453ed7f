using Xunit;

namespace Tessera.Tests.Cli;

public class LaunchCommandTests
{
    [Fact]
    public void RanksGetTheirEnvironmentAndAFailingRankIsReported()
    {
        var (code, stdout, stderr) = CliProcess.Run("launch", "--nproc-per-node", "2", "--master-port", "29611", "--",
            "/bin/sh", "-c", "echo rank=$RANK of $WORLD_SIZE local=$LOCAL_RANK; exit $((RANK * 3))");
        Assert.Contains("[rank 0] rank=0 of 2 local=0", stdout);
        Assert.Contains("[rank 1] rank=1 of 2 local=1", stdout);
        Assert.Equal(3, code);
        Assert.Contains("rank 1", stderr);
    }

    [Fact]
    public void MoreProcessesThanGpusIsAUsageError()
    {
        var (code, _, stderr) = CliProcess.Run("launch", "--nproc-per-node", "4", "--gpus", "2", "--", "train", "--device", "cuda");
        Assert.Equal(2, code);
        Assert.Contains("GPU", stderr, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void LaunchedCpuTrainingExplainsThatMultiProcessRunsNeedGpus()
    {
        var (code, stdout, stderr) = CliProcess.Run("launch", "--nproc-per-node", "2", "--master-port", "29613", "--", "train", "--steps", "1");
        Assert.Equal(2, code);
        Assert.Contains("NCCL", stdout + stderr);
        Assert.Contains("--ranks", stdout + stderr);
    }

    [Fact]
    public void CtrlCIsPassedOnToTheRanksAsSigtermAndTheyGetToFinish()
    {
        // Each rank stands for a training process: on SIGTERM it takes a moment ("saving"), then exits 143.
        const string rank = "trap 'echo stopping; sleep 0.5; echo saved; exit 143' TERM; echo ready; while :; do sleep 0.05; done";
        using var launch = CliProcess.Start("launch", "--nproc-per-node", "2", "--master-port", "29615", "--", "/bin/sh", "-c", rank);
        // The ranks print in either order, and each wait consumes the lines before its match.
        launch.WaitForLine(l => l is "[rank 0] ready" or "[rank 1] ready");
        launch.WaitForLine(l => l is "[rank 0] ready" or "[rank 1] ready");
        launch.Signal(2);   // to the launcher alone, as a scheduler's signal would arrive
        Assert.Equal(130, launch.WaitForExit());
        Assert.Contains("[rank 0] saved", launch.Stdout);
        Assert.Contains("[rank 1] saved", launch.Stdout);   // not killed when rank 0 exited first with 143
        Assert.Contains("stopped by SIGINT: passed on to the ranks as SIGTERM; they exited with 143, 143", launch.Stderr);
    }
}
