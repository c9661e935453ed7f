using Tessera.Distributed;
using Tessera.Nn;

namespace Tessera.Training;

/// <summary>
/// How a <see cref="Trainer"/>'s gradients are synchronised and its parameters updated: the strategy the one training
/// loop is given. <see cref="SingleDevice"/> communicates nothing; <c>BucketedDataParallel</c> all-reduces (or, ZeRO-2,
/// reduce-scatters) gradient buckets as backward produces them and shards the optimizer (ZeRO-1/2);
/// <c>FullyShardedDataParallel</c> (ZeRO-3) shards the parameters themselves; either may offload the optimizer to the
/// host. The gradient reduction and the update are one strategy because ZeRO couples them: who updates a range is
/// who receives its reduced gradient. Tensor-parallel communication is not here: it lives in the model's parallel layers.
/// </summary>
public interface IDataParallelism
{
    /// <summary>The data-parallel group (its ranks each train a slice of every batch), or null on one device.</summary>
    ProcessGroup? Group { get; }

    /// <summary>Updates taken; the next update uses StepCount + 1 for bias correction.</summary>
    long StepCount { get; set; }

    /// <summary>Whether the model's weights have still to be written (a model declared without storage for ZeRO-3).</summary>
    bool WeightsPending { get; }

    /// <summary>
    /// Whether the strategy reduces gradients after every micro-batch's backward (ZeRO-3, which keeps no whole gradient
    /// across micro-batches) rather than only after the step's last (the accumulated gradient).
    /// </summary>
    bool ReducesEveryMicroBatch { get; }

    /// <summary>Zeroes the gradients before a step's first micro-batch.</summary>
    void ZeroGrad();

    /// <summary>Marks the next micro-batch as the first and/or last of its step (buckets communicate on the last).</summary>
    void BeginMicroBatch(bool first, bool last);

    /// <summary>Waits for every gradient reduction of the step (after the last micro-batch's backward).</summary>
    void FinishGradients();

    /// <summary>One AdamW update of what this rank owns, clipped by the norm of the whole gradient.</summary>
    void Step(double learningRate);

    /// <summary>After the update: ZeRO-1/2 gather the updated shards; ZeRO-3 releases every gathered unit.</summary>
    void AfterUpdate();

    /// <summary>Releases whatever a pass left gathered (ZeRO-3 after an evaluation forward, before a checkpoint); a no-op elsewhere.</summary>
    void ReleaseAll();

    /// <summary>The global gradient norm of the last step (reads the device: call only when logging).</summary>
    double LastGradNorm();

    /// <summary>Collectives one step issues on <see cref="Group"/> for gradients and the update (the trainer's loss all-reduce not counted).</summary>
    int CollectivesPerStep(int accumulationSteps);

    /// <summary>
    /// Writes the authoritative values <paramref name="values"/> (this rank's local tensor of <paramref name="parameter"/>,
    /// in F64) wherever this rank keeps them: the whole arena (masters, then the 16-bit copy), the owned ranges of shards,
    /// the offloaded host masters. Not collective.
    /// </summary>
    void WriteWeights(Parameter parameter, ReadOnlySpan<double> values);

    /// <summary>Records that every weight has been written (after <see cref="WriteWeights"/> of every parameter).</summary>
    void MarkWeightsWritten();
}
