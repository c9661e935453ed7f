using Tessera.Distributed.InProcess;
using Tessera.Distributed.Mesh;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Distributed;

public class DeviceMeshTests
{
    [Fact]
    public void TensorParallelRanksAreConsecutiveInADp2Tp2Mesh()
    {
        var mesh = new DeviceMesh(dp: 2, tp: 2);
        Assert.Equal(4, mesh.WorldSize);
        Assert.Equal(new MeshCoordinate(Tp: 0, Cp: 0, Dp: 0, Pp: 0), mesh.CoordinateOf(0));
        Assert.Equal(new MeshCoordinate(Tp: 1, Cp: 0, Dp: 0, Pp: 0), mesh.CoordinateOf(1));
        Assert.Equal(new MeshCoordinate(Tp: 0, Cp: 0, Dp: 1, Pp: 0), mesh.CoordinateOf(2));
        Assert.Equal(new MeshCoordinate(Tp: 1, Cp: 0, Dp: 1, Pp: 0), mesh.CoordinateOf(3));
        Assert.Equal([[0, 1], [2, 3]], mesh.GroupsAlong(MeshAxis.Tp));
        Assert.Equal([[0, 2], [1, 3]], mesh.GroupsAlong(MeshAxis.Dp));
        Assert.Equal([[0], [1], [2], [3]], mesh.GroupsAlong(MeshAxis.Pp));
        Assert.Equal([0, 1, 2, 3], mesh.RanksAlong(2, MeshAxis.Dp, MeshAxis.Tp));
    }

    [Fact]
    public void RankOrderIsTpThenCpThenDpThenPp()
    {
        var mesh = new DeviceMesh(dp: 3, pp: 2, tp: 2, cp: 2);
        Assert.Equal(24, mesh.WorldSize);
        for (int r = 0; r < mesh.WorldSize; r++)
        {
            var c = mesh.CoordinateOf(r);
            Assert.Equal(r, c.Tp + 2 * (c.Cp + 2 * (c.Dp + 3 * c.Pp)));
            Assert.Equal(r, mesh.RankOf(c));
        }
        Assert.Equal([5, 7], mesh.RanksAlong(5, MeshAxis.Cp));
        Assert.Equal([1, 3], mesh.RanksAlong(3, MeshAxis.Cp));
        Assert.Equal([1, 13], mesh.RanksAlong(13, MeshAxis.Pp));
        Assert.Equal([0, 4, 8], mesh.RanksAlong(8, MeshAxis.Dp));
    }

    [Fact]
    public void GroupsAlongEachAxisPartitionTheWorld()
    {
        var mesh = new DeviceMesh(dp: 2, pp: 3, tp: 2, cp: 1);
        foreach (var axis in DeviceMesh.RankOrder)
        {
            var groups = mesh.GroupsAlong(axis);
            Assert.Equal(mesh.WorldSize / mesh.SizeOf(axis), groups.Count);
            Assert.All(groups, g => Assert.Equal(mesh.SizeOf(axis), g.Count));
            Assert.Equal(Enumerable.Range(0, mesh.WorldSize), groups.SelectMany(g => g).Order());
            // Group rank i has coordinate i on the axis; the other coordinates agree.
            foreach (var g in groups)
                for (int i = 0; i < g.Count; i++)
                {
                    Assert.Equal(i, mesh.CoordinateOf(g[i])[axis]);
                    Assert.Equal(mesh.CoordinateOf(g[0]).With(axis, i), mesh.CoordinateOf(g[i]));
                }
        }
    }

    [Fact]
    public void InvalidMeshesAreRejectedWithTheFieldName()
    {
        Assert.Contains("tp", Assert.Throws<ArgumentOutOfRangeException>(() => new DeviceMesh(tp: 0)).Message);
        Assert.Contains("WORLD_SIZE", Assert.Throws<ArgumentException>(() => new DeviceMesh(dp: 2, tp: 2).Validate(6)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new DeviceMesh(dp: 2).CoordinateOf(2));
    }

    [Fact]
    public void MeshGroupsReduceOnlyAmongRanksAlongTheirAxis()
    {
        var mesh = new DeviceMesh(dp: 2, tp: 2);
        var world = new InProcessWorld(4, TimeSpan.FromSeconds(10));
        var cpu = new CpuBackend(1);
        var tpSums = new float[4];
        var dpSums = new float[4];
        var tpRanks = new int[4];
        RankThreads.Run(4, r =>
        {
            using var groups = mesh.CreateGroups(world.FactoryFor(r));
            Assert.Equal(mesh.CoordinateOf(r).Tp, groups.Tp.Rank);
            tpRanks[r] = groups.Tp.Size;
            var t = cpu.Allocate(new Shape(1), DType.F32);
            cpu.CopyFromHost<float>([1 << r], t);
            groups.Tp.AllReduce(t).Wait();
            var s = new float[1]; cpu.CopyToHost<float>(t, s); tpSums[r] = s[0];
            cpu.CopyFromHost<float>([1 << r], t);
            groups.Dp.AllReduce(t).Wait();
            cpu.CopyToHost<float>(t, s); dpSums[r] = s[0];
            groups.Pp.Barrier().Wait(); // size-1 groups work too
        });
        Assert.Equal([3f, 3, 12, 12], tpSums); // {0,1} and {2,3}
        Assert.Equal([5f, 10, 5, 10], dpSums); // {0,2} and {1,3}
        Assert.Equal([2, 2, 2, 2], tpRanks);
    }
}
