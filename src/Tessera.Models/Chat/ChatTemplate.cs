using Tessera.Models.Chat.Jinja;

namespace Tessera.Models.Chat;

/// <summary>
/// A Hugging Face chat template (the Jinja text of tokenizer_config.json's <c>chat_template</c>), parsed once and rendered
/// per conversation the way <c>transformers</c>' <c>apply_chat_template</c> does: with trim_blocks and lstrip_blocks, the
/// variables <c>messages</c>, <c>add_generation_prompt</c>, <c>bos_token</c>, <c>eos_token</c>, and the functions
/// <c>raise_exception</c>, <c>namespace</c>, <c>range</c> and <c>strftime_now</c>. No Jinja package exists for .NET, so
/// this is a small interpreter of the subset that the Llama 2 and 3, Qwen2, Mistral and ChatML templates use; a template
/// using anything else is refused by <see cref="Parse"/>, naming the construct and its line and column. Fine-tuning reuses
/// it to render training conversations.
/// </summary>
public sealed class ChatTemplate
{
    private readonly List<Node> _nodes;

    private ChatTemplate(string name, string source, List<Node> nodes)
    {
        Name = name;
        Source = source;
        _nodes = nodes;
    }

    /// <summary>Where the template came from, for messages (e.g. "models/x/tokenizer_config.json: chat_template").</summary>
    public string Name { get; }

    /// <summary>The template text.</summary>
    public string Source { get; }

    /// <summary>
    /// ChatML (<c>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n</c> per message, then <c>&lt;|im_start|&gt;assistant\n</c>),
    /// used when a model directory has no chat template: the format of Qwen and many fine-tunes, and plain enough text
    /// for a model that never saw it. Its end of turn is <see cref="FallbackStop"/>.
    /// </summary>
    public static ChatTemplate Fallback { get; } = Parse(
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}", "fallback chat template (ChatML)");

    /// <summary>The end-of-turn text of <see cref="Fallback"/>, a stop string for completions rendered with it.</summary>
    public const string FallbackStop = "<|im_end|>";

    /// <summary>Parses <paramref name="source"/>; <paramref name="name"/> prefixes error messages.</summary>
    /// <exception cref="ChatTemplateException">The template is malformed or uses a construct outside the supported subset.</exception>
    public static ChatTemplate Parse(string source, string name = "chat template")
    {
        ArgumentNullException.ThrowIfNull(source);
        var nodes = JinjaParser.Parse(source, (position, problem) => Error(name, source, position, problem));
        return new ChatTemplate(name, source, nodes);
    }

    /// <summary>The prompt text for <paramref name="messages"/>.</summary>
    /// <param name="messages">The conversation.</param>
    /// <param name="addGenerationPrompt">Whether to end with the opening of an assistant turn (true when generating a reply).</param>
    /// <param name="bosToken">The tokenizer's beginning-of-sequence text (templates that write it themselves), or null.</param>
    /// <param name="eosToken">The tokenizer's end-of-sequence text, or null.</param>
    /// <param name="variables">More variables (e.g. <c>tools</c>); values are strings, numbers, booleans, null, lists and string-keyed dictionaries.</param>
    /// <exception cref="ChatTemplateException">The template raised an exception (e.g. roles that do not alternate) or failed.</exception>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true, string? bosToken = null, string? eosToken = null,
        IReadOnlyDictionary<string, object?>? variables = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var globals = new Dictionary<string, object?>
        {
            ["messages"] = messages.Select(m => (object?)Message(m)).ToList(),
            ["add_generation_prompt"] = addGenerationPrompt,
            ["bos_token"] = bosToken ?? "",
            ["eos_token"] = eosToken ?? "",
        };
        if (variables is not null)
            foreach (var (key, value) in variables) globals[key] = Convert(value);
        globals["raise_exception"] = (JinjaFunction)((args, _, position) =>
            throw Error(Name, Source, position, "the template raised an exception: " + (args.Count > 0 ? JinjaValues.Text(args[0]) : "")));
        globals["namespace"] = (JinjaFunction)((args, named, _) => new Namespace(new Dictionary<string, object?>(named)));
        globals["dict"] = (JinjaFunction)((args, named, _) => new Dictionary<string, object?>(named));
        globals["len"] = (JinjaFunction)((args, _, position) => JinjaBuiltins.Filter(args.FirstOrDefault(), "length", [], position, (p, m) => Error(Name, Source, p, m)));
        globals["range"] = (JinjaFunction)((args, _, position) =>
        {
            long start = 0, stop, step = 1;
            if (args.Count == 1) stop = Long(args[0], position);
            else { start = Long(args[0], position); stop = Long(args[1], position); if (args.Count > 2) step = Long(args[2], position); }
            if (step == 0) throw Error(Name, Source, position, "range() step must not be zero");
            var items = new List<object?>();
            for (long i = start; step > 0 ? i < stop : i > stop; i += step) items.Add(i);
            return items;
        });
        globals["strftime_now"] = (JinjaFunction)((args, _, _) => StrftimeNow(args.Count > 0 ? JinjaValues.Text(args[0]) : ""));
        var renderer = new JinjaRenderer(globals, (position, problem) => Error(Name, Source, position, problem));
        return renderer.Render(_nodes);
    }

    /// <summary>
    /// Whether the template reads a <c>tools</c> variable (Llama 3.1, Qwen2.5, Mistral and Hermes templates do): then tools are
    /// rendered by it, else the caller describes them itself.
    /// </summary>
    public bool UsesTools => Source.Contains("tools", StringComparison.Ordinal);

    /// <summary>
    /// A message as transformers passes it: role and content, and when present <c>tool_calls</c> (each
    /// <c>{"id", "type": "function", "function": {"name", "arguments"}}</c>, the arguments parsed into a mapping, as templates
    /// expect them) and <c>tool_call_id</c>.
    /// </summary>
    private static Dictionary<string, object?> Message(ChatMessage m)
    {
        var message = new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content };
        if (m.ToolCalls is { Count: > 0 } calls)
            message["tool_calls"] = calls.Select(c => (object?)new Dictionary<string, object?>
            {
                ["id"] = c.Id,
                ["type"] = "function",
                ["function"] = new Dictionary<string, object?> { ["name"] = c.Name, ["arguments"] = JsonValue(c.Arguments) },
            }).ToList();
        if (m.ToolCallId is not null) message["tool_call_id"] = m.ToolCallId;
        return message;
    }

    /// <summary>JSON text as the template's values (mappings, lists, strings, numbers, booleans, null); text that is not JSON stays text.</summary>
    public static object? JsonValue(string json)
    {
        try
        {
            using var doc = System.Text.Json.JsonDocument.Parse(json);
            return JsonValue(doc.RootElement);
        }
        catch (System.Text.Json.JsonException)
        {
            return json;
        }
    }

    /// <summary>A JSON element as the template's values.</summary>
    public static object? JsonValue(System.Text.Json.JsonElement e) => e.ValueKind switch
    {
        System.Text.Json.JsonValueKind.Object => e.EnumerateObject().ToDictionary(p => p.Name, p => JsonValue(p.Value)),
        System.Text.Json.JsonValueKind.Array => e.EnumerateArray().Select(JsonValue).ToList(),
        System.Text.Json.JsonValueKind.String => e.GetString(),
        System.Text.Json.JsonValueKind.Number => e.TryGetInt64(out long l) ? l : e.GetDouble(),
        System.Text.Json.JsonValueKind.True => true,
        System.Text.Json.JsonValueKind.False => false,
        _ => null,
    };

    private long Long(object? v, int position) => v is long l ? l : throw Error(Name, Source, position, $"expected an integer, got {JinjaValues.TypeName(v)}");

    private static object? Convert(object? value) => value switch
    {
        null or string or bool or long or double => value,
        int i => (long)i,
        float f => (double)f,
        IReadOnlyDictionary<string, object?> map => map.ToDictionary(kv => kv.Key, kv => Convert(kv.Value)),
        System.Collections.IEnumerable list => list.Cast<object?>().Select(Convert).ToList(),
        _ => value.ToString(),
    };

    private static string StrftimeNow(string format)
    {
        var now = DateTime.Now;
        var sb = new System.Text.StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length) { sb.Append(format[i]); continue; }
            char f = format[++i];
            sb.Append(f switch
            {
                'd' => now.ToString("dd", System.Globalization.CultureInfo.InvariantCulture),
                'm' => now.ToString("MM", System.Globalization.CultureInfo.InvariantCulture),
                'Y' => now.ToString("yyyy", System.Globalization.CultureInfo.InvariantCulture),
                'y' => now.ToString("yy", System.Globalization.CultureInfo.InvariantCulture),
                'b' => now.ToString("MMM", System.Globalization.CultureInfo.InvariantCulture),
                'B' => now.ToString("MMMM", System.Globalization.CultureInfo.InvariantCulture),
                'H' => now.ToString("HH", System.Globalization.CultureInfo.InvariantCulture),
                'M' => now.ToString("mm", System.Globalization.CultureInfo.InvariantCulture),
                'S' => now.ToString("ss", System.Globalization.CultureInfo.InvariantCulture),
                '%' => "%",
                _ => "%" + f,
            });
        }
        return sb.ToString();
    }

    private static ChatTemplateException Error(string name, string source, int position, string problem)
    {
        position = Math.Clamp(position, 0, source.Length);
        int line = 1, column = 1;
        for (int i = 0; i < position; i++)
        {
            if (source[i] == '\n') { line++; column = 1; }
            else column++;
        }
        return new ChatTemplateException(name, line, column, problem);
    }
}
