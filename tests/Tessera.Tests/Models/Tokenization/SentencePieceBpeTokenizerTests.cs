using Tessera.Models.Tokenization;
using Xunit;

namespace Tessera.Tests.Models.Tokenization;

/// <summary>
/// Llama 2 / Mistral-style BPE from tokenizer.json (▁ for spaces, byte fallback, added tokens matched whole), on a vocabulary
/// small enough to work out by hand. The golden files (Golden/tokenizers/llama2, mistral) compare against the tokenizers
/// library itself.
/// </summary>
public sealed class SentencePieceBpeTokenizerTests
{
    private const char S = SentencePieceBpeTokenizer.Space;

    private static readonly (string, string)[] Merges =
    [
        ($"{S}", "h"), ("e", "l"), ($"{S}h", "el"), ("l", "o"), ($"{S}hel", "lo"), ($"{S}", "w"), ("o", "r"), ($"{S}w", "or"),
        ("l", "d"), ($"{S}wor", "ld"),
    ];

    private static Dictionary<string, int> Vocab()
    {
        var vocab = new Dictionary<string, int> { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = 3 + b;
        foreach (var piece in new[] { $"{S}", "h", "e", "l", "o", "w", "r", "d" }) vocab[piece] = vocab.Count;
        foreach (var (l, r) in Merges) vocab.TryAdd(l + r, vocab.Count);
        return vocab;
    }

    private static SentencePieceBpeTokenizer Create(bool everySegment) =>
        new(Vocab(), Merges, new Dictionary<string, int> { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 }, "<unk>", everySegment, "test");

    private static int Id(string piece) => Vocab()[piece];

    [Fact]
    public void WordsMergeByRankAfterTheSpaceMarker()
    {
        var tok = Create(everySegment: true);
        Assert.Equal(new[] { Id($"{S}hello"), Id($"{S}world") }, tok.Encode("hello world"));
        // Two spaces: the first stands alone (no "▁▁" piece), the second starts the word.
        Assert.Equal(new[] { Id($"{S}hello"), Id($"{S}"), Id($"{S}world") }, tok.Encode("hello  world"));
        Assert.Equal("hello  world", tok.Decode(tok.Encode("hello  world")));
    }

    [Fact]
    public void CharactersOutsideTheVocabularyFallBackToTheirUtf8Bytes()
    {
        var tok = Create(everySegment: true);
        // "é" is C3 A9 in UTF-8, "🙂" F0 9F 99 82: each byte its <0xXX> token, in order.
        Assert.Equal(new[] { Id($"{S}h"), Id("<0xC3>"), Id("<0xA9>"), Id("<0xF0>"), Id("<0x9F>"), Id("<0x99>"), Id("<0x82>") }, tok.Encode("hé🙂"));
        Assert.Equal("hé🙂", tok.Decode(tok.Encode("hé🙂")));
        var stream = ((ITokenizer)tok).CreateIncrementalDecoder();
        var pieces = string.Concat(tok.Encode("hé🙂").Select(stream.Push)) + stream.Flush();
        Assert.Equal(" hé🙂", pieces);            // streaming keeps the marker's space; Decode drops the first one
    }

    [Fact]
    public void AddedTokensAreMatchedWholeAndEachSegmentIsNormalizedAsTheFileSays()
    {
        // Llama 2's normalizer puts "▁" before every segment between added tokens; Metaspace "first" only at the start.
        Assert.Equal(new[] { 1, Id($"{S}hello"), 2 }, Create(everySegment: true).Encode("<s>hello</s>"));
        Assert.Equal(new[] { 1, Id("h"), Id("el"), Id("lo"), 2 }, Create(everySegment: false).Encode("<s>hello</s>"));
        Assert.Equal(new[] { Id($"{S}hello"), 1 }, Create(everySegment: false).Encode("hello<s>"));
    }

    [Fact]
    public void SpecialIdsAndSizeAreTheFiles()
    {
        var tok = Create(everySegment: true);
        Assert.Equal(Vocab().Count, tok.VocabSize);
        Assert.Equal("<s>", System.Text.Encoding.UTF8.GetString(tok.TokenBytes(1)));
        Assert.Equal(new byte[] { 0x41 }, tok.TokenBytes(Id("<0x41>")).ToArray());
    }
}
