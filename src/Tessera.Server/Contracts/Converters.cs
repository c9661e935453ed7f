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
        const string forms = "must be a string, an array of strings, an array of token ids or an array of arrays of token ids";
        if (reader.TokenType == JsonTokenType.Null) return null;
        if (reader.TokenType == JsonTokenType.String) return new PromptBody([new PromptItem(reader.GetString(), null)]);
        if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException(forms);
        var strings = new List<string>();
        var tokens = new List<int>();
        var lists = new List<int[]>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType == JsonTokenType.String) strings.Add(reader.GetString()!);
            else if (reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out int id)) tokens.Add(id);
            else if (reader.TokenType == JsonTokenType.StartArray) lists.Add(TokenList(ref reader, forms));
            else throw new JsonException(forms);
        }
        if ((strings.Count > 0 ? 1 : 0) + (tokens.Count > 0 ? 1 : 0) + (lists.Count > 0 ? 1 : 0) > 1) throw new JsonException("mixes strings, token ids and arrays of them");
        if (strings.Count > 0) return new PromptBody(strings.Select(s => new PromptItem(s, null)).ToList());
        if (lists.Count > 0) return new PromptBody(lists.Select(l => new PromptItem(null, l)).ToList());
        return tokens.Count > 0 ? new PromptBody([new PromptItem(null, tokens.ToArray())]) : new PromptBody([]);   // []: no prompt at all
    }

    /// <summary>One array of token ids inside the prompt array (the reader on its start).</summary>
    private static int[] TokenList(ref Utf8JsonReader reader, string forms)
    {
        var ids = new List<int>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (reader.TokenType == JsonTokenType.Number && reader.TryGetInt32(out int id)) ids.Add(id);
            else throw new JsonException(forms);
        }
        return ids.ToArray();
    }

    public override void Write(Utf8JsonWriter writer, PromptBody value, JsonSerializerOptions options)
    {
        writer.WriteStartArray();
        foreach (var item in value.Items)
        {
            if (item.Text is not null) writer.WriteStringValue(item.Text);
            else
            {
                writer.WriteStartArray();
                foreach (int id in item.Tokens ?? []) writer.WriteNumberValue(id);
                writer.WriteEndArray();
            }
        }
        writer.WriteEndArray();
    }
}
