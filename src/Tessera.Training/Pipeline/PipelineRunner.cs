using Tessera.Distributed;
using Tessera.Models;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Training.Parallel;

namespace Tessera.Training.Pipeline;

/// <summary>
/// The pipeline half of a <see cref="Trainer"/> whose model is a pipeline stage: a step's micro-batches (the trainer's
/// accumulation micro-batches) run through the schedule instead of one after another, the loss is summed over the pipeline group
/// (only the last stage computes it), and a tied token embedding's two copies get their gradients summed over the embedding
/// group before the update (Megatron's embedding group). The data-parallel strategy's gradient reduction is kept, but each
/// unit's bucket is reduced after its own chunk's last backward (<see cref="PipelineGradientHooks"/>).
/// <para>
/// ZeRO-3 is refused (it gathers and reduce-scatters every unit on every micro-batch, which a pipeline multiplies; the stages
/// already split the parameters, and DeepSpeed refuses the combination too), and so is ZeRO-2 with a tied embedding across
/// stages (its reduced gradient exists only as each rank's shard, laid out differently on the first and last stages, so the
/// two copies could not be summed).
/// </para>
/// </summary>
public sealed class PipelineRunner
{
    private readonly Transformer _model;
    private readonly PipelineParallelism _pipeline;
    private readonly PipelineExecutor _executor;
    private readonly PipelineGradientHooks _hooks;
    private readonly TransformerStage _stage;
    private readonly int _tokens;                    // B x T of a micro-batch
    private int[][] _inputs = [], _targets = [];
    private PipelineExecutor? _evaluation;

    /// <summary>
    /// The pipeline of <paramref name="model"/> (a stage: <see cref="Transformer.Pipeline"/> set) under
    /// <paramref name="parallelism"/>, with <paramref name="kind"/>'s schedule over <paramref name="options"/>' accumulation
    /// micro-batches of <see cref="TrainerOptions.BatchSize"/> x <see cref="TrainerOptions.SequenceLength"/>. Wraps the model's
    /// pass hooks; the schedule is checked now, on every rank alike.
    /// </summary>
    public PipelineRunner(Transformer model, IDataParallelism parallelism, PipelineScheduleKind kind, TrainerOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(parallelism);
        ArgumentNullException.ThrowIfNull(options);
        _pipeline = model.Pipeline ?? throw new ArgumentException("pipeline runner: the model is not a pipeline stage (built without PipelineParallelism)");
        _model = model;
        string where = _pipeline.Group.Describe();
        if (parallelism is FullyShardedDataParallel)
            throw new ArgumentException($"{where}: ZeRO-3 does not combine with pipeline parallelism: it would gather and reduce-scatter every unit on every micro-batch of the schedule; " +
                "the stages already split the parameters, so use ZeRO-1 (or 2) over the data-parallel ranks");
        if (parallelism is BucketedDataParallel { Layout.Stage: ZeroStage.Gradients } && model.Config.TiedEmbeddings)
            throw new ArgumentException($"{where}: ZeRO-2 does not combine with a tied token embedding over pipeline stages: the first and last stages hold the table's reduced gradient " +
                "only as differently laid-out shards, so the two copies' gradients cannot be summed; use ZeRO-1");
        Schedule = PipelineSchedule.Create(kind, _pipeline.Stages, _pipeline.Chunks, options.GradientAccumulationSteps);
        _executor = new PipelineExecutor(Schedule, _pipeline.Group);
        _hooks = new PipelineGradientHooks(model.PassHooks);
        model.PassHooks = _hooks;
        _stage = new TransformerStage(model, _hooks, options.BatchSize, options.SequenceLength);
        _tokens = options.BatchSize * options.SequenceLength;
    }

    /// <summary>The training schedule (m = the accumulation micro-batches).</summary>
    public PipelineSchedule Schedule { get; }

    /// <summary>The pipeline group.</summary>
    public ProcessGroup Group => _pipeline.Group;

    /// <summary>
    /// Bytes the model's activation store pools for the schedule's activation slots: the activations of the micro-batches this
    /// rank held at once (the memory a schedule keeps in flight; the shared slots and message buffers not counted).
    /// </summary>
    public long ActivationBytes => _model.Activations.BufferedBytes(slot => slot is >= 0 and < TransformerStage.MessageSlotBase);

    /// <summary>What the last training step's run of the schedule measured on this rank.</summary>
    public PipelineRunStatistics? LastRun { get; private set; }

    /// <summary>Keeps micro-batch <paramref name="microBatch"/>'s host token ids (B x T each, copied) for the next run.</summary>
    public void SetMicroBatch(int microBatch, ReadOnlySpan<int> inputs, ReadOnlySpan<int> targets)
    {
        if (inputs.Length != _tokens || targets.Length != _tokens)
            throw new ArgumentException($"pipeline runner: micro-batch {microBatch} has {inputs.Length} inputs and {targets.Length} targets; a micro-batch has {_tokens} tokens");
        while (_inputs.Length <= microBatch)
        {
            _inputs = [.. _inputs, new int[_tokens]];
            _targets = [.. _targets, new int[_tokens]];
        }
        inputs.CopyTo(_inputs[microBatch]);
        targets.CopyTo(_targets[microBatch]);
    }

    /// <summary>
    /// Runs the training schedule over the micro-batches set: every forward and backward of this rank, the gradients accumulated
    /// (and reduced by the data-parallel strategy as each chunk completes); the last stage adds each micro-batch's mean loss times
    /// <paramref name="scale"/> into <paramref name="lossSum"/>, whose dlogits <paramref name="scale"/> also scales.
    /// </summary>
    public void Train(Tensor lossSum, double scale)
    {
        _stage.Begin(_inputs, _targets, lossSum, scale, scale);
        LastRun = _executor.Run(_stage);
    }

    /// <summary>
    /// A forward-only pass of the first <paramref name="microBatches"/> micro-batches set (validation): the last stage adds each
    /// one's per-token losses times <paramref name="sumScale"/> into <paramref name="lossSum"/>. Keeps no activations.
    /// </summary>
    public void Evaluate(int microBatches, Tensor lossSum, double sumScale)
    {
        if (_evaluation?.Schedule.MicroBatches != microBatches)
            _evaluation = new PipelineExecutor(PipelineSchedule.ForwardOnly(_pipeline.Stages, _pipeline.Chunks, microBatches), _pipeline.Group);
        _stage.Begin(_inputs, _targets, lossSum, 0, sumScale);
        _evaluation.Run(_stage);
    }

    /// <summary>Collective over the pipeline group: the loss, which only the last stage has added to, on every stage.</summary>
    public void ReduceLoss(Tensor lossSum) => _pipeline.Group.AllReduce(lossSum, ReduceOp.Sum).WaitOnDevice();

    /// <summary>
    /// Collective over the embedding group (first and last stage) after the data-parallel reduction: a tied token embedding's two
    /// copies get the sum of their gradients (the lookup's on the first stage, the LM head's on the last), so the same update
    /// keeps them equal. Nothing for an untied model, one stage, or a middle stage.
    /// </summary>
    public void SynchronizeTiedEmbedding()
    {
        if (!_model.Config.TiedEmbeddings || _pipeline.Stages == 1 || !(_pipeline.IsFirst || _pipeline.IsLast)) return;
        var table = _model.TiedEmbeddingCopy ?? _model.TokenEmbedding.Weight;
        _pipeline.EmbeddingGroup().AllReduce(table.Grad, ReduceOp.Sum).WaitOnDevice();
    }
}
