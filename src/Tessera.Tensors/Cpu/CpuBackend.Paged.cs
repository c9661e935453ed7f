namespace Tessera.Tensors.Cpu;

// Paged KV-cache ops, the reference the GPU kernels are tested against: the append copies rows to their slots, and
// attention gathers each sequence's cached positions out of its blocks into contiguous keys and values, then runs the
// dense causal attention on them, so paged attention is exactly AttentionForward over the same positions. With a sliding
// window it gathers from the first block that the window of the sequence's first row reaches (the blocks before it may be
// back in the pool): the same attention on keys shifted by a whole number of blocks, which the window rule does not see.
// A quantized pool (PagedKvPool: I8 or F8E4M3 codes with a scale per position and head) is quantized on the append, a
// (position, head) row at a time, and dequantized as it is gathered, so attention over it is exactly AttentionForward over
// what its codes stand for.
public sealed unsafe partial class CpuBackend
{
    public void PagedAppend(Tensor keysAndValues, Tensor pool, PagedBatch batch, Tensor? poolScales = null)
    {
        const string op = nameof(PagedAppend);
        ArgumentNullException.ThrowIfNull(keysAndValues); ArgumentNullException.ThrowIfNull(pool);
        batch.Validate(op);
        RequireRank(op, nameof(keysAndValues), keysAndValues, 3, "(N,R,D)");
        RequireRank(op, nameof(pool), pool, 4, "(Blocks,BlockSize,R,D)");
        RequireContiguous(op, nameof(pool), pool);
        RequireUnitLastStride(op, nameof(keysAndValues), keysAndValues);
        PagedKvPool.Validate(op, pool, poolScales, keysAndValues.DType);
        int n = keysAndValues.Size(0), r = keysAndValues.Size(1), d = keysAndValues.Size(2);
        if (pool.Size(1) != batch.BlockSize || pool.Size(2) != r || pool.Size(3) != d)
            throw new ArgumentException($"{op}: pool {pool.Shape} must be (Blocks, {batch.BlockSize}, {r}, {d}) for keysAndValues {keysAndValues.Shape}", nameof(pool));
        if (batch.Rows != n)
            throw new ArgumentException($"{op}: PagedBatch.Slots has {batch.Rows} rows but keysAndValues {keysAndValues.Shape} has {n}", nameof(batch));
        long slotCount = (long)pool.Size(0) * batch.BlockSize;
        int* slots = Ptr<int>(batch.Slots);
        int size = keysAndValues.DType.SizeInBytes();
        bool rowsContiguous = keysAndValues.Stride(1) == d || r == 1;
        var flat = pool.Reshape((int)slotCount, r, d);
        bool quantized = PagedKvPool.IsQuantized(pool.DType);
        var row = quantized ? new float[d] : null;
        for (int i = 0; i < n; i++)
        {
            int slot = slots[i];
            if (slot < 0) continue;
            if (slot >= slotCount)
                throw new ArgumentException($"{op}: PagedBatch.Slots[{i}] = {slot} is beyond the pool's {slotCount} slots ({pool.Size(0)} blocks of {batch.BlockSize})", nameof(batch));
            var source = keysAndValues.Select(0, i);
            var destination = flat.Select(0, slot);
            if (quantized)
            {
                // Each (position, head) row: its scale and its codes, in F32 (PagedKvPool.QuantizeRow).
                float* scales = Ptr<float>(poolScales!) + (long)slot * r;
                byte* codes = BytePtr(destination);
                for (int j = 0; j < r; j++)
                {
                    ReadRow(source.Select(0, j), row!);
                    scales[j] = PagedKvPool.QuantizeRow(pool.DType, row, new Span<byte>(codes + (long)j * d, d));
                }
            }
            else if (rowsContiguous) Buffer.MemoryCopy(BytePtr(source), BytePtr(destination), (long)r * d * size, (long)r * d * size);
            else Copy(source, destination);
        }
        KeepOperandsAlive(batch, keysAndValues, pool, poolScales);
    }

    /// <summary>A contiguous (D) row of a compute dtype as F32 (F64 rounded once, as the GPU's F32 quantization sees it).</summary>
    private static void ReadRow(Tensor source, float[] row)
    {
        byte* p = BytePtr(source);
        switch (source.DType)
        {
            case DType.F32: for (int c = 0; c < row.Length; c++) row[c] = ((float*)p)[c]; break;
            case DType.F64: for (int c = 0; c < row.Length; c++) row[c] = (float)((double*)p)[c]; break;
            case DType.BF16: for (int c = 0; c < row.Length; c++) row[c] = ((BFloat16*)p)[c].ToSingle(); break;
            default: throw new ArgumentException($"PagedAppend: a quantized pool (I8, F8E4M3) quantizes F32, F64 or BF16 keys and values, not {source.DType}", "keysAndValues");
        }
    }

    /// <summary>
    /// Rows [from, from + count) of a quantized pool's block, heads [head, head + k), dequantized into <paramref name="target"/>
    /// (count, k, D) of the CPU's compute dtype (PagedAttention has checked it): scale x the code's value (an int8 value or an
    /// E4M3 value, at most 8 significant bits), exact in F64, rounded once in F32.
    /// </summary>
    private void GatherDequantized(Tensor pool, Tensor scales, int block, int count, int head, int k, Tensor target)
    {
        int r = pool.Size(2), d = pool.Size(3), bs = pool.Size(1);
        var value = PagedKvPool.CodeValues(pool.DType);
        byte* codes = BytePtr(pool);
        float* s = Ptr<float>(scales);
        byte* o = BytePtr(target);
        var dtype = target.DType;
        for (int p = 0; p < count; p++)
            for (int j = 0; j < k; j++)
            {
                long row = ((long)block * bs + p) * r + head + j;
                double scale = s[row];
                byte* q = codes + row * d;
                long at = ((long)p * k + j) * d;
                switch (dtype)
                {
                    case DType.F64: for (int c = 0; c < d; c++) ((double*)o)[at + c] = scale * value[q[c]]; break;
                    case DType.F32: for (int c = 0; c < d; c++) ((float*)o)[at + c] = (float)(scale * value[q[c]]); break;
                    default: throw new ArgumentException($"PagedAttention: the CPU dequantizes a {pool.DType} pool into F32 or F64, not {dtype}");
                }
            }
    }

    public void MatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, Tensor weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null)
    {
        ArgumentNullException.ThrowIfNull(weight);
        var flat = PagedQkvRows(nameof(MatMulRopePagedAppend), x, weight.Shape, qkv, queryHeads, pool, positions, poolScales);
        if (norm is { } r) RmsNormMatMul(x, r, weight, flat, bias);
        else MatMul(x, weight, flat, transposeB: true, bias: bias);
        RopePagedAppend(qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
        KeepOperandsAlive(x, norm?.Weight, weight, bias);
    }

    /// <inheritdoc/>
    /// <remarks>The composition: <see cref="QuantizedMatMul"/> into qkv's rows, then <see cref="RopePagedAppend"/>.</remarks>
    public void QuantizedMatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null)
    {
        ArgumentNullException.ThrowIfNull(weight);
        var flat = PagedQkvRows(nameof(QuantizedMatMulRopePagedAppend), x, weight.Shape, qkv, queryHeads, pool, positions, poolScales);
        QuantizedMatMul(x, weight, flat, bias: bias, norm: norm);
        RopePagedAppend(qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
        KeepOperandsAlive(x, norm?.Weight, bias);
    }

    /// <summary>qkv (N, H+2K, D) checked as <see cref="RopePagedAppend"/> takes it, as the (N, (H+2K)·D) rows of x (N, C) times a weight of <paramref name="weight"/>'s shape.</summary>
    private static Tensor PagedQkvRows(string op, Tensor x, Shape weight, Tensor qkv, int queryHeads, Tensor pool, Tensor positions, Tensor? poolScales)
    {
        ArgumentNullException.ThrowIfNull(x);
        ValidateRopePagedAppend(op, qkv, queryHeads, pool, positions, poolScales);
        int n = qkv.Size(0);
        if (x.Rank != 2 || x.Size(0) != n || (long)qkv.Size(1) * qkv.Size(2) != weight[0])
            throw new ArgumentException($"{op}: x {x.Shape}, weight {weight} and qkv {qkv.Shape} do not fit (N, C), ((H+2K)·D, C), (N, H+2K, D)");
        return qkv.Reshape(n, weight[0]);
    }

    public void RopePagedAppend(Tensor qkv, int queryHeads, Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies,
        Tensor? poolScales = null)
    {
        ValidateRopePagedAppend(nameof(RopePagedAppend), qkv, queryHeads, pool, positions, poolScales);
        int n = qkv.Size(0), kv2 = pool.Size(2), d = qkv.Size(2);
        Rope(qkv.Reshape(n, 1, queryHeads + kv2, d).Slice(2, 0, queryHeads + kv2 / 2), positions, frequencies);
        PagedAppend(qkv.Slice(1, queryHeads, kv2), pool, batch, poolScales);
        KeepOperandsAlive(batch, qkv, pool, positions, poolScales);
    }

    /// <inheritdoc/>
    /// <remarks>The composition: each q and each k head through <see cref="RmsNormForward"/>, then <see cref="RopePagedAppend"/>.</remarks>
    public void NormalizeHeadsRopePagedAppend(Tensor qkv, int queryHeads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm, Tensor pool,
        Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null)
    {
        const string op = nameof(NormalizeHeadsRopePagedAppend);
        ValidateRopePagedAppend(op, qkv, queryHeads, pool, positions, poolScales);
        int n = qkv.Size(0), kv2 = pool.Size(2), d = qkv.Size(2);
        CheckHeadNorms(op, qkv, d, queryNorm, keyNorm);
        var rows = qkv.Reshape(n, 1, queryHeads + kv2, d);
        NormalizeHeadsInPlace(rows.Slice(2, 0, queryHeads), queryNorm);
        NormalizeHeadsInPlace(rows.Slice(2, queryHeads, kv2 / 2), keyNorm);
        RopePagedAppend(qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
        KeepOperandsAlive(qkv, queryNorm.Weight, keyNorm.Weight, pool, positions);
    }

    /// <summary>qkv (N, H+2K, D) contiguous with H = <paramref name="queryHeads"/> and 2K the pool's (Blocks, BlockSize, 2K, D) heads, a position a row, the pool's dtype and scales.</summary>
    private static void ValidateRopePagedAppend(string op, Tensor qkv, int queryHeads, Tensor pool, Tensor positions, Tensor? poolScales)
    {
        ArgumentNullException.ThrowIfNull(qkv); ArgumentNullException.ThrowIfNull(pool); ArgumentNullException.ThrowIfNull(positions);
        RequireRank(op, nameof(qkv), qkv, 3, "(N,H+2K,D)");
        RequireRank(op, nameof(pool), pool, 4, "(Blocks,BlockSize,2K,D)");
        if (!qkv.IsContiguous) throw new ArgumentException($"{op}: qkv {qkv.Shape} must be contiguous", nameof(qkv));
        int n = qkv.Size(0), kv2 = pool.Size(2);
        if (queryHeads <= 0 || kv2 % 2 != 0 || qkv.Size(1) != queryHeads + kv2)
            throw new ArgumentException($"{op}: qkv {qkv.Shape} must hold {queryHeads} query heads and the {kv2} key and value heads of pool {pool.Shape}", nameof(qkv));
        if (positions.Rank != 1 || positions.Size(0) != n)
            throw new ArgumentException($"{op}: positions {positions.Shape} must hold one position per row of qkv {qkv.Shape}", nameof(positions));
        PagedKvPool.Validate(op, pool, poolScales, qkv.DType);
    }

    public void PagedAttention(Tensor q, Tensor pool, PagedBatch batch, Tensor output, double scale, int window = 0, Tensor? poolScales = null,
        double softCap = 0)
    {
        const string op = nameof(PagedAttention);
        if (window < 0) throw new ArgumentOutOfRangeException(nameof(window), window, $"{op}: sliding window must be 0 (none) or positive");
        ArgumentNullException.ThrowIfNull(q); ArgumentNullException.ThrowIfNull(pool); ArgumentNullException.ThrowIfNull(output);
        batch.Validate(op);
        RequireRank(op, nameof(q), q, 3, "(N,H,D)");
        RequireRank(op, nameof(pool), pool, 4, "(Blocks,BlockSize,2K,D)");
        RequireComputeDType(op, nameof(q), q);
        RequireUnitLastStride(op, nameof(q), q);
        RequireContiguous(op, nameof(pool), pool);
        RequireContiguous(op, nameof(output), output);
        PagedKvPool.Validate(op, pool, poolScales, q.DType);
        RequireShape(op, nameof(output), output, q.Shape);
        int n = q.Size(0), h = q.Size(1), d = q.Size(2), kv2 = pool.Size(2), bs = batch.BlockSize;
        if (kv2 % 2 != 0 || pool.Size(3) != d || pool.Size(1) != bs || h % (kv2 / 2) != 0)
            throw new ArgumentException($"{op}: pool {pool.Shape} must be (Blocks, {bs}, 2K, {d}) with K dividing the {h} query heads of q {q.Shape}", nameof(pool));
        if (batch.Rows != n)
            throw new ArgumentException($"{op}: PagedBatch.Slots has {batch.Rows} rows but q {q.Shape} has {n}", nameof(batch));
        int k = kv2 / 2, sequences = batch.Sequences, maxBlocks = batch.BlockTables.Size(1);
        int* starts = Ptr<int>(batch.QueryStarts), lengths = Ptr<int>(batch.ContextLengths), tables = Ptr<int>(batch.BlockTables);
        if (starts[0] != 0 || starts[sequences] != n)
            throw new ArgumentException($"{op}: PagedBatch.QueryStarts must run from 0 to N = {n}, got {starts[0]} .. {starts[sequences]}", nameof(batch));
        Fill(output, 0);
        for (int b = 0; b < sequences; b++)
        {
            int first = starts[b], rows = starts[b + 1] - first, context = lengths[b];
            if (rows < 0) throw new ArgumentException($"{op}: PagedBatch.QueryStarts decreases at sequence {b}", nameof(batch));
            if (context < 0 || context > maxBlocks * bs)
                throw new ArgumentException($"{op}: PagedBatch.ContextLengths[{b}] = {context} is outside [0, {maxBlocks * bs}] (block table of {maxBlocks} blocks of {bs})", nameof(batch));
            int skip = Math.Max(0, rows - context);                  // rows before position 0 see nothing: they stay zero
            int live = rows - skip;
            if (live == 0) continue;
            // The first position any live row sees, down to its block's start (0 without a window).
            int from = window > 0 ? Math.Max(0, context - live - window + 1) / bs * bs : 0, span = context - from;
            var keys = Allocate(new Shape(1, span, k, d), q.DType);
            var values = Allocate(new Shape(1, span, k, d), q.DType);
            try
            {
                for (int start = from; start < context; start += bs)
                {
                    int block = tables[(long)b * maxBlocks + start / bs], count = Math.Min(bs, context - start);
                    if ((uint)block >= (uint)pool.Size(0))
                        throw new ArgumentException($"{op}: PagedBatch.BlockTables[{b}, {start / bs}] = {block} is outside the pool's {pool.Size(0)} blocks", nameof(batch));
                    var keysHere = keys.Select(0, 0).Slice(0, start - from, count);                  // (count, K, D)
                    var valuesHere = values.Select(0, 0).Slice(0, start - from, count);
                    if (poolScales is not null)
                    {
                        GatherDequantized(pool, poolScales, block, count, 0, k, keysHere);
                        GatherDequantized(pool, poolScales, block, count, k, k, valuesHere);
                        continue;
                    }
                    var cached = pool.Select(0, block).Slice(0, 0, count);                          // (count, 2K, D)
                    Copy(cached.Slice(1, 0, k), keysHere);
                    Copy(cached.Slice(1, k, k), valuesHere);
                }
                var queries = RowsView(q, first + skip, live);
                var result = RowsView(output, first + skip, live);
                AttentionForward(queries, keys, values, result, null, scale, window, softCap);
            }
            finally
            {
                keys.Storage.Dispose();
                values.Storage.Dispose();
            }
        }
        KeepOperandsAlive(batch, q, pool, output, poolScales);
    }

    /// <summary>Rows [first, first + count) of an (N, H, D) view as a (1, count, H, D) view with the same strides.</summary>
    private static Tensor RowsView(Tensor x, int first, int count) =>
        new(x.Storage, new Shape(1, count, x.Size(1), x.Size(2)),
            [(long)count * x.Stride(0), x.Stride(0), x.Stride(1), x.Stride(2)], x.Offset + first * x.Stride(0));
}
