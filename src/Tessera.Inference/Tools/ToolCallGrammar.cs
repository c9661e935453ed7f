using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Tessera.Inference.Constraints;

namespace Tessera.Inference.Tools;

/// <summary>
/// The grammars of forced tool calls, built from <see cref="JsonGrammar"/>'s nodes: one call object, and the sequences of one or
/// more calls that Hermes and Mistral write, with the tags and separators their templates put between calls.
/// <para>A call is <c>{"name": ..., "arguments": {...}}</c> (Llama: "parameters"). With one tool possible, the name is that
/// tool's and the arguments follow its parameters' schema. With several, the call is a discriminated union on "name": once
/// the name is written, the arguments follow the schema of the tool it names.</para>
/// </summary>
internal static class ToolCallGrammar
{
    private static readonly JsonSerializerOptions Relaxed = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>One call of one of <paramref name="tools"/>, or of the named one.</summary>
    /// <exception cref="ArgumentException">The named tool is not among the tools, a tool's parameters fall outside the schema subset, or there are too many tools.</exception>
    public static JsonGrammarNode Call(IReadOnlyList<ChatTool> tools, ToolChoice choice, string argumentsKey)
    {
        var candidates = choice.Mode == ToolChoiceMode.Named ? tools.Where(t => t.Name == choice.Name).ToList() : [.. tools];
        if (candidates.Count == 0) throw new ArgumentException($"tool_choice names '{choice.Name}', which is not among the tools");
        if (candidates.Count > JsonGrammar.MaxAlternatives)
            throw new ArgumentException($"tools: {candidates.Count} tools; a forced call can choose among at most {JsonGrammar.MaxAlternatives}");
        byte[] nameKey = Json("name"), arguments = Json(argumentsKey);
        var calls = candidates.Select(t => new ObjectNode([
            new JsonGrammarProperty(nameKey, new LiteralNode([Json(t.Name)]), Required: true),
            new JsonGrammarProperty(arguments, Arguments(t), Required: true)])).ToList();
        if (calls.Count == 1) return calls[0];
        var names = new LiteralNode([.. calls.Select(c => ((LiteralNode)c.Properties[0].Value).Alternatives[0])]);
        return new ObjectNode([new JsonGrammarProperty(nameKey, names, Required: true)], calls);
    }

    /// <summary>
    /// Hermes's calls after the forced opening tag (<c>&lt;tool_call&gt;\n</c>, in the prompt): the first call's JSON and its
    /// closing tag, then any number of <c>\n&lt;tool_call&gt;\n{...}\n&lt;/tool_call&gt;</c>, as the Hermes and Qwen2.5 templates write
    /// calls one after another. After each closing tag the text may end (the end-of-text token) or open another call.
    /// </summary>
    public static JsonGrammarNode HermesCalls(JsonGrammarNode call)
    {
        var close = new TextNode(Encoding.UTF8.GetBytes("\n" + HermesToolFormat.Close));
        var next = new SequenceNode([new TextNode(Encoding.UTF8.GetBytes("\n" + HermesToolFormat.Open + "\n")), call, close]);
        return new SequenceNode([call, close, new RepeatNode(next, 0, int.MaxValue)]);
    }

    /// <summary>
    /// Mistral's list after the forced opening (<c>[TOOL_CALLS] [</c>, in the prompt): calls separated by <c>, </c> and the
    /// closing bracket, as Mistral's templates join them; the bracket ends the text.
    /// </summary>
    public static JsonGrammarNode MistralCalls(JsonGrammarNode call) => new SequenceNode([
        call,
        new RepeatNode(new SequenceNode([new TextNode(", "u8.ToArray()), call]), 0, int.MaxValue),
        new TextNode("]"u8.ToArray())]);

    /// <summary>The tool's arguments: its parameters' schema (an object schema), or any object without one.</summary>
    private static JsonGrammarNode Arguments(ChatTool tool)
    {
        if (tool.Parameters is not { } parameters) return AnyObjectNode.Instance;
        var node = JsonGrammar.CompileValue(parameters, $"tools '{tool.Name}'.parameters");
        return node switch
        {
            AnyValueNode => AnyObjectNode.Instance,                 // {}: any arguments, which are an object
            ObjectNode or AnyObjectNode => node,
            _ => throw new ArgumentException($"tools '{tool.Name}'.parameters: must be an object schema (\"type\": \"object\"), as a call's arguments are an object"),
        };
    }

    private static byte[] Json(string s) => Encoding.UTF8.GetBytes(JsonSerializer.Serialize(s, Relaxed));
}
