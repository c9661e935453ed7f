using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// Keys and values of the positions already processed, per layer, for incremental decoding. Each layer has one
/// buffer (B, MaxSequence, 2K, D): the K key heads, then the K value heads of every position, so one copy appends a
/// step's keys and values (they sit side by side in the fused QKV activation). The number of filled positions is kept
/// twice: <see cref="Length"/> on the host, for limits and errors, and <see cref="Positions"/> on the device, which
/// the kernels read, so a decode step recorded once (a CUDA graph) serves every position.
/// Every sequence of the batch has the same length (a dense cache; paging belongs to serving).
/// </summary>
public sealed class KvCache
{
    private readonly IBackend _backend;
    private readonly Tensor[] _keyValues;

    /// <summary>Allocates the buffers on <paramref name="backend"/>, empty.</summary>
    public KvCache(IBackend backend, DType dtype, int layers, int batch, int maxSequence, int kvHeads, int headSize)
    {
        ArgumentNullException.ThrowIfNull(backend);
        if (layers <= 0 || batch <= 0 || maxSequence <= 0 || kvHeads <= 0 || headSize <= 0)
            throw new ArgumentException($"KvCache: layers ({layers}), batch ({batch}), maxSequence ({maxSequence}), kvHeads ({kvHeads}) and headSize ({headSize}) must be positive");
        _backend = backend;
        Batch = batch;
        MaxSequence = maxSequence;
        KvHeads = kvHeads;
        HeadSize = headSize;
        _keyValues = new Tensor[layers];
        var shape = new Shape(batch, maxSequence, 2 * kvHeads, headSize);
        for (int l = 0; l < layers; l++) _keyValues[l] = backend.Allocate(shape, dtype);
        Positions = backend.Allocate(new Shape(batch), DType.I32);
        backend.Fill(Positions, 0);
    }

    /// <summary>Number of layers.</summary>
    public int Layers => _keyValues.Length;

    /// <summary>Sequences B in the batch.</summary>
    public int Batch { get; }

    /// <summary>Positions the cache can hold.</summary>
    public int MaxSequence { get; }

    /// <summary>Key/value heads K.</summary>
    public int KvHeads { get; }

    /// <summary>Head size D.</summary>
    public int HeadSize { get; }

    /// <summary>Positions filled so far (the position of the next token), as the host knows it.</summary>
    public int Length { get; private set; }

    /// <summary>(B) I32 on the cache's backend: the filled positions of each sequence, read by the kernels.</summary>
    public Tensor Positions { get; }

    /// <summary>Keys and values (B, MaxSequence, 2K, D) of <paramref name="layer"/>: key heads first, then value heads.</summary>
    public Tensor KeysAndValues(int layer) => _keyValues[layer];

    /// <summary>Key view (B, MaxSequence, K, D) of <paramref name="layer"/> (rows 2K·D apart).</summary>
    public Tensor Keys(int layer) => _keyValues[layer].Slice(2, 0, KvHeads);

    /// <summary>Value view (B, MaxSequence, K, D) of <paramref name="layer"/> (rows 2K·D apart).</summary>
    public Tensor Values(int layer) => _keyValues[layer].Slice(2, KvHeads, KvHeads);

    /// <summary>Throws unless <paramref name="count"/> more positions fit.</summary>
    public void EnsureRoom(int count)
    {
        if (count < 0 || Length + count > MaxSequence)
            throw new ArgumentException($"KvCache: {count} new positions after {Length} cached exceed its capacity of {MaxSequence} positions; create a larger cache or start a new sequence");
    }

    /// <summary>Marks <paramref name="count"/> more positions as filled (after every layer has written them), on the host and on the device.</summary>
    public void Advance(int count)
    {
        EnsureRoom(count);
        _backend.Increment(Positions, count);
        Length += count;
    }

    /// <summary>
    /// Host bookkeeping after replaying a recorded step that called <see cref="Advance"/>: the replay already advanced
    /// <see cref="Positions"/> on the device by <paramref name="count"/>.
    /// </summary>
    public void AdvanceReplayed(int count)
    {
        EnsureRoom(count);
        Length += count;
    }

    /// <summary>Forgets positions from <paramref name="length"/> on (e.g. rejected speculative tokens).</summary>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length)
            throw new ArgumentOutOfRangeException(nameof(length), $"KvCache: cannot truncate to {length} positions, {Length} are cached");
        _backend.Fill(Positions, length);
        Length = length;
    }

    /// <summary>Empties the cache for a new sequence (the buffers are kept).</summary>
    public void Reset() => Truncate(0);
}
