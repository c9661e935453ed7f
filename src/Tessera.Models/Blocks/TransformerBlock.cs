using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Models.Blocks;

/// <summary>
/// One pre-norm decoder block: r = x + attn(norm1(x)); y = r + mlp(norm2(r)). LayerNorm, learned
/// positions and a GELU MLP for GPT-2; RMSNorm, RoPE and a SwiGLU MLP for Llama; a sparse mixture of SwiGLU experts
/// (<see cref="SparseMoeFeedForward"/>) in place of the MLP when the configuration has experts (Mixtral, Qwen3-MoE, Qwen2-MoE with its shared expert).
/// Gemma adds a norm on each branch's output before its residual add (<see cref="TransformerConfig.PostNorms"/>):
/// r = x + pn1(attn(norm1(x))); y = r + pn2(mlp(norm2(r))).
/// <para>
/// With checkpointing (selective recomputation) the forward pass keeps only a copy of the block's
/// input for the micro-batch and computes in shared buffers; the backward pass first recomputes
/// the block's activations from that input, then runs the ordinary backward.
/// </para>
/// </summary>
public sealed class TransformerBlock
{
    private readonly ActivationKey _checkpoint, _dNorm1, _dNorm2, _residual, _output, _dBranch, _branch;

    /// <summary>
    /// Declares the block's parameters, named "blocks.{<paramref name="index"/>}.*", in canonical order, its layers built by
    /// <paramref name="layers"/> as its parallel plan says (plain layers on one device).
    /// </summary>
    public TransformerBlock(LayerFactory layers, TransformerConfig config, int index)
    {
        ArgumentNullException.ThrowIfNull(layers);
        config.Validate();
        Index = index;
        Name = $"blocks.{index}";
        int c = config.Embedding;
        bool llama = config.Family == ModelFamily.Llama;
        Norm1 = llama
            ? layers.RmsNorm(Name + ".norm1", c, config.NormEpsilon, config.UnitOffsetNorms)
            : layers.LayerNorm(Name + ".norm1", c, config.NormEpsilon, config.Bias);
        var attention = config.LayerAttention(index);
        Attention = new CausalSelfAttention(layers, Name + ".attn", c, config.Heads, config.EffectiveKvHeads, config.Bias,
            attention.Rope, qkvBias: config.AttentionBias, slidingWindow: attention.Window, headSize: config.HeadSize,
            headNormEpsilon: config.QkNorm ? config.NormEpsilon : null, scale: attention.Scale,
            softCap: attention.SoftCap, headNormUnitOffset: config.UnitOffsetNorms);
        if (config.PostNorms) PostAttentionNorm = layers.RmsNorm(Name + ".post_attn_norm", c, config.NormEpsilon, config.UnitOffsetNorms);
        Norm2 = llama
            ? layers.RmsNorm(Name + ".norm2", c, config.NormEpsilon, config.UnitOffsetNorms)
            : layers.LayerNorm(Name + ".norm2", c, config.NormEpsilon, config.Bias);
        Mlp = config.IsMixtureOfExperts
            ? new SparseMoeFeedForward(layers, Name + ".mlp", c, config.EffectiveExpertHidden, config.Experts, config.ExpertsPerToken,
                config.NormalizeExpertWeights, config.RouterAuxLossCoefficient, config.SharedExpertHidden, config.SharedExpertGated)
            : llama
            ? new SwiGluMlp(layers, Name + ".mlp", c, config.EffectiveHidden, config.Bias, config.GeluGate)
            : new GeluMlp(layers, Name + ".mlp", c, config.EffectiveHidden, config.Bias);
        if (config.PostNorms) PostMlpNorm = layers.RmsNorm(Name + ".post_mlp_norm", c, config.NormEpsilon, config.UnitOffsetNorms);
        Channels = c;
        _checkpoint = new ActivationKey(Name + ".checkpoint");
        _dNorm1 = new ActivationKey(Name + ".norm1.dy");
        _dNorm2 = new ActivationKey(Name + ".norm2.dy");
        _residual = new ActivationKey(Name + ".residual");
        _output = new ActivationKey(Name + ".out");
        _dBranch = new ActivationKey(Name + ".branch.dy");
        _branch = new ActivationKey(Name + ".branch.out");
    }

    /// <summary>Position of the block in the stack.</summary>
    public int Index { get; }

    /// <summary>"blocks.{Index}".</summary>
    public string Name { get; }

    /// <summary>Residual width C.</summary>
    public int Channels { get; }

    /// <summary>Norm before attention.</summary>
    public INormalization Norm1 { get; }

    /// <summary>Causal self-attention.</summary>
    public CausalSelfAttention Attention { get; }

    /// <summary>Norm before the MLP.</summary>
    public INormalization Norm2 { get; }

    /// <summary>The MLP (a <see cref="SparseMoeFeedForward"/> for a mixture of experts).</summary>
    public IFeedForward Mlp { get; }

    /// <summary>Norm of the attention output before its residual add (Gemma's post_attention_layernorm), or null.</summary>
    public RmsNorm? PostAttentionNorm { get; }

    /// <summary>Norm of the MLP output before its residual add (Gemma's post_feedforward_layernorm), or null.</summary>
    public RmsNorm? PostMlpNorm { get; }

    /// <summary>
    /// y from x, both (B, T, C), or both the rows (N, C) of the residual stream this rank holds under sequence parallelism
    /// (then <paramref name="ctx"/> carries the batch's B and T). When <paramref name="checkpoint"/> and the pass saves for
    /// backward, keeps only a copy of x and recomputes the rest in <see cref="Backward"/>; the returned tensor then lives in
    /// a shared buffer that the next block's forward overwrites.
    /// </summary>
    public Tensor Forward(in PassContext ctx, Tensor x, bool checkpoint = false)
    {
        if (x.Rank is not (2 or 3) || x.Size(-1) != Channels)
            throw new ArgumentException($"{Name}: input {x.Shape} must be (B, T, {Channels}) or rows (N, {Channels})");
        if (!checkpoint || !ctx.SaveForBackward)
        {
            // A checkpoint left by an earlier forward of this slot would make Backward recompute from stale input.
            if (ctx.SaveForBackward && !ctx.IsShared) ctx.Store.Remove(ctx.Slot, _checkpoint.Name);
            return Run(ctx, x);
        }
        var saved = ctx.Buffer(_checkpoint, x.Shape, x.DType);
        x.Backend.Copy(x, saved);
        ctx.Save(_checkpoint, saved);
        return Run(ctx.Carrying(PassContext.Transient(ctx.Store)), saved);
    }

    /// <summary>
    /// Backward in place: on entry <paramref name="dResidual"/> (shaped like the forward's x) holds dL/dy, on return dL/dx.
    /// Parameter gradients accumulate. Recomputes first when the forward pass was checkpointed.
    /// <para>
    /// The output projections' bias gradients are the column sums of the residual gradient, which the norms' backwards
    /// write (issue 18). With <paramref name="normSumsBiasGradients"/>, norm2's backward sums the columns of the dL/dr it
    /// leaves into the attention projection's bias gradient, which then skips its own reduction (where
    /// <see cref="TakesAttentionBiasGradientFromNorm"/>). Across blocks the caller carries them:
    /// <paramref name="outputGradientSums"/> (C), when given, holds the column sums of dL/dy on entry (summed by the norm
    /// above: the next block's norm1, or the final norm), which this block adds to its MLP projection's bias gradient in
    /// place of that projection's reduction (only where <see cref="TakesMlpBiasGradientFromAbove"/>); and
    /// <paramref name="inputGradientSums"/> (C), when given, receives (overwritten) the column sums of dL/dx on return, from
    /// norm1's backward, for the block below (only where <see cref="Norm1"/> sums columns). The two may be one buffer. They
    /// pass through a vector rather than straight into the other block's gradient because that block's gradients are not
    /// its own before its backward begins (ZeRO-3 binds them then).
    /// </para>
    /// </summary>
    public void Backward(in PassContext ctx, Tensor dResidual, bool normSumsBiasGradients = false, Tensor? outputGradientSums = null,
        Tensor? inputGradientSums = null)
    {
        if (outputGradientSums is not null && !TakesMlpBiasGradientFromAbove)
            throw new InvalidOperationException($"{Name}: the MLP projection's bias gradient cannot be taken from the column sums of the residual gradient (no bias, a frozen or a row-parallel projection)");
        if (inputGradientSums is not null && !Norm1.SumsInputGradientColumns)
            throw new InvalidOperationException($"{Name}: {Norm1.Name} does not sum the columns of its input gradient");
        var sums = new BiasGradientSums(normSumsBiasGradients && TakesAttentionBiasGradientFromNorm, outputGradientSums, inputGradientSums);
        if (!ctx.IsShared && ctx.Store.Contains(ctx.Slot, _checkpoint.Name))
        {
            var recompute = ctx.Carrying(PassContext.Recompute(ctx.Store));
            Run(recompute, ctx.Get(_checkpoint));
            BackwardCore(recompute, dResidual, sums);
        }
        else
        {
            BackwardCore(ctx, dResidual, sums);
        }
    }

    /// <summary>
    /// Whether norm2's backward can give the attention projection its bias gradient: norm2 sums columns (LayerNorm) and the
    /// projection has a trained bias and reads the norm's rows as its dy (not row-parallel), and no post-norm stands between.
    /// </summary>
    public bool TakesAttentionBiasGradientFromNorm =>
        PostAttentionNorm is null && Norm2.SumsInputGradientColumns && Attention.Projection.TakesBiasGradientFromOutputGradientSums;

    /// <summary>
    /// Whether the MLP projection can take its bias gradient from column sums of the residual gradient that the norm above
    /// summed (<see cref="Backward"/>'s outputGradientSums): it has a trained bias and reads those rows as its dy.
    /// </summary>
    /// <remarks>False with a post-norm: the projection's dy is then the norm's input gradient, not the residual's.</remarks>
    public bool TakesMlpBiasGradientFromAbove => PostMlpNorm is null && Mlp.Projection.TakesBiasGradientFromOutputGradientSums;

    /// <summary>
    /// Inference: the block applied in place to the residual stream x (B, T, C) of T new positions after those in
    /// <paramref name="cache"/> (x += attn(norm1(x)); x += mlp(norm2(x)), each add fused into the branch's last product);
    /// writes this block's keys and values. Returns x.
    /// </summary>
    public Tensor ForwardCached(in PassContext ctx, Tensor x, KvCache cache)
    {
        if (x.Rank != 3 || x.Size(2) != Channels || !x.IsContiguous)
            throw new ArgumentException($"{Name}: input {x.Shape} must be contiguous (B, T, {Channels})");
        int b = x.Size(0), t = x.Size(1), n = b * t;
        var xf = x.Reshape(n, Channels);                              // (N, C): the residual stream, updated in place
        if (PostAttentionNorm is null) Attention.ForwardCached(ctx, x, Norm1, cache, Index, xf);
        else
        {
            // Gemma: the branch written into a buffer, normalized, then added.
            var branch = Branch(ctx, xf);
            Attention.ForwardCached(ctx, x, Norm1, cache, Index, branch, accumulate: false);
            x.Backend.AccumulateRmsNorm(xf, branch, PostAttentionNorm.Prologue);
        }
        AccumulateMlp(ctx, xf);
        return x;
    }

    /// <summary>
    /// Inference: the residual rows <paramref name="residual"/> (N, C) += the attention branch's output from the attention
    /// heads <paramref name="heads"/> (N, H D) this rank computed: the output projection, then (Gemma) the post-attention
    /// norm. For callers that run the attention themselves (paged serving).
    /// </summary>
    public void AccumulateAttentionOutput(in PassContext ctx, Tensor heads, Tensor residual)
    {
        if (PostAttentionNorm is null)
        {
            Attention.Projection.ForwardAccumulate(ctx, heads, residual);
            return;
        }
        var branch = Branch(ctx, residual);
        Attention.Projection.ForwardInto(ctx, heads, branch);
        residual.Backend.AccumulateRmsNorm(residual, branch, PostAttentionNorm.Prologue);
    }

    /// <summary>Inference: the residual rows <paramref name="residual"/> (N, C) += the MLP branch of norm2(residual) (then, in
    /// Gemma, its post-norm).</summary>
    public void AccumulateMlp(in PassContext ctx, Tensor residual)
    {
        if (PostMlpNorm is null)
        {
            Mlp.ForwardAccumulate(ctx, residual, Norm2, residual);
            return;
        }
        var branch = Branch(ctx, residual);
        Mlp.ForwardInto(ctx, residual, Norm2, branch);
        residual.Backend.AccumulateRmsNorm(residual, branch, PostMlpNorm.Prologue);
    }

    /// <summary>An (N, C) buffer shaped like the residual rows, for a branch that is written, then normalized before its add.</summary>
    private Tensor Branch(in PassContext ctx, Tensor residual) => ctx.Buffer(_branch, residual.Shape, residual.DType);   // (N, C)

    private Tensor Run(in PassContext ctx, Tensor x)
    {
        int n = (int)(x.NumElements / Channels);
        var xf = x.Reshape(n, Channels);                              // (N, C): this rank's rows of the residual stream
        var h1 = Norm1.Forward(ctx, xf);
        // r1 = x + attn(h1) and y = r1 + mlp(norm2(r1)): each residual add done by the branch's output projection.
        var attnIn = x.Rank == 3 ? h1.Reshape(x.Size(0), x.Size(1), Channels) : h1;
        if (PostAttentionNorm is null)
        {
            var r1 = Attention.Forward(ctx, attnIn, xf);             // (N, C)
            var y = Mlp.Forward(ctx, Norm2.Forward(ctx, r1), r1);    // (N, C)
            return y.Reshape(x.Shape.ToArray());
        }
        // Gemma: each branch's output normalized before its residual add, so the adds are separate ops.
        var backend = x.Backend;
        var r = ctx.Buffer(_residual, xf.Shape, xf.DType);           // (N, C): x + pn1(attn(norm1(x)))
        backend.Add(xf, PostAttentionNorm.Forward(ctx, Attention.Forward(ctx, attnIn)), r);
        var output = ctx.Buffer(_output, xf.Shape, xf.DType);        // (N, C): r + pn2(mlp(norm2(r)))
        backend.Add(r, PostMlpNorm!.Forward(ctx, Mlp.Forward(ctx, Norm2.Forward(ctx, r))), output);
        return output.Reshape(x.Shape.ToArray());
    }

    private void BackwardCore(in PassContext ctx, Tensor dResidual, BiasGradientSums sums)
    {
        int n = (int)(dResidual.NumElements / Channels);
        var d = dResidual.Reshape(n, Channels);                       // (N, C): dL/dy, becomes dL/dr, then dL/dx
        var backend = d.Backend;
        // dL/dy is the MLP projection's dy: its column sums, when the norm above took them, are that projection's bias gradient.
        if (sums.Output is { } output) backend.Accumulate(Mlp.Projection.Bias!.Grad, output);
        var dh2 = ctx.Scratch(_dNorm2, d.Shape, d.DType);
        if (PostMlpNorm is not null)
        {
            // Gemma: dL/dy reaches the MLP through its post-norm; the residual path keeps it in d.
            var dBranch = PostNormBackward(ctx, PostMlpNorm, d);
            Mlp.Backward(ctx, dBranch, dh2);
            Norm2.Backward(ctx, dh2, d);                              // dL/dr = dL/dy + norm2's path
            var dh1Post = ctx.Scratch(_dNorm1, d.Shape, d.DType);
            Attention.Backward(ctx, PostNormBackward(ctx, PostAttentionNorm!, d), dh1Post);
            if (sums.Input is { } gemmaInput) backend.Fill(gemmaInput, 0);
            Norm1.Backward(ctx, dh1Post, d, sums.Input);             // dL/dx = dL/dr + norm1's path
            return;
        }
        Mlp.Backward(ctx, d, dh2, projectionBiasGradientTaken: sums.Output is not null);
        // dL/dr = dL/dy + norm2's path, and dL/dr is the attention projection's dy.
        Norm2.Backward(ctx, dh2, d, sums.Attention ? Attention.Projection.Bias!.Grad : null);
        var dh1 = ctx.Scratch(_dNorm1, d.Shape, d.DType);
        Attention.Backward(ctx, d, dh1, projectionBiasGradientTaken: sums.Attention);
        if (sums.Input is { } input) backend.Fill(input, 0);         // after the output sums were read: they may share a buffer
        Norm1.Backward(ctx, dh1, d, sums.Input);                      // dL/dx = dL/dr + norm1's path
    }

    /// <summary>The gradient (N, C) of a post-norm's input from that of its output <paramref name="dy"/>; the norm's weight
    /// gradient accumulates. (The norms' backward adds into dx, so the buffer is zeroed first.)</summary>
    private Tensor PostNormBackward(in PassContext ctx, RmsNorm norm, Tensor dy)
    {
        var dx = ctx.Scratch(_dBranch, dy.Shape, dy.DType);           // (N, C)
        dy.Backend.Fill(dx, 0);
        norm.Backward(ctx, dy, dx);
        return dx;
    }

    /// <summary>Which bias gradients of a block's backward come from the norms' column sums (see <see cref="Backward"/>).</summary>
    private readonly record struct BiasGradientSums(bool Attention, Tensor? Output, Tensor? Input);
}
