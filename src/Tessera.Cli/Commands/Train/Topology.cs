using Tessera.Cli.CommandLine;
using Tessera.Distributed.Launch;
using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Cli.Commands.Train;

/// <summary>How a training run is spread: one device, CPU thread ranks in this process, or one process per GPU (NCCL).</summary>
public enum TopologyKind
{
    /// <summary>One CPU backend or one GPU.</summary>
    OneDevice,
    /// <summary>--ranks N (and --pp P): data-parallel ranks (each of P pipeline stages) as threads of this process, each with its own CPU backend.</summary>
    ThreadRanks,
    /// <summary>Started by a launcher (tessera launch, srun, mpirun) with --device cuda: this process is one rank, NCCL between them.</summary>
    ProcessPerGpu,
}

/// <summary>The run's topology, read from the options and the launcher's environment (the only place train reads it).</summary>
/// <param name="Kind">How the run is spread.</param>
/// <param name="Device">This process's device (a launched rank's GPU is its LOCAL_RANK).</param>
/// <param name="WorldSize">Data-parallel ranks (with --pp, each runs --pp pipeline stages: --ranks x --pp threads).</param>
/// <param name="Environment">The launcher's variables.</param>
public sealed record Topology(TopologyKind Kind, Device Device, int WorldSize, DistributedEnvironment Environment)
{
    /// <summary>Decides the topology; conflicting requests are usage errors naming the options.</summary>
    public static Topology Of(TrainSettings settings, DistributedEnvironment env)
    {
        bool launched = env.IsDistributed || System.Environment.GetEnvironmentVariable("WORLD_SIZE") is not null;
        bool onGpu = settings.Device.Kind == DeviceKind.Cuda;
        if (launched && onGpu)
        {
            if (settings.Ranks > 1) throw new UsageException("--ranks (CPU thread ranks) cannot be combined with a launched multi-process run");
            if (settings.Pp > 1) throw new UsageException("--pp under a launched multi-GPU run is not wired into the command line yet (the library runs pipeline stages over NCCL groups); use --pp with CPU thread ranks");
            return new Topology(TopologyKind.ProcessPerGpu, Device.Cuda(env.LocalRank), env.WorldSize, env);
        }
        if (env.IsDistributed)
            throw new UsageException($"this process is rank {env.Rank} of {env.WorldSize} ({env.Source}), but multi-process training runs on GPUs through NCCL: add --device cuda, or use --ranks N for CPU thread ranks in one process");
        // Pipeline stages run as thread ranks too: --ranks data-parallel ranks, each with --pp stages.
        return settings.Ranks > 1 || settings.Pp > 1
            ? new Topology(TopologyKind.ThreadRanks, settings.Device, settings.Ranks, env)
            : new Topology(TopologyKind.OneDevice, settings.Device, 1, env);
    }

    /// <summary>Whether this process reports (prints, logs metrics, plots, samples): rank 0.</summary>
    public bool Reports => Kind != TopologyKind.ProcessPerGpu || Environment.Rank == 0;

    /// <summary>ZeRO-3 over several ranks builds the model declared only: each rank's trainer writes its shards of the weights.</summary>
    public bool ShardedConstruction(TrainSettings settings) => settings.Zero == 3 && Kind != TopologyKind.OneDevice;

    /// <summary>The storage of a model built for this topology.</summary>
    public ArenaStorage Storage(TrainSettings settings) => ShardedConstruction(settings) ? ArenaStorage.Deferred : ArenaStorage.Full;
}
