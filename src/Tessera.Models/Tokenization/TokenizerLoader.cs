using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tessera.Models.Tokenization;

/// <summary>
/// Finds and loads the tokenizer of a model directory, as transformers would: tokenizer.json (byte-level BPE as GPT-2,
/// Llama 3 and Qwen2 write it; SentencePiece-style BPE with byte fallback as Llama 2 and Mistral write it; Unigram), else
/// vocab.json + merges.txt, else tokenizer.model (SentencePiece's protobuf, or a tiktoken ranks file), else *.tiktoken;
/// then the special tokens of tokenizer_config.json and the post-processor (<see cref="HuggingFaceTokenizer"/>).
/// </summary>
public static class TokenizerLoader
{
    /// <summary>Loads the tokenizer files found in <paramref name="directory"/>.</summary>
    /// <exception cref="TokenizerFormatException">No supported tokenizer files, or they are malformed or unsupported.</exception>
    public static ITokenizer FromDirectory(string directory)
    {
        if (!Directory.Exists(directory)) throw new TokenizerFormatException(directory, "directory not found");
        string tokenizerJson = Path.Combine(directory, "tokenizer.json");
        string vocab = Path.Combine(directory, "vocab.json"), merges = Path.Combine(directory, "merges.txt");
        string model = Path.Combine(directory, "tokenizer.model");
        ITokenizer inner;
        int? templateBos = null;
        string source;
        if (File.Exists(tokenizerJson))
        {
            (inner, templateBos) = ReadTokenizerJson(tokenizerJson);
            source = tokenizerJson;
        }
        else if (File.Exists(vocab) && File.Exists(merges))
        {
            inner = Gpt2BpeTokenizer.FromFiles(vocab, merges);
            source = vocab;
        }
        else if (File.Exists(model))
        {
            inner = LooksLikeTiktoken(model) ? TiktokenFileTokenizer.FromFile(model) : SentencePieceModelTokenizer.FromModelFile(model);
            templateBos = inner.BeginOfSequenceId;   // LlamaTokenizer's add_bos_token defaults to true
            source = model;
        }
        else if (Directory.GetFiles(directory, "*.tiktoken").Order(StringComparer.Ordinal).FirstOrDefault() is string tiktoken)
        {
            inner = TiktokenFileTokenizer.FromFile(tiktoken);
            source = tiktoken;
        }
        else
        {
            throw new TokenizerFormatException(directory,
                "no tokenizer found: expected tokenizer.json, vocab.json + merges.txt, tokenizer.model (SentencePiece or tiktoken) or a *.tiktoken file");
        }
        var (bos, eos) = SpecialTokens(Path.Combine(directory, "tokenizer_config.json"), inner, templateBos);
        return new HuggingFaceTokenizer(inner, bos, eos, source);
    }

    /// <summary>
    /// Checks that every id <paramref name="tokenizer"/> can produce has a row in a model of <paramref name="modelVocabSize"/>
    /// tokens (config.json's vocab_size may be larger, padded, as Qwen2's is; never smaller).
    /// </summary>
    /// <exception cref="TokenizerFormatException">The tokenizer has more tokens than the model's embedding has rows.</exception>
    public static void CheckFits(ITokenizer tokenizer, int modelVocabSize, string tokenizerSource)
    {
        if (tokenizer.VocabSize > modelVocabSize)
            throw new TokenizerFormatException(tokenizerSource,
                $"the tokenizer has {tokenizer.VocabSize} tokens (ids 0..{tokenizer.VocabSize - 1}) but the model's embedding has {modelVocabSize} rows (config.json vocab_size); they do not belong to the same model");
    }

    /// <summary>
    /// Beginning- and end-of-sequence ids: tokenizer_config.json's bos_token and eos_token (a string or {"content": ...})
    /// looked up in the vocabulary, add_bos_token deciding whether the BOS is put in front (default: what the
    /// post-processor or the SentencePiece model does); the tokenizer's own end-of-text token when the file names none.
    /// </summary>
    private static (int? Bos, int? Eos) SpecialTokens(string configPath, ITokenizer tokenizer, int? templateBos)
    {
        int? bos = templateBos, eos = tokenizer.EndOfTextId;
        if (!File.Exists(configPath)) return (bos, eos);
        JsonObject config;
        try
        {
            config = JsonNode.Parse(File.ReadAllText(configPath)) as JsonObject ?? throw new TokenizerFormatException(configPath, "not a JSON object");
        }
        catch (JsonException e)
        {
            throw new TokenizerFormatException(configPath, $"not valid JSON ({e.Message})", e);
        }
        var ids = new Lazy<Dictionary<string, int>>(() => TextToId(tokenizer));
        int? Lookup(string field)
        {
            var node = config[field];
            string? text = node switch
            {
                null => null,
                JsonObject o => o["content"]?.GetValue<string>(),
                JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
                _ => throw new TokenizerFormatException(configPath, $"field '{field}': must be a token string or {{\"content\": ...}}, got {node.ToJsonString()}"),
            };
            if (text is null) return null;
            return ids.Value.TryGetValue(text, out int id) ? id
                : throw new TokenizerFormatException(configPath, $"field '{field}': token '{text}' is not in the tokenizer's vocabulary of {tokenizer.VocabSize}");
        }
        if (Lookup("eos_token") is int configEos) eos = configEos;
        int? configBos = Lookup("bos_token");
        bool? addBos = config["add_bos_token"] is JsonValue a && a.GetValueKind() is JsonValueKind.True or JsonValueKind.False ? a.GetValue<bool>() : null;
        if (addBos == true) bos = configBos ?? bos;
        else if (addBos == false) bos = null;
        return (bos, eos);
    }

    /// <summary>Every token's text (its bytes as UTF-8) to its id; the first id wins where two decode alike.</summary>
    private static Dictionary<string, int> TextToId(ITokenizer tokenizer)
    {
        var map = new Dictionary<string, int>(tokenizer.VocabSize, StringComparer.Ordinal);
        for (int id = 0; id < tokenizer.VocabSize; id++) map.TryAdd(Encoding.UTF8.GetString(tokenizer.TokenBytes(id)), id);
        return map;
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
    /// Loads a Hugging Face tokenizer.json whose model is byte-level BPE (pre-tokenized by GPT-2's regex or a Split regex);
    /// use <see cref="FromDirectory"/> for the other kinds and the special tokens.
    /// </summary>
    public static Gpt2BpeTokenizer FromTokenizerJson(string path)
    {
        var (tokenizer, _) = ReadTokenizerJson(path);
        return tokenizer as Gpt2BpeTokenizer ?? throw new TokenizerFormatException(path, "not a byte-level BPE tokenizer (load it with TokenizerLoader.FromDirectory)");
    }

    /// <summary>The tokenizer a tokenizer.json describes, and the token its post-processor puts before a text (if any).</summary>
    private static (ITokenizer Tokenizer, int? TemplateBos) ReadTokenizerJson(string path)
    {
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new TokenizerFormatException(path, "not a JSON object");
        }
        catch (JsonException e)
        {
            throw new TokenizerFormatException(path, $"not valid JSON, truncated? ({e.Message})", e);
        }
        var model = root["model"] as JsonObject ?? throw new TokenizerFormatException(path, "missing object 'model'");
        string? type = model["type"]?.GetValue<string>();
        int? templateBos = TemplateBos(root["post_processor"] as JsonObject, path);
        if (type == "Unigram") return (SentencePieceModelTokenizer.FromUnigramJson(path), templateBos);
        if (type != "BPE") throw new TokenizerFormatException(path, $"field 'model.type': '{type}' is not supported (BPE, Unigram)");
        var pre = root["pre_tokenizer"] as JsonObject;
        bool byteLevel = HasStep(pre, "ByteLevel", "pretokenizers") || (root["decoder"] as JsonObject)?["type"]?.GetValue<string>() == "ByteLevel";
        return (byteLevel ? ReadByteLevelBpe(root, model, pre, path) : ReadSentencePieceBpe(root, model, pre, path), templateBos);
    }

    private static bool HasStep(JsonObject? node, string type, string listField) =>
        node?["type"]?.GetValue<string>() == type
        || (node?[listField] is JsonArray steps && steps.OfType<JsonObject>().Any(s => s["type"]?.GetValue<string>() == type));

    /// <summary>The special token a TemplateProcessing post-processor (alone or in a Sequence) puts before "$A".</summary>
    private static int? TemplateBos(JsonObject? post, string path)
    {
        if (post is null) return null;
        var template = post["type"]?.GetValue<string>() == "TemplateProcessing" ? post
            : (post["processors"] as JsonArray)?.OfType<JsonObject>().FirstOrDefault(p => p["type"]?.GetValue<string>() == "TemplateProcessing");
        if (template?["single"] is not JsonArray single || single.Count == 0 || single[0] is not JsonObject first) return null;
        if (first["SpecialToken"]?["id"]?.GetValue<string>() is not string name) return null;
        var ids = template["special_tokens"]?[name]?["ids"] as JsonArray;
        if (ids is null || ids.Count != 1) throw new TokenizerFormatException(path, $"post_processor: special token '{name}' needs exactly one id");
        return ids[0]!.GetValue<int>();
    }

    private static (string Left, string Right) Merge(JsonNode? m, string path) => m switch
    {
        JsonArray pair when pair.Count == 2 => (pair[0]!.GetValue<string>(), pair[1]!.GetValue<string>()),
        JsonValue v when v.GetValueKind() == JsonValueKind.String && v.GetValue<string>().Split(' ') is [var l, var r] => (l, r),
        _ => throw new TokenizerFormatException(path, $"merge {m?.ToJsonString()} is neither \"a b\" nor [\"a\", \"b\"]"),
    };

    private static Dictionary<string, int> AddedTokens(JsonObject root, string path)
    {
        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        if (root["added_tokens"] is JsonArray list)
            foreach (var t in list.OfType<JsonObject>())
                if (t["content"]?.GetValue<string>() is string content && t["id"] is JsonNode id)
                    added[content] = id.GetValue<int>() is int i and >= 0 ? i : throw new TokenizerFormatException(path, $"added token '{content}' has a negative id");
        return added;
    }

    private static Gpt2BpeTokenizer ReadByteLevelBpe(JsonObject root, JsonObject model, JsonObject? pre, string path)
    {
        string pattern = PreTokenizationPattern(pre, path);
        bool nfc = root["normalizer"] switch
        {
            null => false,
            JsonObject { } n when n["type"]?.GetValue<string>() == "NFC" => true,
            JsonObject n => throw new TokenizerFormatException(path, $"field 'normalizer': '{n["type"]}' is not supported for byte-level BPE (only NFC or none)"),
            _ => false,
        };
        var vocab = model["vocab"] as JsonObject ?? throw new TokenizerFormatException(path, "missing object 'model.vocab'");
        var merges = model["merges"] as JsonArray ?? throw new TokenizerFormatException(path, "missing array 'model.merges'");
        var vocabOut = new JsonObject();
        foreach (var (token, id) in vocab) vocabOut[token] = id!.GetValue<int>();
        var added = AddedTokens(root, path);
        foreach (var (content, id) in added)
            if (!vocabOut.ContainsKey(content)) vocabOut[content] = id;
        var mergesOut = new StringBuilder("#version: 0.2\n");
        foreach (var m in merges)
        {
            var (l, r) = Merge(m, path);
            mergesOut.Append(l).Append(' ').Append(r).Append('\n');
        }
        return Gpt2BpeTokenizer.FromBytes(Encoding.UTF8.GetBytes(vocabOut.ToJsonString()), Encoding.UTF8.GetBytes(mergesOut.ToString()), path, pattern, nfc,
            added.Count > 0 ? added : null);
    }

    /// <summary>SentencePiece-style BPE (Llama 2, Mistral): "▁" for spaces via Prepend + Replace or Metaspace, byte fallback.</summary>
    private static SentencePieceBpeTokenizer ReadSentencePieceBpe(JsonObject root, JsonObject model, JsonObject? pre, string path)
    {
        bool everySegment;
        var normalizer = root["normalizer"] as JsonObject;
        if (pre is null)
        {
            // Llama 2: Sequence [Prepend("▁"), Replace(" ", "▁")] (a leading Strip or NFKC would change the text: refused).
            var steps = normalizer?["type"]?.GetValue<string>() == "Sequence" ? (normalizer["normalizers"] as JsonArray)?.OfType<JsonObject>().ToList() : normalizer is null ? [] : [normalizer];
            var kinds = steps!.Select(st => st["type"]?.GetValue<string>()).ToList();
            if (!(kinds.Count == 2 && kinds[0] == "Prepend" && kinds[1] == "Replace"))
                throw new TokenizerFormatException(path, $"field 'normalizer': [{string.Join(", ", kinds)}] is not supported for SentencePiece-style BPE (expected [Prepend, Replace] or a Metaspace pre-tokenizer)");
            everySegment = true;
        }
        else if (pre["type"]?.GetValue<string>() == "Metaspace")
        {
            if (normalizer is not null) throw new TokenizerFormatException(path, $"field 'normalizer': '{normalizer["type"]}' beside a Metaspace pre-tokenizer is not supported");
            if (pre["split"] is JsonValue split && split.GetValue<bool>())
                throw new TokenizerFormatException(path, "field 'pre_tokenizer.split': true is not supported (Llama 2 and Mistral use false)");
            string scheme = pre["prepend_scheme"]?.GetValue<string>() ?? (pre["add_prefix_space"]?.GetValue<bool>() == false ? "never" : "always");
            everySegment = scheme switch
            {
                "always" => true,
                "first" => false,
                _ => throw new TokenizerFormatException(path, $"field 'pre_tokenizer.prepend_scheme': '{scheme}' is not supported (always, first)"),
            };
        }
        else
        {
            throw new TokenizerFormatException(path, $"field 'pre_tokenizer': '{pre["type"]}' is not supported for SentencePiece-style BPE (Metaspace or none)");
        }
        var vocabNode = model["vocab"] as JsonObject ?? throw new TokenizerFormatException(path, "missing object 'model.vocab'");
        var vocab = vocabNode.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>(), StringComparer.Ordinal);
        var merges = (model["merges"] as JsonArray ?? throw new TokenizerFormatException(path, "missing array 'model.merges'")).Select(m => Merge(m, path)).ToList();
        string unknown = model["unk_token"]?.GetValue<string>() ?? throw new TokenizerFormatException(path, "field 'model.unk_token' is missing (SentencePiece-style BPE needs one)");
        return new SentencePieceBpeTokenizer(vocab, merges, AddedTokens(root, path), unknown, everySegment, path);
    }
}
