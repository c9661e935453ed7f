using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Tessera.Models.Tokenization;

/// <summary>
/// A tiktoken ranks file ("base64-token rank" per line; ranks are the ids), as shipped for cl100k/o200k and
/// Llama 3 ("tokenizer.model" / "*.tiktoken"). Encoding goes through Microsoft.ML.Tokenizers' TiktokenTokenizer
/// with the cl100k pre-tokenization regex; decoding uses the file's token bytes directly.
/// </summary>
public sealed class TiktokenFileTokenizer : ITokenizer
{
    /// <summary>cl100k_base's pre-tokenization pattern (also what Llama 3 uses, up to digit grouping).</summary>
    public const string Cl100kPattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private readonly Tokenizer _inner;
    private readonly byte[][] _bytes;

    private TiktokenFileTokenizer(Tokenizer inner, byte[][] bytes, int? endOfText)
    {
        _inner = inner;
        _bytes = bytes;
        EndOfTextId = endOfText;
    }

    /// <inheritdoc/>
    public int VocabSize => _bytes.Length;

    /// <inheritdoc/>
    public int? EndOfTextId { get; }

    /// <summary>
    /// Loads <paramref name="path"/>; <paramref name="specialTokens"/> (text -> id, e.g. "&lt;|end_of_text|&gt;" -> 128001)
    /// extend the vocabulary; <paramref name="endOfText"/> names the one that ends a sequence.
    /// </summary>
    public static TiktokenFileTokenizer FromFile(string path, IReadOnlyDictionary<string, int>? specialTokens = null,
        string? endOfText = null, string pattern = Cl100kPattern)
    {
        if (!File.Exists(path)) throw new TokenizerFormatException(path, "file not found");
        var ranks = new Dictionary<int, byte[]>();
        int lineNo = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNo++;
            if (line.Length == 0) continue;
            var parts = line.Split(' ');
            if (parts.Length != 2 || !int.TryParse(parts[1], out int rank) || rank < 0)
                throw new TokenizerFormatException(path, $"line {lineNo} is not 'base64-token rank'");
            byte[] token;
            try { token = Convert.FromBase64String(parts[0]); }
            catch (FormatException e) { throw new TokenizerFormatException(path, $"line {lineNo}: invalid base64 token", e); }
            if (!ranks.TryAdd(rank, token)) throw new TokenizerFormatException(path, $"line {lineNo}: rank {rank} appears twice");
        }
        var special = specialTokens ?? new Dictionary<string, int>();
        int size = Math.Max(ranks.Count == 0 ? 0 : ranks.Keys.Max() + 1, special.Count == 0 ? 0 : special.Values.Max() + 1);
        var bytes = new byte[size][];
        foreach (var (rank, token) in ranks) bytes[rank] = token;
        foreach (var (text, id) in special)
        {
            if (bytes[id] is not null) throw new TokenizerFormatException(path, $"special token '{text}' id {id} collides with a regular token");
            bytes[id] = Encoding.UTF8.GetBytes(text);
        }
        for (int i = 0; i < size; i++)
            if (bytes[i] is null) throw new TokenizerFormatException(path, $"no token has id {i}: ids must be contiguous");
        int? eot = null;
        if (endOfText is not null)
            eot = special.TryGetValue(endOfText, out int e) ? e : throw new ArgumentException($"end-of-text token '{endOfText}' is not among the special tokens");
        using var stream = File.OpenRead(path);
        var inner = TiktokenTokenizer.Create(stream, new RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled), special), normalizer: null, special);
        return new TiktokenFileTokenizer(inner, bytes, eot);
    }

    /// <inheritdoc/>
    public int[] Encode(string text) => _inner.EncodeToIds(text).ToArray();

    /// <inheritdoc/>
    public string Decode(ReadOnlySpan<int> ids) => TokenBytesDecoding.Decode(this, ids);

    /// <inheritdoc/>
    public ReadOnlySpan<byte> TokenBytes(int id) => (uint)id < (uint)_bytes.Length ? _bytes[id]
        : throw new ArgumentOutOfRangeException(nameof(id), id, $"token ids are 0..{_bytes.Length - 1}");
}
