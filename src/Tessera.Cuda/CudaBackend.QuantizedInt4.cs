using Tessera.Tensors;

namespace Tessera.Cuda;

// Group-wise int4 weights (QuantizedWeight.Int4; int4.cu, gemv.cu): 1 to 4 rows of x take the persistent matrix-vector
// stream's int4 form (gemv.cu, x staged once per CTA and normalized there when a norm is given, K and the group multiples of
// 32), else int4.cu's one-warp-a-row kernel; both read each packed word once and dequantize it in registers (decoding is
// bound by reading the weights, which is what 4 bits halve against int8); 5 to 64 rows (a serving decode step) of bf16 or f16
// take the decode product's int4 form (decode_gemm.cu, nibbles staged, turned into x's type in registers, tensor cores);
// more rows, or an epilogue, dequantize the whole weight into scratch of x's dtype from the caching allocator and run the
// product as for any weight (cuBLASLt): correct and graph-safe, not faster than 16-bit weights at prefill. The MLP's gate and
// up pair (QuantizedMatMulSwiGlu) has a SwiGLU form of the stream and of the decode product by group sums: one launch each.
public sealed unsafe partial class CudaBackend
{
    /// <summary>Warps a block of the int4 matrix-vector kernel: one output row a warp.</summary>
    private const int Int4GemvWarps = 8;

    /// <summary>Columns of a 16-byte chunk of packed int4 words (four words): K and the group size must be multiples of it for the stream.</summary>
    private const int Int4StreamChunk = 32;

    /// <summary>Columns a lane of the int4 decode product takes of a k-tile: the group size must be a multiple of it (one group a lane).</summary>
    private const int Int4DecodeGemmGroup = 16;

    /// <summary>
    /// The int4 form of <see cref="QuantizedMatMul"/> (see the file's note): a norm rides in the stream and the decode product,
    /// and elsewhere x is RMS-normalized into scratch first; the path depends on shapes, dtypes, options and the epilogue only,
    /// so an eager step and its recorded graph take the same one.
    /// </summary>
    private void QuantizedMatMulInt4(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, MatMulEpilogue epilogue,
        Tensor? auxiliary, Tensor? addend, RmsNormPrologue? norm)
    {
        if (epilogue == MatMulEpilogue.None && TryGemvStreamInt4(x, weight, y, beta, bias, addend, norm)) return;
        // The decode product normalizes x on the way (no scratch, no norm launch).
        if (epilogue == MatMulEpilogue.None && norm is not null && TryDecodeGemmInt4(x, weight, y, beta, bias, addend, norm)) return;
        var normalized = norm is { } r ? NormalizedScratch(x, r) : null;
        var input = normalized ?? x;
        if (epilogue != MatMulEpilogue.None
            || (!TryGemvInt4(input, weight, y, beta, bias, addend) && !TryDecodeGemmInt4(input, weight, y, beta, bias, addend)))
        {
            var w = ScratchTensor(weight.Shape, x.DType);
            DequantizeInt4(weight, w);
            MatMul(input, w, y, transposeB: true, beta: beta, bias: bias, epilogue: epilogue, auxiliary: auxiliary, addend: addend);
            w.Storage.Dispose();
        }
        normalized?.Storage.Dispose();
    }

    /// <summary>
    /// y (M, N) = x (M, K) W^T + bias + beta y, or + addend, with M &lt;= 4 and W the int4 weight: the persistent matrix-vector
    /// stream's int4 form (gemv.cu, <c>gemv_stream_int4_{type}_m{M}</c>), which stages x once per CTA (RMS-normalized on the
    /// way when <paramref name="norm"/> is given), streams the packed words in 16-byte loads with the next unit's loads in flight
    /// and applies each 32-column chunk's group scale and zero in registers. False, with nothing enqueued, when the call does not
    /// fit it: <see cref="GemvStreamInt4Fits"/>, y's and the addend's columns unit-strided (then <see cref="TryGemvInt4"/> or the
    /// dequantized product runs it).
    /// </summary>
    private bool TryGemvStreamInt4(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend, RmsNormPrologue? norm)
    {
        if (!GemvStreamInt4Fits(x, weight, bias, norm)) return false;
        int m = x.Size(0), k = x.Size(1), n = weight.Rows, group = weight.GroupSize;
        var dtype = x.DType;
        if (y.Stride(1) != 1 || (addend is not null && addend.Stride(1) != 1)) return false;
        var c = addend ?? y;                                 // the addend is read where beta's term is (beta = 1)
        ulong px = Ptr(x), pq = Ptr(weight.Values), ps = Ptr(weight.Scales), pz = Ptr(weight.Zeros!), pb = PtrOrNull(bias), py = Ptr(y), pc = Ptr(c);
        long ldx = x.Stride(0), ldy = y.Stride(0), ldc = c.Stride(0);
        float be = addend is null ? (float)beta : 1f;
        var (pn, eps) = NormOperands(norm);
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pq, &ps, &pz, &pb, &py, &pc, &n, &k, &group, &ldx, &ldy, &ldc, &be, &pn, &eps, &early };
        Launch("gemv.cu", $"gemv_stream_int4_{Suffix(dtype, nameof(QuantizedMatMul))}_m{m}", (GemvGrid(n), 1, 1), 256, args,
            GemvShared(m, k, dtype), dependent: true);
        return true;
    }

    /// <summary>
    /// output (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu) with M &lt;= 4 and Wg, Wu int4 weights: the int4 stream's SwiGLU form
    /// (gemv.cu, <c>gemv_stream_int4_swiglu_{type}_m{M}</c>), a warp's output the gate row then the up row, x staged once
    /// (RMS-normalized on the way when <paramref name="norm"/> is given): one launch where the composition takes three. False,
    /// with nothing enqueued, when either weight does not fit the stream (<see cref="GemvStreamInt4Fits"/>) or output is not
    /// contiguous in x's dtype.
    /// </summary>
    private bool TryGemvStreamInt4SwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up, Tensor output, Tensor? gateBias, Tensor? upBias,
        RmsNormPrologue? norm)
    {
        if (!GemvStreamInt4Fits(x, gate, gateBias, norm) || !GemvStreamInt4Fits(x, up, upBias, norm) || output.DType != x.DType
            || !output.IsContiguous) return false;
        int m = x.Size(0), k = x.Size(1), f = gate.Rows, group = gate.GroupSize;
        var dtype = x.DType;
        ulong px = Ptr(x), pg = Ptr(gate.Values), psg = Ptr(gate.Scales), pzg = Ptr(gate.Zeros!), pu = Ptr(up.Values), psu = Ptr(up.Scales),
            pzu = Ptr(up.Zeros!), pbg = PtrOrNull(gateBias), pbu = PtrOrNull(upBias), po = Ptr(output);
        long ldx = x.Stride(0), ldo = f;
        var (pn, eps) = NormOperands(norm);
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pg, &psg, &pzg, &pu, &psu, &pzu, &pbg, &pbu, &po, &f, &k, &group, &ldx, &ldo, &pn, &eps, &early };
        Launch("gemv.cu", $"gemv_stream_int4_swiglu_{Suffix(dtype, nameof(QuantizedMatMulSwiGlu))}_m{m}", (GemvGrid(f), 1, 1), 256, args,
            GemvShared(m, k, dtype), dependent: true);
        return true;
    }

    /// <summary>
    /// Whether x (M, K), the int4 weight and its bias suit the int4 stream: what <see cref="GemvFits"/> needs of x and the norm,
    /// K and the group size multiples of 32 (a 16-byte chunk of words then lies in one group, and the rows of K / 2 bytes are
    /// 16-byte aligned), the packed words 16-byte aligned.
    /// </summary>
    private bool GemvStreamInt4Fits(Tensor x, QuantizedWeight weight, Tensor? bias, RmsNormPrologue? norm) =>
        GemvFits(x, norm) && weight.Rows > 0 && x.Size(1) % Int4StreamChunk == 0 && weight.GroupSize % Int4StreamChunk == 0
        && Ptr(weight.Values) % 16 == 0 && BiasFits(bias, x.DType, weight.Rows);

    /// <summary>
    /// y (M, N) = x (M, K) W^T + bias + beta y, or + addend, with M &lt;= 4 and W the int4 weight: <c>gemv_int4_{type}_m{M}</c>
    /// (int4.cu; the shapes <see cref="TryGemvStreamInt4"/> does not take).
    /// False, with nothing enqueued, when <see cref="CudaBackendOptions.MatrixVectorKernels"/> is off or x, y or the addend
    /// has columns that are not unit-strided, or more than 4 rows.
    /// </summary>
    private bool TryGemvInt4(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend)
    {
        if (!Options.MatrixVectorKernels || x.Rank != 2) return false;
        int m = x.Size(0), k = x.Size(1), n = weight.Rows, group = weight.GroupSize;
        var dtype = x.DType;
        if (m < 1 || m > GemvMaxRows || n == 0 || dtype is not (DType.F32 or DType.BF16 or DType.F16) || !BiasFits(bias, dtype, n)) return false;
        if (x.Stride(1) != 1 || y.Stride(1) != 1 || (addend is not null && addend.Stride(1) != 1)) return false;
        var c = addend ?? y;                                 // the addend is read where beta's term is (beta = 1)
        ulong px = Ptr(x), pq = Ptr(weight.Values), ps = Ptr(weight.Scales), pz = Ptr(weight.Zeros!), pb = PtrOrNull(bias), py = Ptr(y), pc = Ptr(c);
        long ldx = x.Stride(0), ldy = y.Stride(0), ldc = c.Stride(0);
        float be = addend is null ? (float)beta : 1f;
        void** args = stackalloc void*[] { &px, &pq, &ps, &pz, &pb, &py, &pc, &n, &k, &group, &ldx, &ldy, &ldc, &be };
        uint blocks = (uint)Math.Clamp((n + Int4GemvWarps - 1) / Int4GemvWarps, 1, CudaDevice.MultiprocessorCount * 16);
        Launch("int4.cu", $"gemv_int4_{Suffix(dtype, nameof(QuantizedMatMul))}_m{m}", blocks, 32 * Int4GemvWarps, args);
        return true;
    }

    /// <summary>
    /// y (M, N) = x (M, K) W^T + bias + beta y, or + addend, with 5 &lt;= M &lt;= 64 and W the int4 weight: the decode product's
    /// int4 form (decode_gemm.cu, <c>decode_gemm_int4_{bf16,f16}_m{2,4,8}</c>), which stages the packed words (4 KB a tile of
    /// 128 rows by 64 columns), turns each lane's nibbles into x's type in registers with their group's scale and zero (the
    /// weight rounded once to x's type, as the dequantized path rounds it) and multiplies them by x on tensor cores with fp32
    /// sums, K in slices of a thread-block cluster as the int8 form. False, with nothing enqueued, when the call does not fit
    /// it (then the dequantized product runs it): what <see cref="TryDecodeGemmQuantized"/> needs (the option, compute
    /// capability 9.0, bf16 or f16, K a multiple of 64, unit-strided columns, aligned rows), and the group a multiple of 16.
    /// Groups of a multiple of 64 take the form by group sums (<c>decode_gemm_int4g_*</c>,
    /// <see cref="CudaBackendOptions.Int4DecodeProductGroupSums"/>): q - zero exact in x's type, each k-tile's fp32 sums times
    /// its group's scale, so its results differ from the dequantized product's in the last bits of x's type. Both forms take
    /// <paramref name="norm"/> (x RMS-normalized on the way, <see cref="DecodeNormFits"/>; before session 33 only the form by group sums).
    /// </summary>
    private bool TryDecodeGemmInt4(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend,
        RmsNormPrologue? norm = null)
    {
        if (!DecodeGemmInt4Fits(x, weight, bias, out bool groupSums) || (norm is { } r && !DecodeNormFits(x, r))) return false;
        if (y.Stride(1) != 1 || (addend is not null && addend.Stride(1) != 1)) return false;
        var c = addend ?? y;                                 // the addend is read where beta's term is (beta = 1)
        int m = x.Size(0), n = weight.Rows, k = x.Size(1), group = weight.GroupSize;
        int mt = DecodeGemmTiles(m), blocks = (n + DecodeGemmBlockRows - 1) / DecodeGemmBlockRows;
        int slices = QuantizedDecodeGemmSlices(blocks, k / DecodeGemmTile);
        ulong px = Ptr(x), pq = Ptr(weight.Values), ps = Ptr(weight.Scales), pz = Ptr(weight.Zeros!), pb = PtrOrNull(bias), py = Ptr(y), pc = Ptr(c);
        long ldx = x.Stride(0), ldw = k / Int4Quantization.PerWord, ldy = y.Stride(0), ldc = c.Stride(0);
        float be = addend is null ? (float)beta : 1f;
        var (pn, eps) = NormOperands(norm);
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pq, &ps, &pz, &pb, &py, &pc, &m, &n, &k, &group, &ldx, &ldw, &ldy, &ldc, &be, &early, &pn, &eps };
        int stages = groupSums ? Options.Int4DecodeProductStages : DecodeGemmStages;
        Launch("decode_gemm.cu", $"decode_gemm_int4{(groupSums ? "g" : "")}_{Suffix(x.DType, nameof(QuantizedMatMul))}_m{mt}{(groupSums ? GroupSumsSuffix(mt, stages) : "")}",
            ((uint)slices, (uint)blocks, 1), DecodeGemmThreads, args, DecodeGemmInt4Shared(mt, groupSums, stages), dependent: true, clusterX: (uint)slices);
        return true;
    }

    /// <summary>
    /// output (M, F) = SiLU(x Wg^T + bg) * (x Wu^T + bu) with 5 &lt;= M &lt;= 64 and Wg, Wu int4 weights of groups of a
    /// multiple of 64: the SwiGLU form of the decode product by group sums (decode_gemm.cu,
    /// <c>decode_gemm_int4g_swiglu_{bf16,f16}_m{2,4,8}</c>), 64 outputs a CTA, both weights read in one pass, x RMS-normalized on
    /// the way when <paramref name="norm"/> is given: one launch where the composition takes three. False, with nothing
    /// enqueued, when the call does not fit what <see cref="TryDecodeGemmInt4"/>'s form by group sums needs of either weight,
    /// or output is not contiguous in x's dtype.
    /// </summary>
    private bool TryDecodeGemmInt4SwiGlu(Tensor x, QuantizedWeight gate, QuantizedWeight up, Tensor output, Tensor? gateBias, Tensor? upBias,
        RmsNormPrologue? norm)
    {
        if (!DecodeGemmInt4Fits(x, gate, gateBias, out bool gateSums) || !gateSums || !DecodeGemmInt4Fits(x, up, upBias, out bool upSums) || !upSums
            || (norm is { } r && !DecodeNormFits(x, r)) || output.DType != x.DType || !output.IsContiguous) return false;
        int m = x.Size(0), f = gate.Rows, k = x.Size(1), group = gate.GroupSize;
        int mt = DecodeGemmTiles(m), blocks = (f + DecodeGemmBlockRows / 2 - 1) / (DecodeGemmBlockRows / 2);
        int slices = QuantizedDecodeGemmSlices(blocks, k / DecodeGemmTile);
        ulong px = Ptr(x), pg = Ptr(gate.Values), pu = Ptr(up.Values), psg = Ptr(gate.Scales), psu = Ptr(up.Scales), pzg = Ptr(gate.Zeros!),
            pzu = Ptr(up.Zeros!), pbg = PtrOrNull(gateBias), pbu = PtrOrNull(upBias), po = Ptr(output);
        long ldx = x.Stride(0), ldw = k / Int4Quantization.PerWord, ldo = f;
        var (pn, eps) = NormOperands(norm);
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pg, &pu, &psg, &psu, &pzg, &pzu, &pbg, &pbu, &po, &m, &f, &k, &group, &ldx, &ldw, &ldo, &early, &pn, &eps };
        int stages = Options.Int4DecodeProductStages;
        Launch("decode_gemm.cu", $"decode_gemm_int4g_swiglu_{Suffix(x.DType, nameof(QuantizedMatMulSwiGlu))}_m{mt}{GroupSumsSuffix(mt, stages)}",
            ((uint)slices, (uint)blocks, 1), DecodeGemmThreads, args, DecodeGemmInt4Shared(mt, true, stages), dependent: true, clusterX: (uint)slices);
        return true;
    }

    /// <summary>
    /// Whether x (M, K) and the int4 weight (with its bias) suit the decode product's int4 form: what
    /// <see cref="TryDecodeGemmQuantized"/> needs (the option, compute capability 9.0, bf16 or f16, 5 to 64 rows, K a multiple
    /// of 64, unit-strided columns, aligned rows), the group a multiple of 16; <paramref name="groupSums"/> says whether it takes
    /// the form by group sums (<see cref="CudaBackendOptions.Int4DecodeProductGroupSums"/>, groups of a multiple of 64, the
    /// scales and zeros 4-byte aligned).
    /// </summary>
    private bool DecodeGemmInt4Fits(Tensor x, QuantizedWeight weight, Tensor? bias, out bool groupSums)
    {
        groupSums = false;
        if (!Options.QuantizedDecodeProducts || CudaDevice.ComputeCapability.Major < 9 || x.Rank != 2) return false;
        int m = x.Size(0), k = x.Size(1), n = weight.Rows, group = weight.GroupSize;
        var dtype = x.DType;
        if (m <= GemvMaxRows || m > DecodeGemmMaxRows || n == 0 || k % DecodeGemmTile != 0 || group % Int4DecodeGemmGroup != 0
            || dtype is not (DType.BF16 or DType.F16)) return false;
        if (x.Stride(1) != 1 || x.Stride(0) % 8 != 0 || Ptr(x) % 16 != 0 || Ptr(weight.Values) % 16 != 0 || !BiasFits(bias, dtype, n)) return false;
        // The form by group sums where each k-tile lies in one group: its stages also hold each W row's scale and zero word
        // (8 bytes a row), and it alone takes a norm (x normalized on the way).
        groupSums = Options.Int4DecodeProductGroupSums && group % DecodeGemmTile == 0 && Ptr(weight.Zeros!) % 4 == 0 && Ptr(weight.Scales) % 4 == 0;
        return true;
    }

    /// <summary>Dynamic shared memory of the int4 decode product: <paramref name="stages"/> stages of the packed W tile, x's 8 MT rows and the norm's columns, and by group sums each W row's scale and zero word.</summary>
    private static uint DecodeGemmInt4Shared(int mt, bool groupSums, int stages) =>
        (uint)(stages * (DecodeGemmBlockRows * DecodeGemmTile / 2 + (8 * mt + 1) * DecodeGemmTile * 2 + (groupSums ? DecodeGemmBlockRows * 8 : 0)));

    /// <summary>The kernel name's suffix of the int4 form by group sums for x of 8 <paramref name="mt"/> rows: <c>_s8</c> for 8
    /// stages; in the file's DG_ST (4), none for one n8 tile of x at a time, <c>_j2</c> or <c>_j4</c> for
    /// <see cref="CudaBackendOptions.Int4DecodeProductXTiles"/> 2 or 4 (at most <paramref name="mt"/>: 16 rows take <c>_j2</c>).</summary>
    private string GroupSumsSuffix(int mt, int stages) =>
        stages != DecodeGemmStages ? $"_s{stages}" : Math.Min(Options.Int4DecodeProductXTiles, mt) is int jb and > 1 ? $"_j{jb}" : "";

    /// <summary>output (N, K) = the int4 weight, scale (q - zero) in fp32 rounded once to output's type (<c>dequantize_int4_*</c>).</summary>
    private void DequantizeInt4(QuantizedWeight weight, Tensor output)
    {
        ulong pq = Ptr(weight.Values), ps = Ptr(weight.Scales), pz = Ptr(weight.Zeros!), po = Ptr(output);
        long n = weight.Rows;
        int k = weight.Columns, group = weight.GroupSize;
        void** args = stackalloc void*[] { &pq, &ps, &pz, &po, &n, &k, &group };
        Launch("int4.cu", "dequantize_int4_" + Suffix(output.DType, nameof(Dequantize)), GridFor(n * (k / Int4Quantization.PerWord)), Threads, args);
    }
}
