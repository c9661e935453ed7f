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
    /// a contiguous bias, and while a graph is being captured, counters already large enough.
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
        var plan = SkinnyProductPlan.For(m, n, k, CudaDevice.MultiprocessorCount);
        if (plan.SharedBytes > CudaDevice.MaxSharedMemoryPerBlockOptIn) return false;
        ulong counters = plan.Slices > 1 ? DecodeCounters(plan.RowBlocks) : 0;   // left at zero by every kernel that counts
        if (plan.Slices > 1 && counters == 0) return false;                      // capturing, and too few: cuBLASLt
        ulong partial = plan.Slices > 1 ? Scratch(plan.PartialFloats * sizeof(float)) : 0;
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
}
