using System.Text.Json.Serialization;
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
    /// <summary>transformers' rope_type: linear, dynamic, llama3, yarn or longrope. Default llama3.</summary>
    public RopeScalingType Type { get; init; } = RopeScalingType.Llama3;

    /// <summary>Context extension factor (≥ 1); "factor". Default 1.</summary>
    public double Factor { get; init; } = 1.0;

    /// <summary>llama3: wavelengths above original / low_freq_factor are divided by the factor; "low_freq_factor". Default 1.</summary>
    public double LowFrequencyFactor { get; init; } = 1.0;

    /// <summary>llama3: wavelengths below original / high_freq_factor are kept; between the two they are blended;
    /// "high_freq_factor". Default 4.</summary>
    public double HighFrequencyFactor { get; init; } = 4.0;

    /// <summary>llama3, yarn and longrope: the context (positions) the model was pre-trained on; "original_max_position_embeddings"
    /// (Phi-3 keeps it at the top level of config.json). 0 (the default) means max_position_embeddings, as transformers'
    /// standardization fills it in; longrope needs it.</summary>
    public int OriginalMaxPositions { get; init; }

    /// <summary>yarn and longrope: the factor on cos and sin, or null for transformers' default (yarn: 0.1 ln(factor) + 1, or the
    /// mscale ratio; longrope: sqrt(1 + ln(s) / ln(original)) with s = max_position_embeddings / original when above 1, else
    /// 1); "attention_factor".</summary>
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

    /// <summary>longrope: the divisor of each pair's frequency (R/2 values for R rotated channels) while a call stays within
    /// <see cref="OriginalMaxPositions"/>; "short_factor". Null (the default, left out of the JSON) for other types.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyList<double>? ShortFactor { get; init; }

    /// <summary>longrope: the divisors once a call reaches past <see cref="OriginalMaxPositions"/>; "long_factor". Null (the
    /// default, left out of the JSON) for other types.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyList<double>? LongFactor { get; init; }

    /// <summary>Equal when every field is, the factor lists compared value by value.</summary>
    public bool Equals(RopeScaling? other) =>
        other is not null && Type == other.Type && Factor.Equals(other.Factor) && LowFrequencyFactor.Equals(other.LowFrequencyFactor)
        && HighFrequencyFactor.Equals(other.HighFrequencyFactor) && OriginalMaxPositions == other.OriginalMaxPositions
        && Nullable.Equals(AttentionFactor, other.AttentionFactor) && BetaFast.Equals(other.BetaFast) && BetaSlow.Equals(other.BetaSlow)
        && Nullable.Equals(Mscale, other.Mscale) && Nullable.Equals(MscaleAllDim, other.MscaleAllDim) && Truncate == other.Truncate
        && SameList(ShortFactor, other.ShortFactor) && SameList(LongFactor, other.LongFactor);

    private static bool SameList(IReadOnlyList<double>? a, IReadOnlyList<double>? b) =>
        ReferenceEquals(a, b) || (a is not null && b is not null && a.SequenceEqual(b));

    /// <summary>Every field, the factor lists' values written out (so two equal records print the same).</summary>
    public override string ToString()
    {
        static string List(IReadOnlyList<double>? l) => l is null ? "" : "[" + string.Join(", ", l.Select(x => x.ToString("R", System.Globalization.CultureInfo.InvariantCulture))) + "]";
        return $"RopeScaling {{ Type = {Type}, Factor = {Factor}, LowFrequencyFactor = {LowFrequencyFactor}, HighFrequencyFactor = {HighFrequencyFactor}, " +
            $"OriginalMaxPositions = {OriginalMaxPositions}, AttentionFactor = {AttentionFactor}, BetaFast = {BetaFast}, BetaSlow = {BetaSlow}, Mscale = {Mscale}, " +
            $"MscaleAllDim = {MscaleAllDim}, Truncate = {Truncate}, ShortFactor = {List(ShortFactor)}, LongFactor = {List(LongFactor)} }}";
    }

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Type, Factor, OriginalMaxPositions, AttentionFactor, ShortFactor?.Count ?? -1, LongFactor?.Count ?? -1);

    /// <summary>Throws <see cref="ArgumentException"/> naming the first inconsistent config.json field.</summary>
    public RopeScaling Validate()
    {
        if (!(Factor >= 1) || double.IsInfinity(Factor))
            throw new ArgumentException($"rope_scaling.factor ({Factor}) must be a finite number of at least 1");
        if (OriginalMaxPositions < 0)
            throw new ArgumentException($"rope_scaling.original_max_position_embeddings ({OriginalMaxPositions}) must be positive");
        if (Type == RopeScalingType.Llama3 && !(HighFrequencyFactor > LowFrequencyFactor && LowFrequencyFactor > 0))
            throw new ArgumentException($"rope_scaling.high_freq_factor ({HighFrequencyFactor}) must exceed low_freq_factor ({LowFrequencyFactor}) > 0");
        if (Type == RopeScalingType.LongRope)
        {
            if (ShortFactor is null) throw new ArgumentException("rope_scaling.short_factor is missing (rope_type 'longrope' needs it)");
            if (LongFactor is null) throw new ArgumentException("rope_scaling.long_factor is missing (rope_type 'longrope' needs it)");
            if (ShortFactor.Count != LongFactor.Count)
                throw new ArgumentException($"rope_scaling.long_factor has {LongFactor.Count} values and short_factor {ShortFactor.Count}; both need one per rotated pair");
            for (int i = 0; i < ShortFactor.Count; i++)
            {
                if (!(ShortFactor[i] > 0) || double.IsInfinity(ShortFactor[i])) throw new ArgumentException($"rope_scaling.short_factor[{i}] ({ShortFactor[i]}) must be positive and finite");
                if (!(LongFactor[i] > 0) || double.IsInfinity(LongFactor[i])) throw new ArgumentException($"rope_scaling.long_factor[{i}] ({LongFactor[i]}) must be positive and finite");
            }
            if (OriginalMaxPositions <= 0)
                throw new ArgumentException("rope_scaling.original_max_position_embeddings is missing (rope_type 'longrope' switches factors there)");
            if (AttentionFactor is double a && !(a > 0)) throw new ArgumentException($"rope_scaling.attention_factor ({a}) must be positive");
        }
        else if (ShortFactor is not null || LongFactor is not null)
            throw new ArgumentException($"rope_scaling.short_factor and long_factor belong to rope_type 'longrope', not '{Type}'");
        if (Type == RopeScalingType.Yarn)
        {
            if (AttentionFactor is double a && !(a > 0)) throw new ArgumentException($"rope_scaling.attention_factor ({a}) must be positive");
            if (!(BetaFast > 0) || !(BetaSlow > 0)) throw new ArgumentException($"rope_scaling.beta_fast ({BetaFast}) and beta_slow ({BetaSlow}) must be positive");
        }
        return this;
    }

    /// <summary>
    /// The frequencies for base <paramref name="theta"/>, head size <paramref name="headSize"/> (the rotated channels R under
    /// partial rotary embedding: transformers' dim) and a config whose max_position_embeddings is
    /// <paramref name="maxPositions"/> (the original context where this record has none).
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
            case RopeScalingType.LongRope:
            {
                if (ShortFactor!.Count != half)
                    throw new ArgumentException($"rope_scaling.short_factor has {ShortFactor.Count} values; {headSize} rotated channels need {half}");
                // transformers: inv_freq = 1 / (factor_i theta^(2i/R)), the short factors up to the original context and the
                // long ones past it (per forward, from the largest position); cos and sin times the attention factor, from
                // s = max_position_embeddings / original.
                var shortTable = new double[half];
                var longTable = new double[half];
                for (int i = 0; i < half; i++)
                {
                    double pos = Math.Pow(theta, 2.0 * i / headSize);
                    shortTable[i] = 1.0 / (ShortFactor[i] * pos);
                    longTable[i] = 1.0 / (LongFactor![i] * pos);
                }
                return new RopeFrequencies(theta)
                {
                    InverseFrequencies = shortTable, LongInverseFrequencies = longTable, LongOriginalLength = OriginalMaxPositions,
                    AttentionFactor = LongRopeAttentionFactor(maxPositions),
                };
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(Type), Type, "unknown RoPE scaling type");
        }
    }

    /// <summary>LongRoPE's factor on cos and sin: attention_factor, else sqrt(1 + ln(s) / ln(original)) for s = max / original above 1, else 1.</summary>
    public double LongRopeAttentionFactor(int maxPositions)
    {
        if (AttentionFactor is double a) return a;
        double scale = (double)maxPositions / OriginalMaxPositions;
        return scale <= 1 ? 1.0 : Math.Sqrt(1 + Math.Log(scale) / Math.Log(OriginalMaxPositions));
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
