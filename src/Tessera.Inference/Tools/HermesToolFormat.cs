using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Tessera.Inference.Constraints;
using Tessera.Models.Chat;

namespace Tessera.Inference.Tools;

/// <summary>
/// Tool calls in the Hermes format, which Qwen2.5's and NousResearch's Hermes templates use: a call is
/// <c>&lt;tool_call&gt;{"name": ..., "arguments": {...}}&lt;/tool_call&gt;</c> in the assistant's text, a tool's reply comes back in
/// <c>&lt;tool_response&gt;</c>. Models whose template reads <c>tools</c> get the tools and the calls through the template; for a
/// template without them (the ChatML fallback, a template of a model not trained for tools) this writes the same format in
/// plain text: the tools and the instruction in a system turn, earlier calls into the assistant's text, replies as user turns.
/// A forced call (tool_choice required or named) opens the reply with <see cref="Open"/> and constrains the rest to the
/// call's JSON (<see cref="ForcedCall(IReadOnlyList{ChatTool}, ToolChoice)"/>), or to one or more calls between tags
/// (<see cref="ToolCallFormat.ForcedCalls"/>).
/// </summary>
public static class HermesToolFormat
{
    /// <summary>What opens a call.</summary>
    public const string Open = "<tool_call>";

    /// <summary>What closes a call.</summary>
    public const string Close = "</tool_call>";

    private static readonly JsonSerializerOptions Compact = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>The tools as the template's <c>tools</c> variable: OpenAI's list of <c>{"type": "function", "function": {...}}</c>.</summary>
    public static List<object?> TemplateTools(IReadOnlyList<ChatTool> tools) => [.. tools.Select(t => (object?)new Dictionary<string, object?>
    {
        ["type"] = "function",
        ["function"] = Function(t),
    })];

    private static Dictionary<string, object?> Function(ChatTool t)
    {
        var f = new Dictionary<string, object?> { ["name"] = t.Name };
        if (t.Description is not null) f["description"] = t.Description;
        f["parameters"] = t.Parameters is { } p ? ChatTemplate.JsonValue(p) : new Dictionary<string, object?> { ["type"] = "object" };
        return f;
    }

    /// <summary>
    /// The conversation rewritten for a template that knows nothing of tools: a system turn describing the tools and how to
    /// call them (merged into the first system turn when there is one), each earlier call written into its assistant turn's
    /// text, each tool reply a user turn in <c>&lt;tool_response&gt;</c>.
    /// </summary>
    public static List<ChatMessage> InPlainText(IReadOnlyList<ChatMessage> messages, IReadOnlyList<ChatTool> tools)
    {
        var sb = new StringBuilder();
        sb.Append("You may call one or more functions to assist with the user query. The functions, as JSON signatures, are:\n<tools>\n");
        foreach (var t in tools) sb.Append(JsonSerializer.Serialize(Function(t), Compact)).Append('\n');
        sb.Append("</tools>\nTo call a function, write a JSON object with its name and arguments inside tags:\n")
          .Append(Open).Append("\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n").Append(Close);
        var result = new List<ChatMessage>(messages.Count + 1);
        bool system = messages.Count > 0 && messages[0].Role == "system";
        if (tools.Count == 0) { if (system) result.Add(messages[0]); }        // a conversation with calls in it, but no tools now
        else if (system) result.Add(messages[0] with { Content = messages[0].Content + "\n\n" + sb });
        else result.Add(new ChatMessage("system", sb.ToString()));
        foreach (var m in messages.Skip(system ? 1 : 0))
        {
            if (m.Role == "tool") result.Add(new ChatMessage("user", "<tool_response>\n" + m.Content + "\n</tool_response>"));
            else if (m.ToolCalls is { Count: > 0 } calls)
                result.Add(new ChatMessage(m.Role, string.Concat(
                    new[] { m.Content }.Concat(calls.Select(Written)).Where(s => s.Length > 0).Select((s, i) => i == 0 ? s : "\n" + s))));
            else result.Add(m);
        }
        return result;
    }

    /// <summary>A call as the model writes it: <c>&lt;tool_call&gt;\n{"name": ..., "arguments": ...}\n&lt;/tool_call&gt;</c>.</summary>
    public static string Written(ChatToolCall call)
    {
        var arguments = ChatTemplate.JsonValue(call.Arguments);
        return Open + "\n" + JsonSerializer.Serialize(new Dictionary<string, object?> { ["name"] = call.Name, ["arguments"] = arguments }, Compact) + "\n" + Close;
    }

    /// <summary>
    /// The grammar of one forced call's JSON, which follows <see cref="Open"/>: <c>{"name": ..., "arguments": {...}}</c> with the
    /// name one of <paramref name="tools"/> (or the named one) and the arguments by the parameters' schema of the tool the name
    /// chose (<see cref="ToolCallGrammar.Call"/>). <see cref="ToolCallFormat.ForcedCalls"/> gives one or more.
    /// </summary>
    /// <exception cref="ArgumentException">A tool's parameters fall outside the schema subset, or the named tool is not among the tools.</exception>
    public static JsonGrammar ForcedCall(IReadOnlyList<ChatTool> tools, ToolChoice choice) => ForcedCall(tools, choice, "arguments");

    /// <summary><see cref="ForcedCall(IReadOnlyList{ChatTool}, ToolChoice)"/> with the arguments under <paramref name="argumentsKey"/> ("parameters" for Llama 3.1).</summary>
    internal static JsonGrammar ForcedCall(IReadOnlyList<ChatTool> tools, ToolChoice choice, string argumentsKey) =>
        JsonGrammar.Of(ToolCallGrammar.Call(tools, choice, argumentsKey), "tool call");

    /// <summary>
    /// The calls in an assistant's text: each <c>&lt;tool_call&gt;</c> block whose JSON is an object with a string "name" and an
    /// object (or JSON text) "arguments"; a block left open at the end counts when its JSON is whole. The content is the text
    /// outside the blocks, trimmed, or null when nothing else was said. Blocks that do not parse stay in the content.
    /// </summary>
    public static (string? Content, IReadOnlyList<ChatToolCall> Calls) Parse(string text, Func<string> newId)
    {
        ArgumentNullException.ThrowIfNull(text);
        var calls = new List<ChatToolCall>();
        var content = new StringBuilder();
        int at = 0;
        while (true)
        {
            int open = text.IndexOf(Open, at, StringComparison.Ordinal);
            if (open < 0) { content.Append(text, at, text.Length - at); break; }
            int body = open + Open.Length, close = text.IndexOf(Close, body, StringComparison.Ordinal);
            int end = close < 0 ? text.Length : close + Close.Length;
            if (TryCall(text[body..(close < 0 ? text.Length : close)], newId, out var call))
            {
                content.Append(text, at, open - at);
                calls.Add(call);
            }
            else content.Append(text, at, end - at);
            at = end;
            if (close < 0) break;
        }
        string rest = content.ToString().Trim();
        return (rest.Length == 0 ? null : rest, calls);
    }

    /// <summary>A call written as one JSON object (<c>{"name": ..., "arguments" or "parameters": {...}}</c>), or false.</summary>
    internal static bool TryCall(string json, Func<string> newId, out ChatToolCall call)
    {
        call = null!;
        try
        {
            using var doc = JsonDocument.Parse(json);
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String) return false;
            string arguments = "{}";
            if (root.TryGetProperty("arguments", out var args) || root.TryGetProperty("parameters", out args))
                arguments = args.ValueKind switch
                {
                    JsonValueKind.Object => args.GetRawText(),
                    JsonValueKind.String => args.GetString()!,
                    _ => null!,
                };
            if (arguments is null) return false;
            call = new ChatToolCall(newId(), name.GetString()!, arguments);
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
    }
}
