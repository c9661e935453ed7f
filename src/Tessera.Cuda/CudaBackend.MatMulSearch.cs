using Tessera.Tensors;
using static Tessera.Cuda.Interop.CublasLt;

namespace Tessera.Cuda;

// The candidates beyond cuBLASLt's heuristic that the timed choice tries for a decode-size product
// (CudaBackendOptions.MatMulSearch). A 64-row product streams its whole weight for little arithmetic, so its time is set by
// how many SMs its grid keeps reading: the heuristic's tiles give a 2048-wide output 16 CTAs of 128 columns, and its
// candidates read llama-1b's decode weights at 0.9-3.2 TB/s on the H200 against a 4.2 TB/s copy. Splitting K gives each
// output tile several CTAs; the partial sums are reduced in F32 (COMPUTE_TYPE), so no rounding to 16 bits between parts and
// the same bits on every run.
public sealed unsafe partial class CudaBackend
{
    /// <summary>The K splits tried for each candidate that supports splitting.</summary>
    private static readonly uint[] MatMulSplits = [2, 3, 4, 6, 8, 12, 16];

    /// <summary>Fewest values of K a split must keep (a smaller part is all prologue).</summary>
    private const int MatMulMinSplitDepth = 128;

    /// <summary>Most candidates <see cref="MatMulCandidateSearch.AllAlgorithms"/> collects.</summary>
    private const int MatMulMaxSearchCandidates = 512;

    /// <summary>
    /// The heuristic's candidates followed by those <see cref="CudaBackendOptions.MatMulSearch"/> adds for a product of at most
    /// <see cref="CudaBackendOptions.MatMulSearchMaxRows"/> rows with no fused epilogue but a bias; every added one is accepted by
    /// cublasLtMatmulAlgoCheck for this plan within the workspace, and none repeats another's configuration (all 64 bytes of it).
    /// </summary>
    private HeuristicResult[] SearchCandidates(MatMulPlan plan, MatMulKey key)
    {
        if (Options.MatMulSearch == MatMulCandidateSearch.Heuristic || key.M > Options.MatMulSearchMaxRows
            || key.Epilogue is not (CUBLASLT_EPILOGUE_DEFAULT or CUBLASLT_EPILOGUE_BIAS))
            return plan.Candidates;
        var found = new List<HeuristicResult>(plan.Candidates);
        var seen = new HashSet<string>(found.Select(AlgorithmBytes));
        void Offer(HeuristicResult candidate)
        {
            if (found.Count >= MatMulMaxSearchCandidates) return;
            if (!CheckCandidate(plan, ref candidate) || !seen.Add(AlgorithmBytes(candidate))) return;
            found.Add(candidate);
        }
        void OfferSplits(HeuristicResult candidate)
        {
            if (Capability(candidate, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT) == 0
                || (Capability(candidate, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK) & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) == 0)
                return;
            foreach (uint splits in MatMulSplits)
            {
                if (key.K / splits < MatMulMinSplitDepth) break;
                var split = candidate;
                uint scheme = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
                Configure(ref split, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, splits);
                Configure(ref split, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, scheme);
                Offer(split);
            }
        }
        foreach (var candidate in plan.Candidates) OfferSplits(candidate);
        if (Options.MatMulSearch == MatMulCandidateSearch.AllAlgorithms)
            foreach (var algorithm in ListedAlgorithms(key))
            {
                Offer(algorithm);
                OfferSplits(algorithm);
            }
        return found.ToArray();
    }

    /// <summary>Every algorithm cuBLASLt lists for the product's types, once at each tile it supports (its default tile when it lists none).</summary>
    private List<HeuristicResult> ListedAlgorithms(MatMulKey key)
    {
        var listed = new List<HeuristicResult>();
        int ab = CudaType(key.AB), c = CudaType(key.C);
        const int maxIds = 256;
        var ids = new int[maxIds];
        int count = 0;
        fixed (int* p = ids)
            if (cublasLtMatmulAlgoGetIds(_cublasLt, CUBLAS_COMPUTE_32F, CUDA_R_32F, ab, ab, c, c, maxIds, p, &count) != CUBLAS_STATUS_SUCCESS)
                return listed;
        for (int i = 0; i < count; i++)
        {
            var algorithm = new HeuristicResult();
            if (cublasLtMatmulAlgoInit(_cublasLt, CUBLAS_COMPUTE_32F, CUDA_R_32F, ab, ab, c, c, ids[i], algorithm.Algo) != CUBLAS_STATUS_SUCCESS)
                continue;
            nuint bytes = 0;
            cublasLtMatmulAlgoCapGetAttribute(algorithm.Algo, CUBLASLT_ALGO_CAP_TILE_IDS, null, 0, &bytes);
            var tiles = new uint[(int)bytes / sizeof(uint)];
            if (tiles.Length > 0)
                fixed (uint* t = tiles)
                    if (cublasLtMatmulAlgoCapGetAttribute(algorithm.Algo, CUBLASLT_ALGO_CAP_TILE_IDS, t, bytes, &bytes) != CUBLAS_STATUS_SUCCESS)
                        tiles = [];
            if (tiles.Length == 0) { listed.Add(algorithm); continue; }
            foreach (uint tile in tiles)
            {
                var tiled = algorithm;
                Configure(ref tiled, CUBLASLT_ALGO_CONFIG_TILE_ID, tile);
                listed.Add(tiled);
            }
        }
        return listed;
    }

    /// <summary>
    /// Whether cuBLASLt runs <paramref name="candidate"/> (a search's candidate, or an algorithm timed for another row count of
    /// the bucket) on this plan's shapes within the workspace; its workspace size and waves are filled in for these shapes.
    /// </summary>
    private bool CheckCandidate(MatMulPlan plan, ref HeuristicResult candidate) =>
        CheckAlgorithm(plan.Operation, plan.LayoutB, plan.LayoutA, plan.LayoutC, ref candidate);

    /// <summary>
    /// Whether cuBLASLt accepts <paramref name="candidate"/> for the product (<paramref name="operation"/>, cuBLAS's A and B
    /// layouts, C = D's layout) within the workspace; fills in its workspace size and waves.
    /// </summary>
    private bool CheckAlgorithm(IntPtr operation, IntPtr layoutA, IntPtr layoutB, IntPtr layoutC, ref HeuristicResult candidate)
    {
        HeuristicResult result;
        fixed (ulong* algo = candidate.Algo)
        {
            int status = cublasLtMatmulAlgoCheck(_cublasLt, operation, layoutA, layoutB, layoutC, layoutC, algo, &result);
            if (status != CUBLAS_STATUS_SUCCESS || result.State != CUBLAS_STATUS_SUCCESS || result.WorkspaceSize > (nuint)MatMulWorkspaceBytes)
                return false;
        }
        candidate.WorkspaceSize = result.WorkspaceSize;
        candidate.WavesCount = result.WavesCount;
        candidate.State = CUBLAS_STATUS_SUCCESS;
        return true;
    }

    private static uint Capability(HeuristicResult algorithm, int attribute)
    {
        uint value = 0;
        nuint written = 0;
        return cublasLtMatmulAlgoCapGetAttribute(algorithm.Algo, attribute, &value, sizeof(uint), &written) == CUBLAS_STATUS_SUCCESS ? value : 0;
    }

    private static uint Configuration(HeuristicResult algorithm, int attribute)
    {
        uint value = 0;
        nuint written = 0;
        return cublasLtMatmulAlgoConfigGetAttribute(algorithm.Algo, attribute, &value, sizeof(uint), &written) == CUBLAS_STATUS_SUCCESS ? value : 0;
    }

    private static void Configure(ref HeuristicResult algorithm, int attribute, uint value)
    {
        fixed (ulong* algo = algorithm.Algo)
            Check(cublasLtMatmulAlgoConfigSetAttribute(algo, attribute, &value, sizeof(uint)), "cublasLtMatmulAlgoConfigSetAttribute", $"attribute {attribute} = {value}");
    }

    /// <summary>An algorithm's whole opaque configuration (cublasLtMatmulAlgo_t's 64 bytes), to tell two candidates apart.</summary>
    private static string AlgorithmBytes(HeuristicResult algorithm)
    {
        var words = new ulong[8];
        for (int i = 0; i < 8; i++) words[i] = algorithm.Algo[i];
        return string.Join(",", words);
    }

    /// <summary>An algorithm's configuration as the tuning log prints it: cuBLASLt's id, tile, stages, K splits, reduction scheme.</summary>
    private static string AlgorithmText(HeuristicResult algorithm) =>
        $"id {Configuration(algorithm, CUBLASLT_ALGO_CONFIG_ID)} tile {Configuration(algorithm, CUBLASLT_ALGO_CONFIG_TILE_ID)} " +
        $"stages {Configuration(algorithm, CUBLASLT_ALGO_CONFIG_STAGES_ID)} split-K {Math.Max(1, Configuration(algorithm, CUBLASLT_ALGO_CONFIG_SPLITK_NUM))}" +
        $"/{Configuration(algorithm, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME)}";
}
