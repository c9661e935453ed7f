using Tessera.Tensors;

namespace Tessera.Cuda;

// Weight-only int8 products (QuantizedWeight): at most 4 rows of x (decoding), the matrix-vector kernel's int8 form, which
// reads each weight once at one byte; 5 to 64 rows (a serving decode step's batch), the decode product's int8 form
// (decode_gemm.cu on tensor cores, the weight staged at one byte and turned into x's type in registers); otherwise the
// weight dequantized into scratch, then the product as for any weight. FP8 weights: CudaBackend.QuantizedFp8.cs.
public sealed unsafe partial class CudaBackend
{
    /// <summary>Int8 weights a 16-byte load of the matrix-vector kernel holds: K must be a multiple of it.</summary>
    private const int QuantizedGemvChunk = 16;

    /// <inheritdoc/>
    /// <remarks>For 1 to 4 rows of x with no epilogue, the matrix-vector kernel's int8 form (gemv.cu, <c>gemv_stream_q8_*</c>):
    /// each warp streams int8 rows, sums x times the values in fp32 and multiplies the sum by the row's scale, reading the
    /// addend (or y, for beta) as it writes y; it needs what <see cref="GemvFits"/> needs of x and K a multiple of 16, and
    /// <see cref="CudaBackendOptions.MatrixVectorKernels"/> on. For 5 to 64 rows with no epilogue, the decode product's int8
    /// form (decode_gemm.cu, <c>decode_gemm_q8_*</c>; <see cref="TryDecodeGemmQuantized"/> says what it needs), under
    /// <see cref="CudaBackendOptions.QuantizedDecodeProducts"/>. Otherwise the weight is dequantized into scratch of x's dtype
    /// (one weight at a time, from the caching allocator, so it is recorded into graphs like any scratch) and
    /// <see cref="MatMul"/> runs on it. The choice depends on shapes, dtypes, alignment and options only, so an eager step
    /// and its recorded graph take the same path. A norm rides in the matrix-vector kernel (it stages x normalized, as for
    /// 16-bit weights) and in the decode product (x's fragments scaled on the way); on the other paths x is normalized into
    /// scratch first.</remarks>
    public void QuantizedMatMul(Tensor x, QuantizedWeight weight, Tensor y, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? addend = null, RmsNormPrologue? norm = null)
    {
        ArgumentNullException.ThrowIfNull(weight);
        weight.ValidateProduct(nameof(CudaBackend), x, y, beta, bias, epilogue, auxiliary, addend, norm);
        if (WithUnitOffsetNormApplied(x, norm, h => QuantizedMatMul(h, weight, y, beta, bias, epilogue, auxiliary, addend))) return;
        if (weight.InputOrder is { } order)
        {
            // Act order: x (normalized first) gathered into the stored columns' order, then the product over them.
            var gathered = GatheredInput(x, norm, order);
            QuantizedMatMul(gathered, weight.WithoutInputOrder(), y, beta, bias, epilogue, auxiliary, addend);
            gathered.Storage.Dispose();
            return;
        }
        if (weight.IsFp8) { QuantizedMatMulFp8(x, weight, y, beta, bias, epilogue, auxiliary, addend, norm); return; }
        if (weight.IsInt4) { QuantizedMatMulInt4(x, weight, y, beta, bias, epilogue, auxiliary, addend, norm); return; }
        if (epilogue == MatMulEpilogue.None && TryGemvQuantized(x, weight, y, beta, bias, addend, norm)) return;
        // The decode product normalizes x on the way (no scratch, no norm launch).
        if (epilogue == MatMulEpilogue.None && norm is not null && TryDecodeGemmQuantized(x, weight, y, beta, bias, addend, norm)) return;
        var normalized = norm is { } r ? NormalizedScratch(x, r) : null;
        var input = normalized ?? x;
        if (epilogue != MatMulEpilogue.None || !TryDecodeGemmQuantized(input, weight, y, beta, bias, addend))
        {
            var w = ScratchTensor(weight.Shape, x.DType);
            Dequantize(weight, w);
            MatMul(input, w, y, transposeB: true, beta: beta, bias: bias, epilogue: epilogue, auxiliary: auxiliary, addend: addend);
            w.Storage.Dispose();
        }
        normalized?.Storage.Dispose();
    }

    /// <inheritdoc/>
    /// <remarks>Int4 weights at 1 to 4 rows (decoding): one launch, the int4 stream's SwiGLU form
    /// (<see cref="TryGemvStreamInt4SwiGlu"/>, K and the groups multiples of 32); at 5 to 64 rows of bf16 or f16 (a serving decode
    /// step) in groups of a multiple of 64: one launch, the decode product by group sums in its SwiGLU form
    /// (<see cref="TryDecodeGemmInt4SwiGlu"/>); the norm on the way in both. Int8 weights likewise: the int8 stream's SwiGLU form
    /// at 1 to 4 rows, the int8 decode product's at 5 to 64, the norm on the way in both. More
    /// rows of int8 or int4 weights without biases (prefill, a mixed step): both weights dequantized into one (2F, C) scratch and
    /// one product at N = 2F, then the SwiGLU kernel on the halves, as <see cref="MatMulSwiGlu"/> does for adjacent 16-bit
    /// weights. Otherwise (FP8 weights, shapes or alignments no fused kernel takes, biases past 64 rows) each weight's
    /// <see cref="QuantizedMatMul"/> into scratch, then the SwiGLU kernel.</remarks>
    public void QuantizedMatMulSwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up, Tensor output, Tensor? gateBias = null,
        Tensor? upBias = null, RmsNormPrologue? norm = null)
    {
        ArgumentNullException.ThrowIfNull(gate);
        gate.ValidateSwiGlu(nameof(CudaBackend), up, x, output, gateBias, upBias, norm);
        if (WithUnitOffsetNormApplied(x, norm, h => QuantizedMatMulSwiGlu(h, gate, up, output, gateBias, upBias))) return;
        if (gate.InputOrder is { } order && ReferenceEquals(order, up.InputOrder))
        {
            // Act-order weights of one order (GPTQ orders gate and up by their one input): x gathered once, then the fused op.
            var gathered = GatheredInput(x, norm, order);
            QuantizedMatMulSwiGlu(gathered, gate.WithoutInputOrder(), up.WithoutInputOrder(), output, gateBias, upBias);
            gathered.Storage.Dispose();
            return;
        }
        if (norm is { } nr && x.Size(0) > GemvMaxRows && x.Size(0) <= DecodeGemmMaxRows && x.Size(0) > Options.QuantizedDecodeProductNormMaxRows)
        {
            // Past QuantizedDecodeProductNormMaxRows the decode products take x normalized by the norm kernel (one launch), not on the way.
            var h = NormalizedScratch(x, nr);
            QuantizedMatMulSwiGlu(h, gate, up, output, gateBias, upBias);
            h.Storage.Dispose();
            return;
        }
        // Weights in different orders gather x each (QuantizedMatMul's, or Dequantize's columns): the fused kernels read x as it is.
        bool ordered = gate.InputOrder is not null || up.InputOrder is not null;
        if (!ordered && gate.IsInt4 && (TryGemvStreamInt4SwiGlu(x, gate, up, output, gateBias, upBias, norm)
            || TryDecodeGemmInt4SwiGlu(x, gate, up, output, gateBias, upBias, norm))) return;
        if (!ordered && !gate.IsInt4 && !gate.IsFp8 && (TryGemvQuantizedSwiGlu(x, gate, up, output, gateBias, upBias, norm)
            || TryDecodeGemmQuantizedSwiGlu(x, gate, up, output, gateBias, upBias, norm))) return;
        int m = x.Size(0), f = gate.Rows;
        var dtype = x.DType;
        if (!gate.IsFp8 && m > DecodeGemmMaxRows && gateBias is null && upBias is null)
        {
            var both = ScratchTensor(new Shape(2 * f, gate.Columns), dtype);                     // (2F, C): [Wg; Wu]
            Dequantize(gate, both.Slice(0, 0, f));
            Dequantize(up, both.Slice(0, f, f));
            var h = norm is { } r ? NormalizedScratch(x, r) : null;
            var gu = ScratchTensor(new Shape(m, 2 * f), dtype);                                  // (M, 2F): [g | u]
            MatMul(h ?? x, both, gu, transposeB: true);
            SwiGluForward(gu.Slice(1, 0, f), gu.Slice(1, f, f), output);
            gu.Storage.Dispose();
            h?.Storage.Dispose();
            both.Storage.Dispose();
            return;
        }
        var g = ScratchTensor(output.Shape, dtype);
        var u = ScratchTensor(output.Shape, dtype);
        QuantizedMatMul(x, gate, g, bias: gateBias, norm: norm);
        QuantizedMatMul(x, up, u, bias: upBias, norm: norm);
        SwiGluForward(g, u, output);
        g.Storage.Dispose();
        u.Storage.Dispose();
    }

    /// <inheritdoc/>
    /// <remarks>Int4 and int8 weights at 1 to 4 rows that fit their stream (<see cref="QuantizedStreamFits"/>), with a cache of
    /// x's dtype: one launch, the stream's ROPE form (<c>gemv_stream_int4_rope_*</c>, <c>gemv_stream_q8_rope_*</c>: a warp's pair
    /// of rows (i, i + D/2), rotated and appended as it is written), as <see cref="MatMulRopeAppend"/> is for 16-bit weights;
    /// otherwise <see cref="QuantizedMatMul"/>, then <see cref="RopeAndAppend"/>.</remarks>
    public void QuantizedMatMulRopeAppend(Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor keysAndValues, Tensor startPositions, RopeFrequencies frequencies)
    {
        const string op = nameof(QuantizedMatMulRopeAppend);
        ArgumentNullException.ThrowIfNull(weight);
        var flat = DenseQkvRows(op, x, weight.Shape, qkv);
        if (weight.InputOrder is { } order)
        {
            var gathered = GatheredInput(x, norm, order);                    // act order: x gathered once, then the fused op
            QuantizedMatMulRopeAppend(gathered, null, weight.WithoutInputOrder(), bias, qkv, queryHeads, keysAndValues, startPositions, frequencies);
            gathered.Storage.Dispose();
            return;
        }
        if (QuantizedStreamFits(x, weight, bias, norm) && StreamRopeFits(qkv, queryHeads, keysAndValues, x.DType))
        {
            LaunchQuantizedStreamRope(op, x, norm, weight, bias, qkv, DenseRopeArgs(op, qkv, queryHeads, keysAndValues, startPositions, frequencies));
            return;
        }
        QuantizedMatMul(x, weight, flat, bias: bias, norm: norm);
        RopeAndAppend(qkv, queryHeads, keysAndValues, startPositions, frequencies);
    }

    /// <inheritdoc/>
    /// <remarks>Int4 and int8 weights at 1 to 4 rows that fit their stream, with a 16-bit pool of x's dtype: one launch, the
    /// stream's ROPE form writing to the rows' slots, as <see cref="MatMulRopePagedAppend"/> is for 16-bit weights; otherwise
    /// <see cref="QuantizedMatMul"/>, then <see cref="RopePagedAppend"/>.</remarks>
    public void QuantizedMatMulRopePagedAppend(Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv, int queryHeads,
        Tensor pool, Tensor positions, PagedBatch batch, RopeFrequencies frequencies, Tensor? poolScales = null)
    {
        const string op = nameof(QuantizedMatMulRopePagedAppend);
        ArgumentNullException.ThrowIfNull(weight);
        var flat = PagedQkvRows(op, x, weight.Shape, qkv, queryHeads, pool, positions, batch, poolScales);
        if (weight.InputOrder is { } order)
        {
            var gathered = GatheredInput(x, norm, order);                    // act order: x gathered once, then the fused op
            QuantizedMatMulRopePagedAppend(gathered, null, weight.WithoutInputOrder(), bias, qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
            gathered.Storage.Dispose();
            return;
        }
        if (Options.FusedPagedQkv && QuantizedStreamFits(x, weight, bias, norm) && StreamRopeFits(qkv, pool, x.DType))
        {
            LaunchQuantizedStreamRope(op, x, norm, weight, bias, qkv, PagedRopeArgs(qkv, queryHeads, pool, positions, batch, frequencies));
            return;
        }
        QuantizedMatMul(x, weight, flat, bias: bias, norm: norm);
        RopePagedAppend(qkv, queryHeads, pool, positions, batch, frequencies, poolScales);
    }

    /// <summary>
    /// x's columns (RMS-normalized first when <paramref name="norm"/> is given) gathered in <paramref name="order"/> into scratch
    /// of x's shape, which the caller disposes: the input of a product over an act-order weight's stored columns.
    /// </summary>
    private Tensor GatheredInput(Tensor x, RmsNormPrologue? norm, Tensor order)
    {
        var h = norm is { } r ? NormalizedScratch(x, r) : null;
        var gathered = ScratchTensor(x.Shape, x.DType);
        GatherColumns(h ?? x, order, gathered);
        h?.Storage.Dispose();
        return gathered;
    }

    /// <inheritdoc/>
    /// <remarks>One launch (copy.cu, <c>gather_columns_b{2,4,8}</c>), a thread an output element; the indices are not checked on
    /// the device.</remarks>
    public void GatherColumns(Tensor x, Tensor indices, Tensor output)
    {
        GatherColumnsArguments.Validate(nameof(CudaBackend), x, indices, output);
        long m = x.Size(0);
        int j = indices.Size(0);
        if (m == 0 || j == 0) return;
        ulong px = Ptr(x), po = Ptr(output), pi = Ptr(indices);
        long ld = x.Stride(0);
        void** args = stackalloc void*[] { &px, &po, &pi, &m, &j, &ld };
        Launch("copy.cu", $"gather_columns_b{x.DType.SizeInBytes()}", GridFor(m * j), Threads, args);
    }

    /// <summary>
    /// output (M, F) = SiLU(sg (x qg^T) + bg) * (su (x qu^T) + bu) with M &lt;= 4 and two int8 weights: the int8 stream's SwiGLU form
    /// (gemv.cu, <c>gemv_stream_q8_swiglu_{type}_m{M}</c>; a warp's output the gate row then the up row, each sum times its row's
    /// scale, x normalized as it is staged when <paramref name="norm"/> is given): one launch. False, with nothing enqueued, when
    /// either weight does not fit the int8 stream (<see cref="GemvQuantizedFits"/>) or output is not contiguous in x's dtype.
    /// </summary>
    private bool TryGemvQuantizedSwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up, Tensor output, Tensor? gateBias, Tensor? upBias,
        RmsNormPrologue? norm)
    {
        if (!GemvQuantizedFits(x, gate, gateBias, norm) || !GemvQuantizedFits(x, up, upBias, norm) || output.DType != x.DType || !output.IsContiguous)
            return false;
        int m = x.Size(0), k = x.Size(1), f = gate.Rows;
        var dtype = x.DType;
        ulong px = Ptr(x), pg = Ptr(gate.Values), pu = Ptr(up.Values), psg = Ptr(gate.Scales), psu = Ptr(up.Scales), pbg = PtrOrNull(gateBias),
            pbu = PtrOrNull(upBias), po = Ptr(output);
        long ldx = x.Stride(0), ldw = k, ldo = f;
        var (pn, eps) = NormOperands(norm);
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pg, &pu, &psg, &psu, &pbg, &pbu, &po, &f, &k, &ldx, &ldw, &ldo, &pn, &eps, &early };
        Launch("gemv.cu", $"gemv_stream_q8_swiglu_{Suffix(dtype, nameof(QuantizedMatMulSwiGlu))}_m{m}", (GemvGrid(f), 1, 1), 256, args,
            GemvShared(m, k, dtype), dependent: true);
        return true;
    }

    /// <summary>Whether x (M, K), the int4 or int8 weight and its bias suit that format's stream (FP8, or an input order: false).</summary>
    private bool QuantizedStreamFits(Tensor x, QuantizedWeight weight, Tensor? bias, RmsNormPrologue? norm) => weight.InputOrder is null
        && (weight.IsInt4 ? GemvStreamInt4Fits(x, weight, bias, norm) : !weight.IsFp8 && GemvQuantizedFits(x, weight, bias, norm));

    /// <summary>
    /// qkv = x W^T + bias over the int4 or int8 qkv weight with M &lt;= 4, rotated and appended to the cache or pool
    /// <paramref name="rope"/> describes, in one launch (gemv.cu, <c>gemv_stream_int4_rope_{type}_m{M}</c> or
    /// <c>gemv_stream_q8_rope_{type}_m{M}</c>; the caller checked <see cref="QuantizedStreamFits"/> and the cache): a warp a pair
    /// of rows (i, i + D/2) of a head.
    /// </summary>
    private void LaunchQuantizedStreamRope(string op, Tensor x, RmsNormPrologue? norm, QuantizedWeight weight, Tensor? bias, Tensor qkv, GemvRopeArgs rope)
    {
        int m = x.Size(0), k = x.Size(1), pairs = weight.Rows / 2, group = weight.GroupSize;
        ulong px = Ptr(x), pq = Ptr(weight.Values), ps = Ptr(weight.Scales), pb = PtrOrNull(bias), py = Ptr(qkv);
        var (pn, eps) = NormOperands(norm);
        long ldx = x.Stride(0), ldy = weight.Rows, ldw = k;
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        if (weight.IsInt4)
        {
            ulong pz = Ptr(weight.Zeros!);
            void** args = stackalloc void*[] { &px, &pq, &ps, &pz, &pb, &py, &pairs, &k, &group, &ldx, &ldy, &pn, &eps, &rope, &early };
            Launch("gemv.cu", $"gemv_stream_int4_rope_{Suffix(x.DType, op)}_m{m}", (GemvGrid(pairs), 1, 1), 256, args, GemvShared(m, k, x.DType), dependent: true);
            return;
        }
        void** q8 = stackalloc void*[] { &px, &pq, &ps, &pb, &py, &pairs, &k, &ldx, &ldw, &ldy, &pn, &eps, &rope, &early };
        Launch("gemv.cu", $"gemv_stream_q8_rope_{Suffix(x.DType, op)}_m{m}", (GemvGrid(pairs), 1, 1), 256, q8, GemvShared(m, k, x.DType), dependent: true);
    }

    /// <summary>Whether x (M, K), the int8 weight and its bias suit the int8 stream: what <see cref="GemvFits"/> needs of x and the norm, K a multiple of 16, the values 16-byte aligned.</summary>
    private bool GemvQuantizedFits(Tensor x, QuantizedWeight weight, Tensor? bias, RmsNormPrologue? norm) =>
        GemvFits(x, norm) && weight.Rows > 0 && x.Size(1) % QuantizedGemvChunk == 0 && Ptr(weight.Values) % 16 == 0 && BiasFits(bias, x.DType, weight.Rows);

    /// <summary>
    /// output (M, F) = SiLU(sg (x qg^T) + bg) * (su (x qu^T) + bu) with 5 &lt;= M &lt;= 64 and two int8 weights: the int8 decode
    /// product's SwiGLU form (decode_gemm.cu, <c>decode_gemm_q8_swiglu_{bf16,f16}_m{2,4,8}</c>), 64 outputs a CTA, both weights in
    /// one pass, each sum times its row's scale, x normalized on the way when <paramref name="norm"/> is given. False, with
    /// nothing enqueued, when the call does not fit what <see cref="DecodeGemmQuantizedFits"/> needs of either weight or what
    /// <see cref="DecodeNormFits"/> needs of the norm, or output is not contiguous in x's dtype.
    /// </summary>
    private bool TryDecodeGemmQuantizedSwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up, Tensor output, Tensor? gateBias, Tensor? upBias,
        RmsNormPrologue? norm)
    {
        if (!DecodeGemmQuantizedFits(x, gate, gateBias) || !DecodeGemmQuantizedFits(x, up, upBias) || output.DType != x.DType || !output.IsContiguous
            || (norm is { } nr && !DecodeNormFits(x, nr))) return false;
        int m = x.Size(0), k = x.Size(1), f = gate.Rows, mt = DecodeGemmTiles(m), blocks = (f + DecodeGemmBlockRows / 2 - 1) / (DecodeGemmBlockRows / 2);
        int slices = QuantizedDecodeGemmSlices(blocks, k / DecodeGemmTile);
        ulong px = Ptr(x), pg = Ptr(gate.Values), pu = Ptr(up.Values), psg = Ptr(gate.Scales), psu = Ptr(up.Scales), pbg = PtrOrNull(gateBias),
            pbu = PtrOrNull(upBias), po = Ptr(output);
        long ldx = x.Stride(0), ldw = k, ldo = f;
        var (pn, eps) = NormOperands(norm);
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pg, &pu, &psg, &psu, &pbg, &pbu, &po, &m, &f, &k, &ldx, &ldw, &ldo, &early, &pn, &eps };
        Launch("decode_gemm.cu", $"decode_gemm_q8_swiglu_{Suffix(x.DType, nameof(QuantizedMatMulSwiGlu))}_m{mt}", ((uint)slices, (uint)blocks, 1),
            DecodeGemmThreads, args, DecodeGemmQuantizedShared(mt), dependent: true, clusterX: (uint)slices);
        return true;
    }

    /// <summary>
    /// y (M, N) = x (M, K) W^T + bias + beta y, or + addend, with M &lt;= 4 and W the int8 weight: the persistent matrix-vector
    /// kernel's int8 form, which streams the (N, K) values once and applies each row's scale to its sum, x RMS-normalized as
    /// it is staged when <paramref name="norm"/> is given. False, with nothing enqueued, when the call does not fit it (then
    /// the dequantized product runs it).
    /// </summary>
    private bool TryGemvQuantized(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend, RmsNormPrologue? norm)
    {
        if (!GemvQuantizedFits(x, weight, bias, norm)) return false;
        int m = x.Size(0), k = x.Size(1), n = weight.Rows;
        var dtype = x.DType;
        if (n > 1 && (y.Stride(1) != 1 || (addend is not null && addend.Stride(1) != 1))) return false;
        // The addend is read where the kernel reads beta's term (beta = 1): y = sum + bias + addend in one pass, no copy.
        var c = addend ?? y;
        ulong px = Ptr(x), pq = Ptr(weight.Values), ps = Ptr(weight.Scales), pb = PtrOrNull(bias), py = Ptr(y), pc = Ptr(c);
        long ldx = x.Stride(0), ldw = k, ldy = y.Stride(0), ldc = c.Stride(0);
        float be = addend is null ? (float)beta : 1f;
        var (pn, eps) = NormOperands(norm);
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pq, &ps, &pb, &py, &pc, &n, &k, &ldx, &ldw, &ldy, &ldc, &be, &pn, &eps, &early };
        Launch("gemv.cu", $"gemv_stream_q8_{Suffix(dtype, nameof(QuantizedMatMul))}_m{m}", (GemvGrid(n), 1, 1), 256, args,
            GemvShared(m, k, dtype), dependent: true);
        return true;
    }

    /// <summary>
    /// y (M, N) = x (M, K) W^T + bias + beta y, or + addend, with 5 &lt;= M &lt;= 64 and W the int8 weight: the decode product's
    /// int8 form (<c>decode_gemm_q8_{bf16,f16}_m{2,4,8}</c>), which stages the (N, K) values at one byte, multiplies them by x on
    /// tensor cores in x's type with fp32 sums, K in slices of a thread-block cluster as the 16-bit form, and applies each row's
    /// scale in the epilogue. False, with nothing enqueued, when the call does not fit it (then the dequantized product runs it):
    /// <see cref="CudaBackendOptions.QuantizedDecodeProducts"/> off, compute capability below 9.0 (the kernel file's cluster
    /// instructions), x not bf16 or f16, K not a multiple of 64, x's or y's or the addend's columns not unit-strided, x's rows not
    /// 16-byte aligned, the values not 16-byte aligned. The grid follows the 16-bit form's, aiming at
    /// <see cref="CudaBackendOptions.QuantizedDecodeProductCtasPerSm"/> CTAs an SM (<see cref="QuantizedDecodeGemmSlices"/>), so
    /// an eager call and its recorded graph launch the same kernel; nothing is allocated.
    /// </summary>
    private bool TryDecodeGemmQuantized(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend,
        RmsNormPrologue? norm = null)
    {
        if (!DecodeGemmQuantizedFits(x, weight, bias) || (norm is { } nr && !DecodeNormFits(x, nr))) return false;
        int m = x.Size(0), k = x.Size(1), n = weight.Rows;
        var dtype = x.DType;
        if (y.Stride(1) != 1 || (addend is not null && addend.Stride(1) != 1)) return false;
        // The addend is read where the kernel reads beta's term (beta = 1), as the matrix-vector form does.
        var c = addend ?? y;
        int mt = DecodeGemmTiles(m), blocks = (n + DecodeGemmBlockRows - 1) / DecodeGemmBlockRows;
        int slices = QuantizedDecodeGemmSlices(blocks, k / DecodeGemmTile);
        ulong px = Ptr(x), pq = Ptr(weight.Values), ps = Ptr(weight.Scales), pb = PtrOrNull(bias), py = Ptr(y), pc = Ptr(c);
        long ldx = x.Stride(0), ldw = k, ldy = y.Stride(0), ldc = c.Stride(0);
        float be = addend is null ? (float)beta : 1f;
        var (pn, eps) = NormOperands(norm);
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pq, &ps, &pb, &py, &pc, &m, &n, &k, &ldx, &ldw, &ldy, &ldc, &be, &early, &pn, &eps };
        Launch("decode_gemm.cu", $"decode_gemm_q8_{Suffix(dtype, nameof(QuantizedMatMul))}_m{mt}", ((uint)slices, (uint)blocks, 1),
            DecodeGemmThreads, args, DecodeGemmQuantizedShared(mt), dependent: true, clusterX: (uint)slices);
        return true;
    }

    /// <summary>
    /// Whether x (M, K) and the int8 weight (with its bias) suit the int8 decode product: the option, compute capability 9.0,
    /// 5 to 64 rows of bf16 or f16, K a multiple of 64, x's columns unit-strided and its rows 16-byte aligned, the values
    /// 16-byte aligned.
    /// </summary>
    private bool DecodeGemmQuantizedFits(Tensor x, QuantizedWeight weight, Tensor? bias)
    {
        if (!Options.QuantizedDecodeProducts || CudaDevice.ComputeCapability.Major < 9 || x.Rank != 2) return false;
        int m = x.Size(0), k = x.Size(1), n = weight.Rows;
        var dtype = x.DType;
        return m > GemvMaxRows && m <= DecodeGemmMaxRows && n > 0 && k % DecodeGemmTile == 0 && dtype is (DType.BF16 or DType.F16)
            && x.Stride(1) == 1 && x.Stride(0) % 8 == 0 && Ptr(x) % 16 == 0 && Ptr(weight.Values) % 16 == 0 && BiasFits(bias, dtype, n);
    }

    /// <summary>A fused norm's kernel operands: its weight's address and epsilon, or 0 and 0 without one.</summary>
    private (ulong Weight, float Epsilon) NormOperands(RmsNormPrologue? norm) => norm switch
    {
        null => (0UL, 0f),
        { UnitOffset: true } => throw new InvalidOperationException("CudaBackend: a unit-offset norm reached a quantized kernel, which applies plain norms only"),
        { } r => (Ptr(r.Weight), (float)r.Epsilon),
    };

    /// <summary>
    /// Runs <paramref name="product"/> on x normalized into scratch first when <paramref name="norm"/> has a unit offset
    /// (Gemma's norms; the quantized kernels apply plain norms only) and returns true; false, with nothing enqueued, otherwise.
    /// </summary>
    private bool WithUnitOffsetNormApplied(Tensor x, RmsNormPrologue? norm, Action<Tensor> product)
    {
        if (norm is not { UnitOffset: true } r) return false;
        var h = NormalizedScratch(x, r);
        try { product(h); }
        finally { h.Storage.Dispose(); }
        return true;
    }

    /// <summary>Whether a decode product can apply <paramref name="norm"/> on the way: x of at most
    /// <see cref="CudaBackendOptions.QuantizedDecodeProductNormMaxRows"/> rows, the norm's weight of x's dtype, contiguous, K long, 16-byte aligned.</summary>
    private bool DecodeNormFits(Tensor x, RmsNormPrologue norm) => x.Size(0) <= Options.QuantizedDecodeProductNormMaxRows && !norm.UnitOffset
        && norm.Weight.DType == x.DType && norm.Weight.IsContiguous && norm.Weight.NumElements == x.Size(1) && Ptr(norm.Weight) % 16 == 0;

    /// <summary>
    /// The int8 decode product's dynamic shared memory for x of 8 <paramref name="mt"/> rows: 4 stages of 64 columns, a stage
    /// holding 128 int8 W rows (8 KB), 8 MT rows of x and the (unused) norm weight's slot that the 16-bit form's layout keeps:
    /// 64.5 KB at 64 rows of x, 40.5 KB at 16.
    /// </summary>
    private static uint DecodeGemmQuantizedShared(int mt) =>
        (uint)(DecodeGemmStages * (DecodeGemmBlockRows * DecodeGemmTile + (8 * mt + 1) * DecodeGemmTile * 2));

    /// <inheritdoc/>
    public void QuantizedEmbeddingForward(Tensor ids, QuantizedWeight table, Tensor output, bool accumulate = false) =>
        QuantizedLookup(nameof(QuantizedEmbeddingForward), ids, table, output, rowOffset: 0, shard: false, accumulate);

    /// <inheritdoc/>
    public void QuantizedEmbeddingShardForward(Tensor ids, QuantizedWeight table, int rowOffset, Tensor output) =>
        QuantizedLookup(nameof(QuantizedEmbeddingShardForward), ids, table, output, rowOffset, shard: true, accumulate: false);

    /// <summary>The lookup of an int8 table (<c>embedding_q8_*</c>) or an FP8 one (<c>embedding_fp8_*</c>): a whole table's, or a vocabulary <paramref name="shard"/>'s.</summary>
    private void QuantizedLookup(string op, Tensor ids, QuantizedWeight table, Tensor output, int rowOffset, bool shard, bool accumulate)
    {
        ArgumentNullException.ThrowIfNull(table);
        if (table.IsInt4)
            throw new NotSupportedException($"CudaBackend.{op}: an int4 table cannot be looked up; int4 quantization keeps the embedding tables in the model's dtype");
        if (table.InputOrder is not null)
            throw new NotSupportedException($"CudaBackend.{op}: a table with an input order (act-order columns) cannot be looked up");
        RequireDType(op, "ids", ids, DType.I32);
        RequireContiguous(op, "ids", ids);
        RequireContiguous(op, "output", output);
        long n = ids.NumElements;
        int c = table.Columns, v = table.Rows;
        if (output.NumElements != n * c) throw new ArgumentException($"CudaBackend.{op}: output {output.Shape} must hold {n} x {c} elements");
        if (n == 0 || c == 0) return;
        ulong pi = Ptr(ids), pv = Ptr(table.Values), ps = Ptr(table.Scales), po = Ptr(output);
        int sh = shard ? 1 : 0, acc = accumulate ? 1 : 0;
        void** args = stackalloc void*[] { &pi, &pv, &ps, &po, &n, &c, &v, &rowOffset, &sh, &acc };
        Launch("quantized.cu", (table.IsFp8 ? "embedding_fp8_" : "embedding_q8_") + Suffix(output.DType, op), GridFor(n * c), Threads, args);
    }

    /// <inheritdoc/>
    public void Dequantize(QuantizedWeight weight, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(weight);
        ArgumentNullException.ThrowIfNull(output);
        if (output.Shape != weight.Shape || !output.IsContiguous)
            throw new ArgumentException($"CudaBackend.Dequantize: output {output.Shape} must be contiguous and of the weight's shape {weight.Shape}", nameof(output));
        if (weight.InputOrderInverse is { } inverse)
        {
            // The stored columns, then gathered into the inputs' order.
            var stored = ScratchTensor(output.Shape, output.DType);
            Dequantize(weight.WithoutInputOrder(), stored);
            GatherColumns(stored, inverse, output);
            stored.Storage.Dispose();
            return;
        }
        if (weight.IsInt4) { DequantizeInt4(weight, output); return; }
        ulong pv = Ptr(weight.Values), ps = Ptr(weight.Scales), po = Ptr(output);
        long n = weight.Values.NumElements;
        int k = weight.Columns;
        void** args = stackalloc void*[] { &pv, &ps, &po, &n, &k };
        Launch("quantized.cu", (weight.IsFp8 ? "dequantize_fp8_" : "dequantize_") + Suffix(output.DType, nameof(Dequantize)), GridFor(n), Threads, args);
    }
}
