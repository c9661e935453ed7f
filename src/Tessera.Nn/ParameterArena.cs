using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// All parameters of a model in one contiguous value buffer and one contiguous gradient buffer
/// (llm.c's arena, Megatron's grad buffer). Parameters are declared first, then
/// <see cref="Build"/> allocates both buffers once and hands every parameter its views.
/// Each parameter starts at a multiple of <see cref="Alignment"/> elements so that vectorized
/// and GPU kernels see aligned rows.
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

    /// <summary>The value buffer (Length / Alignment, Alignment) once built.</summary>
    public Tensor Values { get; private set; } = null!;

    /// <summary>The gradient buffer (Length / Alignment, Alignment) once built.</summary>
    public Tensor Grads { get; private set; } = null!;

    /// <summary>Whether <see cref="Build"/> has run.</summary>
    public bool IsBuilt => Values is not null;

    /// <summary>
    /// Whether the arena gave up its F32 master copy (<see cref="ReleaseMasters"/>): the masters then live elsewhere (the
    /// host shard of an offloaded optimizer) and <see cref="Masters"/> is null although <see cref="MasterDType"/> differs from <see cref="DType"/>.
    /// </summary>
    public bool MastersReleased { get; private set; }

    /// <summary>Bytes of the buffers the arena holds on its backend now (values, gradients and masters that exist).</summary>
    public long AllocatedBytes => (Values?.Storage.ByteLength ?? 0) + (Grads?.Storage.ByteLength ?? 0) + (Masters?.Storage.ByteLength ?? 0);

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

    /// <summary>Allocates the buffers (values and gradients zeroed) and binds every parameter's views.</summary>
    public void Build()
    {
        if (IsBuilt) throw new InvalidOperationException("the arena is already built");
        // Shaped (rows, Alignment) so that arenas past 2^31 elements (Llama 8B) fit int dimensions.
        var shape = new Shape(checked((int)Math.Max(_length / Alignment, 1)), Alignment);
        Values = Backend.Zeros(shape, DType);
        Grads = Backend.Zeros(shape, DType);
        if (MasterDType != DType) Masters = Backend.Zeros(shape, MasterDType);
        foreach (var p in _parameters)
        {
            p.Value = Values.Narrow(p.Offset, p.Shape);
            p.Grad = Grads.Narrow(p.Offset, p.Shape);
            p.Master = Masters?.Narrow(p.Offset, p.Shape);
        }
    }

    /// <summary>
    /// Mixed precision: rewrites the low-precision <see cref="Values"/> from the F32 <see cref="Masters"/> (a cast over the
    /// whole arena, enqueued). Call after writing masters directly (initialization, loading); no-op without masters.
    /// </summary>
    public void SyncValuesFromMasters()
    {
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
        if (Masters is null) return;
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

    /// <summary>Sets every gradient to zero.</summary>
    public void ZeroGrad() => Backend.Fill(Grads, 0);
}
