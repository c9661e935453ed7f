using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Tessera.Models.Tokenization;

/// <summary>
/// GPT-2's byte-level BPE from vocab.json + merges.txt (or a tokenizer.json with the same model). Encoding goes
/// through Microsoft.ML.Tokenizers' BpeTokenizer in byte-level mode with GPT-2's pre-tokenization regex (or the
/// file's own, for Llama 3-style tokenizer.json); not its CodeGenTokenizer, which adds CodeGen's whitespace tokens; decoding maps each id back to its bytes
/// through the byte-level alphabet, so partial UTF-8 characters survive token boundaries exactly.
/// </summary>
public sealed class Gpt2BpeTokenizer : ITokenizer
{
    /// <summary>GPT-2's end-of-text token text.</summary>
    public const string EndOfText = "<|endoftext|>";

    /// <summary>GPT-2's pre-tokenization pattern (contractions, letters, digits, other symbols, whitespace).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private readonly Tokenizer _inner;
    private readonly byte[][] _bytes;
    private readonly bool _nfc;

    private Gpt2BpeTokenizer(Tokenizer inner, byte[][] bytes, int? endOfText, bool nfc)
    {
        _inner = inner;
        _bytes = bytes;
        EndOfTextId = endOfText;
        _nfc = nfc;
    }

    /// <summary>Whether text is put in Unicode normalization form C before encoding (Qwen2's NFC normalizer).</summary>
    public bool NormalizesToNfc => _nfc;

    /// <inheritdoc/>
    public int VocabSize => _bytes.Length;

    /// <inheritdoc/>
    public int? EndOfTextId { get; }

    /// <summary>Loads vocab.json and merges.txt.</summary>
    /// <exception cref="TokenizerFormatException">A file is missing or malformed.</exception>
    public static Gpt2BpeTokenizer FromFiles(string vocabPath, string mergesPath)
    {
        foreach (var p in new[] { vocabPath, mergesPath })
            if (!File.Exists(p)) throw new TokenizerFormatException(p, "file not found");
        return FromBytes(File.ReadAllBytes(vocabPath), File.ReadAllBytes(mergesPath), vocabPath);
    }

    /// <summary>Builds the tokenizer from the contents of vocab.json and merges.txt; <paramref name="description"/> names them in errors.</summary>
    /// <remarks><paramref name="normalizeNfc"/>: put text in normalization form C first (tokenizer.json's NFC normalizer). .NET
    /// composes only where it has ICU; under invariant globalization (Tessera's default) text passes unchanged, which
    /// differs from transformers only for input in decomposed form.</remarks>
    /// <remarks><paramref name="addedTokens"/>: tokenizer.json's added tokens (text -> id), matched whole in the input before
    /// pre-tokenization and standing for their own text; without it, vocabulary entries outside the byte-level alphabet and
    /// GPT-2's &lt;|endoftext|&gt; are.</remarks>
    public static Gpt2BpeTokenizer FromBytes(byte[] vocabJson, byte[] mergesText, string description, string pattern = Gpt2Pattern,
        bool normalizeNfc = false, IReadOnlyDictionary<string, int>? addedTokens = null)
    {
        var vocab = new Dictionary<int, string>();
        try
        {
            using var doc = JsonDocument.Parse(vocabJson);
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new TokenizerFormatException(description, "vocabulary must be a JSON object of token -> id");
            foreach (var p in doc.RootElement.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0)
                    throw new TokenizerFormatException(description, $"token '{p.Name}' has id {p.Value}, not a non-negative integer");
                if (!vocab.TryAdd(id, p.Name))
                    throw new TokenizerFormatException(description, $"id {id} is used by both '{vocab[id]}' and '{p.Name}'");
            }
        }
        catch (JsonException e)
        {
            throw new TokenizerFormatException(description, $"vocabulary is not valid JSON ({e.Message})", e);
        }
        if (vocab.Count == 0) throw new TokenizerFormatException(description, "vocabulary is empty");
        int size = vocab.Keys.Max() + 1;
        if (size != vocab.Count) throw new TokenizerFormatException(description, $"ids are not contiguous: {vocab.Count} tokens but the largest id is {size - 1}");
        var bytes = new byte[size][];
        int? eot = null;
        foreach (var (id, token) in vocab)
        {
            // Tokens outside the byte-level alphabet are added/special tokens: they stand for their own text.
            bytes[id] = ByteLevelAlphabet.Decode(token) ?? Encoding.UTF8.GetBytes(token);
            if (token == EndOfText) eot = id;
        }
        var merges = new List<string>();
        foreach (var raw in Encoding.UTF8.GetString(mergesText).Split('\n'))
        {
            string line = raw.TrimEnd('\r');
            if (line.Length == 0 || line.StartsWith("#version", StringComparison.Ordinal)) continue;
            if (line.Split(' ').Length != 2) throw new TokenizerFormatException(description, $"merge '{line}' is not two tokens separated by a space");
            merges.Add(line);
        }
        // Added tokens (tokenizer.json's list; else tokens outside the byte-level alphabet and <|endoftext|>) are matched whole
        // in the input, as Hugging Face's added tokens are, and stand for their own text.
        var special = addedTokens is not null
            ? addedTokens.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal)
            : vocab.Where(kv => ByteLevelAlphabet.Decode(kv.Value) is null || kv.Value == EndOfText).ToDictionary(kv => kv.Value, kv => kv.Key, StringComparer.Ordinal);
        foreach (var (text, id) in special)
        {
            if ((uint)id >= (uint)bytes.Length) throw new TokenizerFormatException(description, $"added token '{text}' has id {id}, outside the vocabulary of {bytes.Length}");
            bytes[id] = Encoding.UTF8.GetBytes(text);
        }
        Tokenizer inner;
        try
        {
            inner = BpeTokenizer.Create(new BpeOptions(vocab.Select(kv => new KeyValuePair<string, int>(kv.Value, kv.Key)))
            {
                Merges = merges,
                ByteLevel = true,
                PreTokenizer = new RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled), special.Count > 0 ? special : null),
                SpecialTokens = special.Count > 0 ? special : null,
            });
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        {
            throw new TokenizerFormatException(description, $"vocabulary or merges rejected: {e.Message}", e);
        }
        return new Gpt2BpeTokenizer(inner, bytes, eot, normalizeNfc);
    }

    /// <inheritdoc/>
    public int[] Encode(string text) =>
        _inner.EncodeToIds(_nfc ? text.Normalize(NormalizationForm.FormC) : text).ToArray();

    /// <inheritdoc/>
    public string Decode(ReadOnlySpan<int> ids) => TokenBytesDecoding.Decode(this, ids);

    /// <inheritdoc/>
    public ReadOnlySpan<byte> TokenBytes(int id) => (uint)id < (uint)_bytes.Length ? _bytes[id]
        : throw new ArgumentOutOfRangeException(nameof(id), id, $"token ids are 0..{_bytes.Length - 1}");
}
