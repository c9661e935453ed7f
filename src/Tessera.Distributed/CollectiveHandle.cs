namespace Tessera.Distributed;

/// <summary>
/// An issued collective or point-to-point operation that may still be running (a torch.distributed
/// "work" object). The tensors passed to the operation must not be read or written by the host until
/// <see cref="Wait"/> returns, nor by device work enqueued before <see cref="WaitOnDevice"/> (or Wait) returns.
/// </summary>
public abstract class CollectiveHandle
{
    /// <summary>Creates a handle for operation <paramref name="kind"/> with sequence number <paramref name="sequenceNumber"/>.</summary>
    protected CollectiveHandle(CollectiveKind kind, long sequenceNumber)
    {
        Kind = kind;
        SequenceNumber = sequenceNumber;
    }

    /// <summary>Which operation this is.</summary>
    public CollectiveKind Kind { get; }

    /// <summary>
    /// The operation's number in its group: 1 for the group's first collective; for Send and Recv
    /// the number of the message between the two peers in that direction.
    /// </summary>
    public long SequenceNumber { get; }

    /// <summary>True once the operation has finished (successfully or not); never blocks.</summary>
    public abstract bool IsCompleted { get; }

    /// <summary>
    /// Blocks until the operation has finished, then throws its error if it failed.
    /// Waits at most the group's timeout (counted from when this rank issued the operation), or
    /// <paramref name="timeout"/> when that is shorter.
    /// </summary>
    /// <exception cref="CollectiveTimeoutException">The peers did not all arrive in time.</exception>
    public abstract void Wait(TimeSpan? timeout = null);

    /// <summary>
    /// Orders the work the caller enqueues next on its backend's compute stream after the operation, without blocking the
    /// host on the device work: a consumer on the forward path (a tensor-parallel layer's all-reduce followed by the op that
    /// reads its result) then costs no host round trip. Where the device wait cannot be expressed it is the host wait:
    /// for groups of CPU backends, whose ops are synchronous, this is <see cref="Wait"/> (the default). NCCL: the compute
    /// stream waits for an event recorded on the communication stream after the NCCL call; in-process groups of GPU
    /// backends: the host waits only for the peers to issue the operation (bounded by the group's timeout, or
    /// <paramref name="timeout"/>), then the stream waits for the event that ends it.
    /// <para>After a device wait, the host must still not read the tensors before a host wait (this one's
    /// <see cref="Wait"/>, or a copy to the host, which waits for the compute stream). A peer that never issues an NCCL
    /// collective stalls the compute stream rather than this call: the next host wait is where that shows.</para>
    /// </summary>
    /// <exception cref="CollectiveTimeoutException">The peers did not all issue the operation in time (in-process groups).</exception>
    public virtual void WaitOnDevice(TimeSpan? timeout = null) => Wait(timeout);
}
