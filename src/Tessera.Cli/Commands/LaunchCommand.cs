using Tessera.Distributed.Launch;

namespace Tessera.Cli.Commands;

/// <summary>tessera launch: one process per GPU (or per rank) with the torchrun environment.</summary>
internal static class LaunchCommand
{
    public const string Usage = """
        tessera launch --nproc-per-node N [--nnodes M --node-rank K --master-addr HOST --master-port PORT] [--gpus G] -- COMMAND...
          Starts N processes on this node with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT
          set (and NCCL_NVLS_ENABLE=0). COMMAND is a tessera command (e.g. "train --device cuda ...") or any program.
          If a rank fails or is killed, the others are stopped within 10 s and the failing rank and its exit are reported.
          --gpus G: GPUs on this node (default: the count in CUDA_VISIBLE_DEVICES when set); more processes than GPUs is an error
          for a command that names --device cuda.
        """;

    private static readonly HashSet<string> TesseraCommands = ["train", "generate", "prepare", "info"];

    public static int Run(CommandLineArguments args, TextWriter output)
    {
        int nproc = args.Int("nproc-per-node", 1);
        int nnodes = args.Int("nnodes", 1);
        int nodeRank = args.Int("node-rank", 0);
        string masterAddr = args.String("master-addr", "127.0.0.1")!;
        int masterPort = args.Int("master-port", DistributedEnvironment.DefaultMasterPort);
        int gpus = args.Int("gpus", -1);
        args.ThrowOnUnknown("launch");
        if (args.Rest.Count == 0) throw new UsageException("launch needs a command after '--'");

        var command = args.Rest.ToList();
        string program;
        if (TesseraCommands.Contains(command[0]))
        {
            // Run this same tessera for every rank: the apphost directly, or the dotnet host with tessera.dll.
            program = Environment.ProcessPath ?? throw new UsageException("cannot find this process's executable to start the ranks");
            if (Path.GetFileNameWithoutExtension(program) == "dotnet")
                command.Insert(0, typeof(LaunchCommand).Assembly.Location);
        }
        else
        {
            program = command[0];
            command.RemoveAt(0);
        }

        bool gpuRun = args.Rest.Any(a => a.StartsWith("cuda", StringComparison.Ordinal));
        int? visible = gpus >= 0 ? gpus : VisibleFromEnvironment();
        var options = new LaunchOptions
        {
            Program = program,
            Arguments = command,
            ProcessesPerNode = nproc,
            Nodes = nnodes,
            NodeRank = nodeRank,
            MasterAddress = masterAddr,
            MasterPort = masterPort,
            VisibleGpus = gpuRun ? visible : null,
            HandleInterrupts = true,
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
        Console.Error.WriteLine($"tessera launch: {result.Summary}");
        return result.ExitCode;
    }

    private static int? VisibleFromEnvironment()
    {
        var v = Environment.GetEnvironmentVariable("CUDA_VISIBLE_DEVICES");
        if (string.IsNullOrWhiteSpace(v)) return null;
        return v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Length;
    }
}
