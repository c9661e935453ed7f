using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Layers;

/// <summary>
/// Multi-head causal self-attention with grouped-query heads: one fused QKV projection C to
/// (H + 2K) D whose rows are the query heads, then the key heads, then the value heads (D is C / H unless given:
/// Qwen3 and Mistral Nemo heads are wider or narrower than that); optionally an RMSNorm over each query head and each key
/// head (Qwen3's q_norm and k_norm, weights of size D); optional
/// rotary position embedding on q and k (Llama: plain or scaled frequencies); causal attention with scale 1/sqrt(D),
/// optionally within a sliding window (Mistral); an output projection H D to C.
/// <para>
/// Under tensor parallelism (the <see cref="LayerFactory"/>'s plan) the heads are split: the QKV product is column-parallel
/// with each rank's rows its query heads, then its key heads, then its value heads (key/value heads replicated over blocks of
/// ranks when there are fewer of them than ranks), attention runs on the rank's heads alone, and the output projection is
/// row-parallel. The input region in front (identity forward, all-reduce backward; all-gather and reduce-scatter under
/// sequence parallelism) makes the input whole rows for the products.
/// </para>
/// </summary>
public sealed class CausalSelfAttention
{
    private readonly ActivationKey _qkv, _attention, _logSumExp, _dAttention, _dQkv;
    private readonly ActivationKey _qNormIn, _kNormIn, _dqNormOut, _dkNormOut, _dqNormIn, _dkNormIn;

    /// <summary>
    /// Declares "<paramref name="name"/>.qkv" ((H+2K) D, C) and "<paramref name="name"/>.proj" (C, H D), with biases when
    /// <paramref name="bias"/> (the qkv bias alone when <paramref name="qkvBias"/>: Qwen2), as <paramref name="layers"/>' plan
    /// splits them; <paramref name="rope"/> is the rotary frequencies (a bare theta converts), or null for no rotary embedding
    /// (GPT-2); <paramref name="slidingWindow"/> &gt; 0 limits each query to that many newest keys (Mistral);
    /// <paramref name="headSize"/> is D, or 0 (the default) for C / H; <paramref name="headNormEpsilon"/>, when given, adds
    /// "<paramref name="name"/>.q_norm" (D) and "<paramref name="name"/>.k_norm" (D), RMSNorms of each query and key head
    /// with that epsilon between the QKV product and RoPE (Qwen3), replicated on every rank; <paramref name="scale"/>, when
    /// given, replaces the score scale 1/sqrt(D) (Gemma's 1/sqrt(query_pre_attn_scalar)); <paramref name="softCap"/> &gt; 0 caps
    /// the scaled scores, c tanh(s / c) (Gemma 2), in every pass (a backend without capping kernels refuses it);
    /// <paramref name="headNormUnitOffset"/> applies the head norms' weights as 1 + w (Gemma 3).
    /// </summary>
    public CausalSelfAttention(LayerFactory layers, string name, int channels, int heads, int kvHeads, bool bias, RopeFrequencies? rope,
        bool qkvBias = false, int slidingWindow = 0, int headSize = 0, double? headNormEpsilon = null, double? scale = null,
        double softCap = 0, bool headNormUnitOffset = false)
    {
        ArgumentNullException.ThrowIfNull(layers);
        if (headSize < 0) throw new ArgumentException($"{name}: head size ({headSize}) must be 0 (channels / heads) or positive");
        if (heads <= 0 || (headSize == 0 && channels % heads != 0))
            throw new ArgumentException($"{name}: heads ({heads}) must divide channels ({channels})");
        if (kvHeads <= 0 || heads % kvHeads != 0)
            throw new ArgumentException($"{name}: kvHeads ({kvHeads}) must divide heads ({heads})");
        Name = name;
        Channels = channels;
        HeadSize = headSize > 0 ? headSize : channels / heads;
        if (rope is not null && HeadSize % 2 != 0)
            throw new ArgumentException($"{name}: RoPE needs an even head size, got {HeadSize}");
        rope?.Validate(HeadSize);
        if (slidingWindow < 0) throw new ArgumentException($"{name}: sliding window ({slidingWindow}) must be 0 (none) or positive");
        if (scale is { } s && !(s > 0 && !double.IsInfinity(s))) throw new ArgumentException($"{name}: score scale ({s}) must be positive and finite");
        Rope = rope;
        SlidingWindow = slidingWindow;
        Scale = scale ?? 1.0 / Math.Sqrt(HeadSize);
        if (!(softCap >= 0) || double.IsInfinity(softCap)) throw new ArgumentException($"{name}: soft cap ({softCap}) must be 0 (none) or positive and finite");
        SoftCap = softCap;
        Input = layers.InputRegion(name);
        Qkv = layers.Linear(name + ".qkv", channels, (heads + 2 * kvHeads) * HeadSize, bias || qkvBias,
            new ShardPart(heads, HeadSize), new ShardPart(kvHeads, HeadSize), new ShardPart(kvHeads, HeadSize));
        if (headNormEpsilon is { } epsilon)
        {
            // Each rank normalizes its own heads: with the QKV split over ranks each holds part of the weights' gradients.
            bool headsSplit = !Qkv.Weight.Placement.IsReplicated;
            QueryNorm = layers.HeadRmsNorm(name + ".q_norm", HeadSize, epsilon, headsSplit, headNormUnitOffset);
            KeyNorm = layers.HeadRmsNorm(name + ".k_norm", HeadSize, epsilon, headsSplit, headNormUnitOffset);
        }
        Projection = layers.Linear(name + ".proj", heads * HeadSize, channels, bias);
        // The heads this rank computes: all of them, or its share of each part of the split QKV rows.
        int shards = Qkv.Weight.ShardCount;
        Heads = Qkv.Weight.Placement.IsReplicated ? heads : new ShardPart(heads, HeadSize).LocalUnits(shards);
        KvHeads = Qkv.Weight.Placement.IsReplicated ? kvHeads : new ShardPart(kvHeads, HeadSize).LocalUnits(shards);
        _qkv = new ActivationKey(name + ".qkv.out");
        _attention = new ActivationKey(name + ".att.out");
        _logSumExp = new ActivationKey(name + ".att.lse");
        _dAttention = new ActivationKey(name + ".att.dy");
        _dQkv = new ActivationKey(name + ".qkv.dy");
        _qNormIn = new ActivationKey(name + ".q_norm.in");
        _kNormIn = new ActivationKey(name + ".k_norm.in");
        _dqNormOut = new ActivationKey(name + ".q_norm.dy");
        _dkNormOut = new ActivationKey(name + ".k_norm.dy");
        _dqNormIn = new ActivationKey(name + ".q_norm.dx");
        _dkNormIn = new ActivationKey(name + ".k_norm.dx");
    }

    /// <summary>Name prefix of the parameters and activations.</summary>
    public string Name { get; }

    /// <summary>Channels C.</summary>
    public int Channels { get; }

    /// <summary>Query heads H this rank computes (all of them on one device).</summary>
    public int Heads { get; }

    /// <summary>Key/value heads K this rank holds.</summary>
    public int KvHeads { get; }

    /// <summary>The communication in front of the QKV product (nothing on one device).</summary>
    public ITensorParallelRegion Input { get; }

    /// <summary>Head size D.</summary>
    public int HeadSize { get; }

    /// <summary>The rotary frequencies, or null without rotary embedding.</summary>
    public RopeFrequencies? Rope { get; }

    /// <summary>Sliding window (keys per query), or 0 for full causal attention.</summary>
    public int SlidingWindow { get; }

    /// <summary>Fused QKV projection C to (H + 2K) D (this rank's heads).</summary>
    public Linear Qkv { get; }

    /// <summary>RMSNorm of each query head (D), or null (Qwen3's q_norm).</summary>
    public RmsNorm? QueryNorm { get; }

    /// <summary>RMSNorm of each key head (D), or null (Qwen3's k_norm).</summary>
    public RmsNorm? KeyNorm { get; }

    /// <summary>Output projection H D to C (row-parallel under tensor parallelism).</summary>
    public Linear Projection { get; }

    /// <summary>What the scores q·k are multiplied by: 1/sqrt(D) unless the constructor was given another.</summary>
    public double Scale { get; }

    /// <summary>Soft cap of the scaled scores (Gemma 2's attn_logit_softcapping), or 0 for none.</summary>
    public double SoftCap { get; }

    /// <summary>
    /// y from x attending causally within the T positions of each sequence (+ <paramref name="residual"/>, added once, after
    /// the output projection's reduction); saves what backward needs. x is (B, T, C), or the rows (N, C) of the residual
    /// stream this rank holds (all B T of them, or its share under sequence parallelism; then <paramref name="ctx"/> must
    /// carry the batch's B and T). y has x's rows, as (N, C).
    /// </summary>
    public Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        var (b, t) = BatchOf(ctx, x);
        int n = b * t;
        var backend = x.Backend;
        var rows = Input.Forward(ctx, x.Reshape((int)(x.NumElements / Channels), Channels));        // (N, C): whole rows
        var qkv = Qkv.Forward(ctx, rows).Reshape(b, t, Heads + 2 * KvHeads, HeadSize);
        NormalizeHeads(ctx, qkv);
        var (q, k, v) = Split(qkv);
        if (Rope is { } rope) backend.Rope(qkv.Slice(2, 0, Heads + KvHeads), 0, rope);   // q and k heads, adjacent
        var att = ctx.Buffer(_attention, new Shape(b, t, Heads, HeadSize), x.DType);                  // (B, T, H, D)
        var lse = ctx.Buffer(_logSumExp, new Shape(b, Heads, t), x.DType == DType.F64 ? DType.F64 : DType.F32); // (B, H, T)
        backend.AttentionForward(q, k, v, att, lse, Scale, SlidingWindow, SoftCap);
        ctx.Save(_qkv, qkv);
        ctx.Save(_attention, att);
        ctx.Save(_logSumExp, lse);
        return Projection.Forward(ctx, att.Reshape(n, Heads * HeadSize), residual);
    }

    /// <summary>
    /// dx from dy, both shaped like the forward's x and y (= or +=, when <paramref name="accumulateDx"/>, which a split input
    /// region cannot do); parameter gradients accumulate. With <paramref name="projectionBiasGradientTaken"/> the caller has
    /// added the column sums of dy to <see cref="Projection"/>'s bias gradient already
    /// (<see cref="Linear.TakesBiasGradientFromOutputGradientSums"/>), and only its weight gradient is taken.
    /// </summary>
    public void Backward(in PassContext ctx, Tensor dy, Tensor dx, bool accumulateDx = false, bool projectionBiasGradientTaken = false)
    {
        var qkv = ctx.Get(_qkv);                                     // (B, T, H+2K, D), q and k rotated
        var att = ctx.Get(_attention);                               // (B, T, H, D)
        var lse = ctx.Get(_logSumExp);                               // (B, H, T)
        int b = qkv.Size(0), t = qkv.Size(1), n = b * t;
        var backend = dy.Backend;
        var dAtt = ctx.Scratch(_dAttention, att.Shape, att.DType);  // (B, T, H, D)
        Projection.Backward(ctx, dy.Reshape((int)(dy.NumElements / Channels), Channels), dAtt.Reshape(n, Heads * HeadSize),
            biasGradientTaken: projectionBiasGradientTaken);
        var dQkv = ctx.Scratch(_dQkv, qkv.Shape, qkv.DType);        // (B, T, H+2K, D)
        var (q, k, v) = Split(qkv);
        var (dq, dk, dv) = Split(dQkv);
        // The QKV product's bias gradient is the column sums of dQkv: without RoPE (which rotates dq and dk after this) the
        // attention backward adds them (on the way where its kernels can, IBackend.AttentionBackward), and the product takes
        // only its dW.
        var qkvBiasGradient = Rope is null && QueryNorm is null && Qkv.TakesBiasGradientFromNext ? Qkv.Bias!.Grad : null;
        backend.AttentionBackward(q, k, v, att, dAtt, lse, dq, dk, dv, Scale, SlidingWindow, qkvBiasGradient, SoftCap);
        // RoPE is a rotation: its backward is the inverse rotation of the gradient (dq and dk heads, adjacent).
        if (Rope is { } rope) backend.Rope(dQkv.Slice(2, 0, Heads + KvHeads), 0, rope, inverse: true);
        if (QueryNorm is not null)
        {
            NormalizeHeadsBackward(ctx, QueryNorm, _dqNormOut, _dqNormIn, dQkv.Slice(2, 0, Heads));
            NormalizeHeadsBackward(ctx, KeyNorm!, _dkNormOut, _dkNormIn, dQkv.Slice(2, Heads, KvHeads));
        }
        var dxRows = dx.Reshape((int)(dx.NumElements / Channels), Channels);
        if (accumulateDx && Input is not IdentityRegion)
            throw new NotSupportedException($"{Name}: the input gradient of a tensor-parallel attention is reduced over ranks and cannot accumulate into dx");
        var dInput = Input.GradientBuffer(ctx, dxRows);              // (N, C): dx itself, or the whole rows' gradient before the reduce-scatter
        Qkv.Backward(ctx, dQkv.Reshape(n, (Heads + 2 * KvHeads) * HeadSize), dInput, accumulateDx, biasGradientTaken: qkvBiasGradient is not null);
        Input.Backward(ctx, dInput, dxRows);
    }

    /// <summary>
    /// Inference: <paramref name="residual"/> (B*T, C) += attention of norm(x) for x (B, T, C) (the norm fused into the QKV
    /// product where the backend can), whose T new positions follow the ones in
    /// <paramref name="cache"/> (at its device-side <see cref="KvCache.Positions"/>); writes their keys and values into
    /// cache layer <paramref name="layer"/> (the caller advances the cache after the last layer). No launch depends on a
    /// host-side length, so a recorded decode step replays at any position. Saves nothing. With <paramref name="accumulate"/>
    /// false the output projection writes <paramref name="residual"/> instead of adding to it (a branch a post-norm reads).
    /// </summary>
    public void ForwardCached(in PassContext ctx, Tensor x, INormalization norm, KvCache cache, int layer, Tensor residual,
        bool accumulate = true)
    {
        CheckInput(x);
        if (Input is GatherFromSequenceParallelRegion)
            throw new NotSupportedException($"{Name}: decoding runs without sequence parallelism; build the model for generation with a plan that has it off");
        int b = x.Size(0), t = x.Size(1), n = b * t;
        if (cache.Batch != b || cache.KvHeads != KvHeads || cache.HeadSize != HeadSize)
            throw new ArgumentException($"{Name}: cache (batch {cache.Batch}, {cache.KvHeads} kv heads of size {cache.HeadSize}) does not fit input {x.Shape} with {KvHeads} kv heads of size {HeadSize}");
        cache.EnsureRoom(t);
        // LongRoPE: new positions rotated with the long table over keys cached with the short one are refused here, on the
        // host, whatever the backend (a GPU kernel reading its positions on the device cannot refuse them).
        Rope?.RefuseMixedLongCall(Name, cache.Length, cache.Length + t);
        var backend = x.Backend;
        var positions = cache.Positions;
        Tensor qkv;
        if (Rope is { } frequencies && norm is RmsNorm rms && Qkv.IsPlainProduct && QueryNorm is null)
        {
            // Llama: the norm, the QKV product, the rotation of q and k and the append of k and v, as one op (one
            // launch on a GPU for a decode step's few rows).
            qkv = ctx.Buffer(_qkv, new Shape(b, t, Heads + 2 * KvHeads, HeadSize), x.DType);
            backend.MatMulRopeAppend(x.Reshape(n, Channels), rms.Prologue, Qkv.Weight.Value, Qkv.Bias?.Value, qkv, Heads,
                cache.KeysAndValues(layer), positions, frequencies);
        }
        else if (Rope is { } rotation && norm is RmsNorm qrms && Qkv.IsPlainQuantizedProduct && QueryNorm is null)
        {
            // The same op over a quantized weight (one launch for an int4 or int8 decode step's few rows on a GPU).
            qkv = ctx.Buffer(_qkv, new Shape(b, t, Heads + 2 * KvHeads, HeadSize), x.DType);
            backend.QuantizedMatMulRopeAppend(x.Reshape(n, Channels), qrms.Prologue, Qkv.Weight.Quantized!, Qkv.Bias?.Value, qkv, Heads,
                cache.KeysAndValues(layer), positions, rotation);
        }
        else if (Rope is { } headRope && QueryNorm is { } queryNorm && KeyNorm is { } keyNorm)
        {
            // Qwen3, Gemma 3: the product (its norm in front where it fuses), then the head norms, the rotation and the append
            // as one op (one launch on a GPU).
            qkv = Qkv.ForwardNormalized(ctx, x.Reshape(n, Channels), norm).Reshape(b, t, Heads + 2 * KvHeads, HeadSize);
            backend.NormalizeHeadsRopeAndAppend(qkv, Heads, queryNorm.Prologue, keyNorm.Prologue, cache.KeysAndValues(layer), positions, headRope);
        }
        else
        {
            qkv = Qkv.ForwardNormalized(ctx, x.Reshape(n, Channels), norm).Reshape(b, t, Heads + 2 * KvHeads, HeadSize);
            NormalizeHeads(ctx, qkv);
            // q, k and v heads are adjacent in the fused activation: one op rotates q and k and appends k and v.
            if (Rope is { } rope) backend.RopeAndAppend(qkv, Heads, cache.KeysAndValues(layer), positions, rope);
            else backend.CopyAtPositions(qkv.Slice(2, Heads, 2 * KvHeads), cache.KeysAndValues(layer), positions);
        }
        // One new row a sequence, added to the residual stream on one rank: the backend may run the attention, the output
        // product and the add as one op (CUDA: one launch, under its FusedDecodeAttentionOutput option).
        if (accumulate && t == 1 && SoftCap == 0 && Projection.AccumulatesPlainProduct
            && backend.TryAttentionOutputAccumulate(qkv.Slice(2, 0, Heads), cache.Keys(layer), cache.Values(layer), positions,
                Projection.Weight.Value, Projection.Bias?.Value, residual, Scale, SlidingWindow))
            return;
        var att = ctx.Buffer(_attention, new Shape(b, t, Heads, HeadSize), x.DType);                  // (B, T, H, D)
        backend.AttentionForwardCached(qkv.Slice(2, 0, Heads), cache.Keys(layer), cache.Values(layer), positions, att, Scale, SlidingWindow, SoftCap);
        if (accumulate) Projection.ForwardAccumulate(ctx, att.Reshape(n, Heads * HeadSize), residual);
        else Projection.ForwardInto(ctx, att.Reshape(n, Heads * HeadSize), residual);
    }

    /// <summary>
    /// With <see cref="QueryNorm"/>: RMS-normalizes, in place, each query and each key head of <paramref name="qkv"/>
    /// (..., H + 2K, D), the rows of the QKV product before RoPE (Qwen3). The heads are copied out to (rows·H, D) and
    /// (rows·K, D) for the norm (whose input is saved for backward as a training pass saves everything) and back. Nothing
    /// without the norms.
    /// </summary>
    public void NormalizeHeads(in PassContext ctx, Tensor qkv)
    {
        if (QueryNorm is null) return;
        int axis = qkv.Rank - 2;
        if (qkv.Size(axis) != Heads + 2 * KvHeads || qkv.Size(-1) != HeadSize)
            throw new ArgumentException($"{Name}: qkv {qkv.Shape} must end in ({Heads + 2 * KvHeads}, {HeadSize})");
        NormalizeHeads(ctx, QueryNorm, _qNormIn, qkv.Slice(axis, 0, Heads));
        NormalizeHeads(ctx, KeyNorm!, _kNormIn, qkv.Slice(axis, Heads, KvHeads));
    }

    private static void NormalizeHeads(in PassContext ctx, RmsNorm norm, ActivationKey inputKey, Tensor heads)
    {
        int d = heads.Size(-1);
        var backend = heads.Backend;
        var input = ctx.Buffer(inputKey, heads.Shape, heads.DType);                                  // (..., heads, D)
        backend.Copy(heads, input);
        var normalized = norm.Forward(ctx, input.Reshape((int)(input.NumElements / d), d));         // (rows·heads, D)
        backend.Copy(normalized.Reshape(heads.Shape.ToArray()), heads);
    }

    /// <summary>dHeads (the gradient of the normalized heads, a view into dQkv) becomes the gradient of the heads before the
    /// norm; the norm's weight gradient accumulates.</summary>
    private static void NormalizeHeadsBackward(in PassContext ctx, RmsNorm norm, ActivationKey dyKey, ActivationKey dxKey, Tensor dHeads)
    {
        int d = dHeads.Size(-1);
        var backend = dHeads.Backend;
        var dy = ctx.Scratch(dyKey, dHeads.Shape, dHeads.DType);                                     // (B, T, heads, D)
        var dx = ctx.Scratch(dxKey, dHeads.Shape, dHeads.DType);
        backend.Copy(dHeads, dy);
        backend.Fill(dx, 0);                                                                          // the norm's backward adds into dx
        int rows = (int)(dy.NumElements / d);
        norm.Backward(ctx, dy.Reshape(rows, d), dx.Reshape(rows, d));
        backend.Copy(dx, dHeads);
    }

    private (Tensor Q, Tensor K, Tensor V) Split(Tensor qkv) =>
        (qkv.Slice(2, 0, Heads), qkv.Slice(2, Heads, KvHeads), qkv.Slice(2, Heads + KvHeads, KvHeads));

    /// <summary>(B, T) of the pass: from x when it is (B, T, C), else from the context.</summary>
    private (int B, int T) BatchOf(in PassContext ctx, Tensor x)
    {
        if (x.Size(-1) != Channels) throw new ArgumentException($"{Name}: input {x.Shape} must end in {Channels} channels");
        if (x.Rank == 3) return (x.Size(0), x.Size(1));
        if (ctx.Sequences <= 0)
            throw new ArgumentException($"{Name}: input rows {x.Shape} need the pass's batch shape (PassContext.WithBatch)");
        return (ctx.Sequences, ctx.SequenceLength);
    }

    private void CheckInput(Tensor x)
    {
        if (x.Rank != 3 || x.Size(2) != Channels)
            throw new ArgumentException($"{Name}: input {x.Shape} must be (B, T, {Channels})");
    }
}
