using System.CommandLine;
using Tessera.Cli.Output;

namespace Tessera.Cli.Commands.Bench;

/// <summary>
/// tessera bench train | generate: the speed of a training step or of generation on this machine's CPU or GPU, measured
/// by the shared benchmarks of Tessera.Training and Tessera.Inference (the ones bench/Tessera.Bench prints), printed as a
/// markdown table (pasteable into docs/benchmarks.md).
/// </summary>
public sealed class BenchCommand : Command
{
    /// <summary>Declares the two subcommands.</summary>
    public BenchCommand(Terminal terminal) : base("bench", "time training steps or generation on the CPU or a GPU")
    {
        Subcommands.Add(new BenchTrainCommand(terminal));
        Subcommands.Add(new BenchGenerateCommand(terminal));
    }
}
