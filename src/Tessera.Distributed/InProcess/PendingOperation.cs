namespace Tessera.Distributed.InProcess;

/// <summary>
/// One collective (or one point-to-point message) that ranks arrive at; the last rank to arrive
/// executes it for everyone (through the group's transport), then releases the waiters.
/// </summary>
internal sealed class PendingOperation
{
    public PendingOperation(string label, CollectiveKind kind, long sequenceNumber, int[] participants, int groupSize)
    {
        Label = label;
        Kind = kind;
        SequenceNumber = sequenceNumber;
        Participants = participants;
        Contributions = new Contribution?[groupSize];
    }

    /// <summary>"AllReduce #3" or "Send/Recv #2 (rank 0 -> rank 1)".</summary>
    public string Label { get; }

    /// <summary>The kind the first arriving rank issued.</summary>
    public CollectiveKind Kind { get; }

    public long SequenceNumber { get; }

    /// <summary>Group ranks expected to arrive.</summary>
    public int[] Participants { get; }

    /// <summary>Indexed by group rank; null until that rank arrives.</summary>
    public Contribution?[] Contributions { get; }

    public int Arrived { get; set; }

    public ManualResetEventSlim Done { get; } = new(false);

    /// <summary>Set before <see cref="Done"/> when the operation failed: makes the exception a given rank throws.</summary>
    public Func<int, Exception>? Error { get; set; }

    /// <summary>Set before <see cref="Done"/> when the transport enqueued the operation on a device: the results are in place once it completes.</summary>
    public IDeviceEvent? Completion { get; set; }

    /// <summary>
    /// Disposes the transport's notes of the ranks that arrived, once the operation executed, failed or was aborted (a second
    /// call, e.g. from two ranks' aborts, does nothing).
    /// </summary>
    public void ReleaseTokens()
    {
        if (Interlocked.Exchange(ref _tokensReleased, 1) != 0) return;
        foreach (var c in Contributions) c?.Token?.Dispose();
    }

    private int _tokensReleased;

    /// <summary>Participants that have not arrived (call under the rendezvous lock or after completion).</summary>
    public int[] Missing() => Participants.Where(r => Contributions[r] is null).ToArray();

    /// <summary>Participants that have arrived.</summary>
    public int[] Present() => Participants.Where(r => Contributions[r] is not null).ToArray();
}
