using Tessera.Distributed;
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
/// <see cref="SparseMoeFeedForward"/> under tensor parallelism (every expert's hidden units split over the ranks, the router
/// and the shared gate replicated, one reduction after the combine) on CPU thread ranks in F64, against the one-device layer
/// on the same batch: the output (or each rank's rows under sequence parallelism), dx, every sharded gradient gathered from
/// the ranks, and the replicated router's and shared gate's gradients on every rank, identical bit for bit across ranks.
/// The ranks' partial products over F' / tp units reduced in rank order differ from one device's products by rounding,
/// ~1e-16 relative per operation: 1e-12. A missing or extra reduction, or a router gradient from partial dot products, moves
/// values by O(0.1).
/// </summary>
public sealed class MixtureOfExpertsTensorParallelLayerTests(ITestOutputHelper output)
{
    private const double Tolerance = 1e-12;
    private const int N = 12, C = 8, F = 8, E = 4;
    private const string Name = "blocks.0.mlp";

    private sealed record Pass(double[] Y, double[] Dx, Dictionary<string, (Parameter Parameter, double[] Grad)> Grads, double Aux,
        Dictionary<CollectiveKind, long> Collectives);

    private static SparseMoeFeedForward NewLayer(LayerFactory layers, int k, bool normalize, double coefficient, int shared) =>
        new(layers, Name, C, F, E, k, normalize, coefficient, shared) { AuxiliaryLossWeight = 0.7 };

    private void AssertTensorParallelMatchesOneDevice(int tp, bool sequenceParallel, int k, bool normalize, double coefficient, int shared, int seed)
    {
        output.WriteLine($"seed {seed}, tp {tp}{(sequenceParallel ? " + sp" : "")}");
        var rng = new Random(seed);
        var cpu = new CpuBackend(1);
        var parameters = new ParameterLayoutBuilder();
        var single = NewLayer(new LayerFactory(parameters), k, normalize, coefficient, shared);
        var arena = new ParameterArena(parameters.Build(), cpu, DType.F64);
        LayerCheck.Randomize(cpu, arena, rng);
        var globals = arena.Layout.Parameters.ToDictionary(p => p.Name, p => TestTensors.ToDoubles(cpu, p.Value));
        var x = TestTensors.Normal(rng, N * C);
        var dy = TestTensors.Normal(rng, N * C);
        var ctx1 = PassContext.Training(new ActivationStore(cpu), 0);
        var y = TestTensors.ToDoubles(cpu, single.Forward(ctx1, TestTensors.FromDoubles(cpu, x, DType.F64, N, C)));
        var dxTensor = TestTensors.FromDoubles(cpu, new double[N * C], DType.F64, N, C);
        single.Backward(ctx1, TestTensors.FromDoubles(cpu, dy, DType.F64, N, C), dxTensor);
        var dx = TestTensors.ToDoubles(cpu, dxTensor);
        var grads = arena.Layout.Parameters.ToDictionary(p => p.Name, p => TestTensors.ToDoubles(cpu, p.Grad));

        int rows = sequenceParallel ? N / tp : N;
        var ranks = ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel), ctx.Factory);
            var builder = new ParameterLayoutBuilder(tensor.Mesh, tensor.Coordinate);
            var moe = NewLayer(new LayerFactory(builder, tensor), k, normalize, coefficient, shared);
            var local = new ParameterArena(builder.Build(), ctx.Backend, DType.F64);
            foreach (var p in local.Parameters) TestTensors.Write(ctx.Backend, p.Value, p.LocalValues(globals[p.Name]));
            Assert.All(moe.Experts, expert => Assert.Equal(F / tp, expert.Gate.OutFeatures));
            int first = sequenceParallel ? ctx.Rank * rows : 0;
            var pass = PassContext.Training(new ActivationStore(ctx.Backend), 0);
            var before = Enum.GetValues<CollectiveKind>().ToDictionary(c => c, c => groups.Tp.Count(c));
            var yLocal = TestTensors.ToDoubles(ctx.Backend, moe.Forward(pass, TestTensors.FromDoubles(ctx.Backend, x.AsSpan(first * C, rows * C).ToArray(), DType.F64, rows, C)));
            var dxLocal = TestTensors.FromDoubles(ctx.Backend, new double[rows * C], DType.F64, rows, C);
            TestTensors.Poison(ctx.Backend, dxLocal);                // "=" semantics: every element written
            moe.Backward(pass, TestTensors.FromDoubles(ctx.Backend, dy.AsSpan(first * C, rows * C).ToArray(), DType.F64, rows, C), dxLocal);
            var collectives = Enum.GetValues<CollectiveKind>().ToDictionary(c => c, c => groups.Tp.Count(c) - before[c]);
            return new Pass(yLocal, TestTensors.ToDoubles(ctx.Backend, dxLocal),
                local.Parameters.ToDictionary(p => p.Name, p => (p, TestTensors.ToDoubles(ctx.Backend, p.Grad))), moe.LastAuxiliaryLoss, collectives);
        }, TimeSpan.FromSeconds(30));

        for (int r = 0; r < tp; r++)
        {
            int first = sequenceParallel ? r * rows : 0;
            string where = $"rank {r} of tp {tp}{(sequenceParallel ? " + sp" : "")} (seed {seed})";
            NumericAssert.Close(y.AsSpan(first * C, rows * C), ranks[r].Y, Tolerance, $"{where}: output");
            NumericAssert.Close(dx.AsSpan(first * C, rows * C), ranks[r].Dx, Tolerance, $"{where}: dx");
            Assert.Equal(single.LastAuxiliaryLoss, ranks[r].Aux);   // every rank routes all N rows as one device does
            var c = ranks[r].Collectives;
            // Forward: one reduction of the combined output (and the input's gather under SP); backward: the dot products'
            // all-reduce, the input gradient's reduction (and the output gradient's gather under SP). Nothing per expert.
            Assert.Equal(sequenceParallel ? 1 : 3, c[CollectiveKind.AllReduce]);
            Assert.Equal(sequenceParallel ? 2 : 0, c[CollectiveKind.ReduceScatter]);
            Assert.Equal(sequenceParallel ? 2 : 0, c[CollectiveKind.AllGather]);
        }
        foreach (var (name, expected) in grads)
        {
            var gathered = new double[expected.Length];
            foreach (var rank in ranks)
            {
                var (p, grad) = rank.Grads[name];
                if (!p.Placement.IsReplicated) { p.ScatterToGlobal<double>(grad, gathered); continue; }
                // Replicated (the router, the shared gate): the whole gradient on every rank, the same bits on each.
                Assert.DoesNotContain(".experts.", name, StringComparison.Ordinal);
                NumericAssert.Close(expected, grad, Tolerance, $"{name} on a rank (seed {seed})");
                Tessera.Tests.Training.Parallel.DataParallelTests.AssertBitIdentical(ranks[0].Grads[name].Grad, grad, $"{name}: replicas (seed {seed})");
                grad.CopyTo(gathered, 0);
            }
            NumericAssert.Close(expected, gathered, Tolerance, $"{name} gathered over tp {tp} (seed {seed})");
        }
    }

    [Theory]
    [InlineData(2, false, 2, true, 0.0, 0, 6101)]
    [InlineData(2, false, 2, false, 0.3, 0, 6102)]   // the load-balancing loss's gradient, whole on every rank
    [InlineData(4, false, 2, true, 0.3, 0, 6103)]    // F' / tp = 2 units of each expert a rank
    [InlineData(4, false, 1, false, 0.0, 0, 6104)]
    [InlineData(2, false, 2, false, 0.3, 4, 6105)]   // Qwen2-MoE's shared expert: split too, its gate replicated
    [InlineData(4, false, 2, true, 0.3, 4, 6106)]
    [InlineData(2, true, 2, false, 0.3, 4, 6107)]    // sequence parallelism: rows gathered before routing, reduce-scattered after
    [InlineData(4, true, 2, true, 0.3, 0, 6108)]
    public void TensorParallelRanksMatchTheOneDeviceLayer(int tp, bool sequenceParallel, int k, bool normalize, double coefficient, int shared, int seed) =>
        AssertTensorParallelMatchesOneDevice(tp, sequenceParallel, k, normalize, coefficient, shared, seed);

    [Fact]
    public void AnExpertWidthThatTpDoesNotDivideIsRefusedNamingIt()
    {
        var e = Assert.Throws<AggregateException>(() => ParallelTraining.RunThreadRanks(3, ctx =>
        {
            var groups = new DeviceMesh(tp: 3).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(false), ctx.Factory);
            return NewLayer(new LayerFactory(new ParameterLayoutBuilder(tensor.Mesh, tensor.Coordinate), tensor), 2, true, 0, 0);
        }, TimeSpan.FromSeconds(30)));
        Assert.Contains("tp (3) must divide the experts' width (ExpertHidden = 8)", e.Flatten().InnerExceptions[0].Message);
    }

    [Fact]
    public void APlanThatReducesEachExpertOnItsOwnIsRefused()
    {
        var plan = new ParallelPlan(
        [
            ("blocks.*.mlp", ParallelStyle.PrepareInput),
            ("blocks.*.mlp.experts.*.gate", ParallelStyle.ColumnParallel),
            ("blocks.*.mlp.experts.*.up", ParallelStyle.ColumnParallel),
            ("blocks.*.mlp.experts.*.proj", ParallelStyle.RowParallel),
        ], sequenceParallel: false);
        var e = Assert.Throws<AggregateException>(() => ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, plan, ctx.Factory);
            return NewLayer(new LayerFactory(new ParameterLayoutBuilder(tensor.Mesh, tensor.Coordinate), tensor), 2, true, 0, 0);
        }, TimeSpan.FromSeconds(30)));
        Assert.Contains("'blocks.0.mlp.experts.0.proj' RowParallelUnreduced, not RowParallel", e.Flatten().InnerExceptions[0].Message);
    }

    [Fact]
    public void ExpertParallelismWithTensorParallelismIsRefused()
    {
        var e = Assert.Throws<AggregateException>(() => ParallelTraining.RunThreadRanks(2, ctx =>
        {
            var groups = new DeviceMesh(tp: 2).CreateGroups(ctx.Factory);
            var tensor = new TensorParallelism(groups.Tp, ParallelPlan.Megatron(false), ctx.Factory);
            var layers = new LayerFactory(new ParameterLayoutBuilder(tensor.Mesh, tensor.Coordinate), tensor, expertParallelism: new ExpertParallelism(groups.Tp));
            return NewLayer(layers, 2, true, 0, 0);
        }, TimeSpan.FromSeconds(30)));
        Assert.Contains("expert parallelism (ep 2) with tensor parallelism (tp 2) is not built", e.Flatten().InnerExceptions[0].Message);
    }
}
