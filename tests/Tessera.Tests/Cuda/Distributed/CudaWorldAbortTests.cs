using System.Diagnostics;
using Tessera.Cuda.Distributed;
using Tessera.Tensors;
using Xunit;

namespace Tessera.Tests.Cuda.Distributed;

/// <summary>
/// CUDA thread ranks abort their world as CPU ones do: a rank that throws ends the others' device-ordered collectives at
/// once (two-minute timeout, so returning in seconds shows the abort did it), and the run reports the original error.
/// </summary>
[Collection("cuda")]
public sealed class CudaWorldAbortTests(CudaFixture fixture)
{
    private sealed class RankFailure(string message) : Exception(message);

    [Fact]
    public void ARankThatThrowsEndsTheOthersDeviceCollectivesPromptlyWithItsError()
    {
        _ = fixture.Backend;
        var clock = Stopwatch.StartNew();
        var e = Assert.Throws<AggregateException>(() => CudaThreadRanks.Run(3, ctx =>
        {
            var t = ctx.Backend.Allocate(new Shape(256), DType.BF16);
            ctx.Group.AllReduce(t).WaitOnDevice();                    // every rank: completes
            if (ctx.Rank == 1) { Thread.Sleep(200); throw new RankFailure("rank 1 failed after the first all-reduce"); }
            ctx.Group.AllReduce(t).WaitOnDevice();                    // ranks 0 and 2: aborted
            ctx.Backend.Synchronize();
            return 0;
        }, timeout: TimeSpan.FromMinutes(2)));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"the ranks took {clock.Elapsed} to return");
        Assert.Equal("rank 1 failed after the first all-reduce", Assert.IsType<RankFailure>(Assert.Single(e.InnerExceptions)).Message);
        Assert.Contains("2 other ranks were aborted because of it", e.Message);
    }
}
