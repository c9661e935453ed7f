namespace Tessera.Tensors;

/// <summary>A backend whose queue of work can be timed on the device's own clock (the CUDA backend: events with timing).</summary>
public interface IDeviceClock
{
    /// <summary>A new timeline of numbered marks on this backend's queue, for one user; dispose it when it implements IDisposable.</summary>
    IDeviceTimeline CreateTimeline();
}
