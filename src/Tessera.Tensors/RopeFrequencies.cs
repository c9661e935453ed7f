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
/// Partial rotary embedding (<see cref="RotaryDimensions"/> R below the head size, Phi-4-mini's partial_rotary_factor) rotates
/// the first R channels of each head as a head of size R (pairs (i, i + R/2), frequencies over R) and passes the rest
/// through. LongRoPE (<see cref="LongInverseFrequencies"/>) switches, per call, from the table to the long one once the
/// call reaches past <see cref="LongOriginalLength"/> positions (transformers' longrope rope_type).
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

    /// <summary>
    /// Channels R of each head that rotate (the first R; the rest pass through), or 0 (the default) for the whole head.
    /// Positive and even when set; frequencies and tables are then over R (R/2 pairs).
    /// </summary>
    public int RotaryDimensions { get; init; }

    /// <summary>
    /// LongRoPE's table for calls reaching past <see cref="LongOriginalLength"/> positions (R/2 values), or null (the default).
    /// Needs <see cref="InverseFrequencies"/> (the short table) beside it.
    /// </summary>
    public IReadOnlyList<double>? LongInverseFrequencies { get; init; }

    /// <summary>LongRoPE: the length (positions) up to which <see cref="InverseFrequencies"/> apply. Default 0.</summary>
    public int LongOriginalLength { get; init; }

    /// <summary>Whether a call past <see cref="LongOriginalLength"/> switches to <see cref="LongInverseFrequencies"/>.</summary>
    public bool SwitchesToLong => LongInverseFrequencies is not null;

    /// <summary>The channels of a head of size <paramref name="headSize"/> that rotate (R, or the head size).</summary>
    public int RotatedOf(int headSize) => RotaryDimensions > 0 ? RotaryDimensions : headSize;

    /// <summary>A bare theta is plain RoPE.</summary>
    public static implicit operator RopeFrequencies(double theta) => new(theta);

    /// <summary>Checks the description against head size <paramref name="headSize"/>; throws naming the field.</summary>
    public void Validate(int headSize)
    {
        if (headSize <= 0 || headSize % 2 != 0) throw new ArgumentException($"RopeFrequencies: head size {headSize} must be positive and even");
        if (RotaryDimensions < 0 || RotaryDimensions % 2 != 0 || RotaryDimensions > headSize)
            throw new ArgumentException($"RopeFrequencies: RotaryDimensions ({RotaryDimensions}) must be 0 (the whole head) or even and at most the head size {headSize}");
        int rotated = RotatedOf(headSize);
        void CheckTable(IReadOnlyList<double> table, string name)
        {
            if (table.Count * 2 != rotated)
                throw new ArgumentException(rotated == headSize
                    ? $"RopeFrequencies: {name} has {table.Count} values; a head of size {headSize} needs {headSize / 2}"
                    : $"RopeFrequencies: {name} has {table.Count} values; {rotated} rotated channels of a head of size {headSize} need {rotated / 2}");
            for (int i = 0; i < table.Count; i++)
                if (!(table[i] >= 0) || double.IsInfinity(table[i]))
                    throw new ArgumentException($"RopeFrequencies: {name}[{i}] = {table[i]} is not a finite non-negative number");
        }
        if (InverseFrequencies is { } table) CheckTable(table, nameof(InverseFrequencies));
        if (LongInverseFrequencies is { } longTable)
        {
            CheckTable(longTable, nameof(LongInverseFrequencies));
            if (InverseFrequencies is null) throw new ArgumentException("RopeFrequencies: LongInverseFrequencies needs InverseFrequencies (the short table) beside it");
            if (LongOriginalLength <= 0) throw new ArgumentException($"RopeFrequencies: LongOriginalLength ({LongOriginalLength}) must be positive with LongInverseFrequencies");
            if (IsDynamic) throw new ArgumentException("RopeFrequencies: LongRoPE and dynamic NTK scaling do not combine");
        }
        if (!(AttentionFactor > 0) || double.IsInfinity(AttentionFactor))
            throw new ArgumentException($"RopeFrequencies: AttentionFactor ({AttentionFactor}) must be positive and finite");
        if (DynamicFactor < 0 || double.IsNaN(DynamicFactor) || double.IsInfinity(DynamicFactor))
            throw new ArgumentException($"RopeFrequencies: DynamicFactor ({DynamicFactor}) must be 0 (off) or positive");
        if (IsDynamic && DynamicOriginalLength <= 0)
            throw new ArgumentException($"RopeFrequencies: DynamicOriginalLength ({DynamicOriginalLength}) must be positive with dynamic scaling");
        if (IsDynamic && rotated <= 2) throw new ArgumentException($"RopeFrequencies: dynamic NTK scaling needs more than 2 rotated channels, got {rotated}");
    }

    /// <summary>
    /// The inverse frequencies (R/2 values for the R rotated channels, D/2 for whole heads; radians per position) of a call
    /// whose positions end at <paramref name="length"/> - 1 (only dynamic scaling and LongRoPE read the length).
    /// </summary>
    public double[] At(int headSize, int length)
    {
        Validate(headSize);
        int rotated = RotatedOf(headSize), half = rotated / 2;
        var result = new double[half];
        if (IsDynamic && length > DynamicOriginalLength)
        {
            double scaledBase = DynamicBase(rotated, length);
            for (int i = 0; i < half; i++) result[i] = Math.Pow(scaledBase, -2.0 * i / rotated);
        }
        else if ((LongInverseFrequencies is { } longTable && length > LongOriginalLength ? longTable : InverseFrequencies) is { } table)
        {
            for (int i = 0; i < half; i++) result[i] = table[i];
        }
        else
        {
            for (int i = 0; i < half; i++) result[i] = Math.Pow(Theta, -2.0 * i / rotated);
        }
        return result;
    }

    /// <summary>
    /// Refuses a LongRoPE call that starts at <paramref name="startPosition"/> (past 0, within <see cref="LongOriginalLength"/>)
    /// and reaches past it (<paramref name="length"/> positions): the keys before it were rotated by earlier calls with the
    /// short table, and this call would rotate with the long one. transformers never mixes them (its generation recomputes
    /// the whole sequence when it first passes original_max_position_embeddings), and a caller must do the same, from
    /// position 0. Throws <see cref="InvalidOperationException"/> naming <paramref name="op"/>; nothing for other descriptions.
    /// </summary>
    public void RefuseMixedLongCall(string op, int startPosition, int length)
    {
        if (SwitchesToLong && startPosition > 0 && startPosition <= LongOriginalLength && length > LongOriginalLength)
            throw new InvalidOperationException($"{op}: LongRoPE: a call from position {startPosition} reaching {length} positions passes original_max_position_embeddings " +
                $"({LongOriginalLength}) with earlier positions rotated by the short factors; recompute the sequence from position 0 (as transformers does) instead");
    }

    /// <summary>Equal when every field is, the table compared value by value (so a backend can key its copies by content).</summary>
    public bool Equals(RopeFrequencies? other) =>
        other is not null && Theta.Equals(other.Theta) && AttentionFactor.Equals(other.AttentionFactor)
        && DynamicFactor.Equals(other.DynamicFactor) && DynamicOriginalLength == other.DynamicOriginalLength
        && RotaryDimensions == other.RotaryDimensions && LongOriginalLength == other.LongOriginalLength
        && SameTable(InverseFrequencies, other.InverseFrequencies) && SameTable(LongInverseFrequencies, other.LongInverseFrequencies);

    private static bool SameTable(IReadOnlyList<double>? a, IReadOnlyList<double>? b) =>
        ReferenceEquals(a, b) || (a is not null && b is not null && a.SequenceEqual(b));

    /// <inheritdoc/>
    public override int GetHashCode()
    {
        var hash = new HashCode();
        hash.Add(Theta);
        hash.Add(AttentionFactor);
        hash.Add(DynamicFactor);
        hash.Add(DynamicOriginalLength);
        hash.Add(RotaryDimensions);
        hash.Add(LongOriginalLength);
        if (InverseFrequencies is { } table) foreach (var f in table) hash.Add(f);
        if (LongInverseFrequencies is { } longTable) foreach (var f in longTable) hash.Add(-f);
        return hash.ToHashCode();
    }

    /// <summary>Dynamic NTK's base at <paramref name="length"/> positions (the formula CUDA's rope_inv_freq repeats).</summary>
    public double DynamicBase(int headSize, int length) =>
        Theta * Math.Pow(DynamicFactor * length / DynamicOriginalLength - (DynamicFactor - 1), (double)headSize / (headSize - 2));
}
