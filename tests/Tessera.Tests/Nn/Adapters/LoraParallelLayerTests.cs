using Tessera.Distributed.Mesh;
using Tessera.Nn;
using Tessera.Nn.Adapters;
using Tessera.Nn.Layers;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Tests.Support;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Nn.Adapters;

/// <summary>
/// A LoRA layer under tensor parallelism against its unsharded twin (one device, the whole base and adapters), forward and
/// backward, on CPU thread ranks in F64 with dropout on (seed 5; the twin draws the same masks): each rank holds its share as
/// the <see cref="LayerFactory"/> cuts it. The factor each rank has in part is shown partial here (one rank's alone is off by
/// O(1)) and its sum over the ranks equal to the twin's, which is what the trainer's all-reduce of
/// <see cref="LayerFactory.AdapterPartialGradients"/> does. Partial products summed in rank order differ from the twin's by
/// rounding: 1e-12 relative.
/// </summary>
public sealed class LoraParallelLayerTests
{
    private const double Tolerance = 1e-12;
    private const int N = 6, R = 3;

    private static LoraOptions Options(params LoraTarget[] targets) => new() { Rank = R, Alpha = 6, Dropout = 0.25, Seed = 5, Targets = targets };

    /// <summary>Builds layer <paramref name="name"/> through a factory (tp when <paramref name="tensor"/> is given) and writes every rank's share of <paramref name="globals"/>.</summary>
    private static (Linear Layer, LoraAdapters Adapters, IReadOnlyList<PartialGradient> Partials) Build(IBackend backend, TensorParallelism? tensor, LoraOptions lora,
        string name, int inF, int outF, bool bias, ShardPart[] parts, Dictionary<string, double[]> globals)
    {
        var builder = tensor is null ? new ParameterLayoutBuilder() : new ParameterLayoutBuilder(tensor.Mesh, tensor.Coordinate);
        builder.BeginUnit("blocks.0");
        var factory = new LayerFactory(builder, tensor, lora);
        var layer = factory.Linear(name, inF, outF, bias, parts);
        var arena = new ParameterArena(builder.Build(), backend, DType.F64);
        foreach (var p in arena.Parameters) TestTensors.Write(backend, p.Value, p.LocalValues(globals[p.Name]));
        var adapters = factory.BuildAdapters(backend, DType.F64);
        foreach (var p in adapters.Layout.Parameters) adapters.Write(p, p.LocalValues(globals[p.Name]));
        return (layer, adapters, factory.AdapterPartialGradients);
    }

    private static Dictionary<string, double[]> Globals(Random rng, string name, int inF, int outF, bool bias, params (string Prefix, int Rows)[] adapters)
    {
        var g = new Dictionary<string, double[]> { [name + ".weight"] = TestTensors.Normal(rng, outF * inF) };
        if (bias) g[name + ".bias"] = TestTensors.Normal(rng, outF);
        foreach (var (prefix, rows) in adapters)
        {
            g[prefix + ".lora_A"] = TestTensors.Normal(rng, R * inF);
            g[prefix + ".lora_B"] = TestTensors.Normal(rng, rows * R);
        }
        return g;
    }

    private static T[] OnRanks<T>(int tp, Func<TensorParallelism, IBackend, T> body) =>
        ParallelTraining.RunThreadRanks(tp, ctx =>
        {
            using var groups = new DeviceMesh(tp: tp).CreateGroups(ctx.Factory);
            return body(new TensorParallelism(groups.Tp, ParallelPlan.Megatron(sequenceParallel: false), ctx.Factory), ctx.Backend);
        }, TimeSpan.FromSeconds(30));

    private static double[] Columns(double[] matrix, int rows, int cols, IReadOnlyList<(int Start, int Length)> runs) =>
        Enumerable.Range(0, rows).SelectMany(r => runs.SelectMany(run => matrix.AsSpan(r * cols + run.Start, run.Length).ToArray())).ToArray();

    private static double[] Sum(IEnumerable<double[]> parts) => parts.Aggregate((a, b) => a.Zip(b, (x, y) => x + y).ToArray());

    [Fact]
    public void ColumnParallelAdaptersGiveTheTwinsRowsAndASumOverRanksOfAsGradient()
    {
        const int tp = 2, inF = 5, d = 3, outF = 8 * d;
        ShardPart[] parts = [new(4, d), new(2, d), new(2, d)];       // 4 query heads, 2 key and 2 value heads
        const string name = "blocks.0.attn.qkv";
        var lora = Options(new LoraTarget("blocks.*.attn.qkv", 0, "q"), new LoraTarget("blocks.*.attn.qkv", 2, "v"));
        var rng = new Random(23);
        var globals = Globals(rng, name, inF, outF, true, (name + ".q", 4 * d), (name + ".v", 2 * d));
        var x = TestTensors.Normal(rng, N * inF);
        var dyWhole = TestTensors.Normal(rng, N * outF);

        var cpu = new CpuBackend(1);
        var (twin, twinAdapters, _) = Build(cpu, null, lora, name, inF, outF, true, parts, globals);
        var pass = PassContext.Training(new ActivationStore(cpu), 0);
        var y = TestTensors.ToDoubles(cpu, twin.Forward(pass, TestTensors.FromDoubles(cpu, x, DType.F64, N, inF)));
        var dx = TestTensors.ToDoubles(cpu, twin.Backward(pass, TestTensors.FromDoubles(cpu, dyWhole, DType.F64, N, outF)));
        var twinGrads = twinAdapters.Layout.Parameters.ToDictionary(p => p.Name, p => TestTensors.ToDoubles(cpu, p.Grad));

        var ranks = OnRanks(tp, (tensor, backend) =>
        {
            var (layer, adapters, partials) = Build(backend, tensor, lora, name, inF, outF, true, parts, globals);
            var rankPass = PassContext.Training(new ActivationStore(backend), 0);
            var runs = layer.Weight.Placement.LocalRanges(outF, tensor.Rank, tp);
            var yLocal = TestTensors.ToDoubles(backend, layer.Forward(rankPass, TestTensors.FromDoubles(backend, x, DType.F64, N, inF)));
            var dxPartial = TestTensors.ToDoubles(backend, layer.Backward(rankPass, TestTensors.FromDoubles(backend, Columns(dyWhole, N, outF, runs), DType.F64, N, layer.OutFeatures)));
            var grads = adapters.Layout.Parameters.ToDictionary(p => p.Name, p => (Parameter: p, Grad: TestTensors.ToDoubles(backend, p.Grad)));
            return (runs, yLocal, dxPartial, grads, Partials: partials.Select(g => g.Parameter.Name).ToArray());
        });

        foreach (var r in ranks)
        {
            NumericAssert.Close(Columns(y, N, outF, r.runs), r.yLocal, Tolerance, "output columns (the adapters' rows of this rank)");
            Assert.Equal([name + ".q.lora_A", name + ".v.lora_A"], r.Partials);   // A partial over tp; B split by rows
            foreach (var b in new[] { name + ".q.lora_B", name + ".v.lora_B" })
                NumericAssert.Close(r.grads[b].Parameter.LocalValues(twinGrads[b]), r.grads[b].Grad, Tolerance, $"{b}: this rank's rows of the twin's gradient");
        }
        NumericAssert.Close(dx, Sum(ranks.Select(r => r.dxPartial)), Tolerance, "input gradient summed over ranks");
        foreach (var a in new[] { name + ".q.lora_A", name + ".v.lora_A" })
        {
            NumericAssert.Close(twinGrads[a], Sum(ranks.Select(r => r.grads[a].Grad)), Tolerance, $"{a}: gradient summed over ranks");
            Assert.All(ranks, r => Assert.True(NumericAssert.MaxRelativeError(twinGrads[a], r.grads[a].Grad) > 1e-2, $"{a}: one rank's gradient is already whole; the sum would count it twice"));
        }
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void RowParallelAdaptersAddTheirTermBeforeTheReductionAndBsGradientIsASumOverRanks(int tp)
    {
        const int inF = 8, outF = 5;
        const string name = "blocks.0.attn.proj";
        var lora = Options(new LoraTarget("blocks.*.attn.proj", null, "o"));
        var rng = new Random(24);
        var globals = Globals(rng, name, inF, outF, true, (name, outF));
        var x = TestTensors.Normal(rng, N * inF);
        var residual = TestTensors.Normal(rng, N * outF);
        var dyWhole = TestTensors.Normal(rng, N * outF);

        var cpu = new CpuBackend(1);
        var (twin, twinAdapters, _) = Build(cpu, null, lora, name, inF, outF, true, [], globals);
        var pass = PassContext.Training(new ActivationStore(cpu), 0);
        var y = TestTensors.ToDoubles(cpu, twin.Forward(pass, TestTensors.FromDoubles(cpu, x, DType.F64, N, inF), TestTensors.FromDoubles(cpu, residual, DType.F64, N, outF)));
        var dx = TestTensors.ToDoubles(cpu, twin.Backward(pass, TestTensors.FromDoubles(cpu, dyWhole, DType.F64, N, outF)));
        var twinGrads = twinAdapters.Layout.Parameters.ToDictionary(p => p.Name, p => TestTensors.ToDoubles(cpu, p.Grad));

        var ranks = OnRanks(tp, (tensor, backend) =>
        {
            var (layer, adapters, partials) = Build(backend, tensor, lora, name, inF, outF, true, [], globals);
            Assert.IsType<LoraLinear>(layer);
            var rankPass = PassContext.Training(new ActivationStore(backend), 0);
            var runs = layer.Weight.Placement.LocalRanges(inF, tensor.Rank, tp);
            var xLocal = TestTensors.FromDoubles(backend, Columns(x, N, inF, runs), DType.F64, N, layer.InFeatures);
            long before = tensor.Group.CollectiveCount;
            var yr = TestTensors.ToDoubles(backend, layer.Forward(rankPass, xLocal, TestTensors.FromDoubles(backend, residual, DType.F64, N, outF)));
            long forwardCollectives = tensor.Group.CollectiveCount - before;
            var dxLocal = TestTensors.ToDoubles(backend, layer.Backward(rankPass, TestTensors.FromDoubles(backend, dyWhole, DType.F64, N, outF)));
            var grads = adapters.Layout.Parameters.ToDictionary(p => p.Name, p => (Parameter: p, Grad: TestTensors.ToDoubles(backend, p.Grad)));
            return (runs, yr, dxLocal, grads, forwardCollectives, Partials: partials.Select(g => g.Parameter.Name).ToArray());
        });

        foreach (var r in ranks)
        {
            Assert.Equal(1, r.forwardCollectives);                                   // the layer's own all-reduce only
            NumericAssert.Close(y, r.yr, Tolerance, "reduced output with the low-rank term, bias and residual once");
            NumericAssert.Close(Columns(dx, N, inF, r.runs), r.dxLocal, Tolerance, "input gradient columns (with the masked low-rank term)");
            Assert.Equal([name + ".lora_B"], r.Partials);                            // B partial over tp; A split by columns
            var a = r.grads[name + ".lora_A"];
            NumericAssert.Close(a.Parameter.LocalValues(twinGrads[name + ".lora_A"]), a.Grad, Tolerance, "lora_A: this rank's columns of the twin's gradient");
            Assert.True(NumericAssert.MaxRelativeError(twinGrads[name + ".lora_B"], r.grads[name + ".lora_B"].Grad) > 1e-2, "one rank's dB is already whole; the sum would count it twice");
        }
        NumericAssert.Close(twinGrads[name + ".lora_B"], Sum(ranks.Select(r => r.grads[name + ".lora_B"].Grad)), Tolerance, "lora_B: gradient summed over ranks");
    }
}
