using Tessera.Inference.Constraints;
using Tessera.Models.Chat;

namespace Tessera.Inference.Tools;

/// <summary>
/// How a model writes a tool call, chosen from its chat template (<see cref="For"/>): what opens a forced reply, the grammar of
/// one forced call or of one or more (<see cref="ForcedCalls"/>), and how calls are found in a reply.
/// <list type="bullet">
/// <item><see cref="Hermes"/>: <c>&lt;tool_call&gt;{"name": ..., "arguments": {...}}&lt;/tool_call&gt;</c> (Qwen2.5, Hermes templates,
/// and every template that does not read tools, to which <see cref="HermesToolFormat.InPlainText"/> describes this syntax).</item>
/// <item><see cref="LlamaJson"/>: the reply is the call, <c>{"name": ..., "parameters": {...}}</c>, perhaps after
/// <c>&lt;|python_tag|&gt;</c> (Llama 3.1 to 3.3's templates, which mention ipython and describe that syntax themselves).</item>
/// <item><see cref="Mistral"/>: <c>[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]</c> (Mistral's v3 templates, whose
/// call ids are nine letters and digits).</item>
/// </list>
/// </summary>
public abstract class ToolCallFormat
{
    /// <summary>The Hermes tags.</summary>
    public static ToolCallFormat Hermes { get; } = new HermesCalls();

    /// <summary>Llama 3.1's bare JSON call.</summary>
    public static ToolCallFormat LlamaJson { get; } = new LlamaJsonCalls();

    /// <summary>Mistral's [TOOL_CALLS] list.</summary>
    public static ToolCallFormat Mistral { get; } = new MistralCalls();

    /// <summary>
    /// The format of <paramref name="template"/>: <see cref="Mistral"/> for a template that reads tools and writes
    /// <c>[TOOL_CALLS]</c>; <see cref="LlamaJson"/> for one that reads tools and speaks of ipython or <c>&lt;|python_tag|&gt;</c>
    /// without the Hermes tag; <see cref="Hermes"/> otherwise.
    /// </summary>
    public static ToolCallFormat For(ChatTemplate template)
    {
        ArgumentNullException.ThrowIfNull(template);
        string s = template.Source;
        if (template.UsesTools && s.Contains("[TOOL_CALLS]", StringComparison.Ordinal)) return Mistral;
        bool llama = template.UsesTools && !s.Contains(HermesToolFormat.Open, StringComparison.Ordinal)
            && (s.Contains("<|python_tag|>", StringComparison.Ordinal) || s.Contains("ipython", StringComparison.Ordinal));
        return llama ? LlamaJson : Hermes;
    }

    /// <summary>"hermes", "llama3-json" or "mistral".</summary>
    public abstract string Name { get; }

    /// <summary>A fresh id for a call the reply made (Mistral's templates want nine letters and digits; the others take any).</summary>
    public virtual string NewCallId() => "call_" + Guid.NewGuid().ToString("N")[..24];

    /// <summary>The text after the generation prompt that opens a forced call (its JSON then follows, constrained).</summary>
    public abstract string ForcedOpening { get; }

    /// <summary>
    /// The grammar of one forced call's JSON, which follows <see cref="ForcedOpening"/>: the name among the allowed tools, the
    /// arguments by the schema of the tool the name chose (<see cref="ToolCallGrammar.Call"/>). The text ends with the JSON.
    /// </summary>
    /// <exception cref="ArgumentException">A tool's parameters fall outside the schema subset, or the named tool is not among the tools.</exception>
    public JsonGrammar ForcedCall(IReadOnlyList<ChatTool> tools, ToolChoice choice) => Forced(tools, choice, several: false);

    /// <summary>
    /// The grammar of a forced reply, which follows <see cref="ForcedOpening"/>: one or more calls, in the format's own
    /// writing of several, when tool_choice is required, <paramref name="parallel"/> calls are allowed (OpenAI's
    /// parallel_tool_calls, true by default) and the format can (<see cref="MayForceSeveral"/>); else exactly one call
    /// (<see cref="ForcedCall"/>), as with a named tool_choice.
    /// </summary>
    /// <param name="tools">The tools.</param>
    /// <param name="choice">Required or named.</param>
    /// <param name="parallel">Whether the reply may make several calls.</param>
    /// <param name="endOfTextToken">Whether the engine has an end-of-text token, which samples where the text may end.</param>
    /// <exception cref="ArgumentException">A tool's parameters fall outside the schema subset, or the named tool is not among the tools.</exception>
    public JsonGrammar ForcedCalls(IReadOnlyList<ChatTool> tools, ToolChoice choice, bool parallel, bool endOfTextToken) =>
        Forced(tools, choice, several: choice.Mode == ToolChoiceMode.Required && parallel && MayForceSeveral(endOfTextToken));

    /// <summary>
    /// Whether a forced reply in this format may hold several calls: Hermes's when the vocabulary has an end-of-text token
    /// (after a closing tag only that token can end the reply, as another call may follow); Mistral's always (its list's
    /// closing bracket ends the reply); Llama's never (its template writes one call a reply and refuses more).
    /// </summary>
    public abstract bool MayForceSeveral(bool endOfTextToken);

    /// <summary>One call's grammar, or with <paramref name="several"/> one or more calls'.</summary>
    private protected abstract JsonGrammar Forced(IReadOnlyList<ChatTool> tools, ToolChoice choice, bool several);

    /// <summary>
    /// The calls in a reply and the rest of its text (trimmed; null when nothing else was said). A forced reply's text follows
    /// <see cref="ForcedOpening"/>: one call's JSON, or several calls as the format writes them. Text that does not parse as a
    /// call stays content.
    /// </summary>
    public abstract (string? Content, IReadOnlyList<ChatToolCall> Calls) Parse(string text, bool forced, Func<string> newId);

    /// <summary>
    /// How much of a reply written so far (more may follow) is text that no call can be part of, so that a stream may send it
    /// now: Hermes's up to a call's tag (holding back what could be the start of one), Llama's all of it once the reply has
    /// begun with something other than a call. What follows, calls included, is read whole when the reply ends.
    /// </summary>
    public abstract int Streamable(string text);

    /// <summary>Where calls sit in a reply, for <see cref="ToolCallStreamReader"/>.</summary>
    internal abstract ToolCallFraming Framing { get; }

    private sealed class HermesCalls : ToolCallFormat
    {
        public override string Name => "hermes";

        public override string ForcedOpening => HermesToolFormat.Open + "\n";

        internal override ToolCallFraming Framing { get; } = new(HermesToolFormat.Open, HermesToolFormat.Close, List: false, Prefix: null);

        public override bool MayForceSeveral(bool endOfTextToken) => endOfTextToken;

        private protected override JsonGrammar Forced(IReadOnlyList<ChatTool> tools, ToolChoice choice, bool several)
        {
            var call = ToolCallGrammar.Call(tools, choice, "arguments");
            return several ? JsonGrammar.Of(ToolCallGrammar.HermesCalls(call), "tool calls") : JsonGrammar.Of(call, "tool call");
        }

        // A forced reply is one call's JSON (closed here), or calls that close their own tags.
        public override (string? Content, IReadOnlyList<ChatToolCall> Calls) Parse(string text, bool forced, Func<string> newId) =>
            HermesToolFormat.Parse(!forced ? text
                : HermesToolFormat.Open + text + (text.Contains(HermesToolFormat.Close, StringComparison.Ordinal) ? "" : HermesToolFormat.Close), newId);

        public override int Streamable(string text)
        {
            ArgumentNullException.ThrowIfNull(text);
            int open = text.IndexOf(HermesToolFormat.Open, StringComparison.Ordinal);
            if (open >= 0) return open;
            for (int keep = Math.Min(HermesToolFormat.Open.Length - 1, text.Length); keep > 0; keep--)
                if (text.EndsWith(HermesToolFormat.Open[..keep], StringComparison.Ordinal)) return text.Length - keep;
            return text.Length;
        }
    }

    private sealed class LlamaJsonCalls : ToolCallFormat
    {
        private const string PythonTag = "<|python_tag|>";

        public override string Name => "llama3-json";

        public override string ForcedOpening => "";

        internal override ToolCallFraming Framing { get; } = new(Open: null, Close: null, List: false, PythonTag);

        // Llama 3.1's template raises "This model only supports single tool-calls at once!" for an assistant turn of two calls.
        public override bool MayForceSeveral(bool endOfTextToken) => false;

        private protected override JsonGrammar Forced(IReadOnlyList<ChatTool> tools, ToolChoice choice, bool several) =>
            HermesToolFormat.ForcedCall(tools, choice, "parameters");

        public override (string? Content, IReadOnlyList<ChatToolCall> Calls) Parse(string text, bool forced, Func<string> newId)
        {
            ArgumentNullException.ThrowIfNull(text);
            string body = text.Trim();
            if (body.StartsWith(PythonTag, StringComparison.Ordinal)) body = body[PythonTag.Length..].Trim();
            if (body.StartsWith('{') && HermesToolFormat.TryCall(body, newId, out var call)) return (null, [call]);
            string rest = text.Trim();
            return (rest.Length == 0 ? null : rest, []);
        }

        public override int Streamable(string text)
        {
            ArgumentNullException.ThrowIfNull(text);
            string start = text.TrimStart();
            bool mayBeCall = start.Length == 0 || start[0] == '{' || start.StartsWith(PythonTag, StringComparison.Ordinal)
                || PythonTag.StartsWith(start, StringComparison.Ordinal);
            return mayBeCall ? 0 : text.Length;
        }
    }

    private sealed class MistralCalls : ToolCallFormat
    {
        private const string Tag = "[TOOL_CALLS]";

        public override string Name => "mistral";

        public override string ForcedOpening => Tag + " [";

        internal override ToolCallFraming Framing { get; } = new(Tag, Close: null, List: true, Prefix: null);

        public override string NewCallId()
        {
            const string alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            return string.Create(9, 0, (span, _) => { for (int i = 0; i < span.Length; i++) span[i] = alphabet[Random.Shared.Next(alphabet.Length)]; });
        }

        public override bool MayForceSeveral(bool endOfTextToken) => true;

        private protected override JsonGrammar Forced(IReadOnlyList<ChatTool> tools, ToolChoice choice, bool several)
        {
            var call = ToolCallGrammar.Call(tools, choice, "arguments");
            return several ? JsonGrammar.Of(ToolCallGrammar.MistralCalls(call), "tool calls") : JsonGrammar.Of(call, "tool call");
        }

        public override (string? Content, IReadOnlyList<ChatToolCall> Calls) Parse(string text, bool forced, Func<string> newId)
        {
            ArgumentNullException.ThrowIfNull(text);
            // A forced reply is one call's JSON (the list closed here), or calls whose list the reply closed itself.
            if (forced) text = ForcedOpening + text + (text.TrimEnd().EndsWith(']') ? "" : "]");
            string body = text.Trim();
            int tag = body.IndexOf(Tag, StringComparison.Ordinal);
            if (tag >= 0)
            {
                string list = body[(tag + Tag.Length)..].Trim();
                var calls = new List<ChatToolCall>();
                try
                {
                    using var doc = System.Text.Json.JsonDocument.Parse(list);
                    if (doc.RootElement.ValueKind == System.Text.Json.JsonValueKind.Array)
                        foreach (var item in doc.RootElement.EnumerateArray())
                            if (HermesToolFormat.TryCall(item.GetRawText(), newId, out var call)) calls.Add(call);
                }
                catch (System.Text.Json.JsonException) { calls.Clear(); }
                if (calls.Count > 0)
                {
                    string before = body[..tag].Trim();
                    return (before.Length == 0 ? null : before, calls);
                }
            }
            string rest = text.Trim();
            return (rest.Length == 0 ? null : rest, []);
        }

        public override int Streamable(string text)
        {
            ArgumentNullException.ThrowIfNull(text);
            int tag = text.IndexOf(Tag, StringComparison.Ordinal);
            if (tag >= 0) return tag;
            for (int keep = Math.Min(Tag.Length - 1, text.Length); keep > 0; keep--)
                if (text.EndsWith(Tag[..keep], StringComparison.Ordinal)) return text.Length - keep;
            return text.Length;
        }
    }
}
