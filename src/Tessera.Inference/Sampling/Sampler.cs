using Tessera.Tensors;

namespace Tessera.Inference.Sampling;

/// <summary>
/// Picks a token from one row of logits on the host: greedy, or temperature with top-k and top-p (nucleus) filtering, by
/// <see cref="TokenSampling"/>'s rule, the one <see cref="IBackend.SampleRows"/> follows on a device. A draw is a function of
/// the row, the options (their seed included) and the position the token will take, so a run is reproducible whatever the
/// batch, preemption or speculation, and the host and a device draw the same token from the same row.
/// </summary>
public sealed class Sampler
{
    private readonly float _temperature, _topP;

    /// <summary>Creates a sampler for <paramref name="options"/> (validated).</summary>
    public Sampler(SamplingOptions options)
    {
        Options = options.Validate();
        _temperature = (float)options.Temperature;
        _topP = (float)options.TopP;
    }

    /// <summary>The options it draws with.</summary>
    public SamplingOptions Options { get; }

    /// <summary>Chooses the token at <paramref name="position"/> among the first <paramref name="vocabSize"/> logits.</summary>
    public int Sample(ReadOnlySpan<float> logits, int vocabSize, long position) =>
        TokenSampling.Choose(logits[..vocabSize], _temperature, Options.TopK, _topP, Options.Seed, position);

    /// <summary>
    /// Speculative sampling of a guess made without randomness (prompt lookup, or a draft model's argmax): the token at
    /// <paramref name="position"/> is drawn as <see cref="Sample"/> draws it, and the guess <paramref name="draft"/> is kept
    /// when it is that token. The guess is then kept with probability p(draft) and any other token comes with probability
    /// p(x), as without the guess (Leviathan et al.'s rule for a proposal that puts all its mass on one token, whose
    /// rejection branch draws from p without the guess: the same distribution), and the token is the one the position would
    /// have drawn without speculation. Greedy keeps the guess when it is the argmax.
    /// </summary>
    public int Verify(ReadOnlySpan<float> logits, int vocabSize, int draft, long position, out bool accepted)
    {
        int token = Sample(logits, vocabSize, position);
        accepted = token == draft;
        return token;
    }

    /// <summary>
    /// Index of the largest logit: the lowest index on ties, as PyTorch's argmax; NaN is skipped (0 when all are NaN),
    /// the rule of <c>IBackend.ArgMax</c>, so greedy decoding picks the same token on the host and on a device.
    /// </summary>
    public static int ArgMax(ReadOnlySpan<float> logits) => TokenSampling.ArgMax(logits);
}
