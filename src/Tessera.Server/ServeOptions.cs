namespace Tessera.Server;

/// <summary>How the OpenAI-compatible HTTP server listens and whom it serves.</summary>
public sealed record ServeOptions
{
    /// <summary>Address to listen on; default "127.0.0.1" (loopback only: give "0.0.0.0" to serve the network).</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>TCP port; default 8000. 0 picks a free port (read <see cref="OpenAiServer.BaseAddress"/>).</summary>
    public int Port { get; init; } = 8000;

    /// <summary>The model id clients name in requests and /v1/models lists; default "tessera".</summary>
    public string ModelName { get; init; } = "tessera";

    /// <summary>When set, every /v1 request must carry "Authorization: Bearer KEY" (else 401); default null: no key.</summary>
    public string? ApiKey { get; init; }

    /// <summary>Seconds a client is told to wait after a 429 (the Retry-After header); default 1.</summary>
    public int RetryAfterSeconds { get; init; } = 1;

    /// <summary>
    /// Whether POST /v1/load_lora_adapter and /v1/unload_lora_adapter are served (vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING); default
    /// false: they are 404 like any unknown route. Loading lets a client make the server read a local directory, so it is opt-in.
    /// </summary>
    public bool EnableLoraLoading { get; init; }

    /// <summary>
    /// Responses (POST /v1/responses with store not false) kept in memory for previous_response_id and GET /v1/responses/{id},
    /// the least recently used evicted first; default 128; 0 stores none (previous_response_id is then always unknown). Each
    /// holds its conversation's text, at most the model's context in tokens, so the store's memory is bounded by this count times
    /// the text of a full context.
    /// </summary>
    public int StoredResponses { get; init; } = 128;

    /// <summary>Throws <see cref="ArgumentException"/> naming an invalid field.</summary>
    public ServeOptions Validate()
    {
        if (string.IsNullOrWhiteSpace(Host)) throw new ArgumentException("ServeOptions.Host must not be empty");
        if (Port is < 0 or > 65535) throw new ArgumentException($"ServeOptions.Port ({Port}) must lie in [0, 65535]");
        if (string.IsNullOrWhiteSpace(ModelName)) throw new ArgumentException("ServeOptions.ModelName must not be empty");
        if (ApiKey is { Length: 0 }) throw new ArgumentException("ServeOptions.ApiKey must not be empty when given");
        if (RetryAfterSeconds <= 0) throw new ArgumentException($"ServeOptions.RetryAfterSeconds ({RetryAfterSeconds}) must be positive");
        if (StoredResponses < 0) throw new ArgumentException($"ServeOptions.StoredResponses ({StoredResponses}) must not be negative");
        return this;
    }
}
