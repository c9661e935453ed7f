using System.Text.Json;

namespace Tessera.Server.Contracts;

// The Responses API's objects as Tessera writes them (null members are omitted, as everywhere in ServerJsonContext).

/// <summary>
/// A response: its id ("resp_..."), status ("completed", "incomplete" with the reason, or "in_progress" in the stream's first
/// events), the output items and usage, and the request's parameters echoed as OpenAI does.
/// </summary>
public sealed record ResponseBody(string Id, string Object, long CreatedAt, string Status, IncompleteDetailsBody? IncompleteDetails,
    string? Instructions, int? MaxOutputTokens, string Model, List<ResponseOutputItem> Output, bool ParallelToolCalls, double Temperature,
    double TopP, JsonElement ToolChoice, List<ResponseToolBody> Tools, ResponseTextBody Text, string Truncation, ResponseUsageBody? Usage,
    string? User, Dictionary<string, string> Metadata, bool Store, bool Background, string? PreviousResponseId);

/// <summary>DELETE /v1/responses/{id}: what was deleted.</summary>
public sealed record ResponseDeletedBody(string Id, string Object, bool Deleted);

/// <summary>incomplete_details: why a response stopped early ("max_output_tokens").</summary>
public sealed record IncompleteDetailsBody(string Reason);

/// <summary>
/// An output item: a "message" (role assistant, output_text content) or a "function_call" (call_id, name, arguments as JSON
/// text); the other kind's members are null, so not written.
/// </summary>
public sealed record ResponseOutputItem(string Type, string Id, string Status, string? Role = null, List<OutputTextBody>? Content = null,
    string? CallId = null, string? Name = null, string? Arguments = null);

/// <summary>A message's output_text part: the text, no annotations, no logprobs (they are not served on this endpoint).</summary>
public sealed record OutputTextBody(string Type, string Text, List<JsonElement> Annotations, List<JsonElement> Logprobs);

/// <summary>usage, with the details objects clients read (cached prompt tokens; reasoning tokens, always 0 here).</summary>
public sealed record ResponseUsageBody(int InputTokens, InputTokensDetailsBody InputTokensDetails, int OutputTokens,
    OutputTokensDetailsBody OutputTokensDetails, int TotalTokens);

public sealed record InputTokensDetailsBody(int CachedTokens);
public sealed record OutputTokensDetailsBody(int ReasoningTokens);

/// <summary>
/// One server-sent event of a streamed response: its type ("response.created", "response.output_text.delta", ...) and sequence
/// number, and the members that type carries (the others null, so not written).
/// </summary>
public sealed record ResponseStreamEvent(string Type, int SequenceNumber)
{
    public ResponseBody? Response { get; init; }
    public int? OutputIndex { get; init; }
    public string? ItemId { get; init; }
    public int? ContentIndex { get; init; }
    public ResponseOutputItem? Item { get; init; }
    public OutputTextBody? Part { get; init; }
    public string? Delta { get; init; }
    public string? Text { get; init; }
    public string? Name { get; init; }
    public string? Arguments { get; init; }
    public List<JsonElement>? Logprobs { get; init; }
}
