using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Models.Blocks;

/// <summary>
/// One pre-norm decoder block: r = x + attn(norm1(x)); y = r + mlp(norm2(r)). LayerNorm, learned
/// positions and a GELU MLP for GPT-2; RMSNorm, RoPE and a SwiGLU MLP for Llama.
/// <para>
/// With checkpointing (selective recomputation) the forward pass keeps only a copy of the block's
/// input for the micro-batch and computes in shared buffers; the backward pass first recomputes
/// the block's activations from that input, then runs the ordinary backward.
/// </para>
/// </summary>
public sealed class TransformerBlock
{
    private readonly ActivationKey _checkpoint, _dNorm1, _dNorm2;

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
            ? layers.RmsNorm(Name + ".norm1", c, config.NormEpsilon)
            : layers.LayerNorm(Name + ".norm1", c, config.NormEpsilon, config.Bias);
        Attention = new CausalSelfAttention(layers, Name + ".attn", c, config.Heads, config.EffectiveKvHeads, config.Bias,
            config.Rope, qkvBias: config.AttentionBias, slidingWindow: config.SlidingWindow);
        Norm2 = llama
            ? layers.RmsNorm(Name + ".norm2", c, config.NormEpsilon)
            : layers.LayerNorm(Name + ".norm2", c, config.NormEpsilon, config.Bias);
        Mlp = llama
            ? new SwiGluMlp(layers, Name + ".mlp", c, config.EffectiveHidden, config.Bias)
            : new GeluMlp(layers, Name + ".mlp", c, config.EffectiveHidden, config.Bias);
        Channels = c;
        _checkpoint = new ActivationKey(Name + ".checkpoint");
        _dNorm1 = new ActivationKey(Name + ".norm1.dy");
        _dNorm2 = new ActivationKey(Name + ".norm2.dy");
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

    /// <summary>The MLP.</summary>
    public IFeedForward Mlp { get; }

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
    /// </summary>
    public void Backward(in PassContext ctx, Tensor dResidual)
    {
        if (!ctx.IsShared && ctx.Store.Contains(ctx.Slot, _checkpoint.Name))
        {
            var recompute = ctx.Carrying(PassContext.Recompute(ctx.Store));
            Run(recompute, ctx.Get(_checkpoint));
            BackwardCore(recompute, dResidual);
        }
        else
        {
            BackwardCore(ctx, dResidual);
        }
    }

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
        Attention.ForwardCached(ctx, x, Norm1, cache, Index, xf);
        Mlp.ForwardAccumulate(ctx, xf, Norm2, xf);
        return x;
    }

    private Tensor Run(in PassContext ctx, Tensor x)
    {
        int n = (int)(x.NumElements / Channels);
        var xf = x.Reshape(n, Channels);                              // (N, C): this rank's rows of the residual stream
        var h1 = Norm1.Forward(ctx, xf);
        // r1 = x + attn(h1) and y = r1 + mlp(norm2(r1)): each residual add done by the branch's output projection.
        var attnIn = x.Rank == 3 ? h1.Reshape(x.Size(0), x.Size(1), Channels) : h1;
        var r1 = Attention.Forward(ctx, attnIn, xf);                 // (N, C)
        var y = Mlp.Forward(ctx, Norm2.Forward(ctx, r1), r1);        // (N, C)
        return y.Reshape(x.Shape.ToArray());
    }

    private void BackwardCore(in PassContext ctx, Tensor dResidual)
    {
        int n = (int)(dResidual.NumElements / Channels);
        var d = dResidual.Reshape(n, Channels);                       // (N, C): dL/dy, becomes dL/dr, then dL/dx
        var dh2 = ctx.Scratch(_dNorm2, d.Shape, d.DType);
        Mlp.Backward(ctx, d, dh2);
        Norm2.Backward(ctx, dh2, d);                                  // dL/dr = dL/dy + norm2's path
        var dh1 = ctx.Scratch(_dNorm1, d.Shape, d.DType);
        Attention.Backward(ctx, d, dh1);
        Norm1.Backward(ctx, dh1, d);                                  // dL/dx = dL/dr + norm1's path
    }
}
