namespace Tessera.Inference.Sampling;

/// <summary>Host-side operations on one row of logits before sampling: OpenAI's penalties and logit bias (the log-probabilities:
/// <see cref="Tessera.Tensors.LogProbabilities"/>).</summary>
public static class LogitsProcessing
{
    /// <summary>
    /// OpenAI's presence and frequency penalties, in place: logit[j] -= presence (when j was generated at least once) +
    /// frequency * count[j], for the token counts of what the choice generated so far.
    /// </summary>
    public static void ApplyPenalties(Span<float> logits, IReadOnlyDictionary<int, int> generatedCounts, double presence, double frequency)
    {
        if (presence == 0 && frequency == 0) return;
        foreach (var (token, count) in generatedCounts)
            if ((uint)token < (uint)logits.Length && count > 0)
                logits[token] -= (float)(presence + frequency * count);
    }

    /// <summary>OpenAI's logit_bias, in place: logit[j] += bias[j] for every biased token inside the row.</summary>
    public static void ApplyBias(Span<float> logits, IReadOnlyDictionary<int, double> bias)
    {
        foreach (var (token, value) in bias)
            if ((uint)token < (uint)logits.Length) logits[token] += (float)value;
    }
}
