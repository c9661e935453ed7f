using Tessera.Models;
using Tessera.Tensors;

namespace Tessera.Training.Pipeline;

/// <summary>
/// A <see cref="Transformer"/> pipeline stage as an <see cref="IPipelineStage"/>: each chunk runs the model's own code over its
/// units (<see cref="Transformer.ForwardUnits"/>, <see cref="Transformer.LossUnits"/> on the last virtual stage, and
/// <see cref="Transformer.BackwardUnits"/>); the first virtual stage reads the
/// step's tokens, the last computes the loss against its targets and adds its share to the step's loss sum. Everything a slot
/// needs (received activations, gradients, token and target buffers, saved activations) lives in the model's activation store
/// under the slot.
/// </summary>
internal sealed class TransformerStage : IPipelineStage
{
    private readonly Transformer _model;
    private readonly PipelineGradientHooks _hooks;
    private readonly int _b, _t;
    private readonly Shape _message;
    private int[][] _inputs = [], _targets = [];
    private Tensor? _lossSum;
    private double _lossScale, _sumScale;

    public TransformerStage(Transformer model, PipelineGradientHooks hooks, int sequences, int sequenceLength)
    {
        _model = model;
        _hooks = hooks;
        _b = sequences;
        _t = sequenceLength;
        _message = new Shape(model.Layers.ResidualRows(sequences * sequenceLength).Count, model.Config.Embedding);   // (rows, C)
    }

    public IBackend Backend => _model.Backend;

    /// <summary>
    /// Sets the step's micro-batches (host token ids, (B T) each) and how losses count: dlogits scaled by
    /// <paramref name="lossScale"/>, each micro-batch's per-token losses added into <paramref name="lossSum"/> times
    /// <paramref name="sumScale"/>.
    /// </summary>
    public void Begin(int[][] inputs, int[][] targets, Tensor lossSum, double lossScale, double sumScale)
    {
        _inputs = inputs;
        _targets = targets;
        _lossSum = lossSum;
        _lossScale = lossScale;
        _sumScale = sumScale;
        _model.SetRouterLossScale(lossScale, inputs.Length == 0 ? 0 : inputs[0].Length);   // a micro-batch's tokens
    }

    /// <summary>The activation-store slot of message slot 0: message buffers keep out of the activation slots' range, so the store's per-slot sizes read as activations.</summary>
    public const int MessageSlotBase = 1 << 20;

    public Tensor MessageBuffer(int slot, bool gradient) =>
        _model.Activations.Buffer(MessageSlotBase + slot, gradient ? "pipeline.gradient" : "pipeline.input", _message, _model.DType);

    public Tensor? Forward(int chunk, int microBatch, int slot, Tensor? input)
    {
        var pipeline = _model.Pipeline!;
        int virtualStage = pipeline.VirtualStage(chunk);
        var (first, end) = _model.ChunkUnits(chunk);
        var x = input;
        if (pipeline.Partition.HasEmbeddings(virtualStage))
        {
            x = _model.Activations.Buffer(slot, "pipeline.tokens", new Shape(_b, _t), DType.I32);   // (B, T): read by the backward too
            Backend.CopyFromHost<int>(_inputs[microBatch], x);
        }
        if (!pipeline.Partition.HasHead(virtualStage)) return _model.ForwardUnits(first, end, slot, x!, _b, _t);
        var targets = _model.Activations.Buffer(slot, "pipeline.targets", new Shape(_b, _t), DType.I32);
        Backend.CopyFromHost<int>(_targets[microBatch], targets);
        var losses = _model.LossUnits(first, end, slot, x!, targets, _lossScale, _b, _t);             // (B T)
        Backend.Sum(losses, _lossSum!, _sumScale, accumulate: true);
        return null;
    }

    public void Backward(int chunk, int microBatch, int slot, Tensor gradient, bool lastOfChunk)
    {
        var (first, end) = _model.ChunkUnits(chunk);
        _hooks.ReduceNow = lastOfChunk;
        try
        {
            _model.BackwardUnits(first, end, slot, gradient, _b, _t);
        }
        finally
        {
            _hooks.ReduceNow = false;
        }
    }

    public void Release(int slot) => _model.ReleaseActivations(slot);
}
