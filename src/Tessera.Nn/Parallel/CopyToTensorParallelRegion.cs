using Tessera.Distributed;
using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Megatron's <c>copy_to_tensor_model_parallel_region</c>: forward is the identity (every rank holds the same rows and
/// feeds them to its column-parallel products); backward all-reduces the gradient, because each rank's products give
/// only their part of the input's gradient.
/// </summary>
public sealed class CopyToTensorParallelRegion(ProcessGroup group) : ITensorParallelRegion
{
    /// <summary>The tensor-parallel group.</summary>
    public ProcessGroup Group { get; } = group ?? throw new ArgumentNullException(nameof(group));

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x) => x;

    /// <inheritdoc/>
    public Tensor GradientBuffer(in PassContext ctx, Tensor dx) => dx;

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx)
    {
        if (!IdentityRegion.SameView(dy, dx)) dy.Backend.Copy(dy, dx);
        Group.AllReduce(dx, ReduceOp.Sum).WaitOnDevice();
    }
}
