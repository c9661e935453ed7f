using Tessera.Tensors;

namespace Tessera.Cuda;

// KV-cache ops at device-side positions and the greedy argmax: what a decode step needs so that its
// launches do not depend on host values, and one recorded CUDA graph serves every step.
public sealed unsafe partial class CudaBackend
{
    private static void RequirePositions(string op, Tensor startPositions, int batch)
    {
        ArgumentNullException.ThrowIfNull(startPositions);
        if (startPositions.DType != DType.I32 || startPositions.Rank != 1 || startPositions.Size(0) != batch || !startPositions.IsContiguous)
            throw new ArgumentException($"CudaBackend.{op}: startPositions must be a contiguous ({batch}) I32 tensor, one position per sequence; got {startPositions.Shape} {startPositions.DType}");
    }

    public void RopeAndAppend(Tensor qkv, int queryHeads, Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies)
    {
        const string op = nameof(RopeAndAppend);
        var qs = Strides3.Of(op, "qkv", qkv);
        var cs = Strides3.Of(op, "keysAndValues", keysAndValues);
        int b = qkv.Size(0), t = qkv.Size(1), d = qkv.Size(3), kv2 = keysAndValues.Size(2);
        if (queryHeads <= 0 || kv2 % 2 != 0 || qkv.Size(2) != queryHeads + kv2)
            throw new ArgumentException($"CudaBackend.{op}: qkv {qkv.Shape} must hold {queryHeads} query heads and the {kv2} key and value heads of keysAndValues {keysAndValues.Shape}");
        if (keysAndValues.Size(0) != b || keysAndValues.Size(3) != d)
            throw new ArgumentException($"CudaBackend.{op}: keysAndValues {keysAndValues.Shape} must be (B, S, 2K, D) with the B and D of qkv {qkv.Shape}");
        if (keysAndValues.DType != qkv.DType)
            throw new ArgumentException($"CudaBackend.{op}: qkv is {qkv.DType} but keysAndValues is {keysAndValues.DType}");
        if (d % 2 != 0) throw new ArgumentException($"CudaBackend.{op}: head size {d} must be even");
        if (t > keysAndValues.Size(1))
            throw new ArgumentException($"CudaBackend.{op}: {t} new positions do not fit a cache of {keysAndValues.Size(1)}");
        RequirePositions(op, startPositions, b);
        int h = queryHeads, k = kv2 / 2;
        var freq = RopeArgsFor(frequencies, d);
        if ((long)b * t == 0) return;
        ulong px = Ptr(qkv), pc = Ptr(keysAndValues), pp = Ptr(startPositions), noSlots = 0;
        void** args = stackalloc void*[] { &px, &pc, &pp, &b, &t, &h, &k, &d, &qs.B, &qs.T, &qs.H, &cs.B, &cs.T, &cs.H, &freq, &noSlots };
        LaunchRopeAppend(op, qkv.DType, (long)b * t, h + kv2, d, args);
    }

    /// <inheritdoc/>
    /// <remarks>One launch of rope.cu's <c>norm_rope_append_rows</c> (a CTA per row: the heads staged in shared memory, a warp
    /// per q or k head normalizing it, then the rotation and the append), the bits of the norm kernel on each head followed by
    /// <see cref="RopeAndAppend"/>, where <see cref="NormRopeAppendFits"/>; otherwise that composition.</remarks>
    public void NormalizeHeadsRopeAndAppend(Tensor qkv, int queryHeads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm,
        Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies)
    {
        const string op = nameof(NormalizeHeadsRopeAndAppend);
        RequireContiguous(op, "qkv", qkv);
        if (qkv.Rank != 4 || keysAndValues.Rank != 4)
            throw new ArgumentException($"CudaBackend.{op}: qkv {qkv.Shape} and keysAndValues {keysAndValues.Shape} must be (B, T, H+2K, D) and (B, S, 2K, D)");
        int d = qkv.Size(3), kv2 = keysAndValues.Size(2), b = qkv.Size(0), t = qkv.Size(1);
        CheckHeadNorms(op, qkv, d, queryNorm, keyNorm);
        // Every check before anything is written (the fallback normalizes in place before RopeAndAppend would check).
        if (queryHeads <= 0 || kv2 % 2 != 0 || qkv.Size(2) != queryHeads + kv2 || keysAndValues.Size(0) != b || keysAndValues.Size(3) != d
            || keysAndValues.DType != qkv.DType || d % 2 != 0)
            throw new ArgumentException($"CudaBackend.{op}: keysAndValues {keysAndValues.DType} {keysAndValues.Shape} must be (B, S, 2K, D) of qkv's B, D and dtype ({qkv.DType} {qkv.Shape}), D even, qkv holding {queryHeads} query heads and 2K");
        if (t > keysAndValues.Size(1))
            throw new ArgumentException($"CudaBackend.{op}: {t} new positions do not fit a cache of {keysAndValues.Size(1)}");
        RequirePositions(op, startPositions, b);
        var qs = Strides3.Of(op, "qkv", qkv);
        var cs = Strides3.Of(op, "keysAndValues", keysAndValues);
        if (!NormRopeAppendFits(qkv, d, queryHeads + kv2, queryNorm, keyNorm))
        {
            NormalizeHeadsInPlace(qkv.Slice(2, 0, queryHeads), queryNorm);
            NormalizeHeadsInPlace(qkv.Slice(2, queryHeads, kv2 / 2), keyNorm);
            RopeAndAppend(qkv, queryHeads, keysAndValues, startPositions, frequencies);
            return;
        }
        LaunchNormRopeAppend(op, qkv, queryHeads, kv2 / 2, keysAndValues, startPositions, b, t, (qs.B, qs.T, qs.H), (cs.B, cs.T, cs.H), 0,
            queryNorm, keyNorm, frequencies);
    }

    /// <inheritdoc/>
    /// <remarks>A 16-bit or F32 pool of qkv's dtype: one launch of <c>norm_rope_append_rows</c> writing each row's keys and values to its
    /// slot, where <see cref="NormRopeAppendFits"/>; a quantized pool, or shapes it does not take: the heads normalized apart,
    /// then <see cref="RopePagedAppend"/>.</remarks>
    public void NormalizeHeadsRopePagedAppend(Tensor qkv, int queryHeads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm, Tensor pool,
        Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null)
    {
        const string op = nameof(NormalizeHeadsRopePagedAppend);
        ValidateRopePagedAppend(op, qkv, queryHeads, pool, positions, batch, poolScales);
        int n = qkv.Size(0), d = qkv.Size(2), kv2 = pool.Size(2);
        CheckHeadNorms(op, qkv, d, queryNorm, keyNorm);
        if (PagedKvPool.IsQuantized(pool.DType) || !NormRopeAppendFits(qkv, d, queryHeads + kv2, queryNorm, keyNorm))
        {
            var rows = qkv.Reshape(n, 1, queryHeads + kv2, d);
            NormalizeHeadsInPlace(rows.Slice(2, 0, queryHeads), queryNorm);
            NormalizeHeadsInPlace(rows.Slice(2, queryHeads, kv2 / 2), keyNorm);
            RopePagedAppend(qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
            return;
        }
        if (n == 0) return;
        LaunchNormRopeAppend(op, qkv, queryHeads, kv2 / 2, pool, positions, n, 1, (qkv.Stride(0), 0, d), (0, (long)kv2 * d, d),
            Ptr(batch.Slots), queryNorm, keyNorm, frequencies);
    }

    /// <summary>Both head norms' weights: contiguous, D long, of qkv's dtype.</summary>
    private static void CheckHeadNorms(string op, Tensor qkv, int d, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm)
    {
        foreach (var (name, norm) in new[] { (nameof(queryNorm), queryNorm), (nameof(keyNorm), keyNorm) })
        {
            RequireContiguous(op, name, norm.Weight);
            if (norm.Weight.NumElements != d || norm.Weight.DType != qkv.DType)
                throw new ArgumentException($"CudaBackend.{op}: {name}'s weight {norm.Weight.DType} {norm.Weight.Shape} must be ({d}) {qkv.DType}");
        }
    }

    /// <summary>Whether <c>norm_rope_append_rows</c> takes qkv of <paramref name="heads"/> heads of <paramref name="d"/>: F32, BF16
    /// or F16, a head a whole number of 16-byte vectors and at most 64 of them, aligned tensors, the row and its angles in 48 KB
    /// of shared memory.</summary>
    private static bool NormRopeAppendFits(Tensor qkv, int d, int heads, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm)
    {
        if (qkv.DType is not (DType.F32 or DType.BF16 or DType.F16)) return false;
        int vec = 16 / qkv.DType.SizeInBytes();
        return d % vec == 0 && d / vec <= 64 && NormRopeAppendShared(qkv.DType, d, heads) <= 48 * 1024 && qkv.Size(-2) == heads
            && Ptr(qkv) % 16 == 0 && Ptr(queryNorm.Weight) % 16 == 0 && Ptr(keyNorm.Weight) % 16 == 0;
    }

    /// <summary><c>norm_rope_append_rows</c>'s dynamic shared memory: D angle floats, then the row's heads.</summary>
    private static uint NormRopeAppendShared(DType dtype, int d, int heads) => (uint)(d * sizeof(float) + (long)heads * d * dtype.SizeInBytes());

    /// <summary>rope.cu's <c>norm_rope_append_rows</c> over B·Tn rows: qkv's strides (row b, t, head), the cache's (b, position or
    /// slot, head), the slots (0: a dense cache at the start positions).</summary>
    private void LaunchNormRopeAppend(string op, Tensor qkv, int h, int k, Tensor cache, Tensor starts, int b, int t,
        (long B, long T, long H) qs, (long B, long S, long H) cs, ulong slots, RmsNormPrologue queryNorm, RmsNormPrologue keyNorm,
        RopeFrequencies frequencies)
    {
        int d = qkv.Size(-1);
        var freq = RopeArgsFor(frequencies, d);
        if ((long)b * t == 0) return;
        ulong px = Ptr(qkv), pc = Ptr(cache), pp = Ptr(starts), pq = Ptr(queryNorm.Weight), pk = Ptr(keyNorm.Weight);
        long sb = qs.B, st = qs.T, sh = qs.H, cb = cs.B, css = cs.S, ch = cs.H;
        float qe = (float)queryNorm.Epsilon, ke = (float)keyNorm.Epsilon;
        int qu = queryNorm.UnitOffset ? 1 : 0, ku = keyNorm.UnitOffset ? 1 : 0;
        void** args = stackalloc void*[] { &px, &pc, &pp, &b, &t, &h, &k, &d, &sb, &st, &sh, &cb, &css, &ch, &freq, &slots,
            &pq, &pk, &qe, &ke, &qu, &ku };
        Launch("rope.cu", "norm_rope_append_rows_" + Suffix(qkv.DType, op), ((uint)((long)b * t), 1, 1), RopeRowThreads, args,
            NormRopeAppendShared(qkv.DType, d, h + 2 * k), dependent: true);
    }

    /// <summary>Each D-channel head of <paramref name="heads"/> (B, T, heads, D), a view, RMS-normalized in place (copied out to
    /// scratch rows, the norm kernel, copied back): the composition <see cref="NormalizeHeadsRopeAndAppend"/> falls back to.</summary>
    private void NormalizeHeadsInPlace(Tensor heads, RmsNormPrologue norm)
    {
        int d = heads.Size(-1);
        var rows = ScratchTensor(heads.Shape, heads.DType);
        var normalized = ScratchTensor(heads.Shape, heads.DType);
        var rstd = ScratchTensor(new Shape((int)(heads.NumElements / d)), DType.F32);
        Copy(heads, rows);
        RmsNormForward(rows.Reshape((int)(rows.NumElements / d), d), norm.Weight, normalized.Reshape((int)(rows.NumElements / d), d), rstd,
            norm.Epsilon, norm.UnitOffset);
        Copy(normalized, heads);
        rstd.Storage.Dispose();
        normalized.Storage.Dispose();
        rows.Storage.Dispose();
    }

    /// <summary>
    /// rope.cu's RoPE with the KV append over <paramref name="rows"/> rows of <paramref name="heads"/> heads of size
    /// <paramref name="d"/> (<paramref name="args"/>: the kernels' common parameters): <c>rope_append_rows</c>, a CTA per row,
    /// up to <see cref="CudaBackendOptions.RopeAppendRowKernelMaxRows"/> rows (decode steps, latency-bound); else
    /// <c>rope_append</c>, a work item per pair of every group of <see cref="RopeAppendHeads"/> heads of a row. The same bits.
    /// </summary>
    private void LaunchRopeAppend(string op, DType dtype, long rows, int heads, int d, void** args)
    {
        if (rows <= Options.RopeAppendRowKernelMaxRows)
            Launch("rope.cu", "rope_append_rows_" + Suffix(dtype, op), ((uint)rows, 1, 1), RopeRowThreads, args, (uint)(d * sizeof(float)), dependent: true);
        else
            Launch("rope.cu", "rope_append_" + Suffix(dtype, op), (GridFor(rows * ((heads + RopeAppendHeads - 1) / RopeAppendHeads) * (d / 2)), 1, 1),
                Threads, args, 0, dependent: true);
    }

    /// <summary>Threads of a <c>rope_append_rows</c> CTA (rope.cu's ROPE_ROW_THREADS).</summary>
    private const int RopeRowThreads = 256;

    /// <summary>Heads per <c>rope_append</c> work item (rope.cu's ROPE_APPEND_HEADS): each item computes its pair's angle once for them.</summary>
    private const int RopeAppendHeads = 8;

    public void CopyAtPositions(Tensor source, Tensor destination, Tensor startPositions)
    {
        const string op = nameof(CopyAtPositions);
        var ss = Strides3.Of(op, "source", source);
        var ds = Strides3.Of(op, "destination", destination);
        int b = source.Size(0), t = source.Size(1), r = source.Size(2), d = source.Size(3);
        if (destination.Size(0) != b || destination.Size(2) != r || destination.Size(3) != d)
            throw new ArgumentException($"CudaBackend.{op}: destination {destination.Shape} must be (B, S, R, D) with the B, R, D of source {source.Shape}");
        if (destination.DType != source.DType)
            throw new ArgumentException($"CudaBackend.{op}: source is {source.DType} but destination is {destination.DType}");
        if (t > destination.Size(1))
            throw new ArgumentException($"CudaBackend.{op}: {t} new positions do not fit a cache of {destination.Size(1)}");
        RequirePositions(op, startPositions, b);
        long n = (long)b * t * r * d;
        if (n == 0) return;
        ulong ps = Ptr(source), pd = Ptr(destination), pp = Ptr(startPositions);
        void** args = stackalloc void*[] { &ps, &pd, &pp, &b, &t, &r, &d, &ss, &ds };
        Launch("copy.cu", $"copy_at_positions_b{source.DType.SizeInBytes()}", GridFor(n), Threads, args);
    }

    public void FillPositions(Tensor startPositions, Tensor positions)
    {
        const string op = nameof(FillPositions);
        if (positions.Rank != 2 || positions.DType != DType.I32) throw new ArgumentException($"CudaBackend.{op}: positions must be (B, T) I32, got {positions.Shape} {positions.DType}");
        RequireContiguous(op, "positions", positions);
        int b = positions.Size(0), t = positions.Size(1);
        RequirePositions(op, startPositions, b);
        if ((long)b * t == 0) return;
        ulong ps = Ptr(startPositions), pp = Ptr(positions);
        void** args = stackalloc void*[] { &ps, &pp, &b, &t };
        Launch("copy.cu", "fill_positions", GridFor((long)b * t), Threads, args);
    }

    public void Increment(Tensor counters, int amount)
    {
        RequireDType(nameof(Increment), "counters", counters, DType.I32);
        RequireContiguous(nameof(Increment), "counters", counters);
        long n = counters.NumElements;
        if (n == 0) return;
        ulong p = Ptr(counters);
        void** args = stackalloc void*[] { &p, &n, &amount };
        Launch("copy.cu", "increment_i32", GridFor(n), Threads, args);
    }

    public void ResolveSampledIds(Tensor ids, Tensor sampled)
    {
        const string op = nameof(ResolveSampledIds);
        RequireDType(op, "ids", ids, DType.I32);
        RequireContiguous(op, "ids", ids);
        RequireDType(op, "sampled", sampled, DType.I32);
        RequireContiguous(op, "sampled", sampled);
        long n = ids.NumElements;
        if (n == 0) return;
        ulong pi = Ptr(ids), ps = Ptr(sampled);
        void** args = stackalloc void*[] { &pi, &ps, &n };
        Launch("copy.cu", "resolve_sampled_ids", GridFor(n), Threads, args);
    }

    public void ArgMax(Tensor x, Tensor indices)
    {
        const string op = nameof(ArgMax);
        if (x.Rank != 2 || (x.Stride(1) != 1 && x.Size(1) > 1))
            throw new ArgumentException($"CudaBackend.{op}: x must be (N, V) with a contiguous last dimension, got {x.Shape}");
        RequireDType(op, "indices", indices, DType.I32);
        RequireContiguous(op, "indices", indices);
        int n = x.Size(0), v = x.Size(1);
        if (indices.NumElements != n) throw new ArgumentException($"CudaBackend.{op}: indices {indices.Shape} must hold one index per row of x {x.Shape}");
        if (v == 0) throw new ArgumentException($"CudaBackend.{op}: x {x.Shape} has no columns");
        if (n == 0) return;
        ulong px = Ptr(x), pi = Ptr(indices);
        long ld = x.Stride(0);
        void** args = stackalloc void*[] { &px, &pi, &v, &ld };
        Launch("reduce.cu", "argmax_" + Suffix(x.DType, op), (uint)n, 1024, args);
    }
}
