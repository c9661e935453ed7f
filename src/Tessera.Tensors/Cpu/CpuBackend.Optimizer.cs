using System.Numerics;
using Tessera.Tensors.Cpu.Kernels;

namespace Tessera.Tensors.Cpu;

// Gradient-norm pieces and the AdamW update (on tensors, and on staged buffers for the host half of ZeRO-Offload).
public sealed unsafe partial class CpuBackend
{
    /// <inheritdoc/>
    /// <remarks>
    /// Besides F32 and F64, x may be BF16 (a mixed-precision gradient, as the CUDA backend takes it): each element widens
    /// exactly to F32 and the squares are summed in double per chunk, chunks added in order.
    /// </remarks>
    public void SumOfSquares(Tensor x, Tensor result)
    {
        const string op = nameof(SumOfSquares);
        ArgumentNullException.ThrowIfNull(x); ArgumentNullException.ThrowIfNull(result);
        if (x.DType != DType.BF16) RequireComputeDType(op, nameof(x), x);
        RequireContiguous(op, nameof(x), x);
        RequireScalar(op, nameof(result), result);
        double total = x.DType switch
        {
            DType.F32 => SumTyped<float>(x, squares: true),
            DType.BF16 => SumOfSquaresBFloat16(x),
            _ => SumTyped<double>(x, squares: true),
        };
        WriteScalarValue(result, ReadScalarValue(result) + total);
        KeepOperandsAlive(x, result);
    }

    private double SumOfSquaresBFloat16(Tensor x)
    {
        ushort* p = Ptr<ushort>(x);
        long n = x.NumElements;
        int chunks = Math.Max(1, ChunkCount(n, 1));
        var partial = new double[chunks];
        ParallelFixedChunks(n, chunks, (c, s, e) =>
        {
            double sum = 0;
            for (long i = s; i < e; i++)
            {
                double w = BitConverter.UInt32BitsToSingle((uint)p[i] << 16);
                sum += w * w;
            }
            partial[c] = sum;
        });
        double total = 0;
        foreach (var v in partial) total += v;
        return total;
    }

    /// <inheritdoc/>
    /// <remarks>
    /// F32 parameters may take BF16 gradients (mixed precision, as the CUDA backend does): each gradient widens exactly to
    /// F32 and the update is the F32 one, bit for bit (<see cref="OptimizerKernels.AdamWStagedBFloat16"/>: tested against
    /// widening first).
    /// </remarks>
    public void AdamW(Tensor parameters, Tensor gradients, Tensor m, Tensor v, in AdamWStep step,
        Tensor? gradSumOfSquares = null, Tensor? lowPrecisionCopy = null)
    {
        const string op = nameof(AdamW);
        if (gradients is { DType: DType.BF16 } && parameters is { DType: DType.F32 })
        {
            AdamWBFloat16Gradients(parameters, gradients, m, v, step, gradSumOfSquares, lowPrecisionCopy);
            return;
        }
        CheckElementwise(op, (nameof(parameters), parameters), (nameof(gradients), gradients), (nameof(m), m), (nameof(v), v));
        double clip = ClipCoefficient(op, step, gradSumOfSquares);
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
        KeepOperandsAlive(parameters, gradients, m, v, gradSumOfSquares, lowPrecisionCopy);
    }

    /// <summary>AdamW over F32 parameters with BF16 gradients; the BF16 <paramref name="lowPrecisionCopy"/> (rounded to nearest even) when given.</summary>
    private void AdamWBFloat16Gradients(Tensor parameters, Tensor gradients, Tensor m, Tensor v, in AdamWStep step, Tensor? gradSumOfSquares, Tensor? lowPrecisionCopy)
    {
        const string op = nameof(AdamW);
        CheckElementwise(op, (nameof(parameters), parameters), (nameof(m), m), (nameof(v), v));
        RequireSameShape(op, nameof(gradients), gradients, nameof(parameters), parameters);
        RequireContiguous(op, nameof(gradients), gradients);
        if (lowPrecisionCopy is not null)
        {
            if (lowPrecisionCopy.DType != DType.BF16 || lowPrecisionCopy.NumElements != parameters.NumElements)
                throw new ArgumentException($"{op}: with BF16 gradients the lowPrecisionCopy must be BF16 of {parameters.NumElements} elements, not {lowPrecisionCopy.DType} {lowPrecisionCopy.Shape}", nameof(lowPrecisionCopy));
            RequireContiguous(op, nameof(lowPrecisionCopy), lowPrecisionCopy);
        }
        double clip = ClipCoefficient(op, step, gradSumOfSquares);
        var k = new AdamWConstants<float>(step, clip);
        float* pp = Ptr<float>(parameters), pm = Ptr<float>(m), pv = Ptr<float>(v);
        ushort* pg = Ptr<ushort>(gradients);
        ushort* po = lowPrecisionCopy is null ? null : Ptr<ushort>(lowPrecisionCopy);
        ParallelChunks(parameters.NumElements, 12, (s, e) =>
        {
            if (po != null) OptimizerKernels.AdamWStagedBFloat16(pp + s, pg + s, pm + s, pv + s, po + s, e - s, k);
            else OptimizerKernels.AdamWBFloat16Gradients(pp + s, pg + s, pm + s, pv + s, e - s, k);
        });
        KeepOperandsAlive(parameters, gradients, m, v, gradSumOfSquares, lowPrecisionCopy);
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

    /// <inheritdoc/>
    public void AdamWSplit(Tensor values, Tensor lowWords, Tensor gradients, Tensor m, Tensor v, in AdamWStep step, Tensor? gradSumOfSquares = null)
    {
        const string op = nameof(AdamWSplit);
        CheckSplit(op, values, lowWords, (nameof(m), m, DType.F32), (nameof(v), v, DType.F32));
        ArgumentNullException.ThrowIfNull(gradients);
        RequireSameShape(op, nameof(gradients), gradients, nameof(values), values);
        RequireContiguous(op, nameof(gradients), gradients);
        if (gradients.DType is not (DType.BF16 or DType.F32))
            throw new ArgumentException($"{op}: gradients are {gradients.DType}; split masters take BF16 (or F32) gradients", nameof(gradients));
        double clip = ClipCoefficient(op, step, gradSumOfSquares);
        ushort* hi = Ptr<ushort>(values), lo = Ptr<ushort>(lowWords);
        float* pm = Ptr<float>(m), pv = Ptr<float>(v);
        bool bf16 = gradients.DType == DType.BF16;
        ushort* gb = bf16 ? Ptr<ushort>(gradients) : null;
        float* gf = bf16 ? null : Ptr<float>(gradients);
        var k = new AdamWConstants<float>(step, clip);
        ParallelChunks(values.NumElements, 12, (s, e) =>
        {
            if (bf16) OptimizerKernels.AdamWSplit(hi + s, lo + s, gb + s, pm + s, pv + s, e - s, k);
            else OptimizerKernels.AdamWSplit(hi + s, lo + s, gf + s, pm + s, pv + s, e - s, k);
        });
        KeepOperandsAlive(values, lowWords, gradients, m, v, gradSumOfSquares);
    }

    /// <inheritdoc/>
    public void SplitMasters(Tensor masters, Tensor values, Tensor lowWords)
    {
        CheckSplit(nameof(SplitMasters), values, lowWords, (nameof(masters), masters, DType.F32));
        uint* pu = Ptr<uint>(masters);
        ushort* hi = Ptr<ushort>(values), lo = Ptr<ushort>(lowWords);
        ParallelChunks(values.NumElements, 1, (s, e) =>
        {
            for (long i = s; i < e; i++) (hi[i], lo[i]) = OptimizerKernels.Split(pu[i]);
        });
        KeepOperandsAlive(masters, values, lowWords);
    }

    /// <inheritdoc/>
    public void JoinMasters(Tensor values, Tensor lowWords, Tensor masters)
    {
        CheckSplit(nameof(JoinMasters), values, lowWords, (nameof(masters), masters, DType.F32));
        uint* pu = Ptr<uint>(masters);
        ushort* hi = Ptr<ushort>(values), lo = Ptr<ushort>(lowWords);
        ParallelChunks(values.NumElements, 1, (s, e) =>
        {
            for (long i = s; i < e; i++) pu[i] = OptimizerKernels.Join(hi[i], lo[i]);
        });
        KeepOperandsAlive(masters, values, lowWords);
    }

    /// <summary>Checks a split master's halves (BF16 values, U16 low words) and the F32 tensors beside them: same shape, contiguous.</summary>
    private static void CheckSplit(string op, Tensor values, Tensor lowWords, params (string Name, Tensor Tensor, DType DType)[] others)
    {
        ArgumentNullException.ThrowIfNull(values);
        ArgumentNullException.ThrowIfNull(lowWords);
        RequireDType(op, nameof(values), values, DType.BF16);
        RequireDType(op, nameof(lowWords), lowWords, DType.U16);
        RequireContiguous(op, nameof(values), values);
        RequireContiguous(op, nameof(lowWords), lowWords);
        RequireSameShape(op, nameof(lowWords), lowWords, nameof(values), values);
        foreach (var (name, t, dtype) in others)
        {
            ArgumentNullException.ThrowIfNull(t, name);
            RequireDType(op, name, t, dtype);
            RequireContiguous(op, name, t);
            RequireSameShape(op, name, t, nameof(values), values);
        }
    }

    /// <summary>
    /// Whether <see cref="AdamWStaged"/> takes parameters of <paramref name="parameterDType"/> whose gradients and values
    /// are staged as <paramref name="stagedDType"/>: F32 staged as BF16 (mixed precision) or F32, F64 staged as F64.
    /// </summary>
    public static bool SupportsAdamWStaged(DType parameterDType, DType stagedDType) =>
        (parameterDType, stagedDType) is (DType.F32, DType.BF16) or (DType.F32, DType.F32) or (DType.F64, DType.F64);

    /// <summary>
    /// <see cref="AdamW"/> for the host half of ZeRO-Offload, in one pass over memory: the gradient is read straight from
    /// <paramref name="gradients"/> (raw elements of <paramref name="stagedDType"/>, as copied off the device), the
    /// parameters, <paramref name="m"/> and <paramref name="v"/> (tensors on this backend) are updated in place, and the
    /// updated parameters are written in <paramref name="stagedDType"/> into <paramref name="values"/> (raw elements, to be
    /// copied to the device). Bit-identical to widening the gradient into a tensor, calling <see cref="AdamW"/> with the same
    /// step and sum of squares (and, for a BF16 staging, a BF16 <c>lowPrecisionCopy</c>, whose bits <paramref name="values"/>
    /// then holds), and copying the values out: the same operations in the same order per element. <paramref name="values"/>
    /// may be the same memory as <paramref name="gradients"/>. Supported dtype pairs: <see cref="SupportsAdamWStaged"/>.
    /// </summary>
    /// <param name="parameters">(n) F32 or F64, contiguous: the masters.</param>
    /// <param name="gradients">(n) elements of <paramref name="stagedDType"/>: exactly n times its size in bytes.</param>
    /// <param name="m">(n) like <paramref name="parameters"/>: first moments.</param>
    /// <param name="v">(n) like <paramref name="parameters"/>: second moments.</param>
    /// <param name="values">(n) elements of <paramref name="stagedDType"/>: exactly n times its size in bytes.</param>
    /// <param name="stagedDType">The dtype of both staged buffers (the arena's dtype).</param>
    /// <param name="step">Hyper-parameters, as for <see cref="AdamW"/>.</param>
    /// <param name="gradSumOfSquares">(1) F32/F64 global gradient sum of squares for clipping, or null, as for <see cref="AdamW"/>.</param>
    public void AdamWStaged(Tensor parameters, ReadOnlySpan<byte> gradients, Tensor m, Tensor v, Span<byte> values, DType stagedDType,
        in AdamWStep step, Tensor? gradSumOfSquares = null)
    {
        const string op = nameof(AdamWStaged);
        CheckElementwise(op, (nameof(parameters), parameters), (nameof(m), m), (nameof(v), v));
        if (!SupportsAdamWStaged(parameters.DType, stagedDType))
            throw new NotSupportedException($"{op}: {parameters.DType} parameters staged as {stagedDType} are not supported (F32 as BF16 or F32, F64 as F64); use {nameof(AdamW)} on tensors");
        long n = parameters.NumElements, bytes = n * stagedDType.SizeInBytes();
        if (gradients.Length != bytes)
            throw new ArgumentException($"{op}: gradients hold {gradients.Length} bytes; {n} {stagedDType} elements of parameters {parameters.Shape} need {bytes}", nameof(gradients));
        if (values.Length != bytes)
            throw new ArgumentException($"{op}: values hold {values.Length} bytes; {n} {stagedDType} elements of parameters {parameters.Shape} need {bytes}", nameof(values));
        double clip = ClipCoefficient(op, step, gradSumOfSquares);
        fixed (byte* pinnedGradients = gradients, pinnedValues = values)
        {
            byte* g = pinnedGradients, o = pinnedValues;   // pinned for the call; the blocks only run inside it
            if (parameters.DType == DType.F64)
            {
                double* pp = Ptr<double>(parameters), pm = Ptr<double>(m), pv = Ptr<double>(v);
                var k = new AdamWConstants<double>(step, clip);
                ParallelBlocks(n, StagedBlockElements, 12, (s, e) =>
                    OptimizerKernels.AdamWStaged(pp + s, (double*)g + s, pm + s, pv + s, (double*)o + s, e - s, k));
            }
            else
            {
                float* pp = Ptr<float>(parameters), pm = Ptr<float>(m), pv = Ptr<float>(v);
                var k = new AdamWConstants<float>(step, clip);
                if (stagedDType == DType.BF16)
                    ParallelBlocks(n, StagedBlockElements, 12, (s, e) =>
                        OptimizerKernels.AdamWStagedBFloat16(pp + s, (ushort*)g + s, pm + s, pv + s, (ushort*)o + s, e - s, k));
                else
                    ParallelBlocks(n, StagedBlockElements, 12, (s, e) =>
                        OptimizerKernels.AdamWStaged(pp + s, (float*)g + s, pm + s, pv + s, (float*)o + s, e - s, k));
            }
        }
        KeepOperandsAlive(parameters, m, v, gradSumOfSquares);
    }

    /// <summary>
    /// Elements per block of <see cref="AdamWStaged"/>'s threads (1.75 MiB of F32 state): small enough that a thread
    /// slowed by other work (the offload's device copies run beside it) leaves blocks to the others, a multiple of every
    /// vector width so only the last block has a scalar tail.
    /// </summary>
    private const long StagedBlockElements = 1L << 16;

    /// <summary>The global-norm clipping factor AdamW scales gradients by (1 without a sum of squares or a threshold).</summary>
    private double ClipCoefficient(string op, in AdamWStep step, Tensor? gradSumOfSquares)
    {
        if (step.Step < 1) throw new ArgumentOutOfRangeException(nameof(step), $"{op}: step.Step is {step.Step}; the bias correction needs a 1-based step count");
        if (gradSumOfSquares is null) return 1.0;
        RequireScalar(op, nameof(gradSumOfSquares), gradSumOfSquares);
        if (step.MaxGradNorm <= 0) return 1.0;
        double norm = Math.Sqrt(ReadScalarValue(gradSumOfSquares));
        // PyTorch clip_grad_norm_: coefficient max_norm / (norm + 1e-6), capped at 1.
        return Math.Min(1.0, step.MaxGradNorm / (norm + 1e-6));
    }
}
