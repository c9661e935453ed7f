using Tessera.Tensors;

namespace Tessera.Inference.Paging;

/// <summary>Shape and size of a <see cref="PagedKvCache"/>.</summary>
public sealed record PagedKvCacheOptions
{
    /// <summary>Positions per block; default 16 (vLLM's default: small enough that a sequence wastes at most 15 slots,
    /// large enough that block-table lookups stay rare in the attention kernel).</summary>
    public int BlockSize { get; init; } = 16;

    /// <summary>Bytes of keys and values the pool may hold, over all layers; default 256 MiB. The block count is this
    /// divided by the bytes of one block (layers x BlockSize x 2K x (D x element size, plus a 4-byte scale for I8 and
    /// F8E4M3)).</summary>
    public long MemoryBytes { get; init; } = 256L << 20;

    /// <summary>
    /// What the pool holds: null (the default) the model's dtype; <see cref="Tensors.DType.I8"/> (int8 values) or
    /// <see cref="Tensors.DType.F8E4M3"/> (OCP E4M3 codes), a byte a value with one F32 scale per position and head
    /// (<see cref="PagedKvPool"/>: quantized as keys and values are appended, dequantized by attention), about 1.9x the
    /// positions in the same bytes at head size 64 against BF16 (3.8x against F32). Another dtype is accepted only when it
    /// is the model's (<c>--kv-dtype</c> on <c>tessera serve</c> and the serving bench).
    /// </summary>
    public DType? DType { get; init; }

    /// <summary>Whether full blocks of identical prompt prefixes are shared between sequences (reference counted) and
    /// kept for reuse after their sequence ends, until their memory is needed; default true.</summary>
    public bool PrefixCaching { get; init; } = true;

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid field.</summary>
    public PagedKvCacheOptions Validate()
    {
        if (BlockSize <= 0 || BlockSize > 1024) throw new ArgumentException($"PagedKvCacheOptions.BlockSize ({BlockSize}) must lie in [1, 1024]");
        if (MemoryBytes <= 0) throw new ArgumentException($"PagedKvCacheOptions.MemoryBytes ({MemoryBytes}) must be positive");
        if (DType is { } d && d is not (Tensors.DType.I8 or Tensors.DType.F8E4M3 or Tensors.DType.F32 or Tensors.DType.F64 or Tensors.DType.BF16 or Tensors.DType.F16))
            throw new ArgumentException($"PagedKvCacheOptions.DType ({d}) must be null (the model's dtype), I8, F8E4M3, or the model's own floating-point dtype");
        return this;
    }

    /// <summary>The pool's element type for a model of <paramref name="modelDType"/>: <see cref="DType"/>, or the model's.</summary>
    /// <exception cref="ArgumentException"><see cref="DType"/> is neither a one-byte code (I8, F8E4M3) nor <paramref name="modelDType"/>.</exception>
    public DType PoolDType(DType modelDType)
    {
        var d = DType ?? modelDType;
        if (!PagedKvPool.IsQuantized(d) && d != modelDType)
            throw new ArgumentException($"PagedKvCacheOptions.DType ({d}) must be I8, F8E4M3 or the model's dtype ({modelDType}): attention reads the pool in the model's dtype");
        return d;
    }
}
