using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Tessera.Inference.Serving;
using Tessera.Inference.Tools;
using Tessera.Server.Contracts;
using TemplateMessage = Tessera.Models.Chat.ChatMessage;

namespace Tessera.Server.Endpoints;

/// <summary>POST /v1/chat/completions: the conversation through the chat template, then whole or streamed (SSE) choices.</summary>
internal sealed class ChatCompletionsEndpoint(InferenceEngine engine, ChatPrompt chat, ServeOptions options)
{
    private static readonly HashSet<string> Roles = ["system", "developer", "user", "assistant", "tool"];

    public async Task HandleAsync(HttpContext context)
    {
        var body = await RequestBody.ReadAsync(context, ServerJsonContext.Default.ChatCompletionRequestBody).ConfigureAwait(false);
        string? adapter = EngineCalls.CheckModel(context, body.Model, options, engine);
        if (body.Messages is null) throw new ApiException(ApiError.Invalid("you must provide 'messages'", "messages", "missing_required_parameter"));
        var messages = new List<TemplateMessage>(body.Messages.Count);
        for (int i = 0; i < body.Messages.Count; i++)
        {
            var m = body.Messages[i] ?? throw new ApiException(ApiError.Invalid($"messages[{i}] is null", $"messages[{i}]"));
            if (m.Role is null || !Roles.Contains(m.Role))
                throw new ApiException(ApiError.Invalid($"messages[{i}].role is '{m.Role}'; expected one of {string.Join(", ", Roles)}", $"messages[{i}].role"));
            // "developer" is OpenAI's newer name for the system turn; templates know "system".
            messages.Add(new TemplateMessage(m.Role == "developer" ? "system" : m.Role, m.Content ?? "")
            {
                ToolCalls = m.ToolCalls?.Select((c, j) => new Tessera.Models.Chat.ChatToolCall(c.Id ?? $"call_{i}_{j}",
                    c.Function?.Name ?? throw new ApiException(ApiError.Invalid($"messages[{i}].tool_calls[{j}].function.name is missing", $"messages[{i}].tool_calls")),
                    c.Function.Arguments ?? "{}")).ToList(),
                ToolCallId = m.ToolCallId,
            });
        }
        var tools = Tools(body.Tools);
        var toolChoice = Choice(body.ToolChoice, tools);
        if (body.TopLogprobs is not null && body.Logprobs != true)
            throw new ApiException(ApiError.Invalid("top_logprobs needs logprobs set to true", "top_logprobs"));
        if (body.Stop is { Count: > 4 }) throw new ApiException(ApiError.Invalid($"stop holds {body.Stop.Count} strings; at most 4 are allowed", "stop"));

        int[] prompt;
        try
        {
            prompt = chat.Tokens(messages, tools, toolChoice.Forces);
        }
        catch (InvalidRequestException e)
        {
            throw new ApiException(ApiError.Invalid(e.Message, e.Parameter, e.Code));
        }
        var request = EngineCalls.Request(body, prompt, adapter) with
        {
            MaxTokens = body.MaxCompletionTokens ?? body.MaxTokens,
            Stop = chat.StopStrings(body.Stop),
            TopLogprobs = body.Logprobs == true ? body.TopLogprobs ?? 0 : null,
        };
        bool oneCall = body.ParallelToolCalls == false;
        if (toolChoice.Forces)
        {
            if (request.Grammar is not null)
                throw new ApiException(ApiError.Invalid("tool_choice forces a tool call, which response_format cannot constrain too; give one of them", "tool_choice"));
            try
            {
                // Required (with parallel calls allowed): one or more calls, ended by the end-of-text token or the format's own end.
                request = request with { Grammar = chat.ToolCalls.ForcedCalls(tools, toolChoice, !oneCall, engine.StopTokens.Count > 0) };
            }
            catch (ArgumentException e)
            {
                throw new ApiException(ApiError.Invalid(e.Message, "tools"));
            }
        }
        var events = EngineCalls.Submit(engine, request, context);
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        long created = EngineCalls.Now();
        // With tools the model may call (auto, required, named), each choice's text is read whole for its calls.
        var calls = tools.Count > 0 && toolChoice.Mode != ToolChoiceMode.None ? toolChoice : null;
        if (body.Stream == true) await StreamAsync(context, events, id, created, request.Choices, body.StreamOptions?.IncludeUsage == true, calls, oneCall).ConfigureAwait(false);
        else await WholeAsync(context, events, id, created, request.Choices, calls, oneCall).ConfigureAwait(false);
    }

    /// <summary>OpenAI's tools: functions, each with a name; their parameters' schemas are checked when a call is forced.</summary>
    private static List<ChatTool> Tools(List<ToolBody>? tools)
    {
        var result = new List<ChatTool>();
        for (int i = 0; i < (tools?.Count ?? 0); i++)
        {
            var t = tools![i];
            if (t?.Type != "function" || t.Function?.Name is not { Length: > 0 } name)
                throw new ApiException(ApiError.Invalid($"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}", "tools"));
            if (result.Any(r => r.Name == name)) throw new ApiException(ApiError.Invalid($"tools[{i}]: the name '{name}' is given twice", "tools"));
            result.Add(new ChatTool(name, t.Function.Description, t.Function.Parameters));
        }
        return result;
    }

    /// <summary>OpenAI's tool_choice: "none", "auto" (the default with tools), "required", or a function by name.</summary>
    private static ToolChoice Choice(System.Text.Json.JsonElement? choice, List<ChatTool> tools)
    {
        if (choice is not { } c || c.ValueKind == System.Text.Json.JsonValueKind.Null) return tools.Count > 0 ? ToolChoice.Auto : ToolChoice.None;
        var parsed = c.ValueKind == System.Text.Json.JsonValueKind.String
            ? c.GetString() switch
            {
                "none" => ToolChoice.None,
                "auto" => ToolChoice.Auto,
                "required" => new ToolChoice(ToolChoiceMode.Required),
                var other => throw new ApiException(ApiError.Invalid($"tool_choice '{other}' is not one of none, auto, required, or a function", "tool_choice")),
            }
            : c.ValueKind == System.Text.Json.JsonValueKind.Object && c.TryGetProperty("function", out var f) && f.TryGetProperty("name", out var n) && n.ValueKind == System.Text.Json.JsonValueKind.String
                ? new ToolChoice(ToolChoiceMode.Named, n.GetString())
                : throw new ApiException(ApiError.Invalid("tool_choice must be none, auto, required, or {\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice"));
        if (parsed.Mode != ToolChoiceMode.None && tools.Count == 0)
            throw new ApiException(ApiError.Invalid($"tool_choice is {parsed.Mode.ToString().ToLowerInvariant()} but no tools are given", "tool_choice"));
        if (parsed.Mode == ToolChoiceMode.Named && tools.All(t => t.Name != parsed.Name))
            throw new ApiException(ApiError.Invalid($"tool_choice names '{parsed.Name}', which is not among the tools", "tool_choice"));
        return parsed;
    }

    /// <summary>
    /// A choice's text as the message says it: its tool calls, as the model's format writes them (<see cref="ToolCallFormat"/>;
    /// a forced reply's text is the calls after the format's forced opening) and the rest as content; the finish reason becomes
    /// tool_calls when there are calls, unless max_tokens cut the reply (length).
    /// </summary>
    private (string? Content, List<ToolCallOut>? Calls, string Reason) Message(string text, string reason, ToolChoice? tools, bool oneCall)
    {
        if (tools is null) return (text, null, reason);
        var (content, calls) = chat.ToolCalls.Parse(text, tools.Forces, chat.ToolCalls.NewCallId);
        if (calls.Count == 0) return (text, null, reason);
        // parallel_tool_calls false: one call a reply (the first the model wrote). A reply max_tokens cut keeps finish reason
        // length beside the whole calls before the cut, so the client knows a later call may be missing.
        return (content, [.. calls.Take(oneCall ? 1 : int.MaxValue).Select(c => new ToolCallOut(c.Id, "function", new ToolCallFunctionOut(c.Name, c.Arguments)))],
            reason == "length" ? reason : "tool_calls");
    }

    private async Task WholeAsync(HttpContext context, System.Threading.Channels.ChannelReader<CompletionEvent> events, string id, long created, int n,
        ToolChoice? tools, bool oneCall)
    {
        var texts = Enumerable.Range(0, n).Select(_ => new StringBuilder()).ToArray();
        var logprobs = new List<TokenLogprobBody>?[n];
        var reasons = new string?[n];
        UsageBody? usage = null;
        await foreach (var e in events.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
        {
            if (e.Usage is { } u) { usage = EngineCalls.Usage(u); continue; }
            texts[e.Index].Append(e.Text);
            if (e.Logprobs is { } lp) (logprobs[e.Index] ??= []).AddRange(lp.Select(Logprob));
            if (e.FinishReason is { } r) reasons[e.Index] = EngineCalls.Reason(r);
        }
        if (usage is null) return;                                      // cancelled: the client is gone
        var choices = Enumerable.Range(0, n).Select(i =>
        {
            var (content, calls, reason) = Message(texts[i].ToString(), reasons[i] ?? "stop", tools, oneCall);
            return new ChatChoice(i, new AssistantMessage("assistant", content, calls), logprobs[i] is { } l ? new ChoiceLogprobs(l) : null, reason);
        }).ToList();
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(JsonSerializer.Serialize(new ChatCompletionBody(id, "chat.completion", created, EngineCalls.ModelOf(context, options), choices, usage),
            ServerJsonContext.Default.ChatCompletionBody), context.RequestAborted).ConfigureAwait(false);
    }

    private async Task StreamAsync(HttpContext context, System.Threading.Channels.ChannelReader<CompletionEvent> events, string id, long created, int n, bool includeUsage,
        ToolChoice? tools, bool oneCall)
    {
        // With tools each choice's text goes through a ToolCallStreamReader: text before a call streams as it comes, a call's
        // name goes out once known and its arguments as they are written; when the choice ends the reader reads it whole with
        // Parse (the whole-reply path's reading) and sends what is left. Logprobs ride on the next chunk the choice sends.
        var readers = tools is null ? null
            : Enumerable.Range(0, n).Select(_ => new ToolCallStreamReader(chat.ToolCalls, tools.Forces, oneCall ? 1 : int.MaxValue)).ToArray();
        var heldLogprobs = new List<TokenLogprobBody>?[n];
        EngineCalls.BeginStream(context);
        // OpenAI opens each choice with a delta carrying the role.
        for (int i = 0; i < n; i++) await SendAsync(context, id, created, new ChatChunkChoice(i, new ChatDelta("assistant", ""), null, null), null).ConfigureAwait(false);
        await foreach (var e in events.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
        {
            if (e.Usage is { } usage)
            {
                if (includeUsage)
                {
                    var chunk = new ChatCompletionChunk(id, "chat.completion.chunk", created, EngineCalls.ModelOf(context, options), [], EngineCalls.Usage(usage));
                    await EngineCalls.SendEventAsync(context, JsonSerializer.Serialize(chunk, ServerJsonContext.Default.ChatCompletionChunk)).ConfigureAwait(false);
                }
                await EngineCalls.SendDoneAsync(context).ConfigureAwait(false);
                return;
            }
            if (e.Text.Length == 0 && e.Logprobs is null && e.FinishReason is null) continue;
            var logprobs = e.Logprobs is { } lp ? new ChoiceLogprobs(lp.Select(Logprob).ToList()) : null;
            if (readers is not null)
            {
                var reader = readers[e.Index];
                if (logprobs is not null) (heldLogprobs[e.Index] ??= []).AddRange(logprobs.Content);
                IEnumerable<ToolCallStreamEvent> found = e.Text.Length > 0 ? reader.Append(e.Text) : [];
                if (e.FinishReason is not null) found = found.Concat(reader.Finish());
                foreach (var f in found)
                {
                    if (Delta(f) is not { } delta) continue;
                    await SendAsync(context, id, created, new ChatChunkChoice(e.Index, delta, TakeLogprobs(heldLogprobs, e.Index), null), null).ConfigureAwait(false);
                }
                if (e.FinishReason is not { } end) continue;
                await SendAsync(context, id, created, new ChatChunkChoice(e.Index, new ChatDelta(null, null), TakeLogprobs(heldLogprobs, e.Index),
                    reader.Calls.Count > 0 && end != FinishReason.Length ? "tool_calls" : EngineCalls.Reason(end)), null).ConfigureAwait(false);
                continue;
            }
            await SendAsync(context, id, created, new ChatChunkChoice(e.Index, new ChatDelta(null, e.Text.Length > 0 || e.FinishReason is null ? e.Text : null),
                logprobs, e.FinishReason is { } r ? EngineCalls.Reason(r) : null), null).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// What a reader found, as a delta: content; a call's start (index, id, type, name, arguments ""); the next piece of its
    /// arguments (index and arguments only); nothing for a call's end.
    /// </summary>
    private static ChatDelta? Delta(ToolCallStreamEvent found) => found.Kind switch
    {
        ToolCallStreamEventKind.Content => new ChatDelta(null, found.Text),
        ToolCallStreamEventKind.CallStarted => new ChatDelta(null, null, [new ToolCallDeltaOut(found.Index, found.Id, "function", new ToolCallFunctionDeltaOut(found.Name, ""))]),
        ToolCallStreamEventKind.Arguments => new ChatDelta(null, null, [new ToolCallDeltaOut(found.Index, null, null, new ToolCallFunctionDeltaOut(null, found.Text))]),
        _ => null,
    };

    private static ChoiceLogprobs? TakeLogprobs(List<TokenLogprobBody>?[] held, int index)
    {
        if (held[index] is not { } list) return null;
        held[index] = null;
        return new ChoiceLogprobs(list);
    }

    private Task SendAsync(HttpContext context, string id, long created, ChatChunkChoice choice, UsageBody? usage) =>
        EngineCalls.SendEventAsync(context, JsonSerializer.Serialize(
            new ChatCompletionChunk(id, "chat.completion.chunk", created, EngineCalls.ModelOf(context, options), [choice], usage), ServerJsonContext.Default.ChatCompletionChunk));

    private static TokenLogprobBody Logprob(TokenLogprob lp) => new(lp.Token.Text, lp.Token.Logprob, EngineCalls.Bytes(lp.Token.Bytes),
        lp.Top.Select(t => new TopLogprobBody(t.Text, t.Logprob, EngineCalls.Bytes(t.Bytes))).ToList());
}
