using System.Text;
using Microsoft.ML.Tokenizers;

namespace Tessera.Models.Tokenization;

/// <summary>
/// A SentencePiece model: the protobuf tokenizer.model of Llama 2 and Mistral (BPE with byte fallback), or a Unigram
/// tokenizer.json; encoded and decoded by Microsoft.ML.Tokenizers' SentencePieceTokenizer. Token bytes for streaming come
/// from the pieces: "▁" is a space, &lt;0xXX&gt; its byte.
/// </summary>
public sealed class SentencePieceModelTokenizer : ITokenizer
{
    private readonly SentencePieceTokenizer _inner;
    private readonly byte[][] _bytes;

    private SentencePieceModelTokenizer(SentencePieceTokenizer inner, string description)
    {
        _inner = inner;
        var vocab = inner.Vocabulary;
        int size = vocab.Count == 0 ? 0 : vocab.Values.Max() + 1;
        _bytes = new byte[size][];
        foreach (var (piece, id) in vocab) _bytes[id] = PieceBytes(piece);
        for (int i = 0; i < size; i++)
            if (_bytes[i] is null) throw new TokenizerFormatException(description, $"no piece has id {i}: ids must be contiguous");
        BeginOfSequenceId = inner.BeginningOfSentenceId >= 0 && inner.BeginningOfSentenceId < size ? inner.BeginningOfSentenceId : null;
        EndOfTextId = inner.EndOfSentenceId >= 0 && inner.EndOfSentenceId < size ? inner.EndOfSentenceId : null;
    }

    /// <summary>Reads a SentencePiece protobuf model (tokenizer.model).</summary>
    /// <exception cref="TokenizerFormatException">The file is missing, truncated or not a SentencePiece model.</exception>
    public static SentencePieceModelTokenizer FromModelFile(string path)
    {
        if (!File.Exists(path)) throw new TokenizerFormatException(path, "file not found");
        try
        {
            using var stream = File.OpenRead(path);
            return new SentencePieceModelTokenizer(SentencePieceTokenizer.Create(stream, addBeginningOfSentence: false, addEndOfSentence: false), path);
        }
        catch (Exception e) when (e is not TokenizerFormatException and not OutOfMemoryException)
        {
            throw new TokenizerFormatException(path, $"not a readable SentencePiece model (truncated or another format?): {e.Message}", e);
        }
    }

    /// <summary>Reads a Hugging Face tokenizer.json whose model is Unigram (SentencePiece's other algorithm).</summary>
    /// <exception cref="TokenizerFormatException">The file is malformed.</exception>
    public static SentencePieceModelTokenizer FromUnigramJson(string path)
    {
        try
        {
            using var stream = File.OpenRead(path);
            return new SentencePieceModelTokenizer(SentencePieceTokenizer.CreateFromTokenizerJson(stream, addBeginningOfSentence: false, addEndOfSentence: false), path);
        }
        catch (Exception e) when (e is not TokenizerFormatException and not OutOfMemoryException)
        {
            throw new TokenizerFormatException(path, $"Unigram tokenizer.json rejected: {e.Message}", e);
        }
    }

    /// <inheritdoc/>
    public int VocabSize => _bytes.Length;

    /// <inheritdoc/>
    public int? EndOfTextId { get; }

    /// <inheritdoc/>
    public int? BeginOfSequenceId { get; }

    /// <inheritdoc/>
    public int[] Encode(string text) =>
        _inner.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false).ToArray();

    /// <inheritdoc/>
    public string Decode(ReadOnlySpan<int> ids) => _inner.Decode(ids.ToArray(), considerSpecialTokens: false);

    /// <inheritdoc/>
    public ReadOnlySpan<byte> TokenBytes(int id) => (uint)id < (uint)_bytes.Length ? _bytes[id]
        : throw new ArgumentOutOfRangeException(nameof(id), id, $"token ids are 0..{_bytes.Length - 1}");

    private static byte[] PieceBytes(string piece)
    {
        if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
            return [b];
        return Encoding.UTF8.GetBytes(piece.Replace(SentencePieceBpeTokenizer.Space, ' '));
    }
}
