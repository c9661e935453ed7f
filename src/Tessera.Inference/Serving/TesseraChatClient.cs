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
        await foreach (var e in _engine.Submit(Request(messages, options), cancellationToken).ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            text.Append(e.Text);
            finish ??= e.FinishReason;
            usage ??= e.Usage;
        }
        cancellationToken.ThrowIfCancellationRequested();
        return new ChatResponse(new Microsoft.Extensions.AI.ChatMessage(ChatRole.Assistant, text.ToString()))
        {
            ModelId = _modelId,
            CreatedAt = DateTimeOffset.UtcNow,
            FinishReason = Reason(finish),
            Usage = Usage(usage),
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<Microsoft.Extensions.AI.ChatMessage> messages,
        ChatOptions? options = null, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        await foreach (var e in _engine.Submit(Request(messages, options), cancellationToken).ReadAllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (e.Usage is { } usage)
            {
                yield return new ChatResponseUpdate(ChatRole.Assistant, [new UsageContent(Usage(usage)!)]) { ResponseId = id, ModelId = _modelId };
                continue;
            }
            if (e.Text.Length == 0 && e.FinishReason is null) continue;
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

    private CompletionRequest Request(IEnumerable<Microsoft.Extensions.AI.ChatMessage> messages, ChatOptions? options)
    {
        var conversation = messages.Select(m => new TemplateMessage(m.Role.Value, m.Text)).ToList();
        return new CompletionRequest
        {
            Prompt = _prompt.Tokens(conversation),
            MaxTokens = options?.MaxOutputTokens,
            Sampling = new SamplingOptions { Temperature = options?.Temperature ?? 1.0, TopP = options?.TopP ?? 1.0, TopK = options?.TopK ?? 0 },
            Seed = options?.Seed is long seed ? unchecked((ulong)seed) : null,
            PresencePenalty = options?.PresencePenalty ?? 0,
            FrequencyPenalty = options?.FrequencyPenalty ?? 0,
            Stop = _prompt.StopStrings(options?.StopSequences?.ToList()),
            Grammar = Grammar(options?.ResponseFormat),
        };
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
