using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Tessera.Server.Contracts;

/// <summary>"stop": a string or an array of strings (null: none).</summary>
public sealed class StopConverter : JsonConverter<List<string>>
{
    public override List<string>? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.Null) return null;
        if (reader.TokenType == JsonTokenType.String) return [reader.GetString()!];
        if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("must be a string or an array of strings");
        var list = new List<string>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.String) throw new JsonException("must be a string or an array of strings");
            list.Add(reader.GetString()!);
        }
        return list;
    }

    public override void Write(Utf8JsonWriter writer, List<string> value, JsonSerializerOptions options)
    {
        writer.WriteStartArray();
        foreach (var s in value) writer.WriteStringValue(s);
        writer.WriteEndArray();
    }
}

/// <summary>A message's "content": a string, or an array of parts whose "text" parts are concatenated (other parts refused).</summary>
public sealed class ContentConverter : JsonConverter<string>
{
    public override string? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.Null) return null;
        if (reader.TokenType == JsonTokenType.String) return reader.GetString();
        if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("must be a string or an array of content parts");
        var text = new StringBuilder();
        using var parts = JsonDocument.ParseValue(ref reader);
        foreach (var part in parts.RootElement.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object || !part.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
                throw new JsonException("each content part must be an object with a string 'type'");
            if (type.GetString() != "text") throw new JsonException($"content parts of type '{type.GetString()}' are not supported (only 'text')");
            if (!part.TryGetProperty("text", out var t) || t.ValueKind != JsonValueKind.String) throw new JsonException("a text part needs a string 'text'");
            text.Append(t.GetString());
        }
        return text.ToString();
    }

    public override void Write(Utf8JsonWriter writer, string value, JsonSerializerOptions options) => writer.WriteStringValue(value);
}

/// <summary>"prompt": a string, an array of one string, or an array of token ids.</summary>
public sealed class PromptConverter : JsonConverter<PromptBody>
{
    public override PromptBody? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.Null) return null;
        if (reader.TokenType == JsonTokenType.String) return new PromptBody(reader.GetString(), null);
        if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("must be a string, an array of strings or an array of token ids");
        var strings = new List<string>();
        var tokens = new List<int>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType == JsonTokenType.String) strings.Add(reader.GetString()!);
            else if (reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out int id)) tokens.Add(id);
            else throw new JsonException("must be a string, an array of strings or an array of token ids");
        }
        if (strings.Count > 0 && tokens.Count > 0) throw new JsonException("mixes strings and token ids");
        if (strings.Count > 1) throw new JsonException($"holds {strings.Count} prompts; this server takes one prompt per request (use n for several completions)");
        return strings.Count == 1 ? new PromptBody(strings[0], null) : new PromptBody(null, tokens.ToArray());
    }

    public override void Write(Utf8JsonWriter writer, PromptBody value, JsonSerializerOptions options) => writer.WriteStringValue(value.Text);
}
