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
    public List<ToolBody>? Tools { get; set; }
    public System.Text.Json.JsonElement? ToolChoice { get; set; }
    public bool? ParallelToolCalls { get; set; }
}

/// <summary>One message; content is a string or a list of parts of which the text parts are joined. An assistant turn may carry
/// tool calls, a tool turn the id of the call it answers.</summary>
public sealed class ChatMessageBody
{
    public string? Role { get; set; }
    [JsonConverter(typeof(ContentConverter))]
    public string? Content { get; set; }
    public List<ToolCallBody>? ToolCalls { get; set; }
    public string? ToolCallId { get; set; }
}

/// <summary>tools[i]: a function the model may call.</summary>
public sealed class ToolBody
{
    public string? Type { get; set; }
    public FunctionBody? Function { get; set; }
}

/// <summary>tools[i].function.</summary>
public sealed class FunctionBody
{
    public string? Name { get; set; }
    public string? Description { get; set; }
    public System.Text.Json.JsonElement? Parameters { get; set; }
}

/// <summary>messages[i].tool_calls[j]: a call an earlier assistant turn made.</summary>
public sealed class ToolCallBody
{
    public string? Id { get; set; }
    public string? Type { get; set; }
    public ToolCallFunctionBody? Function { get; set; }
}

/// <summary>A call's function: its name and its arguments as JSON text.</summary>
public sealed class ToolCallFunctionBody
{
    public string? Name { get; set; }
    public string? Arguments { get; set; }
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

/// <summary>POST /v1/load_lora_adapter (vLLM's body): the name requests will use and the PEFT adapter directory on the server.</summary>
public sealed class LoadLoraAdapterRequestBody
{
    public string? LoraName { get; set; }
    public string? LoraPath { get; set; }
}

/// <summary>POST /v1/unload_lora_adapter (vLLM's body): the served adapter's name.</summary>
public sealed class UnloadLoraAdapterRequestBody
{
    public string? LoraName { get; set; }
}
