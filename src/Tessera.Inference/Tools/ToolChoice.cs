namespace Tessera.Inference.Tools;

/// <summary>OpenAI's <c>tool_choice</c>: whether the reply may, must, or must not call a tool, or must call one by name.</summary>
/// <param name="Mode">None, Auto, Required or Named.</param>
/// <param name="Name">With <see cref="ToolChoiceMode.Named"/>, the function to call.</param>
public sealed record ToolChoice(ToolChoiceMode Mode, string? Name = null)
{
    /// <summary>The model decides (the default with tools).</summary>
    public static ToolChoice Auto { get; } = new(ToolChoiceMode.Auto);

    /// <summary>No tool is called; the tools are still described to the model.</summary>
    public static ToolChoice None { get; } = new(ToolChoiceMode.None);

    /// <summary>Whether the reply is forced to be calls (required: one or more, or one with parallel_tool_calls false; named: one).</summary>
    public bool Forces => Mode is ToolChoiceMode.Required or ToolChoiceMode.Named;
}

/// <summary>The kinds of <see cref="ToolChoice"/>.</summary>
public enum ToolChoiceMode
{
    /// <summary>"none".</summary>
    None,

    /// <summary>"auto".</summary>
    Auto,

    /// <summary>"required": one or more calls of any of the tools (one with parallel_tool_calls false, or in a format that writes one).</summary>
    Required,

    /// <summary><c>{"type": "function", "function": {"name": ...}}</c>: one call of that tool.</summary>
    Named,
}
