namespace Tessera.Tensors.Cpu;

public sealed partial class CpuBackend : IDeviceClock
{
    /// <inheritdoc/>
    /// <remarks>The CPU backend runs each op before it returns, so its queue's clock is the host's: a <see cref="HostTimeline"/>.</remarks>
    public IDeviceTimeline CreateTimeline() => new HostTimeline();
}
