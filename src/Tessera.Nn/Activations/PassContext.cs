using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// What a layer's forward or backward call needs to know about the pass it runs in: the
/// <see cref="ActivationStore"/>, the slot its buffers and saved tensors belong to, and whether to
/// save for backward. Layers get their output buffers from <see cref="Buffer"/>, their
/// activation-gradient buffers from <see cref="Scratch"/>, and keep tensors with
/// <see cref="Save"/> / <see cref="Get"/>.
/// <para>
/// In shared slots (inference, recomputation, gradients) a key such as "blocks.3.attn.qkv.out" is
/// reduced to its <see cref="ActivationKey.Role"/> "attn.qkv.out", so all blocks reuse one set of buffers: block i's buffers
/// are dead once block i+1 runs (a block reads its input before it overwrites a buffer of the same role).
/// </para>
/// </summary>
public readonly struct PassContext
{
    /// <summary>Creates a context; prefer <see cref="Training"/>, <see cref="Transient"/> or <see cref="Recompute"/>.</summary>
    public PassContext(ActivationStore store, int slot, bool saveForBackward)
    {
        ArgumentNullException.ThrowIfNull(store);
        Store = store;
        Slot = slot;
        SaveForBackward = saveForBackward;
    }

    /// <summary>
    /// This context for a batch of <paramref name="sequences"/> sequences of <paramref name="sequenceLength"/> tokens: what
    /// a layer that sees only rows of the residual stream (sequence parallelism splits them over ranks) needs to rebuild
    /// (B, T) once it has gathered them.
    /// </summary>
    public PassContext WithBatch(int sequences, int sequenceLength)
    {
        if (sequences <= 0 || sequenceLength <= 0)
            throw new ArgumentOutOfRangeException(nameof(sequences), $"pass context: a batch of {sequences} x {sequenceLength} tokens must be positive");
        return new PassContext(Store, Slot, SaveForBackward) { Sequences = sequences, SequenceLength = sequenceLength };
    }

    /// <summary>Sequences B of the pass's batch, or 0 when the caller did not say (<see cref="WithBatch"/>).</summary>
    public int Sequences { get; private init; }

    /// <summary>Tokens T per sequence of the pass's batch, or 0 when the caller did not say.</summary>
    public int SequenceLength { get; private init; }

    /// <summary>A context of the same batch in <paramref name="other"/>'s store slot and saving mode (the batch travels into recomputation).</summary>
    public PassContext Carrying(PassContext other) => Sequences > 0 ? other.WithBatch(Sequences, SequenceLength) : other;

    /// <summary>A training pass of micro-batch <paramref name="microBatch"/>: own buffers, saves for backward.</summary>
    public static PassContext Training(ActivationStore store, int microBatch)
    {
        if (microBatch < 0) throw new ArgumentOutOfRangeException(nameof(microBatch), $"micro-batch id {microBatch} must be non-negative");
        return new PassContext(store, microBatch, saveForBackward: true);
    }

    /// <summary>A forward pass that saves nothing (inference, or a checkpointed block's first forward); shared buffers.</summary>
    public static PassContext Transient(ActivationStore store) => new(store, ActivationStore.TransientSlot, saveForBackward: false);

    /// <summary>The forward and backward of a checkpointed block at backward time: shared buffers, saves for the backward that follows.</summary>
    public static PassContext Recompute(ActivationStore store) => new(store, ActivationStore.RecomputeSlot, saveForBackward: true);

    /// <summary>The store.</summary>
    public ActivationStore Store { get; }

    /// <summary>Slot of the buffers and saved tensors: a micro-batch id or a reserved shared slot.</summary>
    public int Slot { get; }

    /// <summary>Whether forward calls keep what backward needs.</summary>
    public bool SaveForBackward { get; }

    /// <summary>Whether <see cref="Slot"/> is shared by all blocks (keys reduce to their role).</summary>
    public bool IsShared => Slot < 0;

    /// <summary>The pooled output buffer for <paramref name="key"/> in this pass.</summary>
    public Tensor Buffer(ActivationKey key, Shape shape, DType dtype) => Store.Buffer(Slot, KeyFor(key), shape, dtype);

    /// <summary>A pooled activation-gradient buffer for <paramref name="key"/>, shared by every pass (it lives only during one backward call).</summary>
    public Tensor Scratch(ActivationKey key, Shape shape, DType dtype) => Store.Buffer(ActivationStore.GradientSlot, key.Role, shape, dtype);

    /// <summary>Saves <paramref name="tensor"/> for backward when <see cref="SaveForBackward"/>; otherwise does nothing.</summary>
    public void Save(ActivationKey key, Tensor tensor)
    {
        if (SaveForBackward) Store.Save(Slot, KeyFor(key), tensor);
    }

    /// <summary>The tensor saved under <paramref name="key"/> in this pass.</summary>
    public Tensor Get(ActivationKey key) => Store.Get(Slot, KeyFor(key));

    private string KeyFor(ActivationKey key) => IsShared ? key.Role : key.Name;
}
