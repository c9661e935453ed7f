using System.Runtime.InteropServices;
using Tessera.Cli.CommandLine;

namespace Tessera.Cli.Signals;

/// <summary>
/// Turns the first Ctrl-C (SIGINT) or SIGTERM into a cancellation request that a command honours at a safe point (a
/// training run: after the step in progress, then a checkpoint); a second Ctrl-C ends the process at once, as a shell
/// user expects when the first one seems slow. Only the command's own edge registers signals; libraries see a
/// <see cref="CancellationToken"/>.
/// </summary>
public sealed class StopSignals : IDisposable
{
    private readonly CancellationTokenSource _source = new();
    private readonly PosixSignalRegistration[] _registrations;
    private readonly Action<string> _notify;
    private int _received;   // signal number of the first request (0: none); written once

    /// <summary>Registers the handlers; <paramref name="notify"/> hears what the first signal will do.</summary>
    public StopSignals(Action<string> notify, string whatHappens)
    {
        _notify = notify;
        WhatHappens = whatHappens;
        _registrations =
        [
            PosixSignalRegistration.Create(PosixSignal.SIGINT, context => OnSignal(context, interrupt: true)),
            PosixSignalRegistration.Create(PosixSignal.SIGTERM, context => OnSignal(context, interrupt: false)),
        ];
    }

    /// <summary>What the command does on the first signal, said to the user when it arrives.</summary>
    public string WhatHappens { get; }

    /// <summary>Cancelled on the first SIGINT or SIGTERM.</summary>
    public CancellationToken Token => _source.Token;

    /// <summary>Whether a stop was requested.</summary>
    public bool Requested => Volatile.Read(ref _received) != 0;

    /// <summary>The exit code for the signal received: 130 for SIGINT, 143 for SIGTERM.</summary>
    public int ExitCode => Volatile.Read(ref _received) == 15 ? ExitCodes.Terminated : ExitCodes.Interrupted;

    /// <summary>"SIGINT" or "SIGTERM".</summary>
    public string SignalName => Volatile.Read(ref _received) == 15 ? "SIGTERM" : "SIGINT";

    private void OnSignal(PosixSignalContext context, bool interrupt)
    {
        if (Interlocked.CompareExchange(ref _received, interrupt ? 2 : 15, 0) == 0)
        {
            context.Cancel = true;   // the process keeps running to the safe point
            _notify(interrupt
                ? $"\nstopping: {WhatHappens} (press Ctrl-C again to exit at once)"
                : $"\nSIGTERM: {WhatHappens}");
            _source.Cancel();
            return;
        }
        if (interrupt)
        {
            // A second Ctrl-C: exit now. A checkpoint being written stays a hidden temporary directory, removed at the next start.
            _notify("\nsecond Ctrl-C: exiting at once");
            context.Cancel = true;
            Environment.Exit(ExitCodes.Interrupted);
        }
        context.Cancel = true;   // a repeated SIGTERM changes nothing: the stop is under way
    }

    public void Dispose()
    {
        foreach (var r in _registrations) r.Dispose();
        _source.Dispose();
    }
}
