using System.Collections.Concurrent;
using System.ComponentModel;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Tessera.Distributed.Launch;

/// <summary>
/// Starts one process per local rank (torchrun's role) with RANK, WORLD_SIZE, LOCAL_RANK,
/// LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT and NCCL_NVLS_ENABLE=0 set, forwards their
/// output line by line prefixed "[rank N] ", and when any rank fails (non-zero exit, killed by a
/// signal) kills the others with their whole process trees, so no rank hangs in a collective waiting
/// for a dead peer. Cancellation (or SIGINT/SIGTERM with <see cref="LaunchOptions.HandleInterrupts"/>)
/// kills every rank.
/// </summary>
public static class Launcher
{
    /// <summary>The exit code reported when the run was interrupted (128 + SIGINT, as shells do).</summary>
    public const int InterruptedExitCode = 130;

    /// <summary>Runs the ranks of this node to completion; see <see cref="LaunchResult"/>.</summary>
    /// <exception cref="ArgumentException">An option is invalid.</exception>
    /// <exception cref="InvalidOperationException">A rank's program could not be started (the others are killed first).</exception>
    public static LaunchResult Run(LaunchOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var output = options.Output ?? Console.Out;
        var error = options.Error ?? Console.Error;
        var writeLock = new object();
        int n = options.ProcessesPerNode;
        var processes = new Process?[n];
        var killed = new bool[n];
        var exited = new BlockingCollection<int>();

        using var interrupt = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var signals = new List<PosixSignalRegistration>();
        int stopSignal = 0;   // the signal passed on to the ranks (graceful stop under way), written once
        if (options.HandleInterrupts)
        {
            foreach (var signal in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM })
                signals.Add(PosixSignalRegistration.Create(signal, context =>
                {
                    context.Cancel = true;
                    int number = signal == PosixSignal.SIGINT ? 2 : 15;
                    if (options.InterruptGracePeriod is TimeSpan grace && Interlocked.CompareExchange(ref stopSignal, number, 0) == 0)
                    {
                        // SIGTERM, not the signal received: after Ctrl-C in a terminal the ranks already have a SIGINT of their
                        // own, and a second SIGINT would make them exit at once instead of saving.
                        SignalAll(processes, 15);
                        interrupt.CancelAfter(grace);
                    }
                    else interrupt.Cancel();
                }));
        }
        try
        {
            for (int local = 0; local < n; local++)
            {
                int rank = options.NodeRank * n + local;
                var p = new Process { StartInfo = StartInfo(options, rank, local), EnableRaisingEvents = true };
                int captured = local;
                p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (writeLock) output.WriteLine($"[rank {rank}] {e.Data}"); };
                p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (writeLock) error.WriteLine($"[rank {rank}] {e.Data}"); };
                p.Exited += (_, _) => exited.Add(captured);
                processes[local] = p; // before Start: Exited may fire at once
                try
                {
                    p.Start();
                }
                catch (Exception e) when (e is Win32Exception or InvalidOperationException)
                {
                    processes[local] = null;
                    p.Dispose();
                    KillAll(processes, killed);
                    WaitAll(processes, options.KillTimeout);
                    throw new InvalidOperationException($"launch: could not start '{options.Program}' for rank {rank}: {e.Message}", e);
                }
                p.BeginOutputReadLine();
                p.BeginErrorReadLine();
            }

            int? failed = null;
            bool interrupted = false;
            var done = new bool[n];
            int remaining = n;
            while (remaining > 0)
            {
                int local;
                try
                {
                    local = exited.Take(interrupt.Token);
                }
                catch (OperationCanceledException)
                {
                    interrupted = true;
                    KillAll(processes, killed);
                    break;
                }
                if (done[local]) continue;
                done[local] = true;
                remaining--;
                var p = processes[local]!;
                Drain(p, options.KillTimeout);
                if (p.ExitCode != 0 && failed is null && !killed[local] && Volatile.Read(ref stopSignal) == 0)
                {
                    failed = local;
                    KillAll(processes, killed);
                }
            }

            var exits = new RankExit[n];
            bool allExited = WaitAll(processes, options.KillTimeout);
            for (int local = 0; local < n; local++)
            {
                var p = processes[local]!;
                int code = p.HasExited ? p.ExitCode : -1;
                // A rank the launcher killed that had already finished keeps its own status.
                bool byLauncher = killed[local] && local != failed && code != 0;
                exits[local] = new RankExit(options.NodeRank * n + local, local, code, byLauncher);
            }
            lock (writeLock) { output.Flush(); error.Flush(); }

            string summary;
            int exitCode;
            if (failed is { } f)
            {
                var killedRanks = exits.Where(e => e.KilledByLauncher).Select(e => e.Rank).ToArray();
                summary = exits[f].Describe() + (killedRanks.Length > 0 ? $"; killed {(killedRanks.Length == 1 ? "rank" : "ranks")} {string.Join(", ", killedRanks)}" : "");
                exitCode = exits[f].ExitCode;
            }
            else if (interrupted)
            {
                summary = $"interrupted: killed all {n} ranks";
                exitCode = InterruptedExitCode;
            }
            else if (Volatile.Read(ref stopSignal) is int stopped and > 0)
            {
                summary = $"stopped by {(stopped == 2 ? "SIGINT" : "SIGTERM")}: passed on to the ranks as SIGTERM; they exited with {string.Join(", ", exits.Select(e => e.ExitCode))}";
                exitCode = 128 + stopped;
            }
            else
            {
                summary = $"all {n} ranks exited with code 0";
                exitCode = 0;
            }
            if (!allExited) summary += $"; some ranks did not exit within {options.KillTimeout.TotalSeconds:0.#} s of being killed";
            return new LaunchResult(exitCode, failed is { } fr ? exits[fr].Rank : null, exits, interrupted && failed is null, summary);
        }
        finally
        {
            foreach (var s in signals) s.Dispose();
            KillAll(processes, killed);
            foreach (var p in processes) p?.Dispose();
        }
    }

    private static ProcessStartInfo StartInfo(LaunchOptions options, int rank, int local)
    {
        var info = new ProcessStartInfo(options.Program)
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = false,
        };
        if (options.WorkingDirectory is not null) info.WorkingDirectory = options.WorkingDirectory;
        foreach (var a in options.Arguments) info.ArgumentList.Add(a);
        var env = info.Environment;
        env["RANK"] = rank.ToString();
        env["WORLD_SIZE"] = options.WorldSize.ToString();
        env["LOCAL_RANK"] = local.ToString();
        env["LOCAL_WORLD_SIZE"] = options.ProcessesPerNode.ToString();
        env["GROUP_RANK"] = options.NodeRank.ToString();
        env["MASTER_ADDR"] = options.MasterAddress;
        env["MASTER_PORT"] = options.MasterPort.ToString();
        foreach (var (k, v) in options.Environment) env[k] = v;
        // NVLink SHARP (multicast) stays off on the machines Tessera runs on.
        env["NCCL_NVLS_ENABLE"] = "0";
        return info;
    }

    // Sends a POSIX signal to every rank still running (the rank itself, not its children: they are the rank's to stop).
    private static void SignalAll(Process?[] processes, int signal)
    {
        if (OperatingSystem.IsWindows()) return;
        foreach (var p in processes)
        {
            try { if (p is { HasExited: false }) PosixSignals.Send(p.Id, signal); }
            catch (InvalidOperationException) { /* not started or exited meanwhile */ }
        }
    }

    private static void KillAll(Process?[] processes, bool[] killed)
    {
        for (int i = 0; i < processes.Length; i++)
        {
            var p = processes[i];
            if (p is null) continue;
            try
            {
                if (p.HasExited) continue;
                killed[i] = true;
                p.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException) { /* exited meanwhile */ }
            catch (Win32Exception) { /* exited meanwhile, or not ours to kill */ }
        }
    }

    // Waits for the end of the redirected output, bounded: a leftover grandchild may hold the pipe open.
    private static void Drain(Process p, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try { p.WaitForExitAsync(cts.Token).GetAwaiter().GetResult(); }
        catch (OperationCanceledException) { }
    }

    private static bool WaitAll(Process?[] processes, TimeSpan timeout)
    {
        var deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        bool all = true;
        foreach (var p in processes)
        {
            if (p is null) continue;
            Drain(p, TimeSpan.FromMilliseconds(Math.Max(1, deadline - Environment.TickCount64)));
            if (!p.HasExited) all = false;
        }
        return all;
    }
}
