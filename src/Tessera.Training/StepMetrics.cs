namespace Tessera.Training;

/// <summary>What one logged training step measured.</summary>
/// <param name="Step">1-based index of the completed update.</param>
/// <param name="TotalSteps">Updates in the run.</param>
/// <param name="Loss">Mean training loss of the step (nats per token).</param>
/// <param name="LearningRate">Learning rate used.</param>
/// <param name="GradNorm">Global gradient norm before clipping.</param>
/// <param name="TokensPerSecond">Throughput of this step.</param>
/// <param name="StepMilliseconds">Wall time of the step.</param>
/// <param name="ValidationLoss">Mean validation loss when evaluated at this step.</param>
/// <param name="RouterAuxLoss">A mixture-of-experts model's load-balancing loss (coefficient included, summed over the
/// blocks this rank holds) of the step's last micro-batch, when the coefficient is above 0; not part of <paramref name="Loss"/>.</param>
public sealed record StepMetrics(int Step, int TotalSteps, double Loss, double LearningRate, double GradNorm,
    double TokensPerSecond, double StepMilliseconds, double? ValidationLoss, double? RouterAuxLoss = null);
