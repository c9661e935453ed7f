using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Adapters;

/// <summary>
/// A linear layer with LoRA adapters (PEFT's <c>lora.Linear</c>): y = x W^T + b + s · dropout(x) A_p^T B_p^T on the output
/// rows of each part p (the whole layer, or the query, key or value rows of a fused QKV), s = alpha / r. It is the layer the
/// <see cref="Parallel.LayerFactory"/> builds in place of a plain <see cref="Linear"/> when <see cref="LoraOptions"/> target it,
/// so the model code does not change. W and b are the base layer's parameters (frozen when the model's arena is
/// <see cref="ArenaStorage.Frozen"/>: no weight gradient is computed); A and B live in the adapters' own arena.
/// <para>
/// Backward, from dy (N, out) and dy_p its rows of part p: dx = dy W (+ Σ_p (dh_p A_p) ⊙ mask), dh_p = s · dy_p B_p (N, r),
/// dB_p += s · dy_p^T h_p with h_p = dropout(x) A_p^T (N, r) saved by the forward, dA_p += dh_p^T dropout(x).
/// </para>
/// <para>
/// Under tensor parallelism the same code runs on each rank's share (cut by the <see cref="LayerFactory"/> as the base weight
/// is). Over a column-parallel layer x is whole, A replicated and B the rank's rows: y's local rows are exact, and dh_p (hence
/// dA) is the rank's part of a sum over the ranks, which the trainer all-reduces (dx is partial anyway, reduced by the
/// sub-layer's input region). Over a <see cref="RowParallelLinear"/> x is the rank's input columns and A its columns of A, so
/// h_r = x_r A_r^T is a part of h = sum_r h_r; since the term s h B^T is linear in h, each rank adds s h_r B^T into its partial
/// output before the layer's own all-reduce (or reduce-scatter) sums the ranks: no collective of its own. Backward reads the
/// whole dy (gathered under sequence parallelism as the base's), so dh = s dy B is whole, dA_r = dh^T x_r is exactly the
/// rank's columns and dx_r its slice, while dB = s dy^T h_r is the rank's part, all-reduced by the trainer. A row-parallel
/// layer's dropout mask is the rank's columns of the mask one device draws (the whole (N, in) mask is drawn on every rank from
/// the same stream), a column-parallel one's the whole mask: every rank drops what one device would.
/// </para>
/// </summary>
public sealed class LoraLinear : Linear, IPartialOutputTerm
{
    private readonly RowParallelLinear? _rowParallel;               // the base when its input columns are split, or null
    private readonly int _globalIn, _inStart;                        // the whole input's features, and this rank's first
    private readonly ActivationKey[] _hidden;                       // per part: h_p (N, r)
    private readonly ActivationKey _mask, _dropped, _dHidden, _dDropped;
    private readonly int _dropoutSeed;
    private double[] _hostMask = [];

    /// <summary>Adapts <paramref name="layer"/> (a plain, replicated linear layer) with <paramref name="parts"/>.</summary>
    public LoraLinear(Linear layer, IReadOnlyList<LoraPart> parts, LoraOptions options, int dropoutSeed)
        : base(layer?.Name ?? throw new ArgumentNullException(nameof(layer)), layer.Weight, layer.Bias)
    {
        ArgumentNullException.ThrowIfNull(parts);
        ArgumentNullException.ThrowIfNull(options);
        _rowParallel = layer as RowParallelLinear;
        if (layer.GetType() != typeof(Linear) && _rowParallel is null)
            throw new NotSupportedException($"{layer.Name}: LoRA adapts plain, column-parallel and row-parallel linear layers; this one is a {layer.GetType().Name}");
        _globalIn = layer.Weight.GlobalShape[1];
        _inStart = _rowParallel is null ? 0 : layer.Weight.Placement.LocalRanges(_globalIn, layer.Weight.ShardIndex, layer.Weight.ShardCount)[0].Start;
        if (parts.Count == 0) throw new ArgumentException($"{layer.Name}: a LoRA layer needs at least one adapter");
        foreach (var p in parts)
        {
            if (p.RowStart < 0 || p.Rows <= 0 || p.RowStart + p.Rows > OutFeatures)
                throw new ArgumentException($"{Name}: adapter '{p.Target.Name}' covers rows [{p.RowStart}, {p.RowStart + p.Rows}) outside the layer's {OutFeatures}");
            if (p.A.Shape != new Shape(options.Rank, InFeatures) || p.B.Shape != new Shape(p.Rows, options.Rank))
                throw new ArgumentException($"{Name}: adapter '{p.Target.Name}' has A {p.A.Shape} and B {p.B.Shape}; expected ({options.Rank}, {InFeatures}) and ({p.Rows}, {options.Rank})");
        }
        Parts = parts;
        Rank = options.Rank;
        Scaling = options.Scaling;
        Dropout = options.Dropout;
        _dropoutSeed = dropoutSeed;
        _hidden = parts.Select(p => new ActivationKey($"{Name}.lora.{p.Target.Name}.h")).ToArray();
        _mask = new ActivationKey(Name + ".lora.mask");
        _dropped = new ActivationKey(Name + ".lora.x");
        _dHidden = new ActivationKey(Name + ".lora.dh");
        _dDropped = new ActivationKey(Name + ".lora.dx");
        if (_rowParallel is not null) _rowParallel.PartialOutputTerm = this;
    }

    /// <summary>The seed of this layer's dropout masks (a layer sharing another's A draws that layer's masks: the same seed).</summary>
    public int DropoutSeed => _dropoutSeed;

    /// <summary>The adapters, each on its rows of the output.</summary>
    public IReadOnlyList<LoraPart> Parts { get; }

    /// <summary>The rank r.</summary>
    public int Rank { get; }

    /// <summary>alpha / r.</summary>
    public double Scaling { get; }

    /// <summary>Dropout probability on the low-rank path's input in training passes.</summary>
    public double Dropout { get; }

    /// <summary>
    /// Dropout masks drawn so far: the layer's random state. Mask k is drawn from a generator seeded by (the layer's seed, k),
    /// so a run restored with this count draws the masks an uninterrupted run would (part of a LoRA checkpoint).
    /// </summary>
    public long MasksDrawn { get; set; }

    /// <summary>Whether training passes apply dropout (when <see cref="Dropout"/> &gt; 0); turn off for evaluation. Default true.</summary>
    public bool DropoutEnabled { get; set; } = true;

    /// <summary>Whether the adapters are folded into W (<see cref="Merge"/>): the layer is then a plain product and cannot be trained.</summary>
    public bool Merged { get; private set; }

    /// <inheritdoc/>
    public override bool IsPlainProduct => Merged;

    /// <inheritdoc/>
    /// <remarks>False over a row-parallel base, whose accumulation also all-reduces.</remarks>
    public override bool AccumulatesPlainProduct => _rowParallel is null && IsPlainProduct;

    /// <inheritdoc/>
    public override bool IsPlainQuantizedProduct => base.IsPlainQuantizedProduct && Merged;

    private bool Dropping(in PassContext ctx) => ctx.SaveForBackward && Dropout > 0 && DropoutEnabled;

    /// <inheritdoc/>
    public override Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        if (_rowParallel is not null) return _rowParallel.Forward(ctx, x, residual);   // adds the low-rank term to its partial output (AddTo)
        var y = base.Forward(ctx, x, residual);                     // (N, out) = x W^T + b (+ residual); saves x
        if (!Merged) AddLowRank(ctx, x, y);
        return y;
    }

    /// <inheritdoc/>
    public override Tensor ForwardNormalized(in PassContext ctx, Tensor x, INormalization norm)
    {
        if (_rowParallel is not null) return _rowParallel.ForwardNormalized(ctx, x, norm);
        return Merged ? base.ForwardNormalized(ctx, x, norm) : Forward(ctx, norm.Forward(ctx, x));
    }

    /// <inheritdoc/>
    /// <remarks>Zeros, then <see cref="ForwardAccumulate"/>, which adds more than the product.</remarks>
    public override void ForwardInto(in PassContext ctx, Tensor x, Tensor output) => ForwardIntoByAccumulating(ctx, x, output);

    /// <inheritdoc/>
    public override void ForwardAccumulate(in PassContext ctx, Tensor x, Tensor residual)
    {
        if (_rowParallel is not null)
        {
            _rowParallel.ForwardAccumulate(ctx, x, residual);        // adds the low-rank term to its partial output (AddTo)
            return;
        }
        base.ForwardAccumulate(ctx, x, residual);                   // residual (N, out) += x W^T + b
        if (!Merged) AddLowRank(ctx, x, residual);
    }

    /// <summary>
    /// Row-parallel: this rank's partial output (N, out) += s · dropout(x_r) A_r^T B^T before the layer's reduction sums the
    /// ranks (exact: the term is linear in h = sum_r x_r A_r^T).
    /// </summary>
    void IPartialOutputTerm.AddTo(in PassContext ctx, Tensor x, Tensor partial)
    {
        if (!Merged) AddLowRank(ctx, x, partial);
    }

    /// <inheritdoc/>
    public override bool TakesBiasGradientFromOutputGradientSums => _rowParallel is null && base.TakesBiasGradientFromOutputGradientSums;

    /// <summary>
    /// GPT-2's MLP up projection: <paramref name="preActivation"/> (N, out) = x W^T + b + s dropout(x) A^T B^T, then y = GELU of
    /// it. The low-rank term must enter before the GELU, so the base product cannot fuse it (cuBLASLt's GELU epilogue): two steps.
    /// </summary>
    public override Tensor ForwardGelu(in PassContext ctx, Tensor x, Tensor preActivation)
    {
        if (_rowParallel is not null) return _rowParallel.ForwardGelu(ctx, x, preActivation);
        if (Merged) return base.ForwardGelu(ctx, x, preActivation);
        CheckInput(x);
        var backend = x.Backend;
        Product(x, preActivation, Bias?.Value);                                               // (N, out), int8 base or not
        AddLowRank(ctx, x, preActivation);
        var y = ctx.Buffer(OutputKey, preActivation.Shape, x.DType);                          // (N, out)
        backend.GeluForward(preActivation, y);
        ctx.Save(InputKey, x);
        return y;
    }

    /// <summary>y[:, part rows] += s · dropout(x) A^T B^T for every part; saves what backward needs in a training pass.</summary>
    private void AddLowRank(in PassContext ctx, Tensor x, Tensor y)
    {
        CheckInput(x);
        var backend = x.Backend;
        int n = x.Size(0);
        var input = x;                                               // (N, in)
        if (Dropping(ctx))
        {
            var mask = ctx.Buffer(_mask, x.Shape, x.DType);          // (N, in): 0 or 1 / (1 - p)
            FillMask(mask);
            var dropped = ctx.Buffer(_dropped, x.Shape, x.DType);    // (N, in)
            backend.Multiply(x.IsContiguous ? x : backend.Contiguous(x), mask, dropped);
            ctx.Save(_mask, mask);
            ctx.Save(_dropped, dropped);
            input = dropped;
        }
        for (int i = 0; i < Parts.Count; i++)
        {
            var p = Parts[i];
            var h = ctx.Buffer(_hidden[i], new Shape(n, Rank), x.DType);   // (N, r)
            backend.MatMul(input, p.A.Value, h, transposeB: true);
            backend.MatMul(h, p.B.Value, y.Slice(1, p.RowStart, p.Rows), transposeB: true, alpha: Scaling, beta: 1.0);
            ctx.Save(_hidden[i], h);
        }
    }

    /// <inheritdoc/>
    /// <remarks>The adapters train only unmerged, where the layer is no plain product and its MLP takes the unfused backward
    /// (<see cref="Backward(in PassContext, Tensor, Tensor?, bool, Tensor?, Tensor?, bool)"/>); merged, this refuses as that does.</remarks>
    public override void BackwardSwiGlu(in PassContext ctx, Tensor dy, Tensor gateUp, Tensor dGateUp, Tensor dActivated, bool biasGradientTaken = false)
    {
        if (Merged) throw new InvalidOperationException($"{Name}: the adapters are merged into the weight; unmerge them before training");
        base.BackwardSwiGlu(ctx, dy, gateUp, dGateUp, dActivated, biasGradientTaken);   // refuses: not a plain product
    }

    /// <inheritdoc/>
    public override void Backward(in PassContext ctx, Tensor dy, Tensor? dx, bool accumulateDx = false, Tensor? geluPreActivation = null,
        Tensor? preActivationBiasGradient = null, bool biasGradientTaken = false)
    {
        if (Merged) throw new InvalidOperationException($"{Name}: the adapters are merged into the weight; unmerge them before training");
        if (geluPreActivation is not null && (dx is null || accumulateDx))
            throw new ArgumentException($"{Name}: the GELU gradient is applied to dx, so it needs dx and no accumulation");
        if (preActivationBiasGradient is not null && geluPreActivation is null)
            throw new ArgumentException($"{Name}: a pre-activation's bias gradient is taken from the GELU gradient, so it needs geluPreActivation");
        // Row-parallel: the whole output gradient (all-gathered under sequence parallelism, as the base layer's own backward does).
        if (_rowParallel is not null) dy = _rowParallel.OutputGradient(ctx, dy);
        // With a GELU in front (GPT-2's MLP projection), dx = (dy W + the low-rank terms) * GELU'(h): the base product cannot
        // apply GELU' (cuBLASLt's DGELU epilogue) before the low-rank terms are in, so it is applied last.
        base.Backward(ctx, dy, dx, accumulateDx, biasGradientTaken: biasGradientTaken);   // dx = dy W (or +=); dW only when W is trained
        var backend = dy.Backend;
        bool dropping = Dropping(ctx);
        var input = dropping ? ctx.Get(_dropped) : ctx.Get(InputKey);   // (N, in)
        int n = input.Size(0);
        for (int i = 0; i < Parts.Count; i++)
        {
            var p = Parts[i];
            var dyPart = dy.Slice(1, p.RowStart, p.Rows);           // (N, rows), rows `out` apart
            var h = ctx.Get(_hidden[i]);                             // (N, r)
            backend.MatMul(dyPart, h, p.B.Grad, transposeA: true, alpha: Scaling, beta: 1.0);   // dB (rows, r) += s dy_p^T h
            var dh = ctx.Scratch(_dHidden, new Shape(n, Rank), dy.DType);                      // (N, r) = s dy_p B
            backend.MatMul(dyPart, p.B.Value, dh, alpha: Scaling);
            backend.MatMul(dh, input, p.A.Grad, transposeA: true, beta: 1.0);                 // dA (r, in) += dh^T input
            if (dx is null) continue;
            if (!dropping) backend.MatMul(dh, p.A.Value, dx, beta: 1.0);                      // dx += dh A
            else
            {
                var dDropped = ctx.Scratch(_dDropped, input.Shape, dy.DType);                 // (N, in) = (dh A) ⊙ mask
                backend.MatMul(dh, p.A.Value, dDropped);
                backend.Multiply(dDropped, ctx.Get(_mask), dDropped);
                backend.Accumulate(dx, dDropped);
            }
        }
        if (geluPreActivation is null) return;
        backend.GeluBackward(geluPreActivation, dx!, dx!);           // elementwise, in place
        if (preActivationBiasGradient is not null) backend.SumRows(dx!, preActivationBiasGradient);
    }

    /// <summary>
    /// Folds the adapters into the weight: W[part rows] += s · B A (enqueued), after which the layer is a plain product
    /// (<see cref="IsPlainProduct"/>) that decoding's fused ops may read. Writes the value the layers read; a weight with an
    /// F32 master (a trained BF16 base) is refused, since the two would disagree.
    /// </summary>
    public void Merge() => Fold(+1, merge: true);

    /// <summary>Subtracts what <see cref="Merge"/> added (exact up to rounding: 1e-15 relative in F64, a BF16 rounding in BF16).</summary>
    public void Unmerge() => Fold(-1, merge: false);

    private void Fold(int sign, bool merge)
    {
        if (Merged == merge) throw new InvalidOperationException($"{Name}: the adapters are {(merge ? "already" : "not")} merged");
        if (Weight.Master is not null || Weight.Storage is ParameterArena { LowWords: not null })
            throw new NotSupportedException($"{Name}: the weight has an F32 master (separate or split) beside its {Weight.Value.DType} value; merge into a frozen base (ArenaStorage.Frozen) or an F32/F64 model");
        AddProducts(Weight.Value, sign);
        Merged = merge;
    }

    /// <summary>
    /// Adds s · B A into <paramref name="weight"/> (out, in) on each part's rows: a copy of this layer's weight (the whole, unsplit
    /// tensor) on the adapters' backend, folded by the very products <see cref="Merge"/> uses, so the result holds the bits Merge
    /// would leave in W. For a loader that merges each weight as it reads it; the layer itself stays unmerged.
    /// </summary>
    public void MergeInto(Tensor weight)
    {
        ArgumentNullException.ThrowIfNull(weight);
        if (weight.Shape != new Shape(OutFeatures, InFeatures))
            throw new ArgumentException($"{Name}: a weight of shape {weight.Shape} cannot take the adapters of a ({OutFeatures}, {InFeatures}) layer");
        AddProducts(weight, +1);
    }

    private void AddProducts(Tensor w, int sign)                     // w (out, in)
    {
        foreach (var p in Parts)
            w.Backend.MatMul(p.B.Value, p.A.Value, w.Slice(0, p.RowStart, p.Rows), alpha: sign * Scaling, beta: 1.0);   // (rows, in) += s B A
    }

    /// <summary>The next mask of 0 and 1 / (1 - p) from this layer's stream (host-drawn: seeded and backend-independent).</summary>
    /// <remarks>
    /// A row-parallel rank's x holds its input columns [in_start, in_start + in): it draws the whole (N, in_global) mask one device
    /// would, from the same stream, and keeps its columns, so the ranks together drop exactly what one device drops.
    /// </remarks>
    private void FillMask(Tensor mask)
    {
        long count = mask.NumElements;
        int rows = mask.Size(0), columns = mask.Size(1);
        long drawn = (long)rows * _globalIn;
        if (_hostMask.Length < drawn) _hostMask = new double[drawn];
        double keep = 1.0 / (1.0 - Dropout);
        var random = new Random(unchecked((int)SplitMix64.Next(((ulong)(uint)_dropoutSeed << 32) ^ (ulong)MasksDrawn)));   // (seed, mask index) spread over the seeds
        MasksDrawn++;
        for (long i = 0; i < drawn; i++) _hostMask[i] = random.NextDouble() < Dropout ? 0.0 : keep;
        if (columns != _globalIn)                                    // this rank's columns, packed in place (row i's start never passes its source)
            for (int i = 0; i < rows; i++)
                Array.Copy(_hostMask, (long)i * _globalIn + _inStart, _hostMask, (long)i * columns, columns);
        var values = _hostMask.AsSpan(0, (int)count);
        var backend = mask.Backend;
        switch (mask.DType)
        {
            case DType.F64: backend.CopyFromHost<double>(values, mask); break;
            case DType.BF16:
                var b = new BFloat16[count];
                for (int i = 0; i < b.Length; i++) b[i] = BFloat16.FromSingle((float)values[i]);
                backend.CopyFromHost<BFloat16>(b, mask);
                break;
            default:
                var f = new float[count];
                for (int i = 0; i < f.Length; i++) f[i] = (float)values[i];
                backend.CopyFromHost<float>(f, mask);
                break;
        }
    }

}
