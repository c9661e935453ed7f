using Tessera.Tensors;

namespace Tessera.Training.Pipeline;

/// <summary>
/// A pipeline stage whose forward and backward only wait a fixed time (every virtual stage alike) and whose messages are one
/// element: the schedule's timing laid bare, for measuring its bubble on thread ranks (the executor's counterpart of
/// <see cref="PipelineSimulator"/> with <see cref="PipelineCosts.Uniform"/> costs). Waiting sleeps rather than spins, so
/// ranks sharing few cores do not slow each other.
/// </summary>
/// <param name="backend">Where the one-element message buffers live.</param>
/// <param name="forward">How long each forward waits.</param>
/// <param name="backward">How long each backward waits.</param>
public sealed class FixedCostStage(IBackend backend, TimeSpan forward, TimeSpan backward) : IPipelineStage
{
    private readonly Dictionary<(int, bool), Tensor> _buffers = [];

    /// <inheritdoc/>
    public IBackend Backend => backend;

    /// <inheritdoc/>
    public Tensor MessageBuffer(int slot, bool gradient)
    {
        if (!_buffers.TryGetValue((slot, gradient), out var t)) _buffers[(slot, gradient)] = t = backend.Zeros(new Shape(1), DType.F32);
        return t;
    }

    /// <inheritdoc/>
    public Tensor? Forward(int chunk, int microBatch, int slot, Tensor? input)
    {
        Thread.Sleep(forward);
        return MessageBuffer(slot, gradient: false);
    }

    /// <inheritdoc/>
    public void Backward(int chunk, int microBatch, int slot, Tensor gradient, bool lastOfChunk) => Thread.Sleep(backward);

    /// <inheritdoc/>
    public void Release(int slot) { }
}
