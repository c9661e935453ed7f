namespace Tessera.Training.Optim;

/// <summary>AdamW hyper-parameters that stay fixed through a run.</summary>
public sealed record AdamWOptions
{
    /// <summary>First-moment decay; default 0.9.</summary>
    public double Beta1 { get; init; } = 0.9;

    /// <summary>Second-moment decay; default 0.95.</summary>
    public double Beta2 { get; init; } = 0.95;

    /// <summary>Denominator guard; default 1e-8.</summary>
    public double Epsilon { get; init; } = 1e-8;

    /// <summary>Decoupled weight decay for matrices and embeddings (never for norms and biases); default 0.1.</summary>
    public double WeightDecay { get; init; } = 0.1;

    /// <summary>Global gradient-norm clipping threshold; 0 disables clipping. Default 1.0.</summary>
    public double MaxGradNorm { get; init; } = 1.0;
}
