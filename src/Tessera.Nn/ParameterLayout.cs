namespace Tessera.Nn;

/// <summary>
/// The immutable description of a model's parameters on this rank: every <see cref="Parameter"/> (name, global and local
/// shape, placement, decay, offset) in declaration order, the <see cref="ParameterUnit"/>s they form, and the arena length.
/// Built once by a <see cref="ParameterLayoutBuilder"/> while the model declares its layers; storages
/// (<see cref="IParameterStorage"/>) are laid out by it and attached to it. Each parameter starts at a multiple of
/// <see cref="Alignment"/> elements, so that vectorized and GPU kernels see aligned rows and a shard is an offset and a length.
/// </summary>
public sealed class ParameterLayout
{
    /// <summary>Alignment of each parameter's offset, in elements.</summary>
    public const int Alignment = 64;

    private readonly Dictionary<string, Parameter> _byName;

    internal ParameterLayout(IReadOnlyList<Parameter> parameters, IReadOnlyList<ParameterUnit> units, long length)
    {
        Parameters = parameters;
        Units = units;
        Length = length;
        _byName = parameters.ToDictionary(p => p.Name, StringComparer.Ordinal);
    }

    /// <summary>Parameters in declaration order.</summary>
    public IReadOnlyList<Parameter> Parameters { get; }

    /// <summary>Units in order; their ranges tile the arena.</summary>
    public IReadOnlyList<ParameterUnit> Units { get; }

    /// <summary>Elements of the arena, alignment padding included.</summary>
    public long Length { get; }

    /// <summary>Elements that belong to parameters on this rank (padding excluded).</summary>
    public long ParameterCount => Parameters.Sum(p => p.NumElements);

    /// <summary>The storage attached now (<see cref="Attach"/>), or null.</summary>
    public IParameterStorage? Storage { get; private set; }

    /// <summary>The parameter called <paramref name="name"/>.</summary>
    public Parameter this[string name] =>
        _byName.TryGetValue(name, out var p) ? p : throw new KeyNotFoundException($"no parameter named '{name}'");

    /// <summary>Whether a parameter called <paramref name="name"/> exists.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>One past the last arena element of parameter <paramref name="index"/>'s aligned slot (the next parameter's offset).</summary>
    public long AlignedEnd(int index) => index + 1 < Parameters.Count ? Parameters[index + 1].Offset : Length;

    /// <summary>The parameters of <paramref name="unit"/>.</summary>
    public IEnumerable<Parameter> ParametersOf(ParameterUnit unit)
    {
        for (int i = 0; i < unit.ParameterCount; i++) yield return Parameters[unit.FirstParameter + i];
    }

    /// <summary>
    /// Makes <paramref name="storage"/> the home of every parameter's tensors (replacing any earlier storage). A model
    /// attaches its arena when built; a ZeRO-3 strategy attaches its sharded storage in the arena's place.
    /// </summary>
    public void Attach(IParameterStorage storage)
    {
        ArgumentNullException.ThrowIfNull(storage);
        Storage = storage;
        foreach (var p in Parameters) p.Storage = storage;
    }
}
