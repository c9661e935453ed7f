namespace Tessera.Inference.Serving;

/// <summary>
/// Where the engine's steps of one kind (decode-only, or mixed with prefill chunks) spent their time, summed over the
/// steps, in seconds of the engine thread's clock: planning the step (<see cref="Schedule"/>), writing its metadata and
/// copying it to the device (<see cref="Metadata"/>: tokens, positions, slots, block tables), the forward pass with the
/// device argmax (<see cref="Forward"/>: launches or a graph replay, and the device's work), reading the sampled ids and
/// any logits back (<see cref="Readback"/>), and the host's work on the results (<see cref="Emit"/>: sampling from logits,
/// incremental detokenization, stop strings, the events to the clients, the scheduler's bookkeeping). The device phases
/// are separated only when <see cref="EngineOptions.SeparateStepPhases"/> synchronizes between them; otherwise the
/// forward's device time shows up in <see cref="Readback"/>, the first wait.
/// </summary>
/// <param name="Steps">Steps of this kind.</param>
/// <param name="Rows">Token rows they computed (decode tokens and prefill chunk tokens).</param>
/// <param name="Schedule">Seconds in the scheduler.</param>
/// <param name="Metadata">Seconds writing the step's metadata and copying it host to device.</param>
/// <param name="Forward">Seconds enqueueing (or replaying) the forward pass, and with separated phases its device time.</param>
/// <param name="Readback">Seconds copying the sampled ids (and logits) device to host.</param>
/// <param name="Emit">Seconds sampling, detokenizing and emitting events on the host.</param>
/// <param name="DeviceBusy">Seconds of the device's clock from each step's metadata copy to the end of its forward pass, with
/// <see cref="EngineOptions.MeasureDeviceTime"/> (0 without).</param>
/// <param name="DeviceIdle">Seconds of the device's clock between the previous step's forward pass and each step's metadata copy:
/// the device waiting for the host (0 without <see cref="EngineOptions.MeasureDeviceTime"/>).</param>
public sealed record StepPhaseTimes(long Steps, long Rows, double Schedule, double Metadata, double Forward, double Readback, double Emit,
    double DeviceBusy = 0, double DeviceIdle = 0)
{
    /// <summary>No steps.</summary>
    public static StepPhaseTimes Zero { get; } = new(0, 0, 0, 0, 0, 0, 0);

    /// <summary>All host phases together, in seconds (the device columns are another clock's view of the same steps).</summary>
    public double Total => Schedule + Metadata + Forward + Readback + Emit;

    /// <summary>The steps since <paramref name="earlier"/> (a snapshot of the same counters).</summary>
    public StepPhaseTimes Minus(StepPhaseTimes earlier)
    {
        ArgumentNullException.ThrowIfNull(earlier);
        return new(Steps - earlier.Steps, Rows - earlier.Rows, Schedule - earlier.Schedule, Metadata - earlier.Metadata,
            Forward - earlier.Forward, Readback - earlier.Readback, Emit - earlier.Emit, DeviceBusy - earlier.DeviceBusy, DeviceIdle - earlier.DeviceIdle);
    }

    /// <summary>These times plus <paramref name="other"/>'s.</summary>
    public StepPhaseTimes Plus(StepPhaseTimes other)
    {
        ArgumentNullException.ThrowIfNull(other);
        return new(Steps + other.Steps, Rows + other.Rows, Schedule + other.Schedule, Metadata + other.Metadata,
            Forward + other.Forward, Readback + other.Readback, Emit + other.Emit, DeviceBusy + other.DeviceBusy, DeviceIdle + other.DeviceIdle);
    }
}
