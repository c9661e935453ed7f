using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension (GPT-2).</summary>
public sealed class LayerNorm : INormalization
{
    private readonly ActivationKey _input, _output, _mean, _rstd;

    /// <summary>Declares "NAME.weight" (C) and "NAME.bias" (C) when <paramref name="bias"/>, not decayed, laid out by <paramref name="placement"/> (replicated by default).</summary>
        public LayerNorm(ParameterLayoutBuilder parameters, string name, int channels, double epsilon, bool bias = true, Placement? placement = null)
    {
        if (!(epsilon > 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), $"{name}: epsilon ({epsilon}) must be positive");
        Name = name;
        Epsilon = epsilon;
        Weight = parameters.Declare(name + ".weight", new Shape(channels), weightDecay: false, placement);
        Bias = bias ? parameters.Declare(name + ".bias", new Shape(channels), weightDecay: false, placement) : null;
        _input = new ActivationKey(name + ".x");
        _output = new ActivationKey(name + ".out");
        _mean = new ActivationKey(name + ".mean");
        _rstd = new ActivationKey(name + ".rstd");
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public Parameter Weight { get; }

    /// <summary>Shift (C), or null.</summary>
    public Parameter? Bias { get; }

    /// <summary>Added to the variance.</summary>
    public double Epsilon { get; }

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x)
    {
        int n = x.Size(0), c = Weight.Shape[0];
        if (x.Rank != 2 || x.Size(1) != c) throw new ArgumentException($"{Name}: input {x.Shape} must be (N, {c})");
        var y = ctx.Buffer(_output, x.Shape, x.DType);
        var statsType = x.DType == DType.F64 ? DType.F64 : DType.F32;
        var mean = ctx.Buffer(_mean, new Shape(n), statsType);   // (N)
        var rstd = ctx.Buffer(_rstd, new Shape(n), statsType);   // (N)
        x.Backend.LayerNormForward(x, Weight.Value, Bias?.Value, y, mean, rstd, Epsilon);
        ctx.Save(_input, x);
        ctx.Save(_mean, mean);
        ctx.Save(_rstd, rstd);
        return y;
    }

    /// <inheritdoc/>
    public bool SumsInputGradientColumns => true;

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, Tensor? dxColumnSums = null)
    {
        // A frozen norm (LoRA) writes its (C) weight gradient into a shared scratch vector that nobody reads, and no bias gradient.
        var dWeight = Weight.RequiresGradient ? Weight.Grad : ctx.Scratch(FrozenGradient, Weight.Shape, Weight.Value.DType);
        dy.Backend.LayerNormBackward(dy, ctx.Get(_input), Weight.Value, ctx.Get(_mean), ctx.Get(_rstd), dx, dWeight,
            Weight.RequiresGradient ? Bias?.Grad : null, dxColumnSums);
    }

    private static readonly ActivationKey FrozenGradient = new("norm.frozen.dweight");
}
