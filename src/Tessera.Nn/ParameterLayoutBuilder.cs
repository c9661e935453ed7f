using Tessera.Distributed.Mesh;
using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// Collects a model's parameter declarations, unit by unit, into a <see cref="ParameterLayout"/>. Layers declare global
/// shapes; a sharded <see cref="Placement"/> is resolved to this rank's local shape from the rank's position on the
/// <see cref="DeviceMesh"/> (one device when none is given), so each rank lays out only what it holds.
/// </summary>
public sealed class ParameterLayoutBuilder
{
    private readonly List<Parameter> _parameters = [];
    private readonly List<(string Name, int First, int[] Borrows)> _units = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);
    private long _length;
    private bool _built;

    /// <summary>A builder for the rank at <paramref name="coordinate"/> of <paramref name="mesh"/>; with no mesh, one device.</summary>
    public ParameterLayoutBuilder(DeviceMesh? mesh = null, MeshCoordinate coordinate = default)
    {
        Mesh = mesh ?? new DeviceMesh();
        Coordinate = coordinate;
        Mesh.RankOf(coordinate);   // validates the coordinate against the mesh
    }

    /// <summary>The mesh the placements refer to.</summary>
    public DeviceMesh Mesh { get; }

    /// <summary>This rank's position on it.</summary>
    public MeshCoordinate Coordinate { get; }

    /// <summary>The name of the unit declarations go to now, or null before the first.</summary>
    public string? CurrentUnit => _units.Count == 0 ? null : _units[^1].Name;

    /// <summary>
    /// Starts unit <paramref name="name"/>: parameters declared from now on belong to it. <paramref name="borrows"/> names
    /// earlier units whose parameters this unit's layers also use (a tied head borrows the embeddings). Parameters
    /// declared before any unit starts form an unnamed unit.
    /// </summary>
    public void BeginUnit(string name, params int[] borrows)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        CheckOpen(name);
        foreach (var b in borrows)
            if (b < 0 || b >= _units.Count) throw new ArgumentOutOfRangeException(nameof(borrows), $"unit '{name}' borrows unit {b}, which is not declared before it");
        _units.Add((name, _parameters.Count, borrows));
    }

    /// <summary>
    /// Declares parameter <paramref name="name"/> of global shape <paramref name="shape"/>, laid out by
    /// <paramref name="placement"/> (replicated by default); its tensors exist once a storage is attached.
    /// </summary>
    public Parameter Declare(string name, Shape shape, bool weightDecay, Placement? placement = null)
    {
        ArgumentNullException.ThrowIfNull(shape);
        CheckOpen(name);
        if (!_names.Add(name)) throw new ArgumentException($"parameter '{name}' is declared twice");
        if (_units.Count == 0) _units.Add(("parameters", 0, []));
        placement ??= Placement.Replicated;
        int index = 0, count = 1;
        if (placement.Axis is MeshAxis axis)
        {
            count = Mesh.SizeOf(axis);
            index = Coordinate[axis];
        }
        placement.Validate(name, shape, count);
        var local = placement.LocalShape(shape, index, count);
        var p = new Parameter(_parameters.Count, name, local, shape, placement, weightDecay, _length, _units.Count - 1, index, count);
        _length += (local.NumElements + ParameterLayout.Alignment - 1) / ParameterLayout.Alignment * ParameterLayout.Alignment;
        _parameters.Add(p);
        return p;
    }

    /// <summary>The layout of everything declared; the builder accepts no more declarations.</summary>
    public ParameterLayout Build()
    {
        if (_built) throw new InvalidOperationException("the parameter layout is already built");
        _built = true;
        var units = new List<ParameterUnit>(_units.Count);
        for (int u = 0; u < _units.Count; u++)
        {
            var (name, first, borrows) = _units[u];
            int end = u + 1 < _units.Count ? _units[u + 1].First : _parameters.Count;
            long start = first < _parameters.Count ? _parameters[first].Offset : _length;
            long stop = end < _parameters.Count ? _parameters[end].Offset : _length;
            units.Add(new ParameterUnit(u, name, start, stop, first, end - first, borrows));
        }
        return new ParameterLayout(_parameters, units, _length);
    }

    private void CheckOpen(string name)
    {
        if (_built) throw new InvalidOperationException($"cannot declare '{name}': the parameter layout is already built");
    }
}
