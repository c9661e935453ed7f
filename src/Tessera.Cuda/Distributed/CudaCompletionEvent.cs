using Tessera.Cuda.Runtime;
using Tessera.Distributed;

namespace Tessera.Cuda.Distributed;

/// <summary>
/// Where an operation ends on a stream: a CUDA event from <see cref="CudaCompletionEvents"/>, handed back to its pool once it
/// has completed (then this object answers from memory). Poll it, wait for it on the host, or order another stream after it.
/// </summary>
public sealed class CudaCompletionEvent : IDeviceEvent
{
    private readonly CudaCompletionEvents _owner;
    private CudaEvent? _event;   // null once retired
    private bool _completed;
    private int _hostWaiters;    // a host wait in progress keeps the event out of the pool

    internal CudaCompletionEvent(CudaCompletionEvents owner, CudaEvent e)
    {
        _owner = owner;
        _event = e;
    }

    /// <inheritdoc/>
    public bool IsCompleted
    {
        get
        {
            lock (_owner.Gate)
            {
                if (!_completed && _event!.IsComplete()) _completed = true;
                return _completed;
            }
        }
    }

    /// <inheritdoc/>
    public void Synchronize()
    {
        CudaEvent e;
        lock (_owner.Gate)
        {
            if (_completed) return;
            e = _event!;
            _hostWaiters++;
        }
        try { e.Synchronize(); }
        finally
        {
            lock (_owner.Gate)
            {
                _hostWaiters--;
                _completed = true;
            }
        }
    }

    /// <summary>Makes work enqueued next on <paramref name="stream"/> wait for this point on the device (nothing once completed).</summary>
    public void OrderBefore(CudaStream stream)
    {
        lock (_owner.Gate)
        {
            if (_completed) return;
            if (_event!.IsComplete()) { _completed = true; return; }
            stream.Wait(_event);
        }
    }

    /// <summary>Under the owner's lock: when finished and not being waited on, returns the event to <paramref name="free"/>.</summary>
    internal bool TryRetire(Stack<CudaEvent> free)
    {
        if (_event is null) return true;
        if (_hostWaiters > 0 || !(_completed || _event.IsComplete())) return false;
        _completed = true;
        free.Push(_event);
        _event = null;
        return true;
    }
}
