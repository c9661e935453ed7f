using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Nn.Adapters;

/// <summary>
/// A linear layer that serves several LoRA adapters unmerged over its base weight, each row of a step with its own adapter or
/// none (<see cref="MultiLoraBatch"/>): y = x W^T + b, then, on the output rows of each part p (the whole layer, or the query, key
/// or value rows of a fused QKV), y_p += (x A_p^T ⊙ M_p) Bt_p. The batch has S slots of rank up to R (vLLM's --max-loras and
/// --max-lora-rank): A_p (S·R, in) holds slot s's A in rows [s·R, s·R + r) and Bt_p (S·R, rows) its B transposed in the same rows,
/// zeros elsewhere (a smaller rank, an empty slot), allocated once when the model is built, so loading or unloading an adapter
/// only writes its own rows. The step's mask M_p (N, S·R) holds alpha/r of row i's adapter in that adapter's columns and zeros
/// elsewhere. So every part costs two products over S·R columns whatever the step's mix, without a gather or scatter of rows
/// (small beside the base product while S·R stays far below the layer's width). Inference only; built by the
/// <see cref="LayerFactory"/> in place of the layers the served targets name.
/// <para>
/// Under tensor parallelism (S-LoRA's and vLLM's sharding) each rank holds its share of every slot, cut as the base weight is:
/// over a column-parallel layer (q/k/v, gate/up; output rows split) each rank keeps A whole and the rows of B of its own output
/// rows, cut part by part as the fused QKV's heads are (a key/value head replicated over a block of ranks has its B rows on
/// each of them), so x A^T is computed on every rank (small) and each rank adds its rows. Over a <see cref="RowParallelLinear"/>
/// (o_proj, down_proj; input columns split) each rank keeps the columns of A of its input slice and B whole: x_r A_r^T is one
/// rank's part of the rank-r hidden, and since (sum_r x_r A_r^T ⊙ M) Bt = sum_r (x_r A_r^T ⊙ M) Bt, each rank adds its term to
/// its partial output before the layer's own all-reduce sums the ranks (no collective of its own; vLLM's RowParallelLinearWithLoRA
/// does the same, while its fully sharded variant after S-LoRA all-reduces the hidden to shard B too). Slots and masks are the
/// same on every rank.
/// </para>
/// </summary>
public sealed class MultiLoraLinear : Linear, IPartialOutputTerm
{
    private readonly MultiLoraBatch _batch;
    private readonly RowParallelLinear? _rowParallel;                // the wrapped layer when its input is split, or null
    private readonly int _globalIn, _inStart;                        // A's columns: the whole input's, and this rank's first
    private readonly int _partCount;                                 // the layer's output parts (a fused QKV's q, k, v), or 1
    private readonly Stack[] _stacks;                                // per part some served target adapts
    private readonly ActivationKey _hidden;

    private sealed class Stack(int part, int start, int rows, int globalRows, (int Start, int Length)[] runs, int slots)
    {
        public int Part { get; } = part;                             // -1: a whole-layer adapter on a layer declared in parts (GPT-2's c_attn)
        public int Start { get; } = start;                           // first local output row
        public int Rows { get; } = rows;                             // local output rows
        public int GlobalRows { get; } = globalRows;                 // rows of the adapter's B for this part
        public (int Start, int Length)[] Runs { get; } = runs;       // the runs of B's rows this rank holds, in local order
        public Tensor? A { get; set; }                               // (S·R, in): this rank's input columns
        public Tensor? Bt { get; set; }                              // (S·R, rows): this rank's output rows
        public (int Rank, double Scaling)[] Slots { get; } = new (int, double)[slots];   // rank 0: empty
        public IReadOnlyList<(int Adapter, int Column, int Rank, double Scaling)> Entries { get; set; } = [];
        public string Signature { get; set; } = "";
    }

    /// <summary>
    /// Serves the slots of <paramref name="batch"/> over <paramref name="layer"/> (a plain linear layer, replicated or with its output
    /// rows split over the tensor-parallel ranks, or a <see cref="RowParallelLinear"/>) whose global output rows are
    /// <paramref name="outputParts"/> (a fused QKV's query, key and value heads, dealt to the ranks part by part; none for a layer
    /// not declared in parts), on the parts the batch's targets name for this layer. Each rank's share of an adapter is cut as its
    /// weight's placement says.
    /// </summary>
    public MultiLoraLinear(Linear layer, IReadOnlyList<ShardPart> outputParts, MultiLoraBatch batch)
        : base(layer?.Name ?? throw new ArgumentNullException(nameof(layer)), layer.Weight, layer.Bias)
    {
        ArgumentNullException.ThrowIfNull(outputParts);
        ArgumentNullException.ThrowIfNull(batch);
        _rowParallel = layer as RowParallelLinear;
        if (layer.GetType() != typeof(Linear) && _rowParallel is null)
            throw new NotSupportedException($"{layer.Name}: multi-LoRA serves adapters over plain, column-parallel or row-parallel linear layers; this one is a {layer.GetType().Name}");
        var weight = layer.Weight;
        var placement = weight.Placement;
        int ranks = weight.ShardCount, index = weight.ShardIndex;
        bool rowsSplit = !placement.IsReplicated && ranks > 1 && placement.Dim == 0;
        bool columnsSplit = !placement.IsReplicated && ranks > 1 && placement.Dim == 1;
        int globalOut = weight.GlobalShape[0];
        _globalIn = weight.GlobalShape[1];
        _inStart = columnsSplit ? placement.LocalRanges(_globalIn, index, ranks)[0].Start : 0;
        var parts = outputParts.Count == 0 ? [new ShardPart(globalOut, 1)] : outputParts.ToArray();
        if (parts.Sum(q => q.Extent) != globalOut) throw new ArgumentException($"{Name}: output parts of {string.Join(" + ", parts)} rows do not make its {globalOut}");
        // Per part: its first global row, its first local row, and the run of its rows this rank holds (within the part).
        var partOf = new (int GlobalStart, int LocalStart, int Extent, (int Start, int Length) Run)[parts.Length];
        for (int i = 0, global = 0, local = 0; i < parts.Length; i++)
        {
            var q = parts[i];
            var run = rowsSplit ? (q.FirstUnit(index, ranks) * q.UnitSize, q.LocalUnits(ranks) * q.UnitSize) : (0, q.Extent);
            partOf[i] = (global, local, q.Extent, run);
            global += q.Extent;
            local += run.Item2;
        }
        if (partOf.Sum(p => p.Run.Length) != OutFeatures) throw new ArgumentException($"{Name}: this rank's rows of the output parts {string.Join(" + ", parts)} do not make its {OutFeatures}");
        _batch = batch;
        _partCount = parts.Length;
        _stacks = batch.Targets.Where(t => t.Matches(Name)).Select(t => PartOf(t.Part, parts.Length)).Distinct().Order()
            .Select(p => p < 0
                ? new Stack(p, 0, OutFeatures, globalOut, partOf.Select(x => (x.GlobalStart + x.Run.Start, x.Run.Length)).ToArray(), batch.Slots)
                : new Stack(p, partOf[p].LocalStart, partOf[p].Run.Length, partOf[p].Extent, [partOf[p].Run], batch.Slots)).ToArray();
        _hidden = new ActivationKey(Name + ".multilora.h");
        if (_rowParallel is not null) _rowParallel.PartialOutputTerm = this;
        batch.Add(this);
    }

    /// <summary>How many (slot, part) pairs hold an adapter now (an adapter targeting two parts counts once a part).</summary>
    public int AdapterParts => _stacks.Sum(s => s.Slots.Count(x => x.Rank > 0));

    private int PartOf(int? part, int parts)
    {
        int p = part ?? (parts == 1 ? 0 : -1);                       // -1: a whole-layer adapter on a layer declared in parts (GPT-2's c_attn)
        if (part is not null && (p < 0 || p >= parts)) throw new ArgumentException($"{Name}: the layer has {parts} output parts, not a part {p}");
        return p;
    }

    /// <summary>Allocates the stacks (zeros) on <paramref name="backend"/> in <paramref name="dtype"/>; again only if the dtype changes.</summary>
    internal void Allocate(IBackend backend, DType dtype)
    {
        int columns = _batch.Slots * _batch.MaxRank;
        foreach (var s in _stacks)
        {
            if (s.A is not null && s.A.DType == dtype) continue;
            if (s.A is not null) throw new InvalidOperationException($"{Name}: the stacks are allocated in {s.A.DType} already, not {dtype}");
            s.A = backend.Zeros(new Shape(columns, InFeatures), dtype);
            s.Bt = backend.Zeros(new Shape(columns, s.Rows), dtype);
        }
    }

    /// <summary>
    /// Writes an adapter into slot <paramref name="slot"/> on output part <paramref name="part"/> (null: the whole layer): A (r, in)
    /// and B (rows, r) row-major host values of the whole layer (every rank is given the whole adapter and keeps its share: the
    /// columns of A of its input slice, the rows of B of its output rows), scaled by <paramref name="scaling"/> (alpha / r), r at
    /// most the batch's <see cref="MultiLoraBatch.MaxRank"/>; the slot's other rows are zeroed. Copied at once into the stacks
    /// (allocated first with <see cref="MultiLoraBatch.Allocate"/>): call it between steps.
    /// </summary>
    public void Attach(int slot, int? part, int rank, double scaling, double[] a, double[] b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        if (slot < 0 || slot >= _batch.Slots) throw new ArgumentOutOfRangeException(nameof(slot), $"{Name}: slot {slot} is none of the batch's {_batch.Slots}");
        int p = PartOf(part, _partCount);
        var stack = _stacks.FirstOrDefault(s => s.Part == p)
            ?? throw new ArgumentException($"{Name}: part {p} is not among the served targets of this layer; an adapter on it cannot be served");
        int rows = stack.Rows, inFeatures = InFeatures, maxRank = _batch.MaxRank, globalRows = stack.GlobalRows;
        if (rank <= 0 || rank > maxRank) throw new ArgumentException($"{Name}: rank {rank} does not fit a slot of rank {maxRank}");
        if (a.Length != rank * _globalIn || b.Length != globalRows * rank)
            throw new ArgumentException($"{Name}: slot {slot} gets {a.Length} A and {b.Length} B values; expected ({rank}, {_globalIn}) and ({globalRows}, {rank})");
        if (stack.A is null || stack.Bt is null) throw new InvalidOperationException($"{Name}: the stacks are not allocated (MultiLoraBatch.Allocate)");
        var slotA = new double[maxRank * inFeatures];                // (R, in / tp under a row-parallel layer): A's columns here, then zero rows
        for (int j = 0; j < rank; j++) Array.Copy(a, j * _globalIn + _inStart, slotA, j * inFeatures, inFeatures);
        var slotBt = new double[maxRank * rows];                     // (R, rows): B's rows here transposed, then zero rows
        int local = 0;
        foreach (var (start, length) in stack.Runs)
            for (int r = start; r < start + length; r++, local++)
                for (int j = 0; j < rank; j++) slotBt[j * rows + local] = b[r * rank + j];
        var backend = stack.A.Backend;
        CopyFromHost(backend, slotA, stack.A.Slice(0, slot * maxRank, maxRank));
        CopyFromHost(backend, slotBt, stack.Bt.Slice(0, slot * maxRank, maxRank));
        stack.Slots[slot] = (rank, scaling);
        Rebuild(stack);
    }

    /// <summary>Empties slot <paramref name="slot"/> on every part: its rows zeroed, its mask entries gone.</summary>
    internal void Detach(int slot)
    {
        int maxRank = _batch.MaxRank;
        foreach (var stack in _stacks)
        {
            if (stack.Slots[slot].Rank == 0) continue;
            var backend = stack.A!.Backend;
            CopyFromHost(backend, new double[maxRank * InFeatures], stack.A.Slice(0, slot * maxRank, maxRank));
            CopyFromHost(backend, new double[maxRank * stack.Rows], stack.Bt!.Slice(0, slot * maxRank, maxRank));
            stack.Slots[slot] = default;
            Rebuild(stack);
        }
    }

    private void Rebuild(Stack stack)
    {
        int maxRank = _batch.MaxRank;
        stack.Entries = stack.Slots.Select((x, slot) => (slot, slot * maxRank, x.Rank, x.Scaling)).Where(e => e.Rank > 0).ToList();
        stack.Signature = string.Join("|", stack.Entries.Select(e => $"{e.Adapter}:{e.Rank}:{e.Scaling:R}"));
        _batch.ForgetMasks();
    }

    /// <inheritdoc/>
    public override bool IsPlainProduct => base.IsPlainProduct && !_batch.Active;

    /// <inheritdoc/>
    /// <remarks>False over a row-parallel base, whose accumulation also all-reduces.</remarks>
    public override bool AccumulatesPlainProduct => _rowParallel is null && IsPlainProduct;

    /// <inheritdoc/>
    public override bool IsPlainQuantizedProduct => base.IsPlainQuantizedProduct && !_batch.Active;

    /// <inheritdoc/>
    public override Tensor Forward(in PassContext ctx, Tensor x, Tensor? residual = null)
    {
        if (_rowParallel is not null) return _rowParallel.Forward(ctx, x, residual);   // adds the low-rank terms to its partial output
        var y = base.Forward(ctx, x, residual);                      // (N, out) = x W^T + b (+ residual)
        AddLowRank(ctx, x, y);
        return y;
    }

    /// <inheritdoc/>
    public override Tensor ForwardNormalized(in PassContext ctx, Tensor x, INormalization norm)
    {
        if (_rowParallel is not null) return _rowParallel.ForwardNormalized(ctx, x, norm);
        if (!_batch.Active) return base.ForwardNormalized(ctx, x, norm);
        return Forward(ctx, norm.Forward(ctx, x));                   // the low-rank terms read the normalized rows
    }

    /// <inheritdoc/>
    /// <remarks>Zeros, then <see cref="ForwardAccumulate"/>, which adds more than the product.</remarks>
    public override void ForwardInto(in PassContext ctx, Tensor x, Tensor output) => ForwardIntoByAccumulating(ctx, x, output);

    /// <inheritdoc/>
    public override void ForwardAccumulate(in PassContext ctx, Tensor x, Tensor residual)
    {
        if (_rowParallel is not null)
        {
            _rowParallel.ForwardAccumulate(ctx, x, residual);        // adds the low-rank terms to its partial output
            return;
        }
        base.ForwardAccumulate(ctx, x, residual);                    // residual (N, out) += x W^T + b
        AddLowRank(ctx, x, residual);
    }

    /// <summary>GPT-2's MLP up projection: the low-rank terms enter before the GELU, so an adapter step runs it in two steps.</summary>
    public override Tensor ForwardGelu(in PassContext ctx, Tensor x, Tensor preActivation)
    {
        if (_rowParallel is not null) return _rowParallel.ForwardGelu(ctx, x, preActivation);
        if (!_batch.Active) return base.ForwardGelu(ctx, x, preActivation);
        CheckInput(x);
        Product(x, preActivation, Bias?.Value);                                                // (N, out)
        AddLowRank(ctx, x, preActivation);
        var y = ctx.Buffer(OutputKey, preActivation.Shape, x.DType);                          // (N, out)
        x.Backend.GeluForward(preActivation, y);
        return y;
    }

    /// <inheritdoc/>
    public override void Backward(in PassContext ctx, Tensor dy, Tensor? dx, bool accumulateDx = false, Tensor? geluPreActivation = null,
        Tensor? preActivationBiasGradient = null, bool biasGradientTaken = false) =>
        throw new NotSupportedException($"{Name}: served LoRA adapters are for inference; train one adapter at a time (tessera train --lora)");

    /// <inheritdoc/>
    public override void BackwardSwiGlu(in PassContext ctx, Tensor dy, Tensor gateUp, Tensor dGateUp, Tensor dActivated, bool biasGradientTaken = false) =>
        throw new NotSupportedException($"{Name}: served LoRA adapters are for inference; train one adapter at a time (tessera train --lora)");

    /// <summary>
    /// Under a row-parallel layer: this rank's partial output (N, out) += (x_r A_r^T ⊙ M) Bt, summed over the ranks by the layer's
    /// own reduction (exact: the mask scales rows and the products are linear, so the sum of the ranks' terms is the whole term).
    /// </summary>
    void IPartialOutputTerm.AddTo(in PassContext ctx, Tensor x, Tensor partial) => AddLowRank(ctx, x, partial);

    /// <summary>y[:, part rows] += (x A^T ⊙ M) Bt for every part with an adapter in the step's rows.</summary>
    private void AddLowRank(in PassContext ctx, Tensor x, Tensor y)
    {
        if (!_batch.Active || _stacks.Length == 0) return;
        int n = x.Size(0), columns = _batch.Slots * _batch.MaxRank;
        if (n != _batch.Rows) throw new InvalidOperationException($"{Name}: the step has {_batch.Rows} rows set but the input has {n}");
        var backend = x.Backend;
        foreach (var stack in _stacks)
        {
            if (!stack.Entries.Any(e => _batch.Uses(e.Adapter))) continue;
            if (stack.A!.DType != x.DType) throw new InvalidOperationException($"{Name}: the stacks are {stack.A.DType} but the input is {x.DType}");
            var mask = _batch.Mask(backend, x.DType, stack.Entries, columns, stack.Signature);    // (N, S·R)
            var h = ctx.Buffer(_hidden, new Shape(n, columns), x.DType);                          // (N, S·R)
            backend.MatMul(x, stack.A, h, transposeB: true);
            backend.Multiply(h, mask, h);
            backend.MatMul(h, stack.Bt!, y.Slice(1, stack.Start, stack.Rows), beta: 1.0);
        }
    }

    /// <summary>
    /// Copies host values into <paramref name="target"/>, rounded to its dtype (F64, F32, BF16 or F16, the dtypes a served model
    /// computes in): the adapters' stacked factors and the step's masks.
    /// </summary>
    internal static void CopyFromHost(IBackend backend, double[] values, Tensor target)
    {
        switch (target.DType)
        {
            case DType.F64: backend.CopyFromHost<double>(values, target); break;
            case DType.F32: backend.CopyFromHost<float>(Array.ConvertAll(values, v => (float)v), target); break;
            case DType.BF16: backend.CopyFromHost<BFloat16>(Array.ConvertAll(values, v => BFloat16.FromSingle((float)v)), target); break;
            case DType.F16: backend.CopyFromHost<Half>(Array.ConvertAll(values, v => (Half)v), target); break;
            default: throw new NotSupportedException($"multi-LoRA: adapters are served in F64, F32, BF16 or F16, not {target.DType}");
        }
    }
}
