using Tessera.Cuda.Runtime;
using Tessera.Distributed;
using Tessera.Distributed.Nccl;
using Tessera.Tensors;

namespace Tessera.Cuda.Distributed;

/// <summary>
/// Connects a <see cref="CudaBackend"/> to NCCL: a dedicated communication stream, an event that orders each collective
/// after the compute work enqueued before it, and an event recorded after each collective, which the collective's handle
/// keeps. Collectives therefore run beside later compute (gradient buckets overlap the rest of backward); a handle's Wait
/// returns once its own collective has finished, and its WaitOnDevice makes the compute stream wait for that event instead,
/// so a consumer on the forward path (a tensor-parallel all-reduce and the op that reads it) never waits on the host.
/// </summary>
public sealed class CudaCommunication : IDeviceBufferAccess, IDisposable
{
    private readonly CudaBackend _backend;
    private readonly CudaStream _stream;
    private readonly CudaEvent _computeDone;
    private readonly CudaCompletionEvents _completions;

    /// <summary>Creates the communication stream on <paramref name="backend"/>'s device.</summary>
    public CudaCommunication(CudaBackend backend)
    {
        _backend = backend;
        _stream = new CudaStream(backend.CudaDevice);
        _computeDone = new CudaEvent(backend.CudaDevice, timing: false);
        _completions = new CudaCompletionEvents(backend.CudaDevice, _stream);
    }

    /// <inheritdoc/>
    public IBackend Backend => _backend;

    /// <summary>The stream NCCL runs on (also as <see cref="CommunicationStream"/>, its native handle).</summary>
    public CudaStream Stream => _stream;

    /// <summary>The pool of completion events recorded on the communication stream.</summary>
    public CudaCompletionEvents Completions => _completions;

    /// <inheritdoc/>
    public IntPtr DevicePointer(Tensor tensor) => _backend.DevicePointer(tensor);

    /// <inheritdoc/>
    public IntPtr CommunicationStream => _stream.NativeHandle;

    /// <inheritdoc/>
    public bool IsCommunicationStreamIdle() => _stream.IsIdle();

    /// <inheritdoc/>
    public void OrderCommunicationAfterCompute()
    {
        _backend.CudaDevice.MakeCurrent();
        _computeDone.Record(_backend.Stream);
        _stream.Wait(_computeDone);
    }

    /// <inheritdoc/>
    public IDeviceEvent RecordCommunication() => _completions.Record();

    /// <inheritdoc/>
    public void OrderComputeAfter(IDeviceEvent communicationDone)
    {
        if (communicationDone is not CudaCompletionEvent done)
            throw new ArgumentException($"the event ({communicationDone.GetType().Name}) was not recorded by a CudaCommunication", nameof(communicationDone));
        _backend.CudaDevice.MakeCurrent();
        done.OrderBefore(_backend.Stream);
    }

    /// <summary>Destroys the stream and events (pending work completes first).</summary>
    public void Dispose()
    {
        _completions.Dispose();
        _computeDone.Dispose();
        _stream.Dispose();
    }
}
