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
        /// <summary>What the timed choice tried (the candidates and <see cref="SearchCandidates"/>'s additions); empty when not timed.</summary>
        public HeuristicResult[] Searched = [];
    }

    /// <summary>The plan of the last cuBLASLt product (for the tests' hooks below).</summary>
    private MatMulPlan? _lastPlan;

    /// <summary>
    /// For tests: while set, a product whose algorithm was timed runs the timed candidate of this index (modulo their number)
    /// instead of the chosen one, so that every candidate's result can be checked.
    /// </summary>
    internal int? MatMulCandidateOverride { get; set; }

    /// <summary>For tests: how many candidates the last product's timed choice tried (0 when it was not timed).</summary>
    internal int LastMatMulCandidateCount => _lastPlan?.Searched.Length ?? 0;

    /// <summary>For tests: the configuration of the last product's timed candidate <paramref name="index"/>.</summary>
    internal string LastMatMulCandidate(int index) => AlgorithmText(_lastPlan!.Searched[index]);

    /// <summary>For tests: the configuration the last product ran with while <see cref="MatMulCandidateOverride"/> was set.</summary>
    internal string LastMatMulRun => AlgorithmText(_lastOverriddenRun);
    private HeuristicResult _lastOverriddenRun;

    /// <inheritdoc/>
    /// <remarks>
    /// The epilogues run fused in cuBLASLt (GELU_AUX[_BIAS], DGELU, DGELU_BGRAD, BGRADB) for F32, BF16 and F16; F64 products, and
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
            if (addend is null && (TryGemv(a, b, c, transposeA, transposeB, alpha, beta, bias)
                || TryDecodeGemm(a, b, c, transposeA, transposeB, alpha, beta, bias))) return;
            if (TryHopperMatMul(a, b, c, transposeA, transposeB, alpha, beta, bias, addend)) return;
            MatMulCore(a, b, c, transposeA, transposeB, alpha, beta, bias, epilogue, null, null, addend);
            return;
        }
        bool fused = a.DType != DType.F64 && epilogue switch
        {
            MatMulEpilogue.BiasGradient => Options.FusedBiasGradient,
            MatMulEpilogue.GeluBackwardBiasGradient => Options.FusedGeluBiasGradient,
            _ => true,
        };
        if (fused && MatMulCore(a, b, c, transposeA, transposeB, alpha, beta, bias, epilogue, auxiliary, biasGradient))
            return;
        // The GELU gradient's bias gradient unfused: the DGELU epilogue (a plain product and the elementwise GELU'
        // took 0.13 ms more at GPT-2's 65536 x 3072 x 768), then the column sums of its output.
        if (epilogue == MatMulEpilogue.GeluBackwardBiasGradient && a.DType != DType.F64
            && MatMulCore(a, b, c, transposeA, transposeB, alpha, beta, bias, MatMulEpilogue.GeluBackward, auxiliary, null))
        {
            SumRows(c, biasGradient!);
            return;
        }
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
            // cuBLASLt's D is c^T (N, M): its bias gradient is one value per row of D, the sum over its columns, i.e. c's column sums.
            MatMulEpilogue.GeluBackwardBiasGradient => CUBLASLT_EPILOGUE_DGELU_BGRAD,
            // Under the operand swap our a is cuBLASLt's B, and its column sums (over K) are cuBLASLt's "bias gradient of B".
            MatMulEpilogue.BiasGradient => CUBLASLT_EPILOGUE_BGRADB,
            _ => bias is null ? CUBLASLT_EPILOGUE_DEFAULT : CUBLASLT_EPILOGUE_BIAS,
        };
        ulong paux = PtrOrNull(auxiliary);
        // cuBLASLt writes (does not accumulate) the bias gradient: it goes to a scratch vector added afterwards.
        Tensor? gradScratch = biasGradient is null ? null
            : Allocate(new Shape(fused == MatMulEpilogue.GeluBackwardBiasGradient ? n : m), biasGradient.DType); // (M) or, for DGELU_BGRAD, (N)
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
            if (plan is not null) ChooseAlgorithm(plan, key, pa, pb, pbias, paux, alpha, beta);
        }
        if (plan is null) return false;
        _lastPlan = plan;
        var algorithm = MatMulCandidateOverride is int forced && plan.Searched.Length > 0 ? plan.Searched[forced % plan.Searched.Length] : plan.Heuristic;
        if (MatMulCandidateOverride is not null) _lastOverriddenRun = algorithm;
        if (pbias != 0)
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &pbias, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
        if (paux != 0)
            Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &paux, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(EPILOGUE_AUX_POINTER)");
        CudaDevice.MakeCurrent();
        Profiler?.Begin($"matmul {a.DType} {m}x{n}x{k}{(batch > 1 ? $" b{batch}" : "")}{(transposeA ? " tA" : "")}{(transposeB ? " tB" : "")}{(addend is not null ? " +residual" : beta != 0 ? " acc" : "")}{(bias is not null ? " bias" : "")}{(fused != MatMulEpilogue.None ? " " + fused : "")}");
        // Column-major cuBLASLt sees the row-major c (M, N) as c^T (N, M) = op(b)^T op(a)^T: b goes first.
        ulong* algo = algorithm.Algo;
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

    /// <summary>RMSNorm(x) in a scratch tensor (freed by the caller); legal while recording a graph.</summary>
    private Tensor NormalizedScratch(Tensor x, RmsNormPrologue norm)
    {
        var h = ScratchTensor(x.Shape, x.DType);
        var rstd = ScratchTensor(new Shape(x.Size(0)), DType.F32);
        RmsNormForward(x, norm.Weight, h, rstd, norm.Epsilon, norm.UnitOffset);
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
        var candidates = HeuristicCandidates(plan.Operation, plan.LayoutB, plan.LayoutA, plan.LayoutC, out int status);
        bool fusedEpilogue = k.Epilogue is not (CUBLASLT_EPILOGUE_DEFAULT or CUBLASLT_EPILOGUE_BIAS);
        if (fusedEpilogue && (status != CUBLAS_STATUS_SUCCESS || candidates.Length == 0))
        {
            DestroyPlan(plan); // cuBLASLt rejects this epilogue here: the caller composes it
            return null;
        }
        Check(status, "cublasLtMatmulAlgoGetHeuristic", Describe(k));
        if (candidates.Length == 0)
            throw new NotSupportedException($"CudaBackend.MatMul: cuBLASLt has no algorithm for {Describe(k)}");
        plan.Heuristic = candidates[0];
        plan.Candidates = candidates;
        return plan;
    }

    /// <summary>
    /// cuBLASLt's heuristic answers for a product (<paramref name="operation"/>, cuBLAS's A and B layouts, C = D's layout)
    /// within the workspace, best guess first: up to <see cref="CudaBackendOptions.MatMulHeuristicCandidates"/> when tuning
    /// is on, else one. Empty, with the call's <paramref name="status"/>, when cuBLASLt offers none.
    /// </summary>
    private HeuristicResult[] HeuristicCandidates(IntPtr operation, IntPtr layoutA, IntPtr layoutB, IntPtr layoutC, out int status)
    {
        IntPtr preference;
        Check(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
        try
        {
            ulong workspace = MatMulWorkspaceBytes;
            Check(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(ulong)), "cublasLtMatmulPreferenceSetAttribute");
            int asked = Options.TuneMatMulAlgorithms ? Options.MatMulHeuristicCandidates : 1;
            var results = stackalloc HeuristicResult[asked];
            int returned = 0;
            status = cublasLtMatmulAlgoGetHeuristic(_cublasLt, operation, layoutA, layoutB, layoutC, layoutC, preference, asked, results, &returned);
            if (status != CUBLAS_STATUS_SUCCESS) returned = 0;
            var candidates = new HeuristicResult[returned];
            for (int i = 0; i < returned; i++) candidates[i] = results[i];
            return candidates;
        }
        finally
        {
            cublasLtMatmulPreferenceDestroy(preference);
        }
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
        DisposeFp8Plans();
        foreach (var p in _plans.Values)
            if (p is not null) DestroyPlan(p);
        _plans.Clear();
        if (_cublasLt != IntPtr.Zero) { cublasLtDestroy(_cublasLt); _cublasLt = IntPtr.Zero; }
    }
}
