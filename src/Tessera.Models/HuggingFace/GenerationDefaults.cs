using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tessera.Models.HuggingFace;

/// <summary>
/// The special token ids generation uses, as transformers' <c>generate</c> reads them: generation_config.json first, then
/// config.json for the fields it lacks. eos_token_id may be one id or a list (Llama 3 instruct, Qwen2 chat stop on several).
/// </summary>
public sealed record GenerationDefaults
{
    /// <summary>File name of the generation configuration.</summary>
    public const string FileName = "generation_config.json";

    /// <summary>Beginning-of-sequence token id, or null.</summary>
    public int? BosTokenId { get; init; }

    /// <summary>Token ids that end generation (possibly empty).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary>Padding token id, or null.</summary>
    public int? PadTokenId { get; init; }

    /// <summary>
    /// Reads <paramref name="directory"/>'s generation_config.json and config.json (either may be absent: then no ids).
    /// </summary>
    /// <exception cref="HuggingFaceFormatException">A file is not valid JSON or a field is not an id (or list of ids).</exception>
    public static GenerationDefaults Load(string directory)
    {
        var generation = ReadObject(Path.Combine(directory, FileName));
        var config = ReadObject(Path.Combine(directory, HuggingFaceModelDirectory.ConfigFile));
        (JsonNode? Node, string File) Field(string name)
        {
            if (generation.Object?[name] is { } g) return (g, generation.Path);
            return (config.Object?[name], config.Path);
        }
        var (bos, bosFile) = Field("bos_token_id");
        var (eos, eosFile) = Field("eos_token_id");
        var (pad, padFile) = Field("pad_token_id");
        return new GenerationDefaults
        {
            BosTokenId = Id(bos, bosFile, "bos_token_id"),
            EosTokenIds = Ids(eos, eosFile, "eos_token_id"),
            PadTokenId = Id(pad, padFile, "pad_token_id"),
        };
    }

    /// <summary>generation_config.json text with these ids (what transformers' GenerationConfig.save_pretrained writes for them).</summary>
    public string ToJson()
    {
        var o = new JsonObject { ["_from_model_config"] = false };
        if (BosTokenId is int bos) o["bos_token_id"] = bos;
        if (EosTokenIds.Count == 1) o["eos_token_id"] = EosTokenIds[0];
        else if (EosTokenIds.Count > 1) o["eos_token_id"] = new JsonArray(EosTokenIds.Select(i => (JsonNode)i).ToArray());
        if (PadTokenId is int pad) o["pad_token_id"] = pad;
        return o.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
    }

    private static (JsonObject? Object, string Path) ReadObject(string path)
    {
        if (!File.Exists(path)) return (null, path);
        try
        {
            return (JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new HuggingFaceFormatException(path, "not a JSON object"), path);
        }
        catch (JsonException e)
        {
            throw new HuggingFaceFormatException(path, $"not valid JSON ({e.Message})", e);
        }
    }

    private static int? Id(JsonNode? node, string path, string field) => node switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out int id) && id >= 0 => id,
        JsonValue v when v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out double d) && d == Math.Floor(d) && d >= 0 && d <= int.MaxValue => (int)d,
        _ => throw new HuggingFaceFormatException(path, $"field '{field}': must be a token id (a non-negative integer), got {node.ToJsonString()}"),
    };

    private static IReadOnlyList<int> Ids(JsonNode? node, string path, string field) => node switch
    {
        null => [],
        JsonArray a => a.Select(n => Id(n, path, field) ?? throw new HuggingFaceFormatException(path, $"field '{field}': null inside the list")).ToArray(),
        _ => [Id(node, path, field)!.Value],
    };
}
