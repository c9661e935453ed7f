namespace Tessera.Distributed.Launch;

/// <summary>How one rank's process ended.</summary>
/// <param name="Rank">Global rank.</param>
/// <param name="LocalRank">Rank on this node.</param>
/// <param name="ExitCode">Its exit status; 128 + N when killed by signal N (as .NET and shells report it); -1 when it did not exit.</param>
/// <param name="KilledByLauncher">True when the launcher killed it (another rank failed, or an interrupt).</param>
public sealed record RankExit(int Rank, int LocalRank, int ExitCode, bool KilledByLauncher)
{
    /// <summary>The signal that killed it, when the exit code says so (129 .. 192 on Unix).</summary>
    public int? Signal => !OperatingSystem.IsWindows() && ExitCode > 128 && ExitCode <= 192 ? ExitCode - 128 : null;

    /// <summary>"rank 1 (local rank 1) exited with code 3", "... was killed by signal 9 (SIGKILL)".</summary>
    public string Describe()
    {
        string who = $"rank {Rank} (local rank {LocalRank})";
        if (ExitCode == -1) return $"{who} did not exit after being killed";
        if (KilledByLauncher) return $"{who} was killed by the launcher";
        if (Signal is { } s) return $"{who} was killed by signal {s}{SignalName(s)} (exit code {ExitCode})";
        return $"{who} exited with code {ExitCode}";
    }

    private static string SignalName(int signal) => signal switch
    {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        3 => " (SIGQUIT)",
        4 => " (SIGILL)",
        6 => " (SIGABRT)",
        7 => " (SIGBUS)",
        8 => " (SIGFPE)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        13 => " (SIGPIPE)",
        15 => " (SIGTERM)",
        _ => "",
    };
}
