using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tessera.Models.Tokenization;

/// <summary>
/// Finds and loads the tokenizer of a model directory: tokenizer.json (byte-level BPE with GPT-2
/// pre-tokenization), else vocab.json + merges.txt, else a tiktoken ranks file (*.tiktoken, or tokenizer.model
/// when it is in tiktoken's text format).
/// </summary>
public static class TokenizerLoader
{
    /// <summary>Loads the tokenizer files found in <paramref name="directory"/>.</summary>
    /// <exception cref="TokenizerFormatException">No supported tokenizer files, or they are malformed or unsupported.</exception>
    public static ITokenizer FromDirectory(string directory)
    {
        if (!Directory.Exists(directory)) throw new TokenizerFormatException(directory, "directory not found");
        string tokenizerJson = Path.Combine(directory, "tokenizer.json");
        if (File.Exists(tokenizerJson)) return FromTokenizerJson(tokenizerJson);
        string vocab = Path.Combine(directory, "vocab.json"), merges = Path.Combine(directory, "merges.txt");
        if (File.Exists(vocab) && File.Exists(merges)) return Gpt2BpeTokenizer.FromFiles(vocab, merges);
        var tiktoken = Directory.GetFiles(directory, "*.tiktoken").Order(StringComparer.Ordinal).FirstOrDefault();
        string model = Path.Combine(directory, "tokenizer.model");
        if (tiktoken is null && File.Exists(model) && LooksLikeTiktoken(model)) tiktoken = model;
        if (tiktoken is not null) return TiktokenFileTokenizer.FromFile(tiktoken);
        throw new TokenizerFormatException(directory,
            "no tokenizer found: expected tokenizer.json, vocab.json + merges.txt, or a tiktoken file (SentencePiece tokenizer.model is not supported)");
    }

    private static bool LooksLikeTiktoken(string path)
    {
        using var reader = new StreamReader(path);
        var line = reader.ReadLine();
        if (line is null) return false;
        var parts = line.Split(' ');
        return parts.Length == 2 && int.TryParse(parts[1], out _) && parts[0].All(c => char.IsAsciiLetterOrDigit(c) || c is '+' or '/' or '=');
    }

    /// <summary>
    /// The regex that splits text before BPE: GPT-2's for pre_tokenizer ByteLevel (use_regex true); the Split
    /// pattern for Sequence [Split(Regex), ByteLevel(use_regex false)], as Llama 3 writes it.
    /// </summary>
    private static string PreTokenizationPattern(JsonObject? pre, string path)
    {
        string? type = pre?["type"]?.GetValue<string>();
        if (type == "ByteLevel" && pre!["use_regex"]?.GetValue<bool>() != false) return Gpt2BpeTokenizer.Gpt2Pattern;
        if (type == "Sequence" && pre!["pretokenizers"] is JsonArray steps && steps.Count == 2
            && steps[0] is JsonObject split && split["type"]?.GetValue<string>() == "Split"
            && split["pattern"]?["Regex"]?.GetValue<string>() is string regex
            && split["behavior"]?.GetValue<string>() is "Isolated" or null
            && steps[1] is JsonObject byteLevel && byteLevel["type"]?.GetValue<string>() == "ByteLevel"
            && byteLevel["use_regex"]?.GetValue<bool>() == false)
            return regex;
        throw new TokenizerFormatException(path,
            $"pre_tokenizer '{type ?? "none"}' is not supported: only ByteLevel, or Sequence [Split(Regex), ByteLevel] (provide vocab.json + merges.txt or a tiktoken file instead)");
    }

    /// <summary>
    /// Loads a Hugging Face tokenizer.json whose model is byte-level BPE, pre-tokenized by GPT-2's regex or by a
    /// Split regex (Llama 3); other kinds are rejected naming what was found.
    /// </summary>
    public static Gpt2BpeTokenizer FromTokenizerJson(string path)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new TokenizerFormatException(path, "not a JSON object");
        }
        catch (JsonException e)
        {
            throw new TokenizerFormatException(path, $"not valid JSON ({e.Message})", e);
        }
        var model = root["model"] as JsonObject ?? throw new TokenizerFormatException(path, "missing object 'model'");
        string? type = model["type"]?.GetValue<string>();
        if (type != "BPE") throw new TokenizerFormatException(path, $"model type '{type}' is not supported (only byte-level BPE)");
        string pattern = PreTokenizationPattern(root["pre_tokenizer"] as JsonObject, path);
        var vocab = model["vocab"] as JsonObject ?? throw new TokenizerFormatException(path, "missing object 'model.vocab'");
        var merges = model["merges"] as JsonArray ?? throw new TokenizerFormatException(path, "missing array 'model.merges'");

        var vocabOut = new JsonObject();
        foreach (var (token, id) in vocab) vocabOut[token] = id!.GetValue<int>();
        if (root["added_tokens"] is JsonArray added)
            foreach (var t in added.OfType<JsonObject>())
                if (t["content"]?.GetValue<string>() is string content && t["id"] is JsonNode id && !vocabOut.ContainsKey(content))
                    vocabOut[content] = id.GetValue<int>();
        var mergesOut = new StringBuilder("#version: 0.2\n");
        foreach (var m in merges)
        {
            // Older files write "a b"; newer ones ["a", "b"].
            string line = m switch
            {
                JsonArray pair when pair.Count == 2 => $"{pair[0]!.GetValue<string>()} {pair[1]!.GetValue<string>()}",
                JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
                _ => throw new TokenizerFormatException(path, $"merge {m?.ToJsonString()} is neither \"a b\" nor [\"a\", \"b\"]"),
            };
            mergesOut.Append(line).Append('\n');
        }
        return Gpt2BpeTokenizer.FromBytes(Encoding.UTF8.GetBytes(vocabOut.ToJsonString()), Encoding.UTF8.GetBytes(mergesOut.ToString()), path, pattern);
    }
}
