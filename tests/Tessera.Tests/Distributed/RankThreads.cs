using System.Runtime.ExceptionServices;

namespace Tessera.Tests.Distributed;

/// <summary>Runs one body per rank on its own thread and rethrows the first failure.</summary>
internal static class RankThreads
{
    public static void Run(int ranks, Action<int> body)
    {
        var errors = new Exception?[ranks];
        var threads = Enumerable.Range(0, ranks).Select(r => new Thread(() =>
        {
            try { body(r); }
            catch (Exception e) { errors[r] = e; }
        }) { IsBackground = true, Name = $"rank {r}" }).ToArray();
        foreach (var t in threads) t.Start();
        foreach (var t in threads)
            if (!t.Join(TimeSpan.FromSeconds(30))) throw new TimeoutException($"{t.Name} did not finish within 30 s");
        foreach (var e in errors)
            if (e is not null) ExceptionDispatchInfo.Capture(e).Throw();
    }
}
