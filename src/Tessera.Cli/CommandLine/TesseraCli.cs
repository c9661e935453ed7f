using System.CommandLine;
using System.CommandLine.Invocation;
using Tessera.Cli.Commands;
using Tessera.Cli.Commands.Bench;
using Tessera.Cli.Commands.Generate;
using Tessera.Cli.Commands.Train;
using Tessera.Cli.Output;
using Tessera.Training.Runs;

namespace Tessera.Cli.CommandLine;

/// <summary>
/// The tessera command line: the root command with one subcommand per verb (System.CommandLine: help, --version,
/// suggestions for mistyped options, response files with @FILE, shell completion through the [suggest] directive), and
/// the mapping of outcomes to exit codes: 0 done, 1 failed, 2 usage error (the parser's or a command's own), 130/143
/// stopped by a signal. Adding a command is a class deriving from <see cref="Command"/> and one line in <see cref="Build"/>.
/// </summary>
public static class TesseraCli
{
    /// <summary>The root command, writing to <paramref name="terminal"/>.</summary>
    public static RootCommand Build(Terminal terminal)
    {
        var root = new RootCommand("Tessera: train, fine-tune and serve transformer language models (GPT-2, Llama) on CPUs and NVIDIA GPUs, in .NET")
        {
            new TrainCommand(terminal),
            new ExportCommand(terminal),
            new GenerateCommand(terminal),
            new ServeCommand(terminal),
            new PrepareCommand(terminal),
            new PlotCommand(terminal),
            new InfoCommand(terminal),
            new BenchCommand(terminal),
            new LaunchCommand(terminal),
            new CompletionCommand(terminal),
        };
        return root;
    }

    /// <summary>Parses and runs <paramref name="args"/>; returns the exit code.</summary>
    public static int Run(string[] args, Terminal terminal, bool debug)
    {
        var root = Build(terminal);
        var parse = root.Parse(args);
        if (parse.Action is ParseErrorAction parseError)
        {
            // One line per problem and the suggestions for a mistyped name; the full help only on request.
            parseError.ShowHelp = false;
            parseError.ShowTypoCorrections = true;
        }
        var configuration = new InvocationConfiguration
        {
            EnableDefaultExceptionHandler = false,
            ProcessTerminationTimeout = null,   // signals are the commands' own (StopSignals): a run saves before it exits
            // A usage error's suggestions belong with its message on standard error, not in output a script reads.
            Output = parse.Action is ParseErrorAction ? terminal.Error : terminal.Output,
            Error = terminal.Error,
        };
        string command = parse.CommandResult.Command is RootCommand ? "tessera" : $"tessera {CommandPath(parse.CommandResult.Command)}";
        try
        {
            int code = parse.Invoke(configuration);
            if (parse.Action is ParseErrorAction)
            {
                terminal.Error.WriteLine($"see '{command} --help'");
                return ExitCodes.Usage;
            }
            return code;
        }
        catch (Exception e) when (Unwrap(e) is UsageException or ResumeMismatchException or RunDirectoryException)
        {
            terminal.Error.WriteLine($"{command}: {Unwrap(e).Message}");
            terminal.Error.WriteLine($"see '{command} --help'");
            return ExitCodes.Usage;
        }
        catch (Exception e)
        {
            // Every failure reaches the user as one line naming what went wrong; --debug (or TESSERA_DEBUG=1) adds the stack.
            terminal.Error.WriteLine($"{command}: error: {Unwrap(e).Message}");
            if (debug) terminal.Error.WriteLine(e);
            return ExitCodes.Failure;
        }
    }

    private static Exception Unwrap(Exception e) =>
        e is AggregateException { InnerExceptions.Count: > 0 } a ? Unwrap(a.InnerExceptions[0])
        : e is System.Reflection.TargetInvocationException { InnerException: { } inner } ? Unwrap(inner)
        : e;

    private static string CommandPath(Command command)
    {
        var names = new List<string>();
        for (Symbol? s = command; s is Command c && c is not RootCommand; s = c.Parents.FirstOrDefault())
            names.Insert(0, c.Name);
        return string.Join(' ', names);
    }
}
