using System.Diagnostics;
using Tessera.Cuda.Distributed;
using Tessera.Distributed;
using Tessera.Distributed.Nccl;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda.Distributed;

/// <summary>
/// NCCL handles the compute stream can wait on (one-rank communicator on the one GPU): a collective followed by a kernel
/// that reads its result, with no host wait in between, gives the right values even when the communication stream is held
/// back for 200 ms; the host does not wait for it; the completion events are recycled; a batch's handles end at GroupEnd.
/// </summary>
[Collection("cuda")]
public sealed class CudaCommunicationTests(CudaFixture fixture)
{
    /// <summary>How long the communication stream is held back: far above launch latencies, far below test time limits.</summary>
    private static readonly TimeSpan Hold = TimeSpan.FromMilliseconds(200);

    private (NcclProcessGroup Group, CudaCommunication Access) World()
    {
        var backend = fixture.Backend;   // skips without a GPU
        if (!NcclProcessGroup.IsAvailable()) Assert.Skip("libnccl.so.2 not found");
        var access = new CudaCommunication(backend);
        var group = NcclProcessGroup.Create("world", 0, 1, NcclProcessGroup.CreateUniqueId(), access, TimeSpan.FromSeconds(30));
        return (group, access);
    }

    [Fact]
    public void AKernelAfterWaitOnDeviceReadsTheDelayedCollectivesResultWithoutAHostWait()
    {
        var backend = fixture.Backend;
        var (group, access) = World();
        using var _ = group;
        using var __ = access;
        using var delay = new StreamDelay(backend);
        const int n = 1 << 22;
        var rng = new Random(17);
        var host = Enumerable.Range(0, n).Select(_ => (float)rng.NextDouble() - 0.5f).ToArray();
        var input = backend.FromHost<float>(host, new Shape(n));
        var output = backend.Allocate(new Shape(n), DType.F32);
        backend.Fill(output, double.NaN);
        backend.Synchronize();

        // The all-gather (a copy on one rank) sits behind 200 ms of spinning on NCCL's stream; the scaling that reads its
        // output is enqueued at once on the compute stream. Without the device wait the scaling runs on the NaN.
        delay.Delay(access.Stream, Hold);
        var clock = Stopwatch.StartNew();
        var handle = group.AllGather(input, output);
        handle.WaitOnDevice();
        var hostTime = clock.Elapsed;
        bool completedEarly = handle.IsCompleted;
        backend.Scale(output, 2.0);
        var result = backend.ToArray<float>(output);   // the host waits here, for the compute stream only

        Assert.False(completedEarly, "the collective finished while its stream was still held: the delay did not take, so the test proves nothing");
        Assert.True(hostTime < Hold / 2, $"issuing and WaitOnDevice took {hostTime.TotalMilliseconds:F1} ms of a {Hold.TotalMilliseconds} ms hold: the host waited");
        Assert.True(handle.IsCompleted);
        for (int i = 0; i < n; i++)
            if (result[i] != 2 * host[i]) Assert.Fail($"element {i}: {result[i]} instead of 2 x {host[i]} (the scaling did not wait for the collective)");
    }

    [Fact]
    public void CompletionEventsAreRecycledWhenConsumersOnlyWaitOnTheDevice()
    {
        var backend = fixture.Backend;
        var (group, access) = World();
        using var _ = group;
        using var __ = access;
        var t = backend.Allocate(new Shape(1024), DType.F32);
        backend.Fill(t, 1.0);
        const int collectives = 1000;
        for (int i = 0; i < collectives; i++)
        {
            group.AllReduce(t).WaitOnDevice();
            backend.Scale(t, 1.0);
            if (i % 100 == 99) backend.Synchronize();   // bounds how far the host runs ahead of the GPU
        }
        backend.Synchronize();
        // Without recycling every collective would create an event; at most the 100 between synchronizations may be in flight.
        Assert.InRange(access.Completions.EventsCreated, 1, 101);
        Assert.Equal(collectives, group.Count(CollectiveKind.AllReduce));
    }

    [Fact]
    public void HandlesIssuedInsideAGroupBatchEndAtGroupEnd()
    {
        var backend = fixture.Backend;
        var (group, access) = World();
        using var _ = group;
        using var __ = access;
        var a = backend.FromHost<float>([1f, 2f, 3f], new Shape(3));
        var b = backend.FromHost<float>([4f, 5f], new Shape(2));
        group.GroupStart();
        var ha = group.AllReduce(a);
        var hb = group.AllReduce(b);
        var e = Assert.Throws<InvalidOperationException>(() => ha.Wait());
        Assert.Contains("call GroupEnd before waiting", e.Message);
        group.GroupEnd();
        ha.WaitOnDevice();
        hb.Wait();
        Assert.Equal([1f, 2f, 3f], backend.ToArray<float>(a));
        Assert.Equal([4f, 5f], backend.ToArray<float>(b));
        Assert.Throws<InvalidOperationException>(() => group.GroupEnd());
    }
}
