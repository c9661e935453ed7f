namespace Tessera.Cuda;

/// <summary>
/// The grid of one skinny product (skinny.cu): y (M, N) = x (M, K) W^T with 5 &lt;= M &lt;= 64, split along K into
/// <see cref="Slices"/> slices of <see cref="SliceColumns"/> columns, <see cref="CtasPerSlice"/> persistent CTAs a slice
/// walking the <see cref="RowBlocks"/> blocks of 64 rows of W. Chosen to keep every SM streaming W while the extra traffic
/// stays small: each CTA stages its slice of x once (P S slices of M x ks, from L2), and with S &gt; 1 every row block's
/// fp32 partials are written and read back once per slice (S M Npad floats, twice). A pure function of the shape and the SM
/// count, so it is checked without a GPU (<c>SkinnyProductPlanTests</c>).
/// </summary>
/// <param name="PaddedRows">M rounded up to the kernel variant: 8, 16, 32 or 64 (the kernel name's <c>_m</c> suffix).</param>
/// <param name="RowBlocks">Blocks of 64 rows of W: ceil(N / 64).</param>
/// <param name="Slices">Slices of K (gridDim.y); 1 means no partials and no counters.</param>
/// <param name="SliceColumns">Columns of K a slice (ks): a multiple of 128, at most 512.</param>
/// <param name="CtasPerSlice">Persistent CTAs a slice (gridDim.x), at most <see cref="RowBlocks"/>.</param>
internal readonly record struct SkinnyProductPlan(int PaddedRows, int RowBlocks, int Slices, int SliceColumns, int CtasPerSlice)
{
    /// <summary>Threads a CTA (4 warps of 16 rows of W each).</summary>
    public const int Threads = 128;

    /// <summary>Rows of x the kernel takes (fewer go to gemv.cu's matrix-vector kernels).</summary>
    public const int MinRows = 5, MaxRows = 64;

    /// <summary>The k granularity of a slice (4 k-blocks of 32 in flight) and the largest slice (shared memory).</summary>
    public const int SliceStep = 128, MaxSliceColumns = 512;

    /// <summary>Bytes of dynamic shared memory: the slice of x, rows padded by 32 elements (skinny.cu's SK_PAD).</summary>
    public int SharedBytes => PaddedRows * (SliceColumns + 32) * 2;

    /// <summary>fp32 partials (S, M padded, N padded to the row blocks) when <see cref="Slices"/> &gt; 1, else 0.</summary>
    public long PartialFloats => Slices > 1 ? (long)Slices * PaddedRows * RowBlocks * 64 : 0;

    /// <summary>The kernel variant's padded row count for <paramref name="m"/> rows of x.</summary>
    public static int PadRows(int m) => m <= 8 ? 8 : m <= 16 ? 16 : m <= 32 ? 32 : 64;

    /// <summary>
    /// The plan for x (<paramref name="m"/>, <paramref name="k"/>) W^T with W (<paramref name="n"/>, <paramref name="k"/>) on
    /// <paramref name="multiprocessors"/> SMs aiming at <paramref name="ctasPerSm"/> resident CTAs each: of the slicings with
    /// slices of at most 512 columns, the one with the least modeled time, (W bytes + extra bytes) / min(1, CTAs / target).
    /// </summary>
    public static SkinnyProductPlan For(int m, int n, int k, int multiprocessors, int ctasPerSm = 2)
    {
        if (m < MinRows || m > MaxRows) throw new ArgumentOutOfRangeException(nameof(m), m, $"a skinny product takes {MinRows} to {MaxRows} rows of x");
        if (n < 1 || k < 1 || multiprocessors < 1 || ctasPerSm < 1)
            throw new ArgumentException($"SkinnyProductPlan: N {n}, K {k}, {multiprocessors} SMs and {ctasPerSm} CTAs an SM must be positive");
        int mp = PadRows(m), rowBlocks = (n + 63) / 64;
        long target = (long)multiprocessors * ctasPerSm;
        double weightBytes = 2.0 * n * k;
        SkinnyProductPlan best = default;
        double bestCost = double.PositiveInfinity;
        for (int wanted = 1; wanted <= (k + SliceStep - 1) / SliceStep; wanted++)
        {
            int ks = (int)Math.Min(MaxSliceColumns, ((long)(k + wanted - 1) / wanted + SliceStep - 1) / SliceStep * SliceStep);
            int slices = (k + ks - 1) / ks;
            if (slices != wanted) continue;                       // the same slicing as a smaller count, or none
            int ctas = (int)Math.Min(rowBlocks, (target + slices - 1) / slices);
            double extra = (double)ctas * slices * mp * ks * 2                        // x slices staged
                + (slices > 1 ? 2.0 * 4 * slices * mp * rowBlocks * 64 : 0);         // partials written and read
            double cost = (weightBytes + extra) / Math.Min(1.0, (double)ctas * slices / target);
            if (cost < bestCost) { bestCost = cost; best = new SkinnyProductPlan(mp, rowBlocks, slices, ks, ctas); }
        }
        return best;
    }
}
