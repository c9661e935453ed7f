using Tessera.Models.Chat;
using Tessera.Models.Tokenization;

namespace Tessera.Inference.Serving;

/// <summary>
/// Turns a conversation into a completion request's prompt: the model's chat template rendered with a generation prompt,
/// then tokenized; the format's end-of-turn texts become stop strings (beside the caller's). The server and the
/// <see cref="TesseraChatClient"/> build chat prompts the same way through this.
/// </summary>
public sealed class ChatPrompt
{
    private readonly ChatFormat _format;
    private readonly ITokenizer _tokenizer;

    /// <summary>Builds prompts with <paramref name="format"/> and <paramref name="tokenizer"/>.</summary>
    public ChatPrompt(ChatFormat format, ITokenizer tokenizer)
    {
        _format = format ?? throw new ArgumentNullException(nameof(format));
        _tokenizer = tokenizer ?? throw new ArgumentNullException(nameof(tokenizer));
    }

    /// <summary>The chat format.</summary>
    public ChatFormat Format => _format;

    /// <summary>How the model writes tool calls, read from its template (<see cref="Tools.ToolCallFormat.For"/>).</summary>
    public Tools.ToolCallFormat ToolCalls => Tools.ToolCallFormat.For(_format.Template);

    /// <summary>
    /// The rendered prompt text of <paramref name="messages"/>, with <paramref name="tools"/> described to the model: through the
    /// template when it reads <c>tools</c>, else in the Hermes format in plain text (<see cref="Tools.HermesToolFormat"/>), as
    /// are earlier calls and tool replies. With <paramref name="forceCall"/> the reply is opened as the model's format opens a call
    /// (<see cref="Tools.ToolCallFormat.ForcedOpening"/>), for a forced call whose JSON is then constrained.
    /// </summary>
    /// <exception cref="InvalidRequestException">The template refused the conversation (e.g. roles that do not alternate).</exception>
    public string Render(IReadOnlyList<ChatMessage> messages, IReadOnlyList<Tools.ChatTool>? tools = null, bool forceCall = false)
    {
        if (messages.Count == 0) throw new InvalidRequestException("messages is empty: give at least one message", "messages");
        tools ??= [];
        IReadOnlyList<ChatMessage> conversation = messages;
        Dictionary<string, object?>? variables = null;
        bool toolTurns = messages.Any(m => m.Role == "tool" || m.ToolCalls is { Count: > 0 });
        if (_format.Template.UsesTools) { if (tools.Count > 0) variables = new() { ["tools"] = Tools.HermesToolFormat.TemplateTools(tools) }; }
        else if (tools.Count > 0 || toolTurns) conversation = Tools.HermesToolFormat.InPlainText(messages, tools);
        try
        {
            string text = _format.Template.Render(conversation, addGenerationPrompt: true, _format.BosToken, _format.EosToken, variables);
            return forceCall ? text + ToolCalls.ForcedOpening : text;
        }
        catch (ChatTemplateException e)
        {
            throw new InvalidRequestException($"the model's chat template refused the messages: {e.Problem}", "messages");
        }
    }

    /// <summary>Token ids of the rendered conversation (<see cref="Render"/>).</summary>
    public int[] Tokens(IReadOnlyList<ChatMessage> messages, IReadOnlyList<Tools.ChatTool>? tools = null, bool forceCall = false) =>
        _tokenizer.Encode(Render(messages, tools, forceCall));

    /// <summary>The caller's stop strings plus the format's end-of-turn texts.</summary>
    public IReadOnlyList<string> StopStrings(IReadOnlyList<string>? requested) =>
        (requested ?? []).Concat(_format.StopStrings).Where(s => s.Length > 0).Distinct(StringComparer.Ordinal).ToList();
}
