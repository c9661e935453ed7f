using System.Numerics;
using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// Elementwise ops and the row-wise softmax.
public sealed unsafe partial class CpuBackend
{
    /// <summary>Checks that each tensor is F32/F64 of the first one's dtype, contiguous, and of its shape.</summary>
    private static void CheckElementwise(string op, (string Name, Tensor Tensor) first, params (string Name, Tensor Tensor)[] others)
    {
        ArgumentNullException.ThrowIfNull(first.Tensor, first.Name);
        RequireComputeDType(op, first.Name, first.Tensor);
        RequireContiguous(op, first.Name, first.Tensor);
        foreach (var (name, t) in others)
        {
            ArgumentNullException.ThrowIfNull(t, name);
            RequireSameShape(op, name, t, first.Name, first.Tensor);
            RequireDType(op, name, t, first.Tensor.DType);
            RequireContiguous(op, name, t);
        }
    }

    /// <inheritdoc/>
    public void Add(Tensor a, Tensor b, Tensor output)
    {
        CheckElementwise(nameof(Add), (nameof(a), a), (nameof(b), b), (nameof(output), output));
        if (a.DType == DType.F32) AddTyped<float>(a, b, output); else AddTyped<double>(a, b, output);
        KeepOperandsAlive(a, b, output);
    }

    private void AddTyped<T>(Tensor a, Tensor b, Tensor output) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* pa = Ptr<T>(a), pb = Ptr<T>(b), po = Ptr<T>(output);
        ParallelChunks(a.NumElements, 1, (s, e) => ElementwiseKernels.Add(pa + s, pb + s, po + s, e - s));
    }

    /// <inheritdoc/>
    public void Accumulate(Tensor accumulator, Tensor x, double alpha = 1.0)
    {
        CheckElementwise(nameof(Accumulate), (nameof(accumulator), accumulator), (nameof(x), x));
        if (x.DType == DType.F32) AccumulateTyped<float>(accumulator, x, alpha); else AccumulateTyped<double>(accumulator, x, alpha);
        KeepOperandsAlive(accumulator, x);
    }

    private void AccumulateTyped<T>(Tensor accumulator, Tensor x, double alpha) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* pa = Ptr<T>(accumulator), px = Ptr<T>(x);
        T al = Cast<T>(alpha);
        ParallelChunks(x.NumElements, 1, (s, e) => ElementwiseKernels.Axpy(al, px + s, pa + s, e - s));
    }

    /// <inheritdoc/>
    public void Multiply(Tensor a, Tensor b, Tensor output)
    {
        CheckElementwise(nameof(Multiply), (nameof(a), a), (nameof(b), b), (nameof(output), output));
        if (a.DType == DType.F32) MultiplyTyped<float>(a, b, output); else MultiplyTyped<double>(a, b, output);
        KeepOperandsAlive(a, b, output);
    }

    private void MultiplyTyped<T>(Tensor a, Tensor b, Tensor output) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* pa = Ptr<T>(a), pb = Ptr<T>(b), po = Ptr<T>(output);
        ParallelChunks(a.NumElements, 1, (s, e) =>
        {
            for (long i = s; i < e; i++) po[i] = pa[i] * pb[i];
        });
    }

    /// <inheritdoc/>
    public void SoftCap(Tensor x, double cap)
    {
        CheckElementwise(nameof(SoftCap), (nameof(x), x));
        if (!(cap > 0) || double.IsInfinity(cap)) throw new ArgumentOutOfRangeException(nameof(cap), cap, "SoftCap: the cap must be positive and finite");
        if (x.DType == DType.F32) SoftCapTyped<float>(x, cap); else SoftCapTyped<double>(x, cap);
        KeepOperandsAlive(x);
    }

    private void SoftCapTyped<T>(Tensor x, double cap) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(x);
        T c = T.CreateTruncating(cap), inverse = T.One / c;
        ParallelChunks(x.NumElements, 16, (s, e) =>
        {
            for (long i = s; i < e; i++) px[i] = c * T.Tanh(px[i] * inverse);
        });
    }

    /// <inheritdoc/>
    public void SoftCapBackward(Tensor y, Tensor dy, double cap)
    {
        CheckElementwise(nameof(SoftCapBackward), (nameof(y), y), (nameof(dy), dy));
        if (!(cap > 0) || double.IsInfinity(cap)) throw new ArgumentOutOfRangeException(nameof(cap), cap, "SoftCapBackward: the cap must be positive and finite");
        if (y.DType == DType.F32) SoftCapBackwardTyped<float>(y, dy, cap); else SoftCapBackwardTyped<double>(y, dy, cap);
        KeepOperandsAlive(y, dy);
    }

    private void SoftCapBackwardTyped<T>(Tensor y, Tensor dy, double cap) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* py = Ptr<T>(y), pd = Ptr<T>(dy);
        T inverse = T.One / T.CreateTruncating(cap);
        ParallelChunks(y.NumElements, 4, (s, e) =>
        {
            for (long i = s; i < e; i++)
            {
                T u = py[i] * inverse;                                  // tanh(x / cap)
                pd[i] *= T.One - u * u;
            }
        });
    }

    /// <inheritdoc/>
    public void Scale(Tensor x, double factor)
    {
        CheckElementwise(nameof(Scale), (nameof(x), x));
        if (x.DType == DType.F32) ScaleTyped<float>(x, factor); else ScaleTyped<double>(x, factor);
        KeepOperandsAlive(x);
    }

    private void ScaleTyped<T>(Tensor x, double factor) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(x);
        T f = Cast<T>(factor);
        ParallelChunks(x.NumElements, 1, (s, e) => ElementwiseKernels.Scale(px + s, f, e - s));
    }

    /// <inheritdoc/>
    public void GeluForward(Tensor x, Tensor output)
    {
        CheckElementwise(nameof(GeluForward), (nameof(x), x), (nameof(output), output));
        if (x.DType == DType.F32) GeluForwardTyped<float>(x, output); else GeluForwardTyped<double>(x, output);
        KeepOperandsAlive(x, output);
    }

    private void GeluForwardTyped<T>(Tensor x, Tensor output) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(x), po = Ptr<T>(output);
        ParallelChunks(x.NumElements, 16, (s, e) => ActivationKernels.GeluForward(px + s, po + s, e - s));
    }

    /// <inheritdoc/>
    public void GeluBackward(Tensor x, Tensor dOutput, Tensor dx)
    {
        CheckElementwise(nameof(GeluBackward), (nameof(x), x), (nameof(dOutput), dOutput), (nameof(dx), dx));
        if (x.DType == DType.F32) GeluBackwardTyped<float>(x, dOutput, dx); else GeluBackwardTyped<double>(x, dOutput, dx);
        KeepOperandsAlive(x, dOutput, dx);
    }

    private void GeluBackwardTyped<T>(Tensor x, Tensor dOutput, Tensor dx) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(x), pd = Ptr<T>(dOutput), pdx = Ptr<T>(dx);
        ParallelChunks(x.NumElements, 16, (s, e) => ActivationKernels.GeluBackward(px + s, pd + s, pdx + s, e - s));
    }

    /// <inheritdoc/>
    public void SwiGluForward(Tensor gate, Tensor up, Tensor output)
    {
        long cols = CheckRowStrided(nameof(SwiGluForward), (nameof(gate), gate), (nameof(up), up), (nameof(output), output));
        if (gate.DType == DType.F32) SwiGluForwardTyped<float>(gate, up, output, cols); else SwiGluForwardTyped<double>(gate, up, output, cols);
        KeepOperandsAlive(gate, up, output);
    }

    private void SwiGluForwardTyped<T>(Tensor gate, Tensor up, Tensor output, long cols) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* pg = Ptr<T>(gate), pu = Ptr<T>(up), po = Ptr<T>(output);
        long gs = RowStride(gate, cols), us = RowStride(up, cols), os = RowStride(output, cols);
        ParallelChunks(gate.NumElements / Math.Max(cols, 1), 16 * cols, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++) ActivationKernels.SwiGluForward(pg + r * gs, pu + r * us, po + r * os, cols);
        });
    }

    /// <inheritdoc/>
    public void SwiGluBackward(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp)
    {
        long cols = CheckRowStrided(nameof(SwiGluBackward), (nameof(gate), gate), (nameof(up), up), (nameof(dOutput), dOutput),
            (nameof(dGate), dGate), (nameof(dUp), dUp));
        if (gate.DType == DType.F32) SwiGluBackwardTyped<float>(gate, up, dOutput, dGate, dUp, cols);
        else SwiGluBackwardTyped<double>(gate, up, dOutput, dGate, dUp, cols);
        KeepOperandsAlive(gate, up, dOutput, dGate, dUp);
    }

    private void SwiGluBackwardTyped<T>(Tensor gate, Tensor up, Tensor dOutput, Tensor dGate, Tensor dUp, long cols)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* pg = Ptr<T>(gate), pu = Ptr<T>(up), pd = Ptr<T>(dOutput), pdg = Ptr<T>(dGate), pdu = Ptr<T>(dUp);
        long gs = RowStride(gate, cols), us = RowStride(up, cols), ds = RowStride(dOutput, cols), dgs = RowStride(dGate, cols), dus = RowStride(dUp, cols);
        ParallelChunks(gate.NumElements / Math.Max(cols, 1), 16 * cols, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
                ActivationKernels.SwiGluBackward(pg + r * gs, pu + r * us, pd + r * ds, pdg + r * dgs, pdu + r * dus, cols);
        });
    }

    /// <summary>
    /// Checks an element-wise op over tensors of one shape and dtype, each contiguous or a rank-2 (N, F) view with contiguous
    /// rows (a column slice, such as one half of a fused (N, 2F) product); returns the row length the op iterates by (F, or
    /// every element of contiguous tensors of another rank).
    /// </summary>
    private static long CheckRowStrided(string op, (string Name, Tensor Tensor) first, params (string Name, Tensor Tensor)[] others)
    {
        ArgumentNullException.ThrowIfNull(first.Tensor, first.Name);
        RequireComputeDType(op, first.Name, first.Tensor);
        foreach (var (name, t) in others)
        {
            ArgumentNullException.ThrowIfNull(t, name);
            RequireSameShape(op, name, t, first.Name, first.Tensor);
            RequireDType(op, name, t, first.Tensor.DType);
        }
        bool rows = first.Tensor.Rank == 2;
        foreach (var (name, t) in others.Prepend(first))
        {
            if (rows) RequireUnitLastStride(op, name, t);
            else RequireContiguous(op, name, t);
        }
        return rows ? first.Tensor.Shape[1] : first.Tensor.NumElements;
    }

    /// <summary>Elements between row starts of a tensor checked by <see cref="CheckRowStrided"/> (0 for one row of every element).</summary>
    private static long RowStride(Tensor t, long cols) => t.Rank == 2 && t.Shape[1] == cols ? t.Stride(0) : 0;

    /// <inheritdoc/>
    public void Softmax(Tensor x, Tensor output)
    {
        const string op = nameof(Softmax);
        RequireComputeDType(op, nameof(x), x);
        RequireRank(op, nameof(x), x, 2, "(N,V)");
        RequireUnitLastStride(op, nameof(x), x);
        RequireSameShape(op, nameof(output), output, nameof(x), x);
        RequireDType(op, nameof(output), output, x.DType);
        RequireUnitLastStride(op, nameof(output), output);
        if (x.DType == DType.F32) SoftmaxTyped<float>(x, output); else SoftmaxTyped<double>(x, output);
        KeepOperandsAlive(x, output);
    }

    private void SoftmaxTyped<T>(Tensor x, Tensor output) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(x), po = Ptr<T>(output);
        long xs = x.Stride(0), os = output.Stride(0);
        int v = x.Shape[1];
        ParallelChunks(x.Shape[0], 4L * v, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                T* xr = px + r * xs, or = po + r * os;
                T max = RowKernels.Max(xr, v);
                T sum = RowKernels.ExpShiftedAndSum(xr, or, max, v);
                RowKernels.Scale(or, T.One / sum, v);
            }
        });
    }
}
