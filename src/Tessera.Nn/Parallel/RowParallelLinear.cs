using Tessera.Distributed.Mesh;
using Tessera.Nn.Layers;
using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Megatron's RowParallelLinear: y = x W^T + b with the input features split over the tensor-parallel group (W (out, in)
/// sharded along dimension 1; the bias replicated). Each rank multiplies its slice of the input (the column-parallel layer
/// before it left its output split) into a partial sum of the whole output; the output region reduces the partial sums:
/// an all-reduce, or under sequence parallelism a reduce-scatter into each rank's rows. The bias is added once (by rank 0's
/// product) and the residual once, after the reduction. Backward all-gathers a sequence-parallel output gradient first;
/// then every rank computes its slice of dx and of dW, and the whole bias gradient.
/// </summary>
public sealed class RowParallelLinear : Linear
{
    private readonly ITensorParallelRegion _output;
    private readonly ActivationKey _partialGrad;
    private readonly bool _addsBias;

    /// <summary>Declares "<paramref name="name"/>.weight" (out, in) sharded along in, and the replicated bias.</summary>
    public RowParallelLinear(ParameterLayoutBuilder parameters, string name, int inFeatures, int outFeatures, bool bias, TensorParallelism tensorParallelism)
        : base(parameters, name, inFeatures, outFeatures, bias, Placement.Shard(MeshAxis.Tp, 1), Placement.Replicated)
    {
        ArgumentNullException.ThrowIfNull(tensorParallelism);
        TensorParallelism = tensorParallelism;
        _output = tensorParallelism.SequenceParallel
            ? new ReduceScatterToSequenceParallelRegion(name + ".output", tensorParallelism.Group)
            : new ReduceFromTensorParallelRegion(tensorParallelism.Group);
        _partialGrad = new ActivationKey(name + ".dy.gathered");
        _addsBias = tensorParallelism.Rank == 0;
    }

    /// <summary>The tensor parallelism it belongs to.</summary>
    public TensorParallelism TensorParallelism { get; }

    /// <summary>A term added to this rank's partial output before the reduction (LoRA adapters, served or trained), or null.</summary>
    internal IPartialOutputTerm? PartialOutputTerm { get; set; }

    /// <summary>
    /// y = reduce(x W_r^T (+ b on rank 0)) (+ <paramref name="residual"/>) for this rank's input slice x (N, in / tp): (N, out),
    /// or this rank's rows (N / tp, out) under sequence parallelism (and a residual of those rows). Saves x.
    /// </summary>
    public override Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        CheckInput(x);
        var backend = x.Backend;
        // (N, out): this rank's partial sum. Under sequence parallelism it is dead once reduce-scattered into this rank's rows
        // (the backward never reads it), so it lives in a buffer shared by every block and micro-batch rather than in the
        // micro-batch's slot; without, the all-reduce leaves the output in it and it is the residual stream, kept.
        var shape = new Shape(x.Size(0), OutFeatures);
        var partial = TensorParallelism.SequenceParallel ? ctx.Scratch(OutputKey, shape, x.DType) : ctx.Buffer(OutputKey, shape, x.DType);
        Product(x, partial, _addsBias ? Bias?.Value : null);
        PartialOutputTerm?.AddTo(ctx, x, partial);
        var y = _output.Forward(ctx, partial);
        if (residual is not null) backend.Accumulate(y, residual);
        ctx.Save(InputKey, x);
        return y;
    }

    /// <inheritdoc/>
    /// <remarks>Zeros, then <see cref="ForwardAccumulate"/>, which adds more than the product.</remarks>
    public override void ForwardInto(in PassContext ctx, Tensor x, Tensor output) => ForwardIntoByAccumulating(ctx, x, output);

    /// <inheritdoc/>
    /// <remarks>False: the product is reduced over the ranks before it is added.</remarks>
    public override bool AccumulatesPlainProduct => false;

    /// <summary>Inference: <paramref name="residual"/> (N, out) += the all-reduced product (no sequence parallelism while decoding).</summary>
    public override void ForwardAccumulate(in PassContext ctx, Tensor x, Tensor residual)
    {
        CheckInput(x);
        if (TensorParallelism.SequenceParallel)
            throw new NotSupportedException($"{Name}: inference runs without sequence parallelism; build the model for generation with a plan that has it off");
        var backend = x.Backend;
        var partial = ctx.Buffer(OutputKey, new Shape(x.Size(0), OutFeatures), x.DType);
        Product(x, partial, _addsBias ? Bias?.Value : null);
        PartialOutputTerm?.AddTo(ctx, x, partial);
        _output.Forward(ctx, partial);
        backend.Accumulate(residual, partial);
    }

    /// <inheritdoc/>
    public override Tensor ForwardGelu(in PassContext ctx, Tensor x, Tensor preActivation) =>
        throw new NotSupportedException($"{Name}: a row-parallel layer ends its sub-layer; the GELU belongs to the column-parallel product before it");

    /// <inheritdoc/>
    /// <remarks>
    /// False: under sequence parallelism dy is all-gathered before the product, so the rows a norm wrote are a part of it;
    /// without, the bias gradient could be taken so (every rank holds the whole dy) but tensor parallelism keeps the
    /// layer's own reduction for now.
    /// </remarks>
    public override bool TakesBiasGradientFromOutputGradientSums => false;

    /// <inheritdoc/>
    public override Tensor ForwardNormalized(in PassContext ctx, Tensor x, INormalization norm) =>
        throw new NotSupportedException($"{Name}: a row-parallel layer reads the split output of a column-parallel one, never a norm's");

    /// <summary>
    /// From dy, the gradient of this rank's output ((N, out), or its rows (N / tp, out) under sequence parallelism):
    /// dx (N, in / tp) and the gradients of this rank's weight slice and of the whole bias.
    /// </summary>
    public override void Backward(in PassContext ctx, Tensor dy, Tensor? dx, bool accumulateDx = false, Tensor? geluPreActivation = null,
        Tensor? preActivationBiasGradient = null, bool biasGradientTaken = false)
    {
        var dPartial = OutputGradient(ctx, dy);
        base.Backward(ctx, dPartial, dx, accumulateDx, geluPreActivation, preActivationBiasGradient, biasGradientTaken);
    }

    /// <inheritdoc/>
    /// <remarks>From the gradient of this rank's partial output, as <see cref="Backward(in PassContext, Tensor, Tensor?, bool, Tensor?, Tensor?, bool)"/>.</remarks>
    public override void BackwardSwiGlu(in PassContext ctx, Tensor dy, Tensor gateUp, Tensor dGateUp, Tensor dActivated, bool biasGradientTaken = false) =>
        base.BackwardSwiGlu(ctx, OutputGradient(ctx, dy), gateUp, dGateUp, dActivated, biasGradientTaken);

    /// <summary>
    /// The gradient of this rank's partial output (N, out) from dy, the gradient of its output: the output region's backward
    /// (an all-gather of the rows under sequence parallelism, dy itself without). For a layer that wraps this one and reads it
    /// (trained LoRA adapters over the row-parallel product).
    /// </summary>
    internal Tensor OutputGradient(in PassContext ctx, Tensor dy)
    {
        var dPartial = TensorParallelism.SequenceParallel
            ? ctx.Scratch(_partialGrad, new Shape(dy.Size(0) * TensorParallelism.Size, dy.Size(1)), dy.DType)
            : dy;
        _output.Backward(ctx, dy, dPartial);
        return dPartial;
    }
}
