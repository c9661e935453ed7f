using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// GPT-2's MLP: proj(GELU(fc(x))), fc C to F, proj F to C, tanh-approximated GELU. Under tensor parallelism fc is
/// column-parallel and proj row-parallel (each rank holds F / tp hidden units), behind the sub-layer's input region.
/// </summary>
public sealed class GeluMlp : IFeedForward
{
    private readonly ActivationKey _hidden, _dHidden;

    /// <summary>Declares "<paramref name="name"/>.fc" (F, C) and "<paramref name="name"/>.proj" (C, F), with biases when <paramref name="bias"/>, as <paramref name="layers"/>' plan splits them.</summary>
    public GeluMlp(LayerFactory layers, string name, int channels, int hidden, bool bias)
    {
        ArgumentNullException.ThrowIfNull(layers);
        Name = name;
        Input = layers.InputRegion(name);
        Fc = layers.Linear(name + ".fc", channels, hidden, bias);
        Projection = layers.Linear(name + ".proj", hidden, channels, bias);
        _hidden = new ActivationKey(name + ".fc.preact");
        _dHidden = new ActivationKey(name + ".fc.dy");
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public ITensorParallelRegion Input { get; }

    /// <summary>Up projection C to F (this rank's hidden units).</summary>
    public Linear Fc { get; }

    /// <inheritdoc/>
    public Linear Projection { get; }

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        var rows = Input.Forward(ctx, x);                            // (N, C): whole rows
        var h = ctx.Buffer(_hidden, new Shape(rows.Size(0), Fc.OutFeatures), x.DType); // (N, F): pre-activation
        var a = Fc.ForwardGelu(ctx, rows, h);                        // (N, F) = GELU(h), one fused product
        ctx.Save(_hidden, h);
        return Projection.Forward(ctx, a, residual);                 // x's rows, (N, C)
    }

    /// <inheritdoc/>
    public void ForwardAccumulate(in PassContext ctx, Tensor x, INormalization norm, Tensor residual)
    {
        var h = ctx.Buffer(_hidden, new Shape(x.Size(0), Fc.OutFeatures), x.DType); // (N, F): pre-activation
        Projection.ForwardAccumulate(ctx, Fc.ForwardGelu(ctx, Input.Forward(ctx, norm.Forward(ctx, x)), h), residual);
    }

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, bool accumulateDx = false, bool projectionBiasGradientTaken = false)
    {
        var h = ctx.Get(_hidden);
        var dh = ctx.Scratch(_dHidden, h.Shape, h.DType);            // (N, F) = (dy W_proj) * GELU'(h), fused
        // fc's bias gradient is the column sums of dh: the product that writes dh also sums them (cuBLASLt's DGELU_BGRAD),
        // so fc's weight-gradient product runs without a bias-gradient epilogue or a SumRows of its own (issue 18).
        var fcBiasGradient = Fc.TakesBiasGradientFromNext ? Fc.Bias!.Grad : null;
        Projection.Backward(ctx, dy, dh, geluPreActivation: h, preActivationBiasGradient: fcBiasGradient,
            biasGradientTaken: projectionBiasGradientTaken);
        if (accumulateDx && Input is not IdentityRegion)
            throw new NotSupportedException($"{Name}: the input gradient of a tensor-parallel MLP is reduced over ranks and cannot accumulate into dx");
        var dInput = Input.GradientBuffer(ctx, dx);
        Fc.Backward(ctx, dh, dInput, accumulateDx, biasGradientTaken: fcBiasGradient is not null);
        Input.Backward(ctx, dInput, dx);
    }
}
