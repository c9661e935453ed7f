using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// Multi-head causal self-attention with grouped-query heads: one fused QKV projection C to
/// (H + 2K) D whose rows are the query heads, then the key heads, then the value heads; optional
/// rotary position embedding on q and k (Llama); causal attention with scale 1/sqrt(D); an
/// output projection C to C.
/// </summary>
public sealed class CausalSelfAttention
{
    private readonly ActivationKey _qkv, _attention, _logSumExp, _dAttention, _dQkv;

    /// <summary>
    /// Declares "<paramref name="name"/>.qkv" ((H+2K) D, C) and "<paramref name="name"/>.proj" (C, C), with biases when
    /// <paramref name="bias"/>; <paramref name="ropeTheta"/> is the RoPE base, or null for no rotary embedding (GPT-2).
    /// </summary>
    public CausalSelfAttention(ParameterLayoutBuilder parameters, string name, int channels, int heads, int kvHeads, bool bias, double? ropeTheta)
    {
        if (heads <= 0 || channels % heads != 0)
            throw new ArgumentException($"{name}: heads ({heads}) must divide channels ({channels})");
        if (kvHeads <= 0 || heads % kvHeads != 0)
            throw new ArgumentException($"{name}: kvHeads ({kvHeads}) must divide heads ({heads})");
        Name = name;
        Channels = channels;
        Heads = heads;
        KvHeads = kvHeads;
        HeadSize = channels / heads;
        if (ropeTheta is not null && HeadSize % 2 != 0)
            throw new ArgumentException($"{name}: RoPE needs an even head size, got {HeadSize}");
        RopeTheta = ropeTheta;
        Qkv = new Linear(parameters, name + ".qkv", channels, (heads + 2 * kvHeads) * HeadSize, bias);
        Projection = new Linear(parameters, name + ".proj", channels, channels, bias);
        _qkv = new ActivationKey(name + ".qkv.out");
        _attention = new ActivationKey(name + ".att.out");
        _logSumExp = new ActivationKey(name + ".att.lse");
        _dAttention = new ActivationKey(name + ".att.dy");
        _dQkv = new ActivationKey(name + ".qkv.dy");
    }

    /// <summary>Name prefix of the parameters and activations.</summary>
    public string Name { get; }

    /// <summary>Channels C.</summary>
    public int Channels { get; }

    /// <summary>Query heads H.</summary>
    public int Heads { get; }

    /// <summary>Key/value heads K.</summary>
    public int KvHeads { get; }

    /// <summary>Head size D.</summary>
    public int HeadSize { get; }

    /// <summary>RoPE base theta, or null without rotary embedding.</summary>
    public double? RopeTheta { get; }

    /// <summary>Fused QKV projection C to (H + 2K) D.</summary>
    public Linear Qkv { get; }

    /// <summary>Output projection C to C.</summary>
    public Linear Projection { get; }

    private double Scale => 1.0 / Math.Sqrt(HeadSize);

    /// <summary>
    /// y (B, T, C) from x (B, T, C) attending causally within the T positions (+ <paramref name="residual"/> (B*T, C), added by
    /// the output projection); saves what backward needs.
    /// </summary>
    public Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        CheckInput(x);
        int b = x.Size(0), t = x.Size(1), n = b * t;
        var backend = x.Backend;
        var qkv = Qkv.Forward(ctx, x.Reshape(n, Channels)).Reshape(b, t, Heads + 2 * KvHeads, HeadSize);
        var (q, k, v) = Split(qkv);
        if (RopeTheta is double theta) backend.Rope(qkv.Slice(2, 0, Heads + KvHeads), 0, theta);   // q and k heads, adjacent
        var att = ctx.Buffer(_attention, new Shape(b, t, Heads, HeadSize), x.DType);                  // (B, T, H, D)
        var lse = ctx.Buffer(_logSumExp, new Shape(b, Heads, t), x.DType == DType.F64 ? DType.F64 : DType.F32); // (B, H, T)
        backend.AttentionForward(q, k, v, att, lse, Scale);
        ctx.Save(_qkv, qkv);
        ctx.Save(_attention, att);
        ctx.Save(_logSumExp, lse);
        return Projection.Forward(ctx, att.Reshape(n, Channels), residual).Reshape(b, t, Channels);
    }

    /// <summary>dx (B, T, C) from dy (B, T, C) (= or +=, when <paramref name="accumulateDx"/>); parameter gradients accumulate.</summary>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, bool accumulateDx = false)
    {
        var qkv = ctx.Get(_qkv);                                     // (B, T, H+2K, D), q and k rotated
        var att = ctx.Get(_attention);                               // (B, T, H, D)
        var lse = ctx.Get(_logSumExp);                               // (B, H, T)
        int b = qkv.Size(0), t = qkv.Size(1), n = b * t;
        var backend = dy.Backend;
        var dAtt = ctx.Scratch(_dAttention, att.Shape, att.DType);  // (B, T, H, D)
        Projection.Backward(ctx, dy.Reshape(n, Channels), dAtt.Reshape(n, Channels));
        var dQkv = ctx.Scratch(_dQkv, qkv.Shape, qkv.DType);        // (B, T, H+2K, D)
        var (q, k, v) = Split(qkv);
        var (dq, dk, dv) = Split(dQkv);
        backend.AttentionBackward(q, k, v, att, dAtt, lse, dq, dk, dv, Scale);
        // RoPE is a rotation: its backward is the inverse rotation of the gradient (dq and dk heads, adjacent).
        if (RopeTheta is double theta) backend.Rope(dQkv.Slice(2, 0, Heads + KvHeads), 0, theta, inverse: true);
        Qkv.Backward(ctx, dQkv.Reshape(n, (Heads + 2 * KvHeads) * HeadSize), dx.Reshape(n, Channels), accumulateDx);
    }

    /// <summary>
    /// Inference: <paramref name="residual"/> (B*T, C) += attention of norm(x) for x (B, T, C) (the norm fused into the QKV
    /// product where the backend can), whose T new positions follow the ones in
    /// <paramref name="cache"/> (at its device-side <see cref="KvCache.Positions"/>); writes their keys and values into
    /// cache layer <paramref name="layer"/> (the caller advances the cache after the last layer). No launch depends on a
    /// host-side length, so a recorded decode step replays at any position. Saves nothing.
    /// </summary>
    public void ForwardCached(in PassContext ctx, Tensor x, INormalization norm, KvCache cache, int layer, Tensor residual)
    {
        CheckInput(x);
        int b = x.Size(0), t = x.Size(1), n = b * t;
        if (cache.Batch != b || cache.KvHeads != KvHeads || cache.HeadSize != HeadSize)
            throw new ArgumentException($"{Name}: cache (batch {cache.Batch}, {cache.KvHeads} kv heads of size {cache.HeadSize}) does not fit input {x.Shape} with {KvHeads} kv heads of size {HeadSize}");
        cache.EnsureRoom(t);
        var backend = x.Backend;
        var positions = cache.Positions;
        Tensor qkv;
        if (RopeTheta is double theta && norm is RmsNorm rms)
        {
            // Llama: the norm, the QKV product, the rotation of q and k and the append of k and v, as one op (one
            // launch on a GPU for a decode step's few rows).
            qkv = ctx.Buffer(_qkv, new Shape(b, t, Heads + 2 * KvHeads, HeadSize), x.DType);
            backend.MatMulRopeAppend(x.Reshape(n, Channels), rms.Prologue, Qkv.Weight.Value, Qkv.Bias?.Value, qkv, Heads,
                cache.KeysAndValues(layer), positions, theta);
        }
        else
        {
            qkv = Qkv.ForwardNormalized(ctx, x.Reshape(n, Channels), norm).Reshape(b, t, Heads + 2 * KvHeads, HeadSize);
            // q, k and v heads are adjacent in the fused activation: one op rotates q and k and appends k and v.
            if (RopeTheta is double th) backend.RopeAndAppend(qkv, Heads, cache.KeysAndValues(layer), positions, th);
            else backend.CopyAtPositions(qkv.Slice(2, Heads, 2 * KvHeads), cache.KeysAndValues(layer), positions);
        }
        var att = ctx.Buffer(_attention, new Shape(b, t, Heads, HeadSize), x.DType);                  // (B, T, H, D)
        backend.AttentionForwardCached(qkv.Slice(2, 0, Heads), cache.Keys(layer), cache.Values(layer), positions, att, Scale);
        Projection.ForwardAccumulate(att.Reshape(n, Channels), residual);
    }

    private (Tensor Q, Tensor K, Tensor V) Split(Tensor qkv) =>
        (qkv.Slice(2, 0, Heads), qkv.Slice(2, Heads, KvHeads), qkv.Slice(2, Heads + KvHeads, KvHeads));

    private void CheckInput(Tensor x)
    {
        if (x.Rank != 3 || x.Size(2) != Channels)
            throw new ArgumentException($"{Name}: input {x.Shape} must be (B, T, {Channels})");
    }
}
