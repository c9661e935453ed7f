using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Training.Parallel;

/// <summary>
/// ZeRO-3's parameter storage: no full-size buffer exists, so a parameter's value and gradient are views of its unit's
/// gathered buffers, and exist only while <see cref="FullyShardedDataParallel"/> binds them for a pass. Unbound, reading
/// one throws, naming the parameter, so that no layer reads freed or stale memory. The authoritative values (and their
/// F32 masters) live in the strategy's shards, never here.
/// </summary>
public sealed class ShardedParameterStorage : IParameterStorage
{
    private readonly ParameterLayout _layout;
    private readonly Tensor?[] _values, _grads;

    /// <summary>Storage for <paramref name="layout"/>'s parameters on <paramref name="backend"/> in <paramref name="dtype"/>, nothing bound.</summary>
    public ShardedParameterStorage(ParameterLayout layout, IBackend backend, DType dtype)
    {
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(backend);
        _layout = layout;
        Backend = backend;
        DType = dtype;
        _values = new Tensor?[layout.Parameters.Count];
        _grads = new Tensor?[layout.Parameters.Count];
    }

    /// <inheritdoc/>
    public IBackend Backend { get; }

    /// <inheritdoc/>
    public DType DType { get; }

    /// <summary>Binds the values of <paramref name="unit"/>'s parameters to views of <paramref name="values"/>, which holds the unit's arena range (element i = arena element Start + i).</summary>
    public void Bind(ParameterUnit unit, Tensor values)
    {
        Check(unit, values, "values");
        foreach (var p in _layout.ParametersOf(unit)) _values[p.Index] = values.Narrow(p.Offset - unit.Start, p.Shape);
    }

    /// <summary>Binds the gradients of <paramref name="unit"/>'s parameters to views of <paramref name="grads"/> (laid out like <see cref="Bind"/>'s values).</summary>
    public void BindGradients(ParameterUnit unit, Tensor grads)
    {
        Check(unit, grads, "gradients");
        foreach (var p in _layout.ParametersOf(unit)) _grads[p.Index] = grads.Narrow(p.Offset - unit.Start, p.Shape);
    }

    /// <summary>Unbinds the values and gradients of <paramref name="unit"/>'s parameters (reads then throw).</summary>
    public void Unbind(ParameterUnit unit)
    {
        foreach (var p in _layout.ParametersOf(unit))
        {
            _values[p.Index] = null;
            _grads[p.Index] = null;
        }
    }

    /// <summary>Unbinds only the gradients of <paramref name="unit"/>'s parameters.</summary>
    public void UnbindGradients(ParameterUnit unit)
    {
        foreach (var p in _layout.ParametersOf(unit)) _grads[p.Index] = null;
    }

    /// <inheritdoc/>
    public Tensor Value(Parameter parameter) => _values[parameter.Index] ?? throw new InvalidOperationException(
        $"parameter '{parameter.Name}' is not resident: its model is fully sharded (ZeRO-3) and its unit is not gathered; " +
        "gather the unit first (the data-parallel strategy does around each pass) and read Value at use, not from a kept tensor");

    /// <inheritdoc/>
    public Tensor Grad(Parameter parameter) => _grads[parameter.Index] ?? throw new InvalidOperationException(
        $"parameter '{parameter.Name}' has no gradient buffer bound: its model is fully sharded (ZeRO-3) and the gradient exists only during " +
        "its unit's backward (the reduced gradient lives in the rank's gradient shard)");

    /// <inheritdoc/>
    public Tensor? Master(Parameter parameter) => null;

    /// <inheritdoc/>
    public Tensor Authoritative(Parameter parameter) => throw new InvalidOperationException(
        $"parameter '{parameter.Name}': its authoritative value lives in the rank's ZeRO-3 shards; write weights through the trainer " +
        "(Trainer.InitializeWeights, Trainer.LoadWeights, ShardedCheckpoint.Restore)");

    /// <inheritdoc/>
    public bool IsResident(Parameter parameter) => _values[parameter.Index] is not null;

    /// <inheritdoc/>
    public bool HasGradient(Parameter parameter) => _grads[parameter.Index] is not null;

    /// <summary>Zeroes the gradients bound now (a unit's gradient buffer is zeroed when bound, so between passes there are none).</summary>
    public void ZeroBoundGradients()
    {
        foreach (var g in _grads)
            if (g is not null) Backend.Fill(g, 0);
    }

    private void Check(ParameterUnit unit, Tensor buffer, string what)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (buffer.NumElements < unit.Length || !buffer.IsContiguous)
            throw new ArgumentException($"sharded parameters: the {what} buffer ({buffer.NumElements} elements) must be contiguous and hold unit '{unit.Name}''s {unit.Length}");
        if (buffer.DType != DType) throw new ArgumentException($"sharded parameters: the {what} buffer is {buffer.DType}, the parameters {DType}");
    }
}
