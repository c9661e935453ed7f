using System.Diagnostics;
using Tessera.Distributed;
using Tessera.Distributed.InProcess;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Distributed;

public class InProcessProcessGroupTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private readonly CpuBackend _cpu = new(1);

    // 1003 elements: not a multiple of any SIMD width, so the vector tail is exercised too.
    private const int N = 1003;

    private static double[][] RandomInputs(int ranks, int n, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, ranks).Select(_ => Enumerable.Range(0, n).Select(_ => random.NextDouble() * 2 - 1).ToArray()).ToArray();
    }

    private Tensor Upload(double[] values, DType dtype)
    {
        var t = _cpu.Allocate(new Shape(values.Length), dtype);
        if (dtype == DType.F32) _cpu.CopyFromHost<float>(values.Select(v => (float)v).ToArray(), t);
        else _cpu.CopyFromHost<double>(values, t);
        return t;
    }

    private double[] Download(Tensor t)
    {
        if (t.DType == DType.F64) { var d = new double[t.NumElements]; _cpu.CopyToHost<double>(t, d); return d; }
        var f = new float[t.NumElements];
        _cpu.CopyToHost<float>(t, f);
        return f.Select(v => (double)v).ToArray();
    }

    /// <summary>The reference: a sequential sum in rank order, in the dtype's own arithmetic.</summary>
    private static double[] RankOrderSum(double[][] inputs, DType dtype)
    {
        int n = inputs[0].Length;
        var result = new double[n];
        for (int i = 0; i < n; i++)
        {
            if (dtype == DType.F32)
            {
                float acc = (float)inputs[0][i];
                for (int r = 1; r < inputs.Length; r++) acc += (float)inputs[r][i];
                result[i] = acc;
            }
            else
            {
                double acc = inputs[0][i];
                for (int r = 1; r < inputs.Length; r++) acc += inputs[r][i];
                result[i] = acc;
            }
        }
        return result;
    }

    [Theory]
    [InlineData(1, DType.F32)] [InlineData(2, DType.F32)] [InlineData(4, DType.F32)]
    [InlineData(1, DType.F64)] [InlineData(2, DType.F64)] [InlineData(4, DType.F64)]
    public void AllReduceSumIsBitIdenticalOnEveryRankToTheRankOrderSum(int size, DType dtype)
    {
        var inputs = RandomInputs(size, N, seed: 10 + size);
        var expected = RankOrderSum(inputs, dtype);
        var groups = InProcessProcessGroup.Create(size, Timeout);
        var results = new double[size][];
        RankThreads.Run(size, r =>
        {
            var t = Upload(inputs[r], dtype);
            groups[r].AllReduce(t).Wait();
            results[r] = Download(t);
        });
        // Tolerance 0: the same additions in the same order give the same bits.
        for (int r = 0; r < size; r++) Assert.Equal(expected, results[r]);
        // And the result is the sum (checked against F64 within F32 rounding of `size` additions).
        var f64 = Enumerable.Range(0, N).Select(i => inputs.Sum(x => x[i])).ToArray();
        for (int i = 0; i < N; i++) Assert.True(Math.Abs(results[0][i] - f64[i]) <= 4e-7 * size, $"element {i}");
    }

    [Theory]
    [InlineData(2, DType.F32)] [InlineData(4, DType.F64)]
    public void AllReduceAverageIsTheRankOrderSumDividedBySize(int size, DType dtype)
    {
        var inputs = RandomInputs(size, N, seed: 20 + size);
        var sum = RankOrderSum(inputs, dtype);
        var expected = sum.Select(s => dtype == DType.F32 ? (double)((float)s / size) : s / size).ToArray();
        var groups = InProcessProcessGroup.Create(size, Timeout);
        var results = new double[size][];
        RankThreads.Run(size, r =>
        {
            var t = Upload(inputs[r], dtype);
            groups[r].AllReduce(t, ReduceOp.Average).Wait();
            results[r] = Download(t);
        });
        for (int r = 0; r < size; r++) Assert.Equal(expected, results[r]); // exact: one division of the same sum
    }

    [Theory]
    [InlineData(1, DType.F32)] [InlineData(2, DType.F32)] [InlineData(4, DType.F32)]
    [InlineData(1, DType.F64)] [InlineData(2, DType.F64)] [InlineData(4, DType.F64)]
    public void ReduceScatterGivesRankRChunkROfTheRankOrderSum(int size, DType dtype)
    {
        const int chunk = 257;
        var inputs = RandomInputs(size, size * chunk, seed: 30 + size);
        var expected = RankOrderSum(inputs, dtype);
        var groups = InProcessProcessGroup.Create(size, Timeout);
        var results = new double[size][];
        RankThreads.Run(size, r =>
        {
            var input = Upload(inputs[r], dtype);
            var output = _cpu.Allocate(new Shape(chunk), dtype);
            groups[r].ReduceScatter(input, output).Wait();
            results[r] = Download(output);
        });
        for (int r = 0; r < size; r++) Assert.Equal(expected.Skip(r * chunk).Take(chunk).ToArray(), results[r]);
    }

    [Theory]
    [InlineData(1, DType.F32)] [InlineData(2, DType.F64)] [InlineData(4, DType.F32)] [InlineData(4, DType.F64)]
    public void AllGatherConcatenatesEveryRanksTensorInRankOrder(int size, DType dtype)
    {
        const int n = 131;
        var inputs = RandomInputs(size, n, seed: 40 + size);
        var expected = inputs.SelectMany(x => dtype == DType.F32 ? x.Select(v => (double)(float)v) : x).ToArray();
        var groups = InProcessProcessGroup.Create(size, Timeout);
        var results = new double[size][];
        RankThreads.Run(size, r =>
        {
            var output = _cpu.Allocate(new Shape(size, n), dtype);
            groups[r].AllGather(Upload(inputs[r], dtype), output).Wait();
            results[r] = Download(output);
        });
        for (int r = 0; r < size; r++) Assert.Equal(expected, results[r]);
    }

    [Fact]
    public void AllGatherAndBroadcastMoveI32Exactly()
    {
        const int size = 4, n = 5;
        var groups = InProcessProcessGroup.Create(size, Timeout);
        var gathered = new int[size][];
        var broadcast = new int[size][];
        RankThreads.Run(size, r =>
        {
            var mine = _cpu.Allocate(new Shape(n), DType.I32);
            _cpu.CopyFromHost<int>(Enumerable.Range(0, n).Select(i => 1000 * r + i).ToArray(), mine);
            var all = _cpu.Allocate(new Shape(size * n), DType.I32);
            var h1 = groups[r].AllGather(mine, all);
            var b = _cpu.Allocate(new Shape(n), DType.I32);
            _cpu.CopyFromHost<int>(Enumerable.Repeat(-r - 1, n).ToArray(), b);
            var h2 = groups[r].Broadcast(b, root: 2);
            h1.Wait();
            h2.Wait();
            gathered[r] = new int[size * n]; _cpu.CopyToHost<int>(all, gathered[r]);
            broadcast[r] = new int[n]; _cpu.CopyToHost<int>(b, broadcast[r]);
        });
        var expected = Enumerable.Range(0, size).SelectMany(r => Enumerable.Range(0, n).Select(i => 1000 * r + i)).ToArray();
        for (int r = 0; r < size; r++)
        {
            Assert.Equal(expected, gathered[r]);
            Assert.Equal(Enumerable.Repeat(-3, n).ToArray(), broadcast[r]);
        }
    }

    [Fact]
    public void SendAndRecvDeliverMessagesInOrderAroundARing()
    {
        const int size = 4, n = 17;
        var groups = InProcessProcessGroup.Create(size, Timeout);
        var received = new double[size][];
        RankThreads.Run(size, r =>
        {
            // Two messages per direction: the second must not overtake the first.
            var a = Upload(Enumerable.Repeat(r + 0.5, n).ToArray(), DType.F64);
            var b = Upload(Enumerable.Repeat(r + 0.25, n).ToArray(), DType.F64);
            var ra = _cpu.Allocate(new Shape(n), DType.F64);
            var rb = _cpu.Allocate(new Shape(n), DType.F64);
            int next = (r + 1) % size, prev = (r + size - 1) % size;
            var hs = new[] { groups[r].Send(a, next), groups[r].Send(b, next), groups[r].Recv(ra, prev), groups[r].Recv(rb, prev) };
            foreach (var h in hs) h.Wait();
            received[r] = [.. Download(ra), .. Download(rb)];
        });
        for (int r = 0; r < size; r++)
        {
            int prev = (r + size - 1) % size;
            Assert.Equal([.. Enumerable.Repeat(prev + 0.5, n), .. Enumerable.Repeat(prev + 0.25, n)], received[r]);
        }
    }

    [Fact]
    public void ABatchOfSendsAndReceivesBetweenNeighboursEachWayDeliversEveryMessageAndCountsThem()
    {
        // The pipeline's send-forward-receive-backward: each rank sends to and receives from both neighbours in one batch.
        const int size = 3, n = 9;
        var groups = InProcessProcessGroup.Create(size, Timeout);
        var received = new double[size][];
        RankThreads.Run(size, r =>
        {
            int next = (r + 1) % size, prev = (r + size - 1) % size;
            var forward = Upload(Enumerable.Repeat(r + 0.5, n).ToArray(), DType.F64);
            var backward = Upload(Enumerable.Repeat(-r - 0.5, n).ToArray(), DType.F64);
            var fromPrev = _cpu.Allocate(new Shape(n), DType.F64);
            var fromNext = _cpu.Allocate(new Shape(n), DType.F64);
            var handles = groups[r].SendReceive([PointToPoint.Send(forward, next), PointToPoint.Receive(fromNext, next),
                PointToPoint.Send(backward, prev), PointToPoint.Receive(fromPrev, prev)]);
            Assert.Equal(4, handles.Count);
            foreach (var h in handles) h.Wait();
            received[r] = [.. Download(fromPrev), .. Download(fromNext)];
            Assert.Equal(2, groups[r].Count(CollectiveKind.Send));
            Assert.Equal(2, groups[r].Count(CollectiveKind.Recv));
        });
        for (int r = 0; r < size; r++)
        {
            int next = (r + 1) % size, prev = (r + size - 1) % size;
            Assert.Equal([.. Enumerable.Repeat(prev + 0.5, n), .. Enumerable.Repeat(-next - 0.5, n)], received[r]);
        }
        var g = groups[0];
        var t = _cpu.Allocate(new Shape(3), DType.F32);
        var e = Assert.Throws<ArgumentException>(() => g.SendReceive([PointToPoint.Send(t, 1), PointToPoint.Receive(t, 0)]));
        Assert.Contains("peer is this rank itself", e.Message);
        Assert.Throws<ArgumentException>(() => g.SendReceive([new PointToPoint(CollectiveKind.AllReduce, t, 1)]));
        Assert.Equal(2, g.Count(CollectiveKind.Send));   // nothing of a refused batch was issued
    }

    [Fact]
    public void HandlesCompleteOnlyOnceEveryRankHasIssuedTheCollective()
    {
        // One thread drives both ranks: issuing never blocks.
        var groups = InProcessProcessGroup.Create(2, Timeout);
        var t0 = Upload([1, 2, 3], DType.F32);
        var t1 = Upload([10, 20, 30], DType.F32);
        var h0 = groups[0].AllReduce(t0);
        Assert.False(h0.IsCompleted);
        var h1 = groups[1].AllReduce(t1);
        Assert.True(h0.IsCompleted);
        Assert.True(h1.IsCompleted);
        h0.Wait();
        h1.Wait();
        Assert.Equal([11.0, 22, 33], Download(t0));
        Assert.Equal(1, h0.SequenceNumber);
        Assert.Equal(CollectiveKind.AllReduce, h0.Kind);
    }

    [Fact]
    public void ACallersShortWaitThrowsWithoutAbortingTheCollective()
    {
        var groups = InProcessProcessGroup.Create(2, Timeout);
        var t0 = Upload([1], DType.F64);
        var h0 = groups[0].AllReduce(t0);
        var e = Assert.Throws<CollectiveTimeoutException>(() => h0.Wait(TimeSpan.FromMilliseconds(50)));
        Assert.Equal([1], e.MissingRanks!);
        groups[1].AllReduce(Upload([2], DType.F64)).Wait();
        h0.Wait();
        Assert.Equal([3.0], Download(t0));
    }

    [Fact]
    public void ARankThatNeverArrivesMakesTheOthersTimeOutNamingCollectiveSequenceAndMissingRank()
    {
        const int size = 4;
        var timeout = TimeSpan.FromMilliseconds(500);
        var groups = InProcessProcessGroup.Create(size, timeout);
        var errors = new CollectiveTimeoutException?[size];
        var elapsed = new TimeSpan[size];
        RankThreads.Run(size, r =>
        {
            groups[r].Barrier().Wait();
            if (r == 3) return; // rank 3 skips the all-reduce
            var t = Upload([r], DType.F32);
            var sw = Stopwatch.StartNew();
            errors[r] = Assert.Throws<CollectiveTimeoutException>(() => groups[r].AllReduce(t).Wait());
            elapsed[r] = sw.Elapsed;
        });
        for (int r = 0; r < 3; r++)
        {
            var e = errors[r]!;
            Assert.Equal(CollectiveKind.AllReduce, e.Kind);
            Assert.Equal(2, e.SequenceNumber);
            Assert.Equal([3], e.MissingRanks!);
            Assert.Equal(r, e.Rank);
            Assert.Contains("AllReduce #2", e.Message);
            Assert.Contains("rank 3 did not arrive", e.Message);
            // Slack of 1.5 s: a loaded 2-core machine may delay thread wake-ups.
            Assert.InRange(elapsed[r], TimeSpan.Zero, timeout + TimeSpan.FromSeconds(1.5));
        }
        // The first to time out waited the whole timeout (within timer resolution).
        Assert.True(elapsed.Take(3).Max() >= timeout - TimeSpan.FromMilliseconds(50), $"waited only {elapsed.Take(3).Max()}");
        // The group is aborted: the late rank fails at once instead of hanging.
        var late = groups[3].AllReduce(Upload([3], DType.F32));
        var abort = Assert.Throws<InvalidOperationException>(() => late.Wait());
        Assert.Contains("aborted", abort.Message);
    }

    [Fact]
    public void MismatchedCollectivesFailOnEveryRankNamingWhatEachIssued()
    {
        var groups = InProcessProcessGroup.Create(2, Timeout);
        var h0 = groups[0].AllReduce(Upload([1, 2], DType.F32));
        var h1 = groups[1].AllGather(Upload([1], DType.F32), _cpu.Allocate(new Shape(2), DType.F32));
        var e0 = Assert.Throws<InvalidOperationException>(() => h0.Wait());
        var e1 = Assert.Throws<InvalidOperationException>(() => h1.Wait());
        Assert.Contains("rank 0 issued AllReduce(F32, 2 elements, Sum)", e0.Message);
        Assert.Contains("rank 1 issued AllGather(F32, 1 elements -> 2)", e1.Message);
    }

    [Fact]
    public void GroupsCountTheCollectivesTheyIssue()
    {
        var groups = InProcessProcessGroup.Create(2, Timeout);
        RankThreads.Run(2, r =>
        {
            var g = groups[r];
            var t = Upload([1, 2, 3, 4], DType.F32);
            g.AllReduce(t).Wait();
            g.AllReduce(t).Wait();
            g.ReduceScatter(t, _cpu.Allocate(new Shape(2), DType.F32)).Wait();
            g.AllGather(_cpu.Allocate(new Shape(2), DType.F32), t).Wait();
            g.Broadcast(t, 0).Wait();
            g.Barrier().Wait();
            (r == 0 ? g.Send(t, 1) : g.Recv(t, 0)).Wait();
        });
        foreach (var g in groups)
        {
            Assert.Equal(6, g.CollectiveCount); // point-to-point messages are not collectives
            Assert.Equal(2, g.Count(CollectiveKind.AllReduce));
            Assert.Equal(1, g.Count(CollectiveKind.ReduceScatter));
            Assert.Equal(1, g.Count(CollectiveKind.AllGather));
            Assert.Equal(1, g.Count(CollectiveKind.Broadcast));
            Assert.Equal(1, g.Count(CollectiveKind.Barrier));
        }
        Assert.Equal(1, groups[0].Count(CollectiveKind.Send));
        Assert.Equal(0, groups[0].Count(CollectiveKind.Recv));
        Assert.Equal(1, groups[1].Count(CollectiveKind.Recv));
    }

    [Fact]
    public void InvalidArgumentsAreRejectedBeforeTheCollectiveIsCounted()
    {
        var g = InProcessProcessGroup.Create(2, Timeout)[0];
        var e = Assert.Throws<ArgumentException>(() => g.ReduceScatter(_cpu.Allocate(new Shape(5), DType.F32), _cpu.Allocate(new Shape(2), DType.F32)));
        Assert.Contains("expected Size * output = 2 * 2", e.Message);
        Assert.Throws<ArgumentException>(() => g.AllReduce(_cpu.Allocate(new Shape(3, 4), DType.F32).Transpose(0, 1)));
        Assert.Throws<NotSupportedException>(() => g.AllReduce(_cpu.Allocate(new Shape(3), DType.BF16)));
        Assert.Throws<ArgumentException>(() => g.Send(_cpu.Allocate(new Shape(3), DType.F32), 0));
        Assert.Equal(0, g.CollectiveCount);
    }
}
