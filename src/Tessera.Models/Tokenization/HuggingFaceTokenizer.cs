namespace Tessera.Models.Tokenization;

/// <summary>
/// A model directory's tokenizer: the tokenizer its files describe, with the beginning- and end-of-sequence tokens that
/// tokenizer_config.json (bos_token, eos_token, add_bos_token) and tokenizer.json's post-processor (the special token a
/// TemplateProcessing puts before "$A") name, as transformers reads them.
/// </summary>
public sealed class HuggingFaceTokenizer : ITokenizer
{
    /// <summary>Wraps <paramref name="inner"/> with the special tokens found beside it.</summary>
    public HuggingFaceTokenizer(ITokenizer inner, int? beginOfSequence, int? endOfText, string source)
    {
        Inner = inner;
        BeginOfSequenceId = beginOfSequence;
        EndOfTextId = endOfText;
        Source = source;
    }

    /// <summary>The tokenizer the files describe.</summary>
    public ITokenizer Inner { get; }

    /// <summary>The file the tokenizer was read from.</summary>
    public string Source { get; }

    /// <inheritdoc/>
    public int VocabSize => Inner.VocabSize;

    /// <inheritdoc/>
    public int? EndOfTextId { get; }

    /// <inheritdoc/>
    public int? BeginOfSequenceId { get; }

    /// <inheritdoc/>
    public int[] Encode(string text) => Inner.Encode(text);

    /// <inheritdoc/>
    public string Decode(ReadOnlySpan<int> ids) => Inner.Decode(ids);

    /// <inheritdoc/>
    public ReadOnlySpan<byte> TokenBytes(int id) => Inner.TokenBytes(id);
}
