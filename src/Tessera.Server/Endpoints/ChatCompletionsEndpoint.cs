using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Tessera.Inference.Serving;
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
        EngineCalls.CheckModel(body.Model, options);
        if (body.Messages is null) throw new ApiException(ApiError.Invalid("you must provide 'messages'", "messages", "missing_required_parameter"));
        var messages = new List<TemplateMessage>(body.Messages.Count);
        for (int i = 0; i < body.Messages.Count; i++)
        {
            var m = body.Messages[i] ?? throw new ApiException(ApiError.Invalid($"messages[{i}] is null", $"messages[{i}]"));
            if (m.Role is null || !Roles.Contains(m.Role))
                throw new ApiException(ApiError.Invalid($"messages[{i}].role is '{m.Role}'; expected one of {string.Join(", ", Roles)}", $"messages[{i}].role"));
            // "developer" is OpenAI's newer name for the system turn; templates know "system".
            messages.Add(new TemplateMessage(m.Role == "developer" ? "system" : m.Role, m.Content ?? ""));
        }
        if (body.TopLogprobs is not null && body.Logprobs != true)
            throw new ApiException(ApiError.Invalid("top_logprobs needs logprobs set to true", "top_logprobs"));
        if (body.Stop is { Count: > 4 }) throw new ApiException(ApiError.Invalid($"stop holds {body.Stop.Count} strings; at most 4 are allowed", "stop"));

        int[] prompt;
        try
        {
            prompt = chat.Tokens(messages);
        }
        catch (InvalidRequestException e)
        {
            throw new ApiException(ApiError.Invalid(e.Message, e.Parameter, e.Code));
        }
        var request = EngineCalls.Request(body, prompt) with
        {
            MaxTokens = body.MaxCompletionTokens ?? body.MaxTokens,
            Stop = chat.StopStrings(body.Stop),
            TopLogprobs = body.Logprobs == true ? body.TopLogprobs ?? 0 : null,
        };
        var events = EngineCalls.Submit(engine, request, context);
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        long created = EngineCalls.Now();
        if (body.Stream == true) await StreamAsync(context, events, id, created, request.Choices, body.StreamOptions?.IncludeUsage == true).ConfigureAwait(false);
        else await WholeAsync(context, events, id, created, request.Choices).ConfigureAwait(false);
    }

    private async Task WholeAsync(HttpContext context, System.Threading.Channels.ChannelReader<CompletionEvent> events, string id, long created, int n)
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
        var choices = Enumerable.Range(0, n).Select(i => new ChatChoice(i, new AssistantMessage("assistant", texts[i].ToString()),
            logprobs[i] is { } l ? new ChoiceLogprobs(l) : null, reasons[i] ?? "stop")).ToList();
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(JsonSerializer.Serialize(new ChatCompletionBody(id, "chat.completion", created, options.ModelName, choices, usage),
            ServerJsonContext.Default.ChatCompletionBody), context.RequestAborted).ConfigureAwait(false);
    }

    private async Task StreamAsync(HttpContext context, System.Threading.Channels.ChannelReader<CompletionEvent> events, string id, long created, int n, bool includeUsage)
    {
        EngineCalls.BeginStream(context);
        // OpenAI opens each choice with a delta carrying the role.
        for (int i = 0; i < n; i++) await SendAsync(context, id, created, new ChatChunkChoice(i, new ChatDelta("assistant", ""), null, null), null).ConfigureAwait(false);
        await foreach (var e in events.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
        {
            if (e.Usage is { } usage)
            {
                if (includeUsage)
                {
                    var chunk = new ChatCompletionChunk(id, "chat.completion.chunk", created, options.ModelName, [], EngineCalls.Usage(usage));
                    await EngineCalls.SendEventAsync(context, JsonSerializer.Serialize(chunk, ServerJsonContext.Default.ChatCompletionChunk)).ConfigureAwait(false);
                }
                await EngineCalls.SendDoneAsync(context).ConfigureAwait(false);
                return;
            }
            if (e.Text.Length == 0 && e.Logprobs is null && e.FinishReason is null) continue;
            var logprobs = e.Logprobs is { } lp ? new ChoiceLogprobs(lp.Select(Logprob).ToList()) : null;
            await SendAsync(context, id, created, new ChatChunkChoice(e.Index, new ChatDelta(null, e.Text.Length > 0 || e.FinishReason is null ? e.Text : null),
                logprobs, e.FinishReason is { } r ? EngineCalls.Reason(r) : null), null).ConfigureAwait(false);
        }
    }

    private Task SendAsync(HttpContext context, string id, long created, ChatChunkChoice choice, UsageBody? usage) =>
        EngineCalls.SendEventAsync(context, JsonSerializer.Serialize(
            new ChatCompletionChunk(id, "chat.completion.chunk", created, options.ModelName, [choice], usage), ServerJsonContext.Default.ChatCompletionChunk));

    private static TokenLogprobBody Logprob(TokenLogprob lp) => new(lp.Token.Text, lp.Token.Logprob, EngineCalls.Bytes(lp.Token.Bytes),
        lp.Top.Select(t => new TopLogprobBody(t.Text, t.Logprob, EngineCalls.Bytes(t.Bytes))).ToList());
}
