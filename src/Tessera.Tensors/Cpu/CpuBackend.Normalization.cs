using System.Numerics;
using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// LayerNorm and RMSNorm, forward and backward side by side (llm.c's layernorm_forward/backward).
public sealed unsafe partial class CpuBackend
{
    /// <inheritdoc/>
    public void LayerNormForward(Tensor x, Tensor weight, Tensor? bias, Tensor output, Tensor mean, Tensor rstd, double epsilon)
    {
        const string op = nameof(LayerNormForward);
        CheckNormRows(op, x, weight, (nameof(output), output));
        if (bias is not null) CheckNormVector(op, nameof(bias), bias, x);
        CheckNormStat(op, nameof(mean), mean, x);
        CheckNormStat(op, nameof(rstd), rstd, x);
        if (x.DType == DType.F32) LayerNormForwardTyped<float>(x, weight, bias, output, mean, rstd, epsilon);
        else LayerNormForwardTyped<double>(x, weight, bias, output, mean, rstd, epsilon);
        KeepOperandsAlive(x, weight, bias, output, mean, rstd);
    }

    private void LayerNormForwardTyped<T>(Tensor x, Tensor weight, Tensor? bias, Tensor output, Tensor mean, Tensor rstd, double epsilon)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(x), pw = Ptr<T>(weight), pb = bias is null ? null : Ptr<T>(bias), po = Ptr<T>(output);
        T* pm = Ptr<T>(mean), pr = Ptr<T>(rstd);
        int c = x.Shape[^1];
        long n = x.NumElements / Math.Max(1, c);
        T eps = T.CreateTruncating(epsilon);
        ParallelChunks(n, 6L * c, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                var (m, s) = NormKernels.LayerNormRow(px + r * c, pw, pb, po + r * c, c, eps);
                pm[r] = m; pr[r] = s;
            }
        });
    }

    /// <inheritdoc/>
    public void LayerNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd,
        Tensor dx, Tensor dWeight, Tensor? dBias, Tensor? dxColumnSums = null)
    {
        const string op = nameof(LayerNormBackward);
        CheckNormRows(op, x, weight, (nameof(dOutput), dOutput), (nameof(dx), dx));
        CheckNormStat(op, nameof(mean), mean, x);
        CheckNormStat(op, nameof(rstd), rstd, x);
        CheckNormVector(op, nameof(dWeight), dWeight, x);
        if (dBias is not null) CheckNormVector(op, nameof(dBias), dBias, x);
        if (dxColumnSums is not null) CheckNormVector(op, nameof(dxColumnSums), dxColumnSums, x);
        if (x.DType == DType.F32) LayerNormBackwardTyped<float>(dOutput, x, weight, mean, rstd, dx, dWeight, dBias, dxColumnSums);
        else LayerNormBackwardTyped<double>(dOutput, x, weight, mean, rstd, dx, dWeight, dBias, dxColumnSums);
        KeepOperandsAlive(dOutput, x, weight, mean, rstd, dx, dWeight, dBias, dxColumnSums);
    }

    private void LayerNormBackwardTyped<T>(Tensor dOutput, Tensor x, Tensor weight, Tensor mean, Tensor rstd,
        Tensor dx, Tensor dWeight, Tensor? dBias, Tensor? dxColumnSums) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* pdo = Ptr<T>(dOutput), px = Ptr<T>(x), pw = Ptr<T>(weight), pm = Ptr<T>(mean), pr = Ptr<T>(rstd);
        T* pdx = Ptr<T>(dx), pdw = Ptr<T>(dWeight), pdb = dBias is null ? null : Ptr<T>(dBias);
        T* pds = dxColumnSums is null ? null : Ptr<T>(dxColumnSums);
        int c = x.Shape[^1];
        long n = x.NumElements / Math.Max(1, c);
        int chunks = ChunkCount(n, 8L * c);
        // Each chunk sums its rows' weight and bias gradients (and dx's columns) privately; the partials are added in chunk order.
        var partW = new T[chunks * (long)c];
        var partB = pdb == null ? null : new T[chunks * (long)c];
        var partS = pds == null ? null : new T[chunks * (long)c];
        ParallelFixedChunks(n, chunks, (chunk, r0, r1) =>
        {
            fixed (T* gw = &partW[chunk * (long)c])
            fixed (T* gbBase = partB)
            fixed (T* gsBase = partS)
            {
                T* gb = gbBase == null ? null : gbBase + chunk * (long)c;
                T* gs = gsBase == null ? null : gsBase + chunk * (long)c;
                for (long r = r0; r < r1; r++)
                    NormKernels.LayerNormBackwardRow(px + r * c, pdo + r * c, pw, pm[r], pr[r], pdx + r * c, gw, gb, gs, c);
            }
        });
        for (int k = 0; k < chunks; k++)
            for (int i = 0; i < c; i++)
            {
                pdw[i] += partW[k * (long)c + i];
                if (pdb != null) pdb[i] += partB![k * (long)c + i];
                if (pds != null) pds[i] += partS![k * (long)c + i];
            }
    }

    /// <inheritdoc/>
    public void RmsNormForward(Tensor x, Tensor weight, Tensor output, Tensor rstd, double epsilon, bool unitOffset = false)
    {
        const string op = nameof(RmsNormForward);
        CheckNormRows(op, x, weight, (nameof(output), output));
        CheckNormStat(op, nameof(rstd), rstd, x);
        var scale = unitOffset ? UnitOffsetScale(weight) : null;
        try
        {
            if (x.DType == DType.F32) RmsNormForwardTyped<float>(x, scale ?? weight, output, rstd, epsilon);
            else RmsNormForwardTyped<double>(x, scale ?? weight, output, rstd, epsilon);
        }
        finally
        {
            scale?.Storage.Dispose();
        }
        KeepOperandsAlive(x, weight, output, rstd);
    }

    /// <summary>1 + weight in a new tensor of weight's dtype (the caller disposes it): a unit-offset norm's scale, formed as
    /// <see cref="Fill"/> then <see cref="Accumulate"/> would form it.</summary>
    private Tensor UnitOffsetScale(Tensor weight)
    {
        var scale = Allocate(weight.Shape, weight.DType);
        Fill(scale, 1.0);
        Accumulate(scale, weight);
        return scale;
    }

    /// <inheritdoc/>
    /// <remarks>The composition: <see cref="RmsNormForward"/> into a tensor of x's dtype, then <see cref="Accumulate"/>.</remarks>
    public void AccumulateRmsNorm(Tensor accumulator, Tensor x, RmsNormPrologue norm)
    {
        const string op = nameof(AccumulateRmsNorm);
        ArgumentNullException.ThrowIfNull(accumulator); ArgumentNullException.ThrowIfNull(x);
        CheckNormRows(op, x, norm.Weight, (nameof(accumulator), accumulator));
        var y = Allocate(x.Shape, x.DType);
        var rstd = Allocate(new Shape((int)(x.NumElements / Math.Max(1, x.Shape[^1]))), x.DType == DType.F64 ? DType.F64 : DType.F32);
        try
        {
            RmsNormForward(x, norm.Weight, y, rstd, norm.Epsilon, norm.UnitOffset);
            Accumulate(accumulator, y);
        }
        finally
        {
            y.Storage.Dispose();
            rstd.Storage.Dispose();
        }
        KeepOperandsAlive(accumulator, x, norm.Weight);
    }

    private void RmsNormForwardTyped<T>(Tensor x, Tensor weight, Tensor output, Tensor rstd, double epsilon)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* px = Ptr<T>(x), pw = Ptr<T>(weight), po = Ptr<T>(output), pr = Ptr<T>(rstd);
        int c = x.Shape[^1];
        long n = x.NumElements / Math.Max(1, c);
        T eps = T.CreateTruncating(epsilon);
        ParallelChunks(n, 4L * c, (r0, r1) =>
        {
            for (long r = r0; r < r1; r++)
            {
                pr[r] = NormKernels.RmsNormRow(px + r * c, pw, po + r * c, c, eps);
            }
        });
    }

    /// <inheritdoc/>
    public void RmsNormBackward(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight)
    {
        const string op = nameof(RmsNormBackward);
        CheckNormRows(op, x, weight, (nameof(dOutput), dOutput), (nameof(dx), dx));
        CheckNormStat(op, nameof(rstd), rstd, x);
        CheckNormVector(op, nameof(dWeight), dWeight, x);
        if (x.DType == DType.F32) RmsNormBackwardTyped<float>(dOutput, x, weight, rstd, dx, dWeight);
        else RmsNormBackwardTyped<double>(dOutput, x, weight, rstd, dx, dWeight);
        KeepOperandsAlive(dOutput, x, weight, rstd, dx, dWeight);
    }

    private void RmsNormBackwardTyped<T>(Tensor dOutput, Tensor x, Tensor weight, Tensor rstd, Tensor dx, Tensor dWeight)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* pdo = Ptr<T>(dOutput), px = Ptr<T>(x), pw = Ptr<T>(weight), pr = Ptr<T>(rstd);
        T* pdx = Ptr<T>(dx), pdw = Ptr<T>(dWeight);
        int c = x.Shape[^1];
        long n = x.NumElements / Math.Max(1, c);
        int chunks = ChunkCount(n, 6L * c);
        var partW = new T[chunks * (long)c];
        ParallelFixedChunks(n, chunks, (chunk, r0, r1) =>
        {
            fixed (T* gw = &partW[chunk * (long)c])
            {
                for (long r = r0; r < r1; r++)
                    NormKernels.RmsNormBackwardRow(px + r * c, pdo + r * c, pw, pr[r], pdx + r * c, gw, c);
            }
        });
        for (int k = 0; k < chunks; k++)
            for (int i = 0; i < c; i++) pdw[i] += partW[k * (long)c + i];
    }

    /// <summary>x (N,C) or (B,T,C) contiguous F32/F64; weight (C); each other tensor like x.</summary>
    private static void CheckNormRows(string op, Tensor x, Tensor weight, params (string Name, Tensor Tensor)[] likeX)
    {
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(weight);
        RequireComputeDType(op, nameof(x), x);
        if (x.Rank < 1) throw new ArgumentException($"{op}: x must have a channel dimension, got shape {x.Shape}", nameof(x));
        RequireContiguous(op, nameof(x), x);
        CheckNormVector(op, nameof(weight), weight, x);
        foreach (var (name, t) in likeX)
        {
            ArgumentNullException.ThrowIfNull(t, name);
            RequireSameShape(op, name, t, nameof(x), x);
            RequireDType(op, name, t, x.DType);
            RequireContiguous(op, name, t);
        }
    }

    private static void CheckNormVector(string op, string name, Tensor t, Tensor x)
    {
        RequireDType(op, name, t, x.DType);
        RequireShape(op, name, t, new Shape(x.Shape[^1]));
        RequireContiguous(op, name, t);
    }

    /// <summary>Statistics: one per row, in x's dtype (F32 for F32 inputs, F64 for F64).</summary>
    private static void CheckNormStat(string op, string name, Tensor t, Tensor x)
    {
        RequireDType(op, name, t, x.DType);
        long rows = x.NumElements / Math.Max(1, x.Shape[^1]);
        if (t.NumElements != rows)
            throw new ArgumentException($"{op}: {name} has shape {t.Shape} ({t.NumElements} elements) but x {x.Shape} has {rows} rows", name);
        RequireContiguous(op, name, t);
    }
}
