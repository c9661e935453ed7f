namespace Tessera.Nn.Adapters;

/// <summary>
/// Low-rank adaptation (Hu et al. 2021, as Hugging Face PEFT implements it): each targeted projection y = x W^T + b becomes
/// y = x W^T + b + (alpha / r) dropout(x) A^T B^T with A (r, in) and B (out, r) trained and W frozen.
/// </summary>
public sealed record LoraOptions
{
    /// <summary>The rank r of each adapter (PEFT's <c>r</c>); at least 1. Default 8.</summary>
    public int Rank { get; init; } = 8;

    /// <summary>PEFT's <c>lora_alpha</c>: the adapter's output is scaled by alpha / r. Positive. Default 8 (PEFT's default).</summary>
    public double Alpha { get; init; } = 8;

    /// <summary>PEFT's <c>lora_dropout</c>: the probability of zeroing an input element of the low-rank path in training, in [0, 1). Default 0.</summary>
    public double Dropout { get; init; }

    /// <summary>Seed of the adapters' initialization (<see cref="LoraAdapters.Initialize"/>) and of the dropout masks (each adapted layer draws its own stream from it). Default 0.</summary>
    public int Seed { get; init; }

    /// <summary>The layers adapted (see <see cref="LoraTarget"/>); at least one.</summary>
    public required IReadOnlyList<LoraTarget> Targets { get; init; }

    /// <summary>The factor alpha / r on the adapters' output.</summary>
    public double Scaling => Alpha / Rank;

    /// <summary>Checks the fields; the message names the field.</summary>
    public LoraOptions Validate()
    {
        if (Rank < 1) throw new ArgumentException($"LoRA: Rank (r = {Rank}) must be at least 1");
        if (!(Alpha > 0) || !double.IsFinite(Alpha)) throw new ArgumentException($"LoRA: Alpha ({Alpha}) must be positive");
        if (!(Dropout >= 0 && Dropout < 1)) throw new ArgumentException($"LoRA: Dropout ({Dropout}) must lie in [0, 1)");
        if (Targets is null || Targets.Count == 0) throw new ArgumentException("LoRA: Targets is empty; name at least one layer to adapt");
        return this;
    }

    /// <summary>The targets that apply to layer <paramref name="layer"/>, in order.</summary>
    public IEnumerable<LoraTarget> TargetsOf(string layer) => Targets.Where(t => t.Matches(layer));
}
