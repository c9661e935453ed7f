using Tessera.Cuda.Interop;
using Tessera.Tensors;
using static Tessera.Cuda.Interop.CublasLt;

namespace Tessera.Cuda;

public sealed unsafe partial class CudaBackend
{
    private const long MatMulWorkspaceBytes = 32L << 20;
    private IntPtr _cublasLt;
    private ulong _workspace;
    private readonly Dictionary<MatMulKey, MatMulPlan?> _plans = new();

    /// <summary>What makes two products share descriptors and an algorithm (pointer alignment included, since cuBLASLt's choice depends on it).</summary>
    private readonly record struct MatMulKey(DType AB, DType C, bool TransA, bool TransB, int M, int N, int K, int Batch,
        long Lda, long Ldb, long Ldc, long StrideA, long StrideB, long StrideC, uint Epilogue, int Alignment, int AuxAlignment, DType BiasType);

    private sealed class MatMulPlan
    {
        public IntPtr Operation, LayoutA, LayoutB, LayoutC;
        public HeuristicResult Heuristic;
        /// <summary>cuBLASLt's candidates, best guess first (Heuristic is one of them); the timed pick replaces Heuristic.</summary>
        public HeuristicResult[] Candidates = [];
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The epilogues run fused in cuBLASLt (GELU_AUX[_BIAS], DGELU, BGRADB) for F32, BF16 and F16; F64 products, and
    /// configurations for which cuBLASLt offers no algorithm, compose them from the plain product and the elementwise kernels.
    /// </remarks>
    public void MatMul(Tensor a, Tensor b, Tensor c, bool transposeA = false, bool transposeB = false,
        double alpha = 1.0, double beta = 0.0, Tensor? bias = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null, Tensor? biasGradient = null,
        Tensor? addend = null)
    {
        MatMulEpilogueArguments.Validate(nameof(CudaBackend), a, c, transposeA, beta, bias, epilogue, auxiliary, biasGradient, addend);
        if (addend is not null && !SameLayout(addend, c))
        {
            Copy(addend, c); // cuBLASLt reads the addend through c's layout: another layout is copied into c first
            addend = null;
            beta = 1.0;
        }
        if (epilogue == MatMulEpilogue.None)
        {
            if (addend is null && TryGemv(a, b, c, transposeA, transposeB, alpha, beta, bias)) return;
            MatMulCore(a, b, c, transposeA, transposeB, alpha, beta, bias, epilogue, null, null, addend);
            return;
        }
        if (a.DType != DType.F64 && MatMulCore(a, b, c, transposeA, transposeB, alpha, beta, bias, epilogue, auxiliary, biasGradient))
            return;
        MatMulEpilogueComposition.Apply(this, a, b, c, transposeA, transposeB, alpha, beta, bias, epilogue, auxiliary, biasGradient,
            (a2, b2, c2, ta, tb, al, be, bi) => MatMulCore(a2, b2, c2, ta, tb, al, be, bi, MatMulEpilogue.None, null, null));
    }

    /// <summary>The product through cuBLASLt with a fused epilogue; false (nothing written) when cuBLASLt has no algorithm for a non-trivial epilogue.</summary>
    /// <remarks>With <paramref name="addend"/> (c's layout), cuBLASLt reads it as C with beta = 1 and writes D = c.</remarks>
    private bool MatMulCore(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias,
        MatMulEpilogue fused, Tensor? auxiliary, Tensor? biasGradient, Tensor? addend = null)
    {
        const string op = "MatMul";
        int rank = c.Rank;
        if (rank is not (2 or 3) || a.Rank != rank || b.Rank != rank)
            throw new ArgumentException($"CudaBackend.MatMul: a {a.Shape}, b {b.Shape}, c {c.Shape} must all be rank 2 or all rank 3");
        int batch = rank == 3 ? c.Size(0) : 1;
        if (rank == 3 && (a.Size(0) != batch || b.Size(0) != batch))
            throw new ArgumentException($"CudaBackend.MatMul: batch sizes of a {a.Shape}, b {b.Shape}, c {c.Shape} differ");
        int m = c.Size(-2), n = c.Size(-1);
        int k = transposeA ? a.Size(-2) : a.Size(-1);
        int am = transposeA ? a.Size(-1) : a.Size(-2);
        int bk = transposeB ? b.Size(-1) : b.Size(-2), bn = transposeB ? b.Size(-2) : b.Size(-1);
        if (am != m || bk != k || bn != n)
            throw new ArgumentException($"CudaBackend.MatMul: op(a) {a.Shape}{(transposeA ? "^T" : "")} @ op(b) {b.Shape}{(transposeB ? "^T" : "")} does not give c {c.Shape}");
        foreach (var (t, name) in new[] { (a, "a"), (b, "b"), (c, "c") })
            if (t.Stride(-1) != 1 && t.Size(-1) > 1)
                throw new ArgumentException($"CudaBackend.MatMul: {name} {t.Shape} needs a contiguous last dimension; pass a transpose flag instead of a transposed view, or copy it");
        if (a.DType != b.DType)
            throw new ArgumentException($"CudaBackend.MatMul: a is {a.DType} but b is {b.DType}");
        bool wideC = c.DType == DType.F32 && a.DType is DType.BF16 or DType.F16;
        if (c.DType != a.DType && !wideC)
            throw new ArgumentException($"CudaBackend.MatMul: c must be {a.DType} (or F32 for 16-bit inputs), got {c.DType}");
        if (a.DType is not (DType.F32 or DType.F64 or DType.BF16 or DType.F16))
            throw new NotSupportedException($"CudaBackend.MatMul: dtype {a.DType} is not supported");
        if (bias is not null)
        {
            if (bias.NumElements != n || !bias.IsContiguous) throw new ArgumentException($"CudaBackend.MatMul: bias {bias.Shape} must be contiguous with {n} elements");
            if (bias.DType != c.DType) throw new ArgumentException($"CudaBackend.MatMul: bias must be {c.DType} like c, got {bias.DType}");
        }
        if (m == 0 || n == 0 || batch == 0)
        {
            if (fused == MatMulEpilogue.None) return true;
            return false; // empty products: let the composition handle the edge case
        }
        if (k == 0) throw new ArgumentException($"CudaBackend.MatMul: the inner dimension of {a.Shape} @ {b.Shape} is empty");
        _ = op;

        ulong pa = Ptr(a), pb = Ptr(b), pc = Ptr(c), pbias = PtrOrNull(bias);
        ulong pin = pc;                                       // cuBLASLt's C (read with beta), D = pc is written
        if (addend is not null) { pin = Ptr(addend); beta = 1.0; }
        int alignment = Align(pa) | Align(pb) << 8 | Math.Min(Align(pc), pin == pc ? 256 : Align(pin)) << 16 | Align(pbias) << 24;
        uint epilogue = fused switch
        {
            MatMulEpilogue.Gelu => bias is null ? CUBLASLT_EPILOGUE_GELU_AUX : CUBLASLT_EPILOGUE_GELU_AUX_BIAS,
            MatMulEpilogue.GeluBackward => CUBLASLT_EPILOGUE_DGELU,
            // Under the operand swap our a is cuBLASLt's B, and its column sums (over K) are cuBLASLt's "bias gradient of B".
            MatMulEpilogue.BiasGradient => CUBLASLT_EPILOGUE_BGRADB,
            _ => bias is null ? CUBLASLT_EPILOGUE_DEFAULT : CUBLASLT_EPILOGUE_BIAS,
        };
        ulong paux = PtrOrNull(auxiliary);
        // cuBLASLt writes (does not accumulate) the bias gradient: it goes to a scratch vector added afterwards.
        Tensor? gradScratch = biasGradient is null ? null : Allocate(new Shape(m), biasGradient.DType); // (M)
        if (gradScratch is not null) pbias = Ptr(gradScratch);
        var key = new MatMulKey(a.DType, c.DType, transposeA, transposeB, m, n, k, batch,
            a.Stride(-2), b.Stride(-2), c.Stride(-2), rank == 3 ? a.Stride(0) : 0, rank == 3 ? b.Stride(0) : 0, rank == 3 ? c.Stride(0) : 0,
            epilogue, alignment, Align(paux) | Align(pbias) << 12, gradScratch?.DType ?? c.DType);
        try
        {
        EnsureCublasLt();
        if (!_plans.TryGetValue(key, out var plan))
        {
            plan = CreatePlan(key, pbias, paux);
            _plans[key] = plan;
            if (plan is not null && ShouldTune(key)) TunePlan(plan, key, pa, pb, pbias, paux, alpha, beta);
        }
        if (plan is null) return false;
        if (pbias != 0)
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &pbias, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
        if (paux != 0)
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &paux, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(EPILOGUE_AUX_POINTER)");
        CudaDevice.MakeCurrent();
        Profiler?.Begin($"matmul {a.DType} {m}x{n}x{k}{(batch > 1 ? $" b{batch}" : "")}{(transposeA ? " tA" : "")}{(transposeB ? " tB" : "")}{(addend is not null ? " +residual" : beta != 0 ? " acc" : "")}{(bias is not null ? " bias" : "")}{(fused != MatMulEpilogue.None ? " " + fused : "")}");
        // Column-major cuBLASLt sees the row-major c (M, N) as c^T (N, M) = op(b)^T op(a)^T: b goes first.
        fixed (ulong* algo = plan.Heuristic.Algo)
        {
            if (a.DType == DType.F64)
            {
                double al = alpha, be = beta;
                Check(cublasLtMatmul(_cublasLt, plan.Operation, &al, pb, plan.LayoutB, pa, plan.LayoutA, &be, pin, plan.LayoutC, pc, plan.LayoutC,
                    algo, _workspace, (nuint)MatMulWorkspaceBytes, Stream.Handle), "cublasLtMatmul", Describe(key));
            }
            else
            {
                float al = (float)alpha, be = (float)beta;
                Check(cublasLtMatmul(_cublasLt, plan.Operation, &al, pb, plan.LayoutB, pa, plan.LayoutA, &be, pin, plan.LayoutC, pc, plan.LayoutC,
                    algo, _workspace, (nuint)MatMulWorkspaceBytes, Stream.Handle), "cublasLtMatmul", Describe(key));
            }
        }
        Profiler?.End();
        if (gradScratch is not null) Accumulate(biasGradient!, gradScratch);
        return true;
        }
        finally
        {
            gradScratch?.Storage.Dispose();
        }
    }

    /// <summary>
    /// Most CTAs per SM a matrix-vector launch asks for (its warps loop over the rest of the columns): each CTA stages x once,
    /// so fewer CTAs read x from L2 fewer times. TESSERA_CUDA_GEMV_CTAS overrides it (an experiment's knob).
    /// </summary>
    private static readonly int GemvCtasPerSm =
        int.TryParse(Environment.GetEnvironmentVariable("TESSERA_CUDA_GEMV_CTAS"), out int ctas) && ctas is >= 1 and <= 8 ? ctas : 8;

    /// <summary>Most rows of x that the matrix-vector kernels (gemv.cu) take; larger products go to cuBLASLt.</summary>
    private const int GemvMaxRows = 4;

    /// <summary>
    /// Decoding's products, c (M, N) = x (M, K) W^T (+ bias, + beta c) with M &lt;= 4 and W (N, K) an nn.Linear weight: a
    /// memory-bound kernel that streams W once (gemv.cu), optionally RMS-normalizing x first. False, with nothing enqueued,
    /// when the call does not fit it (then cuBLASLt runs it). TESSERA_CUDA_GEMV=0 turns it off, to compare with cuBLASLt.
    /// </summary>
    private bool TryGemv(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias,
        RmsNormPrologue? norm = null)
    {
        if (transposeA || !transposeB || b.Rank != 2 || c.Rank != 2 || !GemvFits(a, norm, b)) return false;
        int m = a.Size(0), k = a.Size(1), n = b.Size(0);
        var dtype = a.DType;
        if (c.Size(0) != m || c.Size(1) != n || n == 0 || c.DType != dtype || (c.Stride(1) != 1 && n > 1)) return false;
        if (bias is not null && (bias.DType != dtype || !bias.IsContiguous || bias.NumElements != n)) return false;
        ulong px = Ptr(a), pw = Ptr(b), py = Ptr(c), pb = PtrOrNull(bias), pn = norm is { } r ? Ptr(r.Weight) : 0;
        float eps = norm is { } r2 ? (float)r2.Epsilon : 0f;
        long ldx = a.Stride(0), ldw = b.Stride(0), ldy = c.Stride(0);
        float al = (float)alpha, be = (float)beta;
        int split = GemvSplit(n, k / (16 / dtype.SizeInBytes()));
        int columnsPerCta = 8 / split;
        uint grid = (uint)Math.Min((n + columnsPerCta - 1) / columnsPerCta, CudaDevice.MultiprocessorCount * GemvCtasPerSm);
        void** args = stackalloc void*[] { &px, &pw, &pb, &py, &n, &k, &ldx, &ldw, &ldy, &al, &be, &pn, &eps };
        Launch("gemv.cu", $"gemv_{Suffix(dtype, "MatMul")}_m{m}_k{split}", (grid, 1, 1), 256, args, (uint)((long)m * k * dtype.SizeInBytes()), dependent: true);
        return true;
    }

    /// <summary>
    /// Whether x (M, K) with M &lt;= 4 and the (·, K) weights suit the matrix-vector kernels: one floating-point dtype, 16-byte
    /// aligned rows, K a multiple of 16 bytes, x fitting shared memory, a contiguous norm weight (K) when there is a norm.
    /// </summary>
    private bool GemvFits(Tensor x, RmsNormPrologue? norm, params Tensor[] weights)
    {
        if (!_gemvEnabled || x.Rank != 2) return false;
        int m = x.Size(0), k = x.Size(1);
        var dtype = x.DType;
        if (m < 1 || m > GemvMaxRows || k == 0 || dtype is not (DType.F32 or DType.BF16 or DType.F16)) return false;
        int vec = 16 / dtype.SizeInBytes();
        if (x.Stride(1) != 1 || k % vec != 0 || (m > 1 && x.Stride(0) % vec != 0) || Ptr(x) % 16 != 0) return false;
        if ((long)m * k * dtype.SizeInBytes() > CudaDevice.MaxSharedMemoryPerBlockOptIn) return false;
        foreach (var w in weights)
            if (w.Rank != 2 || w.DType != dtype || w.Size(1) != k || w.Stride(1) != 1 || w.Stride(0) % vec != 0 || Ptr(w) % 16 != 0) return false;
        if (norm is { } r && (r.Weight.DType != dtype || !r.Weight.IsContiguous || r.Weight.NumElements != k || Ptr(r.Weight) % 16 != 0)) return false;
        return true;
    }

    /// <summary>
    /// Warps per output column of the matrix-vector kernel: enough warps in all (32 per SM) to keep W streaming, with each
    /// warp's slice of a row still at least 4 16-byte loads per lane. Measured on the H200 (ncu, decode of llama-1b): one
    /// warp per column of the 2048-wide down projection (K = 8192) streamed at 1.9 TB/s, the LM head (128256 columns) at 3.6.
    /// </summary>
    private int GemvSplit(int n, int chunks)
    {
        int split = 1;
        while (split < 8 && (long)n * split < 32L * CudaDevice.MultiprocessorCount && chunks / (2 * split) >= 128) split *= 2;
        return split;
    }

    /// <inheritdoc/>
    /// <remarks>For at most 4 rows of x, one kernel streams the gate and up rows together (gemv.cu), normalizing x on the way
    /// when asked; otherwise the norm, two cuBLASLt products into scratch and the SwiGLU kernel.</remarks>
    public void MatMulSwiGlu(Tensor x, Tensor gateWeight, Tensor upWeight, Tensor output, Tensor? gateBias = null, Tensor? upBias = null,
        RmsNormPrologue? norm = null)
    {
        const string op = nameof(MatMulSwiGlu);
        if (x.Rank != 2 || gateWeight.Rank != 2 || upWeight.Shape != gateWeight.Shape || output.Rank != 2
            || gateWeight.Size(1) != x.Size(1) || output.Size(0) != x.Size(0) || output.Size(1) != gateWeight.Size(0))
            throw new ArgumentException($"CudaBackend.{op}: x {x.Shape}, gate {gateWeight.Shape}, up {upWeight.Shape}, output {output.Shape} do not fit (N, C), (F, C), (F, C), (N, F)");
        RequireContiguous(op, "output", output);
        int m = x.Size(0), k = x.Size(1), f = gateWeight.Size(0);
        var dtype = x.DType;
        // One row stride serves both weights in the kernel.
        bool fused = GemvFits(x, norm, gateWeight, upWeight) && upWeight.Stride(0) == gateWeight.Stride(0) && output.DType == dtype
            && (gateBias is null || (gateBias.DType == dtype && gateBias.IsContiguous && gateBias.NumElements == f))
            && (upBias is null || (upBias.DType == dtype && upBias.IsContiguous && upBias.NumElements == f));
        if (!fused)
        {
            Tensor? h = norm is { } r ? NormalizedScratch(x, r) : null;
            var gate = ScratchTensor(output.Shape, dtype);
            var up = ScratchTensor(output.Shape, dtype);
            MatMul(h ?? x, gateWeight, gate, transposeB: true, bias: gateBias);
            MatMul(h ?? x, upWeight, up, transposeB: true, bias: upBias);
            SwiGluForward(gate, up, output);
            gate.Storage.Dispose();
            up.Storage.Dispose();
            h?.Storage.Dispose();
            return;
        }
        ulong px = Ptr(x), pg = Ptr(gateWeight), pu = Ptr(upWeight), pbg = PtrOrNull(gateBias), pbu = PtrOrNull(upBias), po = Ptr(output);
        ulong pn = norm is { } n ? Ptr(n.Weight) : 0;
        float eps = norm is { } n2 ? (float)n2.Epsilon : 0f;
        long ldx = x.Stride(0), ldw = gateWeight.Stride(0), ldo = f;
        uint grid = (uint)Math.Min((f + 7) / 8, CudaDevice.MultiprocessorCount * GemvCtasPerSm);
        void** args = stackalloc void*[] { &px, &pg, &pu, &pbg, &pbu, &po, &f, &k, &ldx, &ldw, &ldo, &pn, &eps };
        Launch("gemv.cu", $"gemv_swiglu_{Suffix(dtype, op)}_m{m}", (grid, 1, 1), 256, args, (uint)((long)m * k * dtype.SizeInBytes()), dependent: true);
    }

    /// <inheritdoc/>
    /// <remarks>For at most 4 rows of x, the matrix-vector kernel normalizes x while staging it; otherwise the RMSNorm kernel
    /// into scratch, then the product.</remarks>
    public void RmsNormMatMul(Tensor x, RmsNormPrologue norm, Tensor weight, Tensor output, Tensor? bias = null)
    {
        if (TryGemv(x, weight, output, false, true, 1.0, 0.0, bias, norm)) return;
        var h = NormalizedScratch(x, norm);
        MatMul(h, weight, output, transposeB: true, bias: bias);
        h.Storage.Dispose();
    }

    /// <summary>RMSNorm(x) in a scratch tensor (freed by the caller); legal while recording a graph.</summary>
    private Tensor NormalizedScratch(Tensor x, RmsNormPrologue norm)
    {
        var h = ScratchTensor(x.Shape, x.DType);
        var rstd = ScratchTensor(new Shape(x.Size(0)), DType.F32);
        RmsNormForward(x, norm.Weight, h, rstd, norm.Epsilon);
        rstd.Storage.Dispose();
        return h;
    }

    /// <summary>Whether two tensors of one shape have the same strides (one cuBLASLt layout serves both).</summary>
    private static bool SameLayout(Tensor x, Tensor y)
    {
        if (x.Rank != y.Rank) return false;
        for (int d = 0; d < x.Rank; d++) if (x.Size(d) > 1 && x.Stride(d) != y.Stride(d)) return false;
        return true;
    }

    private static int Align(ulong p) => p == 0 ? 0 : (int)Math.Min(256, p & (~p + 1));

    private static string Describe(MatMulKey k) =>
        $"{k.AB}->{k.C} M={k.M} N={k.N} K={k.K} batch={k.Batch} transA={k.TransA} transB={k.TransB} epilogue={k.Epilogue}";

    private static int CudaType(DType d) => d switch
    {
        DType.F32 => CUDA_R_32F,
        DType.F64 => CUDA_R_64F,
        DType.BF16 => CUDA_R_16BF,
        DType.F16 => CUDA_R_16F,
        _ => throw new NotSupportedException($"no cuBLASLt type for {d}"),
    };

    private void EnsureCublasLt()
    {
        if (_cublasLt != IntPtr.Zero) return;
        CudaLibraries.Load(CudaLibraries.CublasLt);
        CudaDevice.MakeCurrent();
        IntPtr h;
        Check(cublasLtCreate(&h), "cublasLtCreate");
        _cublasLt = h;
        _workspace = _allocator.Allocate(MatMulWorkspaceBytes);
    }

    private MatMulPlan? CreatePlan(MatMulKey k, ulong biasPointer, ulong auxPointer)
    {
        var plan = new MatMulPlan();
        bool f64 = k.AB == DType.F64;
        IntPtr operation;
        // FP32 compute (not FAST_TF32): f32 products keep full f32 precision.
        Check(cublasLtMatmulDescCreate(&operation, f64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F, f64 ? CUDA_R_64F : CUDA_R_32F), "cublasLtMatmulDescCreate");
        plan.Operation = operation;
        int opA = k.TransB ? CUBLAS_OP_T : CUBLAS_OP_N, opB = k.TransA ? CUBLAS_OP_T : CUBLAS_OP_N;
        Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSA)");
        Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof(int)), "cublasLtMatmulDescSetAttribute(TRANSB)");
        uint epilogue = k.Epilogue;
        Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(uint)), "cublasLtMatmulDescSetAttribute(EPILOGUE)");
        if (biasPointer != 0)
        {
            int biasType = CudaType(k.BiasType);
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &biasType, sizeof(int)), "cublasLtMatmulDescSetAttribute(BIAS_DATA_TYPE)");
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &biasPointer, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
        }
        if (auxPointer != 0)
        {
            long auxLd = k.N; // the auxiliary is contiguous (M, N) row-major: column-major (N, M) with leading dimension N
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &auxPointer, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(EPILOGUE_AUX_POINTER)");
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &auxLd, sizeof(long)), "cublasLtMatmulDescSetAttribute(EPILOGUE_AUX_LD)");
        }
        // cuBLASLt's "A" is our b: (N, K) column-major when not transposed, i.e. row-major b (K, N).
        plan.LayoutB = Layout(k.AB, k.TransB ? k.K : k.N, k.TransB ? k.N : k.K, k.Ldb, k.Batch, k.StrideB);
        plan.LayoutA = Layout(k.AB, k.TransA ? k.M : k.K, k.TransA ? k.K : k.M, k.Lda, k.Batch, k.StrideA);
        plan.LayoutC = Layout(k.C, k.N, k.M, k.Ldc, k.Batch, k.StrideC);
        IntPtr preference;
        Check(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
        try
        {
            ulong workspace = MatMulWorkspaceBytes;
            Check(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(ulong)), "cublasLtMatmulPreferenceSetAttribute");
            var results = stackalloc HeuristicResult[MatMulCandidates];
            int returned = 0;
            int status = cublasLtMatmulAlgoGetHeuristic(_cublasLt, plan.Operation, plan.LayoutB, plan.LayoutA, plan.LayoutC, plan.LayoutC,
                preference, MatMulTuning ? MatMulCandidates : 1, results, &returned);
            bool fusedEpilogue = k.Epilogue is not (CUBLASLT_EPILOGUE_DEFAULT or CUBLASLT_EPILOGUE_BIAS);
            if (fusedEpilogue && (status != CUBLAS_STATUS_SUCCESS || returned == 0))
            {
                DestroyPlan(plan); // cuBLASLt rejects this epilogue here: the caller composes it
                return null;
            }
            Check(status, "cublasLtMatmulAlgoGetHeuristic", Describe(k));
            if (returned == 0)
                throw new NotSupportedException($"CudaBackend.MatMul: cuBLASLt has no algorithm for {Describe(k)}");
            plan.Heuristic = results[0];
            plan.Candidates = new HeuristicResult[returned];
            for (int i = 0; i < returned; i++) plan.Candidates[i] = results[i];
        }
        finally
        {
            cublasLtMatmulPreferenceDestroy(preference);
        }
        return plan;
    }

    private static IntPtr Layout(DType dtype, int rows, int cols, long ld, int batch, long batchStride)
    {
        IntPtr layout;
        Check(cublasLtMatrixLayoutCreate(&layout, CudaType(dtype), (ulong)rows, (ulong)cols, Math.Max(ld, rows)), "cublasLtMatrixLayoutCreate");
        if (batch > 1)
        {
            Check(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(int)), "cublasLtMatrixLayoutSetAttribute(BATCH_COUNT)");
            Check(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batchStride, sizeof(long)), "cublasLtMatrixLayoutSetAttribute(STRIDED_BATCH_OFFSET)");
        }
        return layout;
    }

    private static void DestroyPlan(MatMulPlan p)
    {
        cublasLtMatrixLayoutDestroy(p.LayoutA);
        cublasLtMatrixLayoutDestroy(p.LayoutB);
        cublasLtMatrixLayoutDestroy(p.LayoutC);
        cublasLtMatmulDescDestroy(p.Operation);
    }

    private void DisposeMatMul()
    {
        foreach (var p in _plans.Values)
            if (p is not null) DestroyPlan(p);
        _plans.Clear();
        if (_cublasLt != IntPtr.Zero) { cublasLtDestroy(_cublasLt); _cublasLt = IntPtr.Zero; }
    }
}
