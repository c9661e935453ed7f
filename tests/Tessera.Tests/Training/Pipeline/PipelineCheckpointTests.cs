using Tessera.Models;
using Tessera.Nn;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Training.Parallel;
using Tessera.Training;
using Tessera.Training.Checkpoints;
using Tessera.Training.Data;
using Tessera.Training.Optim;
using Tessera.Training.Parallel;
using Tessera.Training.Pipeline;
using Xunit;

namespace Tessera.Tests.Training.Pipeline;

/// <summary>
/// Checkpoints reshard across the pipeline axis: a checkpoint saved by a pp 2 x tp 2 run (GPT-2 debug at 8 blocks, tied
/// embeddings, F64, 1F1B) loads exactly at one device and at pp 4 (interleaved, 2 chunks each): every parameter and both AdamW
/// moments equal the saving run's bit for bit (they are copied, never computed; the last stage's copy of the tied table gets
/// the first stage's), and training on from the checkpoint gives the losses the saving run itself goes on to take (bit for bit
/// at the same layout; within 1e-10 at the others, which sum the same numbers in other orders).
/// </summary>
public sealed class PipelineCheckpointTests : IDisposable
{
    private const int Before = 3, After = 3;
    private readonly TemporaryRunFolder _run = new("tessera-pp-checkpoint-");
    private readonly TransformerConfig _config = PipelineRun.Config("gpt2-debug");

    public void Dispose() => _run.Dispose();

    /// <summary>A rank's parameters with their values and moments (one-device strategy: moments laid out like the arena).</summary>
    private sealed record RankState(int TensorRank, Parameter? TiedCopy, List<(Parameter Parameter, double[] Value, double[] M, double[] V)> Parameters);

    private static RankState Capture(Trainer trainer)
    {
        var model = trainer.Model;
        var optimizer = ((SingleDevice)trainer.Parallelism).Optimizer;
        var backend = model.Backend;
        return new RankState(model.TensorParallelism?.Rank ?? 0, model.TiedEmbeddingCopy, model.Layout.Parameters.Select(p =>
            (p, backend.ToArray<double>(p.Value), backend.ToArray<double>(optimizer.M.Narrow(p.Offset, p.Shape)), backend.ToArray<double>(optimizer.V.Narrow(p.Offset, p.Shape)))).ToList());
    }

    /// <summary>Every parameter of the whole model with its moments, from the ranks' local tensors; a tied copy must equal the table.</summary>
    private static Dictionary<string, (double[] Value, double[] M, double[] V)> Whole(IEnumerable<RankState> ranks)
    {
        var whole = new Dictionary<string, (double[] Value, double[] M, double[] V)>(StringComparer.Ordinal);
        var copies = new List<(string Name, int Tp, double[] Value, double[] M, double[] V)>();
        foreach (var r in ranks)
            foreach (var (p, value, m, v) in r.Parameters)
            {
                if (ReferenceEquals(p, r.TiedCopy))
                {
                    copies.Add((p.Name, r.TensorRank, value, m, v));
                    continue;
                }
                if (!whole.TryGetValue(p.Name, out var w))
                    whole[p.Name] = w = (new double[p.GlobalShape.NumElements], new double[p.GlobalShape.NumElements], new double[p.GlobalShape.NumElements]);
                p.ScatterToGlobal<double>(value, w.Value);
                p.ScatterToGlobal<double>(m, w.M);
                p.ScatterToGlobal<double>(v, w.V);
            }
        foreach (var (name, tp, value, m, v) in copies)
        {
            var table = ranks.First(r => r.TensorRank == tp && r.TiedCopy is null && r.Parameters.Any(x => x.Parameter.Name == name)).Parameters.Single(x => x.Parameter.Name == name);
            DataParallelTests.AssertBitIdentical(table.Value, value, $"tied copy of {name}");
            DataParallelTests.AssertBitIdentical(table.M, m, $"m of the tied copy of {name}");
            DataParallelTests.AssertBitIdentical(table.V, v, $"v of the tied copy of {name}");
        }
        return whole;
    }

    /// <summary>Trains <paramref name="steps"/> steps of <paramref name="layout"/>: each rank's state after <paramref name="before"/> (a restore) and after the steps, and the losses.</summary>
    private (RankState[] Start, RankState[] End, double[] Losses) Run(PipelineLayout layout, int steps, Action<Trainer>? before, Action<Trainer>? after)
    {
        var ranks = ParallelTraining.RunThreadRanks(layout.World, ctx =>
        {
            var (model, groups) = PipelineRun.BuildRank(ctx, _config, layout);
            var trainer = PipelineRun.Trainer(ctx, model, groups, _run.Shard, layout, Before + After, new AdamWOptions());
            before?.Invoke(trainer);
            var start = Capture(trainer);
            var losses = Enumerable.Range(0, steps).Select(_ => trainer.TrainStep()).ToArray();
            after?.Invoke(trainer);
            return (Start: start, End: Capture(trainer), Losses: losses);
        }, TimeSpan.FromSeconds(60));
        return (ranks.Select(r => r.Start).ToArray(), ranks.Select(r => r.End).ToArray(), ranks[0].Losses);
    }

    [Fact]
    public void ACheckpointSavedAtPp2Tp2LoadsExactlyAtOneDeviceAndAtPp4AndTrainsOn()
    {
        var store = _run.Checkpoints;
        string? directory = null;
        var saving = new PipelineLayout(2, PipelineScheduleKind.OneForwardOneBackward, 4, Tp: 2);
        var (_, savedStates, _) = Run(saving, Before, null, t => directory = ShardedCheckpoint.Save(store, t, "byte"));
        var saved = Whole(savedStates);
        // The saving run goes on: the losses any restore must reproduce.
        var (_, _, continued) = Run(saving, After, t => ShardedCheckpoint.Restore(directory!, t), null);
        var (_, _, uninterrupted) = Run(saving, Before + After, null, null);
        DataParallelTests.AssertBitIdentical(uninterrupted[Before..], continued, "pp 2 x tp 2 resumed against uninterrupted");

        // One device.
        var model = new Transformer(_config, new CpuBackend(2), DType.F64);
        model.InitializeWeights(99);   // the checkpoint must overwrite these
        var one = new Trainer(model, SingleDevice.For(model, new AdamWOptions()), new TokenDataLoader([_run.Shard], ParallelRun.B, ParallelRun.T), null,
            ParallelRun.Options(Before + After, accumulation: 4));
        ShardedCheckpoint.Restore(directory!, one);
        Assert.Equal(Before, one.Step);
        var loaded = Whole([Capture(one)]);
        Assert.Equal(saved.Keys.Order(), loaded.Keys.Order());
        foreach (var (name, (value, m, v)) in saved)
        {
            DataParallelTests.AssertBitIdentical(value, loaded[name].Value, $"one device: {name}");
            DataParallelTests.AssertBitIdentical(m, loaded[name].M, $"one device: m of {name}");
            DataParallelTests.AssertBitIdentical(v, loaded[name].V, $"one device: v of {name}");
        }
        DataParallelTests.AssertClose(continued, Enumerable.Range(0, After).Select(_ => one.TrainStep()).ToArray(), "one device resumed");

        // pp 4, interleaved with 2 chunks per rank.
        var wide = new PipelineLayout(4, PipelineScheduleKind.Interleaved, 4, Chunks: 2);
        var (wideStates, _, wideLosses) = Run(wide, After, t => ShardedCheckpoint.Restore(directory!, t), null);
        var reloaded = Whole(wideStates);
        foreach (var (name, (value, m, v)) in saved)
        {
            DataParallelTests.AssertBitIdentical(value, reloaded[name].Value, $"pp 4: {name}");
            DataParallelTests.AssertBitIdentical(m, reloaded[name].M, $"pp 4: m of {name}");
            DataParallelTests.AssertBitIdentical(v, reloaded[name].V, $"pp 4: v of {name}");
        }
        DataParallelTests.AssertClose(continued, wideLosses, "pp 4 resumed");
    }
}
