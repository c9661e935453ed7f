using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Tessera.Tensors.Cpu;

// Weight-only int8 products: x times a weight of int8 rows with one F32 scale each (QuantizedWeight); FP8 weights' in
// CpuBackend.QuantizedFp8.cs. Dequantize and the embedding lookups take both.
public sealed unsafe partial class CpuBackend
{
    /// <summary>
    /// Most rows of x that the direct kernel takes: it reads each weight once as bytes, widens them in registers and
    /// multiplies them into the sums of up to three rows of x at a time, which pays while reading the weights bounds the
    /// product (decoding). On two cores it is 4-9x the F32 product at one or two rows, 2-4x at four, even at eight and
    /// behind from sixteen (`bench quantization --ops`, docs/benchmarks.md), so larger products dequantize the weight a tile
    /// at a time and run the GEMM on each.
    /// </summary>
    private const int QuantizedDirectMaxRows = 8;

    /// <summary>
    /// Elements of the dequantized tile of weight rows that <see cref="QuantizedTiled"/> keeps (4 MiB in F32): large enough that
    /// each tile's GEMM, threads and all, is worth its start (1 MiB tiles cost up to twice the F32 product on two cores), small
    /// enough that a Llama 8B's down projection is never whole in floating point.
    /// </summary>
    private const int QuantizedTileElements = 1 << 20;

    /// <inheritdoc/>
    /// <remarks>F32 with at most 8 rows: the direct kernel (AVX2 where present; GELU after it). More rows, and F64 (the
    /// reference): tiles of weight rows dequantized into a scratch of x's dtype and <see cref="MatMul"/> on each. FP8 weights:
    /// x quantized row by row and the sums of codes in F64 (<see cref="QuantizedFp8"/>). Int4 weights: F32 with at most 8 rows
    /// on <see cref="Int4Direct"/>, else the dequantized tiles as int8's. A norm normalizes x into a tensor of its own first
    /// (<see cref="RmsNormMatMul"/>'s composition).</remarks>
    public void QuantizedMatMul(Tensor x, QuantizedWeight weight, Tensor y, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? addend = null, RmsNormPrologue? norm = null)
    {
        const string op = nameof(QuantizedMatMul);
        ArgumentNullException.ThrowIfNull(weight);
        weight.ValidateProduct(nameof(CpuBackend), x, y, beta, bias, epilogue, auxiliary, addend, norm);
        RequireComputeDType(op, nameof(x), x);
        if (weight.InputOrder is { } order)
        {
            // x's columns in the stored order (normalized first), then the product over the stored columns.
            var normalized = norm is { } n ? Normalized(x, n) : null;
            var gathered = Allocate(x.Shape, x.DType);
            try
            {
                GatherColumns(normalized ?? x, order, gathered);
                QuantizedMatMul(gathered, weight.WithoutInputOrder(), y, beta, bias, epilogue, auxiliary, addend);
            }
            finally
            {
                gathered.Storage.Dispose();
                normalized?.Storage.Dispose();
            }
            KeepOperandsAlive(x, order, norm?.Weight);
            return;
        }
        if (norm is { } r)
        {
            var normalized = Normalized(x, r);
            try { QuantizedMatMul(normalized, weight, y, beta, bias, epilogue, auxiliary, addend); }
            finally { normalized.Storage.Dispose(); }
            KeepOperandsAlive(x, r.Weight);
            return;
        }
        bool direct = !weight.IsFp8 && !weight.IsInt4 && x.DType == DType.F32 && x.Size(0) <= QuantizedDirectMaxRows && x.Stride(1) == 1 && y.Stride(1) == 1
            && (addend is null || addend.Stride(1) == 1) && (bias is null || bias.IsContiguous) && (auxiliary is null || auxiliary.Stride(1) == 1);
        // GELU: the product goes to the pre-activation (the GEMM's GELU epilogue wants whole contiguous tensors, and the direct
        // kernel has none), then the activation into y.
        var product = epilogue == MatMulEpilogue.Gelu ? auxiliary! : y;
        bool int4Direct = weight.IsInt4 && x.DType == DType.F32 && x.Size(0) <= QuantizedDirectMaxRows && x.Stride(1) == 1 && y.Stride(1) == 1
            && (addend is null || addend.Stride(1) == 1) && (bias is null || bias.IsContiguous);
        if (weight.IsFp8) QuantizedFp8(x, weight, product, beta, bias, addend);
        else if (int4Direct) Int4Direct(x, weight, product, (float)beta, bias, addend);
        else if (direct) QuantizedDirect(x, weight, product, (float)beta, bias, addend);
        else QuantizedTiled(x, weight, product, beta, bias, addend);
        if (epilogue == MatMulEpilogue.Gelu) GeluForward(product, y);
        KeepOperandsAlive(x, weight.Values, weight.Scales, weight.Zeros, y, bias, auxiliary, addend);
    }

    /// <inheritdoc/>
    /// <remarks>The composition: x normalized once when a norm is given, each weight's <see cref="QuantizedMatMul"/> into a
    /// tensor of its own, then <see cref="SwiGluForward"/>.</remarks>
    public void QuantizedMatMulSwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up, Tensor output, Tensor? gateBias = null,
        Tensor? upBias = null, RmsNormPrologue? norm = null)
    {
        ArgumentNullException.ThrowIfNull(gate);
        gate.ValidateSwiGlu(nameof(CpuBackend), up, x, output, gateBias, upBias, norm);
        var normalized = norm is { } r ? Normalized(x, r) : null;
        var g = Allocate(output.Shape, output.DType);
        var u = Allocate(output.Shape, output.DType);
        try
        {
            QuantizedMatMul(normalized ?? x, gate, g, bias: gateBias);
            QuantizedMatMul(normalized ?? x, up, u, bias: upBias);
            SwiGluForward(g, u, output);
        }
        finally
        {
            g.Storage.Dispose();
            u.Storage.Dispose();
            normalized?.Storage.Dispose();
        }
        KeepOperandsAlive(x, output, gateBias, upBias, norm?.Weight);
    }

    /// <inheritdoc/>
    public void Dequantize(QuantizedWeight weight, Tensor output)
    {
        const string op = nameof(Dequantize);
        ArgumentNullException.ThrowIfNull(weight);
        ArgumentNullException.ThrowIfNull(output);
        RequireShape(op, nameof(output), output, weight.Shape);
        if (output.DType is not (DType.F32 or DType.F64 or DType.BF16) || !output.IsContiguous)
            throw new ArgumentException($"{op}: output must be a contiguous F32, F64 or BF16 tensor, got {output.DType} {output.Shape}", nameof(output));
        if (weight.InputOrderInverse is { } inverse)
        {
            // The stored columns dequantized, then gathered into the inputs' order.
            var stored = Allocate(output.Shape, output.DType);
            try
            {
                Dequantize(weight.WithoutInputOrder(), stored);
                GatherColumns(stored, inverse, output);
            }
            finally { stored.Storage.Dispose(); }
            return;
        }
        if (weight.IsInt4) { DequantizeInt4(weight, output); return; }
        int k = weight.Columns;
        sbyte* q = Ptr<sbyte>(weight.Values);
        float* s = Ptr<float>(weight.Scales);
        var dtype = output.DType;
        byte* o = BytePtr(output);
        bool fp8 = weight.IsFp8;
        ParallelChunks(weight.Rows, k, (start, end) =>
        {
            for (long n = start; n < end; n++)
            {
                float scale = s[n];
                if (fp8)
                {
                    // scale x code: exact in F64, rounded once in F32 and (through F32) in BF16, as the int8 form.
                    byte* codes = (byte*)q + n * k;
                    for (int c = 0; c < k; c++)
                    {
                        float v = Float8E4M3.ToSingle(codes[c]);
                        switch (dtype)
                        {
                            case DType.F32: ((float*)o)[n * k + c] = scale * v; break;
                            case DType.F64: ((double*)o)[n * k + c] = (double)scale * v; break;
                            default: ((BFloat16*)o)[n * k + c] = BFloat16.FromSingle(scale * v); break;
                        }
                    }
                    continue;
                }
                sbyte* row = q + n * k;
                switch (dtype)
                {
                    case DType.F32: WidenScaled(row, k, scale, (float*)o + n * k); break;
                    case DType.F64: for (int c = 0; c < k; c++) ((double*)o)[n * k + c] = (double)scale * row[c]; break;
                    default: for (int c = 0; c < k; c++) ((BFloat16*)o)[n * k + c] = BFloat16.FromSingle(scale * row[c]); break;
                }
            }
        });
        KeepOperandsAlive(weight.Values, weight.Scales, output);
    }

    /// <inheritdoc/>
    public void GatherColumns(Tensor x, Tensor indices, Tensor output)
    {
        const string op = nameof(GatherColumns);
        GatherColumnsArguments.Validate(nameof(CpuBackend), x, indices, output);
        int m = x.Size(0), j = indices.Size(0), k = x.Size(1), size = x.DType.SizeInBytes();
        long ldx = x.Stride(0);
        int* idx = Ptr<int>(indices);
        for (int c = 0; c < j; c++)
            if ((uint)idx[c] >= (uint)k)
                throw new ArgumentException($"CpuBackend.{op}: index {c} is {idx[c]}, outside x's {k} columns", nameof(indices));
        byte* src = BytePtr(x), dst = BytePtr(output);
        ParallelChunks(m, j, (start, end) =>
        {
            for (long r = start; r < end; r++)
            {
                byte* row = src + r * ldx * size, to = dst + r * j * size;
                switch (size)
                {
                    case 2: for (int c = 0; c < j; c++) ((ushort*)to)[c] = ((ushort*)row)[idx[c]]; break;
                    case 4: for (int c = 0; c < j; c++) ((uint*)to)[c] = ((uint*)row)[idx[c]]; break;
                    default: for (int c = 0; c < j; c++) ((ulong*)to)[c] = ((ulong*)row)[idx[c]]; break;
                }
            }
        });
        KeepOperandsAlive(x, indices, output);
    }

    /// <inheritdoc/>
    public void QuantizedEmbeddingForward(Tensor ids, QuantizedWeight table, Tensor output, bool accumulate = false) =>
        QuantizedLookup(nameof(QuantizedEmbeddingForward), ids, table, output, rowOffset: 0, shard: false, accumulate);

    /// <inheritdoc/>
    public void QuantizedEmbeddingShardForward(Tensor ids, QuantizedWeight table, int rowOffset, Tensor output) =>
        QuantizedLookup(nameof(QuantizedEmbeddingShardForward), ids, table, output, rowOffset, shard: true, accumulate: false);

    /// <summary>
    /// output (N, C) (+)= the dequantized rows ids - rowOffset of an int8 or FP8 table (V, C); an id outside the table is refused, or,
    /// for a vocabulary <paramref name="shard"/>, gives a row of zeros.
    /// </summary>
    private void QuantizedLookup(string op, Tensor ids, QuantizedWeight table, Tensor output, int rowOffset, bool shard, bool accumulate)
    {
        ArgumentNullException.ThrowIfNull(ids);
        ArgumentNullException.ThrowIfNull(table);
        ArgumentNullException.ThrowIfNull(output);
        RequireDType(op, nameof(ids), ids, DType.I32);
        RequireRank(op, nameof(ids), ids, 1, "(N)");
        RequireContiguous(op, nameof(ids), ids);
        RequireComputeDType(op, nameof(output), output);
        RequireContiguous(op, nameof(output), output);
        if (table.IsInt4)
            throw new NotSupportedException($"{op}: an int4 table cannot be looked up; int4 quantization keeps the embedding tables in the model's dtype");
        if (table.InputOrder is not null)
            throw new NotSupportedException($"{op}: a table with an input order (act-order columns) cannot be looked up");
        int n = ids.Size(0), c = table.Columns, v = table.Rows;
        RequireShape(op, nameof(output), output, new Shape(n, c));
        int* pid = Ptr<int>(ids);
        if (!shard)
            for (int r = 0; r < n; r++)
                if ((uint)pid[r] >= (uint)v) throw new ArgumentException($"{op}: id {pid[r]} at row {r} is outside the table's {v} rows", nameof(ids));
        sbyte* q = Ptr<sbyte>(table.Values);
        float* s = Ptr<float>(table.Scales);
        bool f32 = output.DType == DType.F32, fp8 = table.IsFp8;
        byte* o = BytePtr(output);
        ParallelChunks(n, c, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                long local = (long)pid[r] - rowOffset;
                bool held = local >= 0 && local < v;
                for (int j = 0; j < c; j++)
                {
                    double value = !held ? 0.0                                         // exact in double; F32 rounds it once
                        : fp8 ? (double)s[local] * Float8E4M3.ToSingle(((byte*)q)[local * c + j]) : (double)s[local] * q[local * c + j];
                    if (f32) { float* d = (float*)o + r * c + j; *d = accumulate ? *d + (float)value : (float)value; }
                    else { double* d = (double*)o + r * c + j; *d = accumulate ? *d + value : value; }
                }
            }
        });
        KeepOperandsAlive(ids, table.Values, table.Scales, output);
    }

    /// <summary>
    /// output (N, K) = scale (q - z) of an int4 weight: exact in F64 (an F32 scale times an integer of at most 5 bits), rounded
    /// once in F32 and (through F32) in BF16, as the int8 form.
    /// </summary>
    private void DequantizeInt4(QuantizedWeight weight, Tensor output)
    {
        int k = weight.Columns, words = k / Int4Quantization.PerWord, groups = weight.Groups, size = weight.GroupSize;
        int* q = Ptr<int>(weight.Values);
        float* s = Ptr<float>(weight.Scales);
        sbyte* z = Ptr<sbyte>(weight.Zeros!);
        var dtype = output.DType;
        byte* o = BytePtr(output);
        bool simd = dtype == DType.F32 && Avx2.IsSupported;
        ParallelChunks(weight.Rows, k, (start, end) =>
        {
            var shifts = Vector256.Create(0u, 4, 8, 12, 16, 20, 24, 28);
            var mask = Vector256.Create(0xFu);
            for (long n = start; n < end; n++)
                if (simd)
                {
                    // Eight nibbles a word widened in one register: (q - zero) * scale, the scalar form's F32 operations.
                    for (int wi = 0; wi < words; wi++)
                    {
                        long g = n * groups + 8 * wi / size;
                        var nibbles = Avx2.And(Avx2.ShiftRightLogicalVariable(Vector256.Create((uint)q[n * words + wi]), shifts), mask);
                        var v = Avx.Multiply(Avx.Subtract(Avx.ConvertToVector256Single(nibbles.AsInt32()), Vector256.Create((float)z[g])), Vector256.Create(s[g]));
                        Avx.Store((float*)o + n * k + 8 * wi, v);
                    }
                }
                else
                {
                    for (int c = 0; c < k; c++)
                    {
                        long g = n * groups + c / size;
                        int nibble = (q[n * words + c / Int4Quantization.PerWord] >> (4 * (c % Int4Quantization.PerWord))) & 0xF;
                        int value = nibble - z[g];
                        switch (dtype)
                        {
                            case DType.F32: ((float*)o)[n * k + c] = s[g] * value; break;
                            case DType.F64: ((double*)o)[n * k + c] = (double)s[g] * value; break;
                            default: ((BFloat16*)o)[n * k + c] = BFloat16.FromSingle(s[g] * value); break;
                        }
                    }
                }
        });
        KeepOperandsAlive(weight.Values, weight.Scales, weight.Zeros, output);
    }

    /// <summary>
    /// y = x W^T (+ bias) (+ beta y | + addend) for F32 x of few rows over an int4 weight: weight rows across the threads; with
    /// AVX2 each word's eight nibbles are widened in one register, turned into (q - zero) scale (the F32 operations of
    /// <see cref="DequantizeInt4"/>) and multiplied into every row of x by FMA; without, a group at a time through a small F32
    /// scratch. The weight is read once as nibbles and never whole in floating point (decoding).
    /// </summary>
    private void Int4Direct(Tensor x, QuantizedWeight weight, Tensor y, float beta, Tensor? bias, Tensor? addend)
    {
        int m = x.Size(0), k = weight.Columns, n = weight.Rows, words = k / Int4Quantization.PerWord, groups = weight.Groups, size = weight.GroupSize;
        float* px = Ptr<float>(x), py = Ptr<float>(y), ps = Ptr<float>(weight.Scales);
        float* pb = bias is null ? null : Ptr<float>(bias);
        float* pa = addend is null ? null : Ptr<float>(addend);
        int* pq = Ptr<int>(weight.Values);
        sbyte* pz = Ptr<sbyte>(weight.Zeros!);
        long ldx = x.Stride(0), ldy = y.Stride(0), lda = addend?.Stride(0) ?? 0;
        bool simd = Avx2.IsSupported && Fma.IsSupported;
        ParallelChunks(n, (long)m * k, (start, end) =>
        {
            float* w = stackalloc float[simd ? 1 : size];
            float* sums = stackalloc float[QuantizedDirectMaxRows];
            var acc = stackalloc Vector256<float>[QuantizedDirectMaxRows];
            for (long r = start; r < end; r++)
            {
                for (int i = 0; i < m; i++) sums[i] = 0f;
                int* row = pq + r * words;
                if (simd)
                {
                    // A word's eight nibbles widened in one register (variable shifts), (q - zero) * scale as the scalar form, then one
                    // FMA a row of x: the weight is never written out.
                    var shifts = Vector256.Create(0u, 4, 8, 12, 16, 20, 24, 28);
                    var mask = Vector256.Create(0xFu);
                    for (int i = 0; i < m; i++) acc[i] = Vector256<float>.Zero;
                    for (int g = 0; g < groups; g++)
                    {
                        var scale = Vector256.Create(ps[r * groups + g]);
                        var zero = Vector256.Create((float)pz[r * groups + g]);
                        int firstWord = g * size / 8, lastWord = Math.Min(words, (g + 1) * size / 8);
                        for (int wi = firstWord; wi < lastWord; wi++)
                        {
                            var q = Avx2.And(Avx2.ShiftRightLogicalVariable(Vector256.Create((uint)row[wi]), shifts), mask);
                            var v = Avx.Multiply(Avx.Subtract(Avx.ConvertToVector256Single(q.AsInt32()), zero), scale);
                            for (int i = 0; i < m; i++) acc[i] = Fma.MultiplyAdd(Avx.LoadVector256(px + i * ldx + 8 * wi), v, acc[i]);
                        }
                    }
                    for (int i = 0; i < m; i++) sums[i] = Vector256.Sum(acc[i]);
                }
                else
                {
                    for (int g = 0; g < groups; g++)
                    {
                        int first = g * size, length = Math.Min(size, k - first);
                        float scale = ps[r * groups + g];
                        int zero = pz[r * groups + g];
                        for (int c = 0; c < length; c++)
                            w[c] = scale * (((row[(first + c) >> 3] >> (4 * ((first + c) & 7))) & 0xF) - zero);
                        for (int i = 0; i < m; i++)
                            sums[i] += Dot(px + i * ldx + first, w, length);
                    }
                }
                for (int i = 0; i < m; i++)
                {
                    float v = sums[i] + (pb is null ? 0f : pb[r]);
                    float* out_ = py + i * ldy + r;
                    if (pa is not null) v += pa[i * lda + r];
                    else if (beta != 0f) v += beta * *out_;
                    *out_ = v;
                }
            }
        });
    }

    /// <summary>Σ a[i] b[i] over <paramref name="length"/> F32 values (8 lanes at a time where AVX2 and FMA are present).</summary>
    private static float Dot(float* a, float* b, int length)
    {
        int i = 0;
        float sum = 0f;
        if (Avx2.IsSupported && Fma.IsSupported && length >= 8)
        {
            var acc = Vector256<float>.Zero;
            for (; i + 8 <= length; i += 8) acc = Fma.MultiplyAdd(Avx.LoadVector256(a + i), Avx.LoadVector256(b + i), acc);
            sum = Vector256.Sum(acc);
        }
        for (; i < length; i++) sum += a[i] * b[i];
        return sum;
    }

    /// <summary>
    /// The product a tile of weight rows at a time: each tile dequantized into one scratch of x's dtype (reused, so the weight
    /// is never whole in floating point), then the GEMM over the matching columns of y (and of the bias and addend), which it
    /// reads and writes in place through their row strides.
    /// </summary>
    private void QuantizedTiled(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend)
    {
        int n = weight.Rows, k = weight.Columns;
        int tile = Math.Min(n, Math.Max(16, QuantizedTileElements / Math.Max(1, k) / 16 * 16));
        var scratch = Allocate(new Shape(tile, k), x.DType);
        try
        {
            for (int first = 0; first < n; first += tile)
            {
                int rows = Math.Min(tile, n - first);
                var w = scratch.Slice(0, 0, rows);
                Dequantize(weight.SliceRows(first, rows), w);
                MatMul(x, w, y.Slice(1, first, rows), transposeB: true, beta: beta, bias: bias?.Slice(0, first, rows),
                    addend: addend?.Slice(1, first, rows));
            }
        }
        finally { scratch.Storage.Dispose(); }
    }

    /// <summary>
    /// y = x W^T (+ bias) (+ beta y | + addend) for F32 x of few rows: blocks of four weight rows across the threads; each
    /// block's bytes are widened to F32 in registers once per three rows of x and multiplied into twelve sums.
    /// </summary>
    private void QuantizedDirect(Tensor x, QuantizedWeight weight, Tensor y, float beta, Tensor? bias, Tensor? addend)
    {
        int m = x.Size(0), k = weight.Columns, n = weight.Rows;
        float* px = Ptr<float>(x), py = Ptr<float>(y), ps = Ptr<float>(weight.Scales);
        float* pb = bias is null ? null : Ptr<float>(bias);
        float* pa = addend is null ? null : Ptr<float>(addend);
        sbyte* pq = Ptr<sbyte>(weight.Values);
        long ldx = x.Stride(0), ldy = y.Stride(0), lda = addend?.Stride(0) ?? 0;
        ParallelChunks((n + 3) / 4, 4L * m * k, (start, end) =>
        {
            float* dots = stackalloc float[12];                  // (3 rows of x, 4 weight rows)
            for (long block = start; block < end; block++)
            {
                int first = (int)(block * 4), rows = Math.Min(4, n - first);
                for (int r0 = 0; r0 < m; r0 += 3)
                {
                    int group = Math.Min(3, m - r0);
                    Int8Dot3x4(px + r0 * ldx, ldx, group, pq + (long)first * k, k, rows, dots);
                    for (int g = 0; g < group; g++)
                        for (int j = 0; j < rows; j++)
                        {
                            int r = r0 + g, col = first + j;
                            float v = dots[g * 4 + j] * ps[col] + (pb is null ? 0f : pb[col]);
                            float* out_ = py + r * ldy + col;
                            if (pa is not null) v += pa[r * lda + col];
                            else if (beta != 0f) v += beta * *out_;
                            *out_ = v;
                        }
                }
            }
        });
    }

    /// <summary>
    /// dots[g 4 + j] = Σ_i x[g ldx + i] q[j k + i] for <paramref name="group"/> (1 to 3) rows of x and <paramref name="rows"/>
    /// (1 to 4) consecutive rows of q, in F32: each 8 bytes of a weight row widened once and used by every row of x.
    /// </summary>
    private static void Int8Dot3x4(float* x, long ldx, int group, sbyte* q, int k, int rows, float* dots)
    {
        for (int i = 0; i < 4 * group; i++) dots[i] = 0f;
        int c = 0;
        if (Avx2.IsSupported && Fma.IsSupported && rows == 4 && k >= 8)
        {
            var z = Vector256<float>.Zero;
            Vector256<float> a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z, a20 = z, a21 = z, a22 = z, a23 = z;
            float* x1 = x + ldx, x2 = x + 2 * ldx;
            sbyte* q1 = q + k, q2 = q + 2L * k, q3 = q + 3L * k;
            for (; c + 8 <= k; c += 8)
            {
                var w0 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + c));
                var w1 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q1 + c));
                var w2 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q2 + c));
                var w3 = Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q3 + c));
                var v0 = Avx.LoadVector256(x + c);
                a00 = Fma.MultiplyAdd(v0, w0, a00); a01 = Fma.MultiplyAdd(v0, w1, a01); a02 = Fma.MultiplyAdd(v0, w2, a02); a03 = Fma.MultiplyAdd(v0, w3, a03);
                if (group > 1)
                {
                    var v1 = Avx.LoadVector256(x1 + c);
                    a10 = Fma.MultiplyAdd(v1, w0, a10); a11 = Fma.MultiplyAdd(v1, w1, a11); a12 = Fma.MultiplyAdd(v1, w2, a12); a13 = Fma.MultiplyAdd(v1, w3, a13);
                }
                if (group > 2)
                {
                    var v2 = Avx.LoadVector256(x2 + c);
                    a20 = Fma.MultiplyAdd(v2, w0, a20); a21 = Fma.MultiplyAdd(v2, w1, a21); a22 = Fma.MultiplyAdd(v2, w2, a22); a23 = Fma.MultiplyAdd(v2, w3, a23);
                }
            }
            dots[0] = Vector256.Sum(a00); dots[1] = Vector256.Sum(a01); dots[2] = Vector256.Sum(a02); dots[3] = Vector256.Sum(a03);
            if (group > 1) { dots[4] = Vector256.Sum(a10); dots[5] = Vector256.Sum(a11); dots[6] = Vector256.Sum(a12); dots[7] = Vector256.Sum(a13); }
            if (group > 2) { dots[8] = Vector256.Sum(a20); dots[9] = Vector256.Sum(a21); dots[10] = Vector256.Sum(a22); dots[11] = Vector256.Sum(a23); }
        }
        for (int g = 0; g < group; g++)
            for (int j = 0; j < rows; j++)
            {
                float* xr = x + g * ldx;
                sbyte* row = q + (long)j * k;
                float tail = 0f;
                for (int i = c; i < k; i++) tail += xr[i] * row[i];
                dots[g * 4 + j] += tail;
            }
    }

    /// <summary>w[i] = scale q[i] in F32 for <paramref name="count"/> values (the product rounded once, as the scalar form).</summary>
    private static void WidenScaled(sbyte* q, int count, float scale, float* w)
    {
        int i = 0;
        if (Avx2.IsSupported)
        {
            var s = Vector256.Create(scale);
            for (; i + 8 <= count; i += 8) Avx.Store(w + i, Avx.Multiply(s, Avx.ConvertToVector256Single(Avx2.ConvertToVector256Int32(q + i))));
        }
        for (; i < count; i++) w[i] = scale * q[i];
    }
}
