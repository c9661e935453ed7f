namespace Tessera.Tensors;

/// <summary>Hyper-parameters of one AdamW update.</summary>
/// <param name="LearningRate">Step size at this step (after the schedule).</param>
/// <param name="Beta1">First-moment decay; default 0.9.</param>
/// <param name="Beta2">Second-moment decay; default 0.95 (GPT-2 / Llama pre-training) .</param>
/// <param name="Epsilon">Denominator guard; default 1e-8.</param>
/// <param name="WeightDecay">Decoupled weight decay coefficient for this range (0 for norms and biases).</param>
/// <param name="Step">1-based step count t used for bias correction.</param>
/// <param name="MaxGradNorm">Global-norm clipping threshold; used only when the sum of squares is given; 0 disables.</param>
public readonly record struct AdamWStep(
    double LearningRate,
    double Beta1,
    double Beta2,
    double Epsilon,
    double WeightDecay,
    long Step,
    double MaxGradNorm);
