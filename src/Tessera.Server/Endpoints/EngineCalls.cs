using System.Threading.Channels;
using Microsoft.AspNetCore.Http;
using Tessera.Inference.Serving;
using Tessera.Server.Contracts;

namespace Tessera.Server.Endpoints;

/// <summary>What the chat and completions endpoints share: the model check, sampling fields, submission and usage.</summary>
internal static class EngineCalls
{
    /// <summary>
    /// Checks the body's model against the served names (the base's, then the engine's LoRA adapters'); returns the adapter's name
    /// for <see cref="CompletionRequest.AdapterName"/> (null: the base), which the engine resolves again when it queues the request
    /// (an adapter unloaded in between is then the same 404), and records the name for the response (<see cref="ModelOf"/>).
    /// </summary>
    public static string? CheckModel(HttpContext context, string? model, ServeOptions options, InferenceEngine engine)
    {
        if (string.IsNullOrEmpty(model)) throw new ApiException(ApiError.Invalid("you must provide a model parameter", "model", "missing_required_parameter"));
        context.Items[ModelKey] = model;
        if (string.Equals(model, options.ModelName, StringComparison.Ordinal)) return null;
        if (engine.AdapterNames.Contains(model)) return model;
        throw new ApiException(ModelNotFound(model, options, engine));
    }

    /// <summary>The 404 for a model name the server does not serve, listing what it serves.</summary>
    public static ApiError ModelNotFound(string model, ServeOptions options, InferenceEngine engine)
    {
        var names = engine.AdapterNames;
        string served = names.Count == 0 ? $"'{options.ModelName}'" : string.Join(", ", new[] { options.ModelName }.Concat(names).Select(n => $"'{n}'"));
        return new ApiError(StatusCodes.Status404NotFound, $"The model '{model}' does not exist; this server serves {served}",
            "invalid_request_error", "model", "model_not_found");
    }

    /// <summary>The model name a response carries: the one the request asked for (the base's or an adapter's).</summary>
    public static string ModelOf(HttpContext context, ServeOptions options) => context.Items[ModelKey] as string ?? options.ModelName;

    private const string ModelKey = "tessera.model";

    /// <summary>
    /// The engine request for <paramref name="prompt"/> with the body's sampling, seed, penalties and number of choices (OpenAI's
    /// defaults where a field is absent), run with the served LoRA adapter named <paramref name="adapter"/> (null: the base); the endpoint adds its own token limit, stop strings and logprobs.
    /// </summary>
    public static CompletionRequest Request(SamplingRequestBody body, int[] prompt, string? adapter = null) => new()
    {
        Prompt = prompt,
        AdapterName = adapter,
        Sampling = new Inference.Sampling.SamplingOptions
        {
            Temperature = body.Temperature ?? 1.0,
            TopP = body.TopP ?? 1.0,
            TopK = body.TopK ?? 0,
        },
        Seed = body.Seed is long seed ? unchecked((ulong)seed) : null,
        PresencePenalty = body.PresencePenalty ?? 0,
        FrequencyPenalty = body.FrequencyPenalty ?? 0,
        Choices = body.N ?? 1,
        LogitBias = LogitBias(body.LogitBias),
        Grammar = Grammar(body.ResponseFormat),
    };

    /// <summary>
    /// OpenAI's response_format: text (or absent) leaves the choices free; json_object and json_schema constrain them
    /// (<see cref="Inference.Constraints.JsonGrammar"/>). A schema outside the supported subset is a 400 saying what.
    /// </summary>
    private static Inference.Constraints.JsonGrammar? Grammar(ResponseFormatBody? format) =>
        Grammar(format?.Type, format?.JsonSchema?.Schema, format?.JsonSchema?.Name, "response_format", "response_format.json_schema");

    /// <summary>
    /// A structured-output format by its parts, as chat's response_format and the Responses API's text.format give them:
    /// <paramref name="type"/> text (or null), json_object or json_schema with <paramref name="schema"/>. Errors name
    /// <paramref name="field"/> (the parameter) and <paramref name="schemaField"/> (where the schema sits in the body).
    /// </summary>
    public static Inference.Constraints.JsonGrammar? Grammar(string? type, System.Text.Json.JsonElement? schema, string? name, string field, string schemaField)
    {
        switch (type)
        {
            case null or "text": return null;
            case "json_object": return Inference.Constraints.JsonGrammar.AnyObject();
            case "json_schema":
                if (schema is not { } s || s.ValueKind == System.Text.Json.JsonValueKind.Null)
                    throw new ApiException(ApiError.Invalid($"{schemaField}.schema is required with type json_schema", field));
                try
                {
                    return Inference.Constraints.JsonGrammar.FromSchema(s, name ?? "schema");
                }
                catch (ArgumentException e)
                {
                    throw new ApiException(ApiError.Invalid($"{schemaField}: {e.Message}", field));
                }
            default:
                throw new ApiException(ApiError.Invalid($"{field}.type '{type}' is not one of text, json_object, json_schema", field));
        }
    }

    /// <summary>OpenAI's logit_bias, keyed by token ids written as strings: a key that is not one is a 400 naming the field.</summary>
    private static Dictionary<int, double> LogitBias(Dictionary<string, double>? bias)
    {
        var result = new Dictionary<int, double>();
        foreach (var (key, value) in bias ?? [])
        {
            if (!int.TryParse(key, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int token))
                throw new ApiException(ApiError.Invalid($"logit_bias key '{key}' is not a token id", "logit_bias"));
            result[token] = value;
        }
        return result;
    }

    /// <summary>Submits, turning the engine's refusals into API errors (400, 429). The request ends when the client goes away.</summary>
    public static ChannelReader<CompletionEvent> Submit(InferenceEngine engine, CompletionRequest request, HttpContext context) =>
        Submit(engine, request, context.RequestAborted);

    /// <summary>Submits, turning the engine's refusals into API errors (400, 429); the request ends when <paramref name="cancel"/> fires.</summary>
    public static ChannelReader<CompletionEvent> Submit(InferenceEngine engine, CompletionRequest request, CancellationToken cancel)
    {
        try
        {
            return engine.Submit(request, cancel);
        }
        catch (InvalidRequestException e) when (e.Code == "model_not_found" && request.AdapterName is { } name)
        {
            throw new ApiException(new ApiError(StatusCodes.Status404NotFound, $"The model '{name}' does not exist (the LoRA adapter was unloaded); {e.Message}",
                "invalid_request_error", "model", "model_not_found"));
        }
        catch (InvalidRequestException e)
        {
            throw new ApiException(ApiError.Invalid(e.Message, e.Parameter, e.Code));
        }
    }

    public static UsageBody Usage(CompletionUsage usage) =>
        new(usage.PromptTokens, usage.CompletionTokens, usage.TotalTokens, new PromptTokensDetails(usage.CachedPromptTokens));

    public static string Reason(FinishReason reason) => reason == FinishReason.Length ? "length" : "stop";

    public static long Now() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    public static void BeginStream(HttpContext context)
    {
        context.Response.StatusCode = StatusCodes.Status200OK;
        context.Response.ContentType = "text/event-stream";
        context.Response.Headers.CacheControl = "no-cache";
        context.Response.Headers["X-Accel-Buffering"] = "no";
    }

    public static async Task SendEventAsync(HttpContext context, string json)
    {
        await context.Response.WriteAsync("data: " + json + "\n\n", context.RequestAborted).ConfigureAwait(false);
        await context.Response.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
    }

    public static Task SendDoneAsync(HttpContext context) => context.Response.WriteAsync("data: [DONE]\n\n", context.RequestAborted);

    public static List<int> Bytes(byte[] bytes) => bytes.Select(b => (int)b).ToList();
}
