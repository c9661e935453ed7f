using Tessera.Distributed;
using Tessera.Nn;
using Tessera.Nn.Parallel;
using Tessera.Tensors;
using Tessera.Tests.Support;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Nn.Parallel;

/// <summary>
/// Megatron's four conjugate communication ops on CPU thread ranks (F64): each forward and backward against what it must
/// be, computed on the host from every rank's input in rank order (the in-process group sums in rank order, so the
/// results are bit-identical), and the collectives each direction issues.
/// </summary>
public sealed class ConjugateRegionTests
{
    private const int Tp = 4, Rows = 2, C = 3;   // each rank's rows; the whole has Tp * Rows

    /// <summary>Deterministic per-rank values (seed = 100 * rank + salt).</summary>
    private static double[] Values(int rank, int salt, int count) => TestTensors.Normal(new Random(100 * rank + salt), count);

    private static (T[] Results, long[] Forward, long[] Backward) Run<T>(Func<ProcessGroup, ITensorParallelRegion> region,
        Func<ITensorParallelRegion, PassContext, int, (T Result, Action Backward)> body)
    {
        var forward = new long[Tp];
        var backward = new long[Tp];
        var results = ParallelTraining.RunThreadRanks(Tp, ctx =>
        {
            var r = region(ctx.Group);
            var pass = PassContext.Training(new ActivationStore(ctx.Backend), 0);
            long start = ctx.Group.CollectiveCount;
            var (result, back) = body(r, pass, ctx.Rank);
            forward[ctx.Rank] = ctx.Group.CollectiveCount - start;
            start = ctx.Group.CollectiveCount;
            back();
            backward[ctx.Rank] = ctx.Group.CollectiveCount - start;
            return result;
        }, TimeSpan.FromSeconds(30));
        return (results, forward, backward);
    }

    private static double[] SumOver(int count, int salt) =>
        Enumerable.Range(0, Tp).Select(r => Values(r, salt, count)).Aggregate((a, b) => a.Zip(b, (x, y) => x + y).ToArray());

    [Fact]
    public void CopyToIsIdentityForwardAndAllReduceBackward()
    {
        var (results, forward, backward) = Run<(bool Same, Tensor Dx)>(g => new CopyToTensorParallelRegion(g), (region, ctx, rank) =>
        {
            var x = TestTensors.FromDoubles(ctx.Store.Backend, Values(rank, 1, Rows * C), DType.F64, Rows, C);
            var y = region.Forward(ctx, x);
            bool same = ReferenceEquals(x, y);
            var dx = TestTensors.FromDoubles(x.Backend, new double[Rows * C], DType.F64, Rows, C);
            var dy = region.GradientBuffer(ctx, dx);
            TestTensors.Write(x.Backend, dy, Values(rank, 2, Rows * C));
            return ((same, dx), () => region.Backward(ctx, dy, dx));
        });
        var expected = SumOver(Rows * C, 2);
        foreach (var (same, dx) in results)
        {
            Assert.True(same, "forward returns its input");
            Assert.Equal(expected, TestTensors.ToDoubles(dx.Backend, dx));
        }
        Assert.All(forward, n => Assert.Equal(0, n));
        Assert.All(backward, n => Assert.Equal(1, n));
    }

    [Fact]
    public void ReduceFromIsAllReduceForwardAndIdentityBackward()
    {
        var (results, forward, backward) = Run<(Tensor Y, Tensor Dx, int Rank)>(g => new ReduceFromTensorParallelRegion(g), (region, ctx, rank) =>
        {
            var x = TestTensors.FromDoubles(ctx.Store.Backend, Values(rank, 3, Rows * C), DType.F64, Rows, C);
            var y = region.Forward(ctx, x);
            var dx = TestTensors.FromDoubles(x.Backend, new double[Rows * C], DType.F64, Rows, C);
            var dy = TestTensors.FromDoubles(x.Backend, Values(rank, 4, Rows * C), DType.F64, Rows, C);
            return ((y, dx, rank), () => region.Backward(ctx, dy, dx));
        });
        var expected = SumOver(Rows * C, 3);
        foreach (var (y, dx, rank) in results)
        {
            Assert.Equal(expected, TestTensors.ToDoubles(y.Backend, y));
            Assert.Equal(Values(rank, 4, Rows * C), TestTensors.ToDoubles(dx.Backend, dx));
        }
        Assert.All(forward, n => Assert.Equal(1, n));
        Assert.All(backward, n => Assert.Equal(0, n));
    }

    [Fact]
    public void GatherFromIsAllGatherForwardAndReduceScatterBackward()
    {
        var (results, forward, backward) = Run<(double[] Gathered, Tensor Dx, int Rank)>(g => new GatherFromSequenceParallelRegion("test", g), (region, ctx, rank) =>
        {
            var x = TestTensors.FromDoubles(ctx.Store.Backend, Values(rank, 5, Rows * C), DType.F64, Rows, C);
            var y = region.Forward(ctx, x);                            // (Tp * Rows, C)
            var gathered = TestTensors.ToDoubles(x.Backend, y);
            var dx = TestTensors.FromDoubles(x.Backend, new double[Rows * C], DType.F64, Rows, C);
            var dy = region.GradientBuffer(ctx, dx);                   // (Tp * Rows, C)
            TestTensors.Write(x.Backend, dy, Values(rank, 6, Tp * Rows * C));
            return ((gathered, dx, rank), () => region.Backward(ctx, dy, dx));
        });
        var whole = Enumerable.Range(0, Tp).SelectMany(r => Values(r, 5, Rows * C)).ToArray();
        var summed = SumOver(Tp * Rows * C, 6);
        foreach (var (gathered, dx, rank) in results)
        {
            Assert.Equal(whole, gathered);
            Assert.Equal(summed.AsSpan(rank * Rows * C, Rows * C).ToArray(), TestTensors.ToDoubles(dx.Backend, dx));
        }
        Assert.All(forward, n => Assert.Equal(1, n));
        Assert.All(backward, n => Assert.Equal(1, n));
    }

    [Fact]
    public void ReduceScatterToIsReduceScatterForwardAndAllGatherBackward()
    {
        var (results, forward, backward) = Run<(Tensor Y, Tensor Dx, int Rank)>(g => new ReduceScatterToSequenceParallelRegion("test", g), (region, ctx, rank) =>
        {
            var backend = ctx.Store.Backend;
            var x = TestTensors.FromDoubles(backend, Values(rank, 7, Tp * Rows * C), DType.F64, Tp * Rows, C);
            var y = region.Forward(ctx, x);                            // (Rows, C)
            var dx = TestTensors.FromDoubles(backend, new double[Tp * Rows * C], DType.F64, Tp * Rows, C);
            var dy = TestTensors.FromDoubles(backend, Values(rank, 8, Rows * C), DType.F64, Rows, C);
            return ((y, dx, rank), () => region.Backward(ctx, dy, dx));
        });
        var summed = SumOver(Tp * Rows * C, 7);
        var whole = Enumerable.Range(0, Tp).SelectMany(r => Values(r, 8, Rows * C)).ToArray();
        foreach (var (y, dx, rank) in results)
        {
            Assert.Equal(summed.AsSpan(rank * Rows * C, Rows * C).ToArray(), TestTensors.ToDoubles(y.Backend, y));
            Assert.Equal(whole, TestTensors.ToDoubles(dx.Backend, dx));
        }
        Assert.All(forward, n => Assert.Equal(1, n));
        Assert.All(backward, n => Assert.Equal(1, n));
    }
}
