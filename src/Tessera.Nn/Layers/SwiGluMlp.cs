using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// Llama's MLP: proj(SiLU(gate(x)) * up(x)), gate and up C to F, proj F to C. Under tensor parallelism gate and up are
/// column-parallel (one input region in front of both: one reduction of their summed input gradients) and proj row-parallel.
/// </summary>
public sealed class SwiGluMlp : IFeedForward
{
    private readonly ActivationKey _gate, _up, _activated, _dActivated, _dGate, _dUp;

    /// <summary>Declares "<paramref name="name"/>.gate" (F, C), ".up" (F, C) and ".proj" (C, F), with biases when <paramref name="bias"/>, as <paramref name="layers"/>' plan splits them.</summary>
    public SwiGluMlp(LayerFactory layers, string name, int channels, int hidden, bool bias)
    {
        ArgumentNullException.ThrowIfNull(layers);
        Name = name;
        Input = layers.InputRegion(name);
        Gate = layers.Linear(name + ".gate", channels, hidden, bias);
        Up = layers.Linear(name + ".up", channels, hidden, bias);
        Projection = layers.Linear(name + ".proj", hidden, channels, bias);
        _gate = new ActivationKey(name + ".gate.out");
        _up = new ActivationKey(name + ".up.out");
        _activated = new ActivationKey(name + ".swiglu.out");
        _dActivated = new ActivationKey(name + ".swiglu.dy");
        _dGate = new ActivationKey(name + ".gate.dy");
        _dUp = new ActivationKey(name + ".up.dy");
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public ITensorParallelRegion Input { get; }

    /// <summary>Gate projection C to F (through SiLU; this rank's hidden units).</summary>
    public Linear Gate { get; }

    /// <summary>Up projection C to F (this rank's hidden units).</summary>
    public Linear Up { get; }

    /// <inheritdoc/>
    public Linear Projection { get; }

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        var rows = Input.Forward(ctx, x);                            // (N, C): whole rows
        var g = Gate.Forward(ctx, rows);                             // (N, F)
        var u = Up.Forward(ctx, rows);                               // (N, F)
        var a = ctx.Buffer(_activated, g.Shape, g.DType);            // (N, F)
        x.Backend.SwiGluForward(g, u, a);
        ctx.Save(_gate, g);
        ctx.Save(_up, u);
        return Projection.Forward(ctx, a, residual);                 // x's rows, (N, C)
    }

    /// <inheritdoc/>
    public void ForwardAccumulate(in PassContext ctx, Tensor x, INormalization norm, Tensor residual)
    {
        var a = ctx.Buffer(_activated, new Shape(x.Size(0), Gate.OutFeatures), x.DType);   // (N, F)
        if (norm is RmsNorm rms && Input is not GatherFromSequenceParallelRegion)
            x.Backend.MatMulSwiGlu(x, Gate.Weight.Value, Up.Weight.Value, a, Gate.Bias?.Value, Up.Bias?.Value, rms.Prologue);
        else x.Backend.MatMulSwiGlu(Input.Forward(ctx, norm.Forward(ctx, x)), Gate.Weight.Value, Up.Weight.Value, a, Gate.Bias?.Value, Up.Bias?.Value);
        Projection.ForwardAccumulate(ctx, a, residual);              // (N, C) += proj(a)
    }

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, bool accumulateDx = false)
    {
        var g = ctx.Get(_gate);
        var u = ctx.Get(_up);
        var da = ctx.Scratch(_dActivated, g.Shape, g.DType);
        Projection.Backward(ctx, dy, da);
        var dg = ctx.Scratch(_dGate, g.Shape, g.DType);
        var du = ctx.Scratch(_dUp, g.Shape, g.DType);
        dy.Backend.SwiGluBackward(g, u, da, dg, du);
        if (accumulateDx && Input is not IdentityRegion)
            throw new NotSupportedException($"{Name}: the input gradient of a tensor-parallel MLP is reduced over ranks and cannot accumulate into dx");
        var dInput = Input.GradientBuffer(ctx, dx);
        Gate.Backward(ctx, dg, dInput, accumulateDx);
        Up.Backward(ctx, du, dInput, accumulateDx: true);
        Input.Backward(ctx, dInput, dx);
    }
}
