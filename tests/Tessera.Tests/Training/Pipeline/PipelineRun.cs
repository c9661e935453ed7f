using Tessera.Distributed.Mesh;
using Tessera.Models;
using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Training.Parallel;
using Tessera.Training;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;

namespace Tessera.Tests.Training.Pipeline;

/// <summary>A pipeline layout to train: pp x tp x dp on one mesh, the schedule, its virtual stages per rank and micro-batches per step.</summary>
internal sealed record PipelineLayout(int Pp, PipelineScheduleKind Schedule, int MicroBatches, int Chunks = 1, int Tp = 1, int Dp = 1,
    bool SequenceParallel = false, ZeroStage Zero = ZeroStage.None, bool Recompute = false)
{
    public int World => Pp * Tp * Dp;

    public override string ToString() =>
        $"pp {Pp}{(Tp > 1 ? $" x tp {Tp}" : "")}{(Dp > 1 ? $" x dp {Dp}" : "")} {Schedule}{(Chunks > 1 ? $" v {Chunks}" : "")}, m {MicroBatches}" +
        $"{(SequenceParallel ? ", sp" : "")}{(Zero != ZeroStage.None ? $", ZeRO-{(int)Zero}" : "")}{(Recompute ? ", recompute" : "")}";
}

/// <summary>What every rank of a pipeline run recorded.</summary>
internal sealed record PipelineRankRecord(MeshCoordinate Coordinate, double[] Losses, List<(Parameter Parameter, double[] Values)> Parameters,
    Parameter? TiedCopy, PipelineRunStatistics? LastRun, long ActivationBytes);

/// <summary>
/// Trains the debug presets, deepened to 8 blocks so that 4 stages of 2 chunks each get a block, on CPU thread ranks in F64
/// through a pipeline (and tensor and data parallelism), and the same global batch on one device: the same data
/// (<see cref="ParallelRun.WriteShard"/>), initialization, optimizer and schedule of learning rates as the other parallel tests.
/// </summary>
internal static class PipelineRun
{
    public const int Layers = 8;

    /// <summary>The preset with <see cref="Layers"/> blocks.</summary>
    public static TransformerConfig Config(string preset) => ModelPresets.Get(preset) with { Layers = Layers };

    /// <summary>One device, micro-batches of B, <paramref name="accumulation"/> of them per step: the reference.</summary>
    public static (double[] Losses, Dictionary<string, double[]> Parameters) OneDevice(TransformerConfig config, string shard, int accumulation, int steps, AdamWOptions adamW)
    {
        var model = new Transformer(config, new CpuBackend(2), DType.F64);
        model.InitializeWeights(ParallelRun.Seed);
        var trainer = new Trainer(model, SingleDevice.For(model, adamW), new TokenDataLoader([shard], ParallelRun.B, ParallelRun.T), null,
            ParallelRun.Options(steps, accumulation));
        var losses = Enumerable.Range(0, steps).Select(_ => trainer.TrainStep()).ToArray();
        return (losses, model.Layout.Parameters.ToDictionary(p => p.Name, p => model.Backend.ToArray<double>(p.Value)));
    }

    /// <summary>Builds rank <paramref name="ctx"/>'s stage of <paramref name="config"/> under <paramref name="layout"/>, initialized like one device.</summary>
    public static (Transformer Model, MeshGroups Groups) BuildRank(RankContext ctx, TransformerConfig config, PipelineLayout layout, DType dtype = DType.F64)
    {
        var mesh = new DeviceMesh(dp: layout.Dp, pp: layout.Pp, tp: layout.Tp);
        var groups = mesh.CreateGroups(ctx.Factory);
        var tensor = layout.Tp > 1 ? new TensorParallelism(groups.Tp, ParallelPlan.Megatron(layout.SequenceParallel), ctx.Factory) : null;
        var pipeline = new PipelineParallelism(groups.Pp, PipelinePartition.Even(config.Layers, layout.Pp, layout.Chunks), ctx.Factory);
        var model = new Transformer(config, ctx.Backend, dtype, tensorParallelism: tensor, pipeline: pipeline) { RecomputeActivations = layout.Recompute };
        model.InitializeWeights(ParallelRun.Seed);
        return (model, groups);
    }

    /// <summary>A trainer of a rank built by <see cref="BuildRank"/>: one-device strategy without dp, else the ZeRO stage's.</summary>
    public static Trainer Trainer(RankContext ctx, Transformer model, MeshGroups groups, string shard, PipelineLayout layout, int steps, AdamWOptions adamW)
    {
        IDataParallelism strategy = layout.Dp > 1
            ? DataParallelism.Create(model, groups.Dp, new DataParallelOptions { Stage = layout.Zero, BucketElements = 1500 }, adamW, ctx.Host)
            : SingleDevice.For(model, adamW);
        var loader = new TokenDataLoader([shard], ParallelRun.B, ParallelRun.T, groups.Coordinate.Dp, layout.Dp);
        return new Trainer(model, strategy, loader, null, ParallelRun.Options(steps, layout.MicroBatches), layout.Schedule);
    }

    /// <summary>Trains <paramref name="steps"/> steps of <paramref name="layout"/> on thread ranks; every rank's record.</summary>
    public static PipelineRankRecord[] Train(TransformerConfig config, string shard, PipelineLayout layout, int steps, AdamWOptions adamW) =>
        ParallelTraining.RunThreadRanks(layout.World, ctx =>
        {
            var (model, groups) = BuildRank(ctx, config, layout);
            var trainer = Trainer(ctx, model, groups, shard, layout, steps, adamW);
            var losses = Enumerable.Range(0, steps).Select(_ => trainer.TrainStep()).ToArray();
            long activationBytes = trainer.Pipeline!.ActivationBytes;
            return new PipelineRankRecord(groups.Coordinate, losses, model.Layout.Parameters.Select(p => (p, ctx.Backend.ToArray<double>(p.Value))).ToList(),
                model.TiedEmbeddingCopy, trainer.Pipeline!.LastRun, activationBytes);
        }, TimeSpan.FromSeconds(120));

    /// <summary>
    /// Every parameter of the whole model from the ranks' local tensors (dp rank 0's; tensor-parallel shards put back in their
    /// places), each held by exactly one pipeline stage; a tied table's copy on the last stage must equal the first stage's bit for bit.
    /// </summary>
    public static Dictionary<string, double[]> Gather(PipelineRankRecord[] ranks)
    {
        var whole = new Dictionary<string, double[]>(StringComparer.Ordinal);
        var owner = new Dictionary<string, int>(StringComparer.Ordinal);
        var copies = new List<(string Name, int Tp, double[] Values)>();
        foreach (var r in ranks.Where(r => r.Coordinate.Dp == 0))
        {
            foreach (var (p, values) in r.Parameters)
            {
                if (ReferenceEquals(p, r.TiedCopy))
                {
                    copies.Add((p.Name, r.Coordinate.Tp, values));
                    continue;
                }
                if (!whole.TryGetValue(p.Name, out var global))
                {
                    whole[p.Name] = global = new double[p.GlobalShape.NumElements];
                    owner[p.Name] = r.Coordinate.Pp;
                }
                else if (owner[p.Name] != r.Coordinate.Pp)
                    throw new InvalidOperationException($"parameter {p.Name} is held by pipeline stages {owner[p.Name]} and {r.Coordinate.Pp}");
                p.ScatterToGlobal<double>(values, global);
            }
        }
        foreach (var (name, tp, values) in copies)
        {
            var first = ranks.Single(r => r.Coordinate is { Dp: 0, Pp: 0 } && r.Coordinate.Tp == tp).Parameters.Single(x => x.Parameter.Name == name).Values;
            DataParallelTests.AssertBitIdentical(first, values, $"the last stage's copy of {name} (tp rank {tp}) against the first stage's table");
        }
        return whole;
    }
}
