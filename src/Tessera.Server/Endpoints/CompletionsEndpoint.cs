using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.AspNetCore.Http;
using Tessera.Inference.Serving;
using Tessera.Models.Tokenization;
using Tessera.Server.Contracts;

namespace Tessera.Server.Endpoints;

/// <summary>
/// POST /v1/completions: a raw prompt (text or token ids), or a batch of them, continued, whole or streamed; echo puts the
/// prompt first. A batch of P prompts with n choices each gives P n choices, prompt p's i-th at index p n + i (OpenAI's
/// order), and one usage summed over the prompts; each prompt is its own engine request, so they run in the same batch.
/// </summary>
internal sealed class CompletionsEndpoint(InferenceEngine engine, ITokenizer tokenizer, ServeOptions options)
{
    /// <summary>Most completions (prompts x n) one request may ask for.</summary>
    private const int MaxCompletions = 128;

    public async Task HandleAsync(HttpContext context)
    {
        var body = await RequestBody.ReadAsync(context, ServerJsonContext.Default.CompletionRequestBody).ConfigureAwait(false);
        string? adapter = EngineCalls.CheckModel(context, body.Model, options, engine);
        if (body.Prompt is null) throw new ApiException(ApiError.Invalid("you must provide 'prompt'", "prompt", "missing_required_parameter"));
        if (body.Logprobs is < 0 or > 5) throw new ApiException(ApiError.Invalid($"logprobs ({body.Logprobs}) must lie in [0, 5]", "logprobs"));
        if (body.Stop is { Count: > 4 }) throw new ApiException(ApiError.Invalid($"stop holds {body.Stop.Count} strings; at most 4 are allowed", "stop"));
        var items = body.Prompt.Items;
        int n = body.N ?? 1;
        if (items.Count == 0) throw new ApiException(ApiError.Invalid("prompt is an empty array: give at least one prompt", "prompt"));
        if ((long)items.Count * n > MaxCompletions)
            throw new ApiException(ApiError.Invalid($"{items.Count} prompts with n = {n} ask for {(long)items.Count * n} completions; at most {MaxCompletions} a request", "prompt"));
        // Every prompt is submitted before any streams: one the engine refuses cancels those already queued.
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(context.RequestAborted);
        var readers = new List<ChannelReader<CompletionEvent>>(items.Count);
        var echoes = new string[items.Count * n];
        try
        {
            for (int p = 0; p < items.Count; p++)
            {
                int[] prompt = items[p].Tokens ?? tokenizer.Encode(items[p].Text ?? "");
                var request = EngineCalls.Request(body, prompt, adapter) with
                {
                    MaxTokens = body.MaxTokens ?? 16,                    // OpenAI's default for this endpoint
                    Stop = body.Stop ?? [],
                    TopLogprobs = body.Logprobs,
                };
                readers.Add(EngineCalls.Submit(engine, request, cancel.Token));
                string echo = body.Echo == true ? items[p].Text ?? tokenizer.Decode(prompt) : "";
                for (int i = 0; i < n; i++) echoes[p * n + i] = echo;
            }
        }
        catch
        {
            cancel.Cancel();
            throw;
        }
        var events = readers.Count == 1 ? readers[0] : Merge(readers, n, cancel.Token);
        string id = "cmpl-" + Guid.NewGuid().ToString("N");
        long created = EngineCalls.Now();
        if (body.Stream == true) await StreamAsync(context, events, id, created, echoes, body.StreamOptions?.IncludeUsage == true).ConfigureAwait(false);
        else await WholeAsync(context, events, id, created, echoes).ConfigureAwait(false);
    }

    /// <summary>
    /// The events of a batch's requests as one stream, in the order they come: prompt p's choice i renumbered p n + i, and,
    /// once every request has finished, one usage event summing theirs (none when one of them ended without its usage).
    /// </summary>
    private static ChannelReader<CompletionEvent> Merge(IReadOnlyList<ChannelReader<CompletionEvent>> readers, int n, CancellationToken cancel)
    {
        var merged = Channel.CreateUnbounded<CompletionEvent>(new UnboundedChannelOptions { SingleReader = true });
        var usages = new CompletionUsage?[readers.Count];
        async Task Forward(int p)
        {
            await foreach (var e in readers[p].ReadAllAsync(cancel).ConfigureAwait(false))
            {
                if (e.Usage is { } u) usages[p] = u;
                else await merged.Writer.WriteAsync(e with { Index = p * n + e.Index }, cancel).ConfigureAwait(false);
            }
        }
        _ = Task.WhenAll(Enumerable.Range(0, readers.Count).Select(Forward)).ContinueWith(all =>
        {
            if (all.Exception is { } error) { merged.Writer.TryComplete(error.InnerException ?? error); return; }
            if (!all.IsCanceled && usages.All(u => u is not null))
                merged.Writer.TryWrite(new CompletionEvent
                {
                    Usage = new CompletionUsage(usages.Sum(u => u!.PromptTokens), usages.Sum(u => u!.CompletionTokens), usages.Sum(u => u!.CachedPromptTokens)),
                });
            merged.Writer.TryComplete();
        }, TaskScheduler.Default);
        return merged.Reader;
    }

    private async Task WholeAsync(HttpContext context, ChannelReader<CompletionEvent> events, string id, long created, string[] echoes)
    {
        int n = echoes.Length;
        var texts = echoes.Select(e => new StringBuilder(e)).ToArray();
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
            logprobs[i] is { } l ? Logprobs(l, echoes[i].Length) : null, reasons[i] ?? "stop")).ToList();
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(JsonSerializer.Serialize(new TextCompletionBody(id, "text_completion", created, EngineCalls.ModelOf(context, options), choices, usage),
            ServerJsonContext.Default.TextCompletionBody), context.RequestAborted).ConfigureAwait(false);
    }

    private async Task StreamAsync(HttpContext context, ChannelReader<CompletionEvent> events, string id, long created, string[] echoes, bool includeUsage)
    {
        EngineCalls.BeginStream(context);
        var offsets = new int[echoes.Length];
        for (int i = 0; i < echoes.Length; i++)
            if (echoes[i].Length > 0) { await SendAsync(context, id, created, new CompletionChoice(i, echoes[i], null, null)).ConfigureAwait(false); offsets[i] = echoes[i].Length; }
        await foreach (var e in events.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
        {
            if (e.Usage is { } usage)
            {
                if (includeUsage)
                {
                    var last = new TextCompletionBody(id, "text_completion", created, EngineCalls.ModelOf(context, options), [], EngineCalls.Usage(usage));
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
            new TextCompletionBody(id, "text_completion", created, EngineCalls.ModelOf(context, options), [choice], null), ServerJsonContext.Default.TextCompletionBody));

    /// <summary>The legacy logprobs object: tokens, their log-probabilities, the top alternatives by text, and text offsets.</summary>
    private static CompletionLogprobs Logprobs(IReadOnlyList<TokenLogprob> tokens, int offset)
    {
        var offsets = new List<int>(tokens.Count);
        foreach (var t in tokens) { offsets.Add(offset); offset += t.Token.Text.Length; }
        return new CompletionLogprobs(tokens.Select(t => t.Token.Text).ToList(), tokens.Select(t => t.Token.Logprob).ToList(),
            tokens.Select(t => t.Top.GroupBy(x => x.Text).ToDictionary(g => g.Key, g => g.First().Logprob)).ToList(), offsets);
    }
}
