namespace Tessera.Distributed.InProcess;

/// <summary>
/// A rank's view of a pending in-process operation. It is executed once every participant has arrived; a device transport
/// then leaves a completion event (<see cref="PendingOperation.Completion"/>) that the host waits for (<see cref="Wait"/>)
/// or the rank's compute stream is ordered after (<see cref="WaitOnDevice"/>).
/// </summary>
internal sealed class InProcessHandle : CollectiveHandle
{
    private readonly PendingOperation _op;
    private readonly InProcessRendezvous _rendezvous;
    private readonly int _rank;
    private readonly long _issuedAtMs;

    public InProcessHandle(PendingOperation op, InProcessRendezvous rendezvous, int rank, long issuedAtMs)
        : base(op.Kind, op.SequenceNumber)
    {
        _op = op;
        _rendezvous = rendezvous;
        _rank = rank;
        _issuedAtMs = issuedAtMs;
    }

    public override bool IsCompleted => _op.Done.IsSet && (_op.Error is not null || _op.Completion is not { } c || c.IsCompleted);

    public override void Wait(TimeSpan? timeout = null)
    {
        WaitForExecution(timeout);
        _op.Completion?.Synchronize();
    }

    /// <inheritdoc/>
    /// <remarks>The host waits for the peers to arrive (the group's timeout, or <paramref name="timeout"/>, applies), then,
    /// for a device transport, the rank's compute stream is ordered after the operation's completion event.</remarks>
    public override void WaitOnDevice(TimeSpan? timeout = null)
    {
        WaitForExecution(timeout);
        if (_op.Completion is { } done) _rendezvous.Transport.OrderComputeAfter(_rendezvous.GlobalRanks[_rank], done);
    }

    /// <summary>Waits until every participant has arrived and the operation was executed (or enqueued), then throws its error if it failed.</summary>
    private void WaitForExecution(TimeSpan? timeout)
    {
        long now = Environment.TickCount64;
        long groupDeadline = _issuedAtMs + (long)Math.Ceiling(_rendezvous.Timeout.TotalMilliseconds);
        bool callerBound = timeout is { } t && now + (long)t.TotalMilliseconds < groupDeadline;
        long deadline = callerBound ? now + (long)timeout!.Value.TotalMilliseconds : groupDeadline;
        if (!_op.Done.Wait(TimeSpan.FromMilliseconds(Math.Max(0, deadline - now))))
        {
            if (callerBound)
            {
                var missing = _rendezvous.Missing(_op);
                throw new CollectiveTimeoutException(_rendezvous.Name, _rank, _op.Kind, _op.SequenceNumber, missing,
                    TimeSpan.FromMilliseconds(Environment.TickCount64 - _issuedAtMs),
                    $"{_op.Label} in group '{_rendezvous.Name}' is still pending on rank {_rank} after the caller's wait of " +
                    $"{timeout!.Value.TotalMilliseconds:F0} ms: {_rendezvous.DescribeRanks(missing)} not arrived yet; the group timeout has not expired, so Wait again to keep waiting");
            }
            if (!_rendezvous.Abort(_op, _rank)) _op.Done.Wait();
        }
        if (_op.Error is { } error) throw error(_rank);
    }
}
