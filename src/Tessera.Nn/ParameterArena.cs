using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// Every parameter of a <see cref="ParameterLayout"/> whole, in one contiguous value buffer and one contiguous gradient
/// buffer (llm.c's arena, Megatron's grad buffer): an all-reduce of the gradients, a ZeRO shard or an optimizer run is an
/// offset and a length. For BF16/F16 arenas an F32 master copy sits beside the values (llm.c's mixed precision): the
/// optimizer updates the masters and writes the 16-bit values the layers read; checkpoints save the masters. A BF16
/// arena with <see cref="Nn.MasterWeights.Split"/> keeps only the masters' low 16 bits beside the values (<see cref="LowWords"/>):
/// the values are the masters' high halves, and readers and writers of a master go through
/// <see cref="Parameter.ReadMasterOrValue{T}"/> and <see cref="Parameter.WriteMasterOrValue"/>. Creating the arena attaches it to the layout.
/// </summary>
public sealed class ParameterArena : IParameterStorage
{
    private readonly Tensor[] _values;
    private readonly Tensor?[] _grads;
    private readonly Tensor? _gradBuffer;
    private Tensor?[] _masters;
    private Tensor? _masterBuffer;
    private readonly Tensor?[] _lowWords;
    private readonly Tensor? _lowBuffer;
    private bool _disposed;

    /// <summary>
    /// Allocates the buffers of <paramref name="layout"/> on <paramref name="backend"/> (values and gradients zeroed) and attaches
    /// them to it. A <paramref name="frozen"/> arena holds the values only (no gradients, no F32 masters: the values are
    /// authoritative, so a BF16 frozen model is not duplicated) and its parameters report <see cref="Parameter.RequiresGradient"/> false.
    /// <paramref name="masters"/> <see cref="Nn.MasterWeights.Split"/> (BF16, trained arenas only) keeps a 16-bit low-word plane
    /// instead of an F32 master buffer: 2 bytes per parameter less.
    /// </summary>
    public ParameterArena(ParameterLayout layout, IBackend backend, DType dtype, bool frozen = false, MasterWeights masters = MasterWeights.Separate)
    {
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(backend);
        if (masters == MasterWeights.Split && (dtype != DType.BF16 || frozen))
            throw new ArgumentException(frozen
                ? "parameter arena: MasterWeights.Split needs a trained arena; a frozen arena has no masters (its values are authoritative)"
                : $"parameter arena: MasterWeights.Split needs a BF16 arena (the value is the master's high half), this one is {dtype}; " +
                  (dtype == DType.F16 ? "F16 arenas keep separate F32 masters (MasterWeights.Separate)" : $"{dtype} values are their own masters"), nameof(masters));
        Layout = layout;
        MasterWeights = masters;
        Backend = backend;
        DType = dtype;
        // Shaped (rows, Alignment) so that arenas past 2^31 elements (Llama 8B) fit int dimensions.
        var shape = new Shape(checked((int)Math.Max(layout.Length / Alignment, 1)), Alignment);
        Frozen = frozen;
        Values = backend.Zeros(shape, dtype);
        if (!frozen) _gradBuffer = backend.Zeros(shape, dtype);
        if (MasterDType != dtype && !frozen)
        {
            if (masters == MasterWeights.Split) _lowBuffer = backend.Zeros(shape, DType.U16);
            else _masterBuffer = backend.Zeros(shape, MasterDType);
        }
        var ps = layout.Parameters;
        _values = new Tensor[ps.Count];
        _grads = new Tensor?[ps.Count];
        _masters = new Tensor?[ps.Count];
        _lowWords = new Tensor?[ps.Count];
        foreach (var p in ps)
        {
            _lowWords[p.Index] = _lowBuffer?.Narrow(p.Offset, p.Shape);
            _values[p.Index] = Values.Narrow(p.Offset, p.Shape);
            _grads[p.Index] = _gradBuffer?.Narrow(p.Offset, p.Shape);
            _masters[p.Index] = _masterBuffer?.Narrow(p.Offset, p.Shape);
        }
        layout.Attach(this);
    }

    /// <summary>Alignment of each parameter's offset, in elements (<see cref="ParameterLayout.Alignment"/>).</summary>
    public const int Alignment = ParameterLayout.Alignment;

    /// <summary>The layout the buffers follow.</summary>
    public ParameterLayout Layout { get; }

    /// <inheritdoc/>
    public IBackend Backend { get; }

    /// <summary>Element type of values and gradients: F32 (training), F64 (gradient checks) or BF16/F16 (mixed precision, with <see cref="Masters"/>).</summary>
    public DType DType { get; }

    /// <summary>The element type the optimizer updates: F32 with masters, otherwise <see cref="DType"/>.</summary>
    public DType MasterDType => DType is DType.BF16 or DType.F16 ? DType.F32 : DType;

    /// <summary>The value buffer (Length / Alignment, Alignment).</summary>
    public Tensor Values { get; }

    /// <summary>The gradient buffer, laid out like <see cref="Values"/>; throws for a <see cref="Frozen"/> arena, which has none.</summary>
    public Tensor Grads => _gradBuffer ?? throw new InvalidOperationException(
        "parameter arena: it is frozen (values only: the base model under LoRA) and has no gradient buffer; train the adapters' arena");

    /// <summary>Whether the arena holds values only (no gradients, no masters): a frozen base model.</summary>
    public bool Frozen { get; }

    /// <summary>The F32 master copy of a BF16/F16 arena, laid out like <see cref="Values"/>; null for F32/F64 arenas, once released, and under <see cref="Nn.MasterWeights.Split"/>.</summary>
    public Tensor? Masters => _masterBuffer;

    /// <summary>How the masters are kept: <see cref="Nn.MasterWeights.Separate"/> (the default) or <see cref="Nn.MasterWeights.Split"/>.</summary>
    public MasterWeights MasterWeights { get; }

    /// <summary>
    /// Under <see cref="Nn.MasterWeights.Split"/>, the masters' low words (U16 holding two's-complement int16 bits), laid out like
    /// <see cref="Values"/>, which holds the high halves: master = join(value, low word) (<see cref="IBackend.JoinMasters"/>).
    /// Null otherwise.
    /// </summary>
    public Tensor? LowWords => _lowBuffer;

    /// <summary>The low words of <paramref name="parameter"/>'s master under <see cref="Nn.MasterWeights.Split"/>, else null.</summary>
    public Tensor? LowWord(Parameter parameter) => Live()._lowWords[parameter.Index];

    /// <summary>
    /// Whether the arena gave up its F32 master copy (<see cref="ReleaseMasters"/>): the masters then live with their
    /// owner (an offloaded optimizer's host shard), and <see cref="Authoritative"/> refuses.
    /// </summary>
    public bool MastersReleased { get; private set; }

    /// <summary>Parameters in declaration order.</summary>
    public IReadOnlyList<Parameter> Parameters => Layout.Parameters;

    /// <summary>Total elements of the buffers, alignment padding included.</summary>
    public long Length => Layout.Length;

    /// <summary>Elements that belong to parameters (padding excluded).</summary>
    public long ParameterCount => Layout.ParameterCount;

    /// <summary>Bytes of the buffers the arena holds on its backend now.</summary>
    public long AllocatedBytes => _disposed ? 0 : Values.Storage.ByteLength + (_gradBuffer?.Storage.ByteLength ?? 0) + (_masterBuffer?.Storage.ByteLength ?? 0) + (_lowBuffer?.Storage.ByteLength ?? 0);

    /// <summary>The parameter called <paramref name="name"/>.</summary>
    public Parameter this[string name] => Layout[name];

    /// <summary>Whether a parameter called <paramref name="name"/> exists.</summary>
    public bool Contains(string name) => Layout.Contains(name);

    /// <inheritdoc/>
    public Tensor Value(Parameter parameter) => Live()._values[parameter.Index];

    /// <inheritdoc/>
    public Tensor Grad(Parameter parameter) => Live()._grads[parameter.Index] ?? throw new InvalidOperationException(
        $"parameter '{parameter.Name}' is frozen (its arena holds values only) and has no gradient; only the adapters are trained");

    /// <inheritdoc/>
    public Tensor? Master(Parameter parameter) => Live()._masters[parameter.Index];

    /// <inheritdoc/>
    public Tensor Authoritative(Parameter parameter) => Master(parameter) ?? (MastersReleased
        ? throw new InvalidOperationException($"parameter '{parameter.Name}': its F32 master is not on the device (the optimizer is offloaded and holds it on the host); " +
            "initialize or load weights before creating the offloaded trainer, or go through the trainer (its checkpoint and weight-loading methods)")
        : MasterWeights == MasterWeights.Split
            ? throw new InvalidOperationException($"parameter '{parameter.Name}': its F32 master is split (MasterWeights.Split: the BF16 value is its high half, " +
                "ParameterArena.LowWords the rest), so no tensor holds it; read or write it through Parameter.ReadMasterOrValue / WriteMasterOrValue")
            : Value(parameter));

    /// <inheritdoc/>
    public T ReadAuthoritative<T>(Parameter parameter, Func<Tensor, T> read)
    {
        ArgumentNullException.ThrowIfNull(read);
        if (LowWord(parameter) is not { } low) return read(Authoritative(parameter));
        // A transient F32 master, joined exactly; freed after the read (ordered after the work on the backend's stream).
        var master = Backend.Allocate(parameter.Shape, DType.F32);
        try
        {
            Backend.JoinMasters(Value(parameter), low, master);
            return read(master);
        }
        finally { master.Storage.Dispose(); }
    }

    /// <inheritdoc/>
    public void WriteAuthoritative(Parameter parameter, Action<Tensor> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        if (LowWord(parameter) is not { } low)
        {
            write(Authoritative(parameter));
            if (Master(parameter) is { } m) Backend.Copy(m, Value(parameter));
            return;
        }
        var master = Backend.Allocate(parameter.Shape, DType.F32);
        try
        {
            write(master);
            Backend.SplitMasters(master, Value(parameter), low);
        }
        finally { master.Storage.Dispose(); }
    }

    /// <inheritdoc/>
    public bool IsResident(Parameter parameter) => !_disposed;

    /// <inheritdoc/>
    public bool HasGradient(Parameter parameter) => !_disposed && !Frozen;

    /// <inheritdoc/>
    public bool RequiresGradient(Parameter parameter) => !Frozen;

    /// <summary>Sets every gradient to zero (enqueued).</summary>
    public void ZeroGrad()
    {
        if (Live()._gradBuffer is { } grads) Backend.Fill(grads, 0);
    }

    /// <summary>
    /// Mixed precision: rewrites the low-precision <see cref="Values"/> from the F32 <see cref="Masters"/> (a cast over the
    /// whole arena, enqueued). Call after writing masters directly (initialization, loading); no-op without masters, and under
    /// <see cref="Nn.MasterWeights.Split"/>, where the values are the masters' high halves already.
    /// </summary>
    public void SyncValuesFromMasters()
    {
        Live();
        if (MastersReleased)
            throw new InvalidOperationException("parameter arena: the F32 masters were released (they live with the offloaded optimizer); the values cannot be rebuilt from them here");
        if (_masterBuffer is not null) Backend.Copy(_masterBuffer, Values);
    }

    /// <summary>
    /// Frees the F32 master buffer (4 bytes per element) because another copy is authoritative (an offloaded optimizer's
    /// host masters). Afterwards <see cref="Masters"/> and every parameter's master are null and
    /// <see cref="Authoritative"/> refuses, so nothing writes the 16-bit copy in the master's place. A no-op for F32/F64 arenas.
    /// </summary>
    public void ReleaseMasters()
    {
        Live();
        if (_lowBuffer is not null)
            throw new InvalidOperationException("parameter arena: its masters are split (MasterWeights.Split) and cannot be released to an offloaded optimizer; use MasterWeights.Separate");
        if (_masterBuffer is null) return;
        var masters = _masterBuffer;
        _masterBuffer = null;
        _masters = new Tensor?[_masters.Length];
        MastersReleased = true;
        masters.Storage.Dispose();
    }

    /// <summary>
    /// Frees every buffer (a ZeRO-3 strategy that has copied its shards out of a fully built arena); the arena is unusable
    /// afterwards and the strategy attaches its own storage to the layout. Irreversible.
    /// </summary>
    public void Release()
    {
        if (_disposed) return;
        _disposed = true;
        if (_masterBuffer is not null) MastersReleased = true;
        Values.Storage.Dispose();
        _gradBuffer?.Storage.Dispose();
        _masterBuffer?.Storage.Dispose();
        _lowBuffer?.Storage.Dispose();
        _masterBuffer = null;
    }

    private ParameterArena Live() => _disposed
        ? throw new InvalidOperationException("parameter arena: its buffers were released (the model's parameters live in ZeRO-3 shards now); read a parameter while its unit is gathered, or the rank's shard")
        : this;
}
