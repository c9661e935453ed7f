using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Tessera.Inference.Serving;
using Tessera.Inference.Tools;
using Tessera.Server.Contracts;

namespace Tessera.Server.Endpoints;

/// <summary>
/// POST /v1/responses, OpenAI's Responses API over the chat endpoint's machinery: the input items become the chat template's
/// messages (<see cref="ResponseInput"/>), tools and tool_choice the chat tools (forced calls constrained, free ones parsed from
/// the text), text.format the structured outputs; one output (a message and/or function calls), whole or streamed as the
/// Responses API's typed events (<see cref="ResponseEventStream"/>). Finished responses go to a bounded in-memory
/// <see cref="ResponseStore"/> (unless store is false), which previous_response_id continues and GET / DELETE
/// /v1/responses/{id} read and forget.
/// </summary>
internal sealed class ResponsesEndpoint(InferenceEngine engine, ChatPrompt chat, ServeOptions options)
{
    private readonly ResponseStore _store = new(options.StoredResponses);

    private static readonly JsonElement Auto = JsonDocument.Parse("\"auto\"").RootElement;
    private static readonly JsonElement NoneChoice = JsonDocument.Parse("\"none\"").RootElement;

    public async Task HandleAsync(HttpContext context)
    {
        var body = await RequestBody.ReadAsync(context, ServerJsonContext.Default.ResponseRequestBody).ConfigureAwait(false);
        string? adapter = EngineCalls.CheckModel(context, body.Model, options, engine);
        if (body.MaxOutputTokens is < 1) throw new ApiException(ApiError.Invalid($"max_output_tokens ({body.MaxOutputTokens}) must be at least 1", "max_output_tokens"));
        IReadOnlyList<Tessera.Models.Chat.ChatMessage> history = [];
        if (body.PreviousResponseId is { } previous)
            history = (_store.Get(previous) ?? throw new ApiException(new ApiError(StatusCodes.Status404NotFound,
                $"Previous response with id '{previous}' not found (this server keeps the last {options.StoredResponses} stored responses in memory)",
                "invalid_request_error", "previous_response_id", "previous_response_not_found"))).Conversation;
        var messages = ResponseInput.Messages(body.Input, body.Instructions, history);
        var tools = Tools(body.Tools);
        var toolChoice = Choice(body.ToolChoice, tools);

        int[] prompt;
        try
        {
            prompt = chat.Tokens(messages, tools, toolChoice.Forces);
        }
        catch (InvalidRequestException e)
        {
            throw new ApiException(ApiError.Invalid(e.Message, e.Parameter == "messages" ? "input" : e.Parameter, e.Code));
        }
        var format = body.Text?.Format;
        var request = new CompletionRequest
        {
            Prompt = prompt,
            AdapterName = adapter,
            Sampling = new Inference.Sampling.SamplingOptions { Temperature = body.Temperature ?? 1.0, TopP = body.TopP ?? 1.0 },
            Seed = body.Seed is long seed ? unchecked((ulong)seed) : null,
            MaxTokens = body.MaxOutputTokens,
            Stop = chat.StopStrings(null),
            Grammar = EngineCalls.Grammar(format?.Type, format?.Schema, format?.Name, "text.format", "text.format"),
        };
        bool oneCall = body.ParallelToolCalls == false;
        if (toolChoice.Forces)
        {
            if (request.Grammar is not null)
                throw new ApiException(ApiError.Invalid("tool_choice forces a tool call, which text.format cannot constrain too; give one of them", "tool_choice"));
            try
            {
                request = request with { Grammar = chat.ToolCalls.ForcedCalls(tools, toolChoice, !oneCall, engine.StopTokens.Count > 0) };
            }
            catch (ArgumentException e)
            {
                throw new ApiException(ApiError.Invalid(e.Message, "tools"));
            }
        }
        var events = Submit(request, context);
        bool store = body.Store != false && options.StoredResponses > 0;
        var response = new ResponseBody("resp_" + Guid.NewGuid().ToString("N"), "response", EngineCalls.Now(), "in_progress", null, body.Instructions,
            body.MaxOutputTokens, EngineCalls.ModelOf(context, options), [], !oneCall, body.Temperature ?? 1.0, body.TopP ?? 1.0,
            body.ToolChoice is { ValueKind: not JsonValueKind.Null } c ? c.Clone() : tools.Count > 0 ? Auto : NoneChoice, body.Tools ?? [],
            body.Text?.Format is null ? new ResponseTextBody { Format = new ResponseTextFormatBody { Type = "text" } } : body.Text, "disabled", null,
            body.User, body.Metadata ?? [], Store: store, Background: false, body.PreviousResponseId);
        // With tools the model may call (auto, required, named), the text is read for calls as chat's is.
        var calls = tools.Count > 0 && toolChoice.Mode != ToolChoiceMode.None ? toolChoice : null;
        ResponseBody? finished;
        if (body.Stream == true)
        {
            var stream = new ResponseEventStream(context, response, calls is null ? null : new ToolCallStreamReader(chat.ToolCalls, calls.Forces, oneCall ? 1 : int.MaxValue));
            finished = await stream.RunAsync(events).ConfigureAwait(false);
        }
        else finished = await WholeAsync(context, events, response, calls, oneCall).ConfigureAwait(false);
        if (finished is not null && store)
            _store.Add(new ResponseStore.Entry(finished, [.. messages.Skip(string.IsNullOrEmpty(body.Instructions) ? 0 : 1), .. Turns(finished.Output)]));
    }

    /// <summary>GET /v1/responses/{id}: a stored response as it was sent; 404 when unknown or evicted.</summary>
    public Task GetAsync(HttpContext context, string id)
    {
        var entry = _store.Get(id) ?? throw new ApiException(NotFound(id));
        context.Response.ContentType = "application/json";
        return context.Response.WriteAsync(JsonSerializer.Serialize(entry.Response, ServerJsonContext.Default.ResponseBody), context.RequestAborted);
    }

    /// <summary>DELETE /v1/responses/{id}: forgets a stored response; 404 when unknown.</summary>
    public Task DeleteAsync(HttpContext context, string id)
    {
        if (!_store.Remove(id)) throw new ApiException(NotFound(id));
        context.Response.ContentType = "application/json";
        return context.Response.WriteAsync(JsonSerializer.Serialize(new ResponseDeletedBody(id, "response", true), ServerJsonContext.Default.ResponseDeletedBody),
            context.RequestAborted);
    }

    private ApiError NotFound(string id) => new(StatusCodes.Status404NotFound,
        $"Response with id '{id}' not found (this server keeps the last {options.StoredResponses} stored responses in memory)", "invalid_request_error", "id", "not_found");

    /// <summary>A response's output as the conversation's next turns: the message's text and the function calls, one assistant turn.</summary>
    private static IEnumerable<Tessera.Models.Chat.ChatMessage> Turns(List<ResponseOutputItem> output)
    {
        string text = string.Concat(output.Where(o => o.Type == "message").SelectMany(o => o.Content ?? []).Select(p => p.Text));
        var calls = output.Where(o => o.Type == "function_call").Select(o => new Tessera.Models.Chat.ChatToolCall(o.CallId!, o.Name!, o.Arguments!)).ToList();
        yield return new Tessera.Models.Chat.ChatMessage("assistant", text) { ToolCalls = calls.Count > 0 ? calls : null };
    }

    /// <summary>Submits; the engine's refusals name the Responses API's fields (max_output_tokens, input) rather than chat's.</summary>
    private System.Threading.Channels.ChannelReader<CompletionEvent> Submit(CompletionRequest request, HttpContext context)
    {
        try
        {
            return EngineCalls.Submit(engine, request, context);
        }
        catch (ApiException e) when (e.Error.Param is "max_tokens" or "messages" or "prompt")
        {
            throw new ApiException(e.Error with
            {
                Message = e.Error.Message.Replace("max_tokens", "max_output_tokens", StringComparison.Ordinal),
                Param = e.Error.Param == "max_tokens" ? "max_output_tokens" : "input",
            });
        }
    }

    /// <summary>The whole response, written once the choice ends; null when the client went away first.</summary>
    private async Task<ResponseBody?> WholeAsync(HttpContext context, System.Threading.Channels.ChannelReader<CompletionEvent> events, ResponseBody response, ToolChoice? tools, bool oneCall)
    {
        var text = new StringBuilder();
        FinishReason? reason = null;
        CompletionUsage? usage = null;
        await foreach (var e in events.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
        {
            if (e.Usage is { } u) { usage = u; continue; }
            text.Append(e.Text);
            if (e.FinishReason is { } r) reason = r;
        }
        if (usage is null) return null;                                 // cancelled: the client is gone
        string? content = text.ToString();
        var output = new List<ResponseOutputItem>();
        IReadOnlyList<Tessera.Models.Chat.ChatToolCall> found = [];
        if (tools is not null)
        {
            var (parsedContent, parsedCalls) = chat.ToolCalls.Parse(content, tools.Forces, chat.ToolCalls.NewCallId);
            if (parsedCalls.Count > 0) (content, found) = (parsedContent, parsedCalls);   // no call: the text stays as written
        }
        // A message when there is text, or when there is nothing else (an empty answer is an empty message); then the calls,
        // the first only with parallel_tool_calls false. A reply max_output_tokens cut keeps the whole calls before the cut.
        if (!string.IsNullOrEmpty(content) || found.Count == 0) output.Add(Message(content ?? "", "completed"));
        output.AddRange(found.Take(oneCall ? 1 : int.MaxValue).Select(c => FunctionCall(c.Id, c.Name, c.Arguments, "completed")));
        var whole = Finished(response, output, reason, usage);
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(JsonSerializer.Serialize(whole, ServerJsonContext.Default.ResponseBody), context.RequestAborted).ConfigureAwait(false);
        return whole;
    }

    /// <summary>The response once its choice ended: completed, or incomplete when the token limit cut it.</summary>
    public static ResponseBody Finished(ResponseBody response, List<ResponseOutputItem> output, FinishReason? reason, CompletionUsage usage) => response with
    {
        Status = reason == FinishReason.Length ? "incomplete" : "completed",
        IncompleteDetails = reason == FinishReason.Length ? new IncompleteDetailsBody("max_output_tokens") : null,
        Output = output,
        Usage = new ResponseUsageBody(usage.PromptTokens, new InputTokensDetailsBody(usage.CachedPromptTokens), usage.CompletionTokens,
            new OutputTokensDetailsBody(0), usage.TotalTokens),
    };

    public static ResponseOutputItem Message(string text, string status, string? id = null) =>
        new("message", id ?? "msg_" + Guid.NewGuid().ToString("N"), status, "assistant", [OutputText(text)]);

    public static OutputTextBody OutputText(string text) => new("output_text", text, [], []);

    public static ResponseOutputItem FunctionCall(string callId, string name, string arguments, string status, string? id = null) =>
        new("function_call", id ?? "fc_" + Guid.NewGuid().ToString("N"), status, CallId: callId, Name: name, Arguments: arguments);

    /// <summary>The Responses API's tools: functions, flat ({"type": "function", "name", "description", "parameters"}).</summary>
    private static List<ChatTool> Tools(List<ResponseToolBody>? tools)
    {
        var result = new List<ChatTool>();
        for (int i = 0; i < (tools?.Count ?? 0); i++)
        {
            var t = tools![i];
            if (t?.Type != "function" || t.Name is not { Length: > 0 } name)
                throw new ApiException(ApiError.Invalid($"tools[{i}] must be {{\"type\": \"function\", \"name\": ...}} (only function tools are served)", "tools"));
            if (result.Any(r => r.Name == name)) throw new ApiException(ApiError.Invalid($"tools[{i}]: the name '{name}' is given twice", "tools"));
            result.Add(new ChatTool(name, t.Description, t.Parameters));
        }
        return result;
    }

    /// <summary>tool_choice: "none", "auto" (the default with tools), "required", or {"type": "function", "name": ...}.</summary>
    private static ToolChoice Choice(JsonElement? choice, List<ChatTool> tools)
    {
        if (choice is not { } c || c.ValueKind == JsonValueKind.Null) return tools.Count > 0 ? ToolChoice.Auto : ToolChoice.None;
        var parsed = c.ValueKind == JsonValueKind.String
            ? c.GetString() switch
            {
                "none" => ToolChoice.None,
                "auto" => ToolChoice.Auto,
                "required" => new ToolChoice(ToolChoiceMode.Required),
                var other => throw new ApiException(ApiError.Invalid($"tool_choice '{other}' is not one of none, auto, required, or a function", "tool_choice")),
            }
            : c.ValueKind == JsonValueKind.Object && c.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() == "function"
                && c.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String
                ? new ToolChoice(ToolChoiceMode.Named, n.GetString())
                : throw new ApiException(ApiError.Invalid("tool_choice must be none, auto, required, or {\"type\": \"function\", \"name\": ...}", "tool_choice"));
        if (parsed.Mode != ToolChoiceMode.None && tools.Count == 0)
            throw new ApiException(ApiError.Invalid($"tool_choice is {parsed.Mode.ToString().ToLowerInvariant()} but no tools are given", "tool_choice"));
        if (parsed.Mode == ToolChoiceMode.Named && tools.All(t => t.Name != parsed.Name))
            throw new ApiException(ApiError.Invalid($"tool_choice names the function '{parsed.Name}', which is not among the tools", "tool_choice"));
        return parsed;
    }
}
