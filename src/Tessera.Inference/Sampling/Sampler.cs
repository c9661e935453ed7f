namespace Tessera.Inference.Sampling;

/// <summary>
/// Picks a token from one row of logits on the host: greedy, or temperature with top-k and
/// top-p (nucleus) filtering, from a seeded SplitMix64 stream so a run is reproducible.
/// </summary>
public sealed class Sampler
{
    private readonly SamplingOptions _options;
    private ulong _state;
    private (float Logit, int Id)[] _scratch = [];
    private double[] _probs = [];

    /// <summary>Creates a sampler with its own random stream.</summary>
    public Sampler(SamplingOptions options)
    {
        _options = options.Validate();
        _state = options.Seed;
    }

    /// <summary>Chooses a token id among the first <paramref name="vocabSize"/> logits.</summary>
    public int Sample(ReadOnlySpan<float> logits, int vocabSize)
    {
        logits = logits[..vocabSize];
        if (_options.Temperature == 0) return ArgMax(logits);
        int keep = Distribution(logits);
        var items = _scratch.AsSpan(0, keep);
        var probs = _probs.AsSpan(0, keep);
        double u = NextDouble(), acc = 0;
        for (int i = 0; i < keep; i++) { acc += probs[i]; if (u < acc) return items[i].Id; }
        return items[keep - 1].Id;
    }

    /// <summary>
    /// Speculative sampling with a guess made without randomness (prompt lookup, or a draft model's argmax): the guess
    /// <paramref name="draft"/> is kept with its probability p(draft) under this sampler's distribution of the row (the
    /// temperature, top-k and top-p applied); otherwise a token is drawn from that distribution with the guess removed and
    /// the rest renormalized. The token returned is then distributed exactly as <see cref="Sample"/>'s would be:
    /// P(draft) = p(draft), and P(x) = (1 - p(draft)) p(x) / (1 - p(draft)) = p(x) for any other x (Leviathan et al.'s rule
    /// for a proposal that puts all its mass on one token). Greedy keeps the guess when it is the argmax.
    /// </summary>
    public int Verify(ReadOnlySpan<float> logits, int vocabSize, int draft, out bool accepted)
    {
        logits = logits[..vocabSize];
        if (_options.Temperature == 0)
        {
            int best = ArgMax(logits);
            accepted = best == draft;
            return best;
        }
        int keep = Distribution(logits);
        var items = _scratch.AsSpan(0, keep);
        var probs = _probs.AsSpan(0, keep);
        double pDraft = 0;
        for (int i = 0; i < items.Length; i++) if (items[i].Id == draft) { pDraft = probs[i]; break; }
        accepted = NextDouble() < pDraft;
        if (accepted) return draft;
        // Rejected: draw from the kept tokens without the draft, whose total mass is 1 - p(draft).
        double u = NextDouble() * (1 - pDraft), acc = 0;
        int last = -1;
        for (int i = 0; i < items.Length; i++)
        {
            if (items[i].Id == draft) continue;
            last = items[i].Id;
            acc += probs[i];
            if (u < acc) return last;
        }
        return last >= 0 ? last : draft;                     // rounding at the end of the sum; only the draft was kept: p(draft) = 1
    }

    /// <summary>
    /// Leaves the kept candidates, most likely first, in the first entries of _scratch and their probabilities in _probs
    /// (temperature, top-k, top-p applied); returns how many are kept.
    /// </summary>
    private int Distribution(ReadOnlySpan<float> logits)
    {
        int vocabSize = logits.Length;
        if (_scratch.Length < vocabSize) _scratch = new (float, int)[vocabSize];
        var items = _scratch.AsSpan(0, vocabSize);
        for (int i = 0; i < vocabSize; i++) items[i] = (logits[i], i);
        items.Sort(static (a, b) => b.Logit != a.Logit ? b.Logit.CompareTo(a.Logit) : a.Id.CompareTo(b.Id));
        int keep = _options.TopK > 0 ? Math.Min(_options.TopK, vocabSize) : vocabSize;

        // Softmax over the kept candidates, in double, max-subtracted.
        if (_probs.Length < keep) _probs = new double[keep];
        var probs = _probs.AsSpan(0, keep);
        double max = items[0].Logit, sum = 0;
        for (int i = 0; i < keep; i++) { probs[i] = Math.Exp((items[i].Logit - max) / _options.Temperature); sum += probs[i]; }
        for (int i = 0; i < keep; i++) probs[i] /= sum;

        if (_options.TopP < 1)
        {
            double cumulative = 0; int cut = keep;
            for (int i = 0; i < keep; i++) { cumulative += probs[i]; if (cumulative >= _options.TopP) { cut = i + 1; break; } }
            keep = cut;
            double s = 0; for (int i = 0; i < keep; i++) s += probs[i];
            for (int i = 0; i < keep; i++) probs[i] /= s;
        }
        return keep;
    }

    /// <summary>
    /// Index of the largest logit: the lowest index on ties, as PyTorch's argmax; NaN is skipped (0 when all are NaN),
    /// the rule of <c>IBackend.ArgMax</c>, so greedy decoding picks the same token on the host and on a device.
    /// </summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = -1;
        for (int i = 0; i < logits.Length; i++)
            if (!float.IsNaN(logits[i]) && (best < 0 || logits[i] > logits[best])) best = i;
        return Math.Max(best, 0);
    }

    private double NextDouble()
    {
        // SplitMix64: small, fast, good enough for sampling; 53 random bits to a double in [0, 1).
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1UL << 53));
    }
}
