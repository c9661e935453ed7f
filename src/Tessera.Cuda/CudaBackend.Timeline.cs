using Tessera.Tensors;

namespace Tessera.Cuda;

public sealed partial class CudaBackend : IDeviceClock
{
    /// <inheritdoc/>
    /// <remarks>A <see cref="CudaEventTimeline"/> on this backend's stream.</remarks>
    public IDeviceTimeline CreateTimeline() => new CudaEventTimeline(this);
}
