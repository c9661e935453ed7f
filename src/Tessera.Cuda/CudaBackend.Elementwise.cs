using Tessera.Tensors;

namespace Tessera.Cuda;

public sealed unsafe partial class CudaBackend
{
    private void RequireElementwise(string op, Tensor first, params (Tensor T, string Name)[] others)
    {
        Suffix(first.DType, op);
        RequireContiguous(op, "input", first);
        foreach (var (t, name) in others)
        {
            RequireContiguous(op, name, t);
            if (t.NumElements != first.NumElements)
                throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} has {t.NumElements} elements, expected {first.NumElements} like {first.Shape}");
            if (t.DType != first.DType)
                throw new ArgumentException($"CudaBackend.{op}: {name} is {t.DType}, expected {first.DType}");
        }
    }

    public void Add(Tensor a, Tensor b, Tensor output)
    {
        RequireElementwise("Add", a, (b, "b"), (output, "output"));
        ulong pa = Ptr(a), pb = Ptr(b), po = Ptr(output);
        long n = a.NumElements;
        if (n == 0) return;
        void** args = stackalloc void*[] { &pa, &pb, &po, &n };
        Launch("elementwise.cu", "add_" + Suffix(a.DType, "Add"), GridFor(n), Threads, args);
    }

    public void Accumulate(Tensor accumulator, Tensor x, double alpha = 1.0)
    {
        RequireContiguous("Accumulate", "accumulator", accumulator);
        RequireContiguous("Accumulate", "x", x);
        if (x.NumElements != accumulator.NumElements)
            throw new ArgumentException($"CudaBackend.Accumulate: x {x.Shape} and accumulator {accumulator.Shape} differ in size");
        bool widening = accumulator.DType == DType.F32 && x.DType is DType.BF16 or DType.F16;
        bool narrowing = x.DType == DType.F32 && accumulator.DType is DType.BF16 or DType.F16;
        if (x.DType != accumulator.DType && !widening && !narrowing)
            throw new ArgumentException($"CudaBackend.Accumulate: cannot add {x.DType} into {accumulator.DType}");
        ulong pa = Ptr(accumulator), px = Ptr(x);
        long n = x.NumElements;
        if (n == 0) return;
        float al = (float)alpha;
        void** args = stackalloc void*[] { &pa, &px, &al, &n };
        Launch("elementwise.cu", $"accumulate_{Suffix(accumulator.DType, "Accumulate")}_{Suffix(x.DType, "Accumulate")}", GridFor(n), Threads, args);
    }

    public void Multiply(Tensor a, Tensor b, Tensor output)
    {
        RequireElementwise("Multiply", a, (b, "b"), (output, "output"));
        ulong pa = Ptr(a), pb = Ptr(b), po = Ptr(output);
        long n = a.NumElements;
        if (n == 0) return;
        void** args = stackalloc void*[] { &pa, &pb, &po, &n };
        Launch("elementwise.cu", "multiply_" + Suffix(a.DType, "Multiply"), GridFor(n), Threads, args);
    }

    public void SoftCap(Tensor x, double cap)
    {
        RequireElementwise("SoftCap", x);
        float c = LogitCap("SoftCap", cap);
        ulong px = Ptr(x);
        long n = x.NumElements;
        if (n == 0) return;
        void** args = stackalloc void*[] { &px, &c, &n };
        Launch("elementwise.cu", "soft_cap_" + Suffix(x.DType, "SoftCap"), GridFor(n), Threads, args);
    }

    public void SoftCapBackward(Tensor y, Tensor dy, double cap)
    {
        RequireElementwise("SoftCapBackward", y, (dy, "dy"));
        float c = LogitCap("SoftCapBackward", cap);
        ulong py = Ptr(y), pd = Ptr(dy);
        long n = y.NumElements;
        if (n == 0) return;
        void** args = stackalloc void*[] { &py, &pd, &c, &n };
        Launch("elementwise.cu", "soft_cap_backward_" + Suffix(y.DType, "SoftCapBackward"), GridFor(n), Threads, args);
    }

    /// <summary>A final-logit cap as the kernels take it: positive and finite, as the CPU backend requires.</summary>
    private static float LogitCap(string op, double cap) =>
        (float)cap is var c && c > 0 && float.IsFinite(c) ? c
            : throw new ArgumentOutOfRangeException(nameof(cap), cap, $"CudaBackend.{op}: the cap must be positive and finite in F32");

    public void Scale(Tensor x, double factor)
    {
        RequireElementwise("Scale", x);
        ulong px = Ptr(x);
        long n = x.NumElements;
        if (n == 0) return;
        float f = (float)factor;
        void** args = stackalloc void*[] { &px, &f, &n };
        Launch("elementwise.cu", "scale_" + Suffix(x.DType, "Scale"), GridFor(n), Threads, args);
    }

    public void GeluForward(Tensor x, Tensor output)
    {
        RequireElementwise("GeluForward", x, (output, "output"));
        ulong px = Ptr(x), po = Ptr(output);
        long n = x.NumElements;
        if (n == 0) return;
        void** args = stackalloc void*[] { &px, &po, &n };
        Launch("elementwise.cu", "gelu_forward_" + Suffix(x.DType, "GeluForward"), GridFor(n), Threads, args);
    }

    public void GeluBackward(Tensor x, Tensor dOutput, Tensor dx)
    {
        RequireElementwise("GeluBackward", x, (dOutput, "dOutput"), (dx, "dx"));
        ulong px = Ptr(x), pd = Ptr(dOutput), pdx = Ptr(dx);
        long n = x.NumElements;
        if (n == 0) return;
        void** args = stackalloc void*[] { &px, &pd, &pdx, &n };
        Launch("elementwise.cu", "gelu_backward_" + Suffix(x.DType, "GeluBackward"), GridFor(n), Threads, args);
    }

    public void SwiGluForward(Tensor gate, Tensor up, Tensor output)
    {
        var (rows, cols) = RowStrided("SwiGluForward", gate, (up, "up"), (output, "output"));
        if (rows * cols == 0) return;
        ulong pg = Ptr(gate), pu = Ptr(up), po = Ptr(output);
        long gs = RowStride(gate), us = RowStride(up), os = RowStride(output);
        void** args = stackalloc void*[] { &pg, &gs, &pu, &us, &po, &os, &rows, &cols };   // (rows, cols) views, row strides in elements
        long items = RowItems(rows, cols, gate.DType, [pg, pu, po], [gs, us, os]);
        Launch("elementwise.cu", "swiglu_forward_rows_" + Suffix(gate.DType, "SwiGluForward"), GridFor(items), Threads, args);
    }

    public void SwiGluBackward(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp)
    {
        var (rows, cols) = RowStrided("SwiGluBackward", gate, (up, "up"), (dOutput, "dOutput"), (dGate, "dGate"), (dUp, "dUp"));
        if (rows * cols == 0) return;
        ulong pg = Ptr(gate), pu = Ptr(up), pd = Ptr(dOutput), pdg = Ptr(dGate), pdu = Ptr(dUp);
        long gs = RowStride(gate), us = RowStride(up), ds = RowStride(dOutput), dgs = RowStride(dGate), dus = RowStride(dUp);
        void** args = stackalloc void*[] { &pg, &gs, &pu, &us, &pd, &ds, &pdg, &dgs, &pdu, &dus, &rows, &cols };
        long items = RowItems(rows, cols, gate.DType, [pg, pu, pd, pdg, pdu], [gs, us, ds, dgs, dus]);
        Launch("elementwise.cu", "swiglu_backward_rows_" + Suffix(gate.DType, "SwiGluBackward"), GridFor(items), Threads, args);
    }

    /// <summary>
    /// The work items of elementwise.cu's SwiGLU row kernels over (rows, cols): 16-byte vectors when cols, every row stride and
    /// every pointer allow them (the kernels' own test), single elements otherwise; the grid is sized by them, so that a decode
    /// step's 64 rows do not launch eight times the CTAs that have work.
    /// </summary>
    private static long RowItems(long rows, long cols, DType dtype, ReadOnlySpan<ulong> pointers, ReadOnlySpan<long> rowStrides)
    {
        int vec = 16 / dtype.SizeInBytes();
        bool vectors = cols % vec == 0;
        foreach (var p in pointers) vectors &= p % 16 == 0;
        foreach (var stride in rowStrides) vectors &= stride % vec == 0;
        return vectors ? rows * (cols / vec) : rows * cols;
    }

    /// <summary>
    /// Checks tensors of one shape and dtype for a row-wise element-wise kernel: each contiguous (any rank, seen as rows of its
    /// last dimension) or a rank-2 view whose rows are contiguous (a column slice of a wider matrix). Returns (rows, columns).
    /// </summary>
    private (long Rows, long Cols) RowStrided(string op, Tensor first, params (Tensor T, string Name)[] others)
    {
        Suffix(first.DType, op);
        foreach (var (t, name) in others.Prepend((first, "input")))
        {
            if (t.Shape != first.Shape)
                throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} must have the shape {first.Shape}");
            if (t.DType != first.DType)
                throw new ArgumentException($"CudaBackend.{op}: {name} is {t.DType}, expected {first.DType}");
            if (!t.IsContiguous && !(t.Rank == 2 && (t.Stride(1) == 1 || t.Size(1) <= 1) && t.Stride(0) >= t.Size(1)))
                throw new ArgumentException($"CudaBackend.{op}: {name} {t.Shape} must be contiguous or a (rows, columns) view with contiguous rows");
        }
        long cols = first.Rank == 0 ? 1 : first.Size(-1);
        return (cols == 0 ? 0 : first.NumElements / cols, cols);
    }

    /// <summary>Elements between row starts of a tensor <see cref="RowStrided"/> accepted.</summary>
    private static long RowStride(Tensor t) => t.IsContiguous || t.Rank != 2 ? (t.Rank == 0 ? 1 : t.Size(-1)) : t.Stride(0);

    /// <summary>Threads per block for a kernel that gives one block to each row of <paramref name="columns"/> elements.</summary>
    private static uint RowBlock(long columns) => columns >= 4096 ? 1024u : columns >= 1024 ? 512u : columns >= 256 ? 256u : 128u;

    public void Softmax(Tensor x, Tensor output)
    {
        RequireElementwise("Softmax", x, (output, "output"));
        int v = x.Size(-1);
        long rows = x.NumElements / Math.Max(v, 1);
        if (rows == 0 || v == 0) return;
        ulong px = Ptr(x), po = Ptr(output);
        void** args = stackalloc void*[] { &px, &po, &v };
        Launch("softmax.cu", "softmax_" + Suffix(x.DType, "Softmax"), (uint)rows, RowBlock(v), args);
    }

    public void EmbeddingForward(Tensor ids, Tensor table, Tensor output, bool accumulate = false)
    {
        RequireDType("EmbeddingForward", "ids", ids, DType.I32);
        RequireContiguous("EmbeddingForward", "ids", ids);
        RequireElementwise("EmbeddingForward", table);
        RequireContiguous("EmbeddingForward", "output", output);
        RequireDType("EmbeddingForward", "output", output, table.DType);
        if (table.Rank != 2) throw new ArgumentException($"CudaBackend.EmbeddingForward: table must be (V, C), got {table.Shape}");
        long n = ids.NumElements;
        int c = table.Size(1), v = table.Size(0);
        if (output.NumElements != n * c) throw new ArgumentException($"CudaBackend.EmbeddingForward: output {output.Shape} must hold {n} x {c} elements");
        if (n == 0 || c == 0) return;
        ulong pi = Ptr(ids), pt = Ptr(table), po = Ptr(output);
        int acc = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &pi, &pt, &po, &n, &c, &v, &acc };
        bool vec = Vectorizable(table.DType, c, pt, po);   // 16 bytes a thread
        Launch("embedding.cu", (vec ? "embedding_forward_vec_" : "embedding_forward_") + Suffix(table.DType, "EmbeddingForward"),
            GridFor(vec ? n * c / (16 / table.DType.SizeInBytes()) : n * c), Threads, args);
    }

    public void EmbeddingBackward(Tensor ids, Tensor dOutput, Tensor dTable)
    {
        RequireDType("EmbeddingBackward", "ids", ids, DType.I32);
        RequireContiguous("EmbeddingBackward", "ids", ids);
        RequireElementwise("EmbeddingBackward", dTable);
        RequireContiguous("EmbeddingBackward", "dOutput", dOutput);
        RequireDType("EmbeddingBackward", "dOutput", dOutput, dTable.DType);
        if (dTable.Rank != 2) throw new ArgumentException($"CudaBackend.EmbeddingBackward: dTable must be (V, C), got {dTable.Shape}");
        long n = ids.NumElements;
        int c = dTable.Size(1), v = dTable.Size(0);
        if (dOutput.NumElements != n * c) throw new ArgumentException($"CudaBackend.EmbeddingBackward: dOutput {dOutput.Shape} must hold {n} x {c} elements");
        if (n == 0 || c == 0) return;
        ulong pi = Ptr(ids), pd = Ptr(dOutput), pt = Ptr(dTable);
        void** args = stackalloc void*[] { &pi, &pd, &pt, &n, &c, &v };
        bool vec = Vectorizable(dTable.DType, c, pd, pt);  // 16 bytes a thread, packed BF16 atomics on sm_90
        Launch("embedding.cu", (vec ? "embedding_backward_vec_" : "embedding_backward_") + Suffix(dTable.DType, "EmbeddingBackward"),
            GridFor(vec ? n * c / (16 / dTable.DType.SizeInBytes()) : n * c), Threads, args);
    }

    // ---------------------------------------------------------------- reductions

    public void SumRows(Tensor x, Tensor sums)
    {
        RequireElementwise("SumRows", x);
        RequireContiguous("SumRows", "sums", sums);
        int c = x.Size(-1);
        if (sums.NumElements != c) throw new ArgumentException($"CudaBackend.SumRows: sums {sums.Shape} must have {c} elements");
        long rows = x.NumElements / Math.Max(c, 1);
        if (rows == 0 || c == 0) return;
        AddColumnSums(Ptr(x), x.DType, rows, c, c, Ptr(sums), sums.DType, "SumRows");
    }

    /// <summary>
    /// target (C, <paramref name="targetType"/>) += the column sums of x (rows, C) of <paramref name="dtype"/> at
    /// <paramref name="px"/>, its rows <paramref name="ld"/> elements apart (<see cref="SumRows"/>, and the attention
    /// backward's bias gradient over the rows of dq, dk and dv when its kernels do not sum them on the way).
    /// </summary>
    private void AddColumnSums(ulong px, DType dtype, long rows, int c, long ld, ulong target, DType targetType, string op)
    {
        // The 16-byte kernel: a block per (row group, chunk of 16-byte column vectors), about 4 blocks an SM in all, each
        // streaming its rows of one chunk with eight loads in flight a thread (session 18; session 17's blocks walked every
        // chunk in turn and read GPT-2's bias gradients at 2.8 TB/s). Its partials (row groups x C floats) are a few percent
        // of what it reads at the widths of a bias gradient.
        if (Vectorizable(dtype, c, px) && ld % (16 / dtype.SizeInBytes()) == 0)
        {
            int vecCols = c / (16 / dtype.SizeInBytes());
            int chunk = vecCols % 32 == 0 ? 32 : Math.Min(vecCols, (int)Threads);
            int chunks = (vecCols + chunk - 1) / chunk;
            int lanes = (int)Threads / chunk;
            int groups = (int)Math.Clamp((rows + lanes - 1) / lanes, 1, Math.Max(1, 4 * CudaDevice.MultiprocessorCount / chunks));
            ulong partial = Scratch((long)groups * c * sizeof(float));
            void** a1 = stackalloc void*[] { &px, &rows, &c, &ld, &chunk, &partial };
            Launch("reduce.cu", "column_partial_vec_" + Suffix(dtype, op), ((uint)groups, (uint)chunks, 1), Threads, a1);
            ColumnReduce(partial, groups, c, c, targetType, target, op);
            FreeScratch(partial);
            return;
        }
        int g = (int)Math.Min(rows, 2L * CudaDevice.MultiprocessorCount);
        ulong scalarPartial = Scratch((long)g * c * sizeof(float));
        void** a2 = stackalloc void*[] { &px, &rows, &c, &ld, &scalarPartial };
        Launch("reduce.cu", "column_partial_" + Suffix(dtype, op), (uint)g, Threads, a2);
        ColumnReduce(scalarPartial, g, c, c, targetType, target, op);
        FreeScratch(scalarPartial);
    }

    /// <summary>target (C) += column sums of a (rows, stride) f32 matrix of partials; with a second target (0 = none),
    /// also target2 (C) += the sums of columns C to 2C, in the same launch. A block per 32 columns with one warp per 8 rows
    /// (at most 32 warps), so that a warp's loads of up to 8 rows are in flight together: with a warp per 32 rows (until session
    /// 18) the 176 partial rows of a 768-wide SumRows took 6 warps of 30 loads (four batches of 8 one after another), and the
    /// kernel averaged 11 us a call in gpt2-124m's step on the H200.</summary>
    private void ColumnReduce(ulong partial, int rows, long stride, int c, DType targetType, ulong target, string op, ulong target2 = 0)
    {
        void** args = stackalloc void*[] { &partial, &rows, &stride, &c, &target, &target2 };
        long columns = target2 == 0 ? c : 2L * c;
        uint warps = (uint)Math.Clamp((rows + 7) / 8, 1, 32);
        Launch("reduce.cu", "column_reduce_" + Suffix(targetType, op), (uint)((columns + 31) / 32), 32 * warps, args);
    }

    public void Sum(Tensor x, Tensor result, double scale = 1.0, bool accumulate = false) =>
        Reduce("Sum", x, result, scale, accumulate, square: false);

    public void SumOfSquares(Tensor x, Tensor result) =>
        Reduce("SumOfSquares", x, result, 1.0, accumulate: true, square: true);

    private void Reduce(string op, Tensor x, Tensor result, double scale, bool accumulate, bool square)
    {
        RequireElementwise(op, x);
        RequireDType(op, "result", result, DType.F32);
        if (result.NumElements != 1) throw new ArgumentException($"CudaBackend.{op}: result must have one element, got {result.Shape}");
        long n = x.NumElements;
        int g = (int)Math.Clamp((n + Threads - 1) / Threads, 1, 1024);
        ulong partial = Scratch(g * sizeof(double));
        ulong px = Ptr(x), pr = Ptr(result);
        int sq = square ? 1 : 0, acc = accumulate ? 1 : 0;
        void** a1 = stackalloc void*[] { &px, &n, &partial, &sq };
        Launch("reduce.cu", "sum_partial_" + Suffix(x.DType, op), (uint)g, Threads, a1);
        void** a2 = stackalloc void*[] { &partial, &g, &pr, &scale, &acc };
        Launch("reduce.cu", "sum_finish", 1, Threads, a2);
        FreeScratch(partial);
    }
}
