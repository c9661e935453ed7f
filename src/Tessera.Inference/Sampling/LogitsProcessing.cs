namespace Tessera.Inference.Sampling;

/// <summary>Host-side operations on one row of logits before sampling: OpenAI's penalties and log-probabilities.</summary>
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

    /// <summary>log softmax(logits)[token] in double, max-subtracted.</summary>
    public static double LogSoftmaxAt(ReadOnlySpan<float> logits, int token) => logits[token] - LogSumExp(logits);

    /// <summary>log sum exp of the row in double, max-subtracted; NaN entries are skipped.</summary>
    public static double LogSumExp(ReadOnlySpan<float> logits)
    {
        double max = double.NegativeInfinity;
        foreach (var v in logits) if (v > max) max = v;
        if (double.IsNegativeInfinity(max)) return max;
        double sum = 0;
        foreach (var v in logits) if (!float.IsNaN(v)) sum += Math.Exp(v - max);
        return max + Math.Log(sum);
    }

    /// <summary>The <paramref name="count"/> largest logits' ids, largest first (lowest id first on ties), with their log-probabilities.</summary>
    public static (int Id, double Logprob)[] Top(ReadOnlySpan<float> logits, int count)
    {
        count = Math.Min(count, logits.Length);
        if (count <= 0) return [];
        double lse = LogSumExp(logits);
        // A partial selection: keep the best `count` in a small sorted array (count <= 20).
        var best = new (int Id, float Logit)[count];
        int filled = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            float v = logits[i];
            if (float.IsNaN(v)) continue;
            if (filled == count && !(v > best[count - 1].Logit)) continue;
            int at = filled < count ? filled++ : count - 1;
            while (at > 0 && v > best[at - 1].Logit) { best[at] = best[at - 1]; at--; }
            best[at] = (i, v);
        }
        var result = new (int, double)[filled];
        for (int i = 0; i < filled; i++) result[i] = (best[i].Id, best[i].Logit - lse);
        return result;
    }
}
