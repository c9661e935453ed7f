namespace Tessera.Models.Chat;

/// <summary>One turn of a conversation as chat templates see it: <c>{"role": ..., "content": ...}</c>.</summary>
/// <param name="Role">"system", "user", "assistant" (or "tool").</param>
/// <param name="Content">The turn's text.</param>
public sealed record ChatMessage(string Role, string Content)
{
    /// <summary>An assistant turn's tool calls (<c>message.tool_calls</c> in a template), or null.</summary>
    public IReadOnlyList<ChatToolCall>? ToolCalls { get; init; }

    /// <summary>A tool turn's reply to this call id (<c>message.tool_call_id</c>), or null.</summary>
    public string? ToolCallId { get; init; }
}
