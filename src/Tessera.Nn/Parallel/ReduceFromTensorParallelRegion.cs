using Tessera.Distributed;
using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Megatron's <c>reduce_from_tensor_model_parallel_region</c>, the mirror of <see cref="CopyToTensorParallelRegion"/>:
/// forward all-reduces (in place) the partial sums of the row-parallel products; backward is the identity (every rank
/// receives the whole output's gradient).
/// </summary>
public sealed class ReduceFromTensorParallelRegion(ProcessGroup group) : ITensorParallelRegion
{
    /// <summary>The tensor-parallel group.</summary>
    public ProcessGroup Group { get; } = group ?? throw new ArgumentNullException(nameof(group));

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x)
    {
        Group.AllReduce(x, ReduceOp.Sum).WaitOnDevice();
        return x;
    }

    /// <inheritdoc/>
    public Tensor GradientBuffer(in PassContext ctx, Tensor dx) => dx;

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx)
    {
        if (!IdentityRegion.SameView(dy, dx)) dy.Backend.Copy(dy, dx);
    }
}
