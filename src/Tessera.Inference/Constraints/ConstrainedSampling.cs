using Tessera.Inference.Sampling;

namespace Tessera.Inference.Constraints;

/// <summary>
/// Sampling within a constraint: a token the constraint allows, distributed as the sampler's choice over the allowed tokens
/// alone (the refused ones masked before the temperature, top-k and top-p see the row).
/// </summary>
public static class ConstrainedSampling
{
    /// <summary>Draws the constraint refuses before every token is checked instead.</summary>
    public const int Rejections = 16;

    /// <summary>
    /// An allowed token from <paramref name="scores"/> (the row after penalties and biases, which this overwrites), or -1 when
    /// <paramref name="allowed"/> takes none. Without top-k and top-p (greedy, or a temperature alone) by rejection: a refused
    /// draw is struck out and the sampler draws again from the rest, which renormalizes over what is left, so the first allowed
    /// draw has the constrained distribution (greedy: the best allowed token) and usually costs one check. After
    /// <see cref="Rejections"/> refusals, and always under top-k or top-p (whose cut must see the allowed tokens only), every
    /// token is checked and the refused ones masked first: by <paramref name="allowedMask"/> when given (the whole vocabulary's
    /// verdicts at once, e.g. <see cref="TokenVocabulary.Allowed"/>; it must agree with <paramref name="allowed"/>), else one
    /// token at a time. <paramref name="position"/> is the drawn token's (<see cref="Sampler.Sample"/>): a draw struck out and
    /// drawn again at the same position takes the next candidate in the order of the Gumbel scores, which is a draw from the
    /// rest (the scores' order is a draw without replacement).
    /// </summary>
    public static int Sample(Sampler sampler, SamplingOptions options, float[] scores, long position, Func<int, bool> allowed, Func<bool[]>? allowedMask = null)
    {
        ArgumentNullException.ThrowIfNull(sampler);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(scores);
        ArgumentNullException.ThrowIfNull(allowed);
        int v = scores.Length;
        bool filtered = options.Temperature > 0 && (options.TopK > 0 || options.TopP < 1);
        if (!filtered)
            for (int attempt = 0; attempt < Rejections; attempt++)
            {
                int t = sampler.Sample(scores, v, position);
                if (float.IsNegativeInfinity(scores[t]) || float.IsNaN(scores[t])) break;   // nothing left to draw from
                if (allowed(t)) return t;
                scores[t] = float.NegativeInfinity;
            }
        bool any = false;
        var mask = allowedMask?.Invoke();
        for (int t = 0; t < v; t++)
        {
            if (float.IsNegativeInfinity(scores[t])) continue;
            if (mask is null ? allowed(t) : mask[t]) any = true;
            else scores[t] = float.NegativeInfinity;
        }
        return any ? sampler.Sample(scores, v, position) : -1;
    }
}
