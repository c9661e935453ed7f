using Tessera.Distributed;
using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Megatron-SP's exit from a tensor-parallel region, the mirror of <see cref="GatherFromSequenceParallelRegion"/>: forward
/// reduce-scatters the (N, C) partial sums of the row-parallel products into each rank's rows (N / tp, C) of the residual
/// stream (instead of an all-reduce: the same bytes, and every rank keeps only its rows); backward all-gathers the rows'
/// gradient into the (N, C) gradient the products need.
/// </summary>
public sealed class ReduceScatterToSequenceParallelRegion : ITensorParallelRegion
{
    private readonly ActivationKey _output, _outputGrad;

    /// <summary>The region named <paramref name="name"/> (its buffers' keys) over <paramref name="group"/>.</summary>
    public ReduceScatterToSequenceParallelRegion(string name, ProcessGroup group)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        Group = group ?? throw new ArgumentNullException(nameof(group));
        _output = new ActivationKey(name + ".scattered");
        _outputGrad = new ActivationKey(name + ".scattered.dy");
    }

    /// <summary>The tensor-parallel group.</summary>
    public ProcessGroup Group { get; }

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x) // x (N, C) partial -> (N/tp, C)
    {
        if (x.Size(0) % Group.Size != 0)
            throw new ArgumentException($"sequence parallelism: {x.Size(0)} rows cannot be split over tp ({Group.Size}) ranks");
        var y = ctx.Buffer(_output, new Shape(x.Size(0) / Group.Size, x.Size(1)), x.DType);
        Group.ReduceScatter(x, y, ReduceOp.Sum).WaitOnDevice();
        return y;
    }

    /// <inheritdoc/>
    public Tensor GradientBuffer(in PassContext ctx, Tensor dx) => ctx.Scratch(_outputGrad, new Shape(dx.Size(0) / Group.Size, dx.Size(1)), dx.DType);

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx) => Group.AllGather(dy.IsContiguous ? dy : dy.Backend.Contiguous(dy), dx).WaitOnDevice(); // (N/tp, C) -> (N, C)
}
