using System.Runtime.InteropServices;

namespace Tessera.Tensors;

/// <summary>
/// The element types a paged KV pool may hold (<see cref="IBackend.PagedAppend"/>, <see cref="IBackend.MatMulRopePagedAppend"/>,
/// <see cref="IBackend.PagedAttention"/>) and the checks every backend applies to a pool and its scales. A pool holds the
/// compute dtype itself, or a one-byte code with a row scale (<see cref="IsQuantized"/>): I8 (int8 values) or F8E4M3 (OCP
/// E4M3 codes). Then each (position, head) row of D values is stored as D bytes with one F32 scale in a second tensor
/// (Blocks, BlockSize, 2K), written by the append (<see cref="QuantizeRow"/>: symmetric, scale = max|row| / 127 for I8 and
/// / 448 for F8E4M3, a zero row scale 0, a row that is not finite a NaN scale) and read by attention, which sees scale x
/// the code's value (<see cref="CodeValues"/>).
/// </summary>
public static class PagedKvPool
{
    private static readonly float[] Int8Values = Enumerable.Range(0, 256).Select(b => (float)(sbyte)(byte)b).ToArray();
    private static readonly float[] Fp8Values = Enumerable.Range(0, 256).Select(b => Float8E4M3.ToSingle((byte)b)).ToArray();

    /// <summary>Whether a pool of <paramref name="poolDType"/> holds one-byte codes with an F32 scale per (position, head):
    /// I8 or F8E4M3.</summary>
    public static bool IsQuantized(DType poolDType) => poolDType is DType.I8 or DType.F8E4M3;

    /// <summary>Bytes one (position, head) row of <paramref name="headSize"/> values takes in a pool of
    /// <paramref name="poolDType"/>: the values, and for a one-byte code its F32 scale.</summary>
    public static long RowBytes(DType poolDType, int headSize) =>
        (long)headSize * poolDType.SizeInBytes() + (IsQuantized(poolDType) ? sizeof(float) : 0);

    /// <summary>The shape of the scales of a quantized <paramref name="pool"/> (Blocks, BlockSize, R, D): (Blocks, BlockSize, R).</summary>
    public static Shape ScalesShape(Tensor pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        return new Shape(pool.Size(0), pool.Size(1), pool.Size(2));
    }

    /// <summary>
    /// Quantizes one (position, head) row into <paramref name="codes"/> (its length) as a pool of <paramref name="poolDType"/>
    /// stores it and returns the row's scale: I8 by <see cref="Int8Quantization.QuantizeRow"/> (x · (127 / max) rounded to
    /// nearest even), F8E4M3 by <see cref="Fp8Quantization.QuantizeKvRow"/> (e4m3(x / (max / 448))). Both give a row of zeros
    /// scale 0 and zero codes, a row with a value that is not finite a NaN scale and zero codes; the CUDA appends compute the
    /// same F32 operations, so both backends write the same bytes.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="poolDType"/> is not a one-byte code.</exception>
    public static float QuantizeRow(DType poolDType, ReadOnlySpan<float> row, Span<byte> codes) => poolDType switch
    {
        DType.I8 => Int8Quantization.QuantizeRow(row, MemoryMarshal.Cast<byte, sbyte>(codes)),
        DType.F8E4M3 => Fp8Quantization.QuantizeKvRow(row, codes),
        _ => throw new ArgumentException($"PagedKvPool.QuantizeRow: a {poolDType} pool holds no codes; quantized pools are I8 or F8E4M3", nameof(poolDType)),
    };

    /// <summary>What each of the 256 bytes of a pool of <paramref name="poolDType"/> stands for before its row's scale
    /// (indexed by the byte): the signed value for I8, <see cref="Float8E4M3.ToSingle"/> for F8E4M3 (exact in F32; the NaN
    /// codes NaN, which no append writes).</summary>
    /// <exception cref="ArgumentException"><paramref name="poolDType"/> is not a one-byte code.</exception>
    public static ReadOnlySpan<float> CodeValues(DType poolDType) => poolDType switch
    {
        DType.I8 => Int8Values,
        DType.F8E4M3 => Fp8Values,
        _ => throw new ArgumentException($"PagedKvPool.CodeValues: a {poolDType} pool holds no codes; quantized pools are I8 or F8E4M3", nameof(poolDType)),
    };

    /// <summary>
    /// Throws <see cref="ArgumentException"/> unless <paramref name="pool"/> (rank 4) holds <paramref name="computeDType"/>
    /// with no <paramref name="poolScales"/>, or a one-byte code (I8, F8E4M3) with contiguous F32 scales of shape (Blocks,
    /// BlockSize, R) on the pool's backend. <paramref name="op"/> names the operation in the message (e.g.
    /// "CpuBackend.PagedAttention").
    /// </summary>
    public static void Validate(string op, Tensor pool, Tensor? poolScales, DType computeDType)
    {
        ArgumentNullException.ThrowIfNull(pool);
        if (IsQuantized(pool.DType))
        {
            if (computeDType is not (DType.F32 or DType.F64 or DType.BF16 or DType.F16))
                throw new ArgumentException($"{op}: an {pool.DType} pool holds keys and values of a floating-point dtype, not {computeDType}", nameof(pool));
            if (poolScales is null)
                throw new ArgumentException($"{op}: pool {pool.Shape} is {pool.DType}, so poolScales (Blocks, BlockSize, 2K) F32 must be given: " +
                    "a quantized pool's codes mean nothing without their scales", nameof(poolScales));
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
            throw new ArgumentException($"{op}: pool is {pool.DType}, which has no scales; poolScales is only for an I8 or F8E4M3 pool", nameof(poolScales));
        if (pool.DType != computeDType)
            throw new ArgumentException($"{op}: pool is {pool.DType} but the keys and values are {computeDType}; a pool holds the compute dtype, I8 or F8E4M3", nameof(pool));
    }
}
