using System.Numerics;
using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// Gradient-norm pieces and the AdamW update.
public sealed unsafe partial class CpuBackend
{
    /// <inheritdoc/>
    public void SumOfSquares(Tensor x, Tensor result)
    {
        const string op = nameof(SumOfSquares);
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(result);
        RequireComputeDType(op, nameof(x), x);
        RequireContiguous(op, nameof(x), x);
        RequireScalar(op, nameof(result), result);
        double total = x.DType == DType.F32 ? SumTyped<float>(x, squares: true) : SumTyped<double>(x, squares: true);
        WriteScalarValue(result, ReadScalarValue(result) + total);
    }

    /// <inheritdoc/>
    public void AdamW(Tensor parameters, Tensor gradients, Tensor m, Tensor v, in AdamWStep step,
        Tensor? gradSumOfSquares = null, Tensor? lowPrecisionCopy = null)
    {
        const string op = nameof(AdamW);
        CheckElementwise(op, (nameof(parameters), parameters), (nameof(gradients), gradients), (nameof(m), m), (nameof(v), v));
        if (step.Step < 1) throw new ArgumentOutOfRangeException(nameof(step), $"{op}: step.Step is {step.Step}; the bias correction needs a 1-based step count");
        double clip = 1.0;
        if (gradSumOfSquares is not null)
        {
            RequireScalar(op, nameof(gradSumOfSquares), gradSumOfSquares);
            if (step.MaxGradNorm > 0)
            {
                double norm = Math.Sqrt(ReadScalarValue(gradSumOfSquares));
                // PyTorch clip_grad_norm_: coefficient max_norm / (norm + 1e-6), capped at 1.
                clip = Math.Min(1.0, step.MaxGradNorm / (norm + 1e-6));
            }
        }
        if (lowPrecisionCopy is not null)
        {
            if (lowPrecisionCopy.NumElements != parameters.NumElements)
                throw new ArgumentException($"{op}: lowPrecisionCopy {lowPrecisionCopy.Shape} must hold as many elements as parameters {parameters.Shape}", nameof(lowPrecisionCopy));
            if (!lowPrecisionCopy.DType.IsFloatingPoint())
                throw new ArgumentException($"{op}: lowPrecisionCopy is {lowPrecisionCopy.DType}; it must be a floating-point dtype", nameof(lowPrecisionCopy));
            RequireContiguous(op, nameof(lowPrecisionCopy), lowPrecisionCopy);
        }
        if (parameters.DType == DType.F32) AdamWTyped<float>(parameters, gradients, m, v, step, clip, lowPrecisionCopy);
        else AdamWTyped<double>(parameters, gradients, m, v, step, clip, lowPrecisionCopy);
    }

    private void AdamWTyped<T>(Tensor parameters, Tensor gradients, Tensor m, Tensor v, AdamWStep step, double clip, Tensor? lowPrecisionCopy)
        where T : unmanaged, IFloatingPointIeee754<T>
    {
        T* pp = Ptr<T>(parameters), pg = Ptr<T>(gradients), pm = Ptr<T>(m), pv = Ptr<T>(v);
        byte* plow = lowPrecisionCopy is null ? null : BytePtr(lowPrecisionCopy);
        if (lowPrecisionCopy is not null) Ptr<byte>(lowPrecisionCopy);
        DType lowType = lowPrecisionCopy?.DType ?? DType.F32, paramType = parameters.DType;
        int lowSize = lowType.SizeInBytes(), paramSize = paramType.SizeInBytes();
        var k = new AdamWConstants<T>(step, clip);
        ParallelChunks(parameters.NumElements, 12, (s, e) =>
        {
            OptimizerKernels.AdamW(pp + s, pg + s, pm + s, pv + s, e - s, k);
            if (plow != null)
                ElementCast.Run(paramType, (byte*)(pp + s), 1, lowType, plow + s * lowSize, 1, e - s);
        });
    }
}
