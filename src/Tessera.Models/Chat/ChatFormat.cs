using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tessera.Models.Chat;

/// <summary>
/// How a model directory formats conversations: its chat template (or <see cref="ChatTemplate.Fallback"/>), the
/// beginning- and end-of-sequence texts the template may write, and the texts that end an assistant turn.
/// </summary>
/// <param name="Template">The parsed template.</param>
/// <param name="BosToken">tokenizer_config.json's bos_token, or null.</param>
/// <param name="EosToken">tokenizer_config.json's eos_token, or null.</param>
/// <param name="IsFallback">Whether the directory had no template and the fallback is used.</param>
public sealed record ChatFormat(ChatTemplate Template, string? BosToken, string? EosToken, bool IsFallback)
{
    /// <summary>Texts that end the assistant's turn: the eos token, and for the fallback its end-of-turn marker.</summary>
    public IReadOnlyList<string> StopStrings =>
        IsFallback ? [ChatTemplate.FallbackStop] : EosToken is { Length: > 0 } eos ? [eos] : [];

    /// <summary>
    /// Reads tokenizer_config.json in <paramref name="directory"/> (when present): its chat_template (a string, or a list
    /// of {name, template} from which "default" or the first is taken), bos_token and eos_token (strings or
    /// {"content": ...} objects). Parses the template now, so an unsupported one fails at start-up.
    /// </summary>
    /// <exception cref="ChatTemplateException">The template cannot be run (names the construct and its position).</exception>
    /// <exception cref="InvalidDataException">tokenizer_config.json is not valid JSON or has fields of the wrong type.</exception>
    public static ChatFormat Load(string directory)
    {
        string path = Path.Combine(directory, "tokenizer_config.json");
        if (!File.Exists(path)) return new ChatFormat(ChatTemplate.Fallback, null, null, IsFallback: true);
        JsonObject root;
        try
        {
            root = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON ({e.Message})", e);
        }
        string? bos = TokenText(root["bos_token"], path, "bos_token"), eos = TokenText(root["eos_token"], path, "eos_token");
        string? source = root["chat_template"] switch
        {
            null => null,
            JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
            JsonArray list => (list.OfType<JsonObject>().FirstOrDefault(t => t["name"]?.GetValue<string>() == "default") ?? list.OfType<JsonObject>().FirstOrDefault())?["template"]?.GetValue<string>(),
            var other => throw new InvalidDataException($"{path}: chat_template must be a string or a list of {{name, template}}, got {other.GetValueKind()}"),
        };
        // transformers 4.43+ may keep the template in its own file beside the config.
        string jinja = Path.Combine(directory, "chat_template.jinja");
        if (source is null && File.Exists(jinja)) return new ChatFormat(ChatTemplate.Parse(File.ReadAllText(jinja), jinja), bos, eos, false);
        if (source is null) return new ChatFormat(ChatTemplate.Fallback, bos, eos, IsFallback: true);
        return new ChatFormat(ChatTemplate.Parse(source, $"{path}: chat_template"), bos, eos, false);
    }

    private static string? TokenText(JsonNode? node, string path, string field) => node switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        JsonValue v when v.GetValueKind() == JsonValueKind.Null => null,
        JsonObject o => o["content"]?.GetValue<string>(),
        _ => throw new InvalidDataException($"{path}: {field} must be a string or an object with 'content'"),
    };
}
