namespace Tessera.Tensors;

/// <summary>
/// A mixture-of-experts router's rule for one token, in F64: the softmax of its E logits, the k experts of highest
/// probability (strictly greater wins, so a tie goes to the lower index; torch.topk promises no order, this is Tessera's
/// rule), and their weights: the probabilities, or divided by their sum when normalized. The host's routing
/// (<c>ExpertRouting</c>) and the CPU backend's <see cref="IBackend.MoeRoute"/> both route by it, so they agree bit for bit.
/// </summary>
public static class ExpertChoice
{
    /// <summary>
    /// Routes one token: <paramref name="probabilities"/> (E) gets the softmax of <paramref name="logits"/> (E),
    /// <paramref name="ids"/> (k) the chosen experts by falling probability, <paramref name="weights"/> (k) their weights.
    /// <paramref name="taken"/> (E) is scratch.
    /// </summary>
    public static void Route(ReadOnlySpan<double> logits, Span<double> probabilities, Span<bool> taken, bool normalize, Span<int> ids, Span<double> weights)
    {
        int e = logits.Length, k = ids.Length;
        double max = double.NegativeInfinity, sum = 0;
        foreach (double v in logits) max = Math.Max(max, v);
        for (int j = 0; j < e; j++) sum += probabilities[j] = Math.Exp(logits[j] - max);
        for (int j = 0; j < e; j++) probabilities[j] /= sum;
        taken[..e].Clear();
        double chosen = 0;
        for (int s = 0; s < k; s++)
        {
            int best = -1;
            for (int j = 0; j < e; j++)                       // strictly greater: the lower index keeps a tie
                if (!taken[j] && (best < 0 || probabilities[j] > probabilities[best])) best = j;
            taken[best] = true;
            ids[s] = best;
            weights[s] = probabilities[best];
            chosen += probabilities[best];
        }
        if (normalize)
            for (int s = 0; s < k; s++) weights[s] /= chosen;
    }
}
