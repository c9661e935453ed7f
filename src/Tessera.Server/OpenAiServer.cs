using System.Collections.Concurrent;
using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Tessera.Inference.Serving;
using Tessera.Server.Contracts;
using Tessera.Server.Endpoints;

namespace Tessera.Server;

/// <summary>
/// The OpenAI-compatible HTTP server (ASP.NET Core minimal APIs on Kestrel) in front of an <see cref="InferenceEngine"/>:
/// GET /v1/models, POST /v1/completions and /v1/chat/completions (whole or streamed as server-sent events ending with
/// "data: [DONE]"), POST /v1/responses (OpenAI's Responses API, whole or streamed as its typed events; GET and DELETE /v1/responses/{id} for the
/// responses kept in memory), GET /health and GET /metrics (Prometheus text); with <see cref="ServeOptions.EnableLoraLoading"/> also POST
/// /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's, <see cref="LoraAdaptersEndpoint"/>). It is thin: it parses and checks requests, renders chat
/// prompts, forwards to the engine and writes what the engine produces; every refusal is an OpenAI error object (400,
/// 401, 404, 429 with Retry-After), and a client that goes away cancels its request, which frees its KV blocks.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    private readonly WebApplication _app;
    private readonly ConcurrentDictionary<int, long> _responses;

    private OpenAiServer(WebApplication app, Uri baseAddress, InferenceEngine engine, ConcurrentDictionary<int, long> responses)
    {
        _app = app;
        BaseAddress = baseAddress;
        Engine = engine;
        _responses = responses;
    }

    /// <summary>Where the server listens, e.g. http://127.0.0.1:8000/ (the bound port when <see cref="ServeOptions.Port"/> is 0).</summary>
    public Uri BaseAddress { get; }

    /// <summary>The engine it serves.</summary>
    public InferenceEngine Engine { get; }

    /// <summary>Responses sent so far, by status code.</summary>
    public IReadOnlyDictionary<int, long> ResponsesByStatus => _responses;

    /// <summary>Starts listening; returns once the port is bound.</summary>
    /// <exception cref="ArgumentException">An option is invalid (names it).</exception>
    public static async Task<OpenAiServer> StartAsync(InferenceEngine engine, ChatPrompt chat, ServeOptions options, ILoggerProvider? logging = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(chat);
        options = (options ?? throw new ArgumentNullException(nameof(options))).Validate();
        var address = options.Host == "localhost" ? IPAddress.Loopback
            : IPAddress.TryParse(options.Host, out var parsed) ? parsed
            : throw new ArgumentException($"ServeOptions.Host '{options.Host}' is not an IP address (or 'localhost')");

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        if (logging is not null) builder.Logging.AddProvider(logging);
        builder.WebHost.ConfigureKestrel(kestrel => kestrel.Listen(address, options.Port));
        builder.Services.ConfigureHttpJsonOptions(json => json.SerializerOptions.TypeInfoResolverChain.Insert(0, ServerJsonContext.Default));
        var app = builder.Build();
        var counts = new ConcurrentDictionary<int, long>();

        app.Use(async (context, next) =>
        {
            try
            {
                if (options.ApiKey is { } key && context.Request.Path.StartsWithSegments("/v1") && !Authorized(context, key))
                    await new ApiError(StatusCodes.Status401Unauthorized, "Incorrect API key provided: send it as 'Authorization: Bearer KEY'",
                        "invalid_request_error", null, "invalid_api_key").WriteAsync(context).ConfigureAwait(false);
                else await next(context).ConfigureAwait(false);
            }
            catch (ApiException e) { await e.Error.WriteAsync(context).ConfigureAwait(false); }
            catch (EngineOverloadedException e)
            {
                int seconds = Math.Max(options.RetryAfterSeconds, (int)Math.Ceiling(e.RetryAfter.TotalSeconds));
                await new ApiError(StatusCodes.Status429TooManyRequests, e.Message, "requests", null, "rate_limit_exceeded").WriteAsync(context, seconds).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested) { /* the client went away */ }
            catch (Exception e)
            {
                await new ApiError(StatusCodes.Status500InternalServerError, "internal error: " + e.Message, "server_error").WriteAsync(context).ConfigureAwait(false);
            }
            finally
            {
                counts.AddOrUpdate(context.RequestAborted.IsCancellationRequested && !context.Response.HasStarted ? 499 : context.Response.StatusCode, 1, (_, n) => n + 1);
            }
        });

        var chatEndpoint = new ChatCompletionsEndpoint(engine, chat, options);
        var completionsEndpoint = new CompletionsEndpoint(engine, engine.Tokenizer, options);
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        app.MapPost("/v1/chat/completions", chatEndpoint.HandleAsync);
        app.MapPost("/v1/completions", completionsEndpoint.HandleAsync);
        var responsesEndpoint = new ResponsesEndpoint(engine, chat, options);
        app.MapPost("/v1/responses", responsesEndpoint.HandleAsync);
        app.MapGet("/v1/responses/{id}", responsesEndpoint.GetAsync);
        app.MapDelete("/v1/responses/{id}", responsesEndpoint.DeleteAsync);
        if (options.EnableLoraLoading)
        {
            var lora = new LoraAdaptersEndpoint(engine, options);
            app.MapPost("/v1/load_lora_adapter", lora.LoadAsync);
            app.MapPost("/v1/unload_lora_adapter", lora.UnloadAsync);
        }
        // The base first, then each served LoRA adapter under its own name (owned by the base, as vLLM lists its --lora-modules), as
        // served now: loads and unloads show at once.
        app.MapGet("/v1/models", () => Results.Json(new ModelList("list",
                [new ModelCard(options.ModelName, "model", created, "tessera", engine.MaxSequenceLength),
                 .. engine.AdapterNames.Select(n => new ModelCard(n, "model", created, "tessera", engine.MaxSequenceLength))]),
            ServerJsonContext.Default.ModelList));
        app.MapGet("/health", () => Results.Text("ok"));
        app.MapGet("/metrics", () => Results.Text(PrometheusText.Render(engine.Metrics, counts), "text/plain; version=0.0.4; charset=utf-8"));
        app.MapFallback(context => new ApiError(StatusCodes.Status404NotFound, $"no route for {context.Request.Method} {context.Request.Path}",
            "invalid_request_error", null, "unknown_url").WriteAsync(context));

        await app.StartAsync(cancellationToken).ConfigureAwait(false);
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return new OpenAiServer(app, new Uri(bound.EndsWith('/') ? bound : bound + "/"), engine, counts);
    }

    private static bool Authorized(HttpContext context, string key)
    {
        string? header = context.Request.Headers.Authorization;
        if (header is null || !header.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase)) return false;
        var given = System.Text.Encoding.UTF8.GetBytes(header[7..].Trim());
        var expected = System.Text.Encoding.UTF8.GetBytes(key);
        return System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(given, expected);   // no timing hint about the key
    }

    /// <summary>Runs until <paramref name="cancellationToken"/> fires (Ctrl+C in the CLI).</summary>
    public async Task WaitAsync(CancellationToken cancellationToken)
    {
        try { await Task.Delay(Timeout.Infinite, cancellationToken).ConfigureAwait(false); }
        catch (OperationCanceledException) { }
    }

    /// <summary>Stops listening (open streams end) and releases the web host; the engine belongs to the caller.</summary>
    public async ValueTask DisposeAsync()
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        await _app.StopAsync(deadline.Token).ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
    }
}
