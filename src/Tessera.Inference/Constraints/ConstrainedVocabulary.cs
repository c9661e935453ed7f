using Tessera.Inference.Sampling;
using Tessera.Models.Tokenization;

namespace Tessera.Inference.Constraints;

/// <summary>
/// A tokenizer's vocabulary under a JSON grammar, as the serving engine and <see cref="TextGenerator"/> sample from it: a token
/// is allowed when it is the tokenizer's and the grammar accepts its bytes, or, for an end-of-text (stop) token, when the text
/// may end here (<see cref="JsonRecognizer.CanEnd"/>: between two tool calls, where another may follow); a check of every
/// token goes through the vocabulary's trie (<see cref="TokenVocabulary"/>, built at the first such check), and ids past the
/// tokenizer's (a padded head's) are refused. One instance a sampling thread (it reuses one mask).
/// </summary>
public sealed class ConstrainedVocabulary
{
    private TokenVocabulary? _trie;
    private bool[] _mask = [];

    /// <summary>The vocabulary of <paramref name="tokenizer"/>.</summary>
    public ConstrainedVocabulary(ITokenizer tokenizer) => Tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));

    /// <summary>The tokenizer whose tokens' bytes the grammar reads.</summary>
    public ITokenizer Tokenizer { get; }

    /// <summary>
    /// A token of <paramref name="scores"/> (the row after penalties and biases, which this overwrites) that <paramref name="json"/>
    /// accepts, or one of <paramref name="stop"/> where the text may end, drawn at <paramref name="position"/> as
    /// <see cref="ConstrainedSampling.Sample"/> draws; -1 when none is.
    /// </summary>
    public int Sample(Sampler sampler, SamplingOptions options, float[] scores, long position, JsonRecognizer json, ICollection<int> stop)
    {
        ArgumentNullException.ThrowIfNull(json);
        ArgumentNullException.ThrowIfNull(stop);
        bool? canEnd = null;                                // asked once a step, at the first stop token drawn or masked
        bool CanEnd() => canEnd ??= json.CanEnd;
        return ConstrainedSampling.Sample(sampler, options, scores, position,
            t => t < Tokenizer.VocabSize && (stop.Contains(t) ? CanEnd() : json.Accepts(Tokenizer.TokenBytes(t))),
            () =>
            {
                _trie ??= new TokenVocabulary(Tokenizer);
                int length = Math.Max(scores.Length, _trie.VocabSize);
                if (_mask.Length != length) _mask = new bool[length];
                _trie.Allowed(json, _mask);
                _mask.AsSpan(_trie.VocabSize).Clear();
                foreach (var t in stop) if (t < _trie.VocabSize) _mask[t] = CanEnd();
                return _mask;
            });
    }
}
