using System.Collections.Concurrent;
using Tessera.Distributed;
using Tessera.Distributed.InProcess;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Distributed;

/// <summary>
/// The seam between the in-process rendezvous and its transport, with a recording transport in place of a device: notes
/// are taken on each issuing rank's own thread with its global rank, execution happens once, after matching, with the
/// notes still alive and released right after (also when the calls do not match); a device completion makes Wait a host
/// wait on it and WaitOnDevice an ordering of the rank's compute after it; which dtypes reduce is the transport's.
/// Tessera.Cuda's transport relies on each of these.
/// </summary>
public sealed class InProcessTransportTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private sealed class Note(int globalRank, int thread) : IDisposable
    {
        public int GlobalRank { get; } = globalRank;
        public int Thread { get; } = thread;
        public int Disposals;
        public void Dispose() => Interlocked.Increment(ref Disposals);
    }

    private sealed class ManualEvent : IDeviceEvent
    {
        public volatile bool Completed;
        public int Synchronizations;
        public bool IsCompleted => Completed;
        public void Synchronize() { Interlocked.Increment(ref Synchronizations); Completed = true; }
    }

    private sealed class RecordingTransport : InProcessTransport
    {
        public readonly ConcurrentBag<Note> Notes = [];
        public readonly ConcurrentQueue<(InProcessOperation Operation, bool NotesAlive)> Executed = new();
        public readonly ConcurrentQueue<(int GlobalRank, IDeviceEvent Done)> Ordered = new();
        public readonly ManualEvent Done = new();

        public override bool CanReduce(DType dtype, ReduceOp op) => true;

        public override IDisposable? Issue(int globalRank, CollectiveKind kind)
        {
            var note = new Note(globalRank, Environment.CurrentManagedThreadId);
            Notes.Add(note);
            return note;
        }

        public override IDeviceEvent? Execute(InProcessOperation operation)
        {
            Executed.Enqueue((operation, operation.Contributions.All(c => c.Token is Note { Disposals: 0 })));
            return Done;
        }

        public override void OrderComputeAfter(int globalRank, IDeviceEvent done) => Ordered.Enqueue((globalRank, done));
    }

    [Fact]
    public void NotesAreTakenOnTheIssuingThreadsAndReleasedRightAfterOneExecution()
    {
        var transport = new RecordingTransport();
        var world = new InProcessWorld(4, Timeout, transport);
        var cpu = new CpuBackend(1);
        int[] tp = [2, 3];
        var threads = new int[2];
        var handles = new CollectiveHandle[2];
        RankThreads.Run(2, r =>
        {
            threads[r] = Environment.CurrentManagedThreadId;
            var group = world.Group(tp[r], "tp", tp);
            // BF16 reduces: the transport says so (the host transport refuses it, see below).
            handles[r] = group.AllReduce(cpu.Allocate(new Shape(8), DType.BF16));
            handles[r].WaitOnDevice();
        });

        var (operation, notesAlive) = Assert.Single(transport.Executed);
        Assert.True(notesAlive, "the transport executed after a note was released");
        Assert.Equal("tp", operation.GroupName);
        Assert.Equal(tp, operation.GlobalRanks);
        Assert.Equal(CollectiveKind.AllReduce, operation.Kind);
        Assert.Equal([0, 1], operation.Contributions.Select(c => c.Rank));
        Assert.Equal(2, transport.Notes.Count);
        foreach (var note in transport.Notes)
        {
            Assert.Equal(threads[Array.IndexOf(tp, note.GlobalRank)], note.Thread);
            Assert.Equal(1, note.Disposals);
        }
        // WaitOnDevice ordered each rank's compute after the completion, by global rank, and did not wait on the host.
        Assert.Equal([2, 3], transport.Ordered.Select(o => o.GlobalRank).Order());
        Assert.All(transport.Ordered, o => Assert.Same(transport.Done, o.Done));
        Assert.Equal(0, transport.Done.Synchronizations);
        Assert.False(handles[0].IsCompleted);   // executed, but its device event has not completed
        handles[0].Wait();                      // the host wait is a wait on that event
        Assert.Equal(1, transport.Done.Synchronizations);
        Assert.True(handles[0].IsCompleted);
        Assert.True(handles[1].IsCompleted);
    }

    [Fact]
    public void MismatchedCallsNeverReachTheTransportAndTheirNotesAreReleased()
    {
        var transport = new RecordingTransport();
        var groups = InProcessProcessGroup.Create(2, Timeout, transport);
        var cpu = new CpuBackend(1);
        var h0 = groups[0].AllReduce(cpu.Allocate(new Shape(4), DType.F32));
        var h1 = groups[1].AllReduce(cpu.Allocate(new Shape(5), DType.F32));
        var e = Assert.Throws<InvalidOperationException>(() => h0.WaitOnDevice());
        Assert.Contains("does not match across ranks", e.Message);
        Assert.Throws<InvalidOperationException>(() => h1.Wait());
        Assert.Empty(transport.Executed);
        Assert.All(transport.Notes, n => Assert.Equal(1, n.Disposals));
        Assert.Empty(transport.Ordered);
    }

    [Fact]
    public void NotesOfAnAbortedCollectiveAreReleased()
    {
        var transport = new RecordingTransport();
        var groups = InProcessProcessGroup.Create(2, TimeSpan.FromMilliseconds(200), transport);
        var cpu = new CpuBackend(1);
        var h0 = groups[0].AllReduce(cpu.Allocate(new Shape(4), DType.F32));
        Assert.Throws<CollectiveTimeoutException>(() => h0.WaitOnDevice());
        var note = Assert.Single(transport.Notes);
        Assert.Equal(1, note.Disposals);
        // The late rank finds the group aborted; its note is released too.
        var late = groups[1].AllReduce(cpu.Allocate(new Shape(4), DType.F32));
        Assert.Throws<InvalidOperationException>(() => late.Wait());
        Assert.All(transport.Notes, n => Assert.Equal(1, n.Disposals));
        Assert.Empty(transport.Executed);
    }

    [Fact]
    public void TheDefaultHostTransportRefusesBf16Reductions()
    {
        var groups = InProcessProcessGroup.Create(1, Timeout);
        var e = Assert.Throws<NotSupportedException>(() => groups[0].AllReduce(new CpuBackend(1).Allocate(new Shape(2), DType.BF16)));
        Assert.Contains("Sum over BF16", e.Message);
        Assert.IsType<HostTransport>(groups[0].World.Transport);
    }
}
