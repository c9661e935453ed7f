namespace Tessera.Tensors;

/// <summary>
/// The log-probabilities of a row of logits as OpenAI reports them (the raw distribution, temperature 1): the definition
/// that the host and every backend's <see cref="IBackend.TokenLogprobs"/> follow. In double, max-subtracted; NaN entries
/// are skipped.
/// </summary>
public static class LogProbabilities
{
    /// <summary>log sum exp of the row; NaN entries are skipped (negative infinity when nothing else is left).</summary>
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
