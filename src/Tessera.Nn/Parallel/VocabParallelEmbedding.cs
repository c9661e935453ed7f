using Tessera.Distributed.Mesh;
using Tessera.Nn.Layers;
using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Megatron's VocabParallelEmbedding: the token table (V, C) split by rows over the tensor-parallel group, rank r holding
/// rows [r V/tp, (r + 1) V/tp). Each rank looks up the ids that fall in its rows (zeros for the others) and the partial
/// lookups are summed: an all-reduce, or under sequence parallelism a reduce-scatter into each rank's rows of the residual
/// stream. Backward scatters the (gathered) gradient into the rank's rows only. A head tied to this table is column-parallel
/// over the vocabulary with the same shards.
/// </summary>
public sealed class VocabParallelEmbedding : Embedding
{
    private readonly ITensorParallelRegion _output;
    private readonly ActivationKey _gatheredGrad;

    /// <summary>Declares "<paramref name="name"/>.weight" (rows, dim) sharded by rows over <paramref name="tensorParallelism"/>.</summary>
    public VocabParallelEmbedding(ParameterLayoutBuilder parameters, string name, int rows, int dim, TensorParallelism tensorParallelism)
        : base(parameters, name, rows, dim, Placement.Shard(MeshAxis.Tp, 0))
    {
        ArgumentNullException.ThrowIfNull(tensorParallelism);
        TensorParallelism = tensorParallelism;
        RowOffset = Weight.ShardIndex * Weight.Shape[0];
        _output = tensorParallelism.SequenceParallel
            ? new ReduceScatterToSequenceParallelRegion(name + ".output", tensorParallelism.Group)
            : new ReduceFromTensorParallelRegion(tensorParallelism.Group);
        _gatheredGrad = new ActivationKey(name + ".dy.gathered");
    }

    /// <summary>The tensor parallelism it belongs to.</summary>
    public TensorParallelism TensorParallelism { get; }

    /// <summary>The first row of the whole table this rank holds.</summary>
    public int RowOffset { get; }

    /// <summary>The embeddings of ids (N) I32: (N, C), or this rank's rows (N / tp, C) under sequence parallelism. Saves ids.</summary>
    public override Tensor Forward(in PassContext ctx, Tensor ids)
    {
        if (ids.Rank != 1 || ids.DType != DType.I32)
            throw new ArgumentException($"{Name}: ids must be (N) I32, got {ids.Shape} {ids.DType}");
        // (N, C) partial lookups; under sequence parallelism dead once reduce-scattered, so in a shared buffer (RowParallelLinear's reason).
        var shape = new Shape(ids.Size(0), Dim);
        var partial = TensorParallelism.SequenceParallel ? ctx.Scratch(OutputKey, shape, Weight.ComputeDType) : ctx.Buffer(OutputKey, shape, Weight.ComputeDType);
        if (Weight.Quantized is { } q) ids.Backend.QuantizedEmbeddingShardForward(ids, q, RowOffset, partial);
        else ids.Backend.EmbeddingShardForward(ids, Weight.Value, RowOffset, partial);
        var y = _output.Forward(ctx, partial);
        ctx.Save(IdsKey, ids);
        return y;
    }

    /// <inheritdoc/>
    public override void Forward(in PassContext ctx, Tensor ids, Tensor output, bool accumulate) =>
        throw new NotSupportedException($"{Name}: a vocabulary-parallel table returns its reduced lookup (Forward(ctx, ids)); position tables are replicated");

    /// <summary>weight.Grad (this rank's rows) += scatter of dy ((N, C), or this rank's rows under sequence parallelism) by the saved ids.</summary>
    /// <summary>The rows are sharded over the vocabulary: the scatter of <see cref="Backward"/>, whatever the ids.</summary>
    public override void BackwardPeriodic(in PassContext ctx, Tensor dy, int period) => Backward(ctx, dy);

    public override void Backward(in PassContext ctx, Tensor dy)
    {
        if (!Weight.RequiresGradient) return;                       // a frozen table (LoRA's base): nothing to scatter, on every rank alike
        var full = TensorParallelism.SequenceParallel
            ? ctx.Scratch(_gatheredGrad, new Shape(dy.Size(0) * TensorParallelism.Size, dy.Size(1)), dy.DType)
            : dy;
        _output.Backward(ctx, dy, full);
        dy.Backend.EmbeddingShardBackward(ctx.Get(IdsKey), full, RowOffset, Weight.Grad);
    }
}
