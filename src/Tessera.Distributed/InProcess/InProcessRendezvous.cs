namespace Tessera.Distributed.InProcess;

/// <summary>
/// The meeting point of the thread ranks of one in-process group: pending collectives keyed by
/// sequence number, pending messages keyed by (source, destination, number). Holds no tensors
/// after an operation completes. Once a rank times out the group is aborted: every pending
/// operation fails, and so does every later one (as an NCCL communicator is after an abort). The world aborts it
/// the same way when a rank fails (<see cref="AbortWorld"/>), with a <see cref="WorldAbortedException"/> naming that rank.
/// </summary>
internal sealed class InProcessRendezvous
{
    private readonly object _lock = new();
    private readonly Dictionary<long, PendingOperation> _collectives = [];
    private readonly Dictionary<(int Source, int Destination, long Number), PendingOperation> _messages = [];
    private Func<PendingOperation, int, Exception>? _abortError;   // once aborted: the error a later operation gets on a rank

    public InProcessRendezvous(string name, int[] globalRanks, TimeSpan timeout, InProcessTransport transport)
    {
        Name = name;
        GlobalRanks = globalRanks;
        Timeout = timeout;
        Transport = transport;
    }

    /// <summary>How the operations of this group are executed once everyone has arrived.</summary>
    public InProcessTransport Transport { get; }

    public string Name { get; }

    public int[] GlobalRanks { get; }

    public int Size => GlobalRanks.Length;

    public TimeSpan Timeout { get; }

    /// <summary>Rank <paramref name="contribution"/>.Rank arrives at collective <paramref name="sequenceNumber"/>.</summary>
    public PendingOperation ArriveCollective(long sequenceNumber, Contribution contribution)
    {
        PendingOperation op;
        bool last;
        lock (_lock)
        {
            if (!_collectives.TryGetValue(sequenceNumber, out op!))
            {
                op = new PendingOperation($"{contribution.Kind} #{sequenceNumber}", contribution.Kind, sequenceNumber,
                    Enumerable.Range(0, Size).ToArray(), Size);
                if (_abortError is null) _collectives.Add(sequenceNumber, op);
            }
            last = Join(op, contribution);
            if (last) _collectives.Remove(sequenceNumber);
        }
        if (last) Complete(op);
        return op;
    }

    /// <summary>A Send (on the source) or Recv (on the destination) arrives at message <paramref name="number"/> between the two.</summary>
    public PendingOperation ArriveMessage(int source, int destination, long number, Contribution contribution)
    {
        var key = (source, destination, number);
        PendingOperation op;
        bool last;
        lock (_lock)
        {
            if (!_messages.TryGetValue(key, out op!))
            {
                op = new PendingOperation($"{contribution.Kind} #{number} (rank {source} -> rank {destination})",
                    contribution.Kind, number, [source, destination], Size);
                if (_abortError is null) _messages.Add(key, op);
            }
            last = Join(op, contribution);
            if (last) _messages.Remove(key);
        }
        if (last) Complete(op);
        return op;
    }

    /// <summary>
    /// Called by a rank whose wait for <paramref name="timedOut"/> reached the group timeout: aborts the
    /// group unless the operation completed meanwhile (then returns false and the caller waits for it).
    /// </summary>
    public bool Abort(PendingOperation timedOut, int rank)
    {
        List<PendingOperation> failed;
        lock (_lock)
        {
            if (timedOut.Arrived == timedOut.Participants.Length) return false; // being executed now
            if (_abortError is null)
            {
                string reason = $"{timedOut.Label} timed out on rank {rank} after {Timeout.TotalMilliseconds:F0} ms waiting for {DescribeRanks(timedOut.Missing())}";
                _abortError = (op, r) => new InvalidOperationException(
                    $"{op.Label} on rank {r} of group '{Name}': the group was aborted earlier ({reason}); create new process groups to continue");
            }
            failed = TakePending();
            if (!failed.Contains(timedOut)) failed.Add(timedOut);
            foreach (var op in failed)
            {
                var missing = op.Missing();
                var present = op.Present();
                op.Error = r => TimeoutError(op, r, missing, present);
            }
        }
        Release(failed);
        return true;
    }

    /// <summary>
    /// Aborts the group because global rank <paramref name="failedRank"/> of its world failed with <paramref name="failure"/>:
    /// every pending operation fails at once, and so does every later one, with a <see cref="WorldAbortedException"/> that
    /// names the rank and carries its failure. Operations already executed keep their results. A second abort (of the world,
    /// or a timeout) keeps the first one's reason for later operations.
    /// </summary>
    public void AbortWorld(int failedRank, Exception failure)
    {
        List<PendingOperation> failed;
        lock (_lock)
        {
            _abortError ??= (op, r) => WorldAbortError(op, r, failedRank, failure);
            failed = TakePending();
            foreach (var op in failed) op.Error = r => WorldAbortError(op, r, failedRank, failure);
        }
        Release(failed);
    }

    private WorldAbortedException WorldAbortError(PendingOperation op, int rank, int failedRank, Exception failure) =>
        new(Name, rank, failedRank, failure,
            $"{op.Label} on rank {rank} of group '{Name}' was aborted: global rank {failedRank} failed ({failure.GetType().Name}: {failure.Message}); " +
            "this rank stopped because of that failure, which is the one to look at");

    /// <summary>Empties the pending operations (under the lock) and returns them.</summary>
    private List<PendingOperation> TakePending()
    {
        List<PendingOperation> pending = [.. _collectives.Values, .. _messages.Values];
        _collectives.Clear();
        _messages.Clear();
        return pending;
    }

    /// <summary>Wakes the waiters of failed operations (outside the lock; their errors are set).</summary>
    private static void Release(List<PendingOperation> failed)
    {
        foreach (var op in failed)
        {
            op.ReleaseTokens();
            op.Done.Set();
        }
    }

    /// <summary>The ranks that have not yet arrived at <paramref name="op"/>.</summary>
    public int[] Missing(PendingOperation op)
    {
        lock (_lock) return op.Missing();
    }

    /// <summary>"rank 3" or "ranks 2, 3", with global ranks when this is a sub-group.</summary>
    public string DescribeRanks(IReadOnlyList<int> ranks)
    {
        bool sub = GlobalRanks.Where((g, i) => g != i).Any();
        var names = ranks.Select(r => sub ? $"{r} (global {GlobalRanks[r]})" : r.ToString());
        return (ranks.Count == 1 ? "rank " : "ranks ") + string.Join(", ", names);
    }

    public CollectiveTimeoutException TimeoutError(PendingOperation op, int rank, int[] missing, int[] present)
    {
        var waited = TimeSpan.FromMilliseconds(op.Contributions[rank] is { } c ? Environment.TickCount64 - c.ArrivedAtMs : 0);
        return new CollectiveTimeoutException(Name, rank, op.Kind, op.SequenceNumber, missing, waited,
            $"{op.Label} in group '{Name}' (size {Size}) timed out on rank {rank} (timeout {Timeout.TotalMilliseconds:F0} ms): " +
            $"{DescribeRanks(missing)} did not arrive (arrived: {string.Join(", ", present)}). " +
            "A rank that never issues a collective is stuck earlier or issued a different sequence of collectives; compare CollectiveCount across ranks.");
    }

    private bool Join(PendingOperation op, Contribution contribution)
    {
        int r = contribution.Rank;
        if (_abortError is { } abortError)
        {
            op.Error = rank => abortError(op, rank);
            contribution.Token?.Dispose();
            op.Done.Set();
            return false;
        }
        if (op.Contributions[r] is not null)
        {
            contribution.Token?.Dispose();
            throw new InvalidOperationException($"{op.Label} in group '{Name}': rank {r} arrived twice; each group object belongs to one rank");
        }
        op.Contributions[r] = contribution;
        op.Arrived++;
        return op.Arrived == op.Participants.Length;
    }

    private void Complete(PendingOperation op)
    {
        try
        {
            var operation = new InProcessOperation(Name, GlobalRanks, op.Label, op.Kind, op.SequenceNumber,
                op.Participants.Select(r => op.Contributions[r]!).ToArray());
            operation.CheckMatch();
            op.Completion = Transport.Execute(operation);
        }
        catch (Exception e)
        {
            string message = e is CollectiveMismatchException ? e.Message : $"{op.Label} in group '{Name}' failed: {e.Message}";
            op.Error = rank => new InvalidOperationException(message, e);
        }
        finally
        {
            op.ReleaseTokens();   // a device transport has enqueued its waits on them by now
        }
        op.Done.Set();
    }
}
