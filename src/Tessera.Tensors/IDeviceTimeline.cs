namespace Tessera.Tensors;

/// <summary>
/// Numbered timestamps taken in a backend's order of execution, so that the phases of an asynchronous step can be
/// timed without waiting inside it (on a GPU: CUDA events recorded on the backend's stream). A backend that keeps one makes
/// it with <see cref="IDeviceClock.CreateTimeline"/>. The training benchmark times a step's phases with it; the serving runner
/// its steps and the device's idle time between them. A timeline belongs to one user: marks are numbered by that user.
/// </summary>
public interface IDeviceTimeline
{
    /// <summary>Records mark <paramref name="index"/> (0, 1, ...) at the current end of the backend's queue, replacing any earlier mark of that index.</summary>
    void Mark(int index);

    /// <summary>Milliseconds of device time from mark <paramref name="from"/> to mark <paramref name="to"/>; waits until mark <paramref name="to"/> has been reached.</summary>
    double ElapsedMilliseconds(int from, int to);
}
