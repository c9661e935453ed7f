using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// A named trainable tensor and its gradient: both are views into a <see cref="ParameterArena"/>,
/// so a data-parallel all-reduce or a ZeRO shard is an offset and a length over the arena.
/// Names are Tessera's canonical ones (e.g. "blocks.3.attn.qkv.weight"); Hugging Face names are
/// mapped to them by the model's name map.
/// </summary>
public sealed class Parameter
{
    internal Parameter(string name, Shape shape, bool weightDecay, long offset)
    {
        Name = name;
        Shape = shape;
        WeightDecay = weightDecay;
        Offset = offset;
    }

    /// <summary>Canonical name.</summary>
    public string Name { get; }

    /// <summary>Shape of the value and the gradient.</summary>
    public Shape Shape { get; }

    /// <summary>Whether AdamW applies decoupled weight decay (true for matrices, false for norms and biases).</summary>
    public bool WeightDecay { get; }

    /// <summary>Element offset of this parameter inside the arena.</summary>
    public long Offset { get; }

    /// <summary>Number of elements.</summary>
    public long NumElements => Shape.NumElements;

    private Tensor? _value, _grad;

    /// <summary>
    /// The value: a view into the arena's value buffer, or (sharded arena, ZeRO-3) into the gathered buffer of the
    /// parameter's segment while it is resident. Throws while the parameter is not resident, so that no layer reads freed
    /// or stale memory: read the property at use, never keep the tensor.
    /// </summary>
    public Tensor Value
    {
        get => _value ?? throw new InvalidOperationException($"parameter '{Name}' is not resident: its arena is sharded (ZeRO-3) and its segment is not gathered; " +
            "gather the segment first (ShardedDataParallel runs the model's passes) and read Value at use, not from a kept tensor");
        internal set => _value = value;
    }

    /// <summary>The gradient: a view into the arena's gradient buffer, or (sharded arena) into its segment's gradient buffer during the segment's backward; throws otherwise.</summary>
    public Tensor Grad
    {
        get => _grad ?? throw new InvalidOperationException($"parameter '{Name}' has no gradient buffer bound: its arena is sharded (ZeRO-3) and the gradient exists only during its segment's backward " +
            "(the reduced gradient lives in the rank's gradient shard)");
        internal set => _grad = value;
    }

    /// <summary>Whether <see cref="Value"/> is bound (always once a full arena is built; while its segment is gathered for a sharded arena).</summary>
    public bool IsResident => _value is not null;

    /// <summary>Whether <see cref="Grad"/> is bound.</summary>
    public bool HasGradient => _grad is not null;

    internal void Unbind()
    {
        _value = null;
        _grad = null;
    }

    internal void UnbindGradient() => _grad = null;

    /// <summary>
    /// Mixed precision: the F32 master of the value, a view into <see cref="ParameterArena.Masters"/>; null when the
    /// arena computes in F32 or F64 (then <see cref="Value"/> is the master).
    /// </summary>
    public Tensor? Master { get; internal set; }

    /// <summary>
    /// Whether this parameter has an F32 master that is not on the arena's device (its arena released the masters for an
    /// offloaded optimizer, <see cref="ParameterArena.ReleaseMasters"/>): then <see cref="Master"/> is null and the low-precision
    /// <see cref="Value"/> is only a rounded copy, so <see cref="MasterOrValue"/> refuses.
    /// </summary>
    public bool MasterIsElsewhere { get; internal set; }

    /// <summary>
    /// The tensor that holds the authoritative value: <see cref="Master"/> when there is one, else <see cref="Value"/>.
    /// Throws when the master lives elsewhere (<see cref="MasterIsElsewhere"/>), so that initialization, loading or export
    /// never reads or writes the BF16 copy in the master's place.
    /// </summary>
    public Tensor MasterOrValue => Master ?? (MasterIsElsewhere
        ? throw new InvalidOperationException($"parameter '{Name}': its F32 master is not on the device (the optimizer is offloaded and holds it on the host); " +
            "initialize or load weights before creating the offloaded trainer, or go through the trainer (ShardedCheckpoint.Restore, DataParallelTrainer.GatherMastersToHost)")
        : Value);

    public override string ToString() => $"{Name} {Shape}";
}
