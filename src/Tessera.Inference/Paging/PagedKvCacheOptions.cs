namespace Tessera.Inference.Paging;

/// <summary>Shape and size of a <see cref="PagedKvCache"/>.</summary>
public sealed record PagedKvCacheOptions
{
    /// <summary>Positions per block; default 16 (vLLM's default: small enough that a sequence wastes at most 15 slots,
    /// large enough that block-table lookups stay rare in the attention kernel).</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>Bytes of keys and values the pool may hold, over all layers; default 256 MiB. The block count is this
    /// divided by the bytes of one block (layers x BlockSize x 2K x D x element size).</summary>
    public long MemoryBytes { get; init; } = 256L << 20;

    /// <summary>Whether full blocks of identical prompt prefixes are shared between sequences (reference counted) and
    /// kept for reuse after their sequence ends, until their memory is needed; default true.</summary>
    public bool PrefixCaching { get; init; } = true;

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid field.</summary>
    public PagedKvCacheOptions Validate()
    {
        if (BlockSize <= 0 || BlockSize > 1024) throw new ArgumentException($"PagedKvCacheOptions.BlockSize ({BlockSize}) must lie in [1, 1024]");
        if (MemoryBytes <= 0) throw new ArgumentException($"PagedKvCacheOptions.MemoryBytes ({MemoryBytes}) must be positive");
        return this;
    }
}
