using Tessera.Distributed.Launch;
using Xunit;

namespace Tessera.Tests.Distributed;

public class DistributedEnvironmentTests
{
    private static DistributedEnvironment Read(params (string Name, string Value)[] variables) =>
        DistributedEnvironment.FromVariables(variables.ToDictionary(v => v.Name, v => v.Value));

    [Fact]
    public void TorchrunStyleVariablesAreRead()
    {
        var env = Read(("RANK", "3"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2"), ("MASTER_ADDR", "node7"), ("MASTER_PORT", "1234"));
        Assert.Equal(new DistributedEnvironment(3, 8, 1, 2, "node7", 1234, "RANK/WORLD_SIZE"), env);
        Assert.True(env.IsDistributed);
    }

    [Fact]
    public void NoVariablesMeanASingleProcess()
    {
        var env = Read();
        Assert.Equal(0, env.Rank);
        Assert.Equal(1, env.WorldSize);
        Assert.False(env.IsDistributed);
    }

    [Fact]
    public void OpenMpiVariablesAreReadWithAnExplicitMaster()
    {
        var env = Read(("OMPI_COMM_WORLD_RANK", "5"), ("OMPI_COMM_WORLD_SIZE", "6"), ("OMPI_COMM_WORLD_LOCAL_RANK", "2"), ("MASTER_ADDR", "10.0.0.1"));
        Assert.Equal(new DistributedEnvironment(5, 6, 2, null, "10.0.0.1", 29500, "Open MPI"), env);
        Assert.Contains("MASTER_ADDR", Assert.Throws<ArgumentException>(() => Read(("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2"))).Message);
    }

    [Fact]
    public void SlurmVariablesAreReadAndTheMasterIsTheFirstNode()
    {
        var env = Read(("SLURM_PROCID", "9"), ("SLURM_NTASKS", "16"), ("SLURM_LOCALID", "1"), ("SLURM_NTASKS_PER_NODE", "8(x2)"), ("SLURM_JOB_NODELIST", "gpu[03-04,07],login1"));
        Assert.Equal(new DistributedEnvironment(9, 16, 1, 8, "gpu03", 29500, "SLURM"), env);
        var withLaunchNode = Read(("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("SLURM_LAUNCH_NODE_IPADDR", "10.9.8.7"), ("SLURM_NODELIST", "a,b"));
        Assert.Equal("10.9.8.7", withLaunchNode.MasterAddress);
    }

    [Theory]
    [InlineData("node1", "node1")]
    [InlineData("node1,node2", "node1")]
    [InlineData("gpu[003-005]", "gpu003")]
    [InlineData("rack[2,4]-gpu[1-2],x", "rack2-gpu[1-2]")]
    public void FirstHostOfASlurmNodeList(string list, string first)
    {
        // Only the first bracket is expanded: SLURM names rarely have two, and the first host is what matters.
        Assert.Equal(first, DistributedEnvironment.FirstHost(list));
    }

    [Fact]
    public void InvalidVariablesAreRejectedNamingTheVariable()
    {
        Assert.Contains("rank 4 must be in [0, 4)", Assert.Throws<ArgumentException>(() => Read(("RANK", "4"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0"), ("MASTER_ADDR", "h"))).Message);
        Assert.Contains("WORLD_SIZE='four'", Assert.Throws<ArgumentException>(() => Read(("RANK", "0"), ("WORLD_SIZE", "four"))).Message);
        Assert.Contains("WORLD_SIZE is not", Assert.Throws<ArgumentException>(() => Read(("RANK", "0"))).Message);
        Assert.Contains("LOCAL_RANK", Assert.Throws<ArgumentException>(() => Read(("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h"))).Message);
        Assert.Contains("MASTER_ADDR", Assert.Throws<ArgumentException>(() => Read(("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0"))).Message);
        Assert.Contains("MASTER_PORT=70000", Assert.Throws<ArgumentException>(() => Read(("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_PORT", "70000"))).Message);
    }
}
