using Tessera.Tensors;

namespace Tessera.Inference.Paging;

/// <summary>
/// The keys and values of every sequence being served, in fixed-size blocks from one pool sized in bytes (vLLM's
/// PagedAttention): per layer one tensor (Blocks, BlockSize, 2K, D) holding, for each position, the K key heads then the
/// K value heads (the dense <c>KvCache</c>'s row layout, so the append is one row copy). Which blocks a sequence owns is
/// its block table, kept by the scheduler; <see cref="Allocator"/> counts references and caches full prefix blocks.
/// With <see cref="PagedKvCacheOptions.DType"/> I8 or F8E4M3 the pool holds a byte a value (int8 values or E4M3 codes) and
/// each layer has a second tensor of scales (Blocks, BlockSize, 2K) F32, one per position and head (<see cref="PagedKvPool"/>):
/// the append quantizes, attention dequantizes, and a block's bytes count both.
/// </summary>
public sealed class PagedKvCache : IDisposable
{
    private readonly Tensor[] _pools;
    private readonly Tensor[]? _scales;

    /// <summary>Allocates the pool on <paramref name="backend"/> for a model of <paramref name="dtype"/>, in
    /// <paramref name="options"/>' dtype (the model's by default): as many blocks as <paramref name="options"/>' bytes hold.</summary>
    /// <exception cref="ArgumentException">A dimension is not positive, the options' dtype is neither a one-byte code (I8,
    /// F8E4M3) nor the model's, or
    /// the memory holds no block.</exception>
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
        DType = options.PoolDType(dtype);
        BytesPerBlock = BlockBytes(DType, layers, kvHeads, headSize, BlockSize);
        long blocks = options.MemoryBytes / BytesPerBlock;
        if (blocks < 1)
            throw new ArgumentException($"PagedKvCache: {options.MemoryBytes:N0} bytes of KV memory hold no block of {BytesPerBlock:N0} bytes " +
                $"({layers} layers x {BlockSize} positions x {2 * kvHeads} heads x {PagedKvPool.RowBytes(DType, headSize)} B a head); give more memory");
        Blocks = (int)Math.Min(blocks, int.MaxValue / ((long)BlockSize * 2 * kvHeads * headSize));
        _pools = new Tensor[layers];
        _scales = PagedKvPool.IsQuantized(DType) ? new Tensor[layers] : null;
        for (int l = 0; l < layers; l++)
        {
            _pools[l] = backend.Allocate(new Shape(Blocks, BlockSize, 2 * kvHeads, headSize), DType);
            // Zero scales: a slot read before it is written (never, by the tables' construction) stands for zeros.
            if (_scales is not null) backend.Fill(_scales[l] = backend.Allocate(new Shape(Blocks, BlockSize, 2 * kvHeads), DType.F32), 0);
        }
        Allocator = new KvBlockAllocator(Blocks);
    }

    /// <summary>The pool's element type: the model's dtype, or I8 or F8E4M3 (then <see cref="Scales"/> gives each layer's scales).</summary>
    public DType DType { get; }

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

    /// <summary>Layer <paramref name="layer"/>'s scales (Blocks, BlockSize, 2K) F32 for an I8 or F8E4M3 pool; null otherwise. The
    /// operand <c>poolScales</c> of the paged ops.</summary>
    public Tensor? Scales(int layer) => _scales?[layer];

    /// <summary>Bytes of one block in a pool of <paramref name="poolDType"/>: layers x blockSize positions x 2K heads x
    /// (D x the element size, plus the F32 scale of an I8 or F8E4M3 row).</summary>
    public static long BlockBytes(DType poolDType, int layers, int kvHeads, int headSize, int blockSize) =>
        (long)layers * blockSize * 2 * kvHeads * PagedKvPool.RowBytes(poolDType, headSize);

    public void Dispose()
    {
        foreach (var pool in _pools) pool.Storage.Dispose();
        if (_scales is not null) foreach (var scales in _scales) scales.Storage.Dispose();
    }
}
