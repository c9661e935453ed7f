namespace Tessera.Distributed;

/// <summary>
/// A rank waited longer than its group's timeout for its peers to issue the same collective.
/// The message names the collective, its sequence number and the ranks that did not arrive.
/// </summary>
public sealed class CollectiveTimeoutException : TimeoutException
{
    /// <summary>Creates the exception; <paramref name="missingRanks"/> is null when the transport cannot tell (NCCL).</summary>
    public CollectiveTimeoutException(string groupName, int rank, CollectiveKind kind, long sequenceNumber,
        IReadOnlyList<int>? missingRanks, TimeSpan waited, string message)
        : base(message)
    {
        GroupName = groupName;
        Rank = rank;
        Kind = kind;
        SequenceNumber = sequenceNumber;
        MissingRanks = missingRanks;
        Waited = waited;
    }

    /// <summary>Name of the process group.</summary>
    public string GroupName { get; }

    /// <summary>Group rank that timed out.</summary>
    public int Rank { get; }

    /// <summary>The collective that timed out.</summary>
    public CollectiveKind Kind { get; }

    /// <summary>Its sequence number in the group (see <see cref="CollectiveHandle.SequenceNumber"/>).</summary>
    public long SequenceNumber { get; }

    /// <summary>Group ranks that had not issued the collective, or null when unknown.</summary>
    public IReadOnlyList<int>? MissingRanks { get; }

    /// <summary>How long the rank waited.</summary>
    public TimeSpan Waited { get; }
}
