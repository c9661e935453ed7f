namespace Tessera.Distributed;

/// <summary>
/// A point recorded in a device stream's work (a CUDA event): where a collective ends on the stream that runs it. The host
/// can poll it or wait for it; the owner of a compute stream can make that stream wait for it on the device
/// (<see cref="Nccl.IDeviceBufferAccess.OrderComputeAfter"/>), which is what <see cref="CollectiveHandle.WaitOnDevice"/> does.
/// </summary>
public interface IDeviceEvent
{
    /// <summary>True once every operation enqueued before the point has finished; never blocks.</summary>
    bool IsCompleted { get; }

    /// <summary>Blocks the calling thread until every operation enqueued before the point has finished.</summary>
    void Synchronize();
}
