using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// y = x W^T + b with W (out, in), the layout of PyTorch's nn.Linear and of Hugging Face weights.
/// Backward: dx = dy W, dW += dy^T x, db += column sums of dy.
/// </summary>
public class Linear
{
    private readonly ActivationKey _input, _output, _inputGrad;

    /// <summary>
    /// Declares "<paramref name="name"/>.weight" (out, in), decayed, and "<paramref name="name"/>.bias" (out) when
    /// <paramref name="bias"/>, laid out by <paramref name="weightPlacement"/> and <paramref name="biasPlacement"/>
    /// (replicated by default; a column-parallel layer shards the output rows of both).
    /// </summary>
    public Linear(ParameterLayoutBuilder parameters, string name, int inFeatures, int outFeatures, bool bias,
        Placement? weightPlacement = null, Placement? biasPlacement = null)
        : this(name,
            parameters.Declare(name + ".weight", new Shape(outFeatures, inFeatures), weightDecay: true, weightPlacement),
            bias ? parameters.Declare(name + ".bias", new Shape(outFeatures), weightDecay: false, biasPlacement) : null)
    {
    }

    /// <summary>A linear layer over existing parameters (e.g. an LM head tied to the token embedding).</summary>
    public Linear(string name, Parameter weight, Parameter? bias)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Shape.Rank != 2)
            throw new ArgumentException($"{name}: weight '{weight.Name}' must be (out, in), got {weight.Shape}");
        if (bias is not null && (bias.Shape.Rank != 1 || bias.Shape[0] != weight.Shape[0]))
            throw new ArgumentException($"{name}: bias '{bias.Name}' {bias.Shape} does not match weight {weight.Shape}");
        Name = name;
        Weight = weight;
        Bias = bias;
        _input = new ActivationKey(name + ".x");
        _output = new ActivationKey(name + ".out");
        _inputGrad = new ActivationKey(name + ".dx");
    }

    /// <summary>Name prefix of the parameters and activations.</summary>
    public string Name { get; }

    /// <summary>The key under which a training forward saves its input x for the backward pass.</summary>
    protected ActivationKey InputKey => _input;

    /// <summary>The key of the pooled output buffer.</summary>
    protected ActivationKey OutputKey => _output;

    /// <summary>Weight (out, in).</summary>
    public Parameter Weight { get; }

    /// <summary>Bias (out), or null.</summary>
    public Parameter? Bias { get; }

    /// <summary>Input features this rank holds.</summary>
    public int InFeatures => Weight.Shape[1];

    /// <summary>Output features this rank holds.</summary>
    public int OutFeatures => Weight.Shape[0];

    /// <summary>
    /// y (N, out) = x (N, in) W^T + b (+ <paramref name="residual"/> (N, out), added by the product itself), in a pooled
    /// buffer of <paramref name="ctx"/>; saves x. The residual's gradient is y's, so backward is the same either way.
    /// </summary>
    public virtual Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        CheckInput(x);
        var y = ctx.Buffer(_output, new Shape(x.Size(0), OutFeatures), x.DType);
        Product(x, y, Bias?.Value, addend: residual);
        ctx.Save(_input, x);
        return y;
    }

    /// <summary>
    /// Inference: y (N, out) = norm(x) W^T + b for x (N, in), in a pooled buffer of <paramref name="ctx"/>: the norm in front of
    /// this layer applied by the product itself where the backend fuses them (<see cref="RmsNorm"/>; int8 weights too, through
    /// <see cref="IBackend.QuantizedMatMul"/>'s norm), else first. Saves nothing.
    /// </summary>
    public virtual Tensor ForwardNormalized(in PassContext ctx, Tensor x, INormalization norm)
    {
        if (norm is not RmsNorm rms) return Forward(ctx, norm.Forward(ctx, x));
        CheckInput(x);
        var y = ctx.Buffer(_output, new Shape(x.Size(0), OutFeatures), x.DType);
        if (Weight.Quantized is { } q) x.Backend.QuantizedMatMul(x, q, y, bias: Bias?.Value, norm: rms.Prologue);
        else x.Backend.RmsNormMatMul(x, rms.Prologue, Weight.Value, y, Bias?.Value);
        return y;
    }

    /// <summary>
    /// Inference: <paramref name="residual"/> (N, out) += x (N, in) W^T + b, one product that also does the residual add.
    /// Saves nothing for backward.
    /// </summary>
    public virtual void ForwardAccumulate(in PassContext ctx, Tensor x, Tensor residual)
    {
        CheckInput(x);
        Product(x, residual, Bias?.Value, beta: 1.0);
    }

    /// <summary>
    /// Inference: <paramref name="output"/> (N, out) = x (N, in) W^T + b, written: a branch that a norm reads before its
    /// residual add (Gemma's post-norms), with no zero fill in front. Saves nothing. A layer that adds more than the product
    /// (an adapter's term, a row-parallel reduction) overrides it with <see cref="ForwardIntoByAccumulating"/>.
    /// </summary>
    public virtual void ForwardInto(in PassContext ctx, Tensor x, Tensor output)
    {
        CheckInput(x);
        Product(x, output, Bias?.Value);
    }

    /// <summary><see cref="ForwardInto"/> as zeros, then <see cref="ForwardAccumulate"/>: for the layers whose accumulation adds
    /// more than the product.</summary>
    protected void ForwardIntoByAccumulating(in PassContext ctx, Tensor x, Tensor output)
    {
        x.Backend.Fill(output, 0);
        ForwardAccumulate(ctx, x, output);
    }

    /// <summary>
    /// y (N, out) = GELU(x W^T + b) in a pooled buffer of <paramref name="ctx"/>, one fused product;
    /// <paramref name="preActivation"/> (N, out) receives x W^T + b for the backward pass. Saves x.
    /// </summary>
    public virtual Tensor ForwardGelu(in PassContext ctx, Tensor x, Tensor preActivation)
    {
        CheckInput(x);
        var y = ctx.Buffer(_output, new Shape(x.Size(0), OutFeatures), x.DType);
        Product(x, y, Bias?.Value, epilogue: MatMulEpilogue.Gelu, auxiliary: preActivation);
        ctx.Save(_input, x);
        return y;
    }

    /// <summary>
    /// From dy (N, out): dW += dy^T x, db += sum of dy's rows, and, when <paramref name="dx"/> (N, in) is given,
    /// dx = dy W (or += when <paramref name="accumulateDx"/>). When <paramref name="geluPreActivation"/> (N, in) is given,
    /// this layer's input was GELU(geluPreActivation), and dx = (dy W) * GELU'(geluPreActivation) instead, fused into the product;
    /// then <paramref name="preActivationBiasGradient"/> (in), when given, receives += the column sums of dx in the same
    /// product: the bias gradient of the layer that computed the pre-activation (<see cref="TakesBiasGradientFromNext"/>).
    /// With <paramref name="biasGradientTaken"/>, this layer's bias gradient was so accumulated already, and only dW is.
    /// </summary>
    public virtual void Backward(in PassContext ctx, Tensor dy, Tensor? dx, bool accumulateDx = false, Tensor? geluPreActivation = null,
        Tensor? preActivationBiasGradient = null, bool biasGradientTaken = false)
    {
        var x = ctx.Get(_input);
        var backend = dy.Backend;
        if (Weight.Quantized is not null && Weight.RequiresGradient)
            throw new NotSupportedException($"{Name}: the weight is quantized (int8 or fp8) and cannot be trained; train LoRA adapters over it, or load the model without quantization");
        if (dy.Rank != 2 || dy.Size(0) != x.Size(0) || dy.Size(1) != OutFeatures)
            throw new ArgumentException($"{Name}: output gradient {dy.Shape} must be ({x.Size(0)}, {OutFeatures})");
        if (geluPreActivation is not null && (dx is null || accumulateDx))
            throw new ArgumentException($"{Name}: the GELU gradient is fused into dx, so it needs dx and no accumulation");
        if (preActivationBiasGradient is not null && geluPreActivation is null)
            throw new ArgumentException($"{Name}: a pre-activation's bias gradient is taken from the GELU gradient, so it needs geluPreActivation");
        if (dx is not null)
        {
            // A frozen int8 weight (LoRA over a quantized base): dx through a transient dequantized copy, this layer's alone.
            var quantized = Weight.Quantized;
            var w = quantized is null ? Weight.Value : Dequantized(quantized, dy.DType);
            try
            {
                if (geluPreActivation is null) backend.MatMul(dy, w, dx, beta: accumulateDx ? 1.0 : 0.0);
                else if (preActivationBiasGradient is null)
                    backend.MatMul(dy, w, dx, epilogue: MatMulEpilogue.GeluBackward, auxiliary: geluPreActivation);
                else
                    backend.MatMul(dy, w, dx, epilogue: MatMulEpilogue.GeluBackwardBiasGradient, auxiliary: geluPreActivation,
                        biasGradient: preActivationBiasGradient);
            }
            finally { if (quantized is not null) w.Storage.Dispose(); }
        }
        AccumulateParameterGradients(dy, x, biasGradientTaken);
    }

    /// <summary>dW += dy^T x and, unless <paramref name="biasGradientTaken"/>, db += the column sums of dy, in one product; nothing
    /// for a frozen weight.</summary>
    private void AccumulateParameterGradients(Tensor dy, Tensor x, bool biasGradientTaken)
    {
        if (!Weight.RequiresGradient) return;                       // a frozen base weight (LoRA): no weight gradient at all
        var backend = dy.Backend;
        if (Bias is null || biasGradientTaken) backend.MatMul(dy, x, Weight.Grad, transposeA: true, beta: 1.0);
        else backend.MatMul(dy, x, Weight.Grad, transposeA: true, beta: 1.0, epilogue: MatMulEpilogue.BiasGradient, biasGradient: Bias.Grad);
    }

    /// <summary>
    /// The backward of a layer whose input was SiLU(g) u, for gateUp = [g | u] (N, 2 in) (Llama's down projection): from dy (N,
    /// out), dGateUp (N, 2 in) = [dg | du], SwiGLU's gradient of dy W, in one op (<see cref="IBackend.DownSwiGluBackward"/>,
    /// <paramref name="dActivated"/> (N, in) its composed form's scratch), then dW and db as <see cref="Backward(in PassContext, Tensor, Tensor?, bool, Tensor?, Tensor?, bool)"/>.
    /// Only for a plain product (<see cref="IsPlainProduct"/>).
    /// </summary>
    /// <exception cref="InvalidOperationException">The layer adds more than x W^T + b (an unmerged adapter) or its weight is quantized.</exception>
    public virtual void BackwardSwiGlu(in PassContext ctx, Tensor dy, Tensor gateUp, Tensor dGateUp, Tensor dActivated, bool biasGradientTaken = false)
    {
        if (!IsPlainProduct || Weight.Quantized is not null)
            throw new InvalidOperationException($"{Name}: the SwiGLU gradient is fused into a plain product's input gradient; this layer adds more or is quantized");
        var x = ctx.Get(_input);
        if (dy.Rank != 2 || dy.Size(0) != x.Size(0) || dy.Size(1) != OutFeatures)
            throw new ArgumentException($"{Name}: output gradient {dy.Shape} must be ({x.Size(0)}, {OutFeatures})");
        dy.Backend.DownSwiGluBackward(dy, Weight.Value, gateUp, dGateUp, dActivated);
        AccumulateParameterGradients(dy, x, biasGradientTaken);
    }

    /// <summary>
    /// Whether the next layer's backward may accumulate this layer's bias gradient for it (from the gradient of this layer's
    /// output, which it computes anyway: <see cref="MatMulEpilogue.GeluBackwardBiasGradient"/>): this layer has a bias and
    /// computes its gradient (its weight is trained).
    /// </summary>
    public bool TakesBiasGradientFromNext => Bias is not null && Weight.RequiresGradient;

    /// <summary>
    /// Whether a caller that holds the column sums of the whole output gradient dy this layer's <see cref="Backward(in PassContext, Tensor, Tensor?, bool, Tensor?, Tensor?, bool)"/>
    /// reads may add them to the bias gradient itself and pass biasGradientTaken (a LayerNorm backward that wrote dy sums its
    /// columns on the way, <see cref="INormalization.SumsInputGradientColumns"/>): this layer has a bias and computes its
    /// gradient, and its dy is the caller's tensor. False for a row-parallel layer, whose product reads a gathered dy.
    /// </summary>
    public virtual bool TakesBiasGradientFromOutputGradientSums => TakesBiasGradientFromNext;

    /// <summary>From dy (N, out): returns dx (N, in) in a pooled gradient buffer, accumulating parameter gradients.</summary>
    public Tensor Backward(in PassContext ctx, Tensor dy)
    {
        var dx = ctx.Scratch(_inputGrad, new Shape(dy.Size(0), InFeatures), dy.DType);
        Backward(ctx, dy, dx);
        return dx;
    }

    /// <summary>
    /// Whether the layer computes exactly x W^T + b, so that fused ops may read <see cref="Weight"/> in its place (the MLP's
    /// one gate/up product, decoding's fused QKV product). False for a layer that adds more (an unmerged LoRA adapter).
    /// A quantized weight (<see cref="Parameter.Quantized"/>) is not: the fused ops read floating-point weights.
    /// </summary>
    public virtual bool IsPlainProduct => Weight.Quantized is null;

    /// <summary>
    /// Whether <see cref="ForwardAccumulate"/> adds exactly x W^T + b to its residual (a plain product, no reduction over
    /// ranks), so that a fused op may add it in the layer's place (the decode step's attention with its output product,
    /// <see cref="IBackend.TryAttentionOutputAccumulate"/>). False for a row-parallel layer, which also all-reduces.
    /// </summary>
    public virtual bool AccumulatesPlainProduct => IsPlainProduct;

    /// <summary>
    /// Whether the layer computes exactly x W^T + b over its quantized weight (<see cref="Parameter.Quantized"/>), so that a
    /// fused quantized op may read that weight in its place (the MLP's <see cref="IBackend.QuantizedMatMulSwiGlu"/>). False for
    /// a floating-point weight and for a layer that adds more (an unmerged LoRA adapter over a quantized base, QLoRA).
    /// </summary>
    public virtual bool IsPlainQuantizedProduct => Weight.Quantized is not null;

    /// <summary>
    /// y = x W^T (+ <paramref name="bias"/>) (+ beta y | + <paramref name="addend"/>), then the epilogue: the inference product
    /// over this layer's weight as it is stored, int8 (<see cref="Parameter.Quantized"/>, <see cref="IBackend.QuantizedMatMul"/>)
    /// or floating point (<see cref="IBackend.MatMul"/>).
    /// </summary>
    protected void Product(Tensor x, Tensor y, Tensor? bias, double beta = 0.0, Tensor? addend = null,
        MatMulEpilogue epilogue = MatMulEpilogue.None, Tensor? auxiliary = null)
    {
        if (Weight.Quantized is { } q) x.Backend.QuantizedMatMul(x, q, y, beta, bias, epilogue, auxiliary, addend);
        else x.Backend.MatMul(x, Weight.Value, y, transposeB: true, beta: beta, bias: bias, epilogue: epilogue, auxiliary: auxiliary, addend: addend);
    }

    /// <summary>The weight <paramref name="q"/> stands for, in a transient tensor of <paramref name="dtype"/> the caller disposes.</summary>
    protected static Tensor Dequantized(QuantizedWeight q, DType dtype)
    {
        var backend = q.Values.Storage.Backend;
        var w = backend.Allocate(q.Shape, dtype);
        backend.Dequantize(q, w);
        return w;
    }

    /// <summary>Checks x is (N, in).</summary>
    protected void CheckInput(Tensor x)
    {
        if (x.Rank != 2 || x.Size(1) != InFeatures)
            throw new ArgumentException($"{Name}: input {x.Shape} must be (N, {InFeatures})");
    }
}
