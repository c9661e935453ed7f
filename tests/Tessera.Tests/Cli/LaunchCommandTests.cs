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
}
