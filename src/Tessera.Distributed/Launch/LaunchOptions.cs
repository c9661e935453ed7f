namespace Tessera.Distributed.Launch;

/// <summary>What <see cref="Launcher.Run"/> starts: one process per local rank of this node (torchrun's options).</summary>
public sealed record LaunchOptions
{
    /// <summary>The program each rank runs (a path or a name on PATH).</summary>
    public required string Program { get; init; }

    /// <summary>Its arguments, passed unchanged (no shell quoting). Default: none.</summary>
    public IReadOnlyList<string> Arguments { get; init; } = [];

    /// <summary>Processes on this node (torchrun's --nproc-per-node); one per GPU for GPU runs. Default 1.</summary>
    public int ProcessesPerNode { get; init; } = 1;

    /// <summary>Number of nodes in the run (--nnodes). Default 1.</summary>
    public int Nodes { get; init; } = 1;

    /// <summary>This node's index, 0 .. Nodes-1 (--node-rank); its ranks are NodeRank * ProcessesPerNode + local rank. Default 0.</summary>
    public int NodeRank { get; init; }

    /// <summary>Host of global rank 0, given to every rank as MASTER_ADDR. Default "127.0.0.1".</summary>
    public string MasterAddress { get; init; } = "127.0.0.1";

    /// <summary>Rendezvous port, given as MASTER_PORT. Default 29500.</summary>
    public int MasterPort { get; init; } = DistributedEnvironment.DefaultMasterPort;

    /// <summary>
    /// GPUs visible on this node when the command is a GPU run (null: not a GPU run, or unknown).
    /// More processes per node than visible GPUs is then an error. Default null.
    /// </summary>
    public int? VisibleGpus { get; init; }

    /// <summary>Extra environment variables for every rank (override inherited ones). Default none.</summary>
    public IReadOnlyDictionary<string, string> Environment { get; init; } = new Dictionary<string, string>();

    /// <summary>Working directory of the ranks (null: the launcher's).</summary>
    public string? WorkingDirectory { get; init; }

    /// <summary>Receives each rank's standard output, a line at a time, prefixed "[rank N] " (null: Console.Out).</summary>
    public TextWriter? Output { get; init; }

    /// <summary>Receives each rank's standard error, prefixed likewise (null: Console.Error).</summary>
    public TextWriter? Error { get; init; }

    /// <summary>How long to wait for killed ranks to exit before giving up on them. Default 10 s.</summary>
    public TimeSpan KillTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Whether SIGINT (Ctrl+C) and SIGTERM to the launcher kill the ranks (a CLI sets true). Default false.</summary>
    public bool HandleInterrupts { get; init; }

    /// <summary>
    /// With <see cref="HandleInterrupts"/>: how long the ranks get to stop by themselves. The first SIGINT or SIGTERM to the
    /// launcher is passed on to every rank as SIGTERM (a training rank finishes its step, saves a checkpoint and exits),
    /// ranks exiting then are not failures, and a second signal or the end of this period kills them. Null (the default):
    /// the first signal kills every rank.
    /// </summary>
    public TimeSpan? InterruptGracePeriod { get; init; }

    /// <summary>Global number of processes: Nodes * ProcessesPerNode.</summary>
    public int WorldSize => Nodes * ProcessesPerNode;

    /// <summary>Throws with a message naming the bad option.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(Program)) throw new ArgumentException("launch: no program given");
        if (ProcessesPerNode < 1) throw new ArgumentException($"launch: --nproc-per-node must be at least 1, got {ProcessesPerNode}");
        if (Nodes < 1) throw new ArgumentException($"launch: --nnodes must be at least 1, got {Nodes}");
        if (NodeRank < 0 || NodeRank >= Nodes) throw new ArgumentException($"launch: --node-rank {NodeRank} must be in [0, {Nodes}) (--nnodes {Nodes})");
        if (MasterPort < 1 || MasterPort > 65535) throw new ArgumentException($"launch: --master-port {MasterPort} must be in [1, 65535]");
        if (string.IsNullOrWhiteSpace(MasterAddress)) throw new ArgumentException("launch: --master-addr is empty");
        if (VisibleGpus is { } gpus && ProcessesPerNode > gpus)
            throw new ArgumentException($"launch: --nproc-per-node {ProcessesPerNode} exceeds the {gpus} visible GPU{(gpus == 1 ? "" : "s")} on this node; a GPU run needs one process per GPU (lower --nproc-per-node or check CUDA_VISIBLE_DEVICES)");
        if (KillTimeout <= TimeSpan.Zero) throw new ArgumentException($"launch: kill timeout must be positive, got {KillTimeout}");
    }
}
