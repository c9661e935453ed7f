using Tessera.Distributed;
using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// A mixture of experts under tensor parallelism (vLLM's FusedMoE layout): the router and the shared expert's gate are
/// replicated; every expert (and the shared expert) is split as the dense MLP is, gate and up column-parallel over its hidden
/// units F' (each rank holds F' / tp of every expert) and proj row-parallel, but with its product left unreduced
/// (<see cref="ParallelStyle.RowParallelUnreduced"/>).
/// <para>
/// Forward: the input region gives every rank the same rows (the identity, or the all-gather of the sequence-parallel rows),
/// so the replicated router computes the same logits bit for bit and every rank routes alike. Each rank adds
/// w_s · (its slice of expert_s)(x) for each token's k experts, and its slice of the gated shared expert, into a partial
/// (N, C); one all-reduce (a reduce-scatter into the rank's rows under sequence parallelism) sums the partials, where a
/// per-expert row-parallel layer would reduce E times.
/// </para>
/// <para>
/// Backward is the conjugate: the output gradient (all-gathered under sequence parallelism) reaches every rank whole; each
/// rank's experts give their part of the input gradient, which the input region reduces once. The routing weights' gradients
/// dL/dw = dy · expert(x) (and the shared gate's dL/dg = dy · shared_expert(x)) are only partial dot products on each rank,
/// since each rank's expert outputs are partial: one all-reduce of those (N, k [+ 1]) numbers makes them whole, so every
/// rank computes the whole, identical gradient of the replicated router and gate (no partial-gradient sum is needed for
/// them). Their input gradients, the same on every rank, are added by rank 0 alone before the input's reduction, as a
/// row-parallel layer adds its bias once.
/// </para>
/// </summary>
public sealed partial class SparseMoeFeedForward
{
    private readonly ITensorParallelRegion? _outputRegion;

    /// <summary>Refuses what the tensor-parallel split does not cover, naming it: ep with tp, widths tp does not divide, and a
    /// plan that does not split the experts as this layer reduces them.</summary>
    private void CheckTensorParallel(LayerFactory layers, int expertHidden, int sharedExpertHidden)
    {
        int tp = TensorParallelism!.Size;
        if (ExpertParallelism is not null)
            throw new NotSupportedException($"{Name}: expert parallelism (ep {ExpertParallelism.Size}) with tensor parallelism (tp {tp}) is not built; use one or the other");
        if (expertHidden % tp != 0)
            throw new ArgumentException($"{Name}: tp ({tp}) must divide the experts' width (ExpertHidden = {expertHidden}); each rank holds ExpertHidden / tp of every expert");
        if (sharedExpertHidden % tp != 0)
            throw new ArgumentException($"{Name}: tp ({tp}) must divide the shared expert's width (SharedExpertHidden = {sharedExpertHidden})");
        var want = new List<(string Layer, ParallelStyle Style)>
        {
            (Name, ParallelStyle.PrepareInput),
            (Name + ".router", ParallelStyle.Replicate),
            (Name + ".experts.0.gate", ParallelStyle.ColumnParallel),
            (Name + ".experts.0.up", ParallelStyle.ColumnParallel),
            (Name + ".experts.0.proj", ParallelStyle.RowParallelUnreduced),
        };
        if (sharedExpertHidden > 0)
        {
            want.Add((Name + ".shared_expert", ParallelStyle.Replicate));
            want.Add((Name + ".shared_expert.gate", ParallelStyle.ColumnParallel));
            want.Add((Name + ".shared_expert.up", ParallelStyle.ColumnParallel));
            want.Add((Name + ".shared_expert.proj", ParallelStyle.RowParallelUnreduced));
            want.Add((Name + ".shared_expert_gate", ParallelStyle.Replicate));
        }
        foreach (var (layer, style) in want)
            if (layers.StyleOf(layer) != style)
                throw new NotSupportedException($"{Name}: under tensor parallelism the plan must make '{layer}' {style}, not {layers.StyleOf(layer)} " +
                    "(the router replicated, the experts column-parallel then row-parallel unreduced; ParallelPlan.Megatron does)");
    }

    /// <summary>Training forward under tp: the input region's rows (N, C), every rank's partial of the combined output, one
    /// reduction into the output (N, C), or this rank's rows (N / tp, C) under sequence parallelism, plus the residual.</summary>
    private Tensor ForwardTensorParallel(in PassContext ctx, Tensor x, Tensor? residual)
    {
        var rows = Input.Forward(ctx, x);                            // (N, C): the same rows on every rank
        // (N, C): this rank's part of y. Under sequence parallelism it is dead once reduce-scattered (backward never reads it),
        // so it lives in a buffer every block shares, as a row-parallel layer's partial does; without, it becomes the output.
        var partial = TensorParallelism!.SequenceParallel
            ? ctx.Scratch(_partialOutput, rows.Shape, rows.DType)
            : ctx.Buffer(_partialOutput, rows.Shape, rows.DType);
        rows.Backend.Fill(partial, 0);
        var routing = Run(ctx, rows, partial);
        if (SharedExpert is not null) AddSharedExpert(ctx, rows, partial);
        var y = _outputRegion!.Forward(ctx, partial);                // (N, C) or (N / tp, C)
        if (residual is not null) rows.Backend.Accumulate(y, residual);
        LastAuxiliaryLoss = routing.AuxiliaryLoss(AuxiliaryLossCoefficient);
        return y;
    }

    /// <summary>Inference under tp: <paramref name="residual"/> (N, C) += the all-reduced partials of norm(x)'s experts.</summary>
    private void ForwardAccumulateTensorParallel(in PassContext ctx, Tensor x, INormalization norm, Tensor residual)
    {
        if (TensorParallelism!.SequenceParallel)
            throw new NotSupportedException($"{Name}: inference runs without sequence parallelism; build the model for generation with a plan that has it off");
        var rows = Input.Forward(ctx, norm.Forward(ctx, x));         // (N, C)
        var partial = ctx.Buffer(_partialOutput, rows.Shape, rows.DType);                  // (N, C)
        rows.Backend.Fill(partial, 0);
        Run(ctx, rows, partial);
        if (SharedExpert is not null) AddSharedExpert(ctx, rows, partial);
        _outputRegion!.Forward(ctx, partial);
        rows.Backend.Accumulate(residual, partial);
    }

    /// <summary>The gradient of the whole combined output (N, C): <paramref name="dy"/> itself, or under sequence parallelism
    /// the all-gather of the rows' gradients (N / tp, C).</summary>
    private Tensor OutputGradient(in PassContext ctx, Tensor dy)
    {
        if (_outputRegion is not ReduceScatterToSequenceParallelRegion) return dy;
        var whole = ctx.Scratch(_dOutputGathered, new Shape(dy.Size(0) * TensorParallelism!.Size, dy.Size(1)), dy.DType);  // (N, C)
        _outputRegion.Backward(ctx, dy, whole);
        return whole;
    }

    /// <summary>Where a replicated layer (router, shared gate) adds its input gradient: <paramref name="dIn"/> on one device and
    /// on tp rank 0, nowhere on the other ranks (the input's reduction would otherwise count it tp times).</summary>
    private Tensor? ReplicatedInputGradient(Tensor dIn) => TensorParallelism is null || TensorParallelism.Rank == 0 ? dIn : null;

    /// <summary>Sums the routing weights' gradients (N k) and the shared gate's (N, when there is one) over the tensor-parallel
    /// group in one all-reduce, in place on the host arrays.</summary>
    private void SumOverTensorParallel(in PassContext ctx, double[] weightGradients, double[]? gateGradients, DType dtype)
    {
        int count = weightGradients.Length + (gateGradients?.Length ?? 0);
        var packed = new double[count];
        weightGradients.CopyTo(packed, 0);
        gateGradients?.CopyTo(packed, weightGradients.Length);
        var device = ctx.Scratch(_tensorParallelDots, new Shape(count), dtype);           // (N k [+ N])
        Upload(ctx, packed, device);
        TensorParallelism!.Group.AllReduce(device, ReduceOp.Sum).WaitOnDevice();
        var summed = Download(ctx, device);
        Array.Copy(summed, weightGradients, weightGradients.Length);
        if (gateGradients is not null) Array.Copy(summed, weightGradients.Length, gateGradients, 0, gateGradients.Length);
    }
}
