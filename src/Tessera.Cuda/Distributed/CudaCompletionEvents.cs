using Tessera.Cuda.Runtime;

namespace Tessera.Cuda.Distributed;

/// <summary>
/// The completion events of one stream (a communication stream): <see cref="Record"/> marks the stream's current end with
/// a pooled CUDA event and returns it as a <see cref="CudaCompletionEvent"/>. Events finish in the order they were recorded
/// on the stream, so each new record first returns the oldest finished ones to the pool: a step's collectives reuse a
/// handful of events however many handles are issued, also when the consumers only ever wait on the device (which gives no
/// moment to return an event). A completion outlives its event: once retired it remembers that it completed.
/// Thread-safe (ranks' threads record and query through one instance in the in-process group).
/// </summary>
public sealed class CudaCompletionEvents : IDisposable
{
    private readonly CudaDevice _device;
    private readonly CudaStream _stream;
    private readonly Queue<CudaCompletionEvent> _outstanding = new();   // in recording order
    private readonly Stack<CudaEvent> _free = new();
    private readonly List<CudaEvent> _all = [];
    private bool _disposed;

    /// <summary>Completion events of <paramref name="stream"/> on <paramref name="device"/>.</summary>
    public CudaCompletionEvents(CudaDevice device, CudaStream stream)
    {
        _device = device;
        _stream = stream;
    }

    /// <summary>Guards every event of this instance and the completions' state.</summary>
    internal Lock Gate { get; } = new();

    /// <summary>Events created so far (the pool's high-water mark), for tests and diagnostics.</summary>
    public int EventsCreated
    {
        get { lock (Gate) return _all.Count; }
    }

    /// <summary>Marks the current end of the stream: the returned completion finishes when everything enqueued so far has.</summary>
    public CudaCompletionEvent Record()
    {
        lock (Gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            while (_outstanding.TryPeek(out var oldest) && oldest.TryRetire(_free)) _outstanding.Dequeue();
            if (!_free.TryPop(out var e))
            {
                e = new CudaEvent(_device, timing: false);
                _all.Add(e);
            }
            _device.MakeCurrent();
            e.Record(_stream);
            var completion = new CudaCompletionEvent(this, e);
            _outstanding.Enqueue(completion);
            return completion;
        }
    }

    /// <summary>Waits for the stream, marks every completion finished and destroys the events.</summary>
    public void Dispose()
    {
        lock (Gate)
        {
            if (_disposed) return;
            _disposed = true;
            _stream.Synchronize();
            while (_outstanding.TryDequeue(out var c)) c.TryRetire(_free);
            foreach (var e in _all) e.Dispose();
            _all.Clear();
            _free.Clear();
        }
    }
}
