using Tessera.Tensors;

namespace Tessera.Nn;

/// <summary>
/// Where layers keep what their backward pass needs, keyed by micro-batch, so that a pipeline
/// schedule can hold several micro-batches in flight and run their forward and backward passes
/// in any interleaving. It also owns the buffers those tensors live in: a buffer is allocated the
/// first time a (slot, key) asks for it and reused by every later step (it grows when a larger
/// shape asks), so the steady state allocates nothing.
/// <para>
/// Slots: a micro-batch id (0, 1, ...) holds that micro-batch's saved activations. Three
/// reserved slots are shared by everything that does not outlive one call:
/// <see cref="TransientSlot"/> (forward passes that save nothing: inference, recomputation's
/// first forward), <see cref="RecomputeSlot"/> (activations recomputed at the start of a block's
/// backward) and <see cref="GradientSlot"/> (activation gradients during backward).
/// </para>
/// </summary>
public sealed class ActivationStore
{
    /// <summary>Shared slot for forward passes that save nothing.</summary>
    public const int TransientSlot = -1;

    /// <summary>Shared slot for activations a block recomputes at the start of its backward.</summary>
    public const int RecomputeSlot = -2;

    /// <summary>Shared slot for activation gradients, which live only during one backward call.</summary>
    public const int GradientSlot = -3;

    private readonly Dictionary<(int Slot, string Key), Tensor> _buffers = new();
    private readonly Dictionary<(int Slot, string Key), Tensor> _saved = new();

    /// <summary>Creates an empty store whose buffers live on <paramref name="backend"/>.</summary>
    public ActivationStore(IBackend backend)
    {
        Backend = backend;
    }

    /// <summary>The backend that allocates the buffers.</summary>
    public IBackend Backend { get; }

    /// <summary>Total elements held by the pooled buffers (all slots, all dtypes).</summary>
    public long BufferedElements => _buffers.Values.Sum(t => t.NumElements);

    /// <summary>
    /// Bytes of the pooled buffers of the slots <paramref name="slots"/> selects (slot &gt;= 0: the micro-batch slots, what a
    /// pipeline schedule's micro-batches in flight hold; the shared slots are the same whatever the schedule).
    /// </summary>
    public long BufferedBytes(Func<int, bool> slots)
    {
        ArgumentNullException.ThrowIfNull(slots);
        return _buffers.Where(b => slots(b.Key.Slot)).Sum(b => b.Value.NumElements * b.Value.DType.SizeInBytes());
    }

    /// <summary>Number of tensors currently saved for <paramref name="slot"/>.</summary>
    public int SavedCount(int slot) => _saved.Keys.Count(k => k.Slot == slot);

    /// <summary>
    /// A contiguous buffer of <paramref name="shape"/> for (<paramref name="slot"/>, <paramref name="key"/>):
    /// the same memory on every call with that slot and key (a view of its first elements when the
    /// shape is smaller than the largest seen). Contents are whatever the last user left.
    /// </summary>
    public Tensor Buffer(int slot, string key, Shape shape, DType dtype)
    {
        CheckSlot(slot);
        if (_buffers.TryGetValue((slot, key), out var buffer) && buffer.DType == dtype && buffer.NumElements >= shape.NumElements)
            return buffer.NumElements == shape.NumElements && buffer.Shape == shape ? buffer : buffer.Narrow(0, shape);
        if (shape.NumElements > int.MaxValue)
            throw new ArgumentException(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"activation '{key}' of shape {shape} has {shape.NumElements:N0} elements, more than one buffer holds ({int.MaxValue:N0}); ") +
                "use smaller micro-batches (--micro) or a shorter sequence");
        buffer = Backend.Allocate(new Shape((int)Math.Max(shape.NumElements, 1)), dtype);
        _buffers[(slot, key)] = buffer;
        return buffer.Narrow(0, shape);
    }

    /// <summary>Keeps <paramref name="tensor"/> for the backward pass of <paramref name="slot"/> (replacing any earlier one under that key).</summary>
    public void Save(int slot, string key, Tensor tensor)
    {
        CheckSlot(slot);
        ArgumentNullException.ThrowIfNull(tensor);
        _saved[(slot, key)] = tensor;
    }

    /// <summary>The tensor saved under <paramref name="key"/> for <paramref name="slot"/>.</summary>
    public Tensor Get(int slot, string key) =>
        _saved.TryGetValue((slot, key), out var t)
            ? t
            : throw new InvalidOperationException(
                $"no activation '{key}' saved for {SlotName(slot)}: run its forward pass (with saving) before its backward pass, and do not release it in between");

    /// <summary>Whether a tensor is saved under <paramref name="key"/> for <paramref name="slot"/>.</summary>
    public bool Contains(int slot, string key) => _saved.ContainsKey((slot, key));

    /// <summary>Forgets the tensor saved under <paramref name="key"/> for <paramref name="slot"/>, if any.</summary>
    public void Remove(int slot, string key) => _saved.Remove((slot, key));

    /// <summary>Forgets every tensor saved for <paramref name="slot"/>; its buffers stay pooled for the next step.</summary>
    public void Release(int slot)
    {
        CheckSlot(slot);
        var keys = _saved.Keys.Where(k => k.Slot == slot).ToList();
        foreach (var k in keys) _saved.Remove(k);
    }

    /// <summary>Frees nothing but drops every pooled buffer and saved tensor (e.g. after the shapes changed for good).</summary>
    public void Clear()
    {
        _saved.Clear();
        _buffers.Clear();
    }

    private static void CheckSlot(int slot)
    {
        if (slot < GradientSlot)
            throw new ArgumentOutOfRangeException(nameof(slot), $"slot {slot}: use a micro-batch id (>= 0) or one of the reserved slots");
    }

    private static string SlotName(int slot) => slot switch
    {
        TransientSlot => "the transient slot",
        RecomputeSlot => "the recompute slot",
        GradientSlot => "the gradient slot",
        _ => $"micro-batch {slot}",
    };
}
