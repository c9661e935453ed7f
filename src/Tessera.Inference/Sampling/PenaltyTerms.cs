namespace Tessera.Inference.Sampling;

/// <summary>
/// OpenAI's presence and frequency penalties and logit_bias of one choice, as the additive terms its rows of logits get before a
/// token is drawn on the device (<see cref="Tessera.Tensors.IBackend.AddToColumns"/>): the same F32 terms, in the same
/// order, that <see cref="LogitsProcessing.ApplyPenalties"/> and <see cref="LogitsProcessing.ApplyBias"/> add on the host,
/// so a row drawn on the device is the row the host sampler would draw from.
/// </summary>
public sealed class PenaltyTerms
{
    private readonly double _presence, _frequency;
    private readonly IReadOnlyDictionary<int, double> _bias;
    private readonly IReadOnlyDictionary<int, int> _counts;
    private readonly Dictionary<int, int> _guessed = new();

    /// <summary>Terms of the penalties and bias over <paramref name="counts"/>, the choice's generated tokens' counts, which
    /// its owner keeps current.</summary>
    public PenaltyTerms(double presence, double frequency, IReadOnlyDictionary<int, double> bias, IReadOnlyDictionary<int, int> counts)
    {
        _presence = presence;
        _frequency = frequency;
        _bias = bias ?? throw new ArgumentNullException(nameof(bias));
        _counts = counts ?? throw new ArgumentNullException(nameof(counts));
    }

    /// <summary>The most terms a row can get for a choice of <paramref name="maxTokens"/> tokens: a penalty per distinct
    /// generated token and a bias per biased one.</summary>
    public int MostTerms(int maxTokens) => (_presence != 0 || _frequency != 0 ? maxTokens : 0) + _bias.Count;

    /// <summary>
    /// Appends the terms of the row that draws the token after <paramref name="guesses"/> guesses, tokens[firstGuess ...]
    /// (speculative decoding: the guesses kept before it count as generated): the penalties (distinct columns), then the bias
    /// (distinct columns).
    /// </summary>
    public void Write(IReadOnlyList<int> tokens, int firstGuess, int guesses, List<int> penaltyColumns, List<float> penaltyValues, List<int> biasColumns, List<float> biasValues)
    {
        if (_presence != 0 || _frequency != 0)
        {
            _guessed.Clear();
            for (int i = firstGuess; i < firstGuess + guesses; i++) _guessed[tokens[i]] = _guessed.GetValueOrDefault(tokens[i]) + 1;
            foreach (var (token, count) in _counts)
                Penalty(token, count + _guessed.GetValueOrDefault(token));
            foreach (var (token, count) in _guessed)
                if (!_counts.ContainsKey(token)) Penalty(token, count);
        }
        foreach (var (token, value) in _bias)
        {
            biasColumns.Add(token);
            biasValues.Add((float)value);
        }

        void Penalty(int token, int count)
        {
            if (count <= 0) return;
            penaltyColumns.Add(token);
            penaltyValues.Add(-(float)(_presence + _frequency * count));
        }
    }
}
