using System.Text.Json.Serialization;

namespace Tessera.Server.Contracts;

// OpenAI's request bodies, the fields Tessera reads (unknown fields are ignored; a field of the wrong type is a 400 naming
// its JSON path). Snake-case names come from the serializer context's naming policy.

/// <summary>POST /v1/chat/completions.</summary>
public sealed class ChatCompletionRequestBody : SamplingRequestBody
{
    public List<ChatMessageBody>? Messages { get; set; }
    public int? MaxCompletionTokens { get; set; }
    public bool? Logprobs { get; set; }
    public int? TopLogprobs { get; set; }
}

/// <summary>One message; content is a string or a list of parts of which the text parts are joined.</summary>
public sealed class ChatMessageBody
{
    public string? Role { get; set; }
    [JsonConverter(typeof(ContentConverter))]
    public string? Content { get; set; }
}

/// <summary>response_format: "text", "json_object", or "json_schema" with its schema.</summary>
public sealed class ResponseFormatBody
{
    public string? Type { get; set; }
    public JsonSchemaFormatBody? JsonSchema { get; set; }
}

/// <summary>response_format.json_schema: a name and the schema (strict is accepted; the grammar always holds to the schema).</summary>
public sealed class JsonSchemaFormatBody
{
    public string? Name { get; set; }
    public string? Description { get; set; }
    public System.Text.Json.JsonElement? Schema { get; set; }
    public bool? Strict { get; set; }
}

/// <summary>stream_options.</summary>
public sealed class StreamOptionsBody
{
    public bool? IncludeUsage { get; set; }
}

/// <summary>POST /v1/completions.</summary>
public sealed class CompletionRequestBody : SamplingRequestBody
{
    [JsonConverter(typeof(PromptConverter))]
    public PromptBody? Prompt { get; set; }
    public int? Logprobs { get; set; }
    public bool? Echo { get; set; }
}

/// <summary>A completions prompt, or a batch of them (OpenAI's array forms): each a text or token ids.</summary>
public sealed record PromptBody(IReadOnlyList<PromptItem> Items);

/// <summary>One prompt of a <see cref="PromptBody"/>: text, or token ids.</summary>
public sealed record PromptItem(string? Text, int[]? Tokens);
