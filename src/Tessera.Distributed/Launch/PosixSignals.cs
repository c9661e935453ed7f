using System.Runtime.InteropServices;

namespace Tessera.Distributed.Launch;

/// <summary>kill(2): .NET can receive POSIX signals but sends only SIGKILL (Process.Kill); the launcher passes a stop on.</summary>
internal static partial class PosixSignals
{
    /// <summary>Sends <paramref name="signal"/> (e.g. 15, SIGTERM) to process <paramref name="pid"/>; a process already gone is ignored.</summary>
    public static void Send(int pid, int signal) => _ = Kill(pid, signal);

    [LibraryImport("libc", EntryPoint = "kill")]
    private static partial int Kill(int pid, int signal);
}
