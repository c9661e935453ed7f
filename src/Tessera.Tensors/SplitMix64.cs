namespace Tessera.Tensors;

/// <summary>
/// SplitMix64 (Steele, Lea and Flood): the golden-ratio increment and the finalizer that spreads a 64-bit value over all
/// 64 bits. Where a seed must be derived from other numbers (benchmark weights' chunks, LoRA's dropout masks, a sampled
/// token's noise) without a generator's state.
/// </summary>
public static class SplitMix64
{
    /// <summary>The increment of SplitMix64's state: 2^64 over the golden ratio.</summary>
    public const ulong Golden = 0x9E3779B97F4A7C15UL;

    /// <summary>The finalizer (the MurmurHash3-style mix of SplitMix64's output).</summary>
    public static ulong Mix(ulong z)
    {
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return z ^ (z >> 31);
    }

    /// <summary>The output of SplitMix64 whose state before the step is <paramref name="state"/>: Mix(state + Golden).</summary>
    public static ulong Next(ulong state) => Mix(unchecked(state + Golden));
}
