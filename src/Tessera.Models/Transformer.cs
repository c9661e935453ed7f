using Tessera.Models.Blocks;
using Tessera.Nn;
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
        _gatheredLogits = new("lm_head.gathered"), _wholeLogits = new("lm_head.whole"), _dHeadRows = new("lm_head.dx");
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
    public Transformer(TransformerConfig config, IBackend backend, DType dtype, ArenaStorage storage = ArenaStorage.Full,
        TensorParallelism? tensorParallelism = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(backend);
        config.Validate();
        if (dtype is not (DType.F32 or DType.F64 or DType.BF16))
            throw new ArgumentException($"Transformer: dtype {dtype} is not supported; use F32, F64 or BF16");
        Config = config;
        Backend = backend;
        DType = dtype;
        Activations = new ActivationStore(backend);

        if (tensorParallelism is { Size: > 1 }) CheckTensorParallel(config, tensorParallelism.Size);

        // The model's units, in pass order: embeddings, one per block, the final norm and head (which borrows the
        // embeddings when tied). Every consumer (pass hooks, ZeRO-3, gradient buckets, pipeline stages) reads them.
        // Layers come from the factory, which builds each as the parallel plan says (plain layers on one device).
        var parameters = tensorParallelism is null
            ? new ParameterLayoutBuilder()
            : new ParameterLayoutBuilder(tensorParallelism.Mesh, tensorParallelism.Coordinate);
        var layers = new LayerFactory(parameters, tensorParallelism);
        Layers = layers;
        int c = config.Embedding, vPad = config.EffectivePaddedVocab;
        parameters.BeginUnit("embeddings");
        TokenEmbedding = layers.Embedding("tok_emb", vPad, c);
        if (config.Family == ModelFamily.Gpt2)
            PositionEmbedding = layers.Embedding("pos_emb", config.MaxSequenceLength, c);
        var blocks = new TransformerBlock[config.Layers];
        for (int i = 0; i < blocks.Length; i++)
        {
            parameters.BeginUnit($"blocks.{i}");
            blocks[i] = new TransformerBlock(layers, config, i);
        }
        Blocks = blocks;
        if (config.TiedEmbeddings) parameters.BeginUnit("head", 0);
        else parameters.BeginUnit("head");
        FinalNorm = config.Family == ModelFamily.Llama
            ? layers.RmsNorm("final_norm", c, config.NormEpsilon)
            : layers.LayerNorm("final_norm", c, config.NormEpsilon, config.Bias);
        HeadInput = layers.InputRegion("head");
        Head = config.TiedEmbeddings
            ? layers.TiedLinear("lm_head", TokenEmbedding.Weight)
            : layers.Linear("lm_head", c, vPad, bias: false);
        _vocabParallelLoss = layers.CrossEntropy("lm_head", config.VocabSize, vPad);
        _headLoss = new FusedLinearCrossEntropy(Head, config.VocabSize, _vocabParallelLoss);
        _lossChunkRows = FusedLinearCrossEntropy.DefaultChunkRows(Head.OutFeatures);
        Layout = parameters.Build();
        if (storage == ArenaStorage.Full) _ = new ParameterArena(Layout, backend, dtype);   // attaches itself to the layout
    }

    /// <summary>The configuration.</summary>
    public TransformerConfig Config { get; }

    /// <summary>How the layers were built: the parallel plan, this rank's tensor parallelism, and the parameters with partial gradients.</summary>
    public LayerFactory Layers { get; }

    /// <summary>This rank's tensor parallelism, or null on one device.</summary>
    public TensorParallelism? TensorParallelism => Layers.TensorParallelism;

    /// <summary>The communication in front of the LM head (nothing on one device).</summary>
    public ITensorParallelRegion HeadInput { get; }

    private readonly VocabParallelCrossEntropy? _vocabParallelLoss;
    private readonly FusedLinearCrossEntropy _headLoss;

    /// <summary>
    /// Rows of the LM head's logits that <see cref="Loss"/> computes at a time (the fused linear + cross-entropy,
    /// <see cref="FusedLinearCrossEntropy"/>): a chunk's product, loss, logit gradient, input gradient and weight gradient
    /// run before the next chunk's, so neither the (B·T, V) logits nor their gradient exist whole and no tensor limits the
    /// micro-batch. Default: <see cref="FusedLinearCrossEntropy.DefaultChunkRows"/> of this rank's vocabulary columns (the
    /// rows whose logits fit in 2^28 elements: 5,336 for GPT-2's 50,304, 2,092 for Llama 3's 128,256); a micro-batch of
    /// fewer rows is one chunk. 0 runs the unfused head: the whole micro-batch's logits materialized and their gradient
    /// kept until <see cref="Backward"/> (the reference the fused head is tested against).
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
            : "Transformer: the model's parameters are fully sharded (ZeRO-3) and have no full arena; read them through the data-parallel strategy");

    /// <summary>Saved activations per micro-batch and the pooled buffers.</summary>
    public ActivationStore Activations { get; }

    /// <summary>Token embedding "tok_emb" (Vpad, C).</summary>
    public Embedding TokenEmbedding { get; }

    /// <summary>Learned positions "pos_emb" (MaxSeq, C) for GPT-2; null for Llama.</summary>
    public Embedding? PositionEmbedding { get; }

    /// <summary>The decoder blocks.</summary>
    public IReadOnlyList<TransformerBlock> Blocks { get; }

    /// <summary>Norm after the last block, "final_norm".</summary>
    public INormalization FinalNorm { get; }

    /// <summary>LM head C to Vpad: "lm_head" when untied, else over tok_emb.weight.</summary>
    public Linear Head { get; }

    /// <summary>
    /// Selective recomputation: when true, each block keeps only its input during a training forward
    /// and recomputes its activations at the start of its backward (less memory, one more block forward).
    /// Gradients are bit-identical either way. Default false.
    /// </summary>
    public bool RecomputeActivations { get; set; }

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
    /// norm weights, zeros for biases and for the padding rows of the vocabulary. Writes the masters (F32 under mixed
    /// precision) and casts the values. A sharded arena (ZeRO-3) is initialized through its trainer
    /// (<c>DataParallelTrainer.InitializeWeights</c>), which writes the same values into the rank's shards.
    /// </summary>
    public void InitializeWeights(int seed)
    {
        if (Layout.Storage is not ParameterArena arena)
            throw new InvalidOperationException("Transformer.InitializeWeights: the model has no full parameter arena (ZeRO-3 shards); " +
                "initialize through its trainer (Trainer.InitializeWeights), which writes the same values into each rank's shards");
        foreach (var (p, global) in InitialValues(seed))
        {
            var values = p.LocalValues(global);
            var target = p.MasterOrValue;                            // the F32 master under mixed precision
            if (target.DType == DType.F64) Backend.CopyFromHost<double>(values, target);
            else Backend.CopyFromHost<float>(Array.ConvertAll(values, v => (float)v), target);
        }
        arena.SyncValuesFromMasters();
    }

    /// <summary>
    /// The values <see cref="InitializeWeights"/> writes, one parameter at a time in declaration order, on the host in F64, as
    /// whole (global) tensors (each array is fresh and belongs to the caller; <see cref="Parameter.LocalValues{T}"/> gives a
    /// rank's part). The random stream is consumed in this order whatever the caller keeps, so a rank that keeps only its
    /// part (a tensor-parallel shard, ZeRO-3's owned ranges) gets exactly the values of a full initialization.
    /// </summary>
    public IEnumerable<(Parameter Parameter, double[] Values)> InitialValues(int seed)
    {
        var rng = new Random(seed);
        double std = Config.InitStd, residualStd = std / Math.Sqrt(2.0 * Config.Layers);
        foreach (var p in Layout.Parameters)
        {
            var values = new double[p.GlobalShape.NumElements];
            bool isBias = p.Name.EndsWith(".bias", StringComparison.Ordinal);
            if (isBias) { /* zeros */ }
            else if (!p.WeightDecay) Array.Fill(values, 1.0);          // norm scales
            else
            {
                double s = p.Name.EndsWith("attn.proj.weight", StringComparison.Ordinal) || p.Name.EndsWith("mlp.proj.weight", StringComparison.Ordinal)
                    ? residualStd : std;
                long rows = p.Name is "tok_emb.weight" or "lm_head.weight" ? Config.VocabSize : p.GlobalShape[0];
                long filled = rows * (p.GlobalShape.Rank == 2 ? p.GlobalShape[1] : 1);
                for (long i = 0; i < filled; i++) values[i] = s * NextNormal(rng);
            }
            yield return (p, values);
        }
    }

    /// <summary>
    /// Training forward of micro-batch <paramref name="microBatch"/>: logits (B, T, V) for tokens (B, T) I32, saving
    /// activations for <see cref="Backward"/>; V is the padded vocabulary (<see cref="LocalVocab"/>: this rank's share under
    /// tensor parallelism). Columns past VocabSize are padding. The logits live in the micro-batch's pooled buffer until its
    /// next forward (an unfused <see cref="Loss"/>, <see cref="LossChunkRows"/> = 0, turns them into dlogits).
    /// </summary>
    public Tensor Forward(Tensor tokens, int microBatch = 0)
    {
        var (rows, b, t) = ForwardToHead(tokens, microBatch);         // (B T, C)
        var ctx = PassContext.Training(Activations, microBatch);
        var logits = Head.Forward(ctx, rows);                         // (B T, V)
        PassHooks?.AfterForward(Blocks.Count + 1);
        return logits.Reshape(b, t, LocalVocab);
    }

    /// <summary>
    /// The training forward of micro-batch <paramref name="microBatch"/> up to the LM head's input: embeddings, blocks, the
    /// final norm and the head's input region, saving activations. Returns the whole rows (B T, C) the head reads, with the
    /// head unit's forward begun (<see cref="ITransformerPassHooks.BeforeForward"/>) and not ended.
    /// </summary>
    private (Tensor Rows, int B, int T) ForwardToHead(Tensor tokens, int microBatch)
    {
        var (b, t) = CheckTokens(tokens, "tokens", 0, null);
        var ctx = PassContext.Training(Activations, microBatch).WithBatch(b, t);
        Activations.Release(microBatch);                             // nothing stale from an earlier forward of this slot
        var hooks = PassHooks;
        int head = Blocks.Count + 1;
        hooks?.BeforeForward(0);
        var x = Embed(ctx, tokens, b, t, cache: null);               // (N, C): this rank's rows of the residual stream
        hooks?.AfterForward(0);
        for (int i = 0; i < Blocks.Count; i++)
        {
            hooks?.BeforeForward(i + 1);
            x = Blocks[i].Forward(ctx, x, RecomputeActivations);
            hooks?.AfterForward(i + 1);
        }
        hooks?.BeforeForward(head);
        if (RecomputeActivations)
        {
            // The last checkpointed block left its output in a shared buffer; the final norm keeps its input.
            var kept = ctx.Buffer(_blocksOut, x.Shape, DType);
            Backend.Copy(x, kept);
            x = kept;
        }
        var rows = HeadInput.Forward(ctx, FinalNorm.Forward(ctx, x));   // (B T, C): whole rows
        ctx.Save(_tokens, tokens.IsContiguous ? tokens : Backend.Contiguous(tokens));
        return (rows, b, t);
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
        if (LossChunkRows == 0) return UnfusedLoss(tokens, targets, microBatch, lossScale);
        var (rows, b, t) = ForwardToHead(tokens, microBatch);         // (N, C) whole rows
        int head = Blocks.Count + 1;
        var ctx = PassContext.Training(Activations, microBatch);
        var (target, losses) = LossBuffers(ctx, targets, b, t);
        var dRows = ctx.Buffer(_dHeadRows, rows.Shape, DType);        // (N, C): the loss's gradient at the head's input
        var hooks = PassHooks;
        if (lossScale == 0)
        {
            _headLoss.Forward(ctx, rows, target, losses, lossScale, dx: null, LossChunkRows);
            hooks?.AfterForward(head);
            Backend.Fill(dRows, 0);
        }
        else
        {
            // The head's backward begins before its forward is over: each chunk's weight gradient is taken as it goes.
            hooks?.AfterForward(head);
            hooks?.BeforeBackward(head);
            _headLoss.Forward(ctx, rows, target, losses, lossScale, dRows, LossChunkRows);
        }
        ctx.Save(_dHeadRows, dRows);
        return losses;
    }

    /// <summary><see cref="Loss"/> with the whole micro-batch's logits materialized and their gradient kept for <see cref="Backward"/>.</summary>
    private Tensor UnfusedLoss(Tensor tokens, Tensor targets, int microBatch, double lossScale)
    {
        var logits = Forward(tokens, microBatch);                    // (B, T, V)
        int b = logits.Size(0), t = logits.Size(1), n = b * t, v = Config.VocabSize, vPad = Config.EffectivePaddedVocab;
        var ctx = PassContext.Training(Activations, microBatch);
        var (target, losses) = LossBuffers(ctx, targets, b, t);
        var l2 = logits.Reshape(n, LocalVocab);
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
    /// saved activations.
    /// </summary>
    public void Backward(int microBatch = 0)
    {
        var store = PassContext.Training(Activations, microBatch);
        bool fused = Activations.Contains(microBatch, _dHeadRows.Name);
        if (!fused && !Activations.Contains(microBatch, _dLogits.Name))
            throw new InvalidOperationException($"Transformer.Backward: micro-batch {microBatch} has no loss gradient; call Loss(tokens, targets, {microBatch}, scale) first");
        var tokens = store.Get(_tokens);                             // (B, T)
        int b = tokens.Size(0), t = tokens.Size(1), c = Config.Embedding;
        var ctx = store.WithBatch(b, t);
        int rows = Layers.ResidualRows(b * t).Count;                 // this rank's rows of the residual stream
        var hooks = PassHooks;
        int head = Blocks.Count + 1;
        hooks?.BeforeBackward(head);
        Tensor dFinal;                                               // (rows, C)
        if (fused)
        {
            var dRows = store.Get(_dHeadRows);                       // (B T, C), from the fused head
            // Whole rows on this rank: the region's backward works in place on them (nothing, or an all-reduce).
            dFinal = dRows.Size(0) == rows ? dRows : ctx.Scratch(_dFinal, new Shape(rows, c), DType);
            HeadInput.Backward(ctx, dRows, dFinal);
        }
        else
        {
            var dLogits = store.Get(_dLogits);                       // (N, V)
            dFinal = ctx.Scratch(_dFinal, new Shape(rows, c), DType);
            var dHeadInput = HeadInput.GradientBuffer(ctx, dFinal);  // (B T, C)
            Head.Backward(ctx, dLogits, dHeadInput);
            HeadInput.Backward(ctx, dHeadInput, dFinal);
        }
        var dResidual = ctx.Scratch(_dResidual, new Shape(rows, c), DType);
        Backend.Fill(dResidual, 0);
        FinalNorm.Backward(ctx, dFinal, dResidual);
        hooks?.AfterBackward(head);
        for (int i = Blocks.Count - 1; i >= 0; i--)
        {
            hooks?.BeforeBackward(i + 1);
            Blocks[i].Backward(ctx, dResidual);
            hooks?.AfterBackward(i + 1);
        }
        hooks?.BeforeBackward(0);
        TokenEmbedding.Backward(ctx, dResidual);
        PositionEmbedding?.Backward(ctx, dResidual);
        Activations.Release(microBatch);
        hooks?.AfterBackward(0);
    }

    /// <summary>Forgets the activations saved for <paramref name="microBatch"/> (e.g. after an evaluation forward).</summary>
    public void ReleaseActivations(int microBatch) => Activations.Release(microBatch);

    /// <summary>A KV cache for <paramref name="batch"/> sequences of up to <paramref name="maxSequence"/> (default MaxSequenceLength) positions.</summary>
    public KvCache CreateKvCache(int batch, int? maxSequence = null)
    {
        int s = maxSequence ?? Config.MaxSequenceLength;
        if (s <= 0 || s > Config.MaxSequenceLength)
            throw new ArgumentOutOfRangeException(nameof(maxSequence), $"KV cache length {s} must be in [1, MaxSequenceLength = {Config.MaxSequenceLength}]");
        // Under tensor parallelism a rank caches the keys and values of its own heads.
        return new KvCache(Backend, DType, Config.Layers, batch, s, Blocks[0].Attention.KvHeads, Config.HeadSize);
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
        var logits = Head.ForwardNormalized(ctx, x.Reshape(b * t, Config.Embedding), FinalNorm);   // (N, V / tp)
        if (TensorParallelism is { } tp) logits = GatherVocabulary(ctx, logits, tp);
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
        return x;
    }

    /// <summary>
    /// Inference under tensor parallelism: each rank's columns (N, V / tp) of the logits all-gathered into the whole
    /// vocabulary (N, V), the same on every rank, for sampling. (Training never gathers them: the loss is vocabulary-parallel.)
    /// </summary>
    private Tensor GatherVocabulary(in PassContext ctx, Tensor local, TensorParallelism tp)
    {
        int n = local.Size(0), columns = local.Size(1);
        var gathered = ctx.Buffer(_gatheredLogits, new Shape(tp.Size, n, columns), local.DType);   // (tp, N, V / tp), rank order
        tp.Group.AllGather(local, gathered).WaitOnDevice();
        var whole = ctx.Buffer(_wholeLogits, new Shape(n, tp.Size, columns), local.DType);         // (N, tp, V / tp)
        Backend.Copy(gathered.Transpose(0, 1), whole);
        return whole.Reshape(n, tp.Size * columns);
    }

    /// <summary>
    /// Tensor parallelism over <paramref name="tp"/> ranks splits heads, hidden units and the padded vocabulary; each must
    /// divide evenly, or (key/value heads) be a divisor of tp. The message names the configuration field and the numbers.
    /// </summary>
    /// <summary>
    /// Throws an <see cref="ArgumentException"/> naming the field when <paramref name="config"/> cannot be split over
    /// <paramref name="tp"/> tensor-parallel ranks (heads, key/value heads, MLP width and padded vocabulary must divide).
    /// </summary>
    public static void CheckTensorParallel(TransformerConfig config, int tp)
    {
        int kv = config.EffectiveKvHeads;
        if (config.Heads % tp != 0)
            throw new ArgumentException($"tensor parallelism: tp ({tp}) must divide the attention heads (Heads = {config.Heads})");
        if (kv % tp != 0 && tp % kv != 0)
            throw new ArgumentException($"tensor parallelism: tp ({tp}) must divide the key/value heads (KvHeads = {kv}) or be a multiple of them");
        if (config.EffectiveHidden % tp != 0)
            throw new ArgumentException($"tensor parallelism: tp ({tp}) must divide the MLP width (Hidden = {config.EffectiveHidden})");
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
