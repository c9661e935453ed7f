namespace Tessera.Tests.Cuda.Training;

/// <summary>
/// Two runs' per-step losses (<see cref="TinyTrainingRun.Compare"/>) and how far apart they are: the relative difference of
/// each step's loss to the first run's, its mean and its largest (with the step, from 1); <see cref="ToString"/> is the line the
/// precision tests print and put in their failure messages.
/// </summary>
internal sealed record LossCurveComparison(string FirstName, double[] First, string SecondName, double[] Second)
{
    /// <summary>|second - first| / first, per step.</summary>
    public double[] Relative { get; } = First.Zip(Second, (a, b) => Math.Abs(b - a) / a).ToArray();

    public double Mean => Relative.Average();

    public double Max => Relative.Max();

    /// <summary>The step (from 1) of the largest relative difference.</summary>
    public int MaxStep => Array.IndexOf(Relative, Max) + 1;

    public override string ToString() =>
        $"{FirstName} {First[0]:F5} -> {First[^1]:F5}, {SecondName} {Second[0]:F5} -> {Second[^1]:F5}; mean relative difference {Mean:P4}, max {Max:P4} at step {MaxStep}";
}
