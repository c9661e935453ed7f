namespace Tessera.Distributed;

/// <summary>
/// A collective failed because another rank of the world failed first and the world was aborted
/// (<see cref="InProcess.InProcessWorld.Abort"/>): the operation was pending when the abort came, or was issued after it.
/// <see cref="FailedRank"/> names the rank whose failure started the abort and <see cref="Exception.InnerException"/> is
/// that failure, so a rank that only saw the abort still reports the cause. A secondary failure: runners report the
/// original (<see cref="InProcess.ThreadRanks"/> does).
/// </summary>
public sealed class WorldAbortedException : Exception
{
    /// <summary>Creates the exception for an operation of group <paramref name="groupName"/> on group rank <paramref name="rank"/>.</summary>
    public WorldAbortedException(string groupName, int rank, int failedRank, Exception failure, string message)
        : base(message, failure)
    {
        ArgumentNullException.ThrowIfNull(failure);
        GroupName = groupName;
        Rank = rank;
        FailedRank = failedRank;
    }

    /// <summary>Name of the process group whose operation was aborted.</summary>
    public string GroupName { get; }

    /// <summary>Group rank on which the operation was aborted.</summary>
    public int Rank { get; }

    /// <summary>Global rank whose failure aborted the world.</summary>
    public int FailedRank { get; }

    /// <summary>The failed rank's exception (also <see cref="Exception.InnerException"/>).</summary>
    public Exception Failure => InnerException!;

    /// <summary>True when <paramref name="e"/> or an exception inside it (inner or aggregated) is a <see cref="WorldAbortedException"/>:
    /// the rank failed because of another rank's failure.</summary>
    public static bool IsSecondary(Exception e)
    {
        ArgumentNullException.ThrowIfNull(e);
        for (var x = e; x is not null; x = x.InnerException)
        {
            if (x is WorldAbortedException) return true;
            if (x is AggregateException a && a.InnerExceptions.Count > 0 && a.InnerExceptions.All(IsSecondary)) return true;
        }
        return false;
    }
}
