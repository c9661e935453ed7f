using Tessera.Distributed.InProcess;
using Tessera.Distributed.Mesh;
using Tessera.Nn.Parallel;
using Tessera.Models;
using Tessera.Tensors.Cpu;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Pipeline;

namespace Tessera.Training.Parallel;

/// <summary>
/// Entry points for data-parallel training on CPU thread ranks (one process, one thread per rank, each
/// with its own <see cref="CpuBackend"/> and <see cref="InProcessProcessGroup"/>): what a CLI wires to
/// "--ranks N --zero S [--offload]" without a launcher.
/// </summary>
public static class ParallelTraining
{
    /// <summary>The layouts expert parallelism is proven in (plain data parallelism, no other split); the message names what to change.</summary>
    public static void CheckExpertParallel(DeviceMesh mesh, DataParallelOptions parallel, int expertParallel)
    {
        ArgumentNullException.ThrowIfNull(mesh);
        ArgumentNullException.ThrowIfNull(parallel);
        if (expertParallel < 1) throw new ArgumentException($"expert parallelism: ep ({expertParallel}) must be at least 1");
        if (expertParallel == 1) return;
        if (mesh.Dp % expertParallel != 0)
            throw new ArgumentException($"expert parallelism: ep ({expertParallel}) must divide dp ({mesh.Dp}); the ep ranks of one group are data-parallel replicas of everything but the experts");
        if (mesh.Tp > 1 || mesh.Cp > 1 || mesh.Pp > 1)
            throw new NotSupportedException($"expert parallelism: ep ({expertParallel}) is built with data parallelism only; mesh {mesh} also splits over tp, cp or pp");
        if (parallel.Stage != ZeroStage.None)
            throw new NotSupportedException($"expert parallelism: ep ({expertParallel}) with ZeRO stage {(int)parallel.Stage} is not built (a dp-wide shard would mix different experts); use ZeRO 0");
        if (parallel.OffloadOptimizer)
            throw new NotSupportedException($"expert parallelism: ep ({expertParallel}) with an offloaded optimizer is not built");
    }

    /// <summary>
    /// Runs <paramref name="body"/> on <paramref name="worldSize"/> threads, one per rank, and returns each rank's
    /// result (index = rank). Each rank's backend gets ProcessorCount / worldSize threads (at least one). If a rank
    /// throws, the world is aborted: the others' pending and later collectives throw <see cref="Tessera.Distributed.WorldAbortedException"/>
    /// at once (a rank that never issues a collective still fails its peers after <paramref name="timeout"/>), and the original
    /// failures are rethrown together in an <see cref="AggregateException"/> (<see cref="ThreadRanks.Run{T}(InProcessWorld, Func{int, T})"/>).
    /// </summary>
    public static T[] RunThreadRanks<T>(int worldSize, Func<RankContext, T> body, TimeSpan? timeout = null)
    {
        ArgumentNullException.ThrowIfNull(body);
        if (worldSize < 1) throw new ArgumentOutOfRangeException(nameof(worldSize), $"world size must be at least 1, got {worldSize}");
        var world = new InProcessWorld(worldSize, timeout ?? TimeSpan.FromMinutes(2));
        int threads = Math.Max(1, Environment.ProcessorCount / worldSize);
        return ThreadRanks.Run(world, rank =>
        {
            using var group = world.WorldGroup(rank);
            return body(new RankContext(rank, worldSize, group, new CpuBackend(threads), new CpuBackend(threads), world.FactoryFor(rank)));
        });
    }

    /// <summary>
    /// Trains on <paramref name="worldSize"/> thread ranks: <paramref name="buildRank"/> makes each rank's model
    /// (initialized identically on every rank, on the context's backend) and data loader (slice Rank of WorldSize);
    /// then each rank runs a <see cref="Trainer"/> with the <see cref="DataParallelism"/> strategy of <paramref name="parallel"/> to <see cref="TrainerOptions.Steps"/>. Rank 0 alone
    /// reports to <paramref name="onStep"/>; <paramref name="checkpoint"/> runs on every rank (a sharded save is
    /// collective, e.g. <see cref="ShardedCheckpoint.Save"/>). <paramref name="resume"/>, when given, runs on every
    /// rank after the trainer is built (e.g. <see cref="ShardedCheckpoint.Restore"/>); otherwise <paramref name="weights"/>,
    /// when given, does: it writes the weights of a model that <paramref name="buildRank"/> built deferred (ZeRO-3's
    /// sharded construction, <see cref="Tessera.Nn.ArenaStorage.Deferred"/>), e.g. <c>t => t.InitializeWeights(seed)</c>.
    /// Returns rank 0's trainer step. Cancelled through <paramref name="cancellation"/>, every rank stops after the same step,
    /// calls <paramref name="checkpoint"/> there (so a stopped run is saved) and the ranks' <see cref="OperationCanceledException"/>s
    /// come out together in the <see cref="AggregateException"/>.
    /// </summary>
    public static int Train(int worldSize, DataParallelOptions parallel, TrainerOptions options, AdamWOptions adamW,
        Func<RankContext, (Transformer Model, ITokenBatchSource Train)> buildRank,
        Action<StepMetrics>? onStep = null, Action<Trainer>? checkpoint = null,
        Action<Trainer>? resume = null, CancellationToken cancellation = default, Action<Trainer>? weights = null)
    {
        ArgumentNullException.ThrowIfNull(buildRank);
        return Train(new DeviceMesh(dp: worldSize), ParallelPlan.Megatron(sequenceParallel: false), parallel, options, adamW, r => buildRank(r.Context),
            onStep, checkpoint, resume, cancellation, weights);
    }

    /// <summary>
    /// Trains on the thread ranks of <paramref name="mesh"/> (tensor x data parallelism): each rank's <see cref="MeshRank"/>
    /// carries its groups and, when the mesh has tp &gt; 1, the <see cref="TensorParallelism"/> of <paramref name="plan"/> its
    /// model is built with; <paramref name="parallel"/> (ZeRO 0-3) runs over each rank's dp group. The data loader a rank
    /// builds reads slice <see cref="MeshCoordinate.Dp"/> of <see cref="DeviceMesh.Dp"/> (the ranks of one tp group read the
    /// same rows). When the mesh has pp &gt; 1 each rank's <see cref="MeshRank.Pipeline"/> is its stage of
    /// <paramref name="pipeline"/> (the partition of the blocks), its model is built as that stage, and its trainer runs each
    /// step's micro-batches through <paramref name="schedule"/>. With <paramref name="expertParallel"/> &gt; 1 (a mixture-of-experts
    /// model, plain data parallelism, no tp, cp or pp) each dp group is cut into expert-parallel groups of that many consecutive ranks
    /// (<see cref="ExpertParallelGroups"/>): the rank's <see cref="MeshRank.ExpertParallelism"/> is what its model is built with, and
    /// its experts' gradients are summed over the expert-data-parallel group. Otherwise as the overload over <c>worldSize</c> data-parallel ranks.
    /// </summary>
    public static int Train(DeviceMesh mesh, ParallelPlan plan, DataParallelOptions parallel, TrainerOptions options, AdamWOptions adamW,
        Func<MeshRank, (Transformer Model, ITokenBatchSource Train)> buildRank,
        Action<StepMetrics>? onStep = null, Action<Trainer>? checkpoint = null,
        Action<Trainer>? resume = null, CancellationToken cancellation = default, Action<Trainer>? weights = null,
        PipelinePartition? pipeline = null, PipelineScheduleKind schedule = PipelineScheduleKind.OneForwardOneBackward, int expertParallel = 1)
    {
        CheckExpertParallel(mesh, parallel, expertParallel);
        if (mesh.Pp > 1 && pipeline is null) throw new ArgumentException($"parallel training: mesh {mesh} has pipeline stages; give the partition of the model's blocks", nameof(pipeline));
        ArgumentNullException.ThrowIfNull(mesh);
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(buildRank);
        var steps = RunThreadRanks(mesh.WorldSize, ctx =>
        {
            using var groups = mesh.CreateGroups(ctx.Factory);
            var tensor = mesh.Tp > 1 ? new TensorParallelism(groups.Tp, plan, ctx.Factory) : null;
            var stage = mesh.Pp > 1 ? new PipelineParallelism(groups.Pp, pipeline!, ctx.Factory) : null;
            using var experts = expertParallel > 1 ? ExpertParallelGroups.Create(groups.Dp, expertParallel, ctx.Factory) : null;
            var (model, train) = buildRank(new MeshRank(ctx, groups, tensor, stage, experts is null ? null : new ExpertParallelism(experts.Expert)));
            if (experts is not null && model.ExpertParallelism?.Group != experts.Expert)
                throw new ArgumentException($"parallel training: ep ({expertParallel}) was asked for but rank {ctx.Rank}'s model was not built with the rank's ExpertParallelism (MeshRank.ExpertParallelism)");
            var trainer = new Trainer(model, DataParallelism.Create(model, groups.Dp, parallel, adamW, ctx.Host, expertData: experts?.ExpertData), train, null, options, schedule);
            if (resume is not null) resume(trainer);
            else weights?.Invoke(trainer);
            try
            {
                trainer.Run(ctx.Rank == 0 ? onStep : null, checkpoint, cancellation: cancellation);
            }
            catch (OperationCanceledException) when (checkpoint is not null)
            {
                // Every rank stopped at the same step (the loop agrees collectively), so the collective save lines up.
                checkpoint(trainer);
                throw;
            }
            return trainer.Step;
        });
        return steps[0];
    }
}
