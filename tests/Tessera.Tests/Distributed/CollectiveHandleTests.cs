using Tessera.Distributed;
using Tessera.Distributed.InProcess;
using Tessera.Tensors;
using Tessera.Tensors.Cpu;
using Xunit;

namespace Tessera.Tests.Distributed;

/// <summary>
/// <see cref="CollectiveHandle.WaitOnDevice"/> on a group of CPU backends: CPU ops are synchronous, so the device wait is
/// the host wait, with the same timeouts and errors.
/// </summary>
public sealed class CollectiveHandleTests
{
    private readonly CpuBackend _cpu = new(1);

    [Fact]
    public void WaitOnDeviceOfACpuGroupIsTheHostWaitWithItsTimeoutAndResult()
    {
        var groups = InProcessProcessGroup.Create(2, TimeSpan.FromSeconds(10));
        var t0 = _cpu.FromArray([1.0, 2.0], 2);
        var t1 = _cpu.FromArray([10.0, 20.0], 2);
        var h0 = groups[0].AllReduce(t0);
        // Rank 1 has not issued it: a device wait cannot return before the host one could.
        var e = Assert.Throws<CollectiveTimeoutException>(() => h0.WaitOnDevice(TimeSpan.FromMilliseconds(50)));
        Assert.Equal([1], e.MissingRanks!);
        Assert.False(h0.IsCompleted);
        var h1 = groups[1].AllReduce(t1);
        h0.WaitOnDevice();
        h1.WaitOnDevice();
        Assert.True(h0.IsCompleted);
        Assert.Equal([11.0, 22.0], _cpu.ToArray<double>(t0));
        Assert.Equal([11.0, 22.0], _cpu.ToArray<double>(t1));
    }
}
