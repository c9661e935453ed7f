using System.Runtime.InteropServices;

namespace Tessera.Cuda.Interop;

/// <summary>cuBLASLt (libcublasLt.so.13 or .12): matrix products with fused epilogues.</summary>
internal static unsafe partial class CublasLt
{
    internal const int CUBLAS_STATUS_SUCCESS = 0;

    internal const int CUBLAS_COMPUTE_32F = 68;
    internal const int CUBLAS_COMPUTE_64F = 70;
    internal const int CUDA_R_32F = 0;
    internal const int CUDA_R_64F = 1;
    internal const int CUDA_R_16F = 2;
    internal const int CUDA_R_16BF = 14;
    /// <summary>cudaDataType CUDA_R_8F_E4M3: OCP FP8 E4M3 ("fn").</summary>
    internal const int CUDA_R_8F_E4M3 = 28;

    internal const int CUBLAS_OP_N = 0;
    internal const int CUBLAS_OP_T = 1;

    internal const int CUBLASLT_MATMUL_DESC_TRANSA = 3;
    internal const int CUBLASLT_MATMUL_DESC_TRANSB = 4;
    internal const int CUBLASLT_MATMUL_DESC_EPILOGUE = 7;
    internal const int CUBLASLT_MATMUL_DESC_BIAS_POINTER = 8;
    internal const int CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER = 11;
    internal const int CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD = 12;
    internal const int CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE = 26;
    // FP8 scaling (cublasLtMatmulDescAttributes_t): device pointers to A's and B's scales, and how they are read.
    internal const int CUBLASLT_MATMUL_DESC_A_SCALE_POINTER = 17;
    internal const int CUBLASLT_MATMUL_DESC_B_SCALE_POINTER = 18;
    internal const int CUBLASLT_MATMUL_DESC_A_SCALE_MODE = 31;
    internal const int CUBLASLT_MATMUL_DESC_B_SCALE_MODE = 32;

    /// <summary>
    /// cublasLtMatmulMatrixScale_t OUTER_VEC_32F (cuBLAS 12.9+): A's scales are an F32 vector of one value a row of op(A) (M),
    /// B's one a column of op(B) (N), and D[i, j] = alpha scaleA[i] scaleB[j] Σ A[i, l] B[l, j] + beta C[i, j].
    /// </summary>
    internal const int CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F = 3;

    internal const uint CUBLASLT_EPILOGUE_DEFAULT = 1;
    internal const uint CUBLASLT_EPILOGUE_BIAS = 4;
    internal const uint CUBLASLT_EPILOGUE_GELU_BIAS = 36;
    internal const uint CUBLASLT_EPILOGUE_GELU_AUX = 160;
    internal const uint CUBLASLT_EPILOGUE_GELU_AUX_BIAS = 164;
    internal const uint CUBLASLT_EPILOGUE_DGELU = 192;
    internal const uint CUBLASLT_EPILOGUE_DGELU_BGRAD = 208;
    internal const uint CUBLASLT_EPILOGUE_BGRADB = 512;

    internal const int CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT = 5;
    internal const int CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET = 6;

    internal const int CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;

    // cublasLtMatmulAlgoCapAttributes_t: what an algorithm supports.
    internal const int CUBLASLT_ALGO_CAP_SPLITK_SUPPORT = 0;
    internal const int CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK = 1;
    internal const int CUBLASLT_ALGO_CAP_TILE_IDS = 6;

    // cublasLtMatmulAlgoConfigAttributes_t: how an algorithm is configured.
    internal const int CUBLASLT_ALGO_CONFIG_ID = 0;
    internal const int CUBLASLT_ALGO_CONFIG_TILE_ID = 1;
    internal const int CUBLASLT_ALGO_CONFIG_SPLITK_NUM = 2;
    internal const int CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME = 3;
    internal const int CUBLASLT_ALGO_CONFIG_STAGES_ID = 6;

    /// <summary>cublasLtReductionScheme_t COMPUTE_TYPE: split-K partial sums in the compute type (F32) in the workspace, then one reduction.</summary>
    internal const uint CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE = 2;

    /// <summary>cublasLtMatmulHeuristicResult_t: the algorithm (64 bytes), workspace size, state, waves, reserved.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct HeuristicResult
    {
        public fixed ulong Algo[8];
        public nuint WorkspaceSize;
        public int State;
        public float WavesCount;
        public fixed int Reserved[4];
    }

    private const string Lib = CudaLibraries.CublasLt;

    [LibraryImport(Lib)] internal static partial int cublasLtCreate(IntPtr* handle);
    [LibraryImport(Lib)] internal static partial int cublasLtDestroy(IntPtr handle);
    [LibraryImport(Lib)] internal static partial nuint cublasLtGetVersion();
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulDescCreate(IntPtr* desc, int computeType, int scaleType);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulDescDestroy(IntPtr desc);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulDescSetAttribute(IntPtr desc, int attribute, void* buffer, nuint size);
    [LibraryImport(Lib)] internal static partial int cublasLtMatrixLayoutCreate(IntPtr* layout, int type, ulong rows, ulong cols, long ld);
    [LibraryImport(Lib)] internal static partial int cublasLtMatrixLayoutDestroy(IntPtr layout);
    [LibraryImport(Lib)] internal static partial int cublasLtMatrixLayoutSetAttribute(IntPtr layout, int attribute, void* buffer, nuint size);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulPreferenceCreate(IntPtr* preference);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulPreferenceDestroy(IntPtr preference);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulPreferenceSetAttribute(IntPtr preference, int attribute, void* buffer, nuint size);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulAlgoGetHeuristic(IntPtr handle, IntPtr operation, IntPtr aDesc, IntPtr bDesc,
        IntPtr cDesc, IntPtr dDesc, IntPtr preference, int requested, HeuristicResult* results, int* returned);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulAlgoCheck(IntPtr handle, IntPtr operation, IntPtr aDesc, IntPtr bDesc,
        IntPtr cDesc, IntPtr dDesc, void* algo, HeuristicResult* result);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulAlgoGetIds(IntPtr handle, int computeType, int scaleType, int aType, int bType,
        int cType, int dType, int requested, int* ids, int* returned);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulAlgoInit(IntPtr handle, int computeType, int scaleType, int aType, int bType,
        int cType, int dType, int id, void* algo);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulAlgoCapGetAttribute(void* algo, int attribute, void* buffer, nuint size, nuint* written);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulAlgoConfigGetAttribute(void* algo, int attribute, void* buffer, nuint size, nuint* written);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmulAlgoConfigSetAttribute(void* algo, int attribute, void* buffer, nuint size);
    [LibraryImport(Lib)] internal static partial int cublasLtMatmul(IntPtr handle, IntPtr operation, void* alpha, ulong a, IntPtr aDesc,
        ulong b, IntPtr bDesc, void* beta, ulong c, IntPtr cDesc, ulong d, IntPtr dDesc, void* algo, ulong workspace, nuint workspaceBytes, IntPtr stream);
    [LibraryImport(Lib)] internal static partial byte* cublasLtGetStatusName(int status);
    [LibraryImport(Lib)] internal static partial byte* cublasLtGetStatusString(int status);

    /// <summary>Throws <see cref="CudaException"/> naming the call when cuBLASLt reports an error.</summary>
    internal static void Check(int status, string call, string? context = null)
    {
        if (status == CUBLAS_STATUS_SUCCESS) return;
        string name = Marshal.PtrToStringUTF8((IntPtr)cublasLtGetStatusName(status)) ?? "CUBLAS_STATUS_UNKNOWN";
        string text = Marshal.PtrToStringUTF8((IntPtr)cublasLtGetStatusString(status)) ?? "unknown cuBLAS status";
        throw new CudaException(call, status, name, text, context);
    }
}
