using System.Globalization;

namespace Tessera.Distributed.Launch;

/// <summary>
/// Where this process sits in a multi-process run, read from the environment the launcher set:
/// Tessera's or torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT),
/// Open MPI's (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK,
/// OMPI_COMM_WORLD_LOCAL_SIZE) or SLURM's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
/// SLURM_NTASKS_PER_NODE, SLURM_LAUNCH_NODE_IPADDR or the first node of SLURM_JOB_NODELIST / SLURM_NODELIST),
/// in that order of precedence; with none of them, a single process.
/// </summary>
/// <param name="Rank">Global rank, 0 .. WorldSize-1.</param>
/// <param name="WorldSize">Number of processes in the run.</param>
/// <param name="LocalRank">Rank on this node: the GPU index to use.</param>
/// <param name="LocalWorldSize">Processes on this node, when the launcher says.</param>
/// <param name="MasterAddress">Host name or address of rank 0's rendezvous.</param>
/// <param name="MasterPort">Port of rank 0's rendezvous (default 29500).</param>
/// <param name="Source">Which launcher's variables were read ("RANK/WORLD_SIZE", "Open MPI", "SLURM", "single process").</param>
public sealed record DistributedEnvironment(int Rank, int WorldSize, int LocalRank, int? LocalWorldSize,
    string MasterAddress, int MasterPort, string Source)
{
    /// <summary>torch.distributed's default rendezvous port.</summary>
    public const int DefaultMasterPort = 29500;

    /// <summary>One process, rank 0 of 1, rendezvous on the loopback address.</summary>
    public static DistributedEnvironment SingleProcess { get; } = new(0, 1, 0, 1, "127.0.0.1", DefaultMasterPort, "single process");

    /// <summary>True when more than one process takes part.</summary>
    public bool IsDistributed => WorldSize > 1;

    /// <summary>Reads this process's environment variables.</summary>
    public static DistributedEnvironment FromEnvironment() => FromVariables(Environment.GetEnvironmentVariable);

    /// <summary>Reads the variables from <paramref name="variables"/> (tests, or a saved environment).</summary>
    public static DistributedEnvironment FromVariables(IReadOnlyDictionary<string, string> variables) =>
        FromVariables(name => variables.TryGetValue(name, out var v) ? v : null);

    /// <summary>Reads the variables through <paramref name="lookup"/> (null or empty = unset).</summary>
    public static DistributedEnvironment FromVariables(Func<string, string?> lookup)
    {
        ArgumentNullException.ThrowIfNull(lookup);
        string? Get(string name) => lookup(name) is { Length: > 0 } v ? v.Trim() : null;

        if (Get("RANK") is not null || Get("WORLD_SIZE") is not null)
        {
            int world = Required(Get, "WORLD_SIZE", "RANK");
            int rank = Required(Get, "RANK", "WORLD_SIZE");
            int? localRank = Optional(Get, "LOCAL_RANK");
            if (localRank is null && world > 1)
                throw new ArgumentException($"RANK={rank} and WORLD_SIZE={world} are set but LOCAL_RANK is not; set LOCAL_RANK to this process's GPU index on its node ('tessera launch' sets all three)");
            return Validate(rank, world, localRank ?? 0, Optional(Get, "LOCAL_WORLD_SIZE"), Master(Get, world, "RANK/WORLD_SIZE"), Port(Get), "RANK/WORLD_SIZE");
        }
        if (Get("OMPI_COMM_WORLD_RANK") is not null)
        {
            int world = Required(Get, "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK");
            int rank = Required(Get, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE");
            int local = Optional(Get, "OMPI_COMM_WORLD_LOCAL_RANK") ?? 0;
            return Validate(rank, world, local, Optional(Get, "OMPI_COMM_WORLD_LOCAL_SIZE"), Master(Get, world, "Open MPI"), Port(Get), "Open MPI");
        }
        if (Get("SLURM_PROCID") is not null)
        {
            int world = Required(Get, "SLURM_NTASKS", "SLURM_PROCID");
            int rank = Required(Get, "SLURM_PROCID", "SLURM_NTASKS");
            int local = Optional(Get, "SLURM_LOCALID") ?? 0;
            // SLURM_NTASKS_PER_NODE may read "4" or "4(x2)"; the leading count is the local size.
            int? localWorld = Get("SLURM_NTASKS_PER_NODE") is { } perNode && int.TryParse(perNode.Split('(', ',')[0], NumberStyles.None, CultureInfo.InvariantCulture, out int n) ? n : null;
            return Validate(rank, world, local, localWorld, Master(Get, world, "SLURM"), Port(Get), "SLURM");
        }
        return SingleProcess;
    }

    /// <summary>The first host of a SLURM host list: "gpu[03-05,07],cpu1" gives "gpu03".</summary>
    public static string FirstHost(string nodeList)
    {
        ArgumentException.ThrowIfNullOrEmpty(nodeList);
        int depth = 0, end = nodeList.Length;
        for (int i = 0; i < nodeList.Length; i++)
        {
            if (nodeList[i] == '[') depth++;
            else if (nodeList[i] == ']') depth--;
            else if (nodeList[i] == ',' && depth == 0) { end = i; break; }
        }
        string first = nodeList[..end];
        int open = first.IndexOf('[');
        if (open < 0) return first;
        int close = first.IndexOf(']', open);
        if (close < 0) throw new FormatException($"SLURM node list '{nodeList}' has an unclosed '['");
        string range = first[(open + 1)..close].Split(',')[0].Split('-')[0];
        return first[..open] + range + first[(close + 1)..];
    }

    private static DistributedEnvironment Validate(int rank, int world, int localRank, int? localWorld, string master, int port, string source)
    {
        string names = source switch
        {
            "Open MPI" => "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE",
            "SLURM" => "SLURM_PROCID/SLURM_NTASKS",
            _ => "RANK/WORLD_SIZE",
        };
        if (world < 1) throw new ArgumentException($"{source}: world size {world} must be at least 1 ({names})");
        if (rank < 0 || rank >= world) throw new ArgumentException($"{source}: rank {rank} must be in [0, {world}) ({names})");
        if (localRank < 0 || localRank >= world) throw new ArgumentException($"{source}: local rank {localRank} must be in [0, {world})");
        if (localWorld is { } lw && (lw < 1 || localRank >= lw))
            throw new ArgumentException($"{source}: local rank {localRank} must be in [0, local world size {lw})");
        return new DistributedEnvironment(rank, world, localRank, localWorld, master, port, source);
    }

    private static string Master(Func<string, string?> get, int world, string source)
    {
        if (get("MASTER_ADDR") is { } address) return address;
        if (source == "SLURM")
        {
            if (get("SLURM_LAUNCH_NODE_IPADDR") is { } launchNode) return launchNode;
            if ((get("SLURM_JOB_NODELIST") ?? get("SLURM_NODELIST")) is { } nodes) return FirstHost(nodes);
        }
        if (world == 1) return "127.0.0.1";
        throw new ArgumentException(source == "Open MPI"
            ? "Open MPI sets no rendezvous address: export MASTER_ADDR=<host of rank 0> and pass it to every rank (mpirun -x MASTER_ADDR -x MASTER_PORT)"
            : $"MASTER_ADDR is not set for a {world}-process run; set it to the host of rank 0");
    }

    private static int Port(Func<string, string?> get)
    {
        int port = Optional(get, "MASTER_PORT") ?? DefaultMasterPort;
        if (port < 1 || port > 65535) throw new ArgumentException($"MASTER_PORT={port} must be in [1, 65535]");
        return port;
    }

    private static int Required(Func<string, string?> get, string name, string partner) =>
        Optional(get, name) ?? throw new ArgumentException($"{partner} is set but {name} is not; set both");

    private static int? Optional(Func<string, string?> get, string name)
    {
        if (get(name) is not { } text) return null;
        if (!int.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int value))
            throw new ArgumentException($"{name}='{text}' is not an integer");
        return value;
    }
}
