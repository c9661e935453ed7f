using Tessera.Distributed.Mesh;
using Tessera.Nn;
using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Nn.Parallel;

/// <summary>
/// Each tensor-parallel layer against its unsharded twin, forward and backward, on CPU thread ranks in F64: the twin runs
/// on one device with the whole weights; each rank holds its shard (<see cref="Parameter.LocalValues{T}"/> of the same
/// values) and must give the twin's output (or its columns) and the twin's gradients of its shard. Partial products
/// reduced in rank order differ from the twin's single dot products by rounding: 1e-12 relative.
/// </summary>
public sealed class ParallelLayerTests
{
    private const double Tolerance = 1e-12;
    private const int N = 6;

    private sealed record RankSetup(int Rank, ParameterLayoutBuilder Parameters, TensorParallelism Tensor, PassContext Pass, IBackend Backend);

    /// <summary>Runs <paramref name="body"/> on <paramref name="tp"/> thread ranks, each with a layout builder at its tp coordinate.</summary>
    private static T[] OnRanks<T>(int tp, bool sequenceParallel, Func<RankSetup, T> body) =>
        ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var builder = new ParameterLayoutBuilder(tensor.Mesh, tensor.Coordinate);
            return body(new RankSetup(ctx.Rank, builder, tensor, PassContext.Training(new ActivationStore(ctx.Backend), 0), ctx.Backend));
        }, TimeSpan.FromSeconds(30));

    /// <summary>Writes each parameter's part of the global values of <paramref name="globals"/> (by name).</summary>
    private static ParameterArena Materialize(ParameterLayoutBuilder builder, IBackend backend, Dictionary<string, double[]> globals)
    {
        var arena = new ParameterArena(builder.Build(), backend, DType.F64);
        foreach (var p in arena.Parameters) TestTensors.Write(backend, p.Value, p.LocalValues(globals[p.Name]));
        return arena;
    }

    private static double[] Columns(double[] matrix, int rows, int cols, IReadOnlyList<(int Start, int Length)> runs) =>
        Enumerable.Range(0, rows).SelectMany(r => runs.SelectMany(run => matrix.AsSpan(r * cols + run.Start, run.Length).ToArray())).ToArray();

    [Fact]
    public void ColumnParallelQkvGivesEachRankTheColumnsOfItsHeadsAndItsRowsOfTheGradient()
    {
        const int tp = 2, inF = 5, d = 3;
        ShardPart[] parts = [new(4, d), new(2, d), new(2, d)];       // 4 query heads, 2 key and 2 value heads
        int outF = 8 * d;
        var rng = new Random(21);
        var globals = new Dictionary<string, double[]> { ["qkv.weight"] = TestTensors.Normal(rng, outF * inF), ["qkv.bias"] = TestTensors.Normal(rng, outF) };
        var x = TestTensors.Normal(rng, N * inF);
        var dyWhole = TestTensors.Normal(rng, N * outF);
        var cpu = new CpuBackend(1);
        var twinParameters = new ParameterLayoutBuilder();
        var twin = new Linear(twinParameters, "qkv", inF, outF, bias: true);
        Materialize(twinParameters, cpu, globals);
        var twinStore = PassContext.Training(new ActivationStore(cpu), 0);
        var y = TestTensors.ToDoubles(cpu, twin.Forward(twinStore, TestTensors.FromDoubles(cpu, x, DType.F64, N, inF)));
        var dx = TestTensors.ToDoubles(cpu, twin.Backward(twinStore, TestTensors.FromDoubles(cpu, dyWhole, DType.F64, N, outF)));
        var dw = TestTensors.ToDoubles(cpu, twin.Weight.Grad);

        var ranks = OnRanks(tp, false, s =>
        {
            var layers = new LayerFactory(s.Parameters, s.Tensor);
            var column = layers.Linear("blocks.0.attn.qkv", inF, outF, true, parts);
            var arena = Materialize(s.Parameters, s.Backend, globals.ToDictionary(kv => kv.Key.Replace("qkv", "blocks.0.attn.qkv"), kv => kv.Value));
            var runs = column.Weight.Placement.LocalRanges(outF, s.Rank, tp);
            var yLocal = TestTensors.ToDoubles(s.Backend, column.Forward(s.Pass, TestTensors.FromDoubles(s.Backend, x, DType.F64, N, inF)));
            var dy = TestTensors.FromDoubles(s.Backend, Columns(dyWhole, N, outF, runs), DType.F64, N, column.OutFeatures);
            var dxPartial = TestTensors.ToDoubles(s.Backend, column.Backward(s.Pass, dy));
            return (runs, yLocal, dxPartial, Grad: TestTensors.ToDoubles(s.Backend, column.Weight.Grad), Weight: column.Weight);
        });
        var dxSum = new double[N * inF];
        foreach (var r in ranks)
        {
            NumericAssert.Close(Columns(y, N, outF, r.runs), r.yLocal, Tolerance, "output columns");
            NumericAssert.Close(r.Weight.LocalValues(dw), r.Grad, Tolerance, "weight gradient rows");
            for (int i = 0; i < dxSum.Length; i++) dxSum[i] += r.dxPartial[i];
        }
        NumericAssert.Close(dx, dxSum, Tolerance, "input gradient summed over ranks");
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void RowParallelLinearReducesToTheTwinsOutputWithBiasAndResidualOnce(int tp)
    {
        const int inF = 8, outF = 5;
        var rng = new Random(22);
        var globals = new Dictionary<string, double[]> { ["proj.weight"] = TestTensors.Normal(rng, outF * inF), ["proj.bias"] = TestTensors.Normal(rng, outF) };
        var x = TestTensors.Normal(rng, N * inF);
        var residual = TestTensors.Normal(rng, N * outF);
        var dyWhole = TestTensors.Normal(rng, N * outF);
        var cpu = new CpuBackend(1);
        var twinParameters = new ParameterLayoutBuilder();
        var twin = new Linear(twinParameters, "proj", inF, outF, bias: true);
        Materialize(twinParameters, cpu, globals);
        var pass = PassContext.Training(new ActivationStore(cpu), 0);
        var y = TestTensors.ToDoubles(cpu, twin.Forward(pass, TestTensors.FromDoubles(cpu, x, DType.F64, N, inF), TestTensors.FromDoubles(cpu, residual, DType.F64, N, outF)));
        var dx = TestTensors.ToDoubles(cpu, twin.Backward(pass, TestTensors.FromDoubles(cpu, dyWhole, DType.F64, N, outF)));
        var dw = TestTensors.ToDoubles(cpu, twin.Weight.Grad);
        var db = TestTensors.ToDoubles(cpu, twin.Bias!.Grad);

        var ranks = OnRanks(tp, false, s =>
        {
            var row = new RowParallelLinear(s.Parameters, "proj", inF, outF, bias: true, s.Tensor);
            Materialize(s.Parameters, s.Backend, globals);
            var runs = row.Weight.Placement.LocalRanges(inF, s.Rank, tp);
            var xLocal = TestTensors.FromDoubles(s.Backend, Columns(x, N, inF, runs), DType.F64, N, row.InFeatures);
            var yr = TestTensors.ToDoubles(s.Backend, row.Forward(s.Pass, xLocal, TestTensors.FromDoubles(s.Backend, residual, DType.F64, N, outF)));
            var dxLocal = TestTensors.ToDoubles(s.Backend, row.Backward(s.Pass, TestTensors.FromDoubles(s.Backend, dyWhole, DType.F64, N, outF)));
            return (runs, yr, dxLocal, W: row.Weight, Dw: TestTensors.ToDoubles(s.Backend, row.Weight.Grad), Db: TestTensors.ToDoubles(s.Backend, row.Bias!.Grad));
        });
        foreach (var r in ranks)
        {
            NumericAssert.Close(y, r.yr, Tolerance, "reduced output");
            NumericAssert.Close(Columns(dx, N, inF, r.runs), r.dxLocal, Tolerance, "input gradient columns");
            NumericAssert.Close(r.W.LocalValues(dw), r.Dw, Tolerance, "weight gradient columns");
            NumericAssert.Close(db, r.Db, Tolerance, "bias gradient (whole on every rank)");
        }
    }

    [Fact]
    public void VocabParallelEmbeddingAndLossEqualTheWholeTableAndSoftmax()
    {
        const int tp = 4, vocab = 37, padded = 40, c = 5;
        var rng = new Random(23);
        var globals = new Dictionary<string, double[]> { ["tok_emb.weight"] = TestTensors.Normal(rng, padded * c) };
        int[] ids = [0, 9, 10, 25, 36, 12];
        int[] targets = [1, 36, 10, -1, 20, 35];                      // the last real id, a shard edge, an ignored row
        var dyWhole = TestTensors.Normal(rng, N * c);
        var logitsWhole = TestTensors.Normal(rng, N * padded, scale: 2);
        var cpu = new CpuBackend(1);
        var twinParameters = new ParameterLayoutBuilder();
        var twin = new Embedding(twinParameters, "tok_emb", padded, c);
        Materialize(twinParameters, cpu, globals);
        var pass = PassContext.Training(new ActivationStore(cpu), 0);
        var idTensor = cpu.FromHost<int>(ids, new Shape(N));
        var y = TestTensors.ToDoubles(cpu, twin.Forward(pass, idTensor));
        twin.Backward(pass, TestTensors.FromDoubles(cpu, dyWhole, DType.F64, N, c));
        var dTable = TestTensors.ToDoubles(cpu, twin.Weight.Grad);
        var whole = TestTensors.FromDoubles(cpu, logitsWhole, DType.F64, N, padded);
        var expectedLoss = cpu.Zeros(new Shape(N), DType.F64);
        var real = whole.Slice(1, 0, vocab);
        cpu.CrossEntropy(real, cpu.FromHost<int>(targets, new Shape(N)), expectedLoss, real, 0.5);   // in place: whole holds dlogits (padding untouched)
        var dLogits = TestTensors.ToDoubles(cpu, whole);
        for (int r = 0; r < N; r++) for (int j = vocab; j < padded; j++) dLogits[r * padded + j] = 0;

        var ranks = OnRanks(tp, false, s =>
        {
            var table = new VocabParallelEmbedding(s.Parameters, "tok_emb", padded, c, s.Tensor);
            Materialize(s.Parameters, s.Backend, globals);
            var ids_ = s.Backend.FromHost<int>(ids, new Shape(N));
            var yr = TestTensors.ToDoubles(s.Backend, table.Forward(s.Pass, ids_));
            table.Backward(s.Pass, TestTensors.FromDoubles(s.Backend, dyWhole, DType.F64, N, c));
            var loss = new VocabParallelCrossEntropy("head.loss", s.Tensor, vocab, padded / tp);
            var runs = new[] { (s.Rank * (padded / tp), padded / tp) };
            var logits = TestTensors.FromDoubles(s.Backend, Columns(logitsWhole, N, padded, runs), DType.F64, N, padded / tp);
            var losses = s.Backend.Zeros(new Shape(N), DType.F64);
            loss.Forward(s.Pass, logits, s.Backend.FromHost<int>(targets, new Shape(N)), losses, 0.5);
            return (yr, Grad: TestTensors.ToDoubles(s.Backend, table.Weight.Grad), table.Weight, Losses: TestTensors.ToDoubles(s.Backend, losses),
                DLogits: TestTensors.ToDoubles(s.Backend, logits), runs);
        });
        foreach (var r in ranks)
        {
            Assert.Equal(y, r.yr);                                                      // exact rows plus zeros
            Assert.Equal(r.Weight.LocalValues(dTable), r.Grad);
            NumericAssert.Close(TestTensors.ToDoubles(cpu, expectedLoss), r.Losses, Tolerance, "loss");
            NumericAssert.Close(Columns(dLogits, N, padded, r.runs), r.DLogits, Tolerance, "dlogits of the rank's columns");
        }
    }
}
