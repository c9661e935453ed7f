using System.Text.Json;

namespace Tessera.Server.Contracts;

// OpenAI's Responses API request (POST /v1/responses), the fields Tessera reads; unknown fields are ignored and a field of the
// wrong type is a 400 naming its JSON path, as for the other bodies.

/// <summary>
/// POST /v1/responses. input is a string (one user message) or a list of items (messages, function calls and their outputs),
/// read by <see cref="Endpoints.ResponseInput"/>; instructions become a system message placed first.
/// </summary>
public sealed class ResponseRequestBody
{
    public string? Model { get; set; }
    public JsonElement? Input { get; set; }
    public string? Instructions { get; set; }
    public int? MaxOutputTokens { get; set; }
    public double? Temperature { get; set; }
    public double? TopP { get; set; }
    public long? Seed { get; set; }
    public bool? Stream { get; set; }
    public List<ResponseToolBody>? Tools { get; set; }
    public JsonElement? ToolChoice { get; set; }
    public bool? ParallelToolCalls { get; set; }
    public ResponseTextBody? Text { get; set; }
    public Dictionary<string, string>? Metadata { get; set; }
    public bool? Store { get; set; }
    public string? User { get; set; }
    public string? PreviousResponseId { get; set; }
}

/// <summary>tools[i] of a Responses request: a function, flat (name and parameters beside type, not under "function").</summary>
public sealed class ResponseToolBody
{
    public string? Type { get; set; }
    public string? Name { get; set; }
    public string? Description { get; set; }
    public JsonElement? Parameters { get; set; }
    public bool? Strict { get; set; }
}

/// <summary>text: the output's format (text, json_object, or json_schema with its schema; verbosity is ignored).</summary>
public sealed class ResponseTextBody
{
    public ResponseTextFormatBody? Format { get; set; }
}

/// <summary>text.format, flat: type, and for json_schema its name, schema and strict (the grammar always holds to the schema).</summary>
public sealed class ResponseTextFormatBody
{
    public string? Type { get; set; }
    public string? Name { get; set; }
    public string? Description { get; set; }
    public JsonElement? Schema { get; set; }
    public bool? Strict { get; set; }
}
