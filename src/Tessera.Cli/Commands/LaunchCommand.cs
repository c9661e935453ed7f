using System.CommandLine;
using Tessera.Cli.CommandLine;
using Tessera.Cli.Output;
using Tessera.Distributed.Launch;

namespace Tessera.Cli.Commands;

/// <summary>tessera launch: one process per GPU (or per rank) with the torchrun environment, running a command.</summary>
public sealed class LaunchCommand : Command
{
    private static readonly HashSet<string> TesseraCommands = ["train", "generate", "prepare", "info", "bench", "plot"];

    private readonly Argument<string[]> _command = new("COMMAND")
    {
        Description = "after '--': a tessera command (e.g. train --device cuda ...) or any program with its arguments",
        Arity = ArgumentArity.OneOrMore,
    };
    private readonly Option<int> _nproc = SharedOptions.Int("--nproc-per-node", "N", "processes on this node", 1, min: 1);
    private readonly Option<int> _nnodes = SharedOptions.Int("--nnodes", "M", "nodes in the job", 1, min: 1);
    private readonly Option<int> _nodeRank = SharedOptions.Int("--node-rank", "K", "this node's index", 0, min: 0);
    private readonly Option<string> _masterAddr = new("--master-addr") { Description = "rendezvous host (rank 0's node)", HelpName = "HOST", DefaultValueFactory = _ => "127.0.0.1" };
    private readonly Option<int> _masterPort = SharedOptions.Int("--master-port", "PORT", "rendezvous port", DistributedEnvironment.DefaultMasterPort, min: 1);
    private readonly Option<double> _gracePeriod = SharedOptions.Double("--stop-grace", "MINUTES",
        "after Ctrl-C or SIGTERM, how long the ranks get to stop by themselves (a training run saves a checkpoint) before they are killed; a second signal kills them at once", 10, min: 0);
    private readonly Option<int?> _gpus = SharedOptions.AtLeast(new Option<int?>("--gpus") { Description = "GPUs on this node (more processes than GPUs is an error for a command that names --device cuda) [default: the count in CUDA_VISIBLE_DEVICES when set]", HelpName = "G" }, 0);

    /// <summary>Declares the command.</summary>
    public LaunchCommand(Terminal terminal) : base("launch",
        "start one process per GPU (torchrun-style: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) running a command; a failing rank stops the others")
    {
        Arguments.Add(_command);
        foreach (var o in new Option[] { _nproc, _nnodes, _nodeRank, _masterAddr, _masterPort, _gpus, _gracePeriod }) Options.Add(o);
        SetAction(parse => Run(parse, terminal));
    }

    private int Run(ParseResult parse, Terminal terminal)
    {
        var command = parse.GetValue(_command)!.ToList();
        var given = command.ToList();
        string program;
        if (TesseraCommands.Contains(command[0]))
        {
            // Run this same tessera for every rank: the apphost directly, or the dotnet host with tessera.dll.
            program = Environment.ProcessPath ?? throw new UsageException("cannot find this process's executable to start the ranks");
            if (Path.GetFileNameWithoutExtension(program) == "dotnet")
                command.Insert(0, Path.Combine(AppContext.BaseDirectory, "tessera.dll"));
        }
        else
        {
            program = command[0];
            command.RemoveAt(0);
        }
        bool gpuRun = given.Any(a => a.StartsWith("cuda", StringComparison.Ordinal));
        var options = new LaunchOptions
        {
            Program = program,
            Arguments = command,
            ProcessesPerNode = parse.GetValue(_nproc),
            Nodes = parse.GetValue(_nnodes),
            NodeRank = parse.GetValue(_nodeRank),
            MasterAddress = parse.GetValue(_masterAddr)!,
            MasterPort = parse.GetValue(_masterPort),
            VisibleGpus = gpuRun ? parse.GetValue(_gpus) ?? VisibleFromEnvironment() : null,
            HandleInterrupts = true,
            // Ctrl-C or SIGTERM: the ranks get time to finish their step and save (a second signal kills them).
            InterruptGracePeriod = TimeSpan.FromMinutes(parse.GetValue(_gracePeriod)),
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
        var result = Launcher.Run(options, CancellationToken.None);
        terminal.Note($"tessera launch: {result.Summary}");
        return result.ExitCode;
    }

    // The launcher is the edge of a multi-GPU job: reading the scheduler's visible devices here is its job.
    private static int? VisibleFromEnvironment()
    {
        var v = Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES");
        if (string.IsNullOrWhiteSpace(v)) return null;
        return v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Length;
    }
}
