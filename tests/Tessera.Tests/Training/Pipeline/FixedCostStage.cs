using Tessera.Tensors;
using Tessera.Training.Pipeline;

namespace Tessera.Tests.Training.Pipeline;

/// <summary>
/// A pipeline stage whose forward and backward only wait a fixed time (every virtual stage alike) and whose messages are one
/// element: the schedule's timing laid bare, for measuring its bubble on thread ranks. Waiting sleeps rather than spins, so
/// ranks sharing few cores do not slow each other.
/// </summary>
internal sealed class FixedCostStage(IBackend backend, TimeSpan forward, TimeSpan backward) : IPipelineStage
{
    private readonly Dictionary<(int, bool), Tensor> _buffers = [];

    public IBackend Backend => backend;

    public Tensor MessageBuffer(int slot, bool gradient)
    {
        if (!_buffers.TryGetValue((slot, gradient), out var t)) _buffers[(slot, gradient)] = t = backend.Zeros(new Shape(1), DType.F32);
        return t;
    }

    public Tensor? Forward(int chunk, int microBatch, int slot, Tensor? input)
    {
        Thread.Sleep(forward);
        return MessageBuffer(slot, gradient: false);
    }

    public void Backward(int chunk, int microBatch, int slot, Tensor gradient, bool lastOfChunk) => Thread.Sleep(backward);

    public void Release(int slot) { }
}
