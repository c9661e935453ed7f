using Tessera.Cli.CommandLine;
using Tessera.Distributed.Launch;
using Tessera.Distributed.Mesh;
using Tessera.Nn;
using Tessera.Tensors;

namespace Tessera.Cli.Commands.Train;

/// <summary>How a training run is spread: one device, CPU thread ranks in this process, or one process per GPU (NCCL).</summary>
public enum TopologyKind
{
    /// <summary>One CPU backend or one GPU.</summary>
    OneDevice,
    /// <summary>--ranks N: data-parallel ranks as threads of this process, each with its own CPU backend.</summary>
    ThreadRanks,
    /// <summary>Started by a launcher (tessera launch, srun, mpirun) with --device cuda: this process is one rank, NCCL between them.</summary>
    ProcessPerGpu,
}

/// <summary>The run's topology, read from the options and the launcher's environment (the only place train reads it).</summary>
/// <param name="Kind">How the run is spread.</param>
/// <param name="Device">This process's device (a launched rank's GPU is its LOCAL_RANK).</param>
/// <param name="WorldSize">All ranks: data-parallel x tensor-parallel.</param>
/// <param name="Environment">The launcher's variables.</param>
/// <param name="TensorParallel">Tensor-parallel ranks per data-parallel rank (--tp).</param>
/// <param name="PipelineParallel">Pipeline stages (--pp).</param>
public sealed record Topology(TopologyKind Kind, Device Device, int WorldSize, DistributedEnvironment Environment, int TensorParallel = 1, int PipelineParallel = 1)
{
    /// <summary>The ranks as a mesh: dp x tp x pp, tp innermost and pp outermost (Megatron's order).</summary>
    public DeviceMesh Mesh => new(dp: DataParallelSize, pp: PipelineParallel, tp: TensorParallel);

    /// <summary>Data-parallel ranks: the batch is split over them (a tensor-parallel group and a pipeline share its rows).</summary>
    public int DataParallelSize => WorldSize / (TensorParallel * PipelineParallel);

    /// <summary>Decides the topology; conflicting requests are usage errors naming the options.</summary>
    public static Topology Of(TrainSettings settings, DistributedEnvironment env)
    {
        bool launched = env.IsDistributed || System.Environment.GetEnvironmentVariable("WORLD_SIZE") is not null;
        bool onGpu = settings.Device.Kind == DeviceKind.Cuda;
        int tp = settings.TensorParallel, pp = settings.Pp, split = tp * pp;
        if (settings.SequenceParallel && tp < 2)
            throw new UsageException("--sp (sequence parallelism) splits the norms over the tensor-parallel ranks: it needs --tp of 2 or more");
        if (launched && onGpu)
        {
            if (settings.Ranks > 1) throw new UsageException("--ranks (CPU thread ranks) cannot be combined with a launched multi-process run");
            if (env.WorldSize % split != 0)
                throw new UsageException($"{Split(tp, pp)} must divide the {env.WorldSize} launched processes (they form {env.WorldSize} / {split} data-parallel groups)");
            return new Topology(TopologyKind.ProcessPerGpu, Device.Cuda(env.LocalRank), env.WorldSize, env, tp, pp);
        }
        if (env.IsDistributed)
            throw new UsageException($"this process is rank {env.Rank} of {env.WorldSize} ({env.Source}), but multi-process training runs on GPUs through NCCL: add --device cuda, or use --ranks N for CPU thread ranks in one process");
        // --tp and --pp alone run tp x pp thread ranks; with --ranks, the ranks are dp x tp x pp.
        int ranks = settings.Ranks > 1 ? settings.Ranks : split;
        if (ranks % split != 0)
            throw new UsageException($"{Split(tp, pp)} must divide --ranks {ranks} (the ranks form --ranks / {split} data-parallel groups of {split} ranks)");
        return ranks > 1
            ? new Topology(TopologyKind.ThreadRanks, settings.Device, ranks, env, tp, pp)
            : new Topology(TopologyKind.OneDevice, settings.Device, 1, env);
    }

    /// <summary>The mesh in words, for the line a run prints at its start.</summary>
    public string Describe() => TensorParallel > 1 || PipelineParallel > 1
        ? $"{WorldSize} ranks as dp {DataParallelSize}{(TensorParallel > 1 ? $" x tp {TensorParallel}" : "")}{(PipelineParallel > 1 ? $" x pp {PipelineParallel}" : "")}"
        : $"{WorldSize} data-parallel rank(s)";

    private static string Split(int tp, int pp) => tp > 1 && pp > 1 ? $"--tp {tp} x --pp {pp}" : pp > 1 ? $"--pp {pp}" : $"--tp {tp}";

    /// <summary>Whether this process reports (prints, logs metrics, plots, samples): rank 0.</summary>
    public bool Reports => Kind != TopologyKind.ProcessPerGpu || Environment.Rank == 0;

    /// <summary>ZeRO-3 over several ranks builds the model declared only: each rank's trainer writes its shards of the weights.</summary>
    public bool ShardedConstruction(TrainSettings settings) => settings.Zero == 3 && Kind != TopologyKind.OneDevice;

    /// <summary>The storage of a model built for this topology.</summary>
    public ArenaStorage Storage(TrainSettings settings) => ShardedConstruction(settings) ? ArenaStorage.Deferred : ArenaStorage.Full;
}
