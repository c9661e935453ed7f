namespace Tessera.Training;

/// <summary>What <see cref="TrainingLoop"/> needs from a trainer (single-device or data-parallel).</summary>
internal interface ILoopTrainer
{
    TrainerOptions Options { get; }

    /// <summary>Updates completed so far.</summary>
    int Step { get; }

    /// <summary>Tokens consumed by one update over all ranks.</summary>
    long TokensPerStep { get; }

    /// <summary>Whether this trainer reports progress (rank 0 of a data-parallel group; always for one device).</summary>
    bool Reports { get; }

    /// <summary>Prefix naming the rank in error messages ("" on one device).</summary>
    string Where { get; }

    double LearningRateAt(int step);

    double TrainStep();

    double LastGradNorm();

    /// <summary>
    /// Whether to stop before the next step, given whether this rank was asked to (its cancellation token). One device:
    /// <paramref name="requestedHere"/>. Data-parallel ranks: collective (called by every rank at every step boundary
    /// while a cancellable token is given), true on all ranks when any rank was asked, so all stop at the same step.
    /// </summary>
    bool StopAgreed(bool requestedHere);

    /// <summary>The validation loss when an evaluation is due after the current step, else null.</summary>
    double? ValidationLossIfDue();
}
