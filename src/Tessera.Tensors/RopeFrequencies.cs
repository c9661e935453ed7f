namespace Tessera.Tensors;

/// <summary>
/// What the RoPE ops rotate by: pair i of a head of size D turns by position × inverse frequency i, and the cosine and
/// sine are multiplied by <see cref="AttentionFactor"/> (YaRN's cos/sin scale; 1 otherwise). The inverse frequencies are
/// either Θ^(-2i/D) from <see cref="Theta"/> (plain RoPE; a bare theta converts implicitly) or an explicit table
/// (<see cref="InverseFrequencies"/>, D/2 values computed by the model from its scaling: linear, llama3, YaRN).
/// Dynamic NTK scaling (<see cref="DynamicFactor"/>) depends on the length a call reaches, so it stays a rule that every
/// backend evaluates per call from the positions it reads (on the device for a recorded decode step): at a call whose
/// largest position is L - 1 with L &gt; <see cref="DynamicOriginalLength"/>, the base becomes
/// Θ' = Θ ((factor L / original) - (factor - 1))^(D / (D - 2)) (transformers' dynamic rope_type).
/// All values are doubles, so a CPU and a CUDA backend read the same frequencies.
/// </summary>
public sealed record RopeFrequencies
{
    /// <summary>Plain RoPE at base <paramref name="theta"/>.</summary>
    public RopeFrequencies(double theta)
    {
        if (!(theta > 0) || double.IsInfinity(theta)) throw new ArgumentOutOfRangeException(nameof(theta), theta, "RoPE theta must be positive and finite");
        Theta = theta;
    }

    /// <summary>RoPE base Θ (default 10000): the frequencies when there is no table, and the base dynamic NTK rescales.</summary>
    public double Theta { get; }

    /// <summary>
    /// The inverse frequencies of pairs 0 .. D/2 - 1 (radians per position), or null for Θ^(-2i/D). A table fixes the head
    /// size D = 2 × its length. Default null.
    /// </summary>
    public IReadOnlyList<double>? InverseFrequencies { get; init; }

    /// <summary>Multiplier on cos and sin (so q·k scales by its square); YaRN's attention factor. Default 1.</summary>
    public double AttentionFactor { get; init; } = 1.0;

    /// <summary>Dynamic NTK scaling factor, or 0 (the default) for none.</summary>
    public double DynamicFactor { get; init; }

    /// <summary>Dynamic NTK: the length (positions) up to which the unscaled frequencies apply. Default 0.</summary>
    public int DynamicOriginalLength { get; init; }

    /// <summary>Whether the frequencies depend on the length a call reaches (dynamic NTK).</summary>
    public bool IsDynamic => DynamicFactor > 0;

    /// <summary>A bare theta is plain RoPE.</summary>
    public static implicit operator RopeFrequencies(double theta) => new(theta);

    /// <summary>Checks the description against head size <paramref name="headSize"/>; throws naming the field.</summary>
    public void Validate(int headSize)
    {
        if (headSize <= 0 || headSize % 2 != 0) throw new ArgumentException($"RopeFrequencies: head size {headSize} must be positive and even");
        if (InverseFrequencies is { } table)
        {
            if (table.Count * 2 != headSize)
                throw new ArgumentException($"RopeFrequencies: InverseFrequencies has {table.Count} values; a head of size {headSize} needs {headSize / 2}");
            for (int i = 0; i < table.Count; i++)
                if (!(table[i] >= 0) || double.IsInfinity(table[i]))
                    throw new ArgumentException($"RopeFrequencies: InverseFrequencies[{i}] = {table[i]} is not a finite non-negative number");
        }
        if (!(AttentionFactor > 0) || double.IsInfinity(AttentionFactor))
            throw new ArgumentException($"RopeFrequencies: AttentionFactor ({AttentionFactor}) must be positive and finite");
        if (DynamicFactor < 0 || double.IsNaN(DynamicFactor) || double.IsInfinity(DynamicFactor))
            throw new ArgumentException($"RopeFrequencies: DynamicFactor ({DynamicFactor}) must be 0 (off) or positive");
        if (IsDynamic && DynamicOriginalLength <= 0)
            throw new ArgumentException($"RopeFrequencies: DynamicOriginalLength ({DynamicOriginalLength}) must be positive with dynamic scaling");
        if (IsDynamic && headSize <= 2) throw new ArgumentException($"RopeFrequencies: dynamic NTK scaling needs a head size above 2, got {headSize}");
    }

    /// <summary>
    /// The inverse frequencies (D/2 values, radians per position) of a call whose positions end at
    /// <paramref name="length"/> - 1 (only dynamic scaling reads the length).
    /// </summary>
    public double[] At(int headSize, int length)
    {
        Validate(headSize);
        int half = headSize / 2;
        var result = new double[half];
        if (IsDynamic && length > DynamicOriginalLength)
        {
            double scaledBase = DynamicBase(headSize, length);
            for (int i = 0; i < half; i++) result[i] = Math.Pow(scaledBase, -2.0 * i / headSize);
        }
        else if (InverseFrequencies is { } table)
        {
            for (int i = 0; i < half; i++) result[i] = table[i];
        }
        else
        {
            for (int i = 0; i < half; i++) result[i] = Math.Pow(Theta, -2.0 * i / headSize);
        }
        return result;
    }

    /// <summary>Equal when every field is, the table compared value by value (so a backend can key its copies by content).</summary>
    public bool Equals(RopeFrequencies? other) =>
        other is not null && Theta.Equals(other.Theta) && AttentionFactor.Equals(other.AttentionFactor)
        && DynamicFactor.Equals(other.DynamicFactor) && DynamicOriginalLength == other.DynamicOriginalLength
        && (ReferenceEquals(InverseFrequencies, other.InverseFrequencies)
            || (InverseFrequencies is not null && other.InverseFrequencies is not null && InverseFrequencies.SequenceEqual(other.InverseFrequencies)));

    /// <inheritdoc/>
    public override int GetHashCode()
    {
        var hash = new HashCode();
        hash.Add(Theta);
        hash.Add(AttentionFactor);
        hash.Add(DynamicFactor);
        hash.Add(DynamicOriginalLength);
        if (InverseFrequencies is { } table) foreach (var f in table) hash.Add(f);
        return hash.ToHashCode();
    }

    /// <summary>Dynamic NTK's base at <paramref name="length"/> positions (the formula CUDA's rope_inv_freq repeats).</summary>
    public double DynamicBase(int headSize, int length) =>
        Theta * Math.Pow(DynamicFactor * length / DynamicOriginalLength - (DynamicFactor - 1), (double)headSize / (headSize - 2));
}
