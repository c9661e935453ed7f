namespace Tessera.Distributed.InProcess;

/// <summary>Runs one body per rank of a world of thread ranks, each on its own thread, and gathers results and failures.</summary>
public static class ThreadRanks
{
    /// <summary>
    /// Runs <paramref name="body"/>(rank) on <paramref name="worldSize"/> threads (named "rank r") and returns each rank's
    /// result (index = rank). Without a world to abort, a rank's failure reaches the others only through their groups'
    /// timeouts: bodies that communicate should use <see cref="Run{T}(InProcessWorld, Func{int, T})"/>. Every rank's error is
    /// rethrown together in an <see cref="AggregateException"/> whose message names the first failed rank.
    /// </summary>
    public static T[] Run<T>(int worldSize, Func<int, T> body) => Run(worldSize, null, body);

    /// <summary>
    /// Runs <paramref name="body"/>(rank) on one thread per rank of <paramref name="world"/> and returns each rank's result
    /// (index = rank). The first rank to fail aborts the world (<see cref="InProcessWorld.Abort"/>), so the others' pending and
    /// later collectives throw a <see cref="WorldAbortedException"/> at once instead of waiting out the timeout. The
    /// <see cref="AggregateException"/> thrown then holds the original failures only, in the order they happened (its message
    /// names the first); the ranks that only saw the abort are counted in the message, not listed. An
    /// <see cref="OperationCanceledException"/> is a stop the ranks agreed on (the trainer's), not a failure: it aborts nothing.
    /// </summary>
    public static T[] Run<T>(InProcessWorld world, Func<int, T> body)
    {
        ArgumentNullException.ThrowIfNull(world);
        return Run(world.Size, world, body);
    }

    private static T[] Run<T>(int worldSize, InProcessWorld? world, Func<int, T> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"world size must be at least 1, got {worldSize}");
        var results = new T[worldSize];
        var errors = new Exception?[worldSize];
        var order = new long[worldSize];
        long failures = 0;
        var workers = Enumerable.Range(0, worldSize).Select(rank => new Thread(() =>
        {
            try { results[rank] = body(rank); }
            catch (Exception e)
            {
                order[rank] = Interlocked.Increment(ref failures);
                errors[rank] = e;
                if (world is not null && e is not OperationCanceledException && !WorldAbortedException.IsSecondary(e)) world.Abort(rank, e);
            }
        }) { Name = $"rank {rank}", IsBackground = true }).ToArray();
        foreach (var w in workers) w.Start();
        foreach (var w in workers) w.Join();
        var failed = errors.Select((e, r) => (e, r)).Where(x => x.e is not null).OrderBy(x => order[x.r]).ToArray();
        if (failed.Length == 0) return results;
        var original = failed.Where(x => !WorldAbortedException.IsSecondary(x.e!)).ToArray();
        if (original.Length == 0) original = failed;   // aborted from outside: every error is all there is
        int aborted = failed.Length - original.Length;
        string others = aborted == 0 ? "" : $"; {aborted} other rank{(aborted == 1 ? " was" : "s were")} aborted because of it";
        throw new AggregateException(
            $"{original.Length} of {worldSize} thread ranks failed (first: rank {original[0].r}: {original[0].e!.Message}){others}",
            original.Select(x => x.e!));
    }
}
