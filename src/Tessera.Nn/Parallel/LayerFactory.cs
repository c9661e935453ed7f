using Tessera.Distributed.Mesh;
using Tessera.Nn.Adapters;
using Tessera.Nn.Layers;
using Tessera.Tensors;

namespace Tessera.Nn.Parallel;

/// <summary>
/// Builds a model's layers as its <see cref="ParallelPlan"/> says, so that the model code stays written for one device: the
/// model asks for "blocks.3.attn.qkv" as a linear layer of its global shape, and gets a plain <see cref="Linear"/> on one
/// device, a column-parallel one (its output rows split over the tensor-parallel group) or a
/// <see cref="RowParallelLinear"/> under tensor parallelism. It also gives each sub-layer its input region (the conjugate
/// communication op in front of its first products), lays out sequence-parallel norms, and records the parameters whose
/// gradients are partial on each rank (<see cref="PartialGradients"/>), which the trainer sums.
/// </summary>
public sealed class LayerFactory
{
    private readonly List<PartialGradient> _partials = [];
    private readonly List<LoraLinear> _adapted = [];
    private readonly List<PartialGradient> _adapterPartials = [];

    /// <summary>
    /// A factory declaring into <paramref name="parameters"/>, for one device or, with <paramref name="tensorParallelism"/>, one
    /// tensor-parallel rank. With <paramref name="lora"/>, the linear layers it targets are built as <see cref="LoraLinear"/>s
    /// whose adapters are declared into <see cref="AdapterParameters"/> (applied from outside, as the parallel plan is).
    /// </summary>
    /// <param name="parameters">Where parameters are declared.</param>
    /// <param name="tensorParallelism">This rank's tensor parallelism, or null.</param>
    /// <param name="lora">LoRA adapters to train, or null.</param>
    /// <param name="servedAdapters">LoRA adapters to serve unmerged (multi-LoRA): the layers their targets name are built as
    /// <see cref="MultiLoraLinear"/>s reading that batch's rows (over the column- or row-parallel layer the plan asks for, each
    /// rank holding its share of the adapters); or null.</param>
    /// <param name="expertParallelism">This rank's expert parallelism (mixture-of-experts layers declare only the rank's experts), or null.</param>
    public LayerFactory(ParameterLayoutBuilder parameters, TensorParallelism? tensorParallelism = null, LoraOptions? lora = null,
        MultiLoraBatch? servedAdapters = null, ExpertParallelism? expertParallelism = null)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        Parameters = parameters;
        ExpertParallelism = expertParallelism is { Size: > 1 } ? expertParallelism : null;
        TensorParallelism = tensorParallelism is { Size: > 1 } ? tensorParallelism : null;
        Lora = lora?.Validate();
        if (Lora is not null) AdapterParameters = new ParameterLayoutBuilder(parameters.Mesh, parameters.Coordinate);
        if (Lora is not null && servedAdapters is not null)
            throw new ArgumentException("LayerFactory: adapters are either trained (lora) or served (servedAdapters), not both");
        ServedAdapters = servedAdapters;
    }

    /// <summary>This rank's expert parallelism, or null (a group of one rank counts as none).</summary>
    public ExpertParallelism? ExpertParallelism { get; }

    /// <summary>
    /// The names of the parameters held by expert-parallel ranks apart (each rank its own experts'): their gradients are reduced
    /// over the expert-data-parallel group only, and each rank's count toward the global gradient norm is summed over the
    /// expert-parallel group. Empty without expert parallelism.
    /// </summary>
    public IReadOnlyCollection<string> ExpertParameters => _experts;

    /// <summary>Records <paramref name="name"/> as an expert-parallel parameter (<see cref="ExpertParameters"/>).</summary>
    public void MarkExpertParameter(string name) => _experts.Add(name);

    private readonly HashSet<string> _experts = [];

    /// <summary>The LoRA adapters served unmerged over the model (multi-LoRA), or null.</summary>
    public MultiLoraBatch? ServedAdapters { get; }

    private bool Served(string name) => ServedAdapters is not null && ServedAdapters.Targets.Any(t => t.Matches(name));

    /// <summary>The LoRA adapters to attach, or null.</summary>
    public LoraOptions? Lora { get; }

    /// <summary>Where LoRA adapters are declared (their own layout, apart from the frozen model's), or null without LoRA.</summary>
    public ParameterLayoutBuilder? AdapterParameters { get; }

    /// <summary>The layers built with LoRA adapters, in declaration order.</summary>
    public IReadOnlyList<LoraLinear> AdaptedLayers => _adapted;

    /// <summary>A factory for one device, over a fresh parameter layout.</summary>
    public static LayerFactory OneDevice() => new(new ParameterLayoutBuilder());

    /// <summary>Where parameters are declared.</summary>
    public ParameterLayoutBuilder Parameters { get; }

    /// <summary>This rank's tensor parallelism, or null on one device (a group of one rank counts as one device).</summary>
    public TensorParallelism? TensorParallelism { get; }

    /// <summary>Parameter ranges whose gradients each rank computes only in part, to be summed over their groups.</summary>
    public IReadOnlyList<PartialGradient> PartialGradients => _partials;

    /// <summary>Whether the residual stream is split along the sequence.</summary>
    public bool SequenceParallel => TensorParallelism?.SequenceParallel ?? false;

    /// <summary>The style the plan gives layer <paramref name="name"/> (Replicate on one device).</summary>
    public ParallelStyle StyleOf(string name) => TensorParallelism?.Plan.StyleOf(name) ?? ParallelStyle.Replicate;

    /// <summary>
    /// A linear layer "<paramref name="name"/>" of global shape (in, out). Its output may be declared in parts
    /// (<paramref name="outputParts"/>: the query, key and value heads of a fused QKV), which a column-parallel split deals
    /// out part by part so that each rank's rows are its heads of each part, contiguous.
    /// </summary>
    public Linear Linear(string name, int inFeatures, int outFeatures, bool bias, params ShardPart[] outputParts)
    {
        var style = StyleOf(name);
        switch (style)
        {
            case ParallelStyle.ColumnParallel:
                var placement = Placement.Shard(MeshAxis.Tp, 0, outputParts);
                var column = new Linear(Parameters, name, inFeatures, outFeatures, bias, placement, placement);
                RecordReplicas(column, outputParts);
                return Served(name) ? new MultiLoraLinear(column, outputParts, ServedAdapters!) : Adapt(column, outputParts);
            case ParallelStyle.RowParallel:
                var row = new RowParallelLinear(Parameters, name, inFeatures, outFeatures, bias, TensorParallelism!);
                return Served(name) ? new MultiLoraLinear(row, [], ServedAdapters!) : Adapt(row, outputParts);
            case ParallelStyle.RowParallelUnreduced:
                // No bias: it would be added on every rank and then summed tp times (a reduced layer adds it on rank 0 only).
                if (bias) throw new NotSupportedException($"parallel plan: layer '{name}' is {style} (its partial sums reduced by the layer around it) and cannot have a bias");
                if (Served(name)) throw new NotSupportedException($"served LoRA: layer '{name}' is {style}; adapters are not served on a mixture of experts' experts");
                if (Lora is not null && Lora.TargetsOf(name).Any())
                    throw new NotSupportedException($"LoRA: layer '{name}' is a tensor-parallel mixture of experts' expert ({style}); LoRA on a mixture of experts is trained without --tp only");
                return new Linear(Parameters, name, inFeatures, outFeatures, bias: false, Placement.Shard(MeshAxis.Tp, 1));
            case ParallelStyle.Replicate:
                var plain = new Linear(Parameters, name, inFeatures, outFeatures, bias);
                if (Served(name))
                    return new MultiLoraLinear(plain, outputParts, ServedAdapters!);
                return Adapt(plain, outputParts);
            case var other:
                throw new InvalidOperationException($"parallel plan: layer '{name}' is a linear layer; style {other} does not apply to it");
        }
    }

    /// <summary>
    /// The adapters of the LoRA options' targets that match <paramref name="layer"/>, declared into
    /// <see cref="AdapterParameters"/> as "{layer}.{target}.lora_A" (r, in) and "...lora_B" (rows, r); the layer itself when none match.
    /// Adapters go to a unit named after the model's unit of the layer ("blocks.3"), so a data-parallel strategy that trains
    /// them follows the model's pass order unit by unit (buckets, ZeRO-3's gathers); units without adapters have none.
    /// <para>
    /// Under tensor parallelism the adapters are cut as the base weight is (the cut served adapters use): over a column-parallel
    /// layer (output rows split) A is replicated and B holds the rank's output rows of its part, dealt as the weight's rows are
    /// (a fused QKV's heads part by part; key/value heads replicated over a block of ranks have their B rows on each replica);
    /// over a <see cref="RowParallelLinear"/> (input columns split) A holds the rank's input columns and B is replicated. The
    /// replicated factor's gradient is partial on each rank (column: dA = dh^T x with dh = s dy_p B_p summed over the ranks'
    /// output rows; row: dB = s dy^T h with h = sum_r x_r A_r^T), so it is recorded in <see cref="AdapterPartialGradients"/>
    /// and summed over the tensor-parallel group once per step, as a sequence-parallel norm's is.
    /// </para>
    /// </summary>
    private Linear Adapt(Linear layer, ShardPart[] outputParts)
    {
        if (Lora is null) return layer;
        var tp = TensorParallelism;
        bool rowParallel = layer is RowParallelLinear;
        bool columnParallel = !rowParallel && !layer.Weight.Placement.IsReplicated;
        int globalIn = layer.Weight.GlobalShape[1];
        var parts = new List<LoraPart>();
        int dropoutSeed = unchecked(Lora.Seed * 1_000_003 + _adapted.Count);
        foreach (var target in Lora.TargetsOf(layer.Name))
        {
            if (Parameters.CurrentUnit is string unit && AdapterParameters!.CurrentUnit != unit) AdapterParameters.BeginUnit(unit);
            // The adapter's rows of the global output, as parts dealt over the ranks: its part of a fused QKV, or all the layer's parts.
            int globalOut = layer.Weight.GlobalShape[0];
            ShardPart[] bParts;
            if (target.Part is int part)
            {
                if (part < 0 || part >= outputParts.Length)
                    throw new ArgumentException($"LoRA target '{target.Name}': layer '{layer.Name}' has {outputParts.Length} output parts, not a part {part}");
                bParts = [outputParts[part]];
            }
            else bParts = outputParts.Length > 0 ? outputParts : [new ShardPart(globalOut, 1)];
            int start = 0, rows = layer.OutFeatures, globalRows = bParts.Sum(q => q.Extent);
            if (target.Part is int p0)
            {
                int ranks = columnParallel ? tp!.Size : 1;
                start = outputParts.Take(p0).Sum(q => q.LocalUnits(ranks) * q.UnitSize);
                rows = outputParts[p0].LocalUnits(ranks) * outputParts[p0].UnitSize;
            }
            string prefix = target.Part is null ? layer.Name : $"{layer.Name}.{target.Name}";
            var aPlacement = rowParallel ? Placement.Shard(MeshAxis.Tp, 1)
                : columnParallel ? Placement.ReplicatedWithPartialGradient(MeshAxis.Tp) : null;
            var bPlacement = rowParallel ? Placement.ReplicatedWithPartialGradient(MeshAxis.Tp)
                : columnParallel ? Placement.Shard(MeshAxis.Tp, 0, outputParts.Length > 0 ? bParts : []) : null;
            Parameter a;
            if (target.OwnerOf(layer.Name) is string ownerName)
            {
                // One adapter over layers the checkpoint fuses (Phi-3's gate_up_proj): the owner's A (its gradient gets both
                // layers' terms) and its dropout stream (the same masks, drawn in lockstep); this layer declares its B rows only.
                var owner = _adapted.LastOrDefault(l => l.Name == ownerName);
                var ownerPart = owner?.Parts.FirstOrDefault(p => p.Target == target)
                    ?? throw new ArgumentException($"LoRA target '{target.Name}': layer '{layer.Name}' shares the A of '{ownerName}', which is not adapted by it before this layer");
                if (ownerPart.A.GlobalShape != new Shape(Lora.Rank, globalIn) || ownerPart.A.Shape != new Shape(Lora.Rank, layer.InFeatures) ||
                    !ownerPart.A.Placement.Equals(aPlacement ?? Placement.Replicated))
                    throw new ArgumentException($"LoRA target '{target.Name}': layer '{layer.Name}' takes {layer.InFeatures} inputs but '{ownerName}' {ownerPart.A.Shape[1]}; they cannot share A");
                if (Lora.TargetsOf(layer.Name).Count() != 1)
                    throw new ArgumentException($"LoRA target '{target.Name}': layer '{layer.Name}' shares '{ownerName}''s adapter and cannot take other targets");
                a = ownerPart.A;
                dropoutSeed = owner!.DropoutSeed;
            }
            else
            {
                a = AdapterParameters!.Declare(prefix + ".lora_A", new Shape(Lora.Rank, globalIn), weightDecay: true, aPlacement);
                if (columnParallel) AdapterPartial(a);
            }
            var b = AdapterParameters!.Declare(prefix + ".lora_B", new Shape(globalRows, Lora.Rank), weightDecay: true, bPlacement);
            if (rowParallel) AdapterPartial(b);
            if (columnParallel) RecordReplicas(b, bParts, Lora.Rank, _adapterPartials);
            if (b.Shape != new Shape(rows, Lora.Rank))
                throw new InvalidOperationException($"LoRA: {b.Name} holds {b.Shape} on this rank but its layer's rows of the part are {rows}");
            parts.Add(new LoraPart(target, start, rows, a, b));
        }
        if (parts.Count == 0) return layer;
        var adapted = new LoraLinear(layer, parts, Lora, dropoutSeed);
        _adapted.Add(adapted);
        return adapted;
    }

    /// <summary>
    /// The adapter parameters whose gradients each tensor-parallel rank computes only in part (A over column-parallel layers,
    /// B over row-parallel ones, the B rows of key/value heads replicated over a block of ranks), to be summed over their groups
    /// once per step before the optimizer reads them. Empty without tensor parallelism or LoRA.
    /// </summary>
    public IReadOnlyList<PartialGradient> AdapterPartialGradients => _adapterPartials;

    private void AdapterPartial(Parameter parameter) =>
        _adapterPartials.Add(new PartialGradient(parameter, 0, parameter.NumElements, TensorParallelism!.Group));

    /// <summary>
    /// The adapters declared so far, allocated on <paramref name="backend"/> in <paramref name="dtype"/> (values zero); throws,
    /// naming it, when a target matched no layer. Call once the model has declared every layer.
    /// </summary>
    public LoraAdapters BuildAdapters(IBackend backend, DType dtype)
    {
        if (Lora is null) throw new InvalidOperationException("LayerFactory: no LoRA options were given");
        foreach (var target in Lora.Targets)
            if (!_adapted.Any(l => l.Parts.Any(p => p.Target == target)))
                throw new ArgumentException($"LoRA target '{target.Name}' ({target.LayerPattern}{(target.Part is int i ? $", part {i}" : "")}) names no layer of this model");
        return new LoraAdapters(Lora, AdapterParameters!.Build(), _adapted, backend, dtype);
    }

    /// <summary>A linear layer over an existing weight (an LM head tied to the token table): column-parallel exactly when the table is split.</summary>
    public Linear TiedLinear(string name, Parameter weight) => new(name, weight, bias: null);

    /// <summary>An embedding table "<paramref name="name"/>" (rows, dim): vocabulary-parallel, sequence-parallel (replicated, partial gradient) or replicated.</summary>
    public Embedding Embedding(string name, int rows, int dim)
    {
        switch (StyleOf(name))
        {
            case ParallelStyle.VocabParallel:
                return new VocabParallelEmbedding(Parameters, name, rows, dim, TensorParallelism!);
            case ParallelStyle.SequenceParallel when SequenceParallel:
                var positions = new Embedding(Parameters, name, rows, dim, SequenceParallelPlacement);
                Partial(positions.Weight);
                return positions;
            default:
                return new Embedding(Parameters, name, rows, dim);
        }
    }

    /// <summary>An RMSNorm "<paramref name="name"/>" (its weight applied as 1 + w when <paramref name="unitOffset"/>: Gemma); its
    /// weight's gradient is partial when it is sequence-parallel.</summary>
    public RmsNorm RmsNorm(string name, int channels, double epsilon, bool unitOffset = false)
    {
        var norm = new RmsNorm(Parameters, name, channels, epsilon, NormPlacement(name), unitOffset);
        if (IsSequenceParallel(name)) Partial(norm.Weight);
        return norm;
    }

    /// <summary>
    /// An RMSNorm "<paramref name="name"/>" over each attention head's <paramref name="headSize"/> channels (Qwen3's q_norm
    /// and k_norm), replicated. When <paramref name="headsSplit"/> (a column-parallel QKV) each rank normalizes only its own
    /// heads, so its weight gradient is a part of the whole, summed over the tensor-parallel ranks (replicated key heads
    /// included: each replica's part comes from its own query heads). <paramref name="unitOffset"/>: applied as 1 + w (Gemma 3).
    /// </summary>
    public RmsNorm HeadRmsNorm(string name, int headSize, double epsilon, bool headsSplit, bool unitOffset = false)
    {
        var placement = headsSplit ? Placement.ReplicatedWithPartialGradient(MeshAxis.Tp) : null;
        var norm = new RmsNorm(Parameters, name, headSize, epsilon, placement, unitOffset);
        if (headsSplit) Partial(norm.Weight);
        return norm;
    }

    /// <summary>A LayerNorm "<paramref name="name"/>"; its weight's and bias's gradients are partial when it is sequence-parallel.</summary>
    public LayerNorm LayerNorm(string name, int channels, double epsilon, bool bias)
    {
        var norm = new LayerNorm(Parameters, name, channels, epsilon, bias, NormPlacement(name));
        if (IsSequenceParallel(name))
        {
            Partial(norm.Weight);
            if (norm.Bias is not null) Partial(norm.Bias);
        }
        return norm;
    }

    /// <summary>
    /// The input region of sub-layer <paramref name="name"/> (the plan's PrepareInput style): under tensor parallelism
    /// identity forward and all-reduce backward, or all-gather forward and reduce-scatter backward when sequence-parallel;
    /// on one device, nothing.
    /// </summary>
    public ITensorParallelRegion InputRegion(string name) => StyleOf(name) switch
    {
        ParallelStyle.PrepareInput when SequenceParallel => new GatherFromSequenceParallelRegion(name + ".input", TensorParallelism!.Group),
        ParallelStyle.PrepareInput => new CopyToTensorParallelRegion(TensorParallelism!.Group),
        _ => IdentityRegion.Instance,
    };

    /// <summary>
    /// The vocabulary-parallel loss over the logits of head <paramref name="headName"/> when the plan splits it
    /// (column-parallel over <paramref name="paddedVocabulary"/> rows), else null (the whole logits are on every rank).
    /// </summary>
    public VocabParallelCrossEntropy? CrossEntropy(string headName, int vocabulary, int paddedVocabulary) =>
        StyleOf(headName) == ParallelStyle.ColumnParallel
            ? new VocabParallelCrossEntropy(headName + ".loss", TensorParallelism!, vocabulary, paddedVocabulary / TensorParallelism!.Size)
            : null;

    /// <summary>The rows [Start, Start + Count) of a residual stream of <paramref name="rows"/> rows this rank holds.</summary>
    public (int Start, int Count) ResidualRows(int rows) => TensorParallelism?.LocalRows(rows) ?? (0, rows);

    private static Placement SequenceParallelPlacement => Placement.ReplicatedWithPartialGradient(MeshAxis.Tp);

    private bool IsSequenceParallel(string name) => SequenceParallel && StyleOf(name) == ParallelStyle.SequenceParallel;

    private Placement? NormPlacement(string name) => IsSequenceParallel(name) ? SequenceParallelPlacement : null;

    private Parameter Partial(Parameter parameter)
    {
        _partials.Add(new PartialGradient(parameter, 0, parameter.NumElements, TensorParallelism!.Group));
        return parameter;
    }

    /// <summary>Records the rows of every part whose units are replicated over a block of ranks (key/value heads narrower than tp).</summary>
    private void RecordReplicas(Linear column, ShardPart[] parts)
    {
        RecordReplicas(column.Weight, parts, column.InFeatures, _partials);
        if (column.Bias is not null) RecordReplicas(column.Bias, parts, 1, _partials);
    }

    /// <summary>
    /// Records into <paramref name="partials"/> the rows of <paramref name="parameter"/> (sharded by rows in <paramref name="parts"/>,
    /// <paramref name="inner"/> elements a row) whose units are replicated over a block of ranks: each replica's gradient of
    /// them is partial (it saw its query heads only), summed over the block's replica group.
    /// </summary>
    private void RecordReplicas(Parameter parameter, ShardPart[] parts, long inner, List<PartialGradient> partials)
    {
        int ranks = TensorParallelism!.Size;
        long rowOffset = 0;
        // Adjacent replicated parts of one group (the key and the value heads) are one range: one all-reduce.
        (long Start, long Rows, int Units)? run = null;
        foreach (var part in parts)
        {
            long localRows = (long)part.LocalUnits(ranks) * part.UnitSize;
            if (part.Replicas(ranks) > 1)
            {
                if (run is { } r && r.Start + r.Rows == rowOffset && r.Units == part.Units) run = (r.Start, r.Rows + localRows, r.Units);
                else
                {
                    Flush(run);
                    run = (rowOffset, localRows, part.Units);
                }
            }
            rowOffset += localRows;
        }
        Flush(run);

        void Flush((long Start, long Rows, int Units)? r)
        {
            if (r is not { } x) return;
            var group = TensorParallelism.ReplicaGroup(x.Units)!;
            partials.Add(new PartialGradient(parameter, x.Start * inner, x.Rows * inner, group));
        }
    }
}
