using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Tessera.Inference.Serving;
using Tessera.Models.Tokenization;
using Tessera.Server.Contracts;

namespace Tessera.Server.Endpoints;

/// <summary>POST /v1/completions: a raw prompt (text or token ids) continued, whole or streamed; echo puts the prompt first.</summary>
internal sealed class CompletionsEndpoint(InferenceEngine engine, ITokenizer tokenizer, ServeOptions options)
{
    public async Task HandleAsync(HttpContext context)
    {
        var body = await RequestBody.ReadAsync(context, ServerJsonContext.Default.CompletionRequestBody).ConfigureAwait(false);
        EngineCalls.CheckModel(body.Model, options);
        if (body.Prompt is null) throw new ApiException(ApiError.Invalid("you must provide 'prompt'", "prompt", "missing_required_parameter"));
        if (body.Logprobs is < 0 or > 5) throw new ApiException(ApiError.Invalid($"logprobs ({body.Logprobs}) must lie in [0, 5]", "logprobs"));
        if (body.Stop is { Count: > 4 }) throw new ApiException(ApiError.Invalid($"stop holds {body.Stop.Count} strings; at most 4 are allowed", "stop"));
        int[] prompt = body.Prompt.Tokens ?? tokenizer.Encode(body.Prompt.Text ?? "");
        string promptText = body.Prompt.Text ?? tokenizer.Decode(prompt);
        var request = EngineCalls.Request(body, prompt) with
        {
            MaxTokens = body.MaxTokens ?? 16,                            // OpenAI's default for this endpoint
            Stop = body.Stop ?? [],
            TopLogprobs = body.Logprobs,
        };
        var events = EngineCalls.Submit(engine, request, context);
        string id = "cmpl-" + Guid.NewGuid().ToString("N");
        long created = EngineCalls.Now();
        string echo = body.Echo == true ? promptText : "";
        if (body.Stream == true) await StreamAsync(context, events, id, created, request.Choices, echo, body.StreamOptions?.IncludeUsage == true).ConfigureAwait(false);
        else await WholeAsync(context, events, id, created, request.Choices, echo).ConfigureAwait(false);
    }

    private async Task WholeAsync(HttpContext context, System.Threading.Channels.ChannelReader<CompletionEvent> events, string id, long created, int n, string echo)
    {
        var texts = Enumerable.Range(0, n).Select(_ => new StringBuilder(echo)).ToArray();
        var logprobs = new List<TokenLogprob>?[n];
        var reasons = new string?[n];
        UsageBody? usage = null;
        await foreach (var e in events.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
        {
            if (e.Usage is { } u) { usage = EngineCalls.Usage(u); continue; }
            texts[e.Index].Append(e.Text);
            if (e.Logprobs is { } lp) (logprobs[e.Index] ??= []).AddRange(lp);
            if (e.FinishReason is { } r) reasons[e.Index] = EngineCalls.Reason(r);
        }
        if (usage is null) return;
        var choices = Enumerable.Range(0, n).Select(i => new CompletionChoice(i, texts[i].ToString(),
            logprobs[i] is { } l ? Logprobs(l, echo.Length) : null, reasons[i] ?? "stop")).ToList();
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(JsonSerializer.Serialize(new TextCompletionBody(id, "text_completion", created, options.ModelName, choices, usage),
            ServerJsonContext.Default.TextCompletionBody), context.RequestAborted).ConfigureAwait(false);
    }

    private async Task StreamAsync(HttpContext context, System.Threading.Channels.ChannelReader<CompletionEvent> events, string id, long created, int n, string echo, bool includeUsage)
    {
        EngineCalls.BeginStream(context);
        var offsets = new int[n];
        if (echo.Length > 0)
            for (int i = 0; i < n; i++) { await SendAsync(context, id, created, new CompletionChoice(i, echo, null, null)).ConfigureAwait(false); offsets[i] = echo.Length; }
        await foreach (var e in events.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
        {
            if (e.Usage is { } usage)
            {
                if (includeUsage)
                {
                    var last = new TextCompletionBody(id, "text_completion", created, options.ModelName, [], EngineCalls.Usage(usage));
                    await EngineCalls.SendEventAsync(context, JsonSerializer.Serialize(last, ServerJsonContext.Default.TextCompletionBody)).ConfigureAwait(false);
                }
                await EngineCalls.SendDoneAsync(context).ConfigureAwait(false);
                return;
            }
            if (e.Text.Length == 0 && e.Logprobs is null && e.FinishReason is null) continue;
            var logprobs = e.Logprobs is { } lp ? Logprobs(lp, offsets[e.Index]) : null;
            offsets[e.Index] += e.Text.Length;
            await SendAsync(context, id, created, new CompletionChoice(e.Index, e.Text, logprobs, e.FinishReason is { } r ? EngineCalls.Reason(r) : null)).ConfigureAwait(false);
        }
    }

    private Task SendAsync(HttpContext context, string id, long created, CompletionChoice choice) =>
        EngineCalls.SendEventAsync(context, JsonSerializer.Serialize(
            new TextCompletionBody(id, "text_completion", created, options.ModelName, [choice], null), ServerJsonContext.Default.TextCompletionBody));

    /// <summary>The legacy logprobs object: tokens, their log-probabilities, the top alternatives by text, and text offsets.</summary>
    private static CompletionLogprobs Logprobs(IReadOnlyList<TokenLogprob> tokens, int offset)
    {
        var offsets = new List<int>(tokens.Count);
        foreach (var t in tokens) { offsets.Add(offset); offset += t.Token.Text.Length; }
        return new CompletionLogprobs(tokens.Select(t => t.Token.Text).ToList(), tokens.Select(t => t.Token.Logprob).ToList(),
            tokens.Select(t => t.Top.GroupBy(x => x.Text).ToDictionary(g => g.Key, g => g.First().Logprob)).ToList(), offsets);
    }
}
