using Tessera.Cuda.Runtime;
using Tessera.Tensors;
using static Tessera.Cuda.Interop.CublasLt;

namespace Tessera.Cuda;

// Timed choice among cuBLASLt's candidate algorithms. The heuristic's first answer is a guess from a performance model;
// for the training step's products with fused epilogues (GELU_AUX_BIAS, DGELU, BGRADB) it ran at 59-69 % of the
// FLOP floor on the H200 while the plain products of the same size ran at 80-95 %. The first call of each new shape
// times up to CudaBackendOptions.MatMulHeuristicCandidates algorithms on scratch outputs and keeps the fastest.
public sealed unsafe partial class CudaBackend : IMatMulRowBuckets
{
    /// <summary>Smallest product (2 M N K FLOPs) worth timing for its arithmetic: below it a wrong pick costs microseconds.</summary>
    private const double MatMulTuneMinFlops = 4e9;

    /// <summary>
    /// Smallest operand read (a and b, bytes) that makes a product worth timing however few its FLOPs: a decode step's products
    /// (M = the batch) stream the whole weight, repeat in every layer of every step, and cuBLASLt's first answer for them
    /// ran at 22-45 % of the copy bandwidth on the H200 (64 rows, 2026-12-03: 64x2048x2048 in 9.2 us, 64x2048x8192 in 17.9).
    /// </summary>
    private const long MatMulTuneMinBytes = 4L << 20;

    /// <summary>Row counts up to this are a decode step's (the serving batch buckets, powers of two): their buckets are powers of two.</summary>
    private const int MatMulTuneDecodeRows = 256;

    /// <summary>Largest scratch output a timing run may allocate (the 50304-wide head products are left to the heuristic).</summary>
    private const long MatMulTuneMaxScratchBytes = 1L << 30;

    /// <summary>How much faster than the heuristic's first answer another algorithm must time to replace it.</summary>
    private const double MatMulTuneMargin = 0.97;

    /// <summary>One line per tuned product: its shape, the candidates timed, the chosen index (0 = the heuristic's first
    /// answer) and both times.</summary>
    public IReadOnlyList<string> MatMulTuningLog => _tuningLog;
    private readonly List<string> _tuningLog = new();

    /// <summary>
    /// The timed algorithm of each row-count bucket (<see cref="MatMulRowBucket"/>) of a product: a serving step's rows change with every step's mix of prefill chunks and decode rows, so timing every new M would make
    /// the engine wait ~20 ms a mixed step, while cuBLASLt's untimed first answer can be ten times slower than the timed one
    /// (H200, 2026-12-03, llama-1b: 536x3072x2048 in 366 us against 17.6 us timed at 686 rows; 508x2048x2048 with
    /// accumulation in 305 us against 27 us at 2048). The first M of a bucket is timed; later ones reuse its algorithm when
    /// cuBLASLt accepts it for their shape. The decode range has power-of-two buckets, which are the decode steps' own row
    /// counts; until session 14 it had a budget of 16 row counts per product instead, and the LM head (whose rows are a mixed
    /// step's sampled sequences, any count up to the batch) spent it in the first steps, after which its untimed heuristic
    /// answers took 0.8-3.3 ms for 35-59 rows against 0.15 ms timed (H200, 2026-12-03, 64 streams).
    /// </summary>
    private readonly Dictionary<MatMulKey, HeuristicResult> _bucketAlgorithms = new();

    /// <summary>Products (new row counts) that took a bucket's timed algorithm instead of being timed themselves.</summary>
    public int MatMulBucketReuses { get; private set; }

    /// <summary>
    /// The bucket of a row count: the next power of two up to 256 rows (a decode step's rows), then the next multiple of 256 up
    /// to 4096, of 2048 above (a serving step's token budget, 8192 by default, gives at most 27 buckets per product).
    /// </summary>
    internal static int MatMulRowBucket(int m) =>
        m <= MatMulTuneDecodeRows ? (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(m, 1))
        : m <= 4096 ? (m + 255) / 256 * 256 : (m + 2047) / 2048 * 2048;

    /// <summary>The first row count of <paramref name="bucket"/>'s range.</summary>
    private static int MatMulBucketStart(int bucket) =>
        bucket <= MatMulTuneDecodeRows ? bucket / 2 + 1 : bucket - (bucket <= 4096 ? 256 : 2048) + 1;

    /// <inheritdoc/>
    public IReadOnlyList<int> TimedRowCounts(int maxRows)
    {
        var rows = new List<int>();
        if (!Options.TuneMatMulAlgorithms) return rows;
        for (int bucket = 1; ; bucket = MatMulRowBucket(bucket + 1))
        {
            rows.Add(Math.Min(bucket, maxRows));
            if (bucket >= maxRows) break;
        }
        return rows;
    }

    /// <summary>Whether a new product's algorithm may be timed at all: tuning on, not recording a graph, 16-bit inputs, and
    /// enough FLOPs or operand bytes for a wrong pick to matter.</summary>
    private bool TuningApplies(MatMulKey key)
    {
        if (!(Options.TuneMatMulAlgorithms && !_capturing && key.AB is DType.BF16 or DType.F16))
            return false;
        long operandBytes = ((long)key.M * key.K + (long)key.K * key.N) * key.Batch * key.AB.SizeInBytes();
        return 2.0 * key.M * key.N * key.K * key.Batch >= MatMulTuneMinFlops || operandBytes >= MatMulTuneMinBytes;
    }

    /// <summary>
    /// Picks a new plan's algorithm: a row count takes its bucket's timed algorithm, or is timed as the first of its bucket;
    /// products not worth timing keep the heuristic's first answer.
    /// </summary>
    private void ChooseAlgorithm(MatMulPlan plan, MatMulKey key, ulong pa, ulong pb, ulong pbias, ulong paux, double alpha, double beta)
    {
        if (!TuningApplies(key)) return;
        int rows = MatMulRowBucket(key.M);
        var bucket = key with { M = rows, StrideA = 0, StrideC = 0 };
        if (_bucketAlgorithms.TryGetValue(bucket, out var shared) && CheckCandidate(plan, ref shared))
        {
            plan.Heuristic = shared;
            MatMulBucketReuses++;
            return;
        }
        if (TunePlan(plan, key, pa, pb, pbias, paux, alpha, beta, rows)) _bucketAlgorithms[bucket] = plan.Heuristic;
    }


    /// <summary>
    /// Times each candidate (the heuristic's and <see cref="SearchCandidates"/>'s; one warm-up, then three runs between events; or, for a product tuned for its bytes, three runs
    /// each after an L2 flush, each between its own events) with the real inputs and scratch outputs, so
    /// accumulating products (beta != 0) and outputs that alias inputs stay untouched, and keeps the fastest. This is the
    /// one place outside logging where the host waits for the GPU, once per new product shape.
    /// </summary>
    private bool TunePlan(MatMulPlan plan, MatMulKey key, ulong pa, ulong pb, ulong pbias, ulong paux, double alpha, double beta, int bucket)
    {
        var candidates = SearchCandidates(plan, key);
        if (candidates.Length < 2) return false;
        plan.Searched = candidates;
        long elementSize = key.C.SizeInBytes();
        long cElements = (long)(key.Batch - 1) * key.StrideC + (long)(key.M - 1) * key.Ldc + key.N;
        bool auxIsOutput = key.Epilogue is CUBLASLT_EPILOGUE_GELU_AUX or CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
        long auxBytes = auxIsOutput ? (long)key.M * key.N * elementSize : 0;
        if (cElements * elementSize + auxBytes > MatMulTuneMaxScratchBytes) return false;
        ulong scratchC = Scratch(cElements * elementSize);
        ulong scratchAux = auxIsOutput ? Scratch(auxBytes) : 0;
        // A product tuned for its bytes rather than its FLOPs streams weights that fit in L2 (8-67 MB against the H200's
        // 50 MB): timed back to back it would read them from L2, which a step (other weights between two uses) never does.
        // Each of its runs is timed alone after twice the L2 is written over.
        // Decode-size products (at most MatMulTuneDecodeRows rows) are such products whatever their FLOPs: a 64-row product
        // of llama-1b's gate and up weights (67 MB) does 4.3 GFLOP.
        bool cold = 2.0 * key.M * key.N * key.K * key.Batch < MatMulTuneMinFlops || key.M <= MatMulTuneDecodeRows;
        long flushBytes = 2L * CudaDevice.L2CacheBytes;
        ulong flush = cold ? Scratch(flushBytes) : 0;
        try
        {
            if (pbias != 0)
                Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &pbias, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
            ulong aux = auxIsOutput ? scratchAux : paux;
            if (aux != 0)
                Check(cublasLtMatmulDescSetAttribute(plan.Operation, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, (nuint)sizeof(ulong)), "cublasLtMatmulDescSetAttribute(EPILOGUE_AUX_POINTER)");
            CudaDevice.MakeCurrent();
            using var start = new CudaEvent(CudaDevice);
            using var end = new CudaEvent(CudaDevice);
            float al = (float)alpha, be = (float)beta;
            int best = -1;
            float bestMs = float.MaxValue, firstMs = float.NaN;
            int timed = 0;
            for (int i = 0; i < candidates.Length; i++)
            {
                float ms = 0;
                fixed (ulong* algo = candidates[i].Algo)
                {
                    // A candidate the library turns down at run time (workspace, alignment) is skipped, not an error.
                    if (cublasLtMatmul(_cublasLt, plan.Operation, &al, pb, plan.LayoutB, pa, plan.LayoutA, &be, scratchC, plan.LayoutC,
                            scratchC, plan.LayoutC, algo, _workspace, (nuint)MatMulWorkspaceBytes, Stream.Handle) != CUBLAS_STATUS_SUCCESS)
                        continue;
                    // A warm candidate that a widened search added (MatMulSearchMaxRows past the decode rows) is probed with
                    // one run first and is out at 3x the best so far: the listed algorithms include CUDA-core ones many times
                    // slower than the tensor-core ones, and three runs of those would stretch the tuning to seconds.
                    float probe = float.NaN;
                    if (!cold && i >= plan.Candidates.Length)
                    {
                        start.Record(Stream);
                        Check(cublasLtMatmul(_cublasLt, plan.Operation, &al, pb, plan.LayoutB, pa, plan.LayoutA, &be, scratchC, plan.LayoutC,
                            scratchC, plan.LayoutC, algo, _workspace, (nuint)MatMulWorkspaceBytes, Stream.Handle), "cublasLtMatmul", Describe(key));
                        end.Record(Stream);
                        end.Synchronize();
                        probe = end.ElapsedSince(start);
                    }
                    if (probe > 3 * bestMs) ms = probe;
                    else for (int r = 0; r < (cold ? 3 : 1); r++)
                    {
                        if (cold) Interop.CudaDriver.Check(Interop.CudaDriver.cuMemsetD8Async(flush, (byte)r, (nuint)flushBytes, Stream.Handle), "cuMemsetD8Async", "the L2 flush of a tuning run");
                        start.Record(Stream);
                        for (int run = 0; run < (cold ? 1 : 3); run++)
                            Check(cublasLtMatmul(_cublasLt, plan.Operation, &al, pb, plan.LayoutB, pa, plan.LayoutA, &be, scratchC, plan.LayoutC,
                                scratchC, plan.LayoutC, algo, _workspace, (nuint)MatMulWorkspaceBytes, Stream.Handle), "cublasLtMatmul", Describe(key));
                        end.Record(Stream);
                        end.Synchronize();
                        float run1 = end.ElapsedSince(start);
                        // A candidate whose first cold run is 3x the best so far is out: its one run stands for all three
                        // (the wider search's listed algorithms include CUDA-core ones many times slower).
                        if (cold && r == 0 && run1 > 3 * bestMs) { ms = run1; break; }
                        ms += run1 / 3;
                    }
                }
                timed++;
                if (i == 0) firstMs = ms;
                if (ms < bestMs) { bestMs = ms; best = i; }
            }
            if (best > 0 && !(bestMs < firstMs * MatMulTuneMargin)) best = 0;
            if (best > 0) plan.Heuristic = candidates[best];
            if (best < 0) return false;
            _tuningLog.Add($"{Describe(key)}: {timed} timed{(cold ? " from a cold L2" : "")}, chose #{best} ({AlgorithmText(candidates[best])}), " +
                $"{firstMs * 1000:F1} -> {(best == 0 ? firstMs : bestMs) * 1000:F1} us" +
                (MatMulBucketStart(bucket) < bucket ? $" (for rows {MatMulBucketStart(bucket)}-{bucket})" : ""));
            return true;
        }
        finally
        {
            if (flush != 0) FreeScratch(flush);
            if (scratchAux != 0) FreeScratch(scratchAux);
            FreeScratch(scratchC);
        }
    }
}
