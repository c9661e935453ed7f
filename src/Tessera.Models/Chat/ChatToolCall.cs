namespace Tessera.Models.Chat;

/// <summary>A call of a tool (function) that an assistant turn made: OpenAI's <c>tool_calls[i]</c>.</summary>
/// <param name="Id">The call's id, which the tool's reply (<see cref="ChatMessage.ToolCallId"/>) names.</param>
/// <param name="Name">The function's name.</param>
/// <param name="Arguments">The arguments as JSON text (an object).</param>
public sealed record ChatToolCall(string Id, string Name, string Arguments);
