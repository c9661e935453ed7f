using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Tessera.Models.HuggingFace;
using Tessera.Models.Tokenization;
using Xunit;

namespace Tessera.Tests.Models.Tokenization;

/// <summary>
/// Tokenizers of each family against the Hugging Face `tokenizers` library (and `sentencepiece` for tokenizer.model):
/// tests/Tessera.Tests/Golden/tokenizers/&lt;family&gt;, written by scripts/golden/make_golden_tokenizers.py, holds the
/// tokenizer files and the ids and decoded texts the reference produced. Ids must be identical; decoding must give the
/// reference's text.
/// </summary>
public sealed class TokenizerGoldenTests
{
    private static string Folder(string family) => Path.Combine(AppContext.BaseDirectory, "Golden", "tokenizers", family);

    public static TheoryData<string> Families => new() { "llama3", "qwen2", "llama2", "mistral", "spm" };

    private static JsonObject Encodings(string family)
    {
        string folder = Folder(family);
        if (!File.Exists(Path.Combine(folder, "encodings.json")))
            Assert.Skip($"no golden tokenizer for {family} yet: scripts/golden/make_golden_tokenizers.py writes it on a machine with the tokenizers library");
        return (JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "encodings.json"))) as JsonObject)!;
    }

    /// <summary>
    /// Texts where a library Tessera uses is known to differ from the reference, with the reason. Each must still differ
    /// (the test fails when upstream fixes it, so the entry goes).
    /// </summary>
    private static readonly Dictionary<(string Family, string Text), string> KnownDifferences = new()
    {
        // sentencepiece's bpe_model.cc merges equal-score pairs leftmost first; Microsoft.ML.Tokenizers 3.0's
        // SentencePieceTokenizer takes the rightmost, so a run of three "▁" splits as [▁, ▁▁] instead of [▁▁, ▁].
        [("spm", "  leading spaces and\ttabs\n\nnew lines  ")] = "Microsoft.ML.Tokenizers 3.0 breaks SentencePiece score ties to the right",
    };

    private static bool NormalizationAvailable => "e\u0301".Normalize(NormalizationForm.FormC) == "\u00e9";

    [Theory]
    [MemberData(nameof(Families))]
    public void EncodingGivesTheReferenceIdsAndDecodingItsText(string family)
    {
        var golden = Encodings(family);
        var tok = TokenizerLoader.FromDirectory(Folder(family));
        Assert.Equal(golden["vocab_size"]!.GetValue<int>(), tok.VocabSize);
        int rows = 0;
        var mismatches = new List<string>();
        foreach (var row in golden["texts"]!.AsArray().OfType<JsonObject>())
        {
            string text = row["text"]!.GetValue<string>();
            if (family == "qwen2" && !NormalizationAvailable && text.Any(c => System.Globalization.CharUnicodeInfo.GetUnicodeCategory(c) == System.Globalization.UnicodeCategory.NonSpacingMark))
                continue;   // decomposed input: NFC needs ICU, which Tessera's invariant globalization leaves out (README: tokenizers)
            var ids = row["ids"]!.AsArray().Select(n => n!.GetValue<int>()).ToArray();
            if (KnownDifferences.ContainsKey((family, text)))
            {
                Assert.False(ids.SequenceEqual(tok.Encode(text)), $"{family}: {JsonSerializer.Serialize(text)} now matches the reference; remove it from KnownDifferences");
                continue;
            }
            if (!ids.SequenceEqual(tok.Encode(text)))
                mismatches.Add($"{JsonSerializer.Serialize(text)} encodes as [{string.Join(", ", tok.Encode(text))}], reference [{string.Join(", ", ids)}]");
            else if (row["ids_with_special"] is JsonArray withSpecial && !withSpecial.Select(n => n!.GetValue<int>()).SequenceEqual(tok.EncodeWithSpecialTokens(text)))
                mismatches.Add($"{JsonSerializer.Serialize(text)} with special tokens encodes as [{string.Join(", ", tok.EncodeWithSpecialTokens(text))}], reference [{string.Join(", ", withSpecial)}]");
            if (tok.Decode(ids) != row["decoded"]!.GetValue<string>())
                mismatches.Add($"{JsonSerializer.Serialize(text)} decodes as {JsonSerializer.Serialize(tok.Decode(ids))}, reference {row["decoded"]!.ToJsonString()}");
            rows++;
        }
        Assert.True(mismatches.Count == 0, $"{family}: {mismatches.Count} of {rows} texts differ:\n" + string.Join("\n", mismatches));
        Assert.True(rows >= 7, $"{family}: only {rows} reference rows were compared");
    }

    [Theory]
    [InlineData("llama3")]
    [InlineData("qwen2")]
    public void EveryMergeOfAByteLevelFamilyEncodesToOneToken(string family)
    {
        Encodings(family);
        var json = (JsonNode.Parse(File.ReadAllText(Path.Combine(Folder(family), "tokenizer.json"))) as JsonObject)!;
        var vocab = json["model"]!["vocab"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>());
        var merges = json["model"]!["merges"]!.AsArray()
            .Select(m => m is JsonArray pair ? $"{pair[0]} {pair[1]}" : m!.GetValue<string>()).ToList();
        var tok = TokenizerLoader.FromDirectory(Folder(family));
        var alphabet = Enumerable.Range(0, 256).ToDictionary(b => (char)ByteLevelChar(b), b => (byte)b);
        // A merge of the first bytes of a multi-byte character (F0 9F of an emoji) is no text on its own: only merges whose
        // result is whole UTF-8 can be encoded alone (the others are exercised by the texts that contain the character).
        var strict = new UTF8Encoding(false, throwOnInvalidBytes: true);
        bool Whole(string token) { try { strict.GetString(token.Select(c => alphabet[c]).ToArray()); return true; } catch (DecoderFallbackException) { return false; } }
        var whole = merges.Where(m => Whole(m.Replace(" ", ""))).ToList();
        Assert.True(whole.Count > merges.Count / 2, $"{family}: only {whole.Count} of {merges.Count} merges make whole characters");
        TokenizerTests.AssertEveryMergeEncodesToItsToken(tok, whole, vocab, t => strict.GetString(t.Select(c => alphabet[c]).ToArray()));
    }

    [Theory]
    [InlineData("llama3", "<|begin_of_text|>", "<|end_of_text|>")]
    [InlineData("qwen2", null, "<|endoftext|>")]
    [InlineData("llama2", "<s>", "</s>")]
    [InlineData("mistral", "<s>", "</s>")]
    public void SpecialTokensComeFromTheConfigAndThePostProcessorAndGenerationStopsOnEveryEos(string family, string? bos, string eos)
    {
        Encodings(family);
        var tok = TokenizerLoader.FromDirectory(Folder(family));
        Assert.Equal(bos, tok.BeginOfSequenceId is int b ? Encoding.UTF8.GetString(tok.TokenBytes(b)) : null);
        Assert.Equal(eos, Encoding.UTF8.GetString(tok.TokenBytes(tok.EndOfTextId!.Value)));
        var generation = GenerationDefaults.Load(Folder(family));
        Assert.Contains(tok.EndOfTextId!.Value, generation.EosTokenIds);
        if (family == "llama3") Assert.Equal(2, generation.EosTokenIds.Count);   // <|end_of_text|> and <|eot_id|>
    }

    /// <summary>GPT-2's byte-level alphabet, written out independently of the library's.</summary>
    private static int ByteLevelChar(int b)
    {
        static bool Printable(int x) => (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
        if (Printable(b)) return b;
        int n = 0;
        for (int x = 0; x < b; x++) if (!Printable(x)) n++;
        return 256 + n;
    }
}
