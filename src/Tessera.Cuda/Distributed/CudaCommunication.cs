using Tessera.Cuda.Runtime;
using Tessera.Distributed.Nccl;
using Tessera.Tensors;

namespace Tessera.Cuda.Distributed;

/// <summary>
/// Connects a <see cref="CudaBackend"/> to NCCL: a dedicated communication stream, and an event that
/// orders each collective after the compute work enqueued before it. Collectives therefore run
/// beside later compute (gradient buckets overlap the rest of backward); a handle's Wait returns
/// once the communication stream has drained, after which compute may read the results.
/// </summary>
public sealed class CudaCommunication : IDeviceBufferAccess, IDisposable
{
    private readonly CudaBackend _backend;
    private readonly CudaStream _stream;
    private readonly CudaEvent _computeDone;

    /// <summary>Creates the communication stream on <paramref name="backend"/>'s device.</summary>
    public CudaCommunication(CudaBackend backend)
    {
        _backend = backend;
        _stream = new CudaStream(backend.CudaDevice);
        _computeDone = new CudaEvent(backend.CudaDevice, timing: false);
    }

    /// <inheritdoc/>
    public IBackend Backend => _backend;

    /// <inheritdoc/>
    public IntPtr DevicePointer(Tensor tensor) => _backend.DevicePointer(tensor);

    /// <inheritdoc/>
    public IntPtr CommunicationStream => _stream.NativeHandle;

    /// <inheritdoc/>
    public bool IsCommunicationStreamIdle() => _stream.IsIdle();

    /// <inheritdoc/>
    public void OrderCommunicationAfterCompute()
    {
        _computeDone.Record(_backend.Stream);
        _stream.Wait(_computeDone);
    }

    /// <summary>Destroys the stream and event (pending work completes).</summary>
    public void Dispose()
    {
        _computeDone.Dispose();
        _stream.Dispose();
    }
}
