using Tessera.Tensors;

namespace Tessera.Distributed.Nccl;

/// <summary>
/// What <see cref="NcclProcessGroup"/> needs from the GPU backend, provided by the caller so that
/// Tessera.Distributed does not depend on Tessera.Cuda. The communication stream must be ordered
/// after the work that produces the tensors (the simplest correct choice is the compute stream itself).
/// </summary>
public interface IDeviceBufferAccess
{
    /// <summary>The backend whose tensors the group communicates (allocates the barrier's scratch element).</summary>
    IBackend Backend { get; }

    /// <summary>Device address of the first element of a contiguous <paramref name="tensor"/> of <see cref="Backend"/> (its offset included).</summary>
    IntPtr DevicePointer(Tensor tensor);

    /// <summary>The cudaStream_t on which NCCL operations are enqueued.</summary>
    IntPtr CommunicationStream { get; }

    /// <summary>True when all work enqueued on <see cref="CommunicationStream"/> so far has finished (cuStreamQuery); never blocks.</summary>
    bool IsCommunicationStreamIdle();

    /// <summary>
    /// Makes work enqueued next on <see cref="CommunicationStream"/> wait, on the device, for the compute work
    /// enqueued so far (record an event on the compute stream, make the communication stream wait on it).
    /// Called before every NCCL operation, so a collective reads what the preceding ops wrote while later
    /// compute (the rest of backward) runs on, overlapped. A no-op when both streams are one.
    /// </summary>
    void OrderCommunicationAfterCompute();

    /// <summary>
    /// Records the current end of <see cref="CommunicationStream"/> (an event after the NCCL operation just enqueued) and
    /// returns it; each collective handle keeps the one that ends its operation, to poll, wait for, or order compute after.
    /// </summary>
    IDeviceEvent RecordCommunication();

    /// <summary>
    /// Makes work enqueued next on the compute stream wait, on the device, for <paramref name="communicationDone"/> (an
    /// event from <see cref="RecordCommunication"/>); the host does not wait. A no-op once the event has completed.
    /// </summary>
    void OrderComputeAfter(IDeviceEvent communicationDone);
}
