namespace Tessera.Training.Optim;

/// <summary>
/// Linear warmup to the peak learning rate, then a half cosine down to the floor at the last step
/// (GPT-2/llm.c style).
/// </summary>
/// <param name="PeakLearningRate">Learning rate at the end of warmup.</param>
/// <param name="MinLearningRate">Learning rate at the last step.</param>
/// <param name="WarmupSteps">Steps of linear warmup (0 disables warmup).</param>
/// <param name="TotalSteps">Steps of the whole run.</param>
public sealed record CosineSchedule(double PeakLearningRate, double MinLearningRate, int WarmupSteps, int TotalSteps)
{
    /// <summary>Learning rate for 0-based step <paramref name="step"/>.</summary>
    public double At(int step)
    {
        if (step < WarmupSteps) return PeakLearningRate * (step + 1) / WarmupSteps;
        int decaySteps = Math.Max(1, TotalSteps - WarmupSteps);
        double progress = Math.Clamp((double)(step - WarmupSteps) / decaySteps, 0, 1);
        double cosine = 0.5 * (1 + Math.Cos(Math.PI * progress));
        return MinLearningRate + (PeakLearningRate - MinLearningRate) * cosine;
    }
}
