namespace Tessera.Inference.Sampling;

/// <summary>How the next token is chosen from the logits.</summary>
public sealed record SamplingOptions
{
    /// <summary>Softmax temperature; 0 means greedy (argmax). Default 1.0.</summary>
    public double Temperature { get; init; } = 1.0;

    /// <summary>Keep only the K most likely tokens (0: all). Default 0.</summary>
    public int TopK { get; init; }

    /// <summary>Keep the smallest set of tokens whose probability sums to at least P (1: all). Default 1.0.</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary>Seed of the sampling random stream; default 0.</summary>
    public ulong Seed { get; init; }

    /// <summary>
    /// Whether neither top-k nor top-p removes a candidate from a row of <paramref name="vocab"/> logits (top-k 0 or at least
    /// the row, top-p 1 as the device's float reads it): the draw is the Gumbel-max over the row at the temperature
    /// (<see cref="Tessera.Tensors.IBackend.SampleRows"/>'s temperatureOnly).
    /// </summary>
    public bool TemperatureOnly(int vocab) => (TopK == 0 || TopK >= vocab) && (float)TopP >= 1f;

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid field.</summary>
    public SamplingOptions Validate()
    {
        if (!(Temperature >= 0)) throw new ArgumentException($"sampling: Temperature ({Temperature}) must be >= 0");
        if (TopK < 0) throw new ArgumentException($"sampling: TopK ({TopK}) must be >= 0");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"sampling: TopP ({TopP}) must lie in (0, 1]");
        return this;
    }

    /// <summary>Greedy decoding.</summary>
    public static SamplingOptions Greedy { get; } = new() { Temperature = 0 };
}
