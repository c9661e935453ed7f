using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Tessera.Models.Tokenization;
using Xunit;

namespace Tessera.Tests.Models.Tokenization;

public sealed class TokenizerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("tessera-tok-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>GPT-2's byte-to-character table, written out independently of the library's.</summary>
    private static string ByteChar(int b)
    {
        bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        if (printable) return ((char)b).ToString();
        int n = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) n++;
        return ((char)(256 + n)).ToString();
    }

    private static readonly string[] Merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld", "Ġ t", "t h", "Ġt h"];

    /// <summary>A tiny GPT-2-style vocabulary: the 256 byte tokens, one token per merge result, then end-of-text.</summary>
    private static Dictionary<string, int> Vocab()
    {
        var vocab = new Dictionary<string, int>();
        for (int b = 0; b < 256; b++) vocab[ByteChar(b)] = b;
        foreach (var m in Merges) vocab.TryAdd(m.Replace(" ", ""), vocab.Count);
        vocab["<|endoftext|>"] = vocab.Count;
        return vocab;
    }

    private string WriteVocabMerges(string sub)
    {
        string dir = Path.Combine(_dir, sub);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "vocab.json"), JsonSerializer.Serialize(Vocab()));
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\n" + string.Join("\n", Merges) + "\n");
        return dir;
    }

    /// <summary>Independent reference: GPT-2 regex pre-tokenization, then repeatedly merge the lowest-ranked pair.</summary>
    private static int[] ReferenceEncode(string text)
    {
        var vocab = Vocab();
        var rank = Merges.Select((m, i) => (m, i)).ToDictionary(x => x.m, x => x.i);
        var pattern = new Regex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+");
        var ids = new List<int>();
        foreach (Match word in pattern.Matches(text))
        {
            var parts = Encoding.UTF8.GetBytes(word.Value).Select(b => ByteChar(b)).ToList();
            while (true)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i + 1 < parts.Count; i++)
                    if (rank.TryGetValue(parts[i] + " " + parts[i + 1], out int r) && r < bestRank) { best = i; bestRank = r; }
                if (best < 0) break;
                parts[best] += parts[best + 1];
                parts.RemoveAt(best + 1);
            }
            ids.AddRange(parts.Select(p => vocab[p]));
        }
        return ids.ToArray();
    }

    private static string RandomUnicode(Random rng, int length)
    {
        string[] pool = ["hello", " world", " the", "é", "ß", "日本語", "😀", "👩‍💻", "\n", "  ", "\t", "a\u0301", "Ω", "123", "'s", "!?", "ё", "𝔘"];
        var sb = new StringBuilder();
        while (sb.Length < length)
        {
            if (rng.Next(3) == 0) sb.Append(pool[rng.Next(pool.Length)]);
            else sb.Append(char.ConvertFromUtf32(rng.Next(4) switch { 0 => rng.Next(0x20, 0x7F), 1 => rng.Next(0xA0, 0x800), 2 => rng.Next(0x4E00, 0x9FFF), _ => rng.Next(0x1F300, 0x1F64F) }));
        }
        return sb.ToString();
    }

    [Fact]
    public void BpeAppliesKnownMerges()
    {
        var tok = Gpt2BpeTokenizer.FromFiles(Path.Combine(WriteVocabMerges("a"), "vocab.json"), Path.Combine(_dir, "a", "merges.txt"));
        var vocab = Vocab();
        Assert.Equal(new[] { vocab["hello"], vocab["Ġworld"] }, tok.Encode("hello world"));
        Assert.Equal(new[] { vocab["he"], vocab["l"], vocab["p"] }, tok.Encode("help"));
        // "h e" outranks "t h", so " the" is Ġt + he even though "Ġth" exists.
        Assert.Equal(new[] { vocab["Ġt"], vocab["he"] }, tok.Encode(" the"));
        Assert.Equal(vocab["<|endoftext|>"], tok.EndOfTextId);
        Assert.Equal(vocab.Count, tok.VocabSize);
    }

    [Fact]
    public void BpeMatchesIndependentReferenceAndRoundTripsRandomUnicode()
    {
        var tok = TokenizerLoader.FromDirectory(WriteVocabMerges("b"));
        var rng = new Random(42);
        for (int i = 0; i < 200; i++)
        {
            string text = RandomUnicode(rng, rng.Next(1, 40));
            var ids = tok.Encode(text);
            Assert.Equal(ReferenceEncode(text), ids);
            Assert.Equal(text, tok.Decode(ids));
        }
    }

    [Fact]
    public void TokenizerJsonLoadsTheSameBpeAsVocabAndMerges()
    {
        string dir = Path.Combine(_dir, "json");
        Directory.CreateDirectory(dir);
        var vocab = Vocab();
        vocab.Remove("<|endoftext|>");
        var json = new
        {
            version = "1.0",
            added_tokens = new[] { new { id = vocab.Count, content = "<|endoftext|>", special = true } },
            pre_tokenizer = new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
            model = new { type = "BPE", vocab, merges = Merges.Select(m => m.Split(' ')).ToArray() },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), JsonSerializer.Serialize(json));
        var fromJson = TokenizerLoader.FromDirectory(dir);
        var fromFiles = TokenizerLoader.FromDirectory(WriteVocabMerges("c"));
        var rng = new Random(7);
        for (int i = 0; i < 50; i++)
        {
            string text = RandomUnicode(rng, 30);
            Assert.Equal(fromFiles.Encode(text), fromJson.Encode(text));
        }
        Assert.Equal(fromFiles.EndOfTextId, fromJson.EndOfTextId);
    }

    [Fact]
    public void TokenizerJsonWithSplitRegexPreTokenizerUsesThatRegex()
    {
        string dir = Path.Combine(_dir, "split");
        Directory.CreateDirectory(dir);
        // Splitting on single characters (regex ".") means no merge can cross a character: "hello" stays 5 tokens.
        var json = new
        {
            pre_tokenizer = new
            {
                type = "Sequence",
                pretokenizers = new object[]
                {
                    new { type = "Split", pattern = new { Regex = "." }, behavior = "Isolated", invert = false },
                    new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = false },
                },
            },
            model = new { type = "BPE", vocab = Vocab(), merges = Merges },
        };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), JsonSerializer.Serialize(json));
        var tok = TokenizerLoader.FromDirectory(dir);
        var vocab = Vocab();
        Assert.Equal("hello".Select(c => vocab[c.ToString()]), tok.Encode("hello"));
        Assert.Equal("日本語 ok", tok.Decode(tok.Encode("日本語 ok")));
    }

    [Fact]
    public void UnsupportedPreTokenizerIsRejectedNamingIt()
    {
        string dir = Path.Combine(_dir, "whitespace");
        Directory.CreateDirectory(dir);
        var json = new { pre_tokenizer = new { type = "Whitespace" }, model = new { type = "BPE", vocab = Vocab(), merges = Merges } };
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), JsonSerializer.Serialize(json));
        var e = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.FromDirectory(dir));
        Assert.Contains("tokenizer.json: field 'pre_tokenizer': 'Whitespace' is not supported", e.Message);
    }

    [Fact]
    public void TiktokenFileMergesByRankAndRoundTrips()
    {
        string dir = Path.Combine(_dir, "tt");
        Directory.CreateDirectory(dir);
        var tokens = Enumerable.Range(0, 256).Select(b => new[] { (byte)b }).ToList();
        foreach (var s in new[] { "he", "ll", "hell", "hello", " w", "or", " wor", "ld", " world" }) tokens.Add(Encoding.UTF8.GetBytes(s));
        File.WriteAllLines(Path.Combine(dir, "tiny.tiktoken"), tokens.Select((t, i) => $"{Convert.ToBase64String(t)} {i}"));
        var special = new Dictionary<string, int> { ["<|end_of_text|>"] = tokens.Count };
        var tok = TiktokenFileTokenizer.FromFile(Path.Combine(dir, "tiny.tiktoken"), special, "<|end_of_text|>");
        Assert.Equal(new[] { 259, 264 }, tok.Encode("hello world"));
        Assert.Equal(tokens.Count, tok.EndOfTextId);
        Assert.Equal("<|end_of_text|>", tok.Decode([tokens.Count]));
        var rng = new Random(3);
        for (int i = 0; i < 100; i++)
        {
            string text = RandomUnicode(rng, 30);
            Assert.Equal(text, tok.Decode(tok.Encode(text)));
        }
        Assert.IsType<TiktokenFileTokenizer>(Assert.IsType<HuggingFaceTokenizer>(TokenizerLoader.FromDirectory(dir)).Inner);
    }

    [Fact]
    public void ByteTokenizerRoundTripsRandomUnicode()
    {
        var tok = new ByteTokenizer();
        var rng = new Random(5);
        for (int i = 0; i < 100; i++)
        {
            string text = RandomUnicode(rng, 40);
            var ids = tok.Encode(text);
            Assert.Equal(Encoding.UTF8.GetByteCount(text), ids.Length);
            Assert.Equal(text, tok.Decode(ids));
        }
    }

    [Fact]
    public void IncrementalDecoderHoldsBackSplitMultiByteCharacters()
    {
        ITokenizer tok = new ByteTokenizer();
        var dec = tok.CreateIncrementalDecoder();
        Assert.Equal("a", dec.Push('a'));
        Assert.Equal("", dec.Push(0xC3));   // first byte of 'é'
        Assert.Equal("é", dec.Push(0xA9));
        Assert.Equal("", dec.Push(0xF0));   // 😀 is F0 9F 98 80
        Assert.Equal("", dec.Push(0x9F));
        Assert.Equal("", dec.Push(0x98));
        Assert.Equal("😀", dec.Push(0x80));
        Assert.Equal("", dec.Push(0xE6));
        Assert.Equal("\uFFFD", dec.Flush()); // an unfinished character at the end is reported, not dropped
    }

    [Fact]
    public void IncrementalDecodingOfBpeStreamEqualsFullDecodeWithoutReplacementCharacters()
    {
        var tok = TokenizerLoader.FromDirectory(WriteVocabMerges("d"));
        var rng = new Random(11);
        for (int i = 0; i < 50; i++)
        {
            string text = RandomUnicode(rng, 30);
            var dec = tok.CreateIncrementalDecoder();
            var pieces = tok.Encode(text).Select(dec.Push).ToList();
            pieces.Add(dec.Flush());
            Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD'));
            Assert.Equal(text, string.Concat(pieces));
        }
    }

    [Fact]
    public void DirectoryWithoutTokenizerFilesIsRejectedNamingIt()
    {
        string dir = Path.Combine(_dir, "empty");
        Directory.CreateDirectory(dir);
        var e = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.FromDirectory(dir));
        Assert.Contains("no tokenizer found", e.Message);
    }

    /// <summary>
    /// Every merge's result encodes to exactly its own token: a BPE whose merges.txt lost a line (or whose merges are
    /// applied out of order) fails here even when no other test text needs that merge.
    /// </summary>
    internal static void AssertEveryMergeEncodesToItsToken(ITokenizer tok, IReadOnlyList<string> merges, IReadOnlyDictionary<string, int> vocab,
        Func<string, string> tokenText)
    {
        foreach (var m in merges)
        {
            string merged = m.Replace(" ", "");
            string text = tokenText(merged);
            Assert.True(vocab.TryGetValue(merged, out int id), $"merge '{m}' makes '{merged}', which is not in the vocabulary");
            Assert.Equal(new[] { id }, tok.Encode(text));
        }
    }

    private static string ByteLevelText(string token) =>
        Encoding.UTF8.GetString(token.Select(c => (byte)Enumerable.Range(0, 256).First(b => ByteChar(b) == c.ToString())).ToArray());

    [Fact]
    public void EveryBpeMergeResultEncodesToOneToken()
    {
        var tok = Gpt2BpeTokenizer.FromFiles(Path.Combine(WriteVocabMerges("m"), "vocab.json"), Path.Combine(_dir, "m", "merges.txt"));
        AssertEveryMergeEncodesToItsToken(tok, Merges, Vocab(), ByteLevelText);
    }

    [Fact]
    public void DroppingTheLastMergeIsCaughtByTheMergeProperty()
    {
        // The mutation the issue found unguarded: merges.txt without its last line. The property above must fail on it.
        string dir = Path.Combine(_dir, "short");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "vocab.json"), JsonSerializer.Serialize(Vocab()));
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\n" + string.Join("\n", Merges[..^1]) + "\n");
        var tok = Gpt2BpeTokenizer.FromFiles(Path.Combine(dir, "vocab.json"), Path.Combine(dir, "merges.txt"));
        Assert.ThrowsAny<Xunit.Sdk.XunitException>(() => AssertEveryMergeEncodesToItsToken(tok, Merges, Vocab(), ByteLevelText));
    }

    [Fact]
    public void ATokenizerLargerThanTheModelsEmbeddingIsRefusedNamingBothSizes()
    {
        var tok = Gpt2BpeTokenizer.FromFiles(Path.Combine(WriteVocabMerges("fit"), "vocab.json"), Path.Combine(_dir, "fit", "merges.txt"));
        TokenizerLoader.CheckFits(tok, tok.VocabSize + 100, "fit");          // padded embeddings are fine (Qwen2's are)
        var e = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.CheckFits(tok, 96, "fit/tokenizer.json"));
        Assert.Contains($"the tokenizer has {tok.VocabSize} tokens", e.Message);
        Assert.Contains("embedding has 96 rows (config.json vocab_size)", e.Message);
        Assert.StartsWith("fit/tokenizer.json: ", e.Message);
    }

    [Fact]
    public void ATruncatedTokenizerJsonIsRefusedNamingTheFile()
    {
        string dir = Path.Combine(_dir, "cut");
        Directory.CreateDirectory(dir);
        var json = JsonSerializer.Serialize(new { model = new { type = "BPE", vocab = Vocab(), merges = Merges } });
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json[..(json.Length / 2)]);
        var e = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.FromDirectory(dir));
        Assert.Contains(Path.Combine(dir, "tokenizer.json") + ": not valid JSON, truncated?", e.Message);
    }

    [Fact]
    public void ATruncatedSentencePieceModelIsRefusedNamingTheFile()
    {
        string dir = Path.Combine(_dir, "spmcut");
        Directory.CreateDirectory(dir);
        var bytes = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Golden", "tokenizers", "spm", "tokenizer.model"));
        File.WriteAllBytes(Path.Combine(dir, "tokenizer.model"), bytes[..(bytes.Length / 3)]);
        var e = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.FromDirectory(dir));
        Assert.Contains(Path.Combine(dir, "tokenizer.model") + ": not a readable SentencePiece model", e.Message);
    }

    [Fact]
    public void TokenizerConfigNamesTheSpecialTokensAndAnUnknownOneIsRefused()
    {
        string dir = WriteVocabMerges("cfg");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"bos_token\": {\"content\": \"<|endoftext|>\"}, \"add_bos_token\": true, \"eos_token\": \"<|endoftext|>\"}");
        var tok = TokenizerLoader.FromDirectory(dir);
        int eot = Vocab()["<|endoftext|>"];
        Assert.Equal((eot, eot), (tok.BeginOfSequenceId, tok.EndOfTextId));
        Assert.Equal(new[] { eot, Vocab()["hello"] }, tok.EncodeWithSpecialTokens("hello"));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), "{\"eos_token\": \"</s>\"}");
        var e = Assert.Throws<TokenizerFormatException>(() => TokenizerLoader.FromDirectory(dir));
        Assert.Contains("field 'eos_token': token '</s>' is not in the tokenizer's vocabulary", e.Message);
    }
}
