using System.Runtime.CompilerServices;
using System.Text;
using Microsoft.Extensions.AI;
using Tessera.Inference.Sampling;
using TemplateMessage = Tessera.Models.Chat.ChatMessage;

namespace Tessera.Inference.Serving;

/// <summary>
/// Microsoft.Extensions.AI's <see cref="IChatClient"/> over an in-process <see cref="InferenceEngine"/>: the conversation is
/// rendered with the model's chat template (<see cref="ChatPrompt"/>), submitted as one request, and its text returned whole
/// or streamed as it is decided; cancelling the token ends the request and frees its KV blocks. The HTTP server uses the
/// same engine, so an application can embed the model or call it over HTTP with the same results.
/// </summary>
public sealed class TesseraChatClient : IChatClient
{
    private readonly InferenceEngine _engine;
    private readonly ChatPrompt _prompt;
    private readonly string _modelId;

    /// <summary>A client of <paramref name="engine"/>, formatting conversations with <paramref name="prompt"/>.</summary>
    public TesseraChatClient(InferenceEngine engine, ChatPrompt prompt, string modelId)
    {
        _engine = engine ?? throw new ArgumentNullException(nameof(engine));
        _prompt = prompt ?? throw new ArgumentNullException(nameof(prompt));
        _modelId = modelId;
        Metadata = new ChatClientMetadata("tessera", null, modelId);
    }

    /// <summary>Provider "tessera" and the model id.</summary>
    public ChatClientMetadata Metadata { get; }

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<Microsoft.Extensions.AI.ChatMessage> messages, ChatOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var text = new StringBuilder();
        FinishReason? finish = null;
        CompletionUsage? usage = null;
        var (request, tools) = Request(messages, options);
        await foreach (var e in _engine.Submit(request, cancellationToken).ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            text.Append(e.Text);
            finish ??= e.FinishReason;
            usage ??= e.Usage;
        }
        cancellationToken.ThrowIfCancellationRequested();
        var (contents, reason) = Reply(text.ToString(), Reason(finish), tools, _prompt.ToolCalls, MaxCalls(options));
        return new ChatResponse(new Microsoft.Extensions.AI.ChatMessage(ChatRole.Assistant, contents))
        {
            ModelId = request.AdapterName is null ? _modelId : options!.ModelId,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = reason,
            Usage = Usage(usage),
        };
    }

    /// <summary>
    /// The reply's contents: with tools the model may call, its calls (<see cref="Tools.HermesToolFormat"/>; a forced call's text
    /// is the call's JSON) as <see cref="FunctionCallContent"/> beside the rest of the text, and the finish reason tool calls.
    /// </summary>
    private static (List<AIContent> Contents, ChatFinishReason? Reason) Reply(string text, ChatFinishReason? reason, Tools.ToolChoice? tools,
        Tools.ToolCallFormat format, int maxCalls)
    {
        if (tools is null) return ([new TextContent(text)], reason);
        var (content, calls) = format.Parse(text, tools.Forces, format.NewCallId);
        if (calls.Count == 0) return ([new TextContent(text)], reason);
        var contents = new List<AIContent>();
        if (content is not null) contents.Add(new TextContent(content));
        foreach (var c in calls.Take(maxCalls)) contents.Add(Call(c));
        return (contents, reason == ChatFinishReason.Length ? reason : ChatFinishReason.ToolCalls);   // cut by max_tokens: a later call may be missing
    }

    /// <summary>Most calls a reply gives: one when <see cref="ChatOptions.AllowMultipleToolCalls"/> is false (OpenAI's parallel_tool_calls).</summary>
    private static int MaxCalls(ChatOptions? options) => options?.AllowMultipleToolCalls == false ? 1 : int.MaxValue;

    private static FunctionCallContent Call(Tessera.Models.Chat.ChatToolCall c) =>
        new(c.Id, c.Name, System.Text.Json.JsonSerializer.Deserialize<Dictionary<string, object?>>(c.Arguments));

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<Microsoft.Extensions.AI.ChatMessage> messages,
        ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        var (request, tools) = Request(messages, options);
        // With tools the text goes through a Tools.ToolCallStreamReader, as the HTTP stream's does: text before a call streams
        // as it comes. Microsoft.Extensions.AI carries a call as one FunctionCallContent with its arguments parsed (there is no
        // content for a piece of arguments; its OpenAI client, too, gathers a call's pieces and yields the call whole), so the
        // calls come whole in the last update, as the reader confirms them against Parse when the reply ends.
        var reader = tools is null ? null : new Tools.ToolCallStreamReader(_prompt.ToolCalls, tools.Forces, MaxCalls(options));
        await foreach (var e in _engine.Submit(request, cancellationToken).ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (e.Usage is { } usage)
            {
                yield return new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(Usage(usage)!)]) { ResponseId = id, ModelId = _modelId };
                continue;
            }
            if (e.Text.Length == 0 && e.FinishReason is null) continue;
            if (reader is not null)
            {
                var found = e.Text.Length > 0 ? reader.Append(e.Text) : [];
                if (e.FinishReason is null)
                {
                    foreach (var f in found.Where(f => f.Kind == Tools.ToolCallStreamEventKind.Content))
                        yield return new ChatResponseUpdate(ChatRole.Assistant, f.Text) { ResponseId = id, ModelId = _modelId };
                    continue;
                }
                var contents = found.Concat(reader.Finish()).Where(f => f.Kind == Tools.ToolCallStreamEventKind.Content)
                    .Select(f => (AIContent)new TextContent(f.Text)).ToList();
                foreach (var c in reader.Calls) contents.Add(Call(c));
                yield return new ChatResponseUpdate(ChatRole.Assistant, contents)
                {
                    ResponseId = id,
                    ModelId = _modelId,
                    FinishReason = reader.Calls.Count > 0 && e.FinishReason != FinishReason.Length ? ChatFinishReason.ToolCalls : Reason(e.FinishReason),
                };
                continue;
            }
            yield return new ChatResponseUpdate(ChatRole.Assistant, e.Text) { ResponseId = id, ModelId = _modelId, FinishReason = Reason(e.FinishReason) };
        }
    }

    public object? GetService(Type serviceType, object? serviceKey = null) =>
        serviceKey is not null ? null
        : serviceType == typeof(ChatClientMetadata) ? Metadata
        : serviceType.IsInstanceOfType(this) ? this
        : serviceType.IsInstanceOfType(_engine) ? _engine
        : null;

    public void Dispose() { }   // the engine belongs to whoever made it

    /// <summary>
    /// The engine request: the conversation (function calls into assistant turns, function results into tool turns) rendered
    /// with <see cref="ChatOptions.Tools"/>' declarations; <see cref="ChatOptions.ToolMode"/> none, auto (the default with tools),
    /// required or a named function, a forced call constrained to its JSON. Returns the tool choice when calls may come back.
    /// </summary>
    private (CompletionRequest Request, Tools.ToolChoice? Calls) Request(IEnumerable<Microsoft.Extensions.AI.ChatMessage> messages, ChatOptions? options)
    {
        var conversation = new List<TemplateMessage>();
        foreach (var m in messages)
        {
            var calls = m.Contents.OfType<FunctionCallContent>()
                .Select(c => new Tessera.Models.Chat.ChatToolCall(c.CallId, c.Name, System.Text.Json.JsonSerializer.Serialize(c.Arguments ?? new Dictionary<string, object?>()))).ToList();
            var results = m.Contents.OfType<FunctionResultContent>().ToList();
            foreach (var r in results)
                conversation.Add(new TemplateMessage("tool", r.Result as string ?? System.Text.Json.JsonSerializer.Serialize(r.Result)) { ToolCallId = r.CallId });
            if (results.Count > 0 && string.IsNullOrEmpty(m.Text) && calls.Count == 0) continue;
            conversation.Add(new TemplateMessage(m.Role.Value, m.Text) { ToolCalls = calls.Count > 0 ? calls : null });
        }
        var tools = (options?.Tools ?? []).OfType<AIFunctionDeclaration>()
            .Select(f => new Tools.ChatTool(f.Name, f.Description, f.JsonSchema)).ToList();
        var choice = tools.Count == 0 ? Tools.ToolChoice.None : options?.ToolMode switch
        {
            NoneChatToolMode => Tools.ToolChoice.None,
            RequiredChatToolMode { RequiredFunctionName: { } name } => new Tools.ToolChoice(Tools.ToolChoiceMode.Named, name),
            RequiredChatToolMode => new Tools.ToolChoice(Tools.ToolChoiceMode.Required),
            _ => Tools.ToolChoice.Auto,
        };
        var request = new CompletionRequest
        {
            AdapterName = AdapterOf(options?.ModelId),
            Prompt = _prompt.Tokens(conversation, tools, choice.Forces),
            MaxTokens = options?.MaxOutputTokens,
            Sampling = new SamplingOptions { Temperature = options?.Temperature ?? 1.0, TopP = options?.TopP ?? 1.0, TopK = options?.TopK ?? 0 },
            Seed = options?.Seed is long seed ? unchecked((ulong)seed) : null,
            PresencePenalty = options?.PresencePenalty ?? 0,
            FrequencyPenalty = options?.FrequencyPenalty ?? 0,
            Stop = _prompt.StopStrings(options?.StopSequences?.ToList()),
            // RequireAny: one or more calls, unless AllowMultipleToolCalls is false (OpenAI's parallel_tool_calls).
            Grammar = choice.Forces ? _prompt.ToolCalls.ForcedCalls(tools, choice, options?.AllowMultipleToolCalls != false, _engine.StopTokens.Count > 0)
                : Grammar(options?.ResponseFormat),
        };
        return (request, tools.Count > 0 && choice.Mode != Tools.ToolChoiceMode.None ? choice : null);
    }

    /// <summary>
    /// The served LoRA adapter <see cref="ChatOptions.ModelId"/> names (multi-LoRA, <see cref="InferenceEngine.AdapterNames"/>): null, the
    /// base, for none or this client's own model id. Without served adapters the id is not checked, as before; with them an id that
    /// is neither the base's nor an adapter's is refused rather than silently answered by the base.
    /// </summary>
    private string? AdapterOf(string? modelId)
    {
        if (modelId is null || modelId == _modelId) return null;
        var names = _engine.AdapterNames;
        if (names.Contains(modelId)) return modelId;                 // resolved again when queued: an adapter unloaded meanwhile is refused then
        if (_engine.Model.ServedAdapters is null) return null;
        throw new InvalidRequestException($"ChatOptions.ModelId '{modelId}' is neither the model '{_modelId}' nor one of its LoRA adapters ({string.Join(", ", names)})", "model", "model_not_found");
    }

    /// <summary>
    /// <see cref="ChatOptions.ResponseFormat"/>: JSON with a schema (what <c>GetResponseAsync&lt;T&gt;</c> sends) or without one
    /// constrains the reply (<see cref="Constraints.JsonGrammar"/>); text leaves it free. A schema outside the supported subset
    /// throws <see cref="ArgumentException"/> saying what.
    /// </summary>
    private static Constraints.JsonGrammar? Grammar(ChatResponseFormat? format) => format switch
    {
        ChatResponseFormatJson { Schema: { } schema } json => Constraints.JsonGrammar.FromSchema(schema, json.SchemaName ?? "schema"),
        ChatResponseFormatJson => Constraints.JsonGrammar.AnyObject(),
        _ => null,
    };

    private static ChatFinishReason? Reason(FinishReason? reason) => reason switch
    {
        FinishReason.Stop => ChatFinishReason.Stop,
        FinishReason.Length => ChatFinishReason.Length,
        _ => null,
    };

    private static UsageDetails? Usage(CompletionUsage? usage) => usage is null ? null : new UsageDetails
    {
        InputTokenCount = usage.PromptTokens,
        OutputTokenCount = usage.CompletionTokens,
        TotalTokenCount = usage.TotalTokens,
        CachedInputTokenCount = usage.CachedPromptTokens,
    };
}
