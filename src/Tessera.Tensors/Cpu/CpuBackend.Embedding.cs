using System.Numerics;
using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// Token and position embedding lookups and their scatter-add backward.
public sealed unsafe partial class CpuBackend
{
    /// <inheritdoc/>
    public void EmbeddingForward(Tensor ids, Tensor table, Tensor output, bool accumulate = false)
    {
        const string op = nameof(EmbeddingForward);
        CheckEmbedding(op, ids, table, nameof(table), output, nameof(output));
        if (table.DType == DType.F32) EmbeddingForwardTyped<float>(ids, table, output, accumulate);
        else EmbeddingForwardTyped<double>(ids, table, output, accumulate);
        KeepOperandsAlive(ids, table, output);
    }

    private void EmbeddingForwardTyped<T>(Tensor ids, Tensor table, Tensor output, bool accumulate) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int* pid = Ptr<int>(ids);
        T* pt = Ptr<T>(table), po = Ptr<T>(output);
        int c = table.Shape[1];
        ParallelChunks(ids.Shape[0], c, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                T* src = pt + (long)pid[r] * c, dst = po + r * c;
                if (accumulate) ElementwiseKernels.Axpy(T.One, src, dst, c);
                else Buffer.MemoryCopy(src, dst, (long)c * sizeof(T), (long)c * sizeof(T));
            }
        });
    }

    /// <inheritdoc/>
    public void EmbeddingBackward(Tensor ids, Tensor dOutput, Tensor dTable)
    {
        const string op = nameof(EmbeddingBackward);
        CheckEmbedding(op, ids, dTable, nameof(dTable), dOutput, nameof(dOutput));
        if (dTable.DType == DType.F32) EmbeddingBackwardTyped<float>(ids, dOutput, dTable);
        else EmbeddingBackwardTyped<double>(ids, dOutput, dTable);
        KeepOperandsAlive(ids, dOutput, dTable);
    }

    private void EmbeddingBackwardTyped<T>(Tensor ids, Tensor dOutput, Tensor dTable) where T : unmanaged, IFloatingPointIeee754<T>
    {
        int* pid = Ptr<int>(ids);
        T* pd = Ptr<T>(dOutput), pt = Ptr<T>(dTable);
        int n = ids.Shape[0], c = dTable.Shape[1];
        // Threads own blocks of channels: rows with the same id never race, and the sum order is fixed.
        ParallelChunks(c, n, (c0, c1) =>
        {
            for (int r = 0; r < n; r++)
                ElementwiseKernels.Axpy(T.One, pd + (long)r * c + c0, pt + (long)pid[r] * c + c0, c1 - c0);
        });
    }

    // A whole table also requires every id to name one of its rows (a shard skips the ids outside its rows).
    private void CheckEmbedding(string op, Tensor ids, Tensor table, string tableName, Tensor rows, string rowsName)
    {
        CheckEmbeddingOperands(op, ids, table, tableName, rows, rowsName);
        int* pid = Ptr<int>(ids);
        int v = table.Shape[0];
        for (int i = 0; i < ids.Shape[0]; i++)
            if ((uint)pid[i] >= (uint)v)
                throw new ArgumentException($"{op}: ids[{i}] = {pid[i]} is outside the table's {v} rows [0, {v})", nameof(ids));
    }

    /// <summary>The operands of a lookup in a table (or in a vocabulary shard of one): (N) int ids, a (V, C) table, (N, C) rows.</summary>
    private void CheckEmbeddingOperands(string op, Tensor ids, Tensor table, string tableName, Tensor rows, string rowsName)
    {
        ArgumentNullException.ThrowIfNull(ids); ArgumentNullException.ThrowIfNull(table); ArgumentNullException.ThrowIfNull(rows);
        RequireDType(op, nameof(ids), ids, DType.I32);
        RequireRank(op, nameof(ids), ids, 1, "(N)");
        RequireContiguous(op, nameof(ids), ids);
        RequireComputeDType(op, tableName, table);
        RequireRank(op, tableName, table, 2, "(V,C)");
        RequireContiguous(op, tableName, table);
        RequireDType(op, rowsName, rows, table.DType);
        RequireShape(op, rowsName, rows, new Shape(ids.Shape[0], table.Shape[1]));
        RequireContiguous(op, rowsName, rows);
    }
}
