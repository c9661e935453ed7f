namespace Tessera.Tensors;

/// <summary>
/// The element types a paged KV pool may hold (<see cref="IBackend.PagedAppend"/>, <see cref="IBackend.MatMulRopePagedAppend"/>,
/// <see cref="IBackend.PagedAttention"/>) and the checks every backend applies to a pool and its scales. A pool holds the
/// compute dtype itself, or I8: then each (position, head) row of D values is stored as signed bytes with one F32 scale in
/// a second tensor (Blocks, BlockSize, 2K), written by the append (<see cref="Int8Quantization.QuantizeRow"/>: symmetric,
/// scale = max|row| / 127, a zero row scale 0) and read by attention, which sees scale x value.
/// </summary>
public static class PagedKvPool
{
    /// <summary>Bytes one (position, head) row of <paramref name="headSize"/> values takes in a pool of
    /// <paramref name="poolDType"/>: the values, and for I8 its F32 scale.</summary>
    public static long RowBytes(DType poolDType, int headSize) =>
        (long)headSize * poolDType.SizeInBytes() + (poolDType == DType.I8 ? sizeof(float) : 0);

    /// <summary>The shape of the scales of an I8 <paramref name="pool"/> (Blocks, BlockSize, R, D): (Blocks, BlockSize, R).</summary>
    public static Shape ScalesShape(Tensor pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        return new Shape(pool.Size(0), pool.Size(1), pool.Size(2));
    }

    /// <summary>
    /// Throws <see cref="ArgumentException"/> unless <paramref name="pool"/> (rank 4) holds <paramref name="computeDType"/>
    /// with no <paramref name="poolScales"/>, or I8 with contiguous F32 scales of shape (Blocks, BlockSize, R) on the pool's
    /// backend. <paramref name="op"/> names the operation in the message (e.g. "CpuBackend.PagedAttention").
    /// </summary>
    public static void Validate(string op, Tensor pool, Tensor? poolScales, DType computeDType)
    {
        ArgumentNullException.ThrowIfNull(pool);
        if (pool.DType == DType.I8)
        {
            if (computeDType is not (DType.F32 or DType.F64 or DType.BF16 or DType.F16))
                throw new ArgumentException($"{op}: an I8 pool holds keys and values of a floating-point dtype, not {computeDType}", nameof(pool));
            if (poolScales is null)
                throw new ArgumentException($"{op}: pool {pool.Shape} is I8, so poolScales (Blocks, BlockSize, 2K) F32 must be given: " +
                    "an int8 pool's values mean nothing without their scales", nameof(poolScales));
            if (pool.Rank != 4)
                throw new ArgumentException($"{op}: pool {pool.Shape} must be (Blocks, BlockSize, 2K, D)", nameof(pool));
            var expected = ScalesShape(pool);
            if (poolScales.DType != DType.F32 || poolScales.Shape != expected || !poolScales.IsContiguous)
                throw new ArgumentException($"{op}: poolScales must be a contiguous {expected} F32 tensor, one scale per position and head of pool {pool.Shape}, " +
                    $"got {poolScales.DType} {poolScales.Shape}{(poolScales.IsContiguous ? "" : " (not contiguous)")}", nameof(poolScales));
            if (!ReferenceEquals(poolScales.Storage.Backend, pool.Storage.Backend))
                throw new ArgumentException($"{op}: poolScales and pool live on different backends", nameof(poolScales));
            return;
        }
        if (poolScales is not null)
            throw new ArgumentException($"{op}: pool is {pool.DType}, which has no scales; poolScales is only for an I8 pool", nameof(poolScales));
        if (pool.DType != computeDType)
            throw new ArgumentException($"{op}: pool is {pool.DType} but the keys and values are {computeDType}; a pool holds the compute dtype or I8", nameof(pool));
    }
}
