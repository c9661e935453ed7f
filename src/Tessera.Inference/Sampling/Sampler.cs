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

        if (_scratch.Length < vocabSize) _scratch = new (float, int)[vocabSize];
        var items = _scratch.AsSpan(0, vocabSize);
        for (int i = 0; i < vocabSize; i++) items[i] = (logits[i], i);
        items.Sort(static (a, b) => b.Logit != a.Logit ? b.Logit.CompareTo(a.Logit) : a.Id.CompareTo(b.Id));
        int keep = _options.TopK > 0 ? Math.Min(_options.TopK, vocabSize) : vocabSize;

        // Softmax over the kept candidates, in double, max-subtracted.
        double max = items[0].Logit, sum = 0;
        Span<double> probs = keep <= 4096 ? stackalloc double[keep] : new double[keep];
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

        double u = NextDouble(), acc = 0;
        for (int i = 0; i < keep; i++) { acc += probs[i]; if (u < acc) return items[i].Id; }
        return items[keep - 1].Id;
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
