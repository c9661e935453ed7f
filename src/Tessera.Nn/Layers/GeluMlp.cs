using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>GPT-2's MLP: proj(GELU(fc(x))), fc C to F, proj F to C, tanh-approximated GELU.</summary>
public sealed class GeluMlp : IFeedForward
{
    private readonly ActivationKey _hidden, _dHidden;

    /// <summary>Declares "<paramref name="name"/>.fc" (F, C) and "<paramref name="name"/>.proj" (C, F), with biases when <paramref name="bias"/>.</summary>
    public GeluMlp(ParameterLayoutBuilder parameters, string name, int channels, int hidden, bool bias)
    {
        Name = name;
        Fc = new Linear(parameters, name + ".fc", channels, hidden, bias);
        Projection = new Linear(parameters, name + ".proj", hidden, channels, bias);
        _hidden = new ActivationKey(name + ".fc.preact");
        _dHidden = new ActivationKey(name + ".fc.dy");
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <summary>Up projection C to F.</summary>
    public Linear Fc { get; }

    /// <inheritdoc/>
    public Linear Projection { get; }

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        var h = ctx.Buffer(_hidden, new Shape(x.Size(0), Fc.OutFeatures), x.DType); // (N, F): pre-activation
        var a = Fc.ForwardGelu(ctx, x, h);                           // (N, F) = GELU(h), one fused product
        ctx.Save(_hidden, h);
        return Projection.Forward(ctx, a, residual);                 // (N, C)
    }

    /// <inheritdoc/>
    public void ForwardAccumulate(in PassContext ctx, Tensor x, INormalization norm, Tensor residual)
    {
        var h = ctx.Buffer(_hidden, new Shape(x.Size(0), Fc.OutFeatures), x.DType); // (N, F): pre-activation
        Projection.ForwardAccumulate(Fc.ForwardGelu(ctx, norm.Forward(ctx, x), h), residual);
    }

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, bool accumulateDx = false)
    {
        var h = ctx.Get(_hidden);
        var dh = ctx.Scratch(_dHidden, h.Shape, h.DType);            // (N, F) = (dy W_proj) * GELU'(h), fused
        Projection.Backward(ctx, dy, dh, geluPreActivation: h);
        Fc.Backward(ctx, dh, dx, accumulateDx);
    }
}
