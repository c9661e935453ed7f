using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// A named trainable tensor of a <see cref="ParameterLayout"/>: its canonical name (e.g. "blocks.3.attn.qkv.weight";
/// Hugging Face names map to it), its global shape and <see cref="Placement"/>, the local shape this rank holds, and its
/// offset in the layout's arena. The tensors themselves live in the <see cref="IParameterStorage"/> attached to the layout:
/// read <see cref="Value"/> and <see cref="Grad"/> at use, never keep them.
/// </summary>
public sealed class Parameter
{
    internal Parameter(int index, string name, Shape shape, Shape globalShape, Placement placement, bool weightDecay, long offset, int unit, int shardIndex, int shardCount)
    {
        Index = index;
        Name = name;
        Shape = shape;
        GlobalShape = globalShape;
        Placement = placement;
        WeightDecay = weightDecay;
        Offset = offset;
        Unit = unit;
        ShardIndex = shardIndex;
        ShardCount = shardCount;
    }

    /// <summary>Position in declaration order.</summary>
    public int Index { get; }

    /// <summary>Canonical name.</summary>
    public string Name { get; }

    /// <summary>Shape this rank holds (of the value and the gradient).</summary>
    public Shape Shape { get; }

    /// <summary>Shape of the whole tensor over all ranks (equal to <see cref="Shape"/> when replicated).</summary>
    public Shape GlobalShape { get; }

    /// <summary>How the global tensor is laid out over the ranks.</summary>
    public Placement Placement { get; }

    /// <summary>This rank's index along the placement's axis (0 when replicated).</summary>
    public int ShardIndex { get; }

    /// <summary>Ranks along the placement's axis (1 when replicated).</summary>
    public int ShardCount { get; }

    /// <summary>Whether AdamW applies decoupled weight decay (true for matrices, false for norms and biases).</summary>
    public bool WeightDecay { get; }

    /// <summary>Element offset inside the arena (of this rank's local tensor).</summary>
    public long Offset { get; }

    /// <summary>Index of the <see cref="ParameterUnit"/> the parameter belongs to.</summary>
    public int Unit { get; }

    /// <summary>Number of elements this rank holds.</summary>
    public long NumElements => Shape.NumElements;

    internal IParameterStorage? Storage { get; set; }

    private IParameterStorage Store => Storage ?? throw new InvalidOperationException(
        $"parameter '{Name}' has no storage: its model was declared without an arena (ArenaStorage.Deferred) and no trainer has attached its shards yet");

    /// <summary>The value; throws while the storage does not hold it (a ZeRO-3 unit that is not gathered).</summary>
    public Tensor Value => Store.Value(this);

    /// <summary>
    /// The weight as int8 or FP8 with row scales, or group-wise int4, when the storage keeps it so (an inference model loaded
    /// with <see cref="Quantization.WeightQuantization.Int8"/>, Fp8 or Int4; <see cref="Value"/> then throws), else null.
    /// </summary>
    public QuantizedWeight? Quantized => Storage?.Quantized(this);

    /// <summary>
    /// Gives the quantized weight (<see cref="Quantized"/>) an input order, stored column j holding input <c>order[j]</c> (GPTQ's
    /// activation order kept as stored; <see cref="QuantizedWeight.InputOrder"/>), or takes it away with null. The loader sets it
    /// with the stored columns it writes.
    /// </summary>
    /// <exception cref="InvalidOperationException">The weight is not held quantized.</exception>
    /// <exception cref="ArgumentException"><paramref name="order"/> is not a permutation of the weight's inputs.</exception>
    public void SetQuantizedInputOrder(int[]? order) => Store.SetQuantizedInputOrder(this, order);

    /// <summary>The dtype layers compute in with this parameter: its value's, or, for a quantized weight, the rest of the model's.</summary>
    public DType ComputeDType => Store.DType;

    /// <summary>The gradient; throws while no gradient buffer is bound.</summary>
    public Tensor Grad => Store.Grad(this);

    /// <summary>
    /// The F32 master of a 16-bit value, or null (the value is its own master, the master lives elsewhere, or it is split:
    /// <see cref="MasterWeights.Split"/> keeps no F32 tensor; use <see cref="ReadMasterOrValue{T}"/> and <see cref="WriteMasterOrValue"/>).
    /// </summary>
    public Tensor? Master => Store.Master(this);

    /// <summary>
    /// The authoritative value: the master when there is one, else the value; throws when the master lives elsewhere or is
    /// split (<see cref="MasterWeights.Split"/>), so that nothing reads or writes the BF16 value in the master's place.
    /// </summary>
    public Tensor MasterOrValue => Store.Authoritative(this);

    /// <summary>
    /// Calls <paramref name="read"/> with a tensor holding the authoritative value at master precision and returns its result:
    /// <see cref="MasterOrValue"/>, or under <see cref="MasterWeights.Split"/> a transient F32 master joined exactly. The
    /// tensor is valid during the call only (copy it to the host inside <paramref name="read"/>).
    /// </summary>
    public T ReadMasterOrValue<T>(Func<Tensor, T> read) => Store.ReadAuthoritative(this, read);

    /// <summary>
    /// Calls <paramref name="write"/> to fill the authoritative value at master precision, then makes <see cref="Value"/>
    /// follow it (cast from the F32 master, or split from a transient one under <see cref="MasterWeights.Split"/>).
    /// </summary>
    public void WriteMasterOrValue(Action<Tensor> write) => Store.WriteAuthoritative(this, write);

    /// <summary>Whether <see cref="Value"/> is available now.</summary>
    public bool IsResident => Storage?.IsResident(this) ?? false;

    /// <summary>Whether <see cref="Grad"/> is available now.</summary>
    public bool HasGradient => Storage?.HasGradient(this) ?? false;

    /// <summary>
    /// Whether the parameter is trained: false when its storage is frozen (<see cref="ArenaStorage.Frozen"/>, the base weights
    /// under LoRA), and then layers compute no gradient for it. Layers test this, not <see cref="HasGradient"/>, so that a
    /// ZeRO-3 gradient that is merely unbound still fails loudly.
    /// </summary>
    public bool RequiresGradient => Storage?.RequiresGradient(this) ?? true;

    /// <summary>
    /// The part of <paramref name="global"/> (the whole tensor, row-major over <see cref="GlobalShape"/>) this rank holds, in
    /// local row-major order: <paramref name="global"/> itself when the parameter is not split here.
    /// </summary>
    public T[] LocalValues<T>(T[] global)
    {
        ArgumentNullException.ThrowIfNull(global);
        if (global.Length != GlobalShape.NumElements)
            throw new ArgumentException($"parameter '{Name}': {global.Length} values for a global shape {GlobalShape} of {GlobalShape.NumElements} elements");
        if (Shape == GlobalShape) return global;
        var local = new T[NumElements];
        long at = 0;
        foreach (var (start, length) in Placement.Runs(GlobalShape, ShardIndex, ShardCount))
        {
            Array.Copy(global, start, local, at, length);
            at += length;
        }
        return local;
    }

    /// <summary>Writes this rank's <paramref name="local"/> values into their places of <paramref name="global"/> (row-major over <see cref="GlobalShape"/>).</summary>
    public void ScatterToGlobal<T>(ReadOnlySpan<T> local, Span<T> global) => Placement.ScatterToGlobal(GlobalShape, ShardIndex, ShardCount, local, global);

    /// <summary>
    /// The ranges (local start, length) of this rank's local tensor that it counts when a sum over the ranks of its
    /// placement's axis must see every global element once (the gradient norm): everything for a plain shard; for a part
    /// replicated over blocks of ranks (key/value heads), its rows on the first rank of each block only. A replicated
    /// parameter has no axis to tell its ranks apart: this returns all of it, and the caller lets one rank count it.
    /// </summary>
    public IReadOnlyList<(long Start, long Length)> CanonicalRanges()
    {
        if (Placement.IsReplicated) return [(0, NumElements)];
        var parts = Placement.Parts;
        if (parts.Count == 0 || parts.All(p => p.Replicas(ShardCount) == 1)) return [(0, NumElements)];
        if (Placement.Dim != 0)
            throw new NotSupportedException($"parameter '{Name}': replicated parts along dimension {Placement.Dim} (only dimension 0 is supported)");
        long inner = NumElements / Shape[0], offset = 0;
        var ranges = new List<(long, long)>();
        foreach (var p in parts)
        {
            long length = (long)p.LocalUnits(ShardCount) * p.UnitSize * inner;
            if (ShardIndex % p.Replicas(ShardCount) == 0) ranges.Add((offset, length));
            offset += length;
        }
        return ranges;
    }

    /// <inheritdoc/>
    public override string ToString() => Placement.IsReplicated ? $"{Name} {Shape}" : $"{Name} {Shape} of {GlobalShape}, {Placement}";
}
