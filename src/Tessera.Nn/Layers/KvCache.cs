using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// Keys and values of the positions already processed, per layer, for incremental decoding:
/// K and V buffers (B, MaxSequence, K, D) per layer and the number of positions filled.
/// Every sequence of the batch has the same length (a dense cache; paging belongs to serving).
/// </summary>
public sealed class KvCache
{
    private readonly Tensor[] _keys, _values;

    /// <summary>Allocates the buffers on <paramref name="backend"/>.</summary>
    public KvCache(IBackend backend, DType dtype, int layers, int batch, int maxSequence, int kvHeads, int headSize)
    {
        if (layers <= 0 || batch <= 0 || maxSequence <= 0 || kvHeads <= 0 || headSize <= 0)
            throw new ArgumentException($"KvCache: layers ({layers}), batch ({batch}), maxSequence ({maxSequence}), kvHeads ({kvHeads}) and headSize ({headSize}) must be positive");
        Batch = batch;
        MaxSequence = maxSequence;
        KvHeads = kvHeads;
        HeadSize = headSize;
        _keys = new Tensor[layers];
        _values = new Tensor[layers];
        var shape = new Shape(batch, maxSequence, kvHeads, headSize);
        for (int l = 0; l < layers; l++)
        {
            _keys[l] = backend.Allocate(shape, dtype);
            _values[l] = backend.Allocate(shape, dtype);
        }
    }

    /// <summary>Number of layers.</summary>
    public int Layers => _keys.Length;

    /// <summary>Sequences B in the batch.</summary>
    public int Batch { get; }

    /// <summary>Positions the cache can hold.</summary>
    public int MaxSequence { get; }

    /// <summary>Key/value heads K.</summary>
    public int KvHeads { get; }

    /// <summary>Head size D.</summary>
    public int HeadSize { get; }

    /// <summary>Positions filled so far (the position of the next token).</summary>
    public int Length { get; private set; }

    /// <summary>Key buffer (B, MaxSequence, K, D) of <paramref name="layer"/>.</summary>
    public Tensor Keys(int layer) => _keys[layer];

    /// <summary>Value buffer (B, MaxSequence, K, D) of <paramref name="layer"/>.</summary>
    public Tensor Values(int layer) => _values[layer];

    /// <summary>Throws unless <paramref name="count"/> more positions fit.</summary>
    public void EnsureRoom(int count)
    {
        if (count < 0 || Length + count > MaxSequence)
            throw new ArgumentException($"KvCache: {count} new positions after {Length} cached exceed its capacity of {MaxSequence} positions; create a larger cache or start a new sequence");
    }

    /// <summary>Marks <paramref name="count"/> more positions as filled (after every layer has written them).</summary>
    public void Advance(int count)
    {
        EnsureRoom(count);
        Length += count;
    }

    /// <summary>Forgets positions from <paramref name="length"/> on (e.g. rejected speculative tokens).</summary>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length)
            throw new ArgumentOutOfRangeException(nameof(length), $"KvCache: cannot truncate to {length} positions, {Length} are cached");
        Length = length;
    }

    /// <summary>Empties the cache for a new sequence (the buffers are kept).</summary>
    public void Reset() => Length = 0;
}
