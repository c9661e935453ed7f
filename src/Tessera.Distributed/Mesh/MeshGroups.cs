namespace Tessera.Distributed.Mesh;

/// <summary>One rank's process groups along each axis of a <see cref="DeviceMesh"/>.</summary>
public sealed class MeshGroups : IDisposable
{
    private readonly Dictionary<MeshAxis, ProcessGroup> _groups;

    internal MeshGroups(DeviceMesh mesh, int rank, Dictionary<MeshAxis, ProcessGroup> groups)
    {
        Mesh = mesh;
        Rank = rank;
        Coordinate = mesh.CoordinateOf(rank);
        _groups = groups;
    }

    /// <summary>The mesh the groups were derived from.</summary>
    public DeviceMesh Mesh { get; }

    /// <summary>Global rank of the member.</summary>
    public int Rank { get; }

    /// <summary>The member's position on the mesh.</summary>
    public MeshCoordinate Coordinate { get; }

    /// <summary>The group of ranks that differ from this one only along <paramref name="axis"/>; its group rank is the coordinate on that axis.</summary>
    public ProcessGroup this[MeshAxis axis] => _groups[axis];

    /// <summary>Tensor-parallel group.</summary>
    public ProcessGroup Tp => _groups[MeshAxis.Tp];

    /// <summary>Context-parallel group.</summary>
    public ProcessGroup Cp => _groups[MeshAxis.Cp];

    /// <summary>Data-parallel group.</summary>
    public ProcessGroup Dp => _groups[MeshAxis.Dp];

    /// <summary>Pipeline group (its ranks are the stages, in order).</summary>
    public ProcessGroup Pp => _groups[MeshAxis.Pp];

    /// <summary>Disposes every group.</summary>
    public void Dispose()
    {
        foreach (var g in _groups.Values) g.Dispose();
    }
}
