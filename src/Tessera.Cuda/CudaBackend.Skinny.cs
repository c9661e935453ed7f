using Tessera.Tensors;

namespace Tessera.Cuda;

// A serving decode step's products (5 to 64 rows of x): skinny.cu's tensor-core kernel, which streams W once across every
// SM with split-K, behind CudaBackendOptions.SkinnyProducts (default off until measured against cuBLASLt).
public sealed unsafe partial class CudaBackend
{
    /// <summary>
    /// c (M, N) = alpha x (M, K) W^T + bias + beta r with 5 &lt;= M &lt;= 64 and W (N, K) an nn.Linear weight, bf16 or f16,
    /// r = <paramref name="addend"/> (then beta = 1) or c itself: the skinny-M kernel of skinny.cu with the grid of
    /// <see cref="SkinnyProductPlan"/>. False, with nothing enqueued, when the option is off or the call does not fit the kernel
    /// (then cuBLASLt runs it): one 16-bit dtype throughout, contiguous rows of K with 16-byte aligned starts (K a multiple of 8),
    /// a contiguous bias, and with more than one slice at most 1,024 row blocks (<see cref="CountersFit"/>).
    /// </summary>
    private bool TrySkinny(Tensor a, Tensor b, Tensor c, bool transposeA, bool transposeB, double alpha, double beta, Tensor? bias, Tensor? addend)
    {
        if (!Options.SkinnyProducts || transposeA || !transposeB || a.Rank != 2 || b.Rank != 2 || c.Rank != 2) return false;
        int m = a.Size(0), k = a.Size(1), n = b.Size(0);
        var dtype = a.DType;
        if (m < SkinnyProductPlan.MinRows || m > SkinnyProductPlan.MaxRows || dtype is not (DType.BF16 or DType.F16)) return false;
        if (b.DType != dtype || c.DType != dtype || b.Size(1) != k || c.Size(0) != m || c.Size(1) != n || n == 0 || k == 0) return false;
        if (k % 8 != 0 || a.Stride(1) != 1 || b.Stride(1) != 1 || (c.Stride(1) != 1 && n > 1)) return false;
        if (a.Stride(0) % 8 != 0 || b.Stride(0) % 8 != 0 || Ptr(a) % 16 != 0 || Ptr(b) % 16 != 0) return false;
        if (!BiasFits(bias, dtype, n)) return false;
        if (addend is not null && (addend.DType != dtype || addend.Rank != 2 || (addend.Stride(1) != 1 && n > 1))) return false;
        var plan = SkinnyProductPlan.For(m, n, k, CudaDevice.MultiprocessorCount, Options.SkinnyCtasPerSm);
        if (!SkinnySlices(plan, out ulong counters, out ulong partial)) return false;
        ulong px = Ptr(a), pw = Ptr(b), pbias = PtrOrNull(bias), py = Ptr(c);
        ulong pr = addend is not null ? Ptr(addend) : beta != 0 ? py : 0;
        long ldx = a.Stride(0), ldw = b.Stride(0), ldy = c.Stride(0), ldr = addend is not null ? addend.Stride(0) : ldy;
        float al = (float)alpha, be = addend is not null ? 1f : (float)beta;
        int ks = plan.SliceColumns;
        void** args = stackalloc void*[] { &px, &pw, &pbias, &pr, &py, &partial, &counters, &m, &n, &k, &ldx, &ldw, &ldr, &ldy, &ks, &al, &be };
        Launch("skinny.cu", $"skinny_{Suffix(dtype, "MatMul")}_m{plan.PaddedRows}", ((uint)plan.CtasPerSlice, (uint)plan.Slices, 1),
            SkinnyProductPlan.Threads, args, (uint)plan.SharedBytes);
        if (partial != 0) FreeScratch(partial);
        return true;
    }

    /// <summary>
    /// What a plan with several K slices needs beside the kernel: the decode counters of its row blocks (left at zero by every
    /// kernel that counts) and a scratch buffer of the slices' fp32 partials (0 and 0 with one slice). False, with nothing
    /// allocated, when the kernel's shared memory does not fit or the counters cannot serve (too many row blocks, or too few
    /// counters while a graph is recorded): cuBLASLt then runs the product. The caller frees the partials after the launch.
    /// </summary>
    private bool SkinnySlices(SkinnyProductPlan plan, out ulong counters, out ulong partial)
    {
        counters = partial = 0;
        if (plan.SharedBytes > CudaDevice.MaxSharedMemoryPerBlockOptIn || !CountersFit(plan)) return false;
        if (plan.Slices == 1) return true;
        counters = DecodeCounters(plan.RowBlocks);
        if (counters == 0) return false;
        partial = Scratch(plan.PartialFloats * sizeof(float));
        return true;
    }

    /// <summary>
    /// Whether the plan's counters (one a row block, with more than one slice) fit the decode counters' first capacity, as the
    /// paged decode's do: growing them would free a buffer that a captured CUDA graph may still hold. Larger products (an LM
    /// head's 2,000 row blocks) stay on cuBLASLt.
    /// </summary>
    private static bool CountersFit(SkinnyProductPlan plan) => plan.Slices == 1 || plan.RowBlocks <= PagedDecodeMaxCounters;

    /// <summary>
    /// output (M, F) = SiLU(h Wg^T) * (h Wu^T) with 5 &lt;= M &lt;= 64, h = RMSNorm(x) when <paramref name="norm"/> is given (into
    /// scratch first), else x: skinny.cu's SwiGLU variant, which holds the gate and up rows of one output in one warp's MMA
    /// rows. False, with nothing enqueued, when the option is off or the call does not fit (as <see cref="TrySkinny"/>; both
    /// weights of one row stride, a contiguous output, no biases).
    /// </summary>
    private bool TrySkinnySwiGlu(Tensor x, Tensor gateWeight, Tensor upWeight, Tensor output, Tensor? gateBias, Tensor? upBias, RmsNormPrologue? norm)
    {
        if (!Options.SkinnyProducts || gateBias is not null || upBias is not null || x.Rank != 2) return false;
        int m = x.Size(0), k = x.Size(1), f = gateWeight.Size(0);
        var dtype = x.DType;
        if (m < SkinnyProductPlan.MinRows || m > SkinnyProductPlan.MaxRows || dtype is not (DType.BF16 or DType.F16) || f == 0 || k == 0) return false;
        if (gateWeight.DType != dtype || upWeight.DType != dtype || output.DType != dtype || !output.IsContiguous) return false;
        if (k % 8 != 0 || x.Stride(1) != 1 || x.Stride(0) % 8 != 0 || Ptr(x) % 16 != 0) return false;
        foreach (var w in new[] { gateWeight, upWeight })
            if (w.Stride(1) != 1 || w.Stride(0) % 8 != 0 || Ptr(w) % 16 != 0) return false;
        if (upWeight.Stride(0) != gateWeight.Stride(0)) return false;
        if (norm is { } r && (r.Weight.DType != dtype || !r.Weight.IsContiguous || r.Weight.NumElements != k)) return false;
        var plan = SkinnyProductPlan.For(m, 2 * f, k, CudaDevice.MultiprocessorCount, Options.SkinnyCtasPerSm);   // 2F rows: a row block is 32 outputs
        if (!SkinnySlices(plan, out ulong counters, out ulong partial)) return false;
        Tensor? h = norm is { } n ? NormalizedScratch(x, n) : null;
        ulong px = Ptr(h ?? x), pg = Ptr(gateWeight), pu = Ptr(upWeight), po = Ptr(output);
        long ldx = (h ?? x).Stride(0), ldw = gateWeight.Stride(0), ldo = f;
        int ks = plan.SliceColumns;
        void** args = stackalloc void*[] { &px, &pg, &pu, &po, &partial, &counters, &m, &f, &k, &ldx, &ldw, &ldo, &ks };
        Launch("skinny.cu", $"skinny_swiglu_{Suffix(dtype, nameof(MatMulSwiGlu))}_m{plan.PaddedRows}", ((uint)plan.CtasPerSlice, (uint)plan.Slices, 1),
            SkinnyProductPlan.Threads, args, (uint)plan.SharedBytes);
        if (partial != 0) FreeScratch(partial);
        h?.Storage.Dispose();
        return true;
    }
}
