using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>y = x / sqrt(mean(x^2) + eps) * weight over the last dimension (Llama).</summary>
public sealed class RmsNorm : INormalization
{
    private readonly ActivationKey _input, _output, _rstd;

    /// <summary>
    /// Declares "<paramref name="name"/>.weight" (C), not decayed, laid out by <paramref name="placement"/> (replicated by
    /// default; replicated with a partial gradient in a sequence-parallel region).
    /// </summary>
    public RmsNorm(ParameterLayoutBuilder parameters, string name, int channels, double epsilon, Placement? placement = null)
    {
        if (!(epsilon > 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), $"{name}: epsilon ({epsilon}) must be positive");
        Name = name;
        Epsilon = epsilon;
        Weight = parameters.Declare(name + ".weight", new Shape(channels), weightDecay: false, placement);
        _input = new ActivationKey(name + ".x");
        _output = new ActivationKey(name + ".out");
        _rstd = new ActivationKey(name + ".rstd");
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public Parameter Weight { get; }

    /// <summary>Added to the mean square.</summary>
    public double Epsilon { get; }

    /// <summary>This norm as the prologue of a product (<see cref="IBackend.RmsNormMatMul"/>), for inference.</summary>
    public RmsNormPrologue Prologue => new(Weight.Value, Epsilon);

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x)
    {
        int n = x.Size(0), c = Weight.Shape[0];
        if (x.Rank != 2 || x.Size(1) != c) throw new ArgumentException($"{Name}: input {x.Shape} must be (N, {c})");
        var y = ctx.Buffer(_output, x.Shape, x.DType);
        var rstd = ctx.Buffer(_rstd, new Shape(n), x.DType == DType.F64 ? DType.F64 : DType.F32); // (N)
        x.Backend.RmsNormForward(x, Weight.Value, y, rstd, Epsilon);
        ctx.Save(_input, x);
        ctx.Save(_rstd, rstd);
        return y;
    }

    /// <inheritdoc/>
    /// <remarks>False: Llama's projections have no biases, so no caller wants the sums.</remarks>
    public bool SumsInputGradientColumns => false;

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, Tensor? dxColumnSums = null)
    {
        if (dxColumnSums is not null)
            throw new NotSupportedException($"{Name}: RMSNorm's backward does not sum the columns of dx; take the bias gradient from the projection's own reduction");
        dy.Backend.RmsNormBackward(dy, ctx.Get(_input), Weight.Value, ctx.Get(_rstd), dx, WeightGradient(ctx));
    }

    /// <summary>The weight's gradient; for a frozen weight (LoRA) a shared (C) scratch vector the fused op writes and nobody reads.</summary>
    private Tensor WeightGradient(in PassContext ctx) =>
        Weight.RequiresGradient ? Weight.Grad : ctx.Scratch(FrozenGradient, Weight.Shape, Weight.Value.DType);

    private static readonly ActivationKey FrozenGradient = new("norm.frozen.dweight");
}
