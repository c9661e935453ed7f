using System.Collections.Concurrent;

namespace Tessera.Distributed.InProcess;

/// <summary>
/// The shared state of a set of thread ranks: one rendezvous per group of ranks. Create one per
/// test or run (nothing is static), then give each rank's thread its groups
/// (<see cref="WorldGroup"/>, <see cref="Group"/>) or a factory (<see cref="FactoryFor"/>).
/// When a rank fails, <see cref="Abort"/> fails every pending and later operation of every group at once
/// (<see cref="ThreadRanks.Run{T}(InProcessWorld, Func{int, T})"/> calls it), so the other ranks stop in milliseconds
/// instead of waiting out the timeout in their next collective.
/// </summary>
public sealed class InProcessWorld
{
    private readonly ConcurrentDictionary<string, InProcessRendezvous> _rendezvous = new(StringComparer.Ordinal);
    private readonly object _abortLock = new();
    private volatile Abortion? _abortion;

    /// <summary>
    /// A world of <paramref name="size"/> ranks whose groups time out after <paramref name="timeout"/> and execute their
    /// operations through <paramref name="transport"/> (default: a <see cref="HostTransport"/>).
    /// </summary>
    public InProcessWorld(int size, TimeSpan timeout, InProcessTransport? transport = null)
    {
        if (size < 1) throw new ArgumentOutOfRangeException(nameof(size), $"world size must be at least 1, got {size}");
        if (timeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), $"timeout must be positive, got {timeout}");
        Size = size;
        Timeout = timeout;
        Transport = transport ?? new HostTransport();
    }

    /// <summary>How every group of this world executes its operations.</summary>
    public InProcessTransport Transport { get; }

    /// <summary>Number of ranks.</summary>
    public int Size { get; }

    /// <summary>Timeout of every group of this world.</summary>
    public TimeSpan Timeout { get; }

    /// <summary>Rank <paramref name="rank"/>'s member of the group over all ranks, named "world".</summary>
    public InProcessProcessGroup WorldGroup(int rank) => Group(rank, "world", Enumerable.Range(0, Size).ToArray());

    /// <summary>
    /// Global rank <paramref name="globalRank"/>'s member of the group over <paramref name="globalRanks"/>
    /// (group rank i is globalRanks[i]). Members that pass the same name and ranks share one group.
    /// </summary>
    public InProcessProcessGroup Group(int globalRank, string name, IReadOnlyList<int> globalRanks)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(globalRanks);
        foreach (var g in globalRanks)
            if (g < 0 || g >= Size)
                throw new ArgumentOutOfRangeException(nameof(globalRanks), $"group '{name}': rank {g} is outside the world [0, {Size})");
        if (globalRanks.Distinct().Count() != globalRanks.Count)
            throw new ArgumentException($"group '{name}': ranks ({string.Join(", ", globalRanks)}) repeat a rank", nameof(globalRanks));
        int rank = globalRanks.ToList().IndexOf(globalRank);
        if (rank < 0)
            throw new ArgumentException($"group '{name}': global rank {globalRank} is not one of its ranks ({string.Join(", ", globalRanks)})", nameof(globalRank));
        string key = name + "|" + string.Join(",", globalRanks);
        var rendezvous = _rendezvous.GetOrAdd(key, _ => new InProcessRendezvous(name, [.. globalRanks], Timeout, Transport));
        // A group made after (or while) the world aborts is aborted too; Abort sets _abortion before it visits the groups.
        if (_abortion is { } a) rendezvous.AbortWorld(a.FailedRank, a.Failure);
        return new InProcessProcessGroup(this, rendezvous, rank);
    }

    /// <summary>The global rank whose failure aborted this world, or null while it is not aborted.</summary>
    public int? FailedRank => _abortion?.FailedRank;

    /// <summary>The failure that aborted this world, or null while it is not aborted.</summary>
    public Exception? Failure => _abortion?.Failure;

    /// <summary>
    /// Aborts the world because global rank <paramref name="failedRank"/> failed with <paramref name="failure"/>: every
    /// operation pending in any of its groups fails at once, and every later one as soon as it is issued, with a
    /// <see cref="WorldAbortedException"/> naming the rank and carrying <paramref name="failure"/> (operations already executed
    /// keep their results). Returns true for the first abort; later calls change nothing and return false. The world cannot be
    /// used again (as an NCCL communicator after ncclCommAbort): make a new one.
    /// </summary>
    public bool Abort(int failedRank, Exception failure)
    {
        ArgumentNullException.ThrowIfNull(failure);
        if (failedRank < 0 || failedRank >= Size)
            throw new ArgumentOutOfRangeException(nameof(failedRank), $"rank {failedRank} is outside the world [0, {Size})");
        lock (_abortLock)
        {
            if (_abortion is not null) return false;
            _abortion = new Abortion(failedRank, failure);
        }
        foreach (var rendezvous in _rendezvous.Values) rendezvous.AbortWorld(failedRank, failure);
        return true;
    }

    private sealed record Abortion(int FailedRank, Exception Failure);

    /// <summary>A factory that creates <paramref name="globalRank"/>'s groups (for <see cref="Mesh.DeviceMesh"/>).</summary>
    public IProcessGroupFactory FactoryFor(int globalRank)
    {
        if (globalRank < 0 || globalRank >= Size)
            throw new ArgumentOutOfRangeException(nameof(globalRank), $"rank {globalRank} is outside the world [0, {Size})");
        return new InProcessGroupFactory(this, globalRank);
    }

    private sealed class InProcessGroupFactory(InProcessWorld world, int globalRank) : IProcessGroupFactory
    {
        public int GlobalRank => globalRank;

        public ProcessGroup CreateGroup(string name, IReadOnlyList<int> globalRanks) => world.Group(globalRank, name, globalRanks);
    }
}
