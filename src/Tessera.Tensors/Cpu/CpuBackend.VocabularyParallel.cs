using System.Numerics;
using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// The shard-local halves of Megatron's vocabulary-parallel embedding and cross-entropy: each rank holds V/tp rows of the
// table (and V/tp columns of the logits) and the ranks combine their results with one collective.
public sealed unsafe partial class CpuBackend
{
    /// <inheritdoc/>
    public void EmbeddingShardForward(Tensor ids, Tensor table, int rowOffset, Tensor output)
    {
        const string op = nameof(EmbeddingShardForward);
        CheckEmbeddingOperands(op, ids, table, nameof(table), output, nameof(output));
        if (table.DType == DType.F32) EmbeddingShardForwardTyped<float>(ids, table, rowOffset, output);
        else EmbeddingShardForwardTyped<double>(ids, table, rowOffset, output);
        KeepOperandsAlive(ids, table, output);
    }

    private void EmbeddingShardForwardTyped<T>(Tensor ids, Tensor table, int rowOffset, Tensor output) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int* pid = Ptr<int>(ids);
        T* pt = Ptr<T>(table), po = Ptr<T>(output);
        int rows = table.Shape[0], c = table.Shape[1];
        ParallelChunks(ids.Shape[0], c, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                long local = (long)pid[r] - rowOffset;
                T* dst = po + r * c;
                if (local < 0 || local >= rows) new Span<T>(dst, c).Clear();
                else Buffer.MemoryCopy(pt + local * c, dst, (long)c * sizeof(T), (long)c * sizeof(T));
            }
        });
    }

    /// <inheritdoc/>
    public void EmbeddingShardBackward(Tensor ids, Tensor dOutput, int rowOffset, Tensor dTable)
    {
        const string op = nameof(EmbeddingShardBackward);
        CheckEmbeddingOperands(op, ids, dTable, nameof(dTable), dOutput, nameof(dOutput));
        if (dTable.DType == DType.F32) EmbeddingShardBackwardTyped<float>(ids, dOutput, rowOffset, dTable);
        else EmbeddingShardBackwardTyped<double>(ids, dOutput, rowOffset, dTable);
        KeepOperandsAlive(ids, dOutput, dTable);
    }

    private void EmbeddingShardBackwardTyped<T>(Tensor ids, Tensor dOutput, int rowOffset, Tensor dTable) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int* pid = Ptr<int>(ids);
        T* pd = Ptr<T>(dOutput), pt = Ptr<T>(dTable);
        int n = ids.Shape[0], rows = dTable.Shape[0], c = dTable.Shape[1];
        // Threads own blocks of channels: rows with the same id never race, and the sum order is fixed (as EmbeddingBackward).
        ParallelChunks(c, n, (c0, c1) =>
        {
            for (int r = 0; r < n; r++)
            {
                long local = (long)pid[r] - rowOffset;
                if (local < 0 || local >= rows) continue;
                ElementwiseKernels.Axpy(T.One, pd + (long)r * c + c0, pt + local * c + c0, c1 - c0);
            }
        });
    }

    /// <inheritdoc/>
    public void CrossEntropyStatistics(Tensor logits, Tensor targets, int columnOffset, int validColumns, Tensor statistics)
    {
        const string op = nameof(CrossEntropyStatistics);
        int n = CheckVocabularyShard(op, logits, targets, validColumns);
        ArgumentNullException.ThrowIfNull(statistics);
        RequireDType(op, nameof(statistics), statistics, logits.DType);
        RequireShape(op, nameof(statistics), statistics, new Shape(n, 3));
        RequireContiguous(op, nameof(statistics), statistics);
        if (logits.DType == DType.F32) StatisticsTyped<float>(logits, targets, columnOffset, validColumns, statistics);
        else StatisticsTyped<double>(logits, targets, columnOffset, validColumns, statistics);
        KeepOperandsAlive(logits, targets, statistics);
    }

    private void StatisticsTyped<T>(Tensor logits, Tensor targets, int columnOffset, int valid, Tensor statistics) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(logits), ps = Ptr<T>(statistics);
        int* pt = Ptr<int>(targets);
        long xs = logits.Stride(0);
        ParallelChunks(logits.Shape[0], 3L * valid, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                T* xr = px + r * xs;
                T max = valid > 0 ? RowKernels.Max(xr, valid) : T.NegativeInfinity;
                T sum = valid > 0 ? RowKernels.SumExpShifted(xr, max, valid) : T.Zero;
                long local = (long)pt[r] - columnOffset;
                ps[3 * r] = max;
                ps[3 * r + 1] = sum;
                ps[3 * r + 2] = pt[r] >= 0 && local >= 0 && local < valid ? xr[local] : T.Zero;
            }
        });
    }

    /// <inheritdoc/>
    public void CrossEntropyCombine(Tensor statistics, Tensor targets, Tensor losses, Tensor logSumExp)
    {
        const string op = nameof(CrossEntropyCombine);
        ArgumentNullException.ThrowIfNull(statistics); ArgumentNullException.ThrowIfNull(targets);
        ArgumentNullException.ThrowIfNull(losses); ArgumentNullException.ThrowIfNull(logSumExp);
        RequireComputeDType(op, nameof(statistics), statistics);
        RequireRank(op, nameof(statistics), statistics, 3, "(P,N,3)");
        RequireContiguous(op, nameof(statistics), statistics);
        int shards = statistics.Shape[0], n = statistics.Shape[1];
        if (statistics.Shape[2] != 3) throw new ArgumentException($"{op}: statistics {statistics.Shape} must be (P, N, 3)", nameof(statistics));
        RequireDType(op, nameof(targets), targets, DType.I32);
        RequireShape(op, nameof(targets), targets, new Shape(n));
        RequireContiguous(op, nameof(targets), targets);
        foreach (var (t, name) in new[] { (losses, nameof(losses)), (logSumExp, nameof(logSumExp)) })
        {
            RequireDType(op, name, t, statistics.DType);
            RequireShape(op, name, t, new Shape(n));
            RequireContiguous(op, name, t);
        }
        if (statistics.DType == DType.F32) CombineTyped<float>(statistics, targets, losses, logSumExp, shards, n);
        else CombineTyped<double>(statistics, targets, losses, logSumExp, shards, n);
        KeepOperandsAlive(statistics, targets, losses, logSumExp);
    }

    private void CombineTyped<T>(Tensor statistics, Tensor targets, Tensor losses, Tensor logSumExp, int shards, int n) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* ps = Ptr<T>(statistics), pl = Ptr<T>(losses), pe = Ptr<T>(logSumExp);
        int* pt = Ptr<int>(targets);
        ParallelChunks(n, 3L * shards, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                T max = T.NegativeInfinity, sum = T.Zero, target = T.Zero;
                for (int p = 0; p < shards; p++) max = T.Max(max, ps[(p * (long)n + r) * 3]);
                for (int p = 0; p < shards; p++)
                {
                    T* s = ps + (p * (long)n + r) * 3;
                    if (s[1] > T.Zero) sum += s[1] * T.Exp(s[0] - max);
                    target += s[2];
                }
                T lse = max + T.Log(sum);
                pe[r] = lse;
                pl[r] = pt[r] < 0 ? T.Zero : lse - target;
            }
        });
    }

    /// <inheritdoc/>
    public void CrossEntropyGradient(Tensor logits, Tensor targets, int columnOffset, int validColumns, Tensor logSumExp, Tensor dLogits, double lossScale)
    {
        const string op = nameof(CrossEntropyGradient);
        int n = CheckVocabularyShard(op, logits, targets, validColumns);
        ArgumentNullException.ThrowIfNull(logSumExp); ArgumentNullException.ThrowIfNull(dLogits);
        RequireDType(op, nameof(logSumExp), logSumExp, logits.DType);
        RequireShape(op, nameof(logSumExp), logSumExp, new Shape(n));
        RequireContiguous(op, nameof(logSumExp), logSumExp);
        RequireSameShape(op, nameof(dLogits), dLogits, nameof(logits), logits);
        RequireDType(op, nameof(dLogits), dLogits, logits.DType);
        RequireUnitLastStride(op, nameof(dLogits), dLogits);
        if (logits.DType == DType.F32) GradientTyped<float>(logits, targets, columnOffset, validColumns, logSumExp, dLogits, lossScale);
        else GradientTyped<double>(logits, targets, columnOffset, validColumns, logSumExp, dLogits, lossScale);
        KeepOperandsAlive(logits, targets, logSumExp, dLogits);
    }

    private void GradientTyped<T>(Tensor logits, Tensor targets, int columnOffset, int valid, Tensor logSumExp, Tensor dLogits, double lossScale)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(logits), pd = Ptr<T>(dLogits), pe = Ptr<T>(logSumExp);
        int* pt = Ptr<int>(targets);
        long xs = logits.Stride(0), ds = dLogits.Stride(0);
        int v = logits.Shape[1];
        T scale = T.CreateTruncating(lossScale);
        ParallelChunks(logits.Shape[0], 3L * v, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                T* xr = px + r * xs, dr = pd + r * ds;
                if (pt[r] < 0)
                {
                    new Span<T>(dr, v).Clear();
                    continue;
                }
                T lse = pe[r];
                for (int j = 0; j < valid; j++) dr[j] = T.Exp(xr[j] - lse) * scale;
                if (valid < v) new Span<T>(dr + valid, v - valid).Clear();
                long local = (long)pt[r] - columnOffset;
                if (local >= 0 && local < valid) dr[local] -= scale;
            }
        });
    }

    private int CheckVocabularyShard(string op, Tensor logits, Tensor targets, int validColumns)
    {
        ArgumentNullException.ThrowIfNull(logits); ArgumentNullException.ThrowIfNull(targets);
        RequireComputeDType(op, nameof(logits), logits);
        RequireRank(op, nameof(logits), logits, 2, "(N,V)");
        RequireUnitLastStride(op, nameof(logits), logits);
        int n = logits.Shape[0];
        if (validColumns < 0 || validColumns > logits.Shape[1])
            throw new ArgumentOutOfRangeException(nameof(validColumns), $"{op}: validColumns {validColumns} must lie in [0, {logits.Shape[1]}] for logits {logits.Shape}");
        RequireDType(op, nameof(targets), targets, DType.I32);
        RequireShape(op, nameof(targets), targets, new Shape(n));
        RequireContiguous(op, nameof(targets), targets);
        return n;
    }
}
