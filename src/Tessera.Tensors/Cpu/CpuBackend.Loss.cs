using System.Numerics;
using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// Fused softmax cross-entropy and the scalar sum used to average losses.
public sealed unsafe partial class CpuBackend
{
    /// <inheritdoc/>
    public void CrossEntropy(Tensor logits, Tensor targets, Tensor losses, Tensor? dLogits, double lossScale)
    {
        const string op = nameof(CrossEntropy);
        ArgumentNullException.ThrowIfNull(logits); ArgumentNullException.ThrowIfNull(targets); ArgumentNullException.ThrowIfNull(losses);
        RequireComputeDType(op, nameof(logits), logits);
        RequireRank(op, nameof(logits), logits, 2, "(N,V)");
        RequireUnitLastStride(op, nameof(logits), logits);
        int n = logits.Shape[0], v = logits.Shape[1];
        RequireDType(op, nameof(targets), targets, DType.I32);
        RequireShape(op, nameof(targets), targets, new Shape(n));
        RequireContiguous(op, nameof(targets), targets);
        RequireDType(op, nameof(losses), losses, logits.DType);
        RequireShape(op, nameof(losses), losses, new Shape(n));
        RequireContiguous(op, nameof(losses), losses);
        if (dLogits is not null)
        {
            RequireSameShape(op, nameof(dLogits), dLogits, nameof(logits), logits);
            RequireDType(op, nameof(dLogits), dLogits, logits.DType);
            RequireUnitLastStride(op, nameof(dLogits), dLogits);
        }
        int* pt = Ptr<int>(targets);
        for (int r = 0; r < n; r++)
            if (pt[r] >= v)
                throw new ArgumentException($"{op}: targets[{r}] = {pt[r]} is not below the vocabulary size V={v} of logits {logits.Shape} (negative targets mark ignored rows)", nameof(targets));
        if (logits.DType == DType.F32) CrossEntropyTyped<float>(logits, targets, losses, dLogits, lossScale);
        else CrossEntropyTyped<double>(logits, targets, losses, dLogits, lossScale);
        KeepOperandsAlive(logits, targets, losses, dLogits);
    }

    private void CrossEntropyTyped<T>(Tensor logits, Tensor targets, Tensor losses, Tensor? dLogits, double lossScale)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(logits), pl = Ptr<T>(losses), pd = dLogits is null ? null : Ptr<T>(dLogits);
        int* pt = Ptr<int>(targets);
        long xs = logits.Stride(0), ds = dLogits is null ? 0 : dLogits.Stride(0);
        int v = logits.Shape[1];
        T scale = T.CreateTruncating(lossScale);
        ParallelChunks(logits.Shape[0], 6L * v, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                int target = pt[r];
                T* xr = px + r * xs;
                if (target < 0)
                {
                    pl[r] = T.Zero;
                    if (pd != null) new Span<T>(pd + r * ds, v).Clear();
                    continue;
                }
                T max = RowKernels.Max(xr, v);
                T xt = xr[target];
                if (pd == null)
                {
                    T sum = RowKernels.SumExpShifted(xr, max, v);
                    pl[r] = T.Log(sum) + max - xt;
                }
                else
                {
                    // dLogits may alias logits: the row's max and target logit are read before it is overwritten.
                    T* dr = pd + r * ds;
                    T sum = RowKernels.ExpShiftedAndSum(xr, dr, max, v);
                    pl[r] = T.Log(sum) + max - xt;
                    RowKernels.Scale(dr, scale / sum, v);
                    dr[target] -= scale;
                }
            }
        });
    }

    /// <inheritdoc/>
    public void Sum(Tensor x, Tensor result, double scale = 1.0, bool accumulate = false)
    {
        const string op = nameof(Sum);
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(result);
        RequireComputeDType(op, nameof(x), x);
        RequireContiguous(op, nameof(x), x);
        RequireScalar(op, nameof(result), result);
        double total = x.DType == DType.F32 ? SumTyped<float>(x, squares: false) : SumTyped<double>(x, squares: false);
        double value = scale * total;
        WriteScalarValue(result, accumulate ? ReadScalarValue(result) + value : value);
        KeepOperandsAlive(x, result);
    }

    /// <summary>Sum (or sum of squares) of a contiguous tensor, accumulated in double per chunk, chunks added in order.</summary>
    private double SumTyped<T>(Tensor x, bool squares) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* p = Ptr<T>(x);
        long n = x.NumElements;
        int chunks = Math.Max(1, ChunkCount(n, 1));
        var partial = new double[chunks];
        ParallelFixedChunks(n, chunks, (c, s, e) => partial[c] = squares ? ReduceKernels.SumOfSquares(p + s, e - s) : ReduceKernels.Sum(p + s, e - s));
        double total = 0;
        foreach (var v in partial) total += v;
        return total;
    }
}
