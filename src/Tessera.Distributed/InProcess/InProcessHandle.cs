namespace Tessera.Distributed.InProcess;

/// <summary>A rank's view of a pending in-process operation.</summary>
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

    public override bool IsCompleted => _op.Done.IsSet;

    public override void Wait(TimeSpan? timeout = null)
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
