namespace Tessera.Distributed.InProcess;

/// <summary>Runs one body per rank of a world of thread ranks, each on its own thread, and gathers results and failures.</summary>
public static class ThreadRanks
{
    /// <summary>
    /// Runs <paramref name="body"/>(rank) on <paramref name="worldSize"/> threads (named "rank r") and returns each rank's
    /// result (index = rank). If a rank throws, the others fail at their next collective within their groups' timeout; every
    /// rank's error is rethrown together in an <see cref="AggregateException"/> whose message names the first failed rank.
    /// </summary>
    public static T[] Run<T>(int worldSize, Func<int, T> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"world size must be at least 1, got {worldSize}");
        var results = new T[worldSize];
        var errors = new Exception?[worldSize];
        var workers = Enumerable.Range(0, worldSize).Select(rank => new Thread(() =>
        {
            try { results[rank] = body(rank); }
            catch (Exception e) { errors[rank] = e; }
        }) { Name = $"rank {rank}", IsBackground = true }).ToArray();
        foreach (var w in workers) w.Start();
        foreach (var w in workers) w.Join();
        var failed = errors.Select((e, r) => (e, r)).Where(x => x.e is not null).ToArray();
        if (failed.Length > 0)
            throw new AggregateException($"{failed.Length} of {worldSize} thread ranks failed (first: rank {failed[0].r}: {failed[0].e!.Message})",
                failed.Select(x => x.e!));
        return results;
    }
}
