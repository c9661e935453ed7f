namespace Tessera.Training.Benchmarks;

/// <summary>
/// Numbered timestamps taken in a backend's order of execution, so that the phases of an asynchronous step can be
/// timed without waiting inside it (on a GPU: CUDA events recorded on the backend's stream). Tessera.Training does not
/// reference Tessera.Cuda, so the GPU implementation lives with the caller; without a timeline
/// <see cref="TrainingStepBenchmark"/> times whole steps on the host clock.
/// </summary>
public interface IDeviceTimeline
{
    /// <summary>Records mark <paramref name="index"/> (0, 1, ...) at the current end of the backend's queue, replacing any earlier mark of that index.</summary>
    void Mark(int index);

    /// <summary>Milliseconds of device time from mark <paramref name="from"/> to mark <paramref name="to"/>; waits until mark <paramref name="to"/> has been reached.</summary>
    double ElapsedMilliseconds(int from, int to);
}
