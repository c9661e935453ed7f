using Tessera.Cuda.Runtime;
using Tessera.Tensors;

namespace Tessera.Cuda;

/// <summary>
/// CUDA events with timing on a backend's stream as a timeline of numbered marks: the phases of a step are timed on the
/// device, with no host wait inside the step. An event is created when its mark is first used and reused after.
/// </summary>
public sealed class CudaEventTimeline(CudaBackend backend) : IDeviceTimeline, IDisposable
{
    private readonly List<CudaEvent> _events = [];

    /// <inheritdoc/>
    public void Mark(int index)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(index);
        backend.RefuseWhileCapturing("CudaEventTimeline.Mark");
        while (_events.Count <= index) _events.Add(new CudaEvent(backend.CudaDevice));
        _events[index].Record(backend.Stream);
    }

    /// <inheritdoc/>
    public double ElapsedMilliseconds(int from, int to)
    {
        if ((uint)from >= (uint)_events.Count || (uint)to >= (uint)_events.Count)
            throw new ArgumentOutOfRangeException(nameof(to), $"CudaEventTimeline: marks {from} and {to} must both have been recorded ({_events.Count} so far)");
        _events[to].Synchronize();
        return _events[to].ElapsedSince(_events[from]);
    }

    /// <summary>Destroys the events.</summary>
    public void Dispose()
    {
        foreach (var e in _events) e.Dispose();
        _events.Clear();
    }
}
