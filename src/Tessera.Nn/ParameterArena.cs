using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// All parameters of a model in one contiguous value buffer and one contiguous gradient buffer
/// (llm.c's arena, Megatron's grad buffer). Parameters are declared first, then
/// <see cref="Build"/> allocates both buffers once and hands every parameter its views.
/// Each parameter starts at a multiple of <see cref="Alignment"/> elements so that vectorized
/// and GPU kernels see aligned rows.
/// <para>
/// ZeRO-3 shards the arena: either it is declared without storage (<see cref="BuildDeferred"/>, sharded construction:
/// no full-size buffer is ever allocated) or the full-size buffers of a built arena are freed once copied into the
/// owner's shards (<see cref="ReleaseStorage"/>). Then each parameter's <c>Value</c>/<c>Grad</c> is a view of a gathered
/// segment buffer only while its owner binds it (<see cref="Bind"/>, <see cref="BindGradients"/>, <see cref="Unbind"/>);
/// unbound, the properties throw.
/// </para>
/// </summary>
public sealed class ParameterArena
{
    /// <summary>Alignment of each parameter's offset, in elements.</summary>
    public const int Alignment = 64;

    private readonly List<Parameter> _parameters = [];
    private readonly Dictionary<string, Parameter> _byName = new(StringComparer.Ordinal);
    private long _length;

    /// <summary>Creates an empty arena whose buffers will live on <paramref name="backend"/> in <paramref name="dtype"/>.</summary>
    public ParameterArena(IBackend backend, DType dtype)
    {
        Backend = backend;
        DType = dtype;
    }

    /// <summary>Backend that holds the buffers.</summary>
    public IBackend Backend { get; }

    /// <summary>Element type of values and gradients: F32 (training), F64 (gradient checks) or BF16/F16 (mixed precision, with <see cref="Masters"/>).</summary>
    public DType DType { get; }

    /// <summary>
    /// Mixed precision (llm.c's design): when <see cref="DType"/> is BF16 or F16, an F32 master copy of the values,
    /// laid out like <see cref="Values"/> (Length / Alignment, Alignment). The optimizer updates the masters and writes
    /// the low-precision <see cref="Values"/> the layers read; checkpoints save the masters. Null for F32 and F64 arenas.
    /// </summary>
    public Tensor? Masters { get; private set; }

    /// <summary>The element type the optimizer updates: F32 with masters, otherwise <see cref="DType"/>.</summary>
    public DType MasterDType => DType is DType.BF16 or DType.F16 ? DType.F32 : DType;

    /// <summary>Parameters in declaration order.</summary>
    public IReadOnlyList<Parameter> Parameters => _parameters;

    /// <summary>Total elements of the buffers, alignment padding included.</summary>
    public long Length => _length;

    /// <summary>Elements that belong to parameters (padding excluded).</summary>
    public long ParameterCount => _parameters.Sum(p => p.NumElements);

    private Tensor? _values, _grads;
    private bool _built;

    /// <summary>The value buffer (Length / Alignment, Alignment) once built; throws for a sharded arena (<see cref="IsSharded"/>), which has none.</summary>
    public Tensor Values => _values ?? throw NotMaterialized("value");

    /// <summary>The gradient buffer (Length / Alignment, Alignment) once built; throws for a sharded arena, which has none.</summary>
    public Tensor Grads => _grads ?? throw NotMaterialized("gradient");

    /// <summary>Whether <see cref="Build"/> has run.</summary>
    public bool IsBuilt => _built;

    /// <summary>
    /// Whether the arena gave up its full-size buffers (<see cref="ReleaseStorage"/>, ZeRO-3): values, gradients and masters
    /// then live in the owner's shards, and a parameter's <c>Value</c>/<c>Grad</c> exist only while bound (<see cref="Bind"/>).
    /// </summary>
    public bool IsSharded { get; private set; }

    /// <summary>
    /// Whether the arena gave up its F32 master copy (<see cref="ReleaseMasters"/>): the masters then live elsewhere (the
    /// host shard of an offloaded optimizer) and <see cref="Masters"/> is null although <see cref="MasterDType"/> differs from <see cref="DType"/>.
    /// </summary>
    public bool MastersReleased { get; private set; }

    /// <summary>Bytes of the buffers the arena holds on its backend now (values, gradients and masters that exist).</summary>
    public long AllocatedBytes => (_values?.Storage.ByteLength ?? 0) + (_grads?.Storage.ByteLength ?? 0) + (Masters?.Storage.ByteLength ?? 0);

    /// <summary>Declares a parameter; its tensors exist after <see cref="Build"/>.</summary>
    public Parameter Declare(string name, Shape shape, bool weightDecay)
    {
        if (IsBuilt) throw new InvalidOperationException($"cannot declare '{name}': the arena is already built");
        if (_byName.ContainsKey(name)) throw new ArgumentException($"parameter '{name}' is declared twice");
        var p = new Parameter(name, shape, weightDecay, _length);
        _length += (shape.NumElements + Alignment - 1) / Alignment * Alignment;
        _parameters.Add(p);
        _byName.Add(name, p);
        return p;
    }

    /// <summary>Allocates the buffers (values and gradients zeroed) and binds every parameter's views (ZeRO-3 without them: <see cref="BuildDeferred"/>).</summary>
    public void Build()
    {
        if (IsBuilt) throw new InvalidOperationException("the arena is already built");
        // Shaped (rows, Alignment) so that arenas past 2^31 elements (Llama 8B) fit int dimensions.
        var shape = new Shape(checked((int)Math.Max(_length / Alignment, 1)), Alignment);
        _values = Backend.Zeros(shape, DType);
        _grads = Backend.Zeros(shape, DType);
        if (MasterDType != DType) Masters = Backend.Zeros(shape, MasterDType);
        foreach (var p in _parameters)
        {
            p.Value = _values.Narrow(p.Offset, p.Shape);
            p.Grad = _grads.Narrow(p.Offset, p.Shape);
            p.Master = Masters?.Narrow(p.Offset, p.Shape);
        }
        _built = true;
    }

    /// <summary>
    /// ZeRO-3's sharded construction (DeepSpeed's <c>zero.Init</c>): completes the declaration without allocating anything.
    /// The arena is built and sharded from the start (<see cref="IsBuilt"/>, <see cref="IsSharded"/> and
    /// <see cref="IsDeferred"/> are true, <see cref="AllocatedBytes"/> is 0): shapes and offsets are fixed, no full-size
    /// value, gradient or master buffer ever exists, and the owner materializes only its shards and writes the weights
    /// into them (<c>DataParallelTrainer.InitializeWeights</c>/<c>LoadWeights</c>). Parameters are bound as after
    /// <see cref="ReleaseStorage"/>; a BF16/F16 arena's masters live with the owner (<see cref="MastersReleased"/>).
    /// </summary>
    public void BuildDeferred()
    {
        if (IsBuilt) throw new InvalidOperationException("the arena is already built");
        _built = true;
        IsSharded = true;
        IsDeferred = true;
        MastersReleased = MasterDType != DType;
        foreach (var p in _parameters) p.MasterIsElsewhere = MastersReleased;
    }

    /// <summary>
    /// Whether the arena was built without storage (<see cref="BuildDeferred"/>): it never held full-size buffers, and its
    /// weights exist only once its owner has written them into its shards.
    /// </summary>
    public bool IsDeferred { get; private set; }

    /// <summary>
    /// ZeRO-3: frees the full-size value, gradient and master buffers (their owner has copied what it keeps: its shard) and
    /// unbinds every parameter; afterwards <see cref="Values"/>/<see cref="Grads"/> throw, <see cref="AllocatedBytes"/> is 0,
    /// and a parameter's tensors exist only while its owner binds them to a gathered buffer (<see cref="Bind"/>,
    /// <see cref="BindGradients"/>). Irreversible.
    /// </summary>
    public void ReleaseStorage()
    {
        if (!_built) throw new InvalidOperationException("parameter arena: build the arena before releasing its storage");
        if (IsSharded) return;
        var buffers = new[] { _values, _grads, Masters };
        _values = null;
        _grads = null;
        if (Masters is not null) MastersReleased = true;
        Masters = null;
        IsSharded = true;
        foreach (var p in _parameters)
        {
            p.Unbind();
            p.Master = null;
            p.MasterIsElsewhere = MastersReleased;
        }
        foreach (var b in buffers) b?.Storage.Dispose();
    }

    /// <summary>
    /// Sharded arena: binds the values of every parameter in the arena range [<paramref name="start"/>, <paramref name="end"/>)
    /// (whole parameters; the range must start and end at parameter boundaries) to views of <paramref name="values"/>, which
    /// holds that range (element i = arena element start + i).
    /// </summary>
    public void Bind(long start, long end, Tensor values)
    {
        ArgumentNullException.ThrowIfNull(values);
        foreach (var p in InRange(start, end, values, "values")) p.Value = values.Narrow(p.Offset - start, p.Shape);
    }

    /// <summary>Sharded arena: binds the gradients of the parameters in [<paramref name="start"/>, <paramref name="end"/>) to views of <paramref name="grads"/> (laid out like <see cref="Bind"/>'s values).</summary>
    public void BindGradients(long start, long end, Tensor grads)
    {
        ArgumentNullException.ThrowIfNull(grads);
        foreach (var p in InRange(start, end, grads, "gradients")) p.Grad = grads.Narrow(p.Offset - start, p.Shape);
    }

    /// <summary>Sharded arena: unbinds values and gradients of the parameters in [<paramref name="start"/>, <paramref name="end"/>) (reads then throw).</summary>
    public void Unbind(long start, long end)
    {
        foreach (var p in InRange(start, end, null, "")) p.Unbind();
    }

    /// <summary>Sharded arena: unbinds only the gradients of the parameters in [<paramref name="start"/>, <paramref name="end"/>).</summary>
    public void UnbindGradients(long start, long end)
    {
        foreach (var p in InRange(start, end, null, "")) p.UnbindGradient();
    }

    private List<Parameter> InRange(long start, long end, Tensor? buffer, string what)
    {
        if (!IsSharded) throw new InvalidOperationException("parameter arena: only a sharded arena (ReleaseStorage) rebinds its parameters");
        if (start < 0 || end > _length || start >= end)
            throw new ArgumentOutOfRangeException(nameof(start), $"parameter arena: range [{start}, {end}) is outside the arena's {_length} elements");
        if (buffer is not null)
        {
            if (buffer.NumElements < end - start || !buffer.IsContiguous)
                throw new ArgumentException($"parameter arena: the {what} buffer ({buffer.NumElements} elements) must be contiguous and hold the range's {end - start}");
            if (buffer.DType != DType) throw new ArgumentException($"parameter arena: the {what} buffer is {buffer.DType}, the arena {DType}");
        }
        var result = _parameters.Where(p => p.Offset >= start && p.Offset < end).ToList();
        if (result.Count == 0 || result[0].Offset != start || result.Any(p => p.Offset + p.NumElements > end))
            throw new ArgumentException($"parameter arena: [{start}, {end}) must start at a parameter and cover whole parameters");
        return result;
    }

    private InvalidOperationException NotMaterialized(string what) => new(_built
        ? $"parameter arena: the {what} buffer is sharded (ZeRO-3, {(IsDeferred ? "BuildDeferred" : "ReleaseStorage")}); no full-size buffer exists. Read a parameter while its segment is gathered, or the rank's shard (ShardedDataParallel.Value/Gradient)"
        : $"parameter arena: the {what} buffer exists once the arena is built");

    /// <summary>
    /// Mixed precision: rewrites the low-precision <see cref="Values"/> from the F32 <see cref="Masters"/> (a cast over the
    /// whole arena, enqueued). Call after writing masters directly (initialization, loading); no-op without masters.
    /// </summary>
    public void SyncValuesFromMasters()
    {
        if (IsSharded) throw NotMaterialized("value");
        if (MastersReleased)
            throw new InvalidOperationException("parameter arena: the F32 masters were released (they live with the offloaded optimizer); the values cannot be rebuilt from them here");
        if (Masters is not null) Backend.Copy(Masters, Values);
    }

    /// <summary>
    /// Mixed precision with an offloaded optimizer (ZeRO-Offload): frees the F32 master buffer (4 bytes per element) on the
    /// backend, because the optimizer's host copy is authoritative. Afterwards <see cref="Masters"/> and every
    /// <c>Parameter.Master</c> are null and <c>Parameter.MasterOrValue</c> refuses (loading or initializing through the
    /// arena would write the BF16 copy in the master's place). Call once the optimizer has copied the masters it owns.
    /// A no-op for F32/F64 arenas, whose values are the masters.
    /// </summary>
    public void ReleaseMasters()
    {
        if (!IsBuilt) throw new InvalidOperationException("parameter arena: build the arena before releasing its masters");
        if (Masters is null || IsSharded) return;
        var masters = Masters;
        Masters = null;
        MastersReleased = true;
        foreach (var p in _parameters)
        {
            p.Master = null;
            p.MasterIsElsewhere = true;
        }
        masters.Storage.Dispose();
    }

    /// <summary>The parameter called <paramref name="name"/>.</summary>
    public Parameter this[string name] =>
        _byName.TryGetValue(name, out var p) ? p : throw new KeyNotFoundException($"no parameter named '{name}'");

    /// <summary>Whether a parameter called <paramref name="name"/> exists.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>
    /// Sets every gradient to zero. A sharded arena holds no gradients between passes (each segment's gradient buffer is
    /// zeroed when its owner binds it), so there this zeroes only the gradients bound now.
    /// </summary>
    public void ZeroGrad()
    {
        if (!IsSharded)
        {
            Backend.Fill(Grads, 0);
            return;
        }
        foreach (var p in _parameters)
            if (p.HasGradient) Backend.Fill(p.Grad, 0);
    }
}
