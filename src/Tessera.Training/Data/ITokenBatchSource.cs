namespace Tessera.Training.Data;

/// <summary>
/// Where a <see cref="Trainer"/> reads its (B, T) batches: inputs and their targets, a target of -1 being ignored by the loss
/// (padding, or the non-assistant tokens of a chat example). <see cref="TokenDataLoader"/> reads pretraining shards (every
/// target counted); <see cref="ChatExampleLoader"/> reads fine-tuning conversations. The position is the complete resume state.
/// </summary>
public interface ITokenBatchSource
{
    /// <summary>Rows per batch (B).</summary>
    int BatchSize { get; }

    /// <summary>Tokens per row (T).</summary>
    int SequenceLength { get; }

    /// <summary>This rank's slice of every global batch.</summary>
    int Rank { get; }

    /// <summary>Data-parallel ranks the global batch is split over.</summary>
    int WorldSize { get; }

    /// <summary>
    /// Whether targets may be -1 (ignored), so ranks count different numbers of targets in a step: the trainer then sums the
    /// count over the data-parallel group (one scalar all-reduce per step) to take the mean over the global batch. False for
    /// pretraining data, where every rank counts B T targets per micro-batch.
    /// </summary>
    bool IgnoresTargets { get; }

    /// <summary>The position of the next batch (part of a checkpoint).</summary>
    DataPosition Position { get; set; }

    /// <summary>Fills <paramref name="inputs"/> and <paramref name="targets"/> (B * T each, row-major) with the next batch and advances.</summary>
    void NextBatch(Span<int> inputs, Span<int> targets);
}
