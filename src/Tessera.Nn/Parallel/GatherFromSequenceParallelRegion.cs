using Tessera.Distributed;
using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Megatron-SP's entry to a tensor-parallel region: forward all-gathers the rows (N / tp, C) each rank holds into the whole
/// (N, C) (rank r's rows at r N / tp), which the column-parallel products read; backward reduce-scatters the (N, C) gradient
/// of those products (each a partial sum) back into each rank's rows. It replaces <see cref="CopyToTensorParallelRegion"/>
/// when the norms before it are sequence-parallel.
/// </summary>
public sealed class GatherFromSequenceParallelRegion : ITensorParallelRegion
{
    private readonly ActivationKey _output, _outputGrad;

    /// <summary>The region named <paramref name="name"/> (its buffers' keys) over <paramref name="group"/>.</summary>
    public GatherFromSequenceParallelRegion(string name, ProcessGroup group)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        Group = group ?? throw new ArgumentNullException(nameof(group));
        _output = new ActivationKey(name + ".gathered");
        _outputGrad = new ActivationKey(name + ".gathered.dy");
    }

    /// <summary>The tensor-parallel group.</summary>
    public ProcessGroup Group { get; }

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x) // x (N/tp, C) -> (N, C)
    {
        var y = ctx.Buffer(_output, new Shape(x.Size(0) * Group.Size, x.Size(1)), x.DType);
        Group.AllGather(Contiguous(x), y).WaitOnDevice();
        return y;
    }

    /// <inheritdoc/>
    public Tensor GradientBuffer(in PassContext ctx, Tensor dx) => ctx.Scratch(_outputGrad, new Shape(dx.Size(0) * Group.Size, dx.Size(1)), dx.DType);

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx) => Group.ReduceScatter(dy, dx, ReduceOp.Sum).WaitOnDevice(); // (N, C) -> (N/tp, C)

    private static Tensor Contiguous(Tensor x) => x.IsContiguous ? x : x.Backend.Contiguous(x);
}
