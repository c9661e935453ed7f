using Tessera.Models;

namespace Tessera.Cli.Commands.Train;

/// <summary>How a training run ended.</summary>
/// <param name="Step">Completed updates.</param>
/// <param name="Checkpoint">The last checkpoint written (or resumed from), or null.</param>
/// <param name="Elapsed">Wall time of the training loop.</param>
/// <param name="Reports">Whether this process reports (rank 0).</param>
/// <param name="SampleModel">The trained model when this process holds it whole (one device), else null.</param>
public sealed record TrainOutcome(int Step, string? Checkpoint, TimeSpan Elapsed, bool Reports, Transformer? SampleModel);
