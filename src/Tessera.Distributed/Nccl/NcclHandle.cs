namespace Tessera.Distributed.Nccl;

/// <summary>
/// An NCCL operation enqueued on the communication stream. It is complete when the stream is idle;
/// waiting polls the stream and ncclCommGetAsyncError, and aborts the communicator at the timeout
/// (NCCL cannot tell which peers are missing).
/// </summary>
internal sealed class NcclHandle : CollectiveHandle
{
    private readonly NcclProcessGroup _group;
    private readonly long _issuedAtMs;
    private bool _completed;

    public NcclHandle(NcclProcessGroup group, CollectiveKind kind, long sequenceNumber) : base(kind, sequenceNumber)
    {
        _group = group;
        _issuedAtMs = Environment.TickCount64;
    }

    public override bool IsCompleted => _completed || (_completed = _group.Access.IsCommunicationStreamIdle());

    public override void Wait(TimeSpan? timeout = null)
    {
        long groupDeadline = _issuedAtMs + (long)Math.Ceiling(_group.Timeout.TotalMilliseconds);
        long now = Environment.TickCount64;
        bool callerBound = timeout is { } t && now + (long)t.TotalMilliseconds < groupDeadline;
        long deadline = callerBound ? now + (long)timeout!.Value.TotalMilliseconds : groupDeadline;
        int spins = 0;
        while (!IsCompleted)
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
}
