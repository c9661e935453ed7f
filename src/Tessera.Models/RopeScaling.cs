using Tessera.Tensors;

namespace Tessera.Models;

/// <summary>
/// RoPE scaling as transformers defines it (config.json's rope_scaling / rope_parameters; the formulas of
/// transformers' modeling_rope_utils, evaluated in double): how the inverse frequencies Θ^(-2i/D) are stretched to
/// serve contexts longer than the one the model was trained on. <see cref="Frequencies"/> turns it into the
/// <see cref="RopeFrequencies"/> the backend ops take. Validated by <see cref="Validate"/> with messages naming the
/// config.json field.
/// </summary>
public sealed record RopeScaling
{
    /// <summary>transformers' rope_type: linear, dynamic, llama3 or yarn. Default llama3.</summary>
    public RopeScalingType Type { get; init; } = RopeScalingType.Llama3;

    /// <summary>Context extension factor (≥ 1); "factor". Default 1.</summary>
    public double Factor { get; init; } = 1.0;

    /// <summary>llama3: wavelengths above original / low_freq_factor are divided by the factor; "low_freq_factor". Default 1.</summary>
    public double LowFrequencyFactor { get; init; } = 1.0;

    /// <summary>llama3: wavelengths below original / high_freq_factor are kept; between the two they are blended;
    /// "high_freq_factor". Default 4.</summary>
    public double HighFrequencyFactor { get; init; } = 4.0;

    /// <summary>llama3 and yarn: the context (positions) the model was pre-trained on; "original_max_position_embeddings".
    /// 0 (the default) means max_position_embeddings, as transformers' standardization fills it in.</summary>
    public int OriginalMaxPositions { get; init; }

    /// <summary>yarn: the factor on cos and sin, or null for transformers' default (0.1 ln(factor) + 1, or the mscale
    /// ratio); "attention_factor".</summary>
    public double? AttentionFactor { get; init; }

    /// <summary>yarn: rotations where extrapolation starts; "beta_fast". Default 32.</summary>
    public double BetaFast { get; init; } = 32;

    /// <summary>yarn: rotations where interpolation is complete; "beta_slow". Default 1.</summary>
    public double BetaSlow { get; init; } = 1;

    /// <summary>yarn: "mscale" (DeepSeek's), or null. With <see cref="MscaleAllDim"/> it sets the default attention factor.</summary>
    public double? Mscale { get; init; }

    /// <summary>yarn: "mscale_all_dim", or null.</summary>
    public double? MscaleAllDim { get; init; }

    /// <summary>yarn: whether the correction range is rounded out to whole dimensions; "truncate". Default true.</summary>
    public bool Truncate { get; init; } = true;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first inconsistent config.json field.</summary>
    public RopeScaling Validate()
    {
        if (!(Factor >= 1) || double.IsInfinity(Factor))
            throw new ArgumentException($"rope_scaling.factor ({Factor}) must be a finite number of at least 1");
        if (OriginalMaxPositions < 0)
            throw new ArgumentException($"rope_scaling.original_max_position_embeddings ({OriginalMaxPositions}) must be positive");
        if (Type == RopeScalingType.Llama3 && !(HighFrequencyFactor > LowFrequencyFactor && LowFrequencyFactor > 0))
            throw new ArgumentException($"rope_scaling.high_freq_factor ({HighFrequencyFactor}) must exceed low_freq_factor ({LowFrequencyFactor}) > 0");
        if (Type == RopeScalingType.Yarn)
        {
            if (AttentionFactor is double a && !(a > 0)) throw new ArgumentException($"rope_scaling.attention_factor ({a}) must be positive");
            if (!(BetaFast > 0) || !(BetaSlow > 0)) throw new ArgumentException($"rope_scaling.beta_fast ({BetaFast}) and beta_slow ({BetaSlow}) must be positive");
        }
        return this;
    }

    /// <summary>
    /// The frequencies for base <paramref name="theta"/>, head size <paramref name="headSize"/> and a config whose
    /// max_position_embeddings is <paramref name="maxPositions"/> (the original context where this record has none).
    /// </summary>
    public RopeFrequencies Frequencies(double theta, int headSize, int maxPositions)
    {
        Validate();
        int half = headSize / 2;
        var inv = new double[half];
        for (int i = 0; i < half; i++) inv[i] = 1.0 / Math.Pow(theta, 2.0 * i / headSize);
        double original = OriginalMaxPositions > 0 ? OriginalMaxPositions : maxPositions;
        switch (Type)
        {
            case RopeScalingType.Linear:
                for (int i = 0; i < half; i++) inv[i] /= Factor;
                return new RopeFrequencies(theta) { InverseFrequencies = inv };
            case RopeScalingType.Dynamic:
                // transformers' dynamic rope_type scales from max_position_embeddings, whatever original_max_position_embeddings says.
                return new RopeFrequencies(theta) { DynamicFactor = Factor, DynamicOriginalLength = maxPositions };
            case RopeScalingType.Llama3:
            {
                double lowWavelength = original / LowFrequencyFactor, highWavelength = original / HighFrequencyFactor;
                for (int i = 0; i < half; i++)
                {
                    double wavelength = 2 * Math.PI / inv[i];
                    if (wavelength > lowWavelength) inv[i] /= Factor;                   // low frequencies: interpolated
                    else if (wavelength >= highWavelength)                              // between: blended
                    {
                        double smooth = (original / wavelength - LowFrequencyFactor) / (HighFrequencyFactor - LowFrequencyFactor);
                        inv[i] = (1 - smooth) * inv[i] / Factor + smooth * inv[i];
                    }
                }
                return new RopeFrequencies(theta) { InverseFrequencies = inv };
            }
            case RopeScalingType.Yarn:
            {
                double CorrectionDimension(double rotations) =>
                    headSize * Math.Log(original / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
                double low = CorrectionDimension(BetaFast), high = CorrectionDimension(BetaSlow);
                if (Truncate) { low = Math.Floor(low); high = Math.Ceiling(high); }
                low = Math.Max(low, 0);
                high = Math.Min(high, headSize - 1);
                if (low == high) high += 0.001;                                         // transformers' guard against 0/0
                for (int i = 0; i < half; i++)
                {
                    double ramp = Math.Clamp((i - low) / (high - low), 0, 1);
                    double extrapolation = 1 - ramp;                                    // 1: keep the frequency, 0: divide it
                    double pos = Math.Pow(theta, 2.0 * i / headSize);
                    inv[i] = 1.0 / (Factor * pos) * (1 - extrapolation) + 1.0 / pos * extrapolation;
                }
                return new RopeFrequencies(theta) { InverseFrequencies = inv, AttentionFactor = YarnAttentionFactor() };
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(Type), Type, "unknown RoPE scaling type");
        }
    }

    /// <summary>YaRN's factor on cos and sin: attention_factor, else the mscale ratio, else 0.1 ln(factor) + 1.</summary>
    public double YarnAttentionFactor()
    {
        static double GetMscale(double scale, double m) => scale <= 1 ? 1.0 : 0.1 * m * Math.Log(scale) + 1.0;
        if (AttentionFactor is double a) return a;
        if (Mscale is double m && m != 0 && MscaleAllDim is double mAll && mAll != 0)
            return GetMscale(Factor, m) / GetMscale(Factor, mAll);
        return GetMscale(Factor, 1.0);
    }
}
