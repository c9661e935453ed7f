using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// Llama's MLP: proj(SiLU(gate(x)) * up(x)), gate and up C to F, proj F to C. Under tensor parallelism gate and up are
/// column-parallel (one input region in front of both: one reduction of their summed input gradients) and proj row-parallel.
/// <para>
/// Training runs gate and up as one product when their weights lie back to back in the parameter storage (they are
/// declared one after the other, so they do whenever F·C is a multiple of the arena's 64-element alignment) and have no
/// biases: [g | u] (N, 2F) = x [Wg; Wu]^T, SwiGLU reading the two halves in place; backward mirrors it, dx = [dg | du]
/// [Wg; Wu] and [dWg; dWu] += [dg | du]^T x, so the MLP's input side is one product each way instead of two, and dx is
/// written once instead of written and then accumulated. The result is the two products' (tested against them in F64).
/// The product and SwiGLU are one op each way (<see cref="IBackend.GateUpSwiGlu"/> forward; backward
/// <see cref="IBackend.DownSwiGluBackward"/>, [dg | du] from the down projection's output gradient), which a backend may run as
/// one launch with SwiGLU in the product's epilogue.
/// </para>
/// </summary>
public sealed class SwiGluMlp : IFeedForward
{
    private readonly ActivationKey _gate, _up, _activated, _dActivated, _dGate, _dUp, _gateUp, _input, _dGateUp, _geluGate, _dGeluGate;

    /// <summary>Declares "<paramref name="name"/>.gate" (F, C), ".up" (F, C) and ".proj" (C, F), with biases when <paramref name="bias"/>, as <paramref name="layers"/>' plan splits them;
    /// <paramref name="geluGate"/> puts the tanh GELU on the gate in place of SiLU (GeGLU).</summary>
    public SwiGluMlp(LayerFactory layers, string name, int channels, int hidden, bool bias, bool geluGate = false)
    {
        ArgumentNullException.ThrowIfNull(layers);
        Name = name;
        GeluGate = geluGate;
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
        _gateUp = new ActivationKey(name + ".gate_up.out");
        _input = new ActivationKey(name + ".x");
        _dGateUp = new ActivationKey(name + ".gate_up.dy");
        _geluGate = new ActivationKey(name + ".gelu_gate.out");
        _dGeluGate = new ActivationKey(name + ".gelu_gate.dy");
    }

    /// <summary>Whether the gate's activation is the tanh GELU (GeGLU) rather than SiLU.</summary>
    public bool GeluGate { get; }

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

    /// <summary>
    /// Whether training runs gate and up as one product: their weights (and so their gradients, which the storages lay out
    /// alike) are adjacent (F, C) blocks of one storage, and neither has a bias.
    /// </summary>
    public bool FusesGateAndUp => !GeluGate && Gate.Bias is null && Up.Bias is null && Gate.IsPlainProduct && Up.IsPlainProduct
        && Stacked(Gate.Weight.Value, Up.Weight.Value) is not null;

    /// <summary>The (2F, C) matrix [a; b] when b follows a in their storage (both contiguous, of one shape), else null.</summary>
    private static Tensor? Stacked(Tensor a, Tensor b)
    {
        if (!ReferenceEquals(a.Storage, b.Storage) || !a.IsContiguous || !b.IsContiguous || a.Shape != b.Shape || a.Rank != 2
            || b.Offset != a.Offset + a.NumElements) return null;
        var shape = new Shape(2 * a.Size(0), a.Size(1));
        return new Tensor(a.Storage, shape, shape.ContiguousStrides(), a.Offset);
    }

    /// <inheritdoc/>
    public Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        var rows = Input.Forward(ctx, x);                            // (N, C): whole rows
        if (FusesGateAndUp)
        {
            int f = Gate.OutFeatures;
            var weights = Stacked(Gate.Weight.Value, Up.Weight.Value)!;                   // (2F, C): [Wg; Wu]
            var gu = ctx.Buffer(_gateUp, new Shape(rows.Size(0), 2 * f), rows.DType);     // (N, 2F): [g | u]
            var activated = ctx.Buffer(_activated, new Shape(rows.Size(0), f), rows.DType);   // (N, F)
            x.Backend.GateUpSwiGlu(rows, weights, gu, activated);                        // the product, then SwiGLU on its halves
            ctx.Save(_gateUp, gu);
            ctx.Save(_input, rows);
            return Projection.Forward(ctx, activated, residual);     // x's rows, (N, C)
        }
        var g = Gate.Forward(ctx, rows);                             // (N, F)
        var u = Up.Forward(ctx, rows);                               // (N, F)
        var a = ctx.Buffer(_activated, g.Shape, g.DType);            // (N, F)
        Activate(ctx, g, u, a);
        ctx.Save(_gate, g);
        ctx.Save(_up, u);
        return Projection.Forward(ctx, a, residual);                 // x's rows, (N, C)
    }

    /// <inheritdoc/>
    public void ForwardAccumulate(in PassContext ctx, Tensor x, INormalization norm, Tensor residual) => ForwardBranch(ctx, x, norm, residual, accumulate: true);

    /// <inheritdoc/>
    /// <remarks>The down product writes the output (no zero fill in front).</remarks>
    public void ForwardInto(in PassContext ctx, Tensor x, INormalization norm, Tensor output) => ForwardBranch(ctx, x, norm, output, accumulate: false);

    /// <summary>The inference MLP of norm(x) added to <paramref name="target"/> (accumulate) or written into it.</summary>
    private void ForwardBranch(in PassContext ctx, Tensor x, INormalization norm, Tensor target, bool accumulate)
    {
        var a = ctx.Buffer(_activated, new Shape(x.Size(0), Gate.OutFeatures), x.DType);   // (N, F)
        if (!GeluGate && Gate.IsPlainQuantizedProduct && Up.IsPlainQuantizedProduct && Gate.Weight.Quantized!.IsLike(Up.Weight.Quantized!))
        {
            // Quantized gate and up weights (int8, int4, FP8) with nothing added: one op, which a device may run as one
            // launch over both weights with the norm on the way (CUDA: int4 and int8 at 1 to 64 rows).
            var (gq, uq) = (Gate.Weight.Quantized!, Up.Weight.Quantized!);
            if (norm is RmsNorm rn && Input is not GatherFromSequenceParallelRegion)
                x.Backend.QuantizedMatMulSwiGlu(x, gq, uq, a, Gate.Bias?.Value, Up.Bias?.Value, rn.Prologue);
            else x.Backend.QuantizedMatMulSwiGlu(Input.Forward(ctx, norm.Forward(ctx, x)), gq, uq, a, Gate.Bias?.Value, Up.Bias?.Value);
            Project(ctx, a, target, accumulate);
            return;
        }
        if (!Gate.IsPlainProduct || !Up.IsPlainProduct)
        {
            if (norm is RmsNorm && Input is not GatherFromSequenceParallelRegion)
            {
                // Int8 weights, or unmerged adapters: gate and up through their own layers (the adapters add their low-rank
                // terms), each normalizing x in its product where it can (an int8 product's norm; an adapter normalizes first).
                Activate(ctx, Gate.ForwardNormalized(ctx, x, norm), Up.ForwardNormalized(ctx, x, norm), a);
                Project(ctx, a, target, accumulate);
                return;
            }
            // Other norms, or a sequence-parallel gather: the rows once, then gate and up through their own layers.
            var rows = Input.Forward(ctx, norm.Forward(ctx, x));
            Activate(ctx, Gate.Forward(ctx, rows), Up.Forward(ctx, rows), a);
        }
        else if (norm is RmsNorm rms && Input is not GatherFromSequenceParallelRegion)
            x.Backend.MatMulSwiGlu(x, Gate.Weight.Value, Up.Weight.Value, a, Gate.Bias?.Value, Up.Bias?.Value, rms.Prologue, GeluGate);
        else x.Backend.MatMulSwiGlu(Input.Forward(ctx, norm.Forward(ctx, x)), Gate.Weight.Value, Up.Weight.Value, a, Gate.Bias?.Value,
            Up.Bias?.Value, geluGate: GeluGate);
        Project(ctx, a, target, accumulate);                        // (N, C) += proj(a), or = it
    }

    /// <summary>The down product of the activation <paramref name="a"/> (N, F) added to <paramref name="target"/> or written into it.</summary>
    private void Project(in PassContext ctx, Tensor a, Tensor target, bool accumulate)
    {
        if (accumulate) Projection.ForwardAccumulate(ctx, a, target);
        else Projection.ForwardInto(ctx, a, target);
    }

    /// <inheritdoc/>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, bool accumulateDx = false, bool projectionBiasGradientTaken = false)
    {
        if (accumulateDx && Input is not IdentityRegion)
            throw new NotSupportedException($"{Name}: the input gradient of a tensor-parallel MLP is reduced over ranks and cannot accumulate into dx");
        if (FusesGateAndUp)
        {
            BackwardFused(ctx, dy, dx, accumulateDx, projectionBiasGradientTaken);
            return;
        }
        var g = ctx.Get(_gate);
        var u = ctx.Get(_up);
        var da = ctx.Scratch(_dActivated, g.Shape, g.DType);
        Projection.Backward(ctx, dy, da, biasGradientTaken: projectionBiasGradientTaken);
        var dg = ctx.Scratch(_dGate, g.Shape, g.DType);
        var du = ctx.Scratch(_dUp, g.Shape, g.DType);
        if (GeluGate)
        {
            var backend = dy.Backend;
            var gelu = ctx.Scratch(_geluGate, g.Shape, g.DType);     // (N, F): GELU(g), recomputed
            var daUp = ctx.Scratch(_dGeluGate, g.Shape, g.DType);    // (N, F): da u, the gradient of GELU(g)
            backend.GeluForward(g, gelu);
            backend.Multiply(da, gelu, du);
            backend.Multiply(da, u, daUp);
            backend.GeluBackward(g, daUp, dg);
        }
        else dy.Backend.SwiGluBackward(g, u, da, dg, du);
        var dInput = Input.GradientBuffer(ctx, dx);
        Gate.Backward(ctx, dg, dInput, accumulateDx);
        Up.Backward(ctx, du, dInput, accumulateDx: true);
        Input.Backward(ctx, dInput, dx);
    }

    /// <summary>a (N, F) = act(g) u: SiLU (one op), or the tanh GELU (<see cref="GeluGate"/>: GELU into a buffer, then the product).</summary>
    private void Activate(in PassContext ctx, Tensor g, Tensor u, Tensor a)
    {
        if (!GeluGate)
        {
            g.Backend.SwiGluForward(g, u, a);
            return;
        }
        var gelu = ctx.Buffer(_geluGate, g.Shape, g.DType);          // (N, F), not saved: backward recomputes it from g
        g.Backend.GeluForward(g, gelu);
        g.Backend.Multiply(gelu, u, a);
    }

    /// <summary>The backward of the one-product forward: SwiGLU's gradient into [dg | du] (N, 2F), then one product each for dx and [dWg; dWu].</summary>
    private void BackwardFused(in PassContext ctx, Tensor dy, Tensor dx, bool accumulateDx, bool projectionBiasGradientTaken)
    {
        var backend = dy.Backend;
        var gu = ctx.Get(_gateUp);                                   // (N, 2F)
        var rows = ctx.Get(_input);                                  // (N, C)
        int n = gu.Size(0), f = Gate.OutFeatures;
        var da = ctx.Scratch(_dActivated, new Shape(n, f), gu.DType);   // (N, F)
        var dgu = ctx.Scratch(_dGateUp, gu.Shape, gu.DType);         // (N, 2F): [dg | du]
        if (Projection.IsPlainProduct)                               // dgu from dy in one op (da its composed form's scratch)
            Projection.BackwardSwiGlu(ctx, dy, gu, dgu, da, projectionBiasGradientTaken);
        else
        {
            Projection.Backward(ctx, dy, da, biasGradientTaken: projectionBiasGradientTaken);
            backend.SwiGluBackward(gu.Slice(1, 0, f), gu.Slice(1, f, f), da, dgu.Slice(1, 0, f), dgu.Slice(1, f, f));
        }
        var weights = Stacked(Gate.Weight.Value, Up.Weight.Value)!;  // (2F, C)
        var dInput = Input.GradientBuffer(ctx, dx);                  // (N, C)
        backend.MatMul(dgu, weights, dInput, beta: accumulateDx ? 1.0 : 0.0);
        if (Gate.Weight.RequiresGradient)                            // frozen base weights (LoRA) take no gradient
        {
            var grads = Stacked(Gate.Weight.Grad, Up.Weight.Grad) ?? throw new InvalidOperationException(
                $"{Name}: the gate and up weights are adjacent in their storage but their gradients are not; a parameter storage must lay out both alike");
            backend.MatMul(dgu, rows, grads, transposeA: true, beta: 1.0);
        }
        Input.Backward(ctx, dInput, dx);
    }
}
