namespace Tessera.Cli.CommandLine;

/// <summary>The process exit codes of tessera, as shells and schedulers read them.</summary>
public static class ExitCodes
{
    /// <summary>The command did what it was asked.</summary>
    public const int Success = 0;

    /// <summary>It failed (bad data, missing files, a device error); one message says what and where.</summary>
    public const int Failure = 1;

    /// <summary>The command line is wrong (unknown or invalid option, conflicting settings); nothing was run.</summary>
    public const int Usage = 2;

    /// <summary>Stopped by Ctrl-C (SIGINT): 128 + 2, what a shell reports for a process the signal ended.</summary>
    public const int Interrupted = 130;

    /// <summary>Stopped by SIGTERM (a scheduler's or container's stop): 128 + 15.</summary>
    public const int Terminated = 143;
}
