using System.Text;
using Microsoft.ML.Tokenizers;

namespace Tessera.Models.Tokenization;

/// <summary>
/// The SentencePiece-style BPE of Llama 2 and Mistral as a Hugging Face tokenizer.json writes it: spaces become "▁"
/// (U+2581) with one "▁" in front (normalizer Prepend + Replace, or pre-tokenizer Metaspace), BPE merges by rank over the
/// characters of the whole text (Microsoft.ML.Tokenizers' BpeTokenizer), and byte fallback: a character the vocabulary
/// lacks becomes its UTF-8 bytes as the &lt;0xXX&gt; tokens. Added tokens (&lt;s&gt;, [INST], ...) are matched whole in
/// the input first; each text segment between them is normalized on its own, as transformers does.
/// Decoding maps "▁" back to a space, byte tokens to their byte, and drops one leading space.
/// </summary>
public sealed class SentencePieceBpeTokenizer : ITokenizer
{
    /// <summary>SentencePiece's whitespace marker.</summary>
    public const char Space = '\u2581';

    private readonly Tokenizer _bpe;
    private readonly int _unknownId;
    private readonly int[] _byteIds;                  // byte b -> id of <0xBB>, or -1
    private readonly byte[][] _bytes;                 // id -> the bytes it stands for
    private readonly (string Text, int Id)[] _added;  // longest first
    private readonly bool _prependToEverySegment;

    /// <summary>
    /// Builds the tokenizer from the vocabulary (piece -> id, byte pieces &lt;0xXX&gt; included), the merges in rank
    /// order, the added tokens matched whole in the input, the unknown piece, and where the "▁" prefix goes
    /// (<paramref name="prependToEverySegment"/>: Llama 2's normalizer, before every segment between added tokens;
    /// otherwise Metaspace's "first": only before the text's first segment when it starts the input).
    /// </summary>
    /// <exception cref="TokenizerFormatException">The pieces, merges or added tokens are inconsistent.</exception>
    public SentencePieceBpeTokenizer(IReadOnlyDictionary<string, int> vocabulary, IReadOnlyList<(string Left, string Right)> merges,
        IReadOnlyDictionary<string, int> addedTokens, string unknownToken, bool prependToEverySegment, string description)
    {
        int size = Math.Max(vocabulary.Count == 0 ? 0 : vocabulary.Values.Max() + 1, addedTokens.Count == 0 ? 0 : addedTokens.Values.Max() + 1);
        _bytes = new byte[size][];
        foreach (var (piece, id) in vocabulary)
        {
            if (id < 0) throw new TokenizerFormatException(description, $"piece '{piece}' has negative id {id}");
            _bytes[id] = PieceBytes(piece);
        }
        foreach (var (text, id) in addedTokens) _bytes[id] ??= Encoding.UTF8.GetBytes(text);
        for (int i = 0; i < size; i++)
            if (_bytes[i] is null) throw new TokenizerFormatException(description, $"no token has id {i}: ids must be contiguous");
        if (!vocabulary.TryGetValue(unknownToken, out _unknownId))
            throw new TokenizerFormatException(description, $"the unknown token '{unknownToken}' is not in the vocabulary");
        _byteIds = new int[256];
        for (int b = 0; b < 256; b++) _byteIds[b] = vocabulary.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        _added = addedTokens.OrderByDescending(kv => kv.Key.Length).Select(kv => (kv.Key, kv.Value)).ToArray();
        _prependToEverySegment = prependToEverySegment;
        try
        {
            _bpe = BpeTokenizer.Create(new BpeOptions(vocabulary.Select(kv => new KeyValuePair<string, int>(kv.Key, kv.Value)))
            {
                Merges = merges.Select(m => m.Left + " " + m.Right),
                UnknownToken = unknownToken,
                FuseUnknownTokens = true,
                ByteLevel = false,
            });
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new TokenizerFormatException(description, $"vocabulary or merges rejected: {e.Message}", e);
        }
    }

    /// <inheritdoc/>
    public int VocabSize => _bytes.Length;

    /// <inheritdoc/>
    public int? EndOfTextId { get; init; }

    /// <inheritdoc/>
    public int? BeginOfSequenceId { get; init; }

    /// <inheritdoc/>
    public int[] Encode(string text)
    {
        var ids = new List<int>(text.Length / 2 + 4);
        int start = 0;
        while (start <= text.Length)
        {
            var (at, token) = NextAdded(text, start);
            if (at > start) EncodeSegment(text.AsSpan(start, at - start), atInputStart: start == 0, ids);
            if (token is null) break;
            ids.Add(token.Value.Id);
            start = at + token.Value.Text.Length;
        }
        return ids.ToArray();
    }

    /// <inheritdoc/>
    public string Decode(ReadOnlySpan<int> ids)
    {
        string text = TokenBytesDecoding.Decode(this, ids);
        return text.StartsWith(' ') ? text[1..] : text;
    }

    /// <inheritdoc/>
    public ReadOnlySpan<byte> TokenBytes(int id) => (uint)id < (uint)_bytes.Length ? _bytes[id]
        : throw new ArgumentOutOfRangeException(nameof(id), id, $"token ids are 0..{_bytes.Length - 1}");

    private (int At, (string Text, int Id)? Token) NextAdded(string text, int from)
    {
        for (int i = from; i < text.Length; i++)
            foreach (var added in _added)
                if (string.CompareOrdinal(text, i, added.Text, 0, added.Text.Length) == 0) return (i, added);
        return (text.Length, null);
    }

    private void EncodeSegment(ReadOnlySpan<char> segment, bool atInputStart, List<int> ids)
    {
        var normalized = new StringBuilder(segment.Length + 1);
        // Llama 2's Prepend normalizer always adds the marker; Metaspace adds it only where the text does not already
        // start with one (a leading space), as the tokenizers library does.
        if (_prependToEverySegment || (atInputStart && segment[0] != ' ')) normalized.Append(Space);
        foreach (char c in segment) normalized.Append(c == ' ' ? Space : c);
        string s = normalized.ToString();
        foreach (var token in _bpe.EncodeToTokens(s, out _, considerPreTokenization: false, considerNormalization: false))
        {
            if (token.Id != _unknownId)
            {
                ids.Add(token.Id);
                continue;
            }
            // Byte fallback: the characters the vocabulary lacks, as their UTF-8 bytes.
            var (offset, length) = token.Offset.GetOffsetAndLength(s.Length);
            foreach (byte b in Encoding.UTF8.GetBytes(s.Substring(offset, length)))
                ids.Add(_byteIds[b] >= 0 ? _byteIds[b] : _unknownId);
        }
    }

    /// <summary>The bytes a piece stands for: &lt;0xXX&gt; its byte, "▁" a space, anything else its UTF-8.</summary>
    private static byte[] PieceBytes(string piece)
    {
        if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
            return [b];
        return Encoding.UTF8.GetBytes(piece.Replace(Space, ' '));
    }
}
