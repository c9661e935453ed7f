namespace Tessera.Distributed;

/// <summary>
/// An issued collective or point-to-point operation that may still be running (a torch.distributed
/// "work" object). The tensors passed to the operation must not be read or written until
/// <see cref="Wait"/> returns.
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
}
