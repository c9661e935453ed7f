namespace Tessera.Tensors;

/// <summary>
/// A range of a flat parameter array that <see cref="IBackend.AdamWRanges"/> updates: <paramref name="Length"/> elements from
/// <paramref name="Offset"/>, decayed (<see cref="AdamWStep.WeightDecay"/>) or not (norms, biases).
/// </summary>
public readonly record struct AdamWRange(long Offset, long Length, bool WeightDecay)
{
    /// <summary>
    /// Throws a clear <see cref="ArgumentException"/> unless <paramref name="ranges"/> are sorted, disjoint, of non-negative
    /// lengths that fit one tensor dimension, and within <paramref name="elements"/>.
    /// </summary>
    public static void Validate(IReadOnlyList<AdamWRange> ranges, long elements)
    {
        ArgumentNullException.ThrowIfNull(ranges);
        long end = 0;
        for (int i = 0; i < ranges.Count; i++)
        {
            var r = ranges[i];
            if (r.Offset < end || r.Length < 0 || r.Length > int.MaxValue || r.Offset + r.Length > elements)
                throw new ArgumentException(
                    $"AdamW ranges: range {i} [{r.Offset}, +{r.Length}) must start at or after {end} (the ranges sorted and disjoint), " +
                    $"have 0 to {int.MaxValue} elements and end within the {elements} parameters", nameof(ranges));
            end = r.Offset + r.Length;
        }
    }
}
