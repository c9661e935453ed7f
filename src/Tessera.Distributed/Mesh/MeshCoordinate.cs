namespace Tessera.Distributed.Mesh;

/// <summary>A rank's position on each axis of a <see cref="DeviceMesh"/>.</summary>
/// <param name="Tp">Index along the tensor-parallel axis.</param>
/// <param name="Cp">Index along the context-parallel axis.</param>
/// <param name="Dp">Index along the data-parallel axis.</param>
/// <param name="Pp">Index along the pipeline axis (the stage).</param>
public readonly record struct MeshCoordinate(int Tp, int Cp, int Dp, int Pp)
{
    /// <summary>The index along <paramref name="axis"/>.</summary>
    public int this[MeshAxis axis] => axis switch
    {
        MeshAxis.Tp => Tp,
        MeshAxis.Cp => Cp,
        MeshAxis.Dp => Dp,
        MeshAxis.Pp => Pp,
        _ => throw new ArgumentOutOfRangeException(nameof(axis), axis, "unknown mesh axis"),
    };

    /// <summary>This coordinate with index <paramref name="value"/> on <paramref name="axis"/>.</summary>
    public MeshCoordinate With(MeshAxis axis, int value) => axis switch
    {
        MeshAxis.Tp => this with { Tp = value },
        MeshAxis.Cp => this with { Cp = value },
        MeshAxis.Dp => this with { Dp = value },
        MeshAxis.Pp => this with { Pp = value },
        _ => throw new ArgumentOutOfRangeException(nameof(axis), axis, "unknown mesh axis"),
    };

    /// <inheritdoc/>
    public override string ToString() => $"(dp {Dp}, pp {Pp}, tp {Tp}, cp {Cp})";
}
