using Tessera.Cuda.Runtime;
using Tessera.Cuda.Interop;
using Tessera.Tensors;
using static Tessera.Cuda.Interop.CublasLt;

namespace Tessera.Cuda;

// W8A8-FP8 products (QuantizedWeight with F8E4M3 values): at most 4 rows of x (decoding), the matrix-vector kernel's FP8 form
// (gemv_stream_f8_*, gemv.cu: x quantized in shared memory, the codes streamed once); otherwise x's rows quantized to E4M3 by
// quantize_rows_fp8_* (quantized.cu), then codes times codes on the FP8 tensor cores through cuBLASLt with per-row and per-column ("outer vector") scales, or,
// where that cannot run, both operands dequantized into scratch and the ordinary product.
public sealed unsafe partial class CudaBackend
{
    /// <summary>Threads of a block of quantize_rows_fp8_* (one block a row of x).</summary>
    private const int QuantizeRowsThreads = 256;

    /// <summary>What makes two FP8 products share a cuBLASLt plan: the output's type and layout, the shape, the bias and the pointers' alignment.</summary>
    private readonly record struct Fp8Key(DType Out, int M, int N, int K, long Ldy, bool Bias, int Alignment);

    private sealed class Fp8Plan
    {
        public IntPtr Operation, LayoutW, LayoutX, LayoutY;
        public HeuristicResult Heuristic;

        /// <summary>The heuristic's answers, best guess first (up to <see cref="CudaBackendOptions.MatMulHeuristicCandidates"/>).</summary>
        public HeuristicResult[] Candidates = [];

        /// <summary>Whether the algorithm was chosen yet: timed, taken from the row bucket, or left at the heuristic's first answer.</summary>
        public bool Chosen;
    }

    private readonly Dictionary<Fp8Key, Fp8Plan?> _fp8Plans = new();

    /// <summary>
    /// The timed algorithm of each row-count bucket (<see cref="MatMulRowBucket"/>) of an FP8 product, as
    /// <see cref="_bucketAlgorithms"/> keeps the 16-bit products': a serving step's row count changes with every step, and
    /// the heuristic's first answer for FP8 at decode sizes ran the 64-stream decode step at 2.43 ms against 1.61 in BF16
    /// (H200, 2026-12-05, session 27).
    /// </summary>
    private readonly Dictionary<Fp8Key, HeuristicResult> _fp8BucketAlgorithms = new();

    /// <summary>For tests: whether the last FP8 product ran on cuBLASLt's FP8 kernels (false: the matrix-vector form or the dequantized fallback).</summary>
    internal bool LastFp8ProductOnTensorCores { get; private set; }

    /// <summary>For tests: whether the last FP8 product ran on the matrix-vector kernel's FP8 form (<c>gemv_stream_f8_*</c>).</summary>
    internal bool LastFp8ProductOnMatrixVector { get; private set; }

    /// <summary>
    /// y (M, N) = sx[m] sw[n] Σ_k e4m3(x[m, k] / sx[m]) W[n, k] + bias + beta y, or + addend, with M &lt;= 4 and W the FP8 weight:
    /// the matrix-vector kernel's FP8 form (gemv.cu, <c>gemv_stream_f8_*</c>), which stages x in shared memory (RMS-normalized
    /// on the way when <paramref name="norm"/> is given, rounded to x's type), quantizes the staged rows in place as
    /// <c>quantize_rows_fp8_*</c> does (the same scales and codes), streams the (N, K) codes once at a byte a weight, and
    /// applies both scales to each fp32 sum: one dependent launch instead of the quantizer and a cuBLASLt FP8 product. The
    /// conditions are the int8 form's (<see cref="TryGemvQuantized"/>: <see cref="GemvFits"/>, which needs
    /// <see cref="CudaBackendOptions.MatrixVectorKernels"/> on, K a multiple of 16, 16-byte aligned values, the bias fitting,
    /// unit column strides), plus the M row scales in shared memory: shapes, dtypes, alignment and options only, so an eager
    /// step and its recorded graph take the same path. False, with nothing enqueued, when the call does not fit.
    /// </summary>
    private bool TryGemvFp8(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend, RmsNormPrologue? norm)
    {
        if (!GemvFits(x, norm)) return false;
        int m = x.Size(0), k = x.Size(1), n = weight.Rows;
        var dtype = x.DType;
        if (n == 0 || k % QuantizedGemvChunk != 0 || Ptr(weight.Values) % 16 != 0 || !BiasFits(bias, dtype, n)) return false;
        if (n > 1 && (y.Stride(1) != 1 || (addend is not null && addend.Stride(1) != 1))) return false;
        uint shared = GemvShared(m, k, dtype) + (uint)(m * sizeof(float));
        if (shared > CudaDevice.MaxSharedMemoryPerBlockOptIn) return false;
        var c = addend ?? y;   // the addend is read where the kernel reads beta's term (beta = 1), as the int8 form does
        ulong px = Ptr(x), pq = Ptr(weight.Values), ps = Ptr(weight.Scales), pb = PtrOrNull(bias), py = Ptr(y), pc = Ptr(c);
        long ldx = x.Stride(0), ldw = k, ldy = y.Stride(0), ldc = c.Stride(0);
        float be = addend is null ? (float)beta : 1f;
        ulong pn = norm is { } r ? Ptr(r.Weight) : 0;
        float eps = norm is { } r2 ? (float)r2.Epsilon : 0f;
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pq, &ps, &pb, &py, &pc, &n, &k, &ldx, &ldw, &ldy, &ldc, &be, &pn, &eps, &early };
        Launch("gemv.cu", $"gemv_stream_f8_{Suffix(dtype, nameof(QuantizedMatMul))}_m{m}", (GemvGrid(n), 1, 1), 256, args, shared, dependent: true);
        return true;
    }

    /// <summary>
    /// The FP8 product (<see cref="IBackend.QuantizedMatMul"/>'s semantics): 1 to 4 rows with no epilogue on the matrix-vector
    /// kernel's FP8 form where it fits (<see cref="TryGemvFp8"/>); otherwise x's rows, RMS-normalized first when
    /// <paramref name="norm"/> is given, quantized into an (M, K) E4M3 scratch and an (M) F32 scratch of scales (from the
    /// caching allocator, so the step records into graphs), then <see cref="TryFp8MatMul"/>; GELU is applied to the product
    /// written into the auxiliary. Where cuBLASLt's FP8 path does not fit (F32 x, compute capability below 8.9, K or N not a
    /// multiple of 16, unaligned rows, no algorithm), both operands are dequantized into scratch of x's dtype (the same codes
    /// and scales) and <see cref="MatMul"/> runs on them: its products then carry x's dtype rounding of scale x code (2^-9
    /// relative in BF16), where the FP8 kernels multiply the codes exactly and apply the scales to fp32 sums. The choice depends
    /// on shapes, dtypes, alignment and the device only, so an eager step and its recorded graph take the same path.
    /// </summary>
    private void QuantizedMatMulFp8(Tensor x, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, MatMulEpilogue epilogue,
        Tensor? auxiliary, Tensor? addend, RmsNormPrologue? norm)
    {
        if (x.DType is not (DType.BF16 or DType.F16 or DType.F32))
            throw new ArgumentException($"CudaBackend.QuantizedMatMul: FP8 weights take BF16, F16 or F32 activations, not {x.DType} " +
                "(load the model in bf16, f16 or f32 with --quantize fp8, or use --quantize int8 for F64)", nameof(x));
        int m = x.Size(0), k = weight.Columns, n = weight.Rows;
        if (m == 0 || n == 0) return;
        LastFp8ProductOnMatrixVector = epilogue == MatMulEpilogue.None && TryGemvFp8(x, weight, y, beta, bias, addend, norm);
        if (LastFp8ProductOnMatrixVector)
        {
            LastFp8ProductOnTensorCores = false;
            return;
        }
        var input = x;
        Tensor? packed = null;
        if (x.Stride(1) != 1 && k > 1)
        {
            packed = ScratchTensor(x.Shape, x.DType);             // the quantizer reads rows of unit column stride
            Copy(x, packed);
            input = packed;
        }
        var codes = ScratchTensor(new Shape(m, k), DType.F8E4M3);   // (M, K)
        var scales = ScratchTensor(new Shape(m), DType.F32);        // (M)
        try
        {
            QuantizeRowsFp8(input, norm, codes, scales);
            var product = epilogue == MatMulEpilogue.Gelu ? auxiliary! : y;
            LastFp8ProductOnTensorCores = TryFp8MatMul(codes, scales, weight, product, beta, bias, addend);
            if (LastFp8ProductOnTensorCores)
            {
                if (epilogue == MatMulEpilogue.Gelu) GeluForward(product, y);
                return;
            }
            var xd = ScratchTensor(x.Shape, x.DType);
            var w = ScratchTensor(weight.Shape, x.DType);
            Dequantize(new QuantizedWeight(codes, scales), xd);
            Dequantize(weight, w);
            MatMul(xd, w, y, transposeB: true, beta: beta, bias: bias, epilogue: epilogue, auxiliary: auxiliary, addend: addend);
            w.Storage.Dispose();
            xd.Storage.Dispose();
        }
        finally
        {
            scales.Storage.Dispose();
            codes.Storage.Dispose();
            packed?.Storage.Dispose();
        }
    }

    /// <summary>
    /// codes (M, K) F8E4M3 and scales (M) F32 = x's rows quantized (<c>quantize_rows_fp8_*</c>, one block a row), x (M, K) with
    /// unit column stride, RMS-normalized on the way when <paramref name="norm"/> is given.
    /// </summary>
    private void QuantizeRowsFp8(Tensor x, RmsNormPrologue? norm, Tensor codes, Tensor scales)
    {
        int m = x.Size(0), k = x.Size(1);
        if (norm is { UnitOffset: true })
            throw new InvalidOperationException("CudaBackend: a unit-offset norm reached the FP8 row quantizer, which applies plain norms only");
        ulong px = Ptr(x), pn = norm is { } r ? Ptr(r.Weight) : 0, pc = Ptr(codes), ps = Ptr(scales);
        long ldx = x.Stride(0);
        float eps = norm is { } r2 ? (float)r2.Epsilon : 0f;
        void** args = stackalloc void*[] { &px, &pn, &pc, &ps, &k, &ldx, &eps };
        // Dependent launch (programmatic, where the options allow it): its blocks are placed while the kernel that writes x
        // finishes, and wait for it (pdl_wait) before reading.
        Launch("quantized.cu", "quantize_rows_fp8_" + Suffix(x.DType, "QuantizedMatMul"), ((uint)m, 1, 1), QuantizeRowsThreads, args, 0, dependent: true);
    }

    /// <summary>For tests: <see cref="QuantizeRowsFp8"/> alone, x (M, K) into codes (M, K) F8E4M3 and scales (M) F32.</summary>
    internal void QuantizeRowsFp8ForTests(Tensor x, RmsNormPrologue? norm, Tensor codes, Tensor scales) => QuantizeRowsFp8(x, norm, codes, scales);

    /// <summary>
    /// y (M, N) = scales[m] weight.Scales[n] Σ_k codes[m, k] weight.Values[n, k] + bias (+ beta y, or + addend) on cuBLASLt's
    /// FP8 kernels: A = the weight's E4M3 values, (N, K) row-major seen column-major as K x N with opA = T; B = the codes,
    /// K x M with opB = N; D = y (column-major N x M, ld = y's row stride) in BF16 or F16, C = the addend or y; fp32 compute
    /// and scales, A's and B's scales as outer vectors (one a row of op(A): N; one a column of op(B): M), the bias in the
    /// epilogue. False, with nothing enqueued, when it does not fit: y not BF16 or F16, compute capability below 8.9, K or N
    /// not a multiple of 16 (cuBLASLt's FP8 layouts need 16-byte leading dimensions), y's columns not unit-strided, y's row
    /// stride not a multiple of 8 elements, a pointer not 16-byte aligned, an addend of another layout than y's, or cuBLASLt
    /// refusing the scale modes (before cuBLAS 12.9) or offering no algorithm (remembered per shape).
    /// </summary>
    private bool TryFp8MatMul(Tensor codes, Tensor scales, QuantizedWeight weight, Tensor y, double beta, Tensor? bias, Tensor? addend)
    {
        var cc = CudaDevice.ComputeCapability;
        if (y.DType is not (DType.BF16 or DType.F16) || cc.Major < 8 || cc.Major == 8 && cc.Minor < 9) return false;
        int m = codes.Size(0), k = weight.Columns, n = weight.Rows;
        if (k % 16 != 0 || n % 16 != 0 || y.Stride(1) != 1 || y.Stride(0) % 8 != 0) return false;
        if (addend is not null && (addend.Stride(1) != 1 || addend.Stride(0) != y.Stride(0) || Ptr(addend) % 16 != 0)) return false;
        if (bias is not null && (!bias.IsContiguous || bias.DType != y.DType || Ptr(bias) % 16 != 0)) return false;
        ulong pw = Ptr(weight.Values), px = Ptr(codes), pws = Ptr(weight.Scales), pxs = Ptr(scales), py = Ptr(y);
        if (pw % 16 != 0 || px % 16 != 0 || py % 16 != 0 || pws % 16 != 0 || pxs % 16 != 0) return false;
        ulong pbias = PtrOrNull(bias), pc = addend is null ? py : Ptr(addend);
        var key = new Fp8Key(y.DType, m, n, k, y.Stride(0), bias is not null, 16);
        EnsureCublasLt();
        if (!_fp8Plans.TryGetValue(key, out var plan))
        {
            plan = CreateFp8Plan(key, pws, pxs, pbias);
            _fp8Plans[key] = plan;
        }
        if (plan is null) return false;
        if (!plan.Chosen) ChooseFp8Algorithm(plan, key, pw, px, pws, pxs, pbias);
        Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &pws, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
        Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &pxs, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
        if (pbias != 0)
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &pbias, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
        CudaDevice.MakeCurrent();
        Profiler?.Begin($"matmul fp8 {m}x{n}x{k}{(addend is not null ? " +residual" : beta != 0 ? " acc" : "")}{(bias is not null ? " bias" : "")}");
        float al = 1f, be = addend is null ? (float)beta : 1f;
        var heuristic = plan.Heuristic;
        Check(cublasLtMatmul(_cublasLt, plan.Operation, &al, pw, plan.LayoutW, px, plan.LayoutX, &be, pc, plan.LayoutY, py, plan.LayoutY,
            heuristic.Algo, _workspace, (nuint)MatMulWorkspaceBytes, Stream.Handle), "cublasLtMatmul", Describe(key));
        Profiler?.End();
        return true;
    }

    /// <summary>The descriptors and cuBLASLt's first-choice algorithm for an FP8 product; null when cuBLASLt refuses it.</summary>
    private Fp8Plan? CreateFp8Plan(Fp8Key key, ulong weightScales, ulong inputScales, ulong bias)
    {
        var plan = new Fp8Plan();
        IntPtr operation;
        Check(cublasLtMatmulDescCreate(&operation, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
        plan.Operation = operation;
        int opA = CUBLAS_OP_T, opB = CUBLAS_OP_N;   // FP8 on tensor cores takes A transposed and B not ("TN")
        Check(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSA)");
        Check(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSB)");
        int mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        // Older cuBLAS does not know the outer-vector mode: the attribute is refused, and the product falls back.
        if (cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(int)) != CUBLAS_STATUS_SUCCESS
            || cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(int)) != CUBLAS_STATUS_SUCCESS)
        {
            cublasLtMatmulDescDestroy(operation);
            return null;
        }
        // The heuristic may look at the scale pointers (block-scaled modes are refused without them): set them now.
        Check(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &weightScales, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
        Check(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &inputScales, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
        uint epilogue = key.Bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
        Check(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(uint)), "cublasLtMatmulDescSetAttribute(EPILOGUE)");
        if (key.Bias)
        {
            int biasType = CudaType(key.Out);
            Check(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &biasType, sizeof(int)), "cublasLtMatmulDescSetAttribute(BIAS_DATA_TYPE)");
            Check(cublasLtMatmulDescSetAttribute(operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
        }
        IntPtr layout;
        Check(cublasLtMatrixLayoutCreate(&layout, CUDA_R_8F_E4M3, (ulong)key.K, (ulong)key.N, key.K), "cublasLtMatrixLayoutCreate(W)");
        plan.LayoutW = layout;
        Check(cublasLtMatrixLayoutCreate(&layout, CUDA_R_8F_E4M3, (ulong)key.K, (ulong)key.M, key.K), "cublasLtMatrixLayoutCreate(X)");
        plan.LayoutX = layout;
        Check(cublasLtMatrixLayoutCreate(&layout, CudaType(key.Out), (ulong)key.N, (ulong)key.M, key.Ldy), "cublasLtMatrixLayoutCreate(Y)");
        plan.LayoutY = layout;
        var candidates = HeuristicCandidates(operation, plan.LayoutW, plan.LayoutX, plan.LayoutY, out _);
        if (candidates.Length == 0)
        {
            DestroyFp8Plan(plan);
            return null;
        }
        plan.Heuristic = candidates[0];
        plan.Candidates = candidates;
        return plan;
    }

    /// <summary>
    /// Picks a new FP8 plan's algorithm as <see cref="ChooseAlgorithm"/> does for 16-bit products: its row bucket's timed
    /// algorithm when cuBLASLt accepts it for this shape, else the heuristic's candidates timed on this call's operands into
    /// a scratch output (each run after an L2 flush for decode-size row counts, whose weights a step never finds in L2), the
    /// fastest kept when it beats the first answer by 3 %. Not while a graph is recorded (the first answer stands) and not
    /// with tuning off.
    /// </summary>
    private void ChooseFp8Algorithm(Fp8Plan plan, Fp8Key key, ulong pw, ulong px, ulong pws, ulong pxs, ulong pbias)
    {
        plan.Chosen = true;
        if (!Options.TuneMatMulAlgorithms || _capturing || plan.Candidates.Length < 2) return;
        var bucket = key with { M = MatMulRowBucket(key.M), Ldy = 0 };
        if (_fp8BucketAlgorithms.TryGetValue(bucket, out var shared) && CheckFp8Candidate(plan, ref shared))
        {
            plan.Heuristic = shared;
            MatMulBucketReuses++;
            return;
        }
        long yBytes = ((long)(key.M - 1) * key.Ldy + key.N) * key.Out.SizeInBytes();
        if (yBytes > MatMulTuneMaxScratchBytes) return;
        bool cold = key.M <= MatMulTuneDecodeRows;
        long flushBytes = 2L * CudaDevice.L2CacheBytes;
        ulong scratchY = Scratch(yBytes), flush = cold ? Scratch(flushBytes) : 0;
        try
        {
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &pws, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(A_SCALE_POINTER)");
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &pxs, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(B_SCALE_POINTER)");
            if (pbias != 0)
                Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &pbias, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
            CudaDevice.MakeCurrent();
            using var start = new CudaEvent(CudaDevice);
            using var end = new CudaEvent(CudaDevice);
            float al = 1f, be = 0f;
            int best = -1;
            float bestMs = float.MaxValue, firstMs = float.NaN;
            for (int i = 0; i < plan.Candidates.Length; i++)
            {
                float ms = 0;
                fixed (ulong* algo = plan.Candidates[i].Algo)
                {
                    // A candidate turned down at run time (workspace, alignment) is skipped; the first run also warms it up.
                    if (cublasLtMatmul(_cublasLt, plan.Operation, &al, pw, plan.LayoutW, px, plan.LayoutX, &be, scratchY, plan.LayoutY,
                            scratchY, plan.LayoutY, algo, _workspace, (nuint)MatMulWorkspaceBytes, Stream.Handle) != CUBLAS_STATUS_SUCCESS)
                        continue;
                    for (int r = 0; r < 3; r++)
                    {
                        if (cold) Interop.CudaDriver.Check(Interop.CudaDriver.cuMemsetD8Async(flush, (byte)r, (nuint)flushBytes, Stream.Handle), "cuMemsetD8Async", "the L2 flush of an FP8 tuning run");
                        start.Record(Stream);
                        Check(cublasLtMatmul(_cublasLt, plan.Operation, &al, pw, plan.LayoutW, px, plan.LayoutX, &be, scratchY, plan.LayoutY,
                            scratchY, plan.LayoutY, algo, _workspace, (nuint)MatMulWorkspaceBytes, Stream.Handle), "cublasLtMatmul", Describe(key));
                        end.Record(Stream);
                        end.Synchronize();
                        ms += end.ElapsedSince(start) / 3;
                    }
                }
                if (i == 0) firstMs = ms;
                if (ms < bestMs) { bestMs = ms; best = i; }
            }
            if (best < 0) return;
            if (best > 0 && !(bestMs < firstMs * MatMulTuneMargin)) best = 0;
            plan.Heuristic = plan.Candidates[best];
            _fp8BucketAlgorithms[bucket] = plan.Heuristic;
            _tuningLog.Add($"{Describe(key)}: {plan.Candidates.Length} timed{(cold ? " from a cold L2" : "")}, chose #{best} ({AlgorithmText(plan.Heuristic)}), " +
                $"{firstMs * 1000:F1} -> {(best == 0 ? firstMs : bestMs) * 1000:F1} us (for rows {MatMulBucketStart(bucket.M)}-{bucket.M})");
        }
        finally
        {
            if (flush != 0) FreeScratch(flush);
            FreeScratch(scratchY);
        }
    }

    /// <summary>Whether cuBLASLt accepts <paramref name="candidate"/> (another row count's algorithm) for this plan's shape.</summary>
    private bool CheckFp8Candidate(Fp8Plan plan, ref HeuristicResult candidate) =>
        CheckAlgorithm(plan.Operation, plan.LayoutW, plan.LayoutX, plan.LayoutY, ref candidate);

    private static void DestroyFp8Plan(Fp8Plan p)
    {
        cublasLtMatrixLayoutDestroy(p.LayoutW);
        cublasLtMatrixLayoutDestroy(p.LayoutX);
        cublasLtMatrixLayoutDestroy(p.LayoutY);
        cublasLtMatmulDescDestroy(p.Operation);
    }

    private void DisposeFp8Plans()
    {
        foreach (var p in _fp8Plans.Values)
            if (p is not null) DestroyFp8Plan(p);
        _fp8Plans.Clear();
    }

    private static string Describe(Fp8Key k) => $"fp8 -> {k.Out} M={k.M} N={k.N} K={k.K} ldy={k.Ldy} bias={k.Bias}";
}
