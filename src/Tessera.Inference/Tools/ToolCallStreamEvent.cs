namespace Tessera.Inference.Tools;

/// <summary>
/// What a <see cref="ToolCallStreamReader"/> found in the text it was given: content a stream may send now, a call whose name is
/// known, a piece of a call's arguments (its JSON text as the model writes it), or the end of a call.
/// </summary>
/// <param name="Kind">Which of the four.</param>
/// <param name="Index">The call's place in the reply, 0, 1, ... (what OpenAI's <c>tool_calls[].index</c> says); -1 for content.</param>
/// <param name="Id">With <see cref="ToolCallStreamEventKind.CallStarted"/>, the call's id; otherwise null.</param>
/// <param name="Name">With <see cref="ToolCallStreamEventKind.CallStarted"/>, the function's name; otherwise null.</param>
/// <param name="Text">The content, or the arguments' next piece; empty for the other kinds.</param>
public sealed record ToolCallStreamEvent(ToolCallStreamEventKind Kind, int Index, string? Id, string? Name, string Text)
{
    internal static ToolCallStreamEvent Content(string text) => new(ToolCallStreamEventKind.Content, -1, null, null, text);

    internal static ToolCallStreamEvent Started(int index, string id, string name) => new(ToolCallStreamEventKind.CallStarted, index, id, name, "");

    internal static ToolCallStreamEvent Arguments(int index, string piece) => new(ToolCallStreamEventKind.Arguments, index, null, null, piece);

    internal static ToolCallStreamEvent Ended(int index) => new(ToolCallStreamEventKind.CallEnded, index, null, null, "");
}

/// <summary>The kinds of <see cref="ToolCallStreamEvent"/>.</summary>
public enum ToolCallStreamEventKind
{
    /// <summary>Text outside any call that no later text can make part of one.</summary>
    Content,

    /// <summary>A call began and its function's name is known.</summary>
    CallStarted,

    /// <summary>The next piece of a call's arguments.</summary>
    Arguments,

    /// <summary>A call's arguments are whole.</summary>
    CallEnded,
}
