namespace Tessera.Distributed.Launch;

/// <summary>The outcome of <see cref="Launcher.Run"/>.</summary>
/// <param name="ExitCode">0 when every rank succeeded; else the failed rank's exit code, or 130 when interrupted.</param>
/// <param name="FailedRank">The first rank that failed (non-zero exit or killed from outside), or null.</param>
/// <param name="Ranks">Every local rank's end, in local-rank order.</param>
/// <param name="Interrupted">True when cancellation or a signal to the launcher stopped the run.</param>
/// <param name="Summary">One line for the user: "all 4 ranks exited with code 0", or which rank failed and how.</param>
public sealed record LaunchResult(int ExitCode, int? FailedRank, IReadOnlyList<RankExit> Ranks, bool Interrupted, string Summary)
{
    /// <summary>True when every rank exited with code 0.</summary>
    public bool Succeeded => ExitCode == 0 && FailedRank is null && !Interrupted;
}
