namespace Tessera.Distributed.Nccl;

/// <summary>
/// An NCCL operation enqueued on the communication stream, complete when the event recorded after it there has completed
/// (<see cref="IDeviceBufferAccess.RecordCommunication"/>; for an operation issued between GroupStart and GroupEnd, the
/// event GroupEnd records after the batch). Waiting on the host polls that event and ncclCommGetAsyncError, and aborts the
/// communicator at the timeout (NCCL cannot tell which peers are missing); waiting on the device orders the caller's compute
/// stream after the event.
/// </summary>
internal sealed class NcclHandle : CollectiveHandle
{
    private readonly NcclProcessGroup _group;
    private readonly long _issuedAtMs;
    private IDeviceEvent? _done;

    public NcclHandle(NcclProcessGroup group, CollectiveKind kind, long sequenceNumber, IDeviceEvent? done) : base(kind, sequenceNumber)
    {
        _group = group;
        _issuedAtMs = Environment.TickCount64;
        _done = done;
    }

    /// <summary>Called by GroupEnd for operations issued inside the batch: their end is the batch's end.</summary>
    internal void Issued(IDeviceEvent done) => _done = done;

    public override bool IsCompleted => Done.IsCompleted;

    public override void Wait(TimeSpan? timeout = null)
    {
        var done = Done;
        long groupDeadline = _issuedAtMs + (long)Math.Ceiling(_group.Timeout.TotalMilliseconds);
        long now = Environment.TickCount64;
        bool callerBound = timeout is { } t && now + (long)t.TotalMilliseconds < groupDeadline;
        long deadline = callerBound ? now + (long)timeout!.Value.TotalMilliseconds : groupDeadline;
        int spins = 0;
        while (!done.IsCompleted)
        {
            _group.ThrowIfAsyncError(Kind, SequenceNumber);
            if (Environment.TickCount64 >= deadline)
            {
                var waited = TimeSpan.FromMilliseconds(Environment.TickCount64 - _issuedAtMs);
                if (callerBound)
                    throw new CollectiveTimeoutException(_group.Name, _group.Rank, Kind, SequenceNumber, null, waited,
                        $"{Kind} #{SequenceNumber} in NCCL {_group.Describe()} is still running after the caller's wait of {timeout!.Value.TotalMilliseconds:F0} ms; Wait again to keep waiting");
                _group.Abort();
                throw new CollectiveTimeoutException(_group.Name, _group.Rank, Kind, SequenceNumber, null, waited,
                    $"{Kind} #{SequenceNumber} in NCCL {_group.Describe()} (size {_group.Size}) timed out after {_group.Timeout.TotalMilliseconds:F0} ms; " +
                    "the communicator was aborted. NCCL cannot tell which ranks did not arrive: compare CollectiveCount in each rank's log to find the rank that did not issue it.");
            }
            if (++spins < 64) Thread.SpinWait(32); else Thread.Sleep(1);
        }
        _group.ThrowIfAsyncError(Kind, SequenceNumber);
    }

    /// <inheritdoc/>
    /// <remarks>The timeout does not apply: nothing waits on the host. A peer that never issues the collective stalls the
    /// compute stream, and the next host wait (a handle's Wait, which polls for NCCL's asynchronous errors, or a copy to the
    /// host) is where that shows.</remarks>
    public override void WaitOnDevice(TimeSpan? timeout = null)
    {
        var done = Done;
        _group.ThrowIfAsyncError(Kind, SequenceNumber);
        _group.Access.OrderComputeAfter(done);
    }

    private IDeviceEvent Done => _done ?? throw new InvalidOperationException(
        $"{Kind} #{SequenceNumber} in NCCL {_group.Describe()} was issued between GroupStart and GroupEnd and is not enqueued yet; call GroupEnd before waiting on it");
}
