using Tessera.Tensors;

namespace Tessera.Cuda;

// Decode-size products (decode_gemm.cu): 5 to 64 rows of x times an nn.Linear weight on tensor cores, launched dependent on
// their predecessor with their first weight loads ahead of the wait, as gemv.cu's kernels are at 1-4 rows
// (CudaBackendOptions.DecodeProducts).
public sealed unsafe partial class CudaBackend
{
    private const int DecodeGemmMaxRows = 64, DecodeGemmBlockRows = 64, DecodeGemmTile = 64, DecodeGemmStages = 3, DecodeGemmThreads = 128;

    /// <summary>
    /// c (M, N) = alpha x (M, K) W^T + bias + beta c with 5 &lt;= M &lt;= 64 and W (N, K) an nn.Linear weight, on decode_gemm.cu
    /// under <see cref="CudaBackendOptions.DecodeProducts"/>; false, with nothing enqueued, when the call does not fit it
    /// (then cuBLASLt runs it): 16-bit floats of one dtype, K a multiple of 64, unit column strides, 16-byte aligned rows.
    /// </summary>
    private bool TryDecodeGemm(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias)
    {
        if (!Options.DecodeProducts || transposeA || !transposeB || a.Rank != 2 || b.Rank != 2 || c.Rank != 2) return false;
        int m = a.Size(0), k = a.Size(1), n = b.Size(0);
        var dtype = a.DType;
        if (m <= GemvMaxRows || m > DecodeGemmMaxRows || n == 0 || dtype is not (DType.BF16 or DType.F16)) return false;
        if (b.DType != dtype || c.DType != dtype || b.Size(1) != k || c.Size(0) != m || c.Size(1) != n) return false;
        if (k % DecodeGemmTile != 0 || a.Stride(1) != 1 || b.Stride(1) != 1 || c.Stride(1) != 1) return false;
        if (a.Stride(0) % 8 != 0 || b.Stride(0) % 8 != 0 || Ptr(a) % 16 != 0 || Ptr(b) % 16 != 0 || !BiasFits(bias, dtype, n)) return false;
        int mt = m <= 16 ? 2 : m <= 32 ? 4 : 8, blocks = (n + DecodeGemmBlockRows - 1) / DecodeGemmBlockRows;
        int slices = DecodeGemmSlices(blocks, k / DecodeGemmTile);
        ulong counters = slices > 1 ? DecodeCounters(blocks) : 0;
        if (counters == 0) slices = 1;                  // no counters while recording a graph that outgrew them: one slice
        ulong partial = slices > 1 ? Scratch((long)slices * 8 * mt * blocks * DecodeGemmBlockRows * sizeof(float)) : 0;
        ulong px = Ptr(a), pw = Ptr(b), pb = PtrOrNull(bias), py = Ptr(c);
        long ldx = a.Stride(0), ldw = b.Stride(0), ldy = c.Stride(0);
        float al = (float)alpha, be = (float)beta;
        int early = EarlyWeights ? 1 : 0;   // read before the launch notes itself
        void** args = stackalloc void*[] { &px, &pw, &pb, &py, &partial, &counters, &m, &n, &k, &ldx, &ldw, &ldy, &al, &be, &early };
        uint shared = (uint)(DecodeGemmStages * (DecodeGemmBlockRows + 8 * mt) * DecodeGemmTile * 2);
        Launch("decode_gemm.cu", $"decode_gemm_{Suffix(dtype, "MatMul")}_m{mt}", ((uint)blocks, (uint)slices, 1), DecodeGemmThreads, args, shared,
            dependent: true);
        if (partial != 0) FreeScratch(partial);
        return true;
    }

    /// <summary>
    /// Slices of K for a decode product of <paramref name="blocks"/> row blocks and <paramref name="tiles"/> k-tiles: doubled
    /// while the grid has fewer than two CTAs an SM and the tiles divide evenly, at most 8 (llama-1b at 64 rows: QKV 48
    /// blocks x 8, the output and down products 32 x 8, gate/up 256 x 2 on 132 SMs).
    /// </summary>
    private int DecodeGemmSlices(int blocks, int tiles)
    {
        int target = 2 * CudaDevice.MultiprocessorCount, slices = 1;
        while (slices < 8 && blocks * slices < target && tiles % (2 * slices) == 0) slices *= 2;
        return slices;
    }
}
