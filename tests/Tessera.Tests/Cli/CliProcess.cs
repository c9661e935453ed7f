using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Tessera.Tests.Cli;

/// <summary>Runs the real tessera command (tessera.dll beside the tests) as a child process.</summary>
internal static partial class CliProcess
{
    public static (int ExitCode, string Stdout, string Stderr) Run(params string[] args)
    {
        using var p = Process.Start(StartInfo(args))!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000)) { p.Kill(entireProcessTree: true); throw new TimeoutException($"tessera {string.Join(' ', args)} did not finish in 120 s"); }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Starts tessera and streams its standard output line by line (for tests that act while it runs).</summary>
    public static Running Start(params string[] args) => new(Process.Start(StartInfo(args))!, args);

    private static ProcessStartInfo StartInfo(string[] args)
    {
        var host = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
        if (string.IsNullOrEmpty(host) || !File.Exists(host)) host = "dotnet";
        var psi = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "tessera.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        return psi;
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    /// <summary>A running tessera: its output so far, a way to wait for a line and to send it a signal.</summary>
    public sealed class Running : IDisposable
    {
        private readonly Process _process;
        private readonly string[] _args;
        private readonly BlockingCollection<string> _lines = new();
        private readonly System.Text.StringBuilder _stdout = new(), _stderr = new();

        public Running(Process process, string[] args)
        {
            _process = process;
            _args = args;
            process.OutputDataReceived += (_, e) =>
            {
                if (e.Data is null) { _lines.CompleteAdding(); return; }
                lock (_stdout) _stdout.AppendLine(e.Data);
                _lines.Add(e.Data);
            };
            process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_stderr) _stderr.AppendLine(e.Data); };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
        }

        /// <summary>Waits (at most 60 s) for a line of standard output that satisfies <paramref name="match"/>.</summary>
        public string WaitForLine(Func<string, bool> match)
        {
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (DateTime.UtcNow < deadline)
            {
                if (!_lines.TryTake(out var line, TimeSpan.FromMilliseconds(200)))
                {
                    if (_lines.IsCompleted) break;
                    continue;
                }
                if (match(line)) return line;
            }
            throw new TimeoutException($"tessera {string.Join(' ', _args)}: no matching line; output so far:\n{Stdout}\n{Stderr}");
        }

        /// <summary>Sends a POSIX signal (2 SIGINT, 15 SIGTERM) to the process.</summary>
        public void Signal(int signal)
        {
            if (Kill(_process.Id, signal) != 0) throw new InvalidOperationException($"kill({_process.Id}, {signal}) failed: errno {Marshal.GetLastPInvokeError()}");
        }

        /// <summary>Waits for the exit (at most 120 s) and returns the exit code.</summary>
        public int WaitForExit()
        {
            if (!_process.WaitForExit(120_000)) { _process.Kill(entireProcessTree: true); throw new TimeoutException($"tessera {string.Join(' ', _args)} did not exit in 120 s"); }
            _process.WaitForExit();   // drains the asynchronous readers
            return _process.ExitCode;
        }

        public string Stdout { get { lock (_stdout) return _stdout.ToString(); } }

        public string Stderr { get { lock (_stderr) return _stderr.ToString(); } }

        public void Dispose()
        {
            if (!_process.HasExited) _process.Kill(entireProcessTree: true);
            _process.Dispose();
        }
    }
}
