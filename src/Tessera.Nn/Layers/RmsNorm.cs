using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// y = x / sqrt(mean(x^2) + eps) * weight over the last dimension (Llama), or * (1 + weight) when
/// <see cref="UnitOffset"/> (Gemma: the stored weight is the scale's offset from one, zero for the identity).
/// </summary>
public sealed class RmsNorm : INormalization
{
    private readonly ActivationKey _input, _output, _rstd, _applied;

    /// <summary>
    /// Declares "<paramref name="name"/>.weight" (C), not decayed, laid out by <paramref name="placement"/> (replicated by
    /// default; replicated with a partial gradient in a sequence-parallel region); <paramref name="unitOffset"/> applies it
    /// as 1 + weight.
    /// </summary>
    public RmsNorm(ParameterLayoutBuilder parameters, string name, int channels, double epsilon, Placement? placement = null,
        bool unitOffset = false)
    {
        if (!(epsilon > 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), $"{name}: epsilon ({epsilon}) must be positive");
        Name = name;
        Epsilon = epsilon;
        UnitOffset = unitOffset;
        Weight = parameters.Declare(name + ".weight", new Shape(channels), weightDecay: false, placement);
        _input = new ActivationKey(name + ".x");
        _output = new ActivationKey(name + ".out");
        _rstd = new ActivationKey(name + ".rstd");
        _applied = new ActivationKey(name + ".scale");
    }

    /// <inheritdoc/>
    public string Name { get; }

    /// <inheritdoc/>
    public Parameter Weight { get; }

    /// <summary>Added to the mean square.</summary>
    public double Epsilon { get; }

    /// <summary>Whether the weight w is applied as 1 + w (Gemma) rather than as w.</summary>
    public bool UnitOffset { get; }

    /// <summary>This norm as the prologue of a product (<see cref="IBackend.RmsNormMatMul"/>), for inference: the weight as
    /// stored, with <see cref="UnitOffset"/> applied by the op (no scale is formed).</summary>
    public RmsNormPrologue Prologue => new(Weight.Value, Epsilon, UnitOffset);

    /// <summary>
    /// The scale the norm multiplies by (C), for the backward: the weight itself, or 1 + weight formed into a (C) scratch buffer
    /// shared by every pass and every block (two small ops). The dtype is the weight's, so a 16-bit model rounds 1 + w once,
    /// as the forward's unit-offset kernels round it.
    /// </summary>
    private Tensor Scale(in PassContext ctx)
    {
        if (!UnitOffset) return Weight.Value;
        var w = Weight.Value;
        var scale = ctx.Scratch(_applied, w.Shape, w.DType);        // (C)
        w.Backend.Fill(scale, 1.0);
        w.Backend.Accumulate(scale, w);
        return scale;
    }

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x)
    {
        int n = x.Size(0), c = Weight.Shape[0];
        if (x.Rank != 2 || x.Size(1) != c) throw new ArgumentException($"{Name}: input {x.Shape} must be (N, {c})");
        var y = ctx.Buffer(_output, x.Shape, x.DType);
        var rstd = ctx.Buffer(_rstd, new Shape(n), x.DType == DType.F64 ? DType.F64 : DType.F32); // (N)
        x.Backend.RmsNormForward(x, Weight.Value, y, rstd, Epsilon, UnitOffset);
        ctx.Save(_input, x);
        ctx.Save(_rstd, rstd);
        return y;
    }

    /// <inheritdoc/>
    /// <remarks>False: Llama's projections have no biases, so no caller wants the sums.</remarks>
    public bool SumsInputGradientColumns => false;

    /// <inheritdoc/>
    /// <remarks>With <see cref="UnitOffset"/> the gradient of the scale 1 + w is that of w, so the fused op's dWeight is w's.</remarks>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, Tensor? dxColumnSums = null)
    {
        if (dxColumnSums is not null)
            throw new NotSupportedException($"{Name}: RMSNorm's backward does not sum the columns of dx; take the bias gradient from the projection's own reduction");
        dy.Backend.RmsNormBackward(dy, ctx.Get(_input), Scale(ctx), ctx.Get(_rstd), dx, WeightGradient(ctx));
    }

    /// <summary>The weight's gradient; for a frozen weight (LoRA) a shared (C) scratch vector the fused op writes and nobody reads.</summary>
    private Tensor WeightGradient(in PassContext ctx) =>
        Weight.RequiresGradient ? Weight.Grad : ctx.Scratch(FrozenGradient, Weight.Shape, Weight.Value.DType);

    private static readonly ActivationKey FrozenGradient = new("norm.frozen.dweight");
}
