using Tessera.Models.Blocks;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;

namespace Tessera.Models;

/// <summary>
/// A decoder-only transformer, GPT-2 or Llama by its <see cref="TransformerConfig"/>: token
/// embedding (+ learned positions for GPT-2), <see cref="TransformerConfig.Layers"/> pre-norm blocks,
/// a final norm and an LM head (tied to the token embedding or not), with an explicit backward pass.
/// <para>
/// Training: <see cref="Loss"/> (forward + cross-entropy, keeps dlogits) then <see cref="Backward"/>
/// for each micro-batch; gradients accumulate in <see cref="Parameters"/>. Activations of each
/// micro-batch live in <see cref="Activations"/> under its id, so a pipeline schedule may interleave
/// micro-batches. Inference: <see cref="ForwardWithCache(Tensor, KvCache)"/> with a <see cref="KvCache"/>.
/// </para>
/// </summary>
public sealed class Transformer
{
    private readonly ActivationKey _tokens = new("tokens"), _tokenIds = new("tok_emb.input"), _positionIds = new("pos_emb.input"),
        _blocksOut = new("blocks.out"), _targets = new("loss.targets"), _losses = new("loss.out"), _dLogits = new("loss.dlogits"),
        _lossPadding = new("loss.padding"), _dFinal = new("final_norm.dy"), _dResidual = new("residual.dy"),
        _dResidualSums = new("residual.dy.column_sums"),
        _gatheredLogits = new("lm_head.gathered"), _wholeLogits = new("lm_head.whole"), _dHeadRows = new("lm_head.dx"),
        _stageOut = new("stage.out"), _cappedLogits = new("lm_head.capped");
    private int[] _host = [];
    private int _lossChunkRows;

    /// <summary>Declares and allocates the parameters (values and gradients zeroed; call <see cref="InitializeWeights"/> or load weights).</summary>
    /// <param name="config">Shape of the model; validated.</param>
    /// <param name="backend">Where parameters and activations live.</param>
    /// <param name="dtype">F32 (training), F64 (gradient checks) or BF16 (mixed precision: BF16 parameters, gradients and
    /// activations, F32 masters in the arena, F32 norm statistics, log-sum-exp and losses).</param>
    /// <param name="storage"><see cref="ArenaStorage.Full"/> (default) allocates the parameter arena;
    /// <see cref="ArenaStorage.Deferred"/> only declares it (ZeRO-3's sharded construction: nothing full-size is allocated,
    /// and the weights are written by the data-parallel trainer into the rank's shards).</param>
    /// <param name="tensorParallelism">This rank's tensor parallelism (its group and the plan that splits the layers), or
    /// null for one device; the rank then declares and allocates only its part of each split parameter.</param>
    /// <param name="pipeline">This rank's pipeline stage (its group and the partition of the blocks), or null for the whole
    /// model; the rank then declares and allocates only the units of its virtual stages: the embeddings on the first stage,
    /// its blocks, the final norm and head on the last (with a copy of a tied token table, <see cref="TiedEmbeddingCopy"/>).</param>
    /// <param name="lora">LoRA adapters on the layers its targets name (built by the layer factory in place of plain linear
    /// layers), allocated in their own trainable arena, <see cref="Adapters"/> (initialized; zero B), or null. Pair with
    /// <see cref="ArenaStorage.Frozen"/> to train the adapters alone.</param>
    /// <param name="masters">How a BF16 arena keeps its F32 masters: <see cref="MasterWeights.Separate"/> (default) or
    /// <see cref="MasterWeights.Split"/> (2 bytes per parameter less; BF16 only, with a trained arena: <see cref="ArenaStorage.Full"/>, or
    /// <see cref="ArenaStorage.Deferred"/> for ZeRO-3's sharded construction, whose shards then keep the masters split).</param>
    /// <param name="servedAdapters">LoRA adapters served unmerged over this model (multi-LoRA): the layers their targets name
    /// are built as <see cref="MultiLoraLinear"/>s (their adapters attached after loading), <see cref="ServedAdapters"/>; or null.</param>
    /// <param name="expertParallelism">This rank's expert parallelism (a mixture-of-experts model only): each MoE layer declares
    /// and allocates only the rank's E / ep experts (named by their global index), <see cref="ExpertParallelism"/>; or null.</param>
    public Transformer(TransformerConfig config, IBackend backend, DType dtype, ArenaStorage storage = ArenaStorage.Full,
        TensorParallelism? tensorParallelism = null, PipelineParallelism? pipeline = null, LoraOptions? lora = null,
        MasterWeights masters = MasterWeights.Separate, MultiLoraBatch? servedAdapters = null, ExpertParallelism? expertParallelism = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(backend);
        config.Validate();
        if (dtype is not (DType.F32 or DType.F64 or DType.BF16))
            throw new ArgumentException($"Transformer: dtype {dtype} is not supported; use F32, F64 or BF16");
        if (masters == MasterWeights.Split && storage == ArenaStorage.Frozen)
            throw new ArgumentException("Transformer: MasterWeights.Split needs a trained arena (ArenaStorage.Full, or Deferred for ZeRO-3); a frozen base has no masters", nameof(masters));
        if (masters == MasterWeights.Split && dtype != DType.BF16 && storage == ArenaStorage.Deferred)   // a full arena checks this itself
            throw new ArgumentException($"Transformer: MasterWeights.Split needs a BF16 model (the value is the master's high half), not {dtype}", nameof(masters));
        if (pipeline is not null && pipeline.Partition.Layers != config.Layers)
            throw new ArgumentException($"pipeline: the partition ({pipeline.Partition}) cuts {pipeline.Partition.Layers} blocks but the model has {config.Layers} (Layers)");
        Config = config;
        Backend = backend;
        DType = dtype;
        MasterWeights = masters;
        Activations = new ActivationStore(backend);
        Pipeline = pipeline is { Stages: > 1 } || pipeline is { Chunks: > 1 } ? pipeline : null;

        if (tensorParallelism is { Size: > 1 }) CheckTensorParallel(config, tensorParallelism.Size);
        if (expertParallelism is { Size: > 1 }) CheckExpertParallel(config, expertParallelism.Size, tensorParallelism, Pipeline, lora, servedAdapters);

        // The model's units, in pass order: embeddings, one per block, the final norm and head (which borrows the
        // embeddings when tied). Every consumer (pass hooks, ZeRO-3, gradient buckets, pipeline stages) reads them.
        // Layers come from the factory, which builds each as the parallel plan says (plain layers on one device).
        // A pipeline stage declares only the units of its virtual stages, in the same order.
        var parameters = tensorParallelism is null
            ? new ParameterLayoutBuilder()
            : new ParameterLayoutBuilder(tensorParallelism.Mesh, tensorParallelism.Coordinate);
        if (lora is not null && Pipeline is not null)
            throw new NotSupportedException("LoRA: adapters are not built for pipeline stages; train LoRA without --pp");
        if (servedAdapters is not null && Pipeline is not null)
            throw new NotSupportedException("multi-LoRA: served adapters are not built for pipeline stages");
        var layers = new LayerFactory(parameters, tensorParallelism, lora, servedAdapters, expertParallelism);
        ServedAdapters = servedAdapters;
        Layers = layers;
        int c = config.Embedding, vPad = config.EffectivePaddedVocab;
        bool first = Pipeline?.IsFirst ?? true, last = Pipeline?.IsLast ?? true;
        var units = new List<(UnitKind, int)>();
        if (first)
        {
            parameters.BeginUnit("embeddings");
            _tokenEmbedding = layers.Embedding("tok_emb", vPad, c);
            if (config.Family == ModelFamily.Gpt2)
                PositionEmbedding = layers.Embedding("pos_emb", config.MaxSequenceLength, c);
            units.Add((UnitKind.Embeddings, -1));
        }
        var blocks = new List<TransformerBlock>();
        var chunkUnits = new (int First, int End)[Pipeline?.Chunks ?? 1];
        for (int chunk = 0; chunk < chunkUnits.Length; chunk++)
        {
            var (firstBlock, count) = Pipeline is null ? (0, config.Layers) : Pipeline.Partition.BlocksOf(Pipeline.VirtualStage(chunk));
            int start = chunk == 0 ? 0 : units.Count;                 // chunk 0 starts with the embeddings when it has them
            for (int i = firstBlock; i < firstBlock + count; i++)
            {
                parameters.BeginUnit($"blocks.{i}");
                blocks.Add(new TransformerBlock(layers, config, i));
                units.Add((UnitKind.Block, blocks.Count - 1));
            }
            chunkUnits[chunk] = (start, units.Count);
        }
        Blocks = blocks;
        if (last)
        {
            if (config.TiedEmbeddings && first) parameters.BeginUnit("head", 0);
            else parameters.BeginUnit("head");
            if (config.TiedEmbeddings && !first)
            {
                // The last stage's own copy of the tied table (Megatron's word embeddings on the last stage): the embedding
                // group sums the two copies' gradients every step, so they stay one parameter.
                _tokenEmbedding = layers.Embedding("tok_emb", vPad, c);
                TiedEmbeddingCopy = _tokenEmbedding.Weight;
            }
            _finalNorm = config.Family == ModelFamily.Llama
                ? layers.RmsNorm("final_norm", c, config.NormEpsilon, config.UnitOffsetNorms)
                : layers.LayerNorm("final_norm", c, config.NormEpsilon, config.Bias);
            _headInput = layers.InputRegion("head");
            _head = config.TiedEmbeddings
                ? layers.TiedLinear("lm_head", _tokenEmbedding!.Weight)
                : layers.Linear("lm_head", c, vPad, bias: false);
            _vocabParallelLoss = layers.CrossEntropy("lm_head", config.VocabSize, vPad);
            _headLoss = new FusedLinearCrossEntropy(_head, config.VocabSize, _vocabParallelLoss);
            _lossChunkRows = FusedLinearCrossEntropy.DefaultChunkRows(_head.OutFeatures);
            units.Add((UnitKind.Head, -1));
            chunkUnits[^1] = (chunkUnits[^1].First, units.Count);
        }
        _units = [.. units];
        _chunkUnits = chunkUnits;
        Layout = parameters.Build();
        // The embedding group is created by every rank of a tied pipeline, here: on NCCL a communicator split is collective
        // over the world, and every rank builds its model at the same point.
        if (config.TiedEmbeddings && Pipeline is { Stages: > 1 }) Pipeline.EmbeddingGroup();
        // The whole model's layout as this rank would hold it without pipeline stages (names, global shapes, placements, in
        // one device's order): initialization draws its random stream in this order, checkpoints describe every parameter.
        WholeLayout = Pipeline is null && layers.ExpertParallelism is null ? Layout : new Transformer(config, backend, dtype, ArenaStorage.Deferred, tensorParallelism).Layout;
        if (storage != ArenaStorage.Deferred) _ = new ParameterArena(Layout, backend, dtype, frozen: storage == ArenaStorage.Frozen, masters);   // attaches itself to the layout
        if (lora is not null)
        {
            Adapters = layers.BuildAdapters(backend, dtype);
            Adapters.Initialize(lora.Seed);
        }
    }

    private enum UnitKind { Embeddings, Block, Head }

    private readonly (UnitKind Kind, int Block)[] _units;           // per unit of Layout: what it is (and its index in Blocks)
    private readonly (int First, int End)[] _chunkUnits;            // per model chunk of this rank: its units [First, End)
    private readonly Embedding? _tokenEmbedding;
    private readonly INormalization? _finalNorm;
    private readonly ITensorParallelRegion? _headInput;
    private readonly Linear? _head;

    /// <summary>The configuration.</summary>
    public TransformerConfig Config { get; }

    /// <summary>How the layers were built: the parallel plan, this rank's tensor parallelism, and the parameters with partial gradients.</summary>
    public LayerFactory Layers { get; }

    /// <summary>This rank's tensor parallelism, or null on one device.</summary>
    public TensorParallelism? TensorParallelism => Layers.TensorParallelism;

    /// <summary>This rank's expert parallelism (it holds E / ep experts of each mixture-of-experts layer), or null.</summary>
    public ExpertParallelism? ExpertParallelism => Layers.ExpertParallelism;

    /// <summary>The LoRA adapters (their trainable arena and layers) when the model was built with LoRA options, else null.</summary>
    public LoraAdapters? Adapters { get; }

    /// <summary>
    /// The LoRA adapters served unmerged over this model (multi-LoRA: each row of a step with its own adapter or the base), or
    /// null. A serving loop sets each step's rows on it before the forward pass.
    /// </summary>
    public MultiLoraBatch? ServedAdapters { get; }

    /// <summary>
    /// The parameters a trainer updates: the adapters' layout when the model is LoRA over a frozen base
    /// (<see cref="ArenaStorage.Frozen"/>), else the model's own.
    /// </summary>
    public ParameterLayout TrainableLayout => Adapters is not null && Layout.Storage is ParameterArena { Frozen: true } or Nn.Quantization.QuantizedParameterStorage
        ? Adapters.Layout : Layout;

    /// <summary>This rank's pipeline stage (its group and the partition of the blocks), or null for the whole model.</summary>
    public PipelineParallelism? Pipeline { get; }

    /// <summary>
    /// The last pipeline stage's copy of a tied token embedding ("tok_emb.weight", declared in its head unit), or null (the
    /// table is not tied, or this rank holds the embeddings itself). Its gradient is summed with the first stage's over
    /// <see cref="PipelineParallelism.EmbeddingGroup"/> once per step, so the two copies receive the same updates; clipping and
    /// checkpoints count the first stage's table only.
    /// </summary>
    public Parameter? TiedEmbeddingCopy { get; }

    /// <summary>
    /// The layout this rank would hold of the whole model (every pipeline stage's parameters, in one device's declaration
    /// order, with this rank's tensor-parallel placements), declared without storage: <see cref="Layout"/> itself without
    /// pipeline stages. Initialization draws its random stream in this order; checkpoints and Hugging Face checks read every
    /// parameter from it.
    /// </summary>
    public ParameterLayout WholeLayout { get; }

    /// <summary>Model chunks (virtual stages) this rank runs: 1 without interleaving.</summary>
    public int Chunks => _chunkUnits.Length;

    /// <summary>
    /// The units [First, End) of <see cref="Layout"/> that model chunk <paramref name="chunk"/> of this rank runs (virtual
    /// stage <see cref="PipelineParallelism.VirtualStage"/>): what a pipeline schedule passes to <see cref="ForwardUnits"/> and
    /// <see cref="BackwardUnits"/>. Without pipeline stages, chunk 0 is every unit.
    /// </summary>
    public (int First, int End) ChunkUnits(int chunk)
    {
        if (chunk < 0 || chunk >= _chunkUnits.Length)
            throw new ArgumentOutOfRangeException(nameof(chunk), $"Transformer: model chunk {chunk} is outside [0, {_chunkUnits.Length}) of this rank");
        return _chunkUnits[chunk];
    }

    /// <summary>The communication in front of the LM head (nothing on one device).</summary>
    public ITensorParallelRegion HeadInput => _headInput ?? throw NotHeld("the head");

    private readonly VocabParallelCrossEntropy? _vocabParallelLoss;
    private readonly FusedLinearCrossEntropy? _headLoss;

    /// <summary>
    /// Rows of the LM head's logits that <see cref="Loss"/> computes at a time (the fused linear + cross-entropy,
    /// <see cref="FusedLinearCrossEntropy"/>): a chunk's product, loss, logit gradient, input gradient and weight gradient
    /// run before the next chunk's, so neither the (B·T, V) logits nor their gradient exist whole and no tensor limits the
    /// micro-batch. Default: <see cref="FusedLinearCrossEntropy.DefaultChunkRows"/> of this rank's vocabulary columns (the
    /// rows whose logits fit in 2^28 elements: 5,336 for GPT-2's 50,304, 2,092 for Llama 3's 128,256); a micro-batch of
    /// fewer rows is one chunk. 0 runs the unfused head: the whole micro-batch's logits materialized and their gradient
    /// kept until <see cref="Backward"/> (the reference the fused head is tested against). A final soft cap
    /// (<see cref="TransformerConfig.FinalSoftCap"/>, Gemma 2) sits between the product and the loss, so the head then runs
    /// unfused whatever this says.
    /// </summary>
    public int LossChunkRows
    {
        get => _lossChunkRows;
        set => _lossChunkRows = value >= 0 ? value
            : throw new ArgumentOutOfRangeException(nameof(value), $"Transformer.LossChunkRows ({value}) must be 0 (unfused head) or a positive number of rows");
    }


    /// <summary>Columns of the logits this rank computes: the padded vocabulary, or its share under tensor parallelism.</summary>
    public int LocalVocab => Head.OutFeatures;

    /// <summary>Where parameters and activations live.</summary>
    public IBackend Backend { get; }

    /// <summary>Element type of parameters and activations.</summary>
    public DType DType { get; }

    /// <summary>
    /// How the model's F32 masters are kept (<see cref="Nn.MasterWeights.Split"/> or the default <see cref="Nn.MasterWeights.Separate"/>):
    /// the arena's choice, recorded here too so that a model declared without storage (<see cref="ArenaStorage.Deferred"/>)
    /// tells its ZeRO-3 strategy how to keep the master shards.
    /// </summary>
    public MasterWeights MasterWeights { get; }

    /// <summary>Element type of the per-token losses (and of norm statistics): F64 for F64 models, else F32.</summary>
    public DType LossDType => DType == DType.F64 ? DType.F64 : DType.F32;

    /// <summary>The parameters this rank declares (names, shapes, placements, offsets) and the model's units.</summary>
    public ParameterLayout Layout { get; }

    /// <summary>
    /// The parameters' full arena (values, gradients, masters). Throws when the parameters live elsewhere: declared without
    /// storage (<see cref="ArenaStorage.Deferred"/>) or sharded by a ZeRO-3 strategy.
    /// </summary>
    public ParameterArena Parameters => Layout.Storage as ParameterArena ?? throw new InvalidOperationException(
        Layout.Storage is null
            ? "Transformer: the model was declared without storage (ArenaStorage.Deferred); its weights live where its trainer puts them (ZeRO-3 shards)"
            : Layout.Storage is Nn.Quantization.QuantizedParameterStorage
                ? "Transformer: the model's weights are held quantized (int8 or fp8) and have no arena to train; train LoRA adapters over it (--lora with --quantize int8 or fp8), or load it without quantization"
                : "Transformer: the model's parameters are fully sharded (ZeRO-3) and have no full arena; read them through the data-parallel strategy");

    /// <summary>Saved activations per micro-batch and the pooled buffers.</summary>
    public ActivationStore Activations { get; }

    /// <summary>Token embedding "tok_emb" (Vpad, C) (on the last pipeline stage of a tied model: its copy of the table).</summary>
    public Embedding TokenEmbedding => _tokenEmbedding ?? throw NotHeld("the token embedding");

    /// <summary>Learned positions "pos_emb" (MaxSeq, C) for GPT-2; null for Llama.</summary>
    public Embedding? PositionEmbedding { get; }

    /// <summary>The decoder blocks.</summary>
    public IReadOnlyList<TransformerBlock> Blocks { get; }

    /// <summary>
    /// Whether an inference step of <paramref name="rows"/> rows reads nothing back for its mixture-of-experts layers (every
    /// one routes it on the device: <see cref="SparseMoeFeedForward.RoutesOnDevice"/>), so that a recorded graph can replay
    /// it; true for a model without experts. Prepares the layers' device tables on first call (outside a recording).
    /// </summary>
    public bool RoutesExpertsOnDevice(int rows) =>
        Blocks.All(b => b.Mlp is not SparseMoeFeedForward moe || moe.RoutesOnDevice(rows, DType));

    /// <summary>
    /// The most rows an inference step may have and still route every mixture-of-experts layer on the device (the least of
    /// the layers' <see cref="SparseMoeFeedForward.DeviceRowBound"/>): 0 where some layer never does, int.MaxValue for a
    /// model without experts. Prepares the layers' device tables on first call (outside a recording).
    /// </summary>
    public int ExpertDeviceRowBound() =>
        Blocks.Select(b => b.Mlp).OfType<SparseMoeFeedForward>().Select(moe => moe.DeviceRowBound(DType)).DefaultIfEmpty(int.MaxValue).Min();

    /// <summary>Norm after the last block, "final_norm".</summary>
    public INormalization FinalNorm => _finalNorm ?? throw NotHeld("the final norm");

    /// <summary>
    /// Bytes of this rank's parameters as the layers read them: a quantized weight's int8 values and row scales
    /// (<see cref="Parameter.Quantized"/>), every other parameter in the model's dtype (what a decode step streams).
    /// </summary>
    public long WeightBytes => Layout.Parameters.Sum(p => p.Quantized is { } q ? q.Bytes : p.NumElements * DType.SizeInBytes());

    /// <summary>
    /// Whether weight-only quantization keeps <paramref name="parameter"/> as int8 with row scales: every rank-2 parameter,
    /// i.e. the linear layers' weights and the embedding tables (their rows are gathered and dequantized on the way, a
    /// tensor-parallel rank's vocabulary shard too; a tied LM head then reads the int8 token table).
    /// </summary>
    public bool IsQuantizable(Parameter parameter) => parameter.Shape.Rank == 2;

    /// <summary>
    /// Whether group-wise int4 quantization keeps <paramref name="parameter"/> in 4 bits: the linear layers' weights only, every
    /// rank-2 parameter but the embedding tables ("tok_emb.weight", "pos_emb.weight") and the LM head ("lm_head.weight"), which
    /// GPTQ and AWQ checkpoints keep in 16 bits (the head decides every token; the tables are gathered, not multiplied).
    /// </summary>
    public bool IsInt4Quantizable(Parameter parameter) => parameter.Shape.Rank == 2
        && parameter.Name is not ("tok_emb.weight" or "pos_emb.weight" or "lm_head.weight");

    /// <summary>LM head C to Vpad: "lm_head" when untied, else over tok_emb.weight.</summary>
    public Linear Head => _head ?? throw NotHeld("the LM head");

    /// <summary>
    /// Selective recomputation: when true, each block keeps only its input during a training forward
    /// and recomputes its activations at the start of its backward (less memory, one more block forward).
    /// Gradients are bit-identical either way. Default false.
    /// </summary>
    public bool RecomputeActivations { get; set; }

    /// <summary>
    /// Whether the output projections of GPT-2's blocks (attention's and the MLP's, C wide) take their bias gradients from
    /// the LayerNorm backwards that write their output gradients (the residual stream's: norm2 of the same block for the
    /// attention projection, norm1 of the block above or the final norm for the MLP's), summed as the norm stores dx, in
    /// place of each projection's own pass over its dy (issue 18). Only where that holds exactly: LayerNorm, a trained bias,
    /// a projection that is not row-parallel (tensor and sequence parallelism keep their own reductions), and, across units,
    /// both blocks in the range a backward runs. The gradients equal the other path's to rounding (the sums are added in
    /// another order). Default false, which keeps every projection's own reduction: on the H200 (gpt2-124m, 64 x 1024, session
    /// 23) the norms' third slice of shared-memory partials cost their kernel 28 us a call, about what the 768-wide
    /// <c>SumRows</c> it replaces took (30), so the step did not move; the path is correct on the CPU and gave the same loss
    /// on the GPU, and its GPU tests have yet to run.
    /// </summary>
    public bool ResidualBiasGradientsFromNorms { get; set; }

    /// <summary>
    /// Whether forward passes read token ids (and targets) to the host to check their range
    /// (one synchronization per call on a GPU). Default true.
    /// </summary>
    public bool ValidateInputs { get; set; } = true;

    /// <summary>
    /// Optional callbacks around each segment of <see cref="Forward"/> and <see cref="Backward"/>
    /// (data-parallel bucketing, ZeRO-3 gathering); null (the default) costs nothing.
    /// </summary>
    public ITransformerPassHooks? PassHooks { get; set; }

    /// <summary>
    /// GPT-2 initialization, deterministic for <paramref name="seed"/>: normal(0, InitStd) for matrices and
    /// embeddings, InitStd / sqrt(2 * Layers) for the residual projections (attn.proj, mlp.proj), ones for
    /// norm weights (zeros where they apply as 1 + w: Gemma), zeros for biases and for the padding rows of the vocabulary. Writes the masters (F32 under mixed
    /// precision) and casts the values. A sharded arena (ZeRO-3) is initialized through its trainer
    /// (<c>DataParallelTrainer.InitializeWeights</c>), which writes the same values into the rank's shards.
    /// </summary>
    public void InitializeWeights(int seed)
    {
        if (Layout.Storage is not ParameterArena)
            throw new InvalidOperationException("Transformer.InitializeWeights: the model has no full parameter arena (ZeRO-3 shards); " +
                "initialize through its trainer (Trainer.InitializeWeights), which writes the same values into each rank's shards");
        foreach (var (p, global) in InitialValues(seed))
        {
            var values = p.LocalValues(global);
            p.WriteMasterOrValue(target =>                         // the F32 master under mixed precision (split or separate)
            {
                if (target.DType == DType.F64) Backend.CopyFromHost<double>(values, target);
                else if (target.DType == DType.F32) Backend.CopyFromHost<float>(Array.ConvertAll(values, v => (float)v), target);
                else Backend.Copy(Backend.FromHost<float>(Array.ConvertAll(values, v => (float)v), target.Shape), target);   // a frozen BF16 base: no master, cast on the device
            });
        }
    }

    /// <summary>
    /// The values <see cref="InitializeWeights"/> writes, one parameter at a time in declaration order, on the host in F64, as
    /// whole (global) tensors (each array is fresh and belongs to the caller; <see cref="Parameter.LocalValues{T}"/> gives a
    /// rank's part). The random stream is consumed in the whole model's order (<see cref="WholeLayout"/>) whatever the caller
    /// keeps, so a rank that keeps only its part (a tensor-parallel shard, a pipeline stage's units, ZeRO-3's owned ranges) gets
    /// exactly the values of a full initialization; a pipeline stage yields only the parameters it holds (the last stage's copy of
    /// a tied table gets the table's values).
    /// </summary>
    public IEnumerable<(Parameter Parameter, double[] Values)> InitialValues(int seed)
    {
        var rng = new Random(seed);
        double std = Config.InitStd, residualStd = std / Math.Sqrt(2.0 * Config.Layers);
        foreach (var p in WholeLayout.Parameters)
        {
            var values = new double[p.GlobalShape.NumElements];
            bool isBias = p.Name.EndsWith(".bias", StringComparison.Ordinal);
            if (isBias) { /* zeros */ }
            else if (!p.WeightDecay) Array.Fill(values, Config.UnitOffsetNorms ? 0.0 : 1.0);   // norm scales: one, or Gemma's 1 + 0
            else
            {
                double s = p.Name.EndsWith("attn.proj.weight", StringComparison.Ordinal) || p.Name.EndsWith("mlp.proj.weight", StringComparison.Ordinal)
                    || (p.Name.Contains(".mlp.experts.", StringComparison.Ordinal) && p.Name.EndsWith(".proj.weight", StringComparison.Ordinal))
                    ? residualStd : std;
                long rows = p.Name is "tok_emb.weight" or "lm_head.weight" ? Config.VocabSize : p.GlobalShape[0];
                long filled = rows * (p.GlobalShape.Rank == 2 ? p.GlobalShape[1] : 1);
                for (long i = 0; i < filled; i++) values[i] = s * NextNormal(rng);
            }
            if (ReferenceEquals(WholeLayout, Layout)) yield return (p, values);
            else if (Layout.Contains(p.Name)) yield return (Layout[p.Name], values);
        }
    }

    /// <summary>
    /// Training forward of micro-batch <paramref name="microBatch"/>: logits (B, T, V) for tokens (B, T) I32, saving
    /// activations for <see cref="Backward"/>; V is the padded vocabulary (<see cref="LocalVocab"/>: this rank's share under
    /// tensor parallelism). Columns past VocabSize are padding. The logits live in the micro-batch's pooled buffer until its
    /// next forward (an unfused <see cref="Loss"/>, <see cref="LossChunkRows"/> = 0, turns them into dlogits). The whole model:
    /// a pipeline stage runs <see cref="ForwardUnits"/> and <see cref="LossUnits"/>.
    /// </summary>
    public Tensor Forward(Tensor tokens, int microBatch = 0)
    {
        CheckWhole(nameof(Forward));
        var (b, t) = CheckTokens(tokens, "tokens", 0, null);
        var rows = RunForward(0, _units.Length, microBatch, tokens, b, t);   // (B T, C): the head's input
        var logits = Head.Forward(PassContext.Training(Activations, microBatch), rows);   // (B T, V)
        CapLogits(logits);
        PassHooks?.AfterForward(_units.Length - 1);
        return logits.Reshape(b, t, LocalVocab);
    }

    /// <summary>
    /// The pipeline seam: the training forward of units [<paramref name="first"/>, <paramref name="end"/>) of
    /// <see cref="Layout"/> (a virtual stage's range, <see cref="ChunkUnits"/>, that does not end with the head: that one is
    /// <see cref="LossUnits"/>) for a micro-batch of <paramref name="sequences"/> x <paramref name="sequenceLength"/> tokens, in
    /// slot <paramref name="microBatch"/> of <see cref="Activations"/> (whose saved tensors this forgets first).
    /// <paramref name="input"/> is the tokens (B, T) I32 when the range starts with the embeddings, else the residual stream
    /// entering it (rows, C): this rank's rows under sequence parallelism, what the previous stage sent, kept unchanged by the
    /// caller until <see cref="BackwardUnits"/>. Returns the residual stream leaving the range (rows, C), in a buffer of the slot
    /// that stays valid until the slot's next forward. The code run is the model's own: <see cref="Loss"/> is
    /// <see cref="LossUnits"/> over every unit.
    /// </summary>
    public Tensor ForwardUnits(int first, int end, int microBatch, Tensor input, int sequences, int sequenceLength)
    {
        CheckRange(first, end, nameof(ForwardUnits));
        if (_units[end - 1].Kind == UnitKind.Head)
            throw new ArgumentException($"Transformer.ForwardUnits: units [{first}, {end}) end with the head, whose forward is the loss's; call LossUnits");
        return RunForward(first, end, microBatch, input, sequences, sequenceLength);
    }

    /// <summary>
    /// Forward plus softmax cross-entropy over the first VocabSize logit columns, for tokens and targets (B, T) I32
    /// (target -1: ignored, loss 0). Prepares the gradient of lossScale times the summed losses for <see cref="Backward"/>;
    /// pass lossScale = 1 / (number of counted targets over all micro-batches) for the gradient of the mean loss. Returns
    /// the per-token losses (B*T) on the device (unscaled), valid until this micro-batch's next forward; under tensor
    /// parallelism every rank of the group gets the same losses, the vocabulary-parallel loss combining the ranks' columns
    /// without gathering them.
    /// <para>
    /// With <see cref="LossChunkRows"/> &gt; 0 (the default) the head runs fused, chunk by chunk: the LM head's weight
    /// gradient accumulates here, not in <see cref="Backward"/>, and what is kept is the gradient of the head's input (B·T,
    /// C), not the logits'. The head unit's backward therefore begins here (<see cref="ITransformerPassHooks.BeforeBackward"/>
    /// is raised for it before the loss, and again by <see cref="Backward"/>). A lossScale of 0 (evaluation) asks for no
    /// gradient: only the losses are computed, the head's weight gradient is untouched, and a later Backward sees a zero
    /// gradient, as the unfused head's would be.
    /// </para>
    /// </summary>
    public Tensor Loss(Tensor tokens, Tensor targets, int microBatch = 0, double lossScale = 1.0)
    {
        CheckWhole(nameof(Loss));
        var (b, t) = CheckTokens(tokens, "tokens", 0, null);
        return LossUnits(0, _units.Length, microBatch, tokens, targets, lossScale, b, t);
    }

    /// <summary>
    /// The pipeline seam's last virtual stage: <see cref="Loss"/> over units [<paramref name="first"/>, <paramref name="end"/>),
    /// a range that ends with the head, from <paramref name="input"/> (tokens, or the residual stream the previous stage sent,
    /// as for <see cref="ForwardUnits"/>) against <paramref name="targets"/> (B, T) I32. Returns the per-token losses (B*T),
    /// valid until the slot's next forward, and keeps the loss's gradient for <see cref="BackwardUnits"/>.
    /// </summary>
    public Tensor LossUnits(int first, int end, int microBatch, Tensor input, Tensor targets, double lossScale, int sequences, int sequenceLength)
    {
        CheckRange(first, end, nameof(LossUnits));
        if (_units[end - 1].Kind != UnitKind.Head)
            throw new ArgumentException($"Transformer.LossUnits: units [{first}, {end}) do not end with the head; their forward is ForwardUnits");
        int head = end - 1, b = sequences, t = sequenceLength;
        SetRouterLossScale(lossScale, b * t);
        var rows = RunForward(first, end, microBatch, input, b, t);   // (N, C) whole rows: the head's input
        var ctx = PassContext.Training(Activations, microBatch);
        var hooks = PassHooks;
        // A final soft cap sits between the product and the loss, where the fused head has no place for it.
        if (LossChunkRows == 0 || Config.FinalSoftCap > 0)
        {
            var logits = Head.Forward(ctx, rows);                     // (N, V)
            CapLogits(logits);
            hooks?.AfterForward(head);
            return UnfusedLoss(ctx, logits, targets, b, t, lossScale);
        }
        var (target, losses) = LossBuffers(ctx, targets, b, t);
        var dRows = ctx.Buffer(_dHeadRows, rows.Shape, DType);        // (N, C): the loss's gradient at the head's input
        if (lossScale == 0)
        {
            _headLoss!.Forward(ctx, rows, target, losses, lossScale, dx: null, LossChunkRows);
            hooks?.AfterForward(head);
            Backend.Fill(dRows, 0);
        }
        else
        {
            // The head's backward begins before its forward is over: each chunk's weight gradient is taken as it goes.
            hooks?.AfterForward(head);
            hooks?.BeforeBackward(head);
            _headLoss!.Forward(ctx, rows, target, losses, lossScale, dRows, LossChunkRows);
        }
        ctx.Save(_dHeadRows, dRows);
        return losses;
    }

    /// <summary>
    /// Runs units [<paramref name="first"/>, <paramref name="end"/>) forward in slot <paramref name="microBatch"/>: the
    /// embeddings (from tokens) and blocks in the range, and when it ends with the head, the final norm and the head's input
    /// region, whose whole rows (B T, C) it returns with the head unit's forward begun and not ended; otherwise the residual
    /// stream leaving the range, kept in the slot.
    /// </summary>
    private Tensor RunForward(int first, int end, int microBatch, Tensor input, int sequences, int sequenceLength)
    {
        ArgumentNullException.ThrowIfNull(input);
        var ctx = PassContext.Training(Activations, microBatch).WithBatch(sequences, sequenceLength);
        Activations.Release(microBatch);                             // nothing stale from an earlier forward of this slot
        var hooks = PassHooks;
        int u = first;
        Tensor x;
        if (_units[u].Kind == UnitKind.Embeddings)
        {
            if (input.Rank != 2 || input.DType != DType.I32 || input.Size(0) != sequences || input.Size(1) != sequenceLength)
                throw new ArgumentException($"Transformer: units [{first}, {end}) start with the embeddings, so the input must be tokens ({sequences}, {sequenceLength}) I32, got {input.Shape} {input.DType}");
            hooks?.BeforeForward(u);
            x = Embed(ctx, input, sequences, sequenceLength, cache: null);   // (N, C): this rank's rows of the residual stream
            ctx.Save(_tokens, input.IsContiguous ? input : Backend.Contiguous(input));
            hooks?.AfterForward(u);
            u++;
        }
        else
        {
            CheckResidual(input, sequences, sequenceLength, "input", "forward");
            x = input;
        }
        for (; u < end && _units[u].Kind == UnitKind.Block; u++)
        {
            hooks?.BeforeForward(u);
            x = Blocks[_units[u].Block].Forward(ctx, x, RecomputeActivations);
            hooks?.AfterForward(u);
        }
        if (u == end)
        {
            // A stage's output: a checkpointed block left it in a shared buffer that the next forward overwrites.
            if (!RecomputeActivations) return x;
            var kept = ctx.Buffer(_stageOut, x.Shape, DType);
            Backend.Copy(x, kept);
            return kept;
        }
        hooks?.BeforeForward(u);
        if (RecomputeActivations)
        {
            // The last checkpointed block left its output in a shared buffer; the final norm keeps its input.
            var kept = ctx.Buffer(_blocksOut, x.Shape, DType);
            Backend.Copy(x, kept);
            x = kept;
        }
        return HeadInput.Forward(ctx, FinalNorm.Forward(ctx, x));   // (B T, C): whole rows
    }

    /// <summary>The cross-entropy of the whole micro-batch's logits (N, V), their gradient kept for the backward.</summary>
    private Tensor UnfusedLoss(in PassContext ctx, Tensor logits, Tensor targets, int b, int t, double lossScale)
    {
        int n = b * t, v = Config.VocabSize, vPad = Config.EffectivePaddedVocab;
        var (target, losses) = LossBuffers(ctx, targets, b, t);
        var l2 = logits.Reshape(n, LocalVocab);
        Tensor? capped = null;                                       // (N, V): the capped logits, whose gradient the loss overwrites them with
        if (Config.FinalSoftCap > 0)
        {
            capped = ctx.Scratch(_cappedLogits, l2.Shape, DType);
            Backend.Copy(l2, capped);
        }
        if (_vocabParallelLoss is not null)
        {
            // Each rank holds V / tp columns; the loss combines per-row statistics, and the padding columns' gradient is zero.
            _vocabParallelLoss.Forward(ctx, l2, target, losses, lossScale);
        }
        else if (vPad == v)
        {
            Backend.CrossEntropy(l2, target, losses, l2, lossScale);
        }
        else
        {
            // In place on the row-strided view of the real columns; the padding columns' gradient is zero.
            var real = l2.Slice(1, 0, v);                            // (N, V), rows Vpad apart
            Backend.CrossEntropy(real, target, losses, real, lossScale);
            var zeros = ctx.Scratch(_lossPadding, new Shape(n, vPad - v), DType);
            Backend.Fill(zeros, 0);
            Backend.Copy(zeros, l2.Slice(1, v, vPad - v));
        }
        if (capped is not null) Backend.SoftCapBackward(capped, l2, Config.FinalSoftCap);   // dL/dz through z = c tanh(z / c)
        ctx.Save(_dLogits, l2);
        return losses;
    }

    /// <summary>Checks the targets against the tokens' (B, T) and copies them into the micro-batch's buffer; the losses' buffer.</summary>
    private (Tensor Targets, Tensor Losses) LossBuffers(in PassContext ctx, Tensor targets, int b, int t)
    {
        var (tb, tt) = CheckTokens(targets, "targets", -1, null);
        if (tb != b || tt != t) throw new ArgumentException($"Transformer.Loss: targets {targets.Shape} must have the shape of tokens ({b}, {t})");
        var target = ctx.Buffer(_targets, new Shape(b * t), DType.I32);   // (N)
        Backend.Copy(targets, target.Reshape(b, t));
        return (target, ctx.Buffer(_losses, new Shape(b * t), LossDType));   // (N)
    }

    /// <summary>
    /// Backward of micro-batch <paramref name="microBatch"/> from the gradient kept by <see cref="Loss"/> (the head input's
    /// with the fused head, else the logits'): accumulates into every parameter's Grad, then releases the micro-batch's
    /// saved activations. The whole model: a pipeline stage runs <see cref="BackwardUnits"/>.
    /// </summary>
    public void Backward(int microBatch = 0)
    {
        CheckWhole(nameof(Backward));
        if (!Activations.Contains(microBatch, _dHeadRows.Name) && !Activations.Contains(microBatch, _dLogits.Name))
            throw new InvalidOperationException($"Transformer.Backward: micro-batch {microBatch} has no loss gradient; call Loss(tokens, targets, {microBatch}, scale) first");
        var tokens = Activations.Get(microBatch, _tokens.Name);      // (B, T)
        int b = tokens.Size(0), t = tokens.Size(1);
        var ctx = PassContext.Training(Activations, microBatch).WithBatch(b, t);
        var dResidual = ctx.Scratch(_dResidual, new Shape(Layers.ResidualRows(b * t).Count, Config.Embedding), DType);
        BackwardUnits(0, _units.Length, microBatch, dResidual, b, t);
    }

    /// <summary>
    /// The pipeline seam's backward: units [<paramref name="first"/>, <paramref name="end"/>) of micro-batch slot
    /// <paramref name="microBatch"/>, after their <see cref="ForwardUnits"/> (or <see cref="LossUnits"/>). Works in place on
    /// <paramref name="residualGradient"/> (rows, C): on entry the gradient of the range's output (what the next stage sent back;
    /// ignored when the range ends with the head, whose gradient comes from the loss), on return the gradient of its input (to
    /// send to the previous stage; nothing useful when the range starts with the embeddings, whose gradient is taken).
    /// Parameter gradients accumulate; the slot's saved activations are released at the end.
    /// </summary>
    public void BackwardUnits(int first, int end, int microBatch, Tensor residualGradient, int sequences, int sequenceLength)
    {
        ArgumentNullException.ThrowIfNull(residualGradient);
        CheckRange(first, end, nameof(BackwardUnits));
        CheckResidual(residualGradient, sequences, sequenceLength, "residual gradient", nameof(BackwardUnits));
        var ctx = PassContext.Training(Activations, microBatch).WithBatch(sequences, sequenceLength);
        var hooks = PassHooks;
        var dResidual = residualGradient;                           // (rows, C): this rank's rows of the residual stream
        int rows = dResidual.Size(0), c = Config.Embedding;
        int u = end - 1;
        Tensor? sums = null;                                         // (C): column sums of dResidual as it stands, when taken
        if (_units[u].Kind == UnitKind.Head)
        {
            bool fused = Activations.Contains(microBatch, _dHeadRows.Name);
            if (!fused && !Activations.Contains(microBatch, _dLogits.Name))
                throw new InvalidOperationException($"Transformer.BackwardUnits: micro-batch {microBatch} has no loss gradient; run its loss (LossUnits) first");
            hooks?.BeforeBackward(u);
            Tensor dFinal;                                           // (rows, C)
            if (fused)
            {
                var dRows = ctx.Get(_dHeadRows);                     // (B T, C), from the fused head
                // Whole rows on this rank: the region's backward works in place on them (nothing, or an all-reduce).
                dFinal = dRows.Size(0) == rows ? dRows : ctx.Scratch(_dFinal, new Shape(rows, c), DType);
                HeadInput.Backward(ctx, dRows, dFinal);
            }
            else
            {
                var dLogits = ctx.Get(_dLogits);                     // (N, V)
                dFinal = ctx.Scratch(_dFinal, new Shape(rows, c), DType);
                var dHeadInput = HeadInput.GradientBuffer(ctx, dFinal);   // (B T, C)
                Head.Backward(ctx, dLogits, dHeadInput);
                HeadInput.Backward(ctx, dHeadInput, dFinal);
            }
            Backend.Fill(dResidual, 0);
            // The final norm writes the whole of dResidual (filled with zero above), the top block's MLP projection's dy.
            sums = ResidualSumsFor(ctx, FinalNorm, u - 1, first);
            if (sums is not null) Backend.Fill(sums, 0);
            FinalNorm.Backward(ctx, dFinal, dResidual, sums);
            hooks?.AfterBackward(u);
            u--;
        }
        for (; u >= first && _units[u].Kind == UnitKind.Block; u--)
        {
            hooks?.BeforeBackward(u);
            var block = Blocks[_units[u].Block];
            var below = ResidualSumsFor(ctx, block.Norm1, u - 1, first);   // the same buffer as sums: read before it is refilled
            block.Backward(ctx, dResidual, ResidualBiasGradientsFromNorms, sums, below);
            sums = below;
            hooks?.AfterBackward(u);
        }
        if (u >= first)
        {
            hooks?.BeforeBackward(u);
            ScaleEmbeddings(dResidual);                              // Gemma's sqrt(C): the rows' gradient scales alike
            TokenEmbedding.Backward(ctx, dResidual);
            if (PositionEmbedding is not null)
            {
                // Embed's positions were (start + i) % T: from a sequence boundary, whole sequences sum block by block.
                var (start, count) = Layers.ResidualRows(sequences * sequenceLength);
                if (start % sequenceLength == 0 && count % sequenceLength == 0) PositionEmbedding.BackwardPeriodic(ctx, dResidual, sequenceLength);
                else PositionEmbedding.Backward(ctx, dResidual);
            }
            Activations.Release(microBatch);
            hooks?.AfterBackward(u);
        }
        else Activations.Release(microBatch);
    }

    /// <summary>
    /// The (C) vector into which <paramref name="norm"/>'s backward sums the columns of the residual gradient it leaves, for the
    /// MLP projection of the block of unit <paramref name="below"/>, or null where that block takes its own bias gradient (see
    /// <see cref="ResidualBiasGradientsFromNorms"/>; unit <paramref name="below"/> is not a block of this backward's range
    /// [<paramref name="first"/>, ...)). F32 for 16-bit gradients, whose bias gradient it is added to in F32 as the
    /// projection's own reduction adds its sums.
    /// </summary>
    private Tensor? ResidualSumsFor(in PassContext ctx, INormalization norm, int below, int first)
    {
        if (!ResidualBiasGradientsFromNorms || !norm.SumsInputGradientColumns || below < first || _units[below].Kind != UnitKind.Block
            || !Blocks[_units[below].Block].TakesMlpBiasGradientFromAbove) return null;
        return ctx.Scratch(_dResidualSums, new Shape(Config.Embedding), DType is DType.BF16 or DType.F16 ? DType.F32 : DType);
    }

    /// <summary>Forgets the activations saved for <paramref name="microBatch"/> (e.g. after an evaluation forward).</summary>
    public void ReleaseActivations(int microBatch) => Activations.Release(microBatch);

    /// <summary>A KV cache for <paramref name="batch"/> sequences of up to <paramref name="maxSequence"/> (default MaxSequenceLength) positions.</summary>
    public KvCache CreateKvCache(int batch, int? maxSequence = null)
    {
        CheckWhole(nameof(CreateKvCache));
        int s = maxSequence ?? Config.MaxSequenceLength;
        if (s <= 0 || s > Config.MaxSequenceLength)
            throw new ArgumentOutOfRangeException(nameof(maxSequence), $"KV cache length {s} must be in [1, MaxSequenceLength = {Config.MaxSequenceLength}]");
        // Under tensor parallelism a rank caches the keys and values of its own heads.
        return new KvCache(Backend, DType, Config.Layers, batch, s, CachedKvHeads, Config.HeadSize);
    }

    /// <summary>
    /// Inference: logits (B, T, Vpad) for T new tokens (B, T) I32 that follow the positions already in
    /// <paramref name="cache"/>, whose keys and values it appends (the cache advances by T). Saves nothing;
    /// the logits live in a shared buffer until the next inference call. Checks the token ids on the host when
    /// <see cref="ValidateInputs"/> is set.
    /// </summary>
    public Tensor ForwardWithCache(Tensor tokens, KvCache cache) => ForwardWithCache(tokens, cache, ValidateInputs);

    /// <summary>
    /// <see cref="ForwardWithCache(Tensor, KvCache)"/>, checking the token ids on the host only when
    /// <paramref name="validateTokens"/> (a device-to-host read; pass false for ids the caller produced, such as sampled
    /// ones, and when recording the step into a graph, where no host read may happen). Every launch reads the position
    /// from <see cref="KvCache.Positions"/> on the device, so the enqueued work does not depend on the cache's length.
    /// </summary>
    public Tensor ForwardWithCache(Tensor tokens, KvCache cache, bool validateTokens)
    {
        ArgumentNullException.ThrowIfNull(cache);
        CheckWhole(nameof(ForwardWithCache));
        var (b, t) = CheckTokens(tokens, "tokens", 0, cache, validateTokens);
        if (cache.Batch != b)
            throw new ArgumentException($"Transformer.ForwardWithCache: tokens have batch {b} but the cache was made for batch {cache.Batch}");
        if (cache.Layers != Config.Layers)
            throw new ArgumentException($"Transformer.ForwardWithCache: the cache has {cache.Layers} layers, the model {Config.Layers}");
        if (Layers.SequenceParallel)
            throw new NotSupportedException("Transformer.ForwardWithCache: decoding runs without sequence parallelism; build the model for generation with a plan that has it off");
        var ctx = PassContext.Transient(Activations).WithBatch(b, t);
        var x = Embed(ctx, tokens, b, t, cache).Reshape(b, t, Config.Embedding);   // (B, T, C): the residual stream, updated in place
        foreach (var block in Blocks) x = block.ForwardCached(ctx, x, cache);
        var logits = ForwardHead(ctx, x.Reshape(b * t, Config.Embedding));   // (N, Vpad), gathered over tensor-parallel ranks
        cache.Advance(t);
        return logits.Reshape(b, t, Config.EffectivePaddedVocab);
    }

    /// <summary>
    /// Token (+ learned position) embeddings, as rows (N, C) of the residual stream (this rank's rows under sequence
    /// parallelism); positions start at 0, or at the cache's device-side positions.
    /// </summary>
    private Tensor Embed(in PassContext ctx, Tensor tokens, int b, int t, KvCache? cache)
    {
        int n = b * t;
        var ids = ctx.Buffer(_tokenIds, new Shape(n), DType.I32);   // (N): the caller may reuse its tokens tensor
        Backend.Copy(tokens, ids.Reshape(b, t));
        var x = TokenEmbedding.Forward(ctx, ids);                    // (rows, C)
        if (PositionEmbedding is not null)
        {
            var (start, rows) = Layers.ResidualRows(n);
            var positions = ctx.Buffer(_positionIds, new Shape(rows), DType.I32);
            if (cache is not null) Backend.FillPositions(cache.Positions, positions.Reshape(b, t));
            else
            {
                var host = HostInts(rows);
                for (int i = 0; i < rows; i++) host[i] = (start + i) % t;
                Backend.CopyFromHost<int>(host.AsSpan(0, rows), positions);
            }
            PositionEmbedding.Forward(ctx, positions, x, accumulate: true);
        }
        ScaleEmbeddings(x);
        return x;
    }

    /// <summary>
    /// Gemma: the embedding rows x (N, C) multiplied in place by sqrt(C) as the model's dtype rounds it (transformers
    /// multiplies by the normalizer cast to the hidden states' dtype); nothing otherwise. Serving's embedding calls it too.
    /// </summary>
    public void ScaleEmbeddings(Tensor x)
    {
        if (Config.ScaleEmbeddings) Backend.Scale(x, EmbeddingMultiplier);
    }

    /// <summary>sqrt(C) rounded to the model's dtype (Gemma's embedding normalizer); 1 unless <see cref="TransformerConfig.ScaleEmbeddings"/>.</summary>
    public double EmbeddingMultiplier => !Config.ScaleEmbeddings ? 1.0 : DType switch
    {
        DType.F64 => Math.Sqrt(Config.Embedding),
        DType.BF16 => (float)(BFloat16)(float)Math.Sqrt(Config.Embedding),
        DType.F16 => (double)(Half)Math.Sqrt(Config.Embedding),
        _ => (float)Math.Sqrt(Config.Embedding),
    };

    /// <summary>
    /// Inference under tensor parallelism: each rank's columns (N, V / tp) of the logits all-gathered into the whole
    /// vocabulary (N, V), the same on every rank, for sampling. (Training never gathers them: the loss is vocabulary-parallel.)
    /// </summary>
    /// <summary>
    /// The head over rows of the residual stream (N, C): the final norm, then the logits (N, Vpad), every column; under
    /// tensor parallelism each rank's vocabulary slice is gathered (a collective: every rank calls it).
    /// </summary>
    public Tensor ForwardHead(in PassContext ctx, Tensor hidden)
    {
        var logits = Head.ForwardNormalized(ctx, hidden, FinalNorm);
        CapLogits(logits);
        return TensorParallelism is { } tp ? GatherVocabulary(ctx, logits, tp) : logits;
    }

    /// <summary>Gemma 2's final soft cap, z = c tanh(z / c), on this rank's logits (N, V) in place; nothing without one.</summary>
    private void CapLogits(Tensor logits)
    {
        if (Config.FinalSoftCap > 0) Backend.SoftCap(logits, Config.FinalSoftCap);
    }

    /// <summary>Key/value heads this rank caches: all of them on one device, its own under tensor parallelism.</summary>
    public int CachedKvHeads => Blocks[0].Attention.KvHeads;

    private Tensor GatherVocabulary(in PassContext ctx, Tensor local, TensorParallelism tp)
    {
        int n = local.Size(0), columns = local.Size(1);
        var gathered = ctx.Buffer(_gatheredLogits, new Shape(tp.Size, n, columns), local.DType);   // (tp, N, V / tp), rank order
        tp.Group.AllGather(local, gathered).WaitOnDevice();
        var whole = ctx.Buffer(_wholeLogits, new Shape(n, tp.Size, columns), local.DType);         // (N, tp, V / tp)
        Backend.Copy(gathered.Transpose(0, 1), whole);
        return whole.Reshape(n, tp.Size * columns);
    }

    private InvalidOperationException NotHeld(string what) => new(
        $"Transformer: {what} is not on this rank: it is {Pipeline} and holds units {string.Join(", ", Layout.Units.Select(u => u.Name))}");

    /// <summary>Refuses an operation over the whole model on a pipeline stage, which holds only some of it.</summary>
    private void CheckWhole(string operation)
    {
        if (Pipeline is not null)
            throw new InvalidOperationException($"Transformer.{operation}: this rank is {Pipeline} and holds only units {string.Join(", ", Layout.Units.Select(u => u.Name))}; " +
                "run its units through ForwardUnits/BackwardUnits in a pipeline schedule, or load the checkpoint whole to generate");
    }

    private void CheckRange(int first, int end, string operation)
    {
        if (first < 0 || end > _units.Length || first >= end)
            throw new ArgumentOutOfRangeException(nameof(first), $"Transformer.{operation}: units [{first}, {end}) are not a non-empty range of this rank's {_units.Length} units");
        for (int u = first + 1; u < end; u++)
            if (_units[u].Kind == UnitKind.Embeddings || _units[u - 1].Kind == UnitKind.Head)
                throw new ArgumentException($"Transformer.{operation}: units [{first}, {end}) run the embeddings after a block or past the head");
    }

    /// <summary>Checks a residual-stream tensor: this rank's rows of B x T tokens by C, in the model's dtype, contiguous.</summary>
    private void CheckResidual(Tensor x, int sequences, int sequenceLength, string what, string operation)
    {
        int rows = Layers.ResidualRows(checked(sequences * sequenceLength)).Count;
        if (x.Rank != 2 || x.Size(0) != rows || x.Size(1) != Config.Embedding || x.DType != DType || !x.IsContiguous)
            throw new ArgumentException($"Transformer.{operation}: the {what} must be contiguous ({rows}, {Config.Embedding}) {DType} (this rank's rows of {sequences} x {sequenceLength} tokens), got {x.Shape} {x.DType}");
    }

    /// <summary>
    /// The sum over this model's mixture-of-experts blocks of their load-balancing losses (coefficient included) in the last
    /// training forward; 0 for a dense model or a coefficient of 0. Reading it does not wait on the device (routing already did).
    /// </summary>
    public double RouterAuxiliaryLoss => Blocks.Sum(b => b.Mlp is SparseMoeFeedForward moe ? moe.LastAuxiliaryLoss : 0);

    /// <summary>
    /// Gives the mixture-of-experts blocks the weight of their load-balancing losses in the objective: the loss scale of the
    /// step (<see cref="Loss"/>'s lossScale) times the micro-batch's <paramref name="tokens"/>, so that each block's loss
    /// counts as if every token carried it, as the cross-entropy's terms do. <see cref="LossUnits"/> calls it; a pipeline stage
    /// without the head calls it before its backward.
    /// </summary>
    public void SetRouterLossScale(double lossScale, int tokens)
    {
        foreach (var block in Blocks)
            if (block.Mlp is SparseMoeFeedForward moe) moe.AuxiliaryLossWeight = lossScale * tokens;
    }

    private static void CheckExpertParallel(TransformerConfig config, int ep, TensorParallelism? tp, PipelineParallelism? pipeline,
        LoraOptions? lora, MultiLoraBatch? served)
    {
        if (!config.IsMixtureOfExperts)
            throw new ArgumentException($"expert parallelism: the model has no experts (Experts = {config.Experts}); ep ({ep}) applies to mixture-of-experts models (Mixtral, Qwen3-MoE) only");
        if (config.Experts % ep != 0)
            throw new ArgumentException($"expert parallelism: ep ({ep}) must divide the experts ({config.Experts})");
        if (tp is { Size: > 1 }) throw new NotSupportedException($"expert parallelism: ep ({ep}) with tensor parallelism (tp {tp.Size}) is not built");
        if (pipeline is not null) throw new NotSupportedException($"expert parallelism: ep ({ep}) with pipeline stages is not built");
        if (lora is not null || served is not null) throw new NotSupportedException($"expert parallelism: ep ({ep}) with LoRA adapters is not built");
    }

    /// <summary>
    /// Tensor parallelism over <paramref name="tp"/> ranks splits heads, hidden units and the padded vocabulary; each must
    /// divide evenly, or (key/value heads) be a divisor of tp. The message names the configuration field and the numbers.
    /// </summary>
    public static void CheckTensorParallel(TransformerConfig config, int tp)
    {
        int kv = config.EffectiveKvHeads;
        if (config.Heads % tp != 0)
            throw new ArgumentException($"tensor parallelism: tp ({tp}) must divide the attention heads (Heads = {config.Heads})");
        if (kv % tp != 0 && tp % kv != 0)
            throw new ArgumentException($"tensor parallelism: tp ({tp}) must divide the key/value heads (KvHeads = {kv}) or be a multiple of them");
        if (!config.IsMixtureOfExperts && config.EffectiveHidden % tp != 0)
            throw new ArgumentException($"tensor parallelism: tp ({tp}) must divide the MLP width (Hidden = {config.EffectiveHidden})");
        // A mixture of experts splits every expert's hidden units (and the shared expert's) over the ranks.
        if (config.IsMixtureOfExperts && config.EffectiveExpertHidden % tp != 0)
            throw new ArgumentException($"tensor parallelism: tp ({tp}) must divide the experts' width (ExpertHidden = {config.EffectiveExpertHidden}); each rank holds ExpertHidden / tp of every expert");
        if (config.SharedExpertHidden % tp != 0)
            throw new ArgumentException($"tensor parallelism: tp ({tp}) must divide the shared expert's width (SharedExpertHidden = {config.SharedExpertHidden})");
        if (config.EffectivePaddedVocab % tp != 0)
            throw new ArgumentException($"tensor parallelism: tp ({tp}) must divide the padded vocabulary (PaddedVocabSize = {config.EffectivePaddedVocab}); pad it to a multiple of tp");
    }

    private (int B, int T) CheckTokens(Tensor tokens, string what, int minimum, KvCache? cache) => CheckTokens(tokens, what, minimum, cache, ValidateInputs);

    private (int B, int T) CheckTokens(Tensor tokens, string what, int minimum, KvCache? cache, bool validate)
    {
        ArgumentNullException.ThrowIfNull(tokens, what);
        if (tokens.Rank != 2 || tokens.DType != DType.I32)
            throw new ArgumentException($"Transformer: {what} must be (B, T) I32, got {tokens.Shape} {tokens.DType}");
        int b = tokens.Size(0), t = tokens.Size(1);
        if (b == 0 || t == 0) throw new ArgumentException($"Transformer: {what} {tokens.Shape} is empty");
        int start = cache?.Length ?? 0;
        if (start + t > Config.MaxSequenceLength)
            throw new ArgumentException($"Transformer: {start} cached + {t} new positions exceed MaxSequenceLength ({Config.MaxSequenceLength})");
        cache?.EnsureRoom(t);
        if (validate)
        {
            var host = HostInts(b * t);
            Backend.CopyToHost<int>(tokens, host.AsSpan(0, b * t));
            for (int i = 0; i < b * t; i++)
            {
                if (host[i] >= Config.VocabSize || host[i] < minimum)
                    throw new ArgumentException(
                        $"Transformer: {what}[{i / t}, {i % t}] = {host[i]} is outside [{minimum}, VocabSize = {Config.VocabSize})");
            }
        }
        return (b, t);
    }

    private int[] HostInts(int count)
    {
        if (_host.Length < count) _host = new int[count];
        return _host;
    }

    private static double NextNormal(Random rng)
    {
        // Box-Muller; 1 - u keeps the logarithm finite.
        double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
        return Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2.0 * Math.PI * u2);
    }
}
