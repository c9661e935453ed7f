using Tessera.Tensors;

namespace Tessera.Inference.Paging;

/// <summary>
/// The keys and values of every sequence being served, in fixed-size blocks from one pool sized in bytes (vLLM's
/// PagedAttention): per layer one tensor (Blocks, BlockSize, 2K, D) holding, for each position, the K key heads then the
/// K value heads (the dense <c>KvCache</c>'s row layout, so the append is one row copy). Which blocks a sequence owns is
/// its block table, kept by the scheduler; <see cref="Allocator"/> counts references and caches full prefix blocks.
/// </summary>
public sealed class PagedKvCache : IDisposable
{
    private readonly Tensor[] _pools;

    /// <summary>Allocates the pool on <paramref name="backend"/>: as many blocks as <paramref name="options"/>' bytes hold.</summary>
    /// <exception cref="ArgumentException">A dimension is not positive, or the memory holds no block.</exception>
    public PagedKvCache(IBackend backend, DType dtype, int layers, int kvHeads, int headSize, PagedKvCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (layers <= 0 || kvHeads <= 0 || headSize <= 0)
            throw new ArgumentException($"PagedKvCache: layers ({layers}), kvHeads ({kvHeads}) and headSize ({headSize}) must be positive");
        Options = options;
        BlockSize = options.BlockSize;
        KvHeads = kvHeads;
        HeadSize = headSize;
        BytesPerBlock = BlockBytes(dtype, layers, kvHeads, headSize, BlockSize);
        long blocks = options.MemoryBytes / BytesPerBlock;
        if (blocks < 1)
            throw new ArgumentException($"PagedKvCache: {options.MemoryBytes:N0} bytes of KV memory hold no block of {BytesPerBlock:N0} bytes " +
                $"({layers} layers x {BlockSize} positions x {2 * kvHeads} heads x {headSize} x {dtype.SizeInBytes()} B); give more memory");
        Blocks = (int)Math.Min(blocks, int.MaxValue / ((long)BlockSize * 2 * kvHeads * headSize));
        _pools = new Tensor[layers];
        for (int l = 0; l < layers; l++) _pools[l] = backend.Allocate(new Shape(Blocks, BlockSize, 2 * kvHeads, headSize), dtype);
        Allocator = new KvBlockAllocator(Blocks);
    }

    /// <summary>The options it was built with.</summary>
    public PagedKvCacheOptions Options { get; }

    /// <summary>Number of layers.</summary>
    public int Layers => _pools.Length;

    /// <summary>Blocks in the pool.</summary>
    public int Blocks { get; }

    /// <summary>Positions per block.</summary>
    public int BlockSize { get; }

    /// <summary>Key/value heads K.</summary>
    public int KvHeads { get; }

    /// <summary>Head size D.</summary>
    public int HeadSize { get; }

    /// <summary>Bytes of one block over all layers.</summary>
    public long BytesPerBlock { get; }

    /// <summary>Reference counts and the prefix cache of the blocks.</summary>
    public KvBlockAllocator Allocator { get; }

    /// <summary>Layer <paramref name="layer"/>'s pool (Blocks, BlockSize, 2K, D): key heads then value heads per position.</summary>
    public Tensor Pool(int layer) => _pools[layer];

    /// <summary>Bytes of one block: layers x blockSize positions x 2K heads x D x the element size.</summary>
    public static long BlockBytes(DType dtype, int layers, int kvHeads, int headSize, int blockSize) =>
        (long)layers * blockSize * 2 * kvHeads * headSize * dtype.SizeInBytes();

    public void Dispose()
    {
        foreach (var pool in _pools) pool.Storage.Dispose();
    }
}
