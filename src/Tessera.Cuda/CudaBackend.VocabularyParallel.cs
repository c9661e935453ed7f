using Tessera.Tensors;

namespace Tessera.Cuda;

// The shard-local halves of the vocabulary-parallel embedding and cross-entropy (vocab_parallel.cu).
public sealed unsafe partial class CudaBackend
{
    public void EmbeddingShardForward(Tensor ids, Tensor table, int rowOffset, Tensor output)
    {
        const string op = "EmbeddingShardForward";
        var (n, c, v) = CheckEmbeddingShard(op, ids, table, output);
        if (n == 0 || c == 0) return;
        ulong pi = Ptr(ids), pt = Ptr(table), po = Ptr(output);
        void** args = stackalloc void*[] { &pi, &pt, &po, &n, &c, &v, &rowOffset };
        Launch("vocab_parallel.cu", "embedding_shard_forward_" + Suffix(table.DType, op), GridFor(n * c), Threads, args);
    }

    public void EmbeddingShardBackward(Tensor ids, Tensor dOutput, int rowOffset, Tensor dTable)
    {
        const string op = "EmbeddingShardBackward";
        var (n, c, v) = CheckEmbeddingShard(op, ids, dTable, dOutput);
        if (n == 0 || c == 0) return;
        ulong pi = Ptr(ids), pd = Ptr(dOutput), pt = Ptr(dTable);
        void** args = stackalloc void*[] { &pi, &pd, &pt, &n, &c, &v, &rowOffset };
        Launch("vocab_parallel.cu", "embedding_shard_backward_" + Suffix(dTable.DType, op), GridFor(n * c), Threads, args);
    }

    private (long N, int C, int V) CheckEmbeddingShard(string op, Tensor ids, Tensor table, Tensor rows)
    {
        RequireDType(op, "ids", ids, DType.I32);
        RequireContiguous(op, "ids", ids);
        RequireElementwise(op, table);
        RequireContiguous(op, "rows", rows);
        RequireDType(op, "rows", rows, table.DType);
        if (table.Rank != 2) throw new ArgumentException($"CudaBackend.{op}: the table must be (V, C), got {table.Shape}");
        long n = ids.NumElements;
        int c = table.Size(1);
        if (rows.NumElements != n * c) throw new ArgumentException($"CudaBackend.{op}: rows {rows.Shape} must hold {n} x {c} elements");
        return (n, c, table.Size(0));
    }

    public void CrossEntropyStatistics(Tensor logits, Tensor targets, int columnOffset, int validColumns, Tensor statistics)
    {
        const string op = "CrossEntropyStatistics";
        var (rows, xs) = CheckVocabularyShard(op, logits, targets, validColumns);
        RequireDType(op, "statistics", statistics, DType.F32);
        RequireContiguous(op, "statistics", statistics);
        if (statistics.NumElements != rows * 3) throw new ArgumentException($"CudaBackend.{op}: statistics {statistics.Shape} must be ({rows}, 3)");
        if (rows == 0) return;
        ulong px = Ptr(logits), pt = Ptr(targets), ps = Ptr(statistics);
        void** args = stackalloc void*[] { &px, &xs, &pt, &ps, &validColumns, &columnOffset };
        Launch("vocab_parallel.cu", "cross_entropy_statistics_" + Suffix(logits.DType, op), (uint)rows, RowBlock(validColumns), args);
    }

    public void CrossEntropyCombine(Tensor statistics, Tensor targets, Tensor losses, Tensor logSumExp)
    {
        const string op = "CrossEntropyCombine";
        RequireDType(op, "statistics", statistics, DType.F32);
        RequireContiguous(op, "statistics", statistics);
        if (statistics.Rank != 3 || statistics.Size(2) != 3) throw new ArgumentException($"CudaBackend.{op}: statistics {statistics.Shape} must be (P, N, 3)");
        int p = statistics.Size(0);
        long n = statistics.Size(1);
        RequireDType(op, "targets", targets, DType.I32);
        RequireDType(op, "losses", losses, DType.F32);
        RequireDType(op, "logSumExp", logSumExp, DType.F32);
        foreach (var (t, name) in new[] { (targets, "targets"), (losses, "losses"), (logSumExp, "logSumExp") })
        {
            RequireContiguous(op, name, t);
            if (t.NumElements != n) throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} must have {n} elements");
        }
        if (n == 0) return;
        ulong ps = Ptr(statistics), pt = Ptr(targets), pl = Ptr(losses), pe = Ptr(logSumExp);
        void** args = stackalloc void*[] { &ps, &pt, &pl, &pe, &p, &n };
        Launch("vocab_parallel.cu", "cross_entropy_combine", GridFor(n), Threads, args);
    }

    public void CrossEntropyGradient(Tensor logits, Tensor targets, int columnOffset, int validColumns, Tensor logSumExp, Tensor dLogits, double lossScale)
    {
        const string op = "CrossEntropyGradient";
        var (rows, xs) = CheckVocabularyShard(op, logits, targets, validColumns);
        RequireDType(op, "logSumExp", logSumExp, DType.F32);
        RequireContiguous(op, "logSumExp", logSumExp);
        if (logSumExp.NumElements != rows) throw new ArgumentException($"CudaBackend.{op}: logSumExp {logSumExp.Shape} must have {rows} elements");
        RequireSameShape(op, logits, "logits", dLogits, "dLogits");
        RequireDType(op, "dLogits", dLogits, logits.DType);
        long ds = RowStride(op, "dLogits", dLogits);
        if (rows == 0) return;
        int v = logits.Size(-1);
        float scale = (float)lossScale;
        ulong px = Ptr(logits), pt = Ptr(targets), pe = Ptr(logSumExp), pd = Ptr(dLogits);
        void** args = stackalloc void*[] { &px, &xs, &pt, &pe, &pd, &ds, &v, &validColumns, &columnOffset, &scale };
        Launch("vocab_parallel.cu", "cross_entropy_gradient_" + Suffix(logits.DType, op), (uint)rows, RowBlock(v), args);
    }

    private static (long Rows, long RowStride) CheckVocabularyShard(string op, Tensor logits, Tensor targets, int validColumns)
    {
        Suffix(logits.DType, op);
        RequireDType(op, "targets", targets, DType.I32);
        RequireContiguous(op, "targets", targets);
        int v = logits.Size(-1);
        long rows = logits.NumElements / Math.Max(v, 1);
        long xs = RowStride(op, "logits", logits);
        if (validColumns < 0 || validColumns > v)
            throw new ArgumentOutOfRangeException(nameof(validColumns), $"CudaBackend.{op}: validColumns {validColumns} must lie in [0, {v}]");
        if (targets.NumElements != rows) throw new ArgumentException($"CudaBackend.{op}: targets {targets.Shape} must have {rows} elements for logits {logits.Shape}");
        return (rows, xs);
    }
}
