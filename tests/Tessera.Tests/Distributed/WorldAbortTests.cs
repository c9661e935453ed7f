using System.Diagnostics;
using Tessera.Distributed;
using Tessera.Distributed.InProcess;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Tessera.Training.Parallel;
using Xunit;

namespace Tessera.Tests.Distributed;

/// <summary>
/// A failing thread rank aborts its world: every pending and later collective on every rank fails at once, naming the
/// failed rank, and the runner reports the original failure. The groups' timeout is two minutes, as in a real run, so a
/// test that passes in seconds shows the abort (not the timeout) ended the other ranks.
/// </summary>
public class WorldAbortTests
{
    private static readonly TimeSpan RunTimeout = TimeSpan.FromMinutes(2);

    // Generous for a loaded 2-core machine; the point is "not the 2-minute timeout".
    private static readonly TimeSpan Prompt = TimeSpan.FromSeconds(5);

    private sealed class RankFailure(string message) : Exception(message);

    [Fact]
    public void OneOfFourRanksThrowingBeforeAnAllReduceEndsEveryRankPromptlyWithTheOriginalError()
    {
        var world = new InProcessWorld(4, RunTimeout);
        var cpu = new CpuBackend(1);
        var original = new RankFailure("rank 2 could not read its shard");
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<AggregateException>(() => ThreadRanks.Run(world, rank =>
        {
            using var group = world.WorldGroup(rank);
            var t = cpu.Allocate(new Shape(16), DType.F32);
            if (rank == 2)
            {
                Thread.Sleep(200);   // the others are waiting in the all-reduce by now
                throw original;
            }
            group.AllReduce(t).Wait();
            return 0;
        }));
        Assert.True(clock.Elapsed < Prompt, $"the ranks took {clock.Elapsed} to return");
        Assert.Same(original, Assert.Single(e.InnerExceptions));
        Assert.Contains("first: rank 2: rank 2 could not read its shard", e.Message);
        Assert.Contains("3 other ranks were aborted because of it", e.Message);
        Assert.Equal(2, world.FailedRank);
        Assert.Same(original, world.Failure);
    }

    [Fact]
    public void PendingAndLaterCollectivesOfEveryGroupThrowNamingTheFailedRankAndCarryingItsError()
    {
        // Ranks 0 and 1 wait in a sub-group collective that rank 3 is not part of; rank 2 waits for a message from rank 3.
        var world = new InProcessWorld(4, RunTimeout);
        var cpu = new CpuBackend(1);
        var original = new RankFailure("out of memory on rank 3");
        var seen = new Exception?[4];
        var later = new Exception?[4];
        var clock = Stopwatch.StartNew();
        Assert.Throws<AggregateException>(() => ThreadRanks.Run<int>(world, rank =>
        {
            using var worldGroup = world.WorldGroup(rank);
            var t = cpu.Allocate(new Shape(8), DType.F64);
            if (rank == 3) { Thread.Sleep(300); throw original; }
            try
            {
                if (rank < 2)
                {
                    using var pair = world.Group(rank, "dp", [0, 1]);
                    pair.AllReduce(t).Wait();   // completes: both members arrive
                    pair.Barrier().Wait();      // completes too
                    worldGroup.AllReduce(t).Wait();   // pending until the abort
                }
                else worldGroup.Recv(t, 3).Wait();
            }
            catch (Exception x) { seen[rank] = x; }
            // After the abort: an existing group, a new group, and a message all fail as they are issued.
            var next = rank == 0 ? world.Group(rank, "tp", [0, 2]).AllGather(t, cpu.Allocate(new Shape(16), DType.F64))
                : worldGroup.Broadcast(t, 0);
            later[rank] = Record(() => next.Wait());
            throw seen[rank] ?? new InvalidOperationException($"rank {rank}'s collective was not aborted");
        }));
        Assert.True(clock.Elapsed < Prompt, $"the ranks took {clock.Elapsed} to return");
        for (int r = 0; r < 3; r++)
        {
            foreach (var x in new[] { seen[r], later[r] })
            {
                var aborted = Assert.IsType<WorldAbortedException>(x);
                Assert.Equal(3, aborted.FailedRank);
                Assert.Same(original, aborted.InnerException);
                Assert.Contains("global rank 3 failed (RankFailure: out of memory on rank 3)", aborted.Message);
            }
        }
        Assert.Contains("AllReduce #1 on rank 0 of group 'world' was aborted", seen[0]!.Message);
        Assert.Contains("AllGather #1 on rank 0 of group 'tp' was aborted", later[0]!.Message);
    }

    [Fact]
    public void ThreadRankRunnersAbortTheWorldSoATrainingRankFailureDoesNotWaitForTheTimeout()
    {
        // ParallelTraining's runner, with its default two-minute timeout: rank 1 fails while rank 0 waits in an all-reduce.
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<AggregateException>(() => ParallelTraining.RunThreadRanks(2, ctx =>
        {
            if (ctx.Rank == 1) { Thread.Sleep(200); throw new RankFailure("bad batch on rank 1"); }
            var t = ctx.Backend.Allocate(new Shape(4), DType.F32);
            ctx.Group.AllReduce(t).Wait();
            return 0;
        }));
        Assert.True(clock.Elapsed < Prompt, $"the ranks took {clock.Elapsed} to return");
        Assert.Equal("bad batch on rank 1", Assert.IsType<RankFailure>(Assert.Single(e.InnerExceptions)).Message);
    }

    [Fact]
    public void AnAgreedStopAbortsNothingSoTheOtherRanksFinishTheirCollectives()
    {
        // Rank 0 stops (OperationCanceledException) while ranks 1 and 2 still run collectives in a group of their own.
        var world = new InProcessWorld(3, RunTimeout);
        var cpu = new CpuBackend(1);
        var e = Assert.Throws<AggregateException>(() => ThreadRanks.Run(world, rank =>
        {
            if (rank == 0) throw new OperationCanceledException("stopped by a signal");
            using var pair = world.Group(rank, "dp", [1, 2]);
            Thread.Sleep(100);
            var t = cpu.Allocate(new Shape(4), DType.F32);
            pair.AllReduce(t).Wait();
            return 0;
        }));
        Assert.IsType<OperationCanceledException>(Assert.Single(e.InnerExceptions));
        Assert.Null(world.FailedRank);
    }

    [Fact]
    public void AbortNamesARankInsideTheWorldAndOnlyTheFirstCounts()
    {
        var world = new InProcessWorld(2, RunTimeout);
        Assert.Throws<ArgumentOutOfRangeException>(() => world.Abort(2, new RankFailure("x")));
        Assert.True(world.Abort(1, new RankFailure("first")));
        Assert.False(world.Abort(0, new RankFailure("second")));
        Assert.Equal(1, world.FailedRank);
        Assert.Equal("first", world.Failure!.Message);
    }

    private static Exception? Record(Action action)
    {
        try { action(); return null; }
        catch (Exception e) { return e; }
    }
}
