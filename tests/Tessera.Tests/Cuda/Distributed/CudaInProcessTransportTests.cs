using System.Diagnostics;
using Tessera.Cuda.Distributed;
using Tessera.Distributed;
using Tessera.Distributed.InProcess;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Cuda.Distributed;

/// <summary>
/// The CUDA flavour of the in-process group (thread ranks sharing the one GPU, each with its own CudaBackend): every
/// collective gives bitwise the CPU in-process group's results on the same inputs (F32, F64, I32), BF16 and F16 reductions
/// are the rank-order F32 sum rounded once, sub-groups map their ranks to the right backends, and the ordering holds
/// when one rank's compute is held back, with no host wait. Consumers here wait with WaitOnDevice (the device path);
/// the CPU reference waits on the host.
/// </summary>
[Collection("cuda")]
public sealed class CudaInProcessTransportTests(CudaFixture fixture)
{
    private const int N = 1003, Chunk = 257, Large = (1 << 20) + 5;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>Each rank's inputs (values exactly representable in the dtype): a vector, a reduce-scatter input, a large vector.</summary>
    private sealed record Inputs(double[][] Vector, double[][] Scatter, double[][] LargeVector);

    private static Inputs RandomInputs(int world, DType dtype, int seed)
    {
        TestContext.Current.TestOutputHelper?.WriteLine($"inputs: {world} ranks, {dtype}, seed {seed}");
        var rng = new Random(seed);
        double[] Draw(int n) => Enumerable.Range(0, n).Select(_ => dtype switch
        {
            DType.I32 => (double)rng.Next(int.MinValue, int.MaxValue),   // full range: the sums wrap
            DType.F64 => rng.NextDouble() * 2 - 1,
            DType.F32 => (float)(rng.NextDouble() * 2 - 1),
            DType.BF16 => BFloat16.FromSingle((float)(rng.NextDouble() * 2 - 1)).ToSingle(),
            DType.F16 => (float)(Half)(float)(rng.NextDouble() * 2 - 1),
            _ => throw new NotSupportedException(dtype.ToString()),
        }).ToArray();
        return new Inputs(
            Enumerable.Range(0, world).Select(_ => Draw(N)).ToArray(),
            Enumerable.Range(0, world).Select(_ => Draw(world * Chunk)).ToArray(),
            Enumerable.Range(0, world).Select(_ => Draw(Large)).ToArray());
    }

    private static Tensor Upload(IBackend b, double[] v, DType dtype) => dtype switch
    {
        DType.F32 => b.FromArray(v.Select(x => (float)x).ToArray(), v.Length),
        DType.F64 => b.FromArray(v, v.Length),
        DType.I32 => b.FromArray(v.Select(x => (int)x).ToArray(), v.Length),
        DType.BF16 => b.FromArray(v.Select(x => BFloat16.FromSingle((float)x)).ToArray(), v.Length),
        DType.F16 => b.FromArray(v.Select(x => (Half)(float)x).ToArray(), v.Length),
        _ => throw new NotSupportedException(dtype.ToString()),
    };

    /// <summary>An output whose every element is a value no operation here produces, so an element left unwritten shows.</summary>
    private static Tensor Poisoned(IBackend b, int n, DType dtype)
    {
        var t = b.Allocate(new Shape(n), dtype);
        b.Fill(t, dtype == DType.I32 ? 1234567 : double.NaN);
        return t;
    }

    private static ulong[] Bits(IBackend b, Tensor t) => t.DType switch
    {
        DType.F32 => b.ToArray<float>(t).Select(v => (ulong)BitConverter.SingleToUInt32Bits(v)).ToArray(),
        DType.F64 => b.ToArray<double>(t).Select(BitConverter.DoubleToUInt64Bits).ToArray(),
        DType.I32 => b.ToArray<int>(t).Select(v => (ulong)(uint)v).ToArray(),
        DType.BF16 => b.ToArray<BFloat16>(t).Select(v => (ulong)v.Bits).ToArray(),
        DType.F16 => b.ToArray<Half>(t).Select(v => (ulong)BitConverter.HalfToUInt16Bits(v)).ToArray(),
        _ => throw new NotSupportedException(t.DType.ToString()),
    };

    /// <summary>
    /// One rank's share of every operation, each result read back as raw bits: all-reduce (sum, average, max), reduce-scatter,
    /// all-gather, broadcast from the last rank, a message from rank 0 to the last rank, a large all-reduce, a barrier.
    /// </summary>
    private static List<(string Op, ulong[] Bits)> Script(int rank, int world, ProcessGroup group, IBackend backend, DType dtype, Inputs inputs, bool deviceWait)
    {
        var results = new List<(string, ulong[])>();
        void Done(CollectiveHandle h) { if (deviceWait) h.WaitOnDevice(); else h.Wait(); }
        foreach (var op in dtype == DType.I32 ? [ReduceOp.Sum, ReduceOp.Max] : new[] { ReduceOp.Sum, ReduceOp.Average, ReduceOp.Max })
        {
            var t = Upload(backend, inputs.Vector[rank], dtype);
            Done(group.AllReduce(t, op));
            results.Add(($"AllReduce {op}", Bits(backend, t)));
        }
        var scattered = Poisoned(backend, Chunk, dtype);
        Done(group.ReduceScatter(Upload(backend, inputs.Scatter[rank], dtype), scattered));
        results.Add(("ReduceScatter Sum", Bits(backend, scattered)));
        var gathered = Poisoned(backend, world * N, dtype);
        Done(group.AllGather(Upload(backend, inputs.Vector[rank], dtype), gathered));
        results.Add(("AllGather", Bits(backend, gathered)));
        var broadcast = Upload(backend, inputs.Vector[rank], dtype);
        Done(group.Broadcast(broadcast, root: world - 1));
        results.Add(("Broadcast", Bits(backend, broadcast)));
        if (world > 1 && rank == 0) Done(group.Send(Upload(backend, inputs.Vector[0], dtype), world - 1));
        if (world > 1 && rank == world - 1)
        {
            var received = Poisoned(backend, N, dtype);
            Done(group.Recv(received, 0));
            results.Add(("Recv", Bits(backend, received)));
        }
        var large = Upload(backend, inputs.LargeVector[rank], dtype);
        Done(group.AllReduce(large));
        results.Add(("AllReduce Sum (large)", Bits(backend, large)));
        Done(group.Barrier());
        return results;
    }

    private static void AssertSameBits(List<(string Op, ulong[] Bits)>[] expected, List<(string Op, ulong[] Bits)>[] actual, string what)
    {
        for (int r = 0; r < expected.Length; r++)
        {
            Assert.Equal(expected[r].Select(x => x.Op), actual[r].Select(x => x.Op));
            for (int k = 0; k < expected[r].Count; k++)
            {
                var (op, e) = expected[r][k];
                var a = actual[r][k].Bits;
                Assert.Equal(e.Length, a.Length);
                for (int i = 0; i < e.Length; i++)
                    if (e[i] != a[i]) Assert.Fail($"{what}, rank {r}, {op}: element {i} has bits 0x{a[i]:x} instead of 0x{e[i]:x}");
            }
        }
    }

    [Theory]
    [InlineData(DType.F32, 3)]
    [InlineData(DType.F32, 4)]
    [InlineData(DType.F64, 3)]
    [InlineData(DType.I32, 3)]
    public void EveryCollectiveGivesTheCpuInProcessGroupsBitsOnTheSameInputs(DType dtype, int world)
    {
        _ = fixture.Backend;   // skips without a GPU
        var inputs = RandomInputs(world, dtype, seed: 100 + world + (int)dtype);
        var cpuGroups = InProcessProcessGroup.Create(world, Timeout);
        var expected = ThreadRanks.Run(world, r =>
        {
            using var group = cpuGroups[r];
            return Script(r, world, group, new CpuBackend(1), dtype, inputs, deviceWait: false);
        });
        var actual = CudaThreadRanks.Run(world, ctx => Script(ctx.Rank, world, ctx.Group, ctx.Backend, dtype, inputs, deviceWait: true), timeout: Timeout);
        // Tolerance 0: the same operations in the same order, each rounded on its own, give the same bits.
        AssertSameBits(expected, actual, $"{dtype} over {world} CUDA thread ranks against CPU thread ranks");
    }

    /// <summary>What the device group must produce for 16-bit storage: F32 arithmetic in rank order, rounded once (host reference).</summary>
    private static List<(string Op, ulong[] Bits)>[] SixteenBitReference(int world, DType dtype, Inputs inputs)
    {
        ulong Round(float v) => dtype == DType.BF16 ? BFloat16.FromSingle(v).Bits : BitConverter.HalfToUInt16Bits((Half)v);
        ulong[] Stored(double[] v) => v.Select(x => Round((float)x)).ToArray();
        float[] Reduce(Func<int, double[]> of, int n, ReduceOp op)
        {
            var acc = new float[n];
            for (int i = 0; i < n; i++)
            {
                float a = (float)of(0)[i];
                for (int r = 1; r < world; r++) a = op == ReduceOp.Max ? float.Max(a, (float)of(r)[i]) : a + (float)of(r)[i];
                acc[i] = op == ReduceOp.Average ? a / world : a;
            }
            return acc;
        }
        var all = new List<(string, ulong[])>[world];
        for (int rank = 0; rank < world; rank++)
        {
            var list = new List<(string, ulong[])>();
            foreach (var op in new[] { ReduceOp.Sum, ReduceOp.Average, ReduceOp.Max })
                list.Add(($"AllReduce {op}", Reduce(r => inputs.Vector[r], N, op).Select(Round).ToArray()));
            list.Add(("ReduceScatter Sum", Reduce(r => inputs.Scatter[r], world * Chunk, ReduceOp.Sum).Skip(rank * Chunk).Take(Chunk).Select(Round).ToArray()));
            list.Add(("AllGather", inputs.Vector.SelectMany(Stored).ToArray()));
            list.Add(("Broadcast", Stored(inputs.Vector[world - 1])));
            if (world > 1 && rank == world - 1) list.Add(("Recv", Stored(inputs.Vector[0])));
            list.Add(("AllReduce Sum (large)", Reduce(r => inputs.LargeVector[r], Large, ReduceOp.Sum).Select(Round).ToArray()));
            all[rank] = list;
        }
        return all;
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void SixteenBitReductionsAreTheRankOrderF32SumRoundedOnce(DType dtype)
    {
        _ = fixture.Backend;
        const int world = 3;
        var inputs = RandomInputs(world, dtype, seed: 200 + (int)dtype);
        var actual = CudaThreadRanks.Run(world, ctx => Script(ctx.Rank, world, ctx.Group, ctx.Backend, dtype, inputs, deviceWait: true), timeout: Timeout);
        AssertSameBits(SixteenBitReference(world, dtype, inputs), actual, $"{dtype} over {world} CUDA thread ranks against the host's F32 rank-order sum");
    }

    [Fact]
    public void ATransportRefusesRanksThatShareABackend()
    {
        var backend = fixture.Backend;
        var e = Assert.Throws<ArgumentException>(() => new CudaInProcessTransport([backend, backend]));
        Assert.Contains("ranks 0 and 1 share one backend", e.Message);
    }

    [Fact]
    public void AWorldOfNoRanksIsRefusedBeforeAnyDeviceIsOpened()
    {
        // Runs without a GPU too: the argument is checked before a backend is opened.
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => CudaThreadRanks.Run(0, _ => 0));
        Assert.Contains("world size must be at least 1, got 0", e.Message);
    }

    [Fact]
    public void MismatchesAndTimeoutsAreReportedAsTheCpuGroupReportsThem()
    {
        _ = fixture.Backend;
        var mismatch = CudaThreadRanks.Run(2, ctx =>
        {
            var t = ctx.Backend.Allocate(new Shape(ctx.Rank == 0 ? 4 : 5), DType.F32);
            return Assert.Throws<InvalidOperationException>(() => ctx.Group.AllReduce(t).WaitOnDevice()).Message;
        }, timeout: Timeout);
        Assert.All(mismatch, m => Assert.Contains("collective #1 in group 'world' does not match across ranks: rank 0 issued AllReduce(F32, 4 elements, Sum), rank 1 issued AllReduce(F32, 5 elements, Sum)", m));

        var timedOut = CudaThreadRanks.Run(2, ctx =>
        {
            if (ctx.Rank == 1) return null;   // rank 1 never issues the all-reduce
            var t = ctx.Backend.Allocate(new Shape(4), DType.F32);
            return Assert.Throws<CollectiveTimeoutException>(() => ctx.Group.AllReduce(t).WaitOnDevice());
        }, timeout: TimeSpan.FromMilliseconds(300));
        Assert.Equal([1], timedOut[0]!.MissingRanks!);
        Assert.Contains("AllReduce #1 in group 'world' (size 2) timed out on rank 0", timedOut[0]!.Message);
    }

    [Fact]
    public void SubGroupsGatherInTheirOwnRankOrderFromTheRightBackends()
    {
        _ = fixture.Backend;
        // Groups over global ranks (3, 1) and (0, 2): group rank 0 of the first is global rank 3.
        int[][] groups = [[3, 1], [0, 2]];
        var gathered = CudaThreadRanks.Run(4, ctx =>
        {
            var members = groups.Single(g => g.Contains(ctx.Rank));
            using var group = ctx.Factory.CreateGroup("tp", members);
            var mine = ctx.Backend.FromArray(Enumerable.Range(0, 5).Select(i => (float)(100 * ctx.Rank + i)).ToArray(), 5);
            var all = ctx.Backend.Allocate(new Shape(10), DType.F32);
            group.AllGather(mine, all).WaitOnDevice();
            return ctx.Backend.ToArray<float>(all);
        }, timeout: Timeout);
        for (int rank = 0; rank < 4; rank++)
        {
            var members = groups.Single(g => g.Contains(rank));
            var expected = members.SelectMany(g => Enumerable.Range(0, 5).Select(i => (float)(100 * g + i))).ToArray();
            Assert.Equal(expected, gathered[rank]);
        }
    }

    [Fact]
    public void ACollectiveWaitsForAHeldBackRanksInputAndTheNextKernelWaitsForTheCollectiveWithoutAHostWait()
    {
        _ = fixture.Backend;
        // Long enough that host-side latencies (thread wake-ups, a module load) cannot use it up: at the H200 (2026-12-02)
        // a 200 ms hold had passed by the time rank 0 looked, with no warm-up collective before the timed one.
        var hold = TimeSpan.FromMilliseconds(1000);
        const int n = 1 << 20;
        var results = CudaThreadRanks.Run(2, ctx =>
        {
            using var delay = new StreamDelay(ctx.Backend);   // compiled before the timed part
            var t = ctx.Backend.Allocate(new Shape(n), DType.F32);
            // Warm-up: the group's stream, the reduction kernel's module and the events exist before the timed part.
            ctx.Backend.Fill(t, 0.0);
            ctx.Group.AllReduce(t).Wait();
            ctx.Backend.Fill(t, ctx.Rank == 0 ? 1.0 : double.NaN);
            ctx.Group.Barrier().Wait();
            var clock = Stopwatch.StartNew();
            if (ctx.Rank == 1)
            {
                // Rank 1's input is written only after its stream has been held: a collective that does not wait for
                // rank 1's compute reads NaN.
                delay.Delay(ctx.Backend.Stream, hold);
                ctx.Backend.Fill(t, 3.0);
                var h1 = ctx.Group.AllReduce(t);
                double issuedMs = clock.Elapsed.TotalMilliseconds;
                h1.WaitOnDevice();
                return (Values: ctx.Backend.ToArray<float>(t), HostMs: issuedMs, CompletedEarly: false);
            }
            var handle = ctx.Group.AllReduce(t);
            handle.WaitOnDevice();   // waits on the host for rank 1 to issue it, not for its device work
            double hostMs = clock.Elapsed.TotalMilliseconds;
            bool completedEarly = handle.IsCompleted;
            ctx.Backend.Scale(t, 2.0);   // reads the all-reduce's result only if ordered after it
            return (Values: ctx.Backend.ToArray<float>(t), HostMs: hostMs, CompletedEarly: completedEarly);
        }, timeout: Timeout);
        string timeline = $"rank 1 issued {results[1].HostMs:F1} ms after the barrier; rank 0's issue and WaitOnDevice took {results[0].HostMs:F1} ms " +
            $"of a {hold.TotalMilliseconds} ms hold; completed when rank 0 looked: {results[0].CompletedEarly}";
        TestContext.Current.TestOutputHelper?.WriteLine(timeline);
        // The values first: they are the ordering's proof whatever the timings were.
        for (int i = 0; i < n; i++)
        {
            if (results[0].Values[i] != 8f) Assert.Fail($"rank 0, element {i}: {results[0].Values[i]} instead of 2 x (1 + 3) ({timeline})");
            if (results[1].Values[i] != 4f) Assert.Fail($"rank 1, element {i}: {results[1].Values[i]} instead of 1 + 3 ({timeline})");
        }
        Assert.True(results[0].HostMs < hold.TotalMilliseconds / 2, $"the host waited for the device: {timeline}");
        Assert.False(results[0].CompletedEarly, $"the all-reduce had completed while rank 1's stream should still have been held, so the hold did not take and the values prove nothing: {timeline}");
    }
}
